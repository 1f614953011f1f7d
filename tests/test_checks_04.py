"""Chapter 04's lab checks: plausible wrong answers are rejected, correct answers written differently pass (issue 11)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from helpers import checks
from helpers import quantization as Q
from helpers.models import LeNet5

# ----------------------------------------------------------------------------- observers


class Observer:
    """The reference: running min/max over all batches, asymmetric uint8 qparams."""

    def __init__(self):
        self.lo, self.hi = float("inf"), float("-inf")

    def update(self, x):
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))

    def qparams(self):
        return Q.qparams(self.lo, self.hi, 8, symmetric=False, signed=False)


class TorchObserver:  # correct: torch buffers, float32 min/max of numpy input via torch
    def __init__(self):
        self.lo, self.hi = torch.tensor(float("inf"), dtype=torch.float64), torch.tensor(float("-inf"), dtype=torch.float64)

    def update(self, x):
        t = torch.as_tensor(x, dtype=torch.float64)
        self.lo, self.hi = torch.minimum(self.lo, t.min()), torch.maximum(self.hi, t.max())

    def qparams(self):
        lo, hi = min(float(self.lo), 0.0), max(float(self.hi), 0.0)
        if hi == lo:
            return 1.0, 0
        scale = (hi - lo) / 255
        return scale, int(np.clip(np.round(-lo / scale), 0, 255))


class ListObserver:  # correct: keeps every batch and reduces at the end (numpy scalar outputs)
    def __init__(self):
        self.seen = []

    def update(self, x):
        self.seen.append(np.asarray(x, dtype=np.float64).ravel().copy())

    def qparams(self):
        v = np.concatenate(self.seen)
        scale, zp = Q.qparams(v.min(), v.max(), 8, symmetric=False, signed=False)
        return np.float64(scale), np.int64(zp)


class ResetObserver(Observer):  # wrong: forgets earlier batches
    def update(self, x):
        self.lo, self.hi = float(x.min()), float(x.max())


class FirstBatchObserver(Observer):  # wrong: only the first batch counts
    def update(self, x):
        if self.lo == float("inf"):
            super().update(x)


class AbsObserver(Observer):  # wrong: ignores the sign (range of |x|)
    def update(self, x):
        a = np.abs(np.asarray(x))
        self.lo, self.hi = min(self.lo, float(a.min())), max(self.hi, float(a.max()))


class PositiveOnlyObserver(Observer):  # wrong: negative values ignored (clamped to 0)
    def update(self, x):
        a = np.clip(np.asarray(x, dtype=np.float64), 0, None)
        self.lo, self.hi = min(self.lo, float(a.min())), max(self.hi, float(a.max()))


class TruncZeroPointObserver(Observer):  # wrong: zero point truncated instead of rounded
    def qparams(self):
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        if hi == lo:
            return 1.0, 0
        scale = (hi - lo) / 255
        return scale, int(-lo / scale)


class InPlaceObserver(Observer):  # wrong: sorts the learner's batch in place to read min and max off its ends
    def update(self, x):
        if isinstance(x, torch.Tensor):
            flat = x.view(-1)
            flat.copy_(flat.sort().values)
            lo, hi = float(flat[0]), float(flat[-1])
        else:
            flat = x.reshape(-1)  # a view for contiguous arrays
            flat.sort()
            lo, hi = float(flat[0]), float(flat[-1])
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)


class MeanObserver(Observer):  # wrong: averages the per-batch extremes
    def __init__(self):
        super().__init__()
        self.los, self.his = [], []

    def update(self, x):
        self.los.append(float(x.min()))
        self.his.append(float(x.max()))
        self.lo, self.hi = float(np.mean(self.los)), float(np.mean(self.his))


class FloatZeroPointObserver(Observer):  # wrong: unrounded zero point
    def qparams(self):
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        if hi == lo:
            return 1.0, 0
        scale = (hi - lo) / 255
        return scale, -lo / scale


# ----------------------------------------------------------------------------- fake_quant_weight


def fq_reference(w, bits=8):
    qmax = 2 ** (bits - 1) - 1
    amax = w.detach().flatten(1).abs().max(1).values
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax)).reshape(-1, *([1] * (w.dim() - 1)))
    return torch.clamp(torch.round(w / scale), -qmax - 1, qmax) * scale


def fq_numpy(w, bits=8):  # correct: numpy in float64, back to a torch tensor
    a = w.detach().numpy().astype(np.float64)
    qmax = 2 ** (bits - 1) - 1
    amax = np.abs(a.reshape(len(a), -1)).max(1)
    s = np.where(amax > 0, amax / qmax, 1.0).reshape(-1, *([1] * (a.ndim - 1)))
    return torch.from_numpy(np.clip(np.round(a / s), -qmax - 1, qmax) * s)


def fq_loop(w, bits=8):  # correct: a loop over channels, clamp_min guard like the lecture
    out = torch.empty_like(w.detach())
    qmax = 2 ** (bits - 1) - 1
    for c in range(w.shape[0]):
        s = w[c].detach().abs().max().clamp_min(1e-12) / qmax
        out[c] = torch.clamp(torch.round(w[c].detach() / s), -qmax, qmax) * s
    return out


def fq_torch_op(w, bits=8):  # correct: torch's own per-channel fake quantization
    qmax = 2 ** (bits - 1) - 1
    amax = w.detach().flatten(1).abs().max(1).values
    s = torch.where(amax > 0, amax / qmax, torch.ones_like(amax)).float()
    return torch.fake_quantize_per_channel_affine(w.detach().float(), s, torch.zeros(len(s), dtype=torch.int32), 0, -qmax - 1, qmax)


def fq_half_away(w, bits=8):  # wrong: round half away from zero
    qmax = 2 ** (bits - 1) - 1
    amax = w.detach().flatten(1).abs().max(1).values
    s = torch.where(amax > 0, amax / qmax, torch.ones_like(amax)).reshape(-1, *([1] * (w.dim() - 1)))
    x = w / s
    return torch.clamp(torch.sign(x) * torch.floor(x.abs() + 0.5), -qmax - 1, qmax) * s


def fq_inplace(w, bits=8):  # wrong: mutates the learner's weight (w.div_(s).round_()...)
    qmax = 2 ** (bits - 1) - 1
    amax = w.detach().flatten(1).abs().max(1).values
    s = torch.where(amax > 0, amax / qmax, torch.ones_like(amax)).reshape(-1, *([1] * (w.dim() - 1)))
    with torch.no_grad():
        return w.div_(s).round_().clamp_(-qmax - 1, qmax).mul_(s)


def fq_no_zero_guard(w, bits=8):  # wrong: an all-zero row gives 0 / 0 = NaN
    qmax = 2 ** (bits - 1) - 1
    s = (w.detach().flatten(1).abs().max(1).values / qmax).reshape(-1, *([1] * (w.dim() - 1)))
    return torch.clamp(torch.round(w / s), -qmax - 1, qmax) * s


def fq_numpy_view_inplace(w, bits=8):  # wrong: w.detach().numpy() shares memory with the layer, then a /= s mutates it
    a = w.detach().numpy()
    qmax = 2 ** (bits - 1) - 1
    amax = np.abs(a.reshape(len(a), -1)).max(1)
    a /= np.where(amax > 0, amax / qmax, 1.0).reshape(-1, *([1] * (a.ndim - 1)))
    s = np.where(amax > 0, amax / qmax, 1.0).reshape(-1, *([1] * (a.ndim - 1)))
    return torch.from_numpy(np.clip(np.round(a), -qmax - 1, qmax) * s)


def fq_floor(w, bits=8):  # wrong: floor instead of round
    qmax = 2 ** (bits - 1) - 1
    amax = w.detach().flatten(1).abs().max(1).values
    s = torch.where(amax > 0, amax / qmax, torch.ones_like(amax)).reshape(-1, *([1] * (w.dim() - 1)))
    return torch.clamp(torch.floor(w / s), -qmax - 1, qmax) * s


def fq_qmax_full(w, bits=8):  # wrong: divides max |w| by 2**(bits-1)
    amax = w.detach().flatten(1).abs().max(1).values
    s = torch.where(amax > 0, amax / 2 ** (bits - 1), torch.ones_like(amax)).reshape(-1, *([1] * (w.dim() - 1)))
    return torch.clamp(torch.round(w / s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * s


WRONG_FQ = {
    "half away from zero": fq_half_away,
    "in place": fq_inplace,
    "no zero guard": fq_no_zero_guard,
    "floor": fq_floor,
    "qmax = 2**(b-1)": fq_qmax_full,
    "always 8 bits": lambda w, bits=8: fq_reference(w, 8),
    "numpy result": lambda w, bits=8: fq_reference(w, bits).detach().numpy(),
    "integer codes": lambda w, bits=8: torch.round(
        w / (w.detach().flatten(1).abs().amax(1).clamp_min(1e-12) / (2 ** (bits - 1) - 1)).reshape(-1, *([1] * (w.dim() - 1)))
    ).to(torch.int64),
    "numpy view of w, divided in place": fq_numpy_view_inplace,
    "per-tensor scale": lambda w, bits=8: (
        torch.clamp(torch.round(w / (w.detach().abs().max() / (2 ** (bits - 1) - 1))), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        * (w.detach().abs().max() / (2 ** (bits - 1) - 1))
    ),
}
RIGHT_FQ = {
    "reference": fq_reference,
    "numpy float64": fq_numpy,
    "loop with clamp_min": fq_loop,
    "torch.fake_quantize_per_channel_affine": fq_torch_op,
    "float64 tensor": lambda w, bits=8: fq_reference(w.detach().double(), bits),
}

# ----------------------------------------------------------------------------- activation ranges


def ranges_reference(model, x, relu_after):
    ranges, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):

            def hook(mod, inp, out, key=name):
                t = torch.relu(out) if key in relu_after else out
                ranges[key] = (float(t.min()), float(t.max()))

            handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return ranges


def ranges_arithmetic(model, x, relu_after):  # correct: clamp the range at 0 instead of relu(output); try/finally; aminmax
    ranges, handles = {}, []

    def make(key):
        def hook(mod, inp, out):
            lo, hi = torch.aminmax(out.double())
            lo, hi = float(lo), float(hi)
            ranges[key] = (max(lo, 0.0), max(hi, 0.0)) if key in relu_after else (lo, hi)

        return hook

    try:
        for name, m in model.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                handles.append(m.register_forward_hook(make(name)))
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return ranges


def ranges_batched(model, x, relu_after):  # correct: two half batches, running min/max, tensors in the tuple
    ranges = {}
    for half in (x[: len(x) // 2], x[len(x) // 2 :]):
        got = ranges_reference(model, half, relu_after)
        for k, (lo, hi) in got.items():
            old = ranges.get(k, (float("inf"), float("-inf")))
            ranges[k] = (torch.tensor(min(old[0], lo)), torch.tensor(max(old[1], hi)))
    return ranges


def ranges_pre_relu(model, x, relu_after):  # wrong: ignores the fused ReLU (pre-ReLU range)
    return ranges_reference(model, x, ())


def ranges_relu_everywhere(model, x, relu_after):  # wrong: ReLU on every layer
    return ranges_reference(model, x, {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))})


def ranges_inputs(model, x, relu_after):  # wrong: the layer inputs
    ranges, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):

            def hook(mod, inp, out, key=name):
                ranges[key] = (float(inp[0].min()), float(inp[0].max()))

            handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return ranges


def ranges_no_remove(model, x, relu_after):  # wrong: leaves the hooks behind
    ranges = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):

            def hook(mod, inp, out, key=name):
                ranges[key] = (float(out.min()), float(out.max()))

            m.register_forward_hook(hook)
    with torch.no_grad():
        model(x)
    return ranges


def ranges_pre_hook_left(model, x, relu_after):  # wrong: removes its forward hooks but leaves a forward PRE-hook behind
    model.register_forward_pre_hook(lambda mod, inp: None)
    return ranges_reference(model, x, relu_after)


def ranges_first_image(model, x, relu_after):  # wrong: only the first image of the batch
    return {k: v for k, v in ranges_reference(model, x[:1], relu_after).items()}


def ranges_inplace_relu(model, x, relu_after):  # wrong: relu_ on the image batch (mutates x) before measuring
    x.clamp_(0.2, 0.8)
    return ranges_reference(model, x, relu_after)


def ranges_class_names(model, x, relu_after):  # wrong: keyed by class name, so layers collide
    return {type(m).__name__ + str(i): v for i, (m, v) in enumerate(zip(model.modules(), ranges_reference(model, x, relu_after).values()))}


def ranges_abs(model, x, relu_after):  # wrong: range of |output|
    ranges, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):

            def hook(mod, inp, out, key=name):
                ranges[key] = (float(out.abs().min()), float(out.abs().max()))

            handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return ranges


WRONG_RANGES = {
    "pre-ReLU": ranges_pre_relu,
    "ReLU everywhere": ranges_relu_everywhere,
    "layer inputs": ranges_inputs,
    "hooks left": ranges_no_remove,
    "a pre-hook left": ranges_pre_hook_left,
    "first image only": ranges_first_image,
    "mutates x": ranges_inplace_relu,
    "keyed by class": ranges_class_names,
    "|output|": ranges_abs,
}
RIGHT_RANGES = {"reference": ranges_reference, "aminmax, clamped at 0": ranges_arithmetic, "two half batches": ranges_batched}

# ----------------------------------------------------------------------------- bias


def bias_reference(b, sx, sw):
    return np.round(b / (sx * sw)).astype(np.int32)


def bias_inplace(b, sx, sw):  # wrong: bias /= ... mutates the learner's array
    b /= sx * sw
    return np.round(b).astype(np.int32)


def bias_scales_inplace(b, sx, sw):  # wrong: weight_scales *= input_scale mutates the scales
    sw *= sx
    return np.round(b / sw).astype(np.int32)


WRONG_BIAS = {
    "half away from zero": lambda b, sx, sw: (np.sign(b / (sx * sw)) * np.floor(np.abs(b / (sx * sw)) + 0.5)).astype(np.int32),
    "half up": lambda b, sx, sw: np.floor(b / (sx * sw) + 0.5).astype(np.int32),
    "truncation": lambda b, sx, sw: (b / (sx * sw)).astype(np.int32),
    "ceil": lambda b, sx, sw: np.ceil(b / (sx * sw)).astype(np.int32),
    "int64": lambda b, sx, sw: np.round(b / (sx * sw)).astype(np.int64),
    "float": lambda b, sx, sw: np.round(b / (sx * sw)),
    "in place on bias": bias_inplace,
    "in place on weight_scales": bias_scales_inplace,
    "mean weight scale": lambda b, sx, sw: np.round(b / (sx * sw.mean())).astype(np.int32),
    "input scale only": lambda b, sx, sw: np.round(b / sx).astype(np.int32),
    "int8": lambda b, sx, sw: np.round(b / (sx * sw)).astype(np.int8),
    # float32 keeps ~7 digits: a realistic quotient near 1.2e5 that is 0.005 from a .5 tie rounds to the neighbouring integer
    "float32": lambda b, sx, sw: np.round(np.float32(b) / (np.float32(sx) * np.float32(sw))).astype(np.int32),
    "float32, two divisions": lambda b, sx, sw: np.round(b.astype(np.float32) / np.float32(sx) / sw.astype(np.float32)).astype(np.int32),
    "torch float32": lambda b, sx, sw: torch.round(torch.from_numpy(b).float() / (sx * torch.from_numpy(sw).float())).to(torch.int32),
}
RIGHT_BIAS = {
    "reference": bias_reference,
    "np.rint, two divisions": lambda b, sx, sw: np.rint(b / sx / sw).astype(np.int32),
    "np.divide into a new float64 array": lambda b, sx, sw: np.round(np.divide(b, np.multiply(sx, sw, dtype=np.float64))).astype(np.int32),
    "torch int32": lambda b, sx, sw: torch.round(torch.from_numpy(b) / (sx * torch.from_numpy(sw))).to(torch.int32),
    "list comprehension": lambda b, sx, sw: np.array([round(v / (sx * s)) for v, s in zip(b, sw)], dtype=np.int32),
}

# ----------------------------------------------------------------------------- integer convolution


def conv_reference(q_x, zp, q_w):
    f, c, k, _ = q_w.shape
    n, _, h, w = q_x.shape
    cols = Q.im2col(q_x.astype(np.int64) - zp, k)
    return (cols @ q_w.reshape(f, -1).astype(np.int64).T).reshape(n, h - k + 1, w - k + 1, f).transpose(0, 3, 1, 2)


def conv_sliding(q_x, zp, q_w):  # correct: sliding_window_view + einsum (views, int64)
    k = q_w.shape[-1]
    win = np.lib.stride_tricks.sliding_window_view(q_x.astype(np.int64) - zp, (k, k), axis=(2, 3))  # (N, C, Ho, Wo, k, k)
    return np.einsum("nchwij,fcij->nfhw", win, q_w.astype(np.int64))


def conv_torch(q_x, zp, q_w):  # correct: torch conv2d in float64 (exact for these sizes), then int64
    x = torch.from_numpy(q_x.astype(np.float64) - zp)
    return torch.nn.functional.conv2d(x, torch.from_numpy(q_w.astype(np.float64))).round().to(torch.int64)


def conv_loops(q_x, zp, q_w):  # correct: explicit loops over the kernel, int32 accumulators
    n, c, h, w = q_x.shape
    f, _, k, _ = q_w.shape
    x = q_x.astype(np.int32) - zp
    out = np.zeros((n, f, h - k + 1, w - k + 1), dtype=np.int32)
    for i in range(k):
        for j in range(k):
            out += np.einsum("nchw,fc->nfhw", x[:, :, i : i + h - k + 1, j : j + w - k + 1], q_w[:, :, i, j].astype(np.int32))
    return out


def conv_uint8_wrap(q_x, zp, q_w):  # wrong: q_x - zp in uint8 wraps around
    f, c, k, _ = q_w.shape
    n, _, h, w = q_x.shape
    cols = Q.im2col((q_x - np.uint8(zp)).astype(np.int64), k)
    return (cols @ q_w.reshape(f, -1).astype(np.int64).T).reshape(n, h - k + 1, w - k + 1, f).transpose(0, 3, 1, 2)


def conv_int16(q_x, zp, q_w):  # wrong: int16 accumulators overflow
    return conv_reference(q_x, zp, q_w).astype(np.int16)


def conv_int8_weights(q_x, zp, q_w):  # wrong: products in the weights' int8 dtype
    f, c, k, _ = q_w.shape
    n, _, h, w = q_x.shape
    cols = Q.im2col(q_x.astype(np.int64) - zp, k).astype(np.int8)
    return (cols @ q_w.reshape(f, -1).T).astype(np.int64).reshape(n, h - k + 1, w - k + 1, f).transpose(0, 3, 1, 2)


def conv_inplace(q_x, zp, q_w):  # wrong: q_x -= zp in place (wraps and mutates the input)
    q_x -= np.uint8(zp)
    return conv_reference(q_x, 0, q_w)


def conv_hwc_order(q_x, zp, q_w):  # wrong: patch columns in (i, j, c) order
    n, c, h, w = q_x.shape
    f, _, k, _ = q_w.shape
    ho, wo = h - k + 1, w - k + 1
    x = q_x.astype(np.int64) - zp
    cols = np.stack([x[:, :, i : i + ho, j : j + wo] for i in range(k) for j in range(k)], axis=-1)  # (N, C, Ho, Wo, k*k)
    cols = cols.transpose(0, 2, 3, 4, 1).reshape(n * ho * wo, k * k * c)
    return (cols @ q_w.reshape(f, -1).astype(np.int64).T).reshape(n, ho, wo, f).transpose(0, 3, 1, 2)


def conv_flipped(q_x, zp, q_w):  # wrong: true convolution (flipped kernel) instead of cross-correlation
    return conv_reference(q_x, zp, q_w[:, :, ::-1, ::-1])


WRONG_CONV = {
    "uint8 wrap": conv_uint8_wrap,
    "int16 accumulators": conv_int16,
    "int8 products": conv_int8_weights,
    "in place": conv_inplace,
    "(i, j, c) columns": conv_hwc_order,
    "flipped kernel": conv_flipped,
    "zero point ignored": lambda q_x, zp, q_w: conv_reference(q_x, 0, q_w),
    "zero point on the weights": lambda q_x, zp, q_w: conv_reference(q_x, 0, q_w.astype(np.int64) - zp),
    "float accumulators": lambda q_x, zp, q_w: conv_reference(q_x, zp, q_w).astype(np.float64),
    "NHWC output": lambda q_x, zp, q_w: conv_reference(q_x, zp, q_w).transpose(0, 2, 3, 1),
}
RIGHT_CONV = {"reference": conv_reference, "sliding window + einsum": conv_sliding, "torch float64": conv_torch, "loops, int32": conv_loops}

# ----------------------------------------------------------------------------- group-wise


def gw_reference(w, bits, g):
    qmax = 2 ** (bits - 1) - 1
    n_groups = -(-w.shape[1] // g)
    codes, scales = np.empty(w.shape, dtype=np.int8), np.empty((w.shape[0], n_groups))
    for j in range(n_groups):
        part = w[:, j * g : (j + 1) * g]
        amax = np.abs(part).max(axis=1)
        scales[:, j] = np.where(amax > 0, amax / qmax, 1.0)
        codes[:, j * g : (j + 1) * g] = np.clip(np.round(part / scales[:, j : j + 1]), -qmax, qmax)
    return codes, scales


def gw_padded_float32(w, bits, g):  # correct: pad with zeros to a multiple of g, float32 scales
    qmax = 2 ** (bits - 1) - 1
    out, width = w.shape
    n_groups = -(-width // g)
    padded = np.pad(w, ((0, 0), (0, n_groups * g - width))).reshape(out, n_groups, g)
    amax = np.abs(padded).max(axis=2)
    scales = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    codes = np.clip(np.round(padded / scales[..., None]), -qmax, qmax).astype(np.int8).reshape(out, -1)[:, :width]
    return codes, scales


def gw_torch(w, bits, g):  # correct: torch, split along the inputs, returned as tensors
    qmax = 2 ** (bits - 1) - 1
    t = torch.from_numpy(w)
    parts = torch.split(t, g, dim=1)
    scales = torch.stack([p.abs().amax(1) for p in parts], 1)
    scales = torch.where(scales > 0, scales / qmax, torch.ones_like(scales))
    codes = torch.cat([torch.clamp(torch.round(p / scales[:, j : j + 1]), -qmax, qmax) for j, p in enumerate(parts)], 1)
    return codes.to(torch.int8), scales


def gw_half_away(w, bits, g):  # wrong: round half away from zero
    codes, scales = gw_reference(w, bits, g)
    x = w / np.repeat(scales, g, axis=1)[:, : w.shape[1]]
    qmax = 2 ** (bits - 1) - 1
    return np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), -qmax, qmax).astype(np.int8), scales


def gw_inplace(w, bits, g):  # wrong: divides the learner's weight in place
    codes, scales = gw_reference(w.copy(), bits, g)
    w /= np.repeat(scales, g, axis=1)[:, : w.shape[1]]
    return np.clip(np.round(w), -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1).astype(np.int8), scales


def gw_zero_scale(w, bits, g):  # wrong: scale 0 for an all-zero group (codes 0 / 0 -> NaN -> cast)
    codes, scales = gw_reference(w, bits, g)
    qmax = 2 ** (bits - 1) - 1
    n_groups = scales.shape[1]
    amax = np.stack([np.abs(w[:, j * g : (j + 1) * g]).max(axis=1) for j in range(n_groups)], 1)
    return codes, amax / qmax


def gw_array_split(w, bits, g):  # wrong: np.array_split spreads the remainder over the first groups
    qmax = 2 ** (bits - 1) - 1
    n_groups = -(-w.shape[1] // g)
    parts = np.array_split(w, n_groups, axis=1)
    scales = np.stack([np.abs(p).max(1) for p in parts], 1)
    scales = np.where(scales > 0, scales / qmax, 1.0)
    codes = np.concatenate([np.clip(np.round(p / scales[:, j : j + 1]), -qmax, qmax) for j, p in enumerate(parts)], 1)
    return codes.astype(np.int8), scales


def gw_drop_remainder(w, bits, g):  # wrong: the last, shorter group shares the previous group's scale
    codes, scales = gw_reference(w, bits, g)
    if w.shape[1] % g:
        full = w.shape[1] // g
        if full == 0:
            return codes, scales
        scales = scales[:, :full]
        s = np.concatenate([np.repeat(scales, g, axis=1), np.repeat(scales[:, -1:], w.shape[1] % g, axis=1)], 1)
        qmax = 2 ** (bits - 1) - 1
        codes = np.clip(np.round(w / s), -qmax, qmax).astype(np.int8)
    return codes, scales


def gw_strided(w, bits, g):  # wrong: reshape(out, g, n_groups) puts every n_groups-th input in a group
    qmax = 2 ** (bits - 1) - 1
    groups = w.reshape(w.shape[0], g, -1)
    amax = np.abs(groups).max(axis=1)
    scales = np.where(amax > 0, amax / qmax, 1.0)
    return np.clip(np.round(groups / scales[:, None, :]), -qmax, qmax).astype(np.int8).reshape(w.shape), scales


WRONG_GW = {
    "half away from zero": gw_half_away,
    "in place": gw_inplace,
    "zero scale": gw_zero_scale,
    "np.array_split": gw_array_split,
    "remainder dropped": gw_drop_remainder,
    "float codes": lambda w, bits, g: (gw_reference(w, bits, g)[0].astype(np.float64), gw_reference(w, bits, g)[1]),
    "int64 codes": lambda w, bits, g: (gw_reference(w, bits, g)[0].astype(np.int64), gw_reference(w, bits, g)[1]),
    "floor": lambda w, bits, g: (
        np.clip(
            np.floor(w / np.repeat(gw_reference(w, bits, g)[1], g, axis=1)[:, : w.shape[1]]), -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
        ).astype(np.int8),
        gw_reference(w, bits, g)[1],
    ),
    "one scale per row": lambda w, bits, g: gw_reference(w, bits, w.shape[1]),
    "qmax = 2**(b-1)": lambda w, bits, g: (
        lambda c, s: (
            np.clip(np.round(w / np.repeat(s, g, axis=1)[:, : w.shape[1]]), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1).astype(np.int8),
            s,
        )
    )(None, gw_reference(w, bits, g)[1] * (2 ** (bits - 1) - 1) / 2 ** (bits - 1)),
    "strided groups (reshape(out, g, -1))": gw_strided,
}
RIGHT_GW = {"reference": gw_reference, "padded, float32 scales": gw_padded_float32, "torch split": gw_torch}

# ----------------------------------------------------------------------------- the tests

OBSERVERS_WRONG = [
    ResetObserver,
    FirstBatchObserver,
    AbsObserver,
    PositiveOnlyObserver,
    TruncZeroPointObserver,
    InPlaceObserver,
    MeanObserver,
    FloatZeroPointObserver,
]
OBSERVERS_RIGHT = [Observer, TorchObserver, ListObserver]


def _ranges_args() -> tuple:
    torch.manual_seed(0)
    return LeNet5().eval(), torch.rand(16, 1, 28, 28)


CASES: dict[str, tuple[Callable, dict[str, Callable], dict[str, Callable], Callable[[], tuple]]] = {
    "check_observer": (
        checks.check_observer,
        {c.__name__: c for c in OBSERVERS_WRONG},
        {c.__name__: c for c in OBSERVERS_RIGHT},
        tuple,
    ),
    "check_fake_quant_weight": (checks.check_fake_quant_weight, WRONG_FQ, RIGHT_FQ, tuple),
    "check_activation_ranges": (checks.check_activation_ranges, WRONG_RANGES, RIGHT_RANGES, _ranges_args),
    "check_bias_quantization": (checks.check_bias_quantization, WRONG_BIAS, RIGHT_BIAS, tuple),
    "check_int_conv2d": (checks.check_int_conv2d, WRONG_CONV, RIGHT_CONV, tuple),
    "check_groupwise": (checks.check_groupwise, WRONG_GW, RIGHT_GW, tuple),
}


@pytest.mark.parametrize(("check", "label"), [(c, k) for c, v in CASES.items() for k in v[1]])
def test_rejects_wrong(check: str, label: str) -> None:
    fn, wrong, _, args = CASES[check]
    with pytest.raises(checks.CheckFailure) as info:
        fn(wrong[label], *args())
    message = str(info.value)
    assert "expected" in message or "raised" in message, message


@pytest.mark.parametrize(("check", "label"), [(c, k) for c, v in CASES.items() for k in v[2]])
def test_accepts_right(check: str, label: str, capsys: pytest.CaptureFixture) -> None:
    fn, _, right, args = CASES[check]
    fn(right[label], *args())
    assert capsys.readouterr().out.startswith(f"PASSED {check}")


def test_activation_ranges_judges_a_fixed_function_fairly_after_a_leak() -> None:
    """A leaky attempt fails and its hooks are removed; the fixed function then passes on the SAME model."""
    model, x = _ranges_args()
    with pytest.raises(checks.CheckFailure, match="still hooked"):
        checks.check_activation_ranges(ranges_no_remove, model, x)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()), "the check should remove the hooks it caught"
    checks.check_activation_ranges(ranges_reference, model, x)


def test_activation_ranges_ignores_hooks_that_were_there_before() -> None:
    """Only hooks added by this call are the learner's fault: a hook already on the model stays, and a correct function passes."""
    model, x = _ranges_args()
    seen = []
    handle = model.fc1.register_forward_hook(lambda mod, inp, out: seen.append(1))
    checks.check_activation_ranges(ranges_arithmetic, model, x)
    assert handle.id in model.fc1._forward_hooks, "a hook the learner did not add must be left alone"
    with pytest.raises(checks.CheckFailure, match="1 modules still hooked"):
        checks.check_activation_ranges(ranges_pre_hook_left, model, x)
    assert handle.id in model.fc1._forward_hooks and not model._forward_pre_hooks


def test_bias_float32_is_really_wrong_on_realistic_scales() -> None:
    b, sx, sw = np.array([-0.2219822529008637]), 0.00933485783094929, np.array([0.00019979524402900816])
    assert bias_reference(b, sx, sw)[0] == -119021 and WRONG_BIAS["float32"](b, sx, sw)[0] == -119022
    with pytest.raises(checks.CheckFailure, match="compute in float64"):
        checks.check_bias_quantization(WRONG_BIAS["float32"])


def test_activation_ranges_default_is_the_lab_model_fused_relu() -> None:
    """The lab's LeNet-5 fuses a ReLU only after fc1: the default relu_after is that one layer."""
    import inspect

    assert inspect.signature(checks.check_activation_ranges).parameters["relu_after"].default == ("fc1",)


def test_groupwise_reference_matches_helper_when_divisible() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 48))
    for g in (8, 16, 48):
        c1, s1 = gw_reference(w, 4, g)
        c2, s2 = Q.quantize_groupwise(w, 4, g)
        assert np.array_equal(c1, c2) and np.allclose(s1, s2, rtol=1e-6)
