"""Every lab check passes the reference answer and rejects plausible wrong ones (it is not vacuous)."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import checks
from helpers import pruning as P

# ----------------------------------------------------------------------------- reference answers


def linear_params(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def conv2d_params(i: int, o: int, k, groups: int = 1, bias: bool = True) -> int:
    kh, kw = (k, k) if isinstance(k, int) else k
    return o * (i // groups) * kh * kw + (o if bias else 0)


def linear_macs(i: int, o: int, batch: int = 1) -> int:
    return batch * i * o


def conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def conv2d_macs(i, o, k, h, w, stride=1, padding=0, groups=1) -> int:
    return o * conv_out(h, k, stride, padding) * conv_out(w, k, stride, padding) * (i // groups) * k * k


def linear_forward(x, W, b):
    return np.maximum(0.0, x @ W.T + b)


def measure(f, x, repeats=50, warmup=10, timer=time.perf_counter):
    for _ in range(warmup):
        f(x)
    times = []
    for _ in range(repeats):
        t = timer()
        f(x)
        times.append((timer() - t) * 1e3)
    p25, med, p75 = np.percentile(times, [25, 50, 75])
    return med, p75 - p25


def magnitude_mask(w, s):
    from helpers.pruning import magnitude_mask as ref

    return ref(w, s)


def wrong_threshold_mask(w, s):  # prunes every entry tied with the k-th smallest
    k = round(s * w.size)
    if k == 0:
        return np.ones(w.shape, dtype=bool)
    threshold = np.sort(np.abs(w).ravel())[k - 1]
    return np.abs(w) > threshold


def wrong_floor_mask(w, s):  # int() instead of round()
    a = np.abs(w).ravel()
    mask = np.ones(a.size, dtype=bool)
    mask[np.argsort(a, kind="stable")[: int(s * a.size)]] = False
    return mask.reshape(w.shape)


def wrong_tie_mask(w, s):  # among ties prunes the higher index first
    a = np.abs(w).ravel()[::-1]
    mask = np.ones(a.size, dtype=bool)
    mask[np.argsort(a, kind="stable")[: round(s * a.size)]] = False
    return mask[::-1].reshape(w.shape)


def global_masks(weights, s):
    from helpers.pruning import global_magnitude_masks

    return global_magnitude_masks(weights, s)


def gradual(step, final, begin, end, initial=0.0):
    from helpers.pruning import gradual_sparsity

    return gradual_sparsity(step, final, begin, end, initial)


def _gradual_power(power):
    def schedule(step, final, begin, end, initial=0.0):
        t = min(max((step - begin) / (end - begin), 0.0), 1.0)
        return final + (initial - final) * (1 - t) ** power

    return schedule


def csr(dense):
    from helpers.pruning import csr_encode

    c = csr_encode(dense)
    return c.values, c.col_idx, c.row_ptr


def csc_instead(dense):
    values, rows, ptr = csr(dense.T)
    return values, rows, ptr


def sensitivity(model, data, sparsities):
    import copy

    from helpers.pruning import apply_masks, magnitude_mask, prunable_weights
    from helpers.train import evaluate

    out = {}
    for layer in prunable_weights(model):
        out[layer] = []
        for s in sparsities:
            m = copy.deepcopy(model)
            apply_masks(m, {layer: magnitude_mask(prunable_weights(m)[layer].detach(), s)})
            out[layer].append(evaluate(m, data))
    return out


def sensitivity_in_place(model, data, sparsities):
    from helpers.pruning import apply_masks, magnitude_mask, prunable_weights
    from helpers.train import evaluate

    out = {}
    for layer in prunable_weights(model):
        out[layer] = []
        for s in sparsities:
            apply_masks(model, {layer: magnitude_mask(prunable_weights(model)[layer].detach(), s)})
            out[layer].append(evaluate(model, data))
    return out


def sensitivity_cumulative(model, data, sparsities):
    import copy

    from helpers.pruning import apply_masks, magnitude_mask, prunable_weights
    from helpers.train import evaluate

    m = copy.deepcopy(model)
    out = {}
    for layer in prunable_weights(m):
        out[layer] = []
        for s in sparsities:
            apply_masks(m, {layer: magnitude_mask(prunable_weights(m)[layer].detach(), s)})
            out[layer].append(evaluate(m, data))
    return out


def nm_mask_ref(w, n, m):
    from helpers.pruning import nm_mask

    return nm_mask(w, n, m)


def nm_mask_reversed_ties(w, n, m):
    return nm_mask_ref(w[:, ::-1].copy(), n, m)[:, ::-1] if w.shape[-1] % m == 0 else nm_mask_ref(w, n, m)


def nm_mask_no_error(w, n, m):
    if w.shape[-1] % m:
        return np.ones(w.shape, dtype=bool)
    return nm_mask_ref(w, n, m)


def top_filters_ref(w, keep, norm="l1"):
    return P.top_channels(P.channel_scores(w, norm), keep)


def top_filters_reversed_ties(w, keep, norm="l1"):
    flipped = P.top_channels(P.channel_scores(w.flip(0), norm), keep)
    return torch.sort(w.shape[0] - 1 - flipped).values


def shrink_pair_without_bias(c, s, keep):
    small, small_next = P.shrink_pair(c, s, keep)
    with torch.no_grad():
        small.bias.copy_(c.bias[: len(keep)])
    return small, small_next


def shrink_pair_in_place(c, s, keep):  # zeroes the original's dropped filters
    with torch.no_grad():
        dropped = [i for i in range(c.out_channels) if i not in set(keep.tolist())]
        c.weight[dropped] = 0
    return P.shrink_pair(c, s, keep)


def _linear_cols(lin, columns):
    new = torch.nn.Linear(len(columns), lin.out_features)
    with torch.no_grad():
        new.weight.copy_(lin.weight[:, columns])
        new.bias.copy_(lin.bias)
    return new


def lenet5_macs_ref(c1, c2, hidden):
    return c1 * 24 * 24 * 25 + c2 * 8 * 8 * c1 * 25 + c2 * 16 * hidden + hidden * 10


def blank(*args, **kwargs):
    raise NotImplementedError()


# ----------------------------------------------------------------------------- wrong answers

WRONG: dict[str, tuple[Callable, list[Callable]]] = {
    "check_linear_params": (
        linear_params,
        [
            lambda i, o, bias=True: i * o,  # forgets the bias
            lambda i, o, bias=True: i * o + o,  # ignores bias=False
            lambda i, o, bias=True: (i + 1) * (o + 1),  # off by one
        ],
    ),
    "check_conv2d_params": (
        conv2d_params,
        [
            lambda i, o, k, groups=1, bias=True: conv2d_params(i, o, k, 1, bias),  # ignores groups
            lambda i, o, k, groups=1, bias=True: conv2d_params(i, o, k, groups, False),  # forgets the bias
            lambda i, o, k, groups=1, bias=True: (
                o * (i // groups) * (k if isinstance(k, int) else k[0]) ** 2 + (o if bias else 0)
            ),  # square only
        ],
    ),
    "check_linear_macs": (
        linear_macs,
        [
            lambda i, o, batch=1: i * o,  # ignores the batch
            lambda i, o, batch=1: batch * (i * o + o),  # counts bias adds
        ],
    ),
    "check_conv2d_macs": (
        conv2d_macs,
        [
            lambda i, o, k, h, w, stride=1, padding=0, groups=1: o * h * w * (i // groups) * k * k,  # input size for output size
            lambda i, o, k, h, w, stride=1, padding=0, groups=1: conv2d_macs(i, o, k, h, w, stride, padding, 1),  # ignores groups
            lambda i, o, k, h, w, stride=1, padding=0, groups=1: (
                o * ((h + 2 * padding - k) // stride) * ((w + 2 * padding - k) // stride) * (i // groups) * k * k
            ),  # missing +1
            lambda i, o, k, h, w, stride=1, padding=0, groups=1: conv2d_macs(i, o, k, h, w, 1, padding, groups),  # ignores stride
            lambda i, o, k, h, w, stride=1, padding=0, groups=1: (
                o * round((h + 2 * padding - k) / stride + 1) * round((w + 2 * padding - k) / stride + 1) * (i // groups) * k * k
            ),  # rounds instead of floor
        ],
    ),
    "check_linear_forward": (
        linear_forward,
        [
            lambda x, W, b: x @ W.T + b,  # no ReLU
            lambda x, W, b: np.maximum(0, x @ W.T),  # no bias
            lambda x, W, b: (
                np.maximum(0, x @ W + b) if W.shape[0] == W.shape[1] else np.maximum(0, x @ W.T + b)
            ),  # transpose slip on square W
            lambda x, W, b: np.maximum(0, x @ W.T + b).astype(np.float16),  # precision lost
        ],
    ),
    "check_measure_latency": (
        measure,
        [
            lambda f, x, repeats=50, warmup=10, timer=time.perf_counter: measure(f, x, repeats + warmup, 0, timer),  # times the warm-up
            lambda f, x, repeats=50, warmup=10, timer=time.perf_counter: tuple(
                v / 1e3 for v in measure(f, x, repeats, warmup, timer)
            ),  # seconds
            lambda f, x, repeats=50, warmup=10, timer=time.perf_counter: _mean_instead(f, x, repeats, warmup, timer),  # mean
            lambda f, x, repeats=50, warmup=10, timer=time.perf_counter: (measure(f, x, repeats, warmup, timer)[0], 0.0),  # no spread
        ],
    ),
    "check_magnitude_mask": (
        magnitude_mask,
        [
            wrong_threshold_mask,
            wrong_floor_mask,
            wrong_tie_mask,
            lambda w, s: ~magnitude_mask(-np.abs(w), 1 - s) if 0 < s < 1 else magnitude_mask(w, s),  # prunes the largest
            lambda w, s: magnitude_mask(w, s).astype(np.float32),  # not boolean
        ],
    ),
    "check_global_masks": (
        global_masks,
        [
            lambda weights, s: {k: magnitude_mask(v, s) for k, v in weights.items()},  # per-layer, not global
            lambda weights, s: dict(
                zip(
                    weights,
                    [
                        wrong_tie_mask(np.concatenate([v.ravel() for v in weights.values()]), s)[a:b].reshape(v.shape)
                        for v, a, b in _slices(weights)
                    ],
                )
            ),  # ties: later layer first
        ],
    ),
    "check_gradual_sparsity": (
        gradual,
        [
            _gradual_power(1),
            _gradual_power(2),
            lambda step, final, begin, end, initial=0.0: final * min(max((step - begin) / (end - begin), 0), 1) ** 3,
        ],
    ),
    "check_csr_encode": (
        csr,
        [
            csc_instead,
            lambda d: (csr(d)[0], csr(d)[1], csr(d)[2][1:]),  # row_ptr without its leading 0
            lambda d: (csr(d)[0], np.nonzero(d)[0], csr(d)[2]),  # row indices stored instead of columns
        ],
    ),
    "check_sensitivity_scan": (sensitivity, [sensitivity_in_place, sensitivity_cumulative]),
    "check_taylor_scores": (  # more wrong answers and correct alternatives in tests/test_checks_01.py
        lambda model, batches: P.accumulate_taylor_scores(model, batches),
        [lambda model, batches: {n: s.sqrt() for n, s in P.accumulate_taylor_scores(model, batches).items()}],  # |w g|, not squared
    ),
}

WRONG.update(
    {
        "check_nm_mask": (
            nm_mask_ref,
            [
                lambda w, n, m: nm_mask_ref(w.T.copy(), n, m).T if w.shape[0] % m == 0 else nm_mask_ref(w, n, m),  # groups along columns
                lambda w, n, m: ~nm_mask_ref(w, m - n, m) if w.shape[-1] % m == 0 else nm_mask_ref(w, n, m),  # keeps the smallest
                nm_mask_reversed_ties,
                nm_mask_no_error,
            ],
        ),
        "check_top_filters": (
            top_filters_ref,
            [
                lambda w, keep, norm="l1": (
                    top_filters_ref(w.transpose(0, 1).contiguous(), keep, norm) if w.shape[1] >= keep else top_filters_ref(w, keep, norm)
                ),  # input axis
                lambda w, keep, norm="l1": top_filters_ref(w, keep, "l2" if norm == "l1" else "l1"),  # wrong norm
                lambda w, keep, norm="l1": torch.argsort(
                    w.flatten(1).abs().sum(1) if norm == "l1" else w.flatten(1).norm(dim=1), descending=True
                )[:keep],  # unsorted
                top_filters_reversed_ties,
            ],
        ),
        "check_shrink_conv_pair": (
            lambda c, s, keep: P.shrink_pair(c, s, keep),
            [
                shrink_pair_without_bias,
                lambda c, s, keep: (P.shrink_outputs(c, keep), s),  # successor untouched
                shrink_pair_in_place,
            ],
        ),
        "check_shrink_conv_linear": (
            lambda c, lin, keep, spatial: P.shrink_pair(c, lin, keep, positions=spatial),
            [
                lambda c, lin, keep, spatial: (
                    P.shrink_outputs(c, keep),
                    P.shrink_inputs(lin, torch.arange(len(keep) * spatial)),
                ),  # first columns
                lambda c, lin, keep, spatial: (
                    P.shrink_outputs(c, keep),
                    _linear_cols(lin, (keep[None, :] + len(keep) * torch.arange(spatial)[:, None]).flatten()),
                ),  # interleaved
            ],
        ),
        "check_lenet5_macs": (
            lenet5_macs_ref,
            [
                lambda c1, c2, h: lenet5_macs_ref(c1, c2, h) - c2 * 64 * 25 * c1 + c2 * 64 * 25 * 20,  # conv2 still sees 20 channels
                lambda c1, c2, h: c1 * 24 * 24 * 25 + c2 * 24 * 24 * c1 * 25 + c2 * 16 * h + h * 10,  # conv2 on the unpooled size
                lambda c1, c2, h: lenet5_macs_ref(c1, c2, h) - c2 * 16 * h + 800 * h,  # fc1 inputs unchanged
            ],
        ),
    }
)

from helpers import quantization as Q  # noqa: E402


def _qparams_no_widen(x_min, x_max, bits=8, symmetric=False, signed=True):
    qmin, qmax = Q.qrange(bits, signed)
    if symmetric or x_min == x_max:
        return Q.qparams(x_min, x_max, bits, symmetric, signed)
    scale = (x_max - x_min) / (qmax - qmin)
    return scale, int(np.clip(qmin - np.round(x_min / scale), qmin, qmax))


def _requantize_float(acc, m0, shift, zp, bits=8):
    return np.clip(np.round(acc * (m0 * 2.0 ** (-31 - shift))) + zp, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def _quantized_linear_ref(q_x, zp_x, q_w, bias_q, m0, shift, zp_y):
    return Q.quantized_linear(q_x, zp_x, q_w, 0, bias_q, m0, shift, zp_y, 8, False)


WRONG.update(
    {
        "check_qparams": (
            Q.qparams,
            [
                _qparams_no_widen,
                lambda lo, hi, bits=8, symmetric=False, signed=True: (
                    (Q.qparams(lo, hi, bits, symmetric, signed)[0] * (2**bits - 1) / 2**bits),
                    Q.qparams(lo, hi, bits, symmetric, signed)[1],
                ),  # divides by 2**bits levels
                lambda lo, hi, bits=8, symmetric=False, signed=True: (
                    Q.qparams(lo, hi, bits, symmetric, signed)[0],
                    Q.qrange(bits, signed)[0] - min(lo, 0) / Q.qparams(lo, hi, bits, symmetric, signed)[0] if not symmetric else 0,
                ),  # zero point not rounded
                lambda lo, hi, bits=8, symmetric=False, signed=True: (
                    (max(-min(lo, 0), max(hi, 0)) / 2 ** (bits - 1) or 1.0, 0) if symmetric else Q.qparams(lo, hi, bits, symmetric, signed)
                ),  # symmetric scale over 2**(b-1)
            ],
        ),
        "check_quantize": (
            Q.quantize,
            [
                lambda x, s, z, bits=8, signed=True: np.clip(np.floor(x / s + 0.5) + z, *Q.qrange(bits, signed)).astype(
                    np.int64
                ),  # half up
                lambda x, s, z, bits=8, signed=True: np.clip(
                    np.sign(x / s) * np.floor(np.abs(x / s) + 0.5) + z, *Q.qrange(bits, signed)
                ).astype(np.int64),  # half away
                lambda x, s, z, bits=8, signed=True: np.clip(
                    np.round(x / s) + z, Q.qrange(bits, signed)[0], Q.qrange(bits, signed)[1] + 1
                ).astype(np.int64),  # qmax + 1
                lambda x, s, z, bits=8, signed=True: np.clip(
                    np.round(x / s) + z, Q.qrange(bits, signed)[0] + 1, Q.qrange(bits, signed)[1]
                ).astype(np.int64),  # qmin + 1
                lambda x, s, z, bits=8, signed=True: np.round(x / s) + z,  # no clamp, float
            ],
        ),
        "check_per_channel_qparams": (
            lambda w, axis=0, bits=8: Q.qparams_per_channel(w, axis=axis, bits=bits),
            [
                lambda w, axis=0, bits=8: Q.qparams_per_channel(w, axis=(1 - axis) if w.ndim == 2 else axis, bits=bits),  # wrong axis
                lambda w, axis=0, bits=8: tuple(
                    np.full(w.shape[axis], v) for v in Q.qparams(w.min(), w.max(), bits, symmetric=True)
                ),  # per-tensor
            ],
        ),
        "check_mse_range": (
            lambda x, bits: Q.mse_range(x, bits),
            [lambda x, bits: Q.minmax_range(x), lambda x, bits: Q.percentile_range(x, 99.0)],
        ),
        "check_quantize_multiplier": (
            Q.quantize_multiplier,
            [
                lambda m: (Q.quantize_multiplier(m)[0], Q.quantize_multiplier(m)[1] + 1),  # shift off by one
                lambda m: (round(m * 2**31), 0),  # no normalisation: m0 out of range for small M
            ],
        ),
        "check_requantize": (
            lambda acc, m0, shift, zp, bits=8: Q.requantize(acc, m0, shift, zp, bits),
            [
                lambda acc, m0, shift, zp, bits=8: Q.requantize(acc, m0, shift, 0, bits),  # forgets the zero point
                lambda acc, m0, shift, zp, bits=8: np.round(acc * (m0 * 2.0 ** (-31 - shift))).astype(np.int64) + zp,  # no clamp
                lambda acc, m0, shift, zp, bits=8: Q.requantize(acc, m0, max(shift - 1, 0), zp, bits),  # shift off by one
                _requantize_float,  # returns floats
            ],
        ),
        "check_quantized_linear": (
            _quantized_linear_ref,
            [
                lambda q_x, zp_x, q_w, bias_q, m0, shift, zp_y: Q.quantized_linear(
                    q_x, 0, q_w, 0, bias_q, m0, shift, zp_y, 8, False
                ),  # ignores zp_x
                lambda q_x, zp_x, q_w, bias_q, m0, shift, zp_y: Q.quantized_linear(
                    q_x, zp_x, q_w, 0, None, m0, shift, zp_y, 8, False
                ),  # no bias
                lambda q_x, zp_x, q_w, bias_q, m0, shift, zp_y: Q.quantized_linear(
                    q_x, zp_x, q_w, 0, bias_q, m0[0], shift[0], zp_y, 8, False
                ),  # channel 0's multiplier for all
            ],
        ),
    }
)


class MinMaxObserver:
    def __init__(self):
        self.lo, self.hi = np.inf, -np.inf

    def update(self, x):
        a = np.asarray(x)
        self.lo, self.hi = min(self.lo, float(a.min())), max(self.hi, float(a.max()))

    def qparams(self):
        return Q.qparams(self.lo, self.hi, 8, symmetric=False, signed=False)


class LastBatchObserver(MinMaxObserver):  # forgets earlier batches
    def update(self, x):
        a = np.asarray(x)
        self.lo, self.hi = float(a.min()), float(a.max())


class SymmetricObserver(MinMaxObserver):  # symmetric instead of asymmetric
    def qparams(self):
        return (
            Q.qparams(self.lo, self.hi, 8, symmetric=True, signed=False)
            if self.lo >= 0
            else Q.qparams(-max(-self.lo, self.hi), max(-self.lo, self.hi), 8, signed=False)
        )


class NoWidenObserver(MinMaxObserver):  # range not widened to include 0
    def qparams(self):
        if self.lo == self.hi:
            return 1.0, 0
        scale = (self.hi - self.lo) / 255
        return scale, int(np.clip(-np.round(self.lo / scale), 0, 255))


def fake_quant_weight(w, bits):
    scales, zps = Q.qparams_per_channel(w, axis=0, bits=bits)
    return Q.dequantize_per_channel(Q.quantize_per_channel(w.double(), scales, zps, axis=0, bits=bits), scales, zps, axis=0)


def activation_ranges(model, x, relu_after=("fc1",), outputs=True, remove=True):
    ranges, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):

            def hook(mod, inp, out, key=name):
                t = (torch.relu(out) if key in relu_after else out) if outputs else inp[0]
                ranges[key] = (float(t.min()), float(t.max()))

            handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    if remove:
        for h in handles:
            h.remove()
    return ranges


def int_conv2d(q_x, zp, q_w):
    f, c, k, _ = q_w.shape
    n, _, h, w = q_x.shape
    cols = Q.im2col(q_x.astype(np.int64) - zp, k)  # the check passes uint8 codes: cast before subtracting
    return (cols @ q_w.reshape(f, -1).astype(np.int64).T).reshape(n, h - k + 1, w - k + 1, f).transpose(0, 3, 1, 2)


def _groupwise(w, bits, g):
    """Group-wise codes/scales with a shorter last group where g does not divide the width (lab 04, exercise 6)."""
    qmax, n = 2 ** (bits - 1) - 1, -(-w.shape[1] // g)
    amax = np.stack([np.abs(w[:, j * g : (j + 1) * g]).max(1) for j in range(n)], 1)
    scales = np.where(amax > 0, amax / qmax, 1.0)
    return np.clip(np.round(w / np.repeat(scales, g, axis=1)[:, : w.shape[1]]), -qmax, qmax).astype(np.int8), scales


def _activation_args() -> tuple:
    from helpers.models import LeNet5

    torch.manual_seed(0)
    return LeNet5().eval(), torch.rand(8, 1, 28, 28)


WRONG.update(
    {
        "check_observer": (MinMaxObserver, [LastBatchObserver, SymmetricObserver, NoWidenObserver]),
        "check_fake_quant_weight": (
            fake_quant_weight,
            [
                lambda w, bits: Q.fake_quantize(
                    w.double(), *Q.qparams(float(w.min()), float(w.max()), bits, symmetric=True), bits
                ),  # per-tensor
                lambda w, bits: (
                    fake_quant_weight(w.transpose(0, 1), bits).transpose(0, 1) if w.dim() == 2 else fake_quant_weight(w, bits) * 1.01
                ),  # wrong axis
                lambda w, bits: torch.stack(
                    [Q.fake_quantize(r.double(), *Q.qparams(float(r.min()), float(r.max()), bits), bits) for r in w]
                ),  # asymmetric
            ],
        ),
        "check_activation_ranges": (
            activation_ranges,
            [
                lambda m, x, r: activation_ranges(m, x, r, outputs=False),  # inputs, not outputs
                lambda m, x, r: activation_ranges(m, x, r, remove=False),  # leaves hooks behind
                lambda m, x, r: {k: v for k, v in list(activation_ranges(m, x, r).items())[:-1]},  # misses a layer
                lambda m, x, r: activation_ranges(m, x, ()),  # pre-ReLU ranges although fc1's ReLU is fused
            ],
        ),
        "check_bias_quantization": (
            lambda b, sx, sw: np.round(b / (sx * sw)).astype(np.int32),
            [
                lambda b, sx, sw: np.round(b / sw).astype(np.int32),  # weight scale only
                lambda b, sx, sw: np.trunc(b / (sx * sw)).astype(np.int32),  # truncates
                lambda b, sx, sw: np.round(b / (sx * sw)),  # float, not int32
                lambda b, sx, sw: np.floor(b / (sx * sw) + 0.5).astype(np.int32),  # half up
            ],
        ),
        "check_int_conv2d": (
            int_conv2d,
            [
                lambda q_x, zp, q_w: int_conv2d(q_x, 0, q_w),  # ignores the zero point
                lambda q_x, zp, q_w: int_conv2d(q_x, zp, q_w.transpose(0, 1, 3, 2)),  # kernel transposed
                lambda q_x, zp, q_w: int_conv2d(q_x, zp, q_w).astype(np.float32),  # float accumulators
            ],
        ),
        "check_groupwise": (
            _groupwise,
            [
                lambda w, bits, g: _groupwise(w, bits, w.shape[1]),  # one scale per row
                lambda w, bits, g: (
                    lambda c, s: (
                        np.clip(
                            np.round(w / np.repeat(s, g, axis=1)[:, : w.shape[1]] * 2 ** (bits - 1) / (2 ** (bits - 1) - 1)),
                            -(2 ** (bits - 1)),
                            2 ** (bits - 1) - 1,
                        ),
                        s,
                    )
                )(*_groupwise(w, bits, g)),  # qmax = 2**(b-1)
                lambda w, bits, g: (_groupwise(w, bits, g)[0], _groupwise(w, bits, g)[1] * 1.1),  # scales off by 10%
            ],
        ),
    }
)

from helpers import distillation as KD  # noqa: E402


def _distill_step(student, optimizer, x, y, t, T, alpha):
    loss = KD.distillation_loss(student(x), t, y, T, alpha)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def _distill_step_no_zero_grad(student, optimizer, x, y, t, T, alpha):
    loss = KD.distillation_loss(student(x), t, y, T, alpha)
    loss.backward()
    optimizer.step()
    return loss.item()


def _distill_step_swapped(student, optimizer, x, y, t, T, alpha):
    return _distill_step(student, optimizer, x, y, t, T, 1 - alpha)


WRONG.update(
    {
        "check_distillation_step": (_distill_step, [_distill_step_no_zero_grad, _distill_step_swapped]),
        "check_hint_loss": (
            KD.hint_loss,
            [
                lambda fs, ft, r: torch.nn.functional.mse_loss(r(fs), ft),  # teacher not detached
                lambda fs, ft, r: (r(fs) - ft.detach()).pow(2).sum(),  # sum, not mean
                lambda fs, ft, r: (r(fs) - ft.detach()).abs().mean(),  # L1
            ],
        ),
    }
)

WRONG.update(
    {
        "check_ensemble_soft_targets": (
            KD.ensemble_soft_targets,
            [
                lambda zs, T: KD.softmax_t(np.mean(zs, axis=0), T),  # averages the logits
                lambda zs, T: np.sum([KD.softmax_t(z, T) for z in zs], axis=0),  # sum over the teachers
                lambda zs, T: KD.softmax_t(zs[0], T),  # first teacher only
            ],
        ),
        "check_soft_target_loss": (
            KD.soft_target_loss,
            [
                lambda s, p, y, T, a: KD.soft_target_loss(s, p, y, T, 1 - a),  # alpha on the labels
                lambda s, p, y, T, a: a * KD.soft_target_loss(s, p, y, T, 1.0),  # labels forgotten
                lambda s, p, y, T, a: KD.soft_target_loss(s, p, y, T, a) * len(s),  # batch sum
            ],
        ),
        "check_soft_target_grad": (
            KD.soft_target_grad,
            [
                lambda s, p, y, T, a: -KD.soft_target_grad(s, p, y, T, a),  # sign
                lambda s, p, y, T, a: KD.soft_target_grad(s, p, y, T, a) * len(s),  # no batch mean
                lambda s, p, y, T, a: a * KD.soft_target_grad(s, p, y, T, 1.0),  # label part forgotten
            ],
        ),
        "check_pooled_attention_map": (
            KD.pooled_attention_map,
            [
                lambda f, size, p=2: torch.nn.functional.normalize(
                    torch.nn.functional.max_pool2d(f.abs().pow(p).sum(1, keepdim=True), f.shape[2] // size).flatten(1), dim=1
                ),  # max-pool
                lambda f, size, p=2: KD.attention_map(torch.nn.functional.avg_pool2d(f, f.shape[2] // size), p),  # pools the features
                lambda f, size, p=2: KD.pooled_attention_map(f, size, p) * 2,  # not unit norm
            ],
        ),
    }
)

from helpers import lowrank as LR  # noqa: E402


def _factorize_all_s_first(layer, rank):
    U, S, Vt = LR.truncated_svd(layer.weight.detach().double(), rank)
    first, second = torch.nn.Linear(layer.in_features, rank, bias=False), torch.nn.Linear(rank, layer.out_features)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(S[:, None] * Vt))
        second.weight.copy_(torch.from_numpy(U))
        second.bias.copy_(layer.bias)
    return torch.nn.Sequential(first, second)


def _factorize_transposed(layer, rank):
    U, S, Vt = LR.truncated_svd(layer.weight.detach().double(), rank)
    root = np.sqrt(S)
    first, second = torch.nn.Linear(rank, layer.in_features, bias=False), torch.nn.Linear(layer.out_features, rank)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy((root[:, None] * Vt).T))
        second.weight.copy_(torch.from_numpy((U * root).T))
    return torch.nn.Sequential(first, second)


def _hosvd_wrong_unfolding(K, r_out, r_in):
    U_out = np.linalg.svd(K.reshape(K.shape[0], -1), full_matrices=False)[0][:, :r_out]
    U_in = np.linalg.svd(K.reshape(K.shape[1], -1), full_matrices=False)[0][:, :r_in]  # reshape without moving the axis
    core = LR.mode_product(LR.mode_product(K, U_out.T, 0), U_in.T, 1)
    return core, U_out, U_in


def _hosvd_smallest(K, r_out, r_in):
    U_out = np.linalg.svd(LR.unfold(K, 0), full_matrices=False)[0][:, -r_out:]
    U_in = np.linalg.svd(LR.unfold(K, 1), full_matrices=False)[0][:, -r_in:]
    return LR.mode_product(LR.mode_product(K, U_out.T, 0), U_in.T, 1), U_out, U_in


def _tucker_macs_first_on_output(c_in, c_out, k, r_in, r_out, h, w, pad=0):
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    return LR.tucker2_macs(c_in, c_out, k, r_in, r_out, ho, wo, ho, wo)


def _tucker_macs(c_in, c_out, k, r_in, r_out, h, w, pad=0):
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    return LR.tucker2_macs(c_in, c_out, k, r_in, r_out, h, w, ho, wo)


WRONG.update(
    {
        "check_truncated_svd": (
            LR.truncated_svd,
            [
                lambda W, r: (lambda U, S, Vt: (U, S, Vt.T))(*LR.truncated_svd(W, r)),  # V instead of V^T
                lambda W, r: (lambda U, S, Vt: (U[:, -r:], S[-r:], Vt[-r:]))(*np.linalg.svd(W, full_matrices=False)),  # smallest
            ],
        ),
        "check_low_rank_error": (
            lambda S, r: float(np.sqrt(np.sum(S[r:] ** 2))),
            [
                lambda S, r: float(np.sum(S[r:] ** 2)),  # no square root
                lambda S, r: float(np.sqrt(np.sum(S[r + 1 :] ** 2))),  # off by one
                lambda S, r: float(np.sum(S[r:])),  # sum of sigma
            ],
        ),
        "check_rank_for_energy": (
            LR.rank_for_energy,
            [
                lambda s, e: int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), e)),  # 0-based: off by one
                lambda s, e: LR.rank_for_energy(np.sqrt(s), e),  # energy of sigma, not sigma^2
                lambda s, e: min(LR.rank_for_energy(s, e) + 1, len(s)),  # one too many
            ],
        ),
        "check_factorize_linear": (LR.factorize_linear, [_factorize_all_s_first, _factorize_transposed]),
        "check_hosvd": (LR.hosvd_tucker2, [_hosvd_wrong_unfolding, _hosvd_smallest]),
        "check_factorize_conv": (
            LR.factorize_conv,
            [lambda conv, r: LR.factorize_linear(torch.nn.Linear(conv.weight[0].numel(), conv.out_channels), r)],
        ),
        "check_tucker2_conv": (
            LR.tucker2_conv,
            [lambda conv, r_out, r_in: LR.tucker2_conv(conv, r_in, r_in)],
        ),  # more in tests/test_checks_08.py
        "check_tucker2_macs": (
            _tucker_macs,
            [
                _tucker_macs_first_on_output,  # first 1x1 on the output size
                lambda c_in, c_out, k, r_in, r_out, h, w, pad=0: (
                    _tucker_macs(c_in, c_out, k, r_in, r_out, h, w, pad) - r_out * c_out * (h + 2 * pad - k + 1) * (w + 2 * pad - k + 1)
                ),  # forgets the last 1x1
                lambda c_in, c_out, k, r_in, r_out, h, w, pad=0: _tucker_macs(c_in, c_out, k, r_in, r_out, h, w, 0),  # ignores padding
            ],
        ),
    }
)

EXTRA_ARGS: dict[str, Callable[[], tuple]] = {"check_quantize": lambda: (Q.dequantize,), "check_activation_ranges": _activation_args}


def _sensitivity_args() -> tuple:
    import torch

    from helpers.models import LeNet300

    torch.manual_seed(0)
    model = LeNet300()
    x = torch.rand(64, 1, 28, 28)
    # Labels the model mostly gets right, so that pruning visibly changes accuracy.
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, (x, y)


EXTRA_ARGS["check_sensitivity_scan"] = _sensitivity_args

# Chapters 05 and later keep their reference and wrong answers next to their other check tests, in
# tests/test_checks_NN.py, as  CHECK_CASES = {"check_name": (reference, [wrong, ...], extra_args or None)}
# where extra_args() returns the check's arguments after the learner's function. The generic tests
# below run them too, and the coverage test counts them.
for _path in sorted(Path(__file__).parent.glob("test_checks_[0-9][0-9].py")):
    _cases = getattr(importlib.import_module(f"tests.{_path.stem}"), "CHECK_CASES", {})
    for _name, (_reference, _wrong, _extra) in _cases.items():
        assert _name not in WRONG, f"{_name} is registered twice ({_path.name} and test_checks.py)"
        WRONG[_name] = (_reference, list(_wrong))
        if _extra is not None:
            EXTRA_ARGS[_name] = _extra


def _slices(weights):
    start = 0
    for v in weights.values():
        yield v, start, start + v.size
        start += v.size


def _run(name: str, fn: Callable) -> None:
    extra = EXTRA_ARGS[name]() if name in EXTRA_ARGS else ()
    getattr(checks, name)(fn, *extra)


def _mean_instead(f, x, repeats, warmup, timer):
    for _ in range(warmup):
        f(x)
    times = []
    for _ in range(repeats):
        t = timer()
        f(x)
        times.append((timer() - t) * 1e3)
    return float(np.mean(times)), float(np.subtract(*np.percentile(times, [75, 25])))


@pytest.mark.parametrize("name", sorted(WRONG))
def test_check_passes_the_reference(name: str, capsys: pytest.CaptureFixture) -> None:
    _run(name, WRONG[name][0])
    assert capsys.readouterr().out.startswith(f"PASSED {name}")


@pytest.mark.parametrize("name", sorted(WRONG))
def test_check_rejects_the_blank(name: str) -> None:
    with pytest.raises(NotImplementedError):
        _run(name, blank)


@pytest.mark.parametrize(("name", "index"), [(n, i) for n in sorted(WRONG) for i in range(len(WRONG[n][1]))])
def test_check_rejects_a_plausible_wrong_answer(name: str, index: int) -> None:
    with pytest.raises(checks.CheckFailure) as error:
        _run(name, WRONG[name][1][index])
    message = str(error.value)
    assert "expected" in message and "got" in message and "hint" in message


def test_every_public_check_is_covered_here() -> None:
    public = {n for n in dir(checks) if n.startswith("check_")}
    assert public == set(WRONG), f"add wrong answers for {sorted(public - set(WRONG))}"


def test_check_quantize_rejects_a_wrong_dequantize() -> None:
    with pytest.raises(checks.CheckFailure, match="dequantize"):
        checks.check_quantize(Q.quantize, lambda q, s, z: (q + z) * s)


def test_learner_errors_become_check_failures() -> None:
    with pytest.raises(checks.CheckFailure, match="ZeroDivisionError"):
        checks.check_linear_params(lambda i, o, bias=True: 1 // 0)
    with pytest.raises(checks.CheckFailure, match="an int"):
        checks.check_linear_params(lambda i, o, bias=True: "many")


def test_a_check_failure_shows_its_message_first_in_jupyter() -> None:
    with pytest.raises(checks.CheckFailure) as caught:
        checks.check_linear_params(lambda i, o, bias=True: i * o)
    lines = caught.value._render_traceback_()  # what IPython prints instead of the frames
    assert len(lines) == 1 and "expected" in lines[0] and "hint" in lines[0], lines
    assert "def " not in lines[0], "helper source leaked into the message"
