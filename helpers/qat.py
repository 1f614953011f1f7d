"""Quantization-aware training (QAT) and very low bit widths.

- The straight-through estimator (STE): :class:`RoundSTE` (round forward, identity backward) and
  :class:`FakeQuantSTE` (fake quantization forward, gradient passed inside the clipping range only).
- LSQ (Esser et al. 2020): :class:`LSQFakeQuant`, a learned step size with the hand-written gradient
  ``d x_hat / d s = round(x/s) - x/s`` inside the range, ``qmin - z`` / ``qmax - z`` outside, scaled by
  ``g = 1 / sqrt(N * Qp)`` (:func:`lsq_grad_scale`).
- PACT (Choi et al. 2018): :func:`pact`, a learned clip ``alpha`` for ReLU activations.
- BinaryConnect / XNOR-Net (Courbariaux et al. 2015, Rastegari et al. 2016): :func:`binarize_weight`,
  ``alpha * sign(w)`` with ``alpha = mean |w|`` per output channel; TWN (Li et al. 2016):
  :func:`ternarize`, threshold ``0.7 * mean |w|`` and scale ``mean |w|`` over the kept weights.
- :class:`QATNet`: a LeNet (the op order of :func:`helpers.ptq.lenet_ops`) with fake-quantized weights
  and activations; :func:`to_int_model` turns it into a :class:`helpers.ptq.Int8Model` that runs in
  integers only; :func:`write_model_file` writes packed codes + scales + biases to a real file.
- Mixed precision: :func:`allocate_bits`, the per-layer bit widths that minimise a summed sensitivity
  under a byte budget (exhaustive search over the few layers of these models).
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import ptq as PTQ
from . import quantization as Q

WEIGHT_MODES = ("fixed", "lsq", "binary", "ternary")
ACT_MODES = ("fixed", "lsq", "pact")


# ----------------------------------------------------------------------------- the straight-through estimator


class RoundSTE(torch.autograd.Function):
    """``round`` (half to even) forward; the gradient passes unchanged (Bengio et al. 2013's straight-through)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd's context
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """:class:`RoundSTE` applied to ``x``."""
    return RoundSTE.apply(x)


class FakeQuantSTE(torch.autograd.Function):
    """``s * (clamp(round(x / s) + z, qmin, qmax) - z)`` forward; backward: the clipped STE, ``grad`` where
    ``qmin <= round(x / s) + z <= qmax`` and 0 where the value was clipped. ``scale`` and ``zero_point``
    broadcast against ``x`` and get no gradient (the ranges are fixed)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:  # noqa: ANN001
        q = torch.round(x / scale) + zero_point
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return (q.clamp(qmin, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def _check_range(qmin: int, qmax: int) -> None:
    if not (isinstance(qmin, (int, np.integer)) and isinstance(qmax, (int, np.integer))) or qmin >= qmax:
        raise ValueError(f"qmin and qmax must be ints with qmin < qmax, got {qmin!r}, {qmax!r}")


def fake_quant_ste(x: torch.Tensor, scale: torch.Tensor | float, zero_point: torch.Tensor | int, qmin: int, qmax: int) -> torch.Tensor:
    """:class:`FakeQuantSTE` applied to ``x`` (scale and zero point as tensors broadcasting against x, or numbers)."""
    _check_range(qmin, qmax)
    scale = torch.as_tensor(scale, dtype=x.dtype)
    if torch.any(scale <= 0):
        raise ValueError("scale must be > 0")
    return FakeQuantSTE.apply(x, scale, torch.as_tensor(zero_point, dtype=x.dtype), int(qmin), int(qmax))


# ----------------------------------------------------------------------------- LSQ


def lsq_grad_scale(n: int, qmax: int) -> float:
    """LSQ's step-size gradient scale ``g = 1 / sqrt(n * Qp)``: ``n`` values share the step, ``Qp = qmax``."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(qmax, (int, np.integer)) or qmax < 1:
        raise ValueError(f"qmax must be a positive int, got {qmax!r}")
    return 1.0 / math.sqrt(n * qmax)


class LSQFakeQuant(torch.autograd.Function):
    """LSQ (Esser et al. 2020) with a fixed integer zero point ``z``: ``x_hat = s (clamp(round(x/s) + z, qmin, qmax) - z)``.

    Backward, with ``v = x / s``: ``d x_hat / d x`` = 1 inside the range, 0 where clipped (the STE);
    ``d x_hat / d s`` = ``round(v) - v`` inside, ``qmin - z`` below, ``qmax - z`` above, times ``g``
    and summed over the values sharing each step (``scale`` broadcasts against ``x``).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, g: float) -> torch.Tensor:  # noqa: ANN001
        v = x / scale
        q = torch.round(v) + zero_point
        ctx.save_for_backward(v, q, zero_point)
        ctx.shape, ctx.qmin, ctx.qmax, ctx.g = scale.shape, qmin, qmax, g
        return (q.clamp(qmin, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        v, q, z = ctx.saved_tensors
        below, above = q < ctx.qmin, q > ctx.qmax
        inside = ~(below | above)
        d_scale = torch.where(below, ctx.qmin - z, torch.where(above, ctx.qmax - z, torch.round(v) - v))
        d_scale = (grad * d_scale * ctx.g).sum_to_size(ctx.shape)
        return grad * inside, d_scale, None, None, None, None


def lsq_fake_quant(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | int, qmin: int, qmax: int, g: float | None = None
) -> torch.Tensor:
    """:class:`LSQFakeQuant`; ``g`` defaults to ``1 / sqrt(N * qmax)`` with N the values per step."""
    _check_range(qmin, qmax)
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"scale must be a torch.Tensor (a learned parameter), got {type(scale).__name__}")
    if g is None:
        g = lsq_grad_scale(max(1, x.numel() // max(1, scale.numel())), max(1, int(qmax)))
    return LSQFakeQuant.apply(x, scale, torch.as_tensor(zero_point, dtype=x.dtype), int(qmin), int(qmax), float(g))


def lsq_ste_reference(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | int, qmin: int, qmax: int, g: float) -> torch.Tensor:
    """The same LSQ quantizer written with plain autograd: round through the STE, the step through the
    gradient-scale trick ``s' = (s - g s).detach() + g s`` (value s, gradient g times). Autograd's
    gradient of this equals :class:`LSQFakeQuant`'s hand-written one."""
    s = (scale - g * scale).detach() + g * scale
    z = torch.as_tensor(zero_point, dtype=x.dtype)
    return (torch.clamp(round_ste(x / s) + z, qmin, qmax) - z) * s


# ----------------------------------------------------------------------------- PACT


def pact(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """PACT (Choi et al. 2018): ``y = clamp(x, 0, alpha)`` quantized to ``2**bits - 1`` steps of ``alpha / (2**bits - 1)``.

    Written with autograd and the STE, the step ``alpha / (2**bits - 1)`` held constant in the backward pass
    (as in the paper), so ``d y / d alpha`` is 1 where ``x >= alpha`` and 0 elsewhere, and ``d y / d x`` is 1
    on ``0 < x < alpha``. (Letting the gradient flow through the step too would add LSQ's rounding-error term.)
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in [1, 16], got {bits!r}")
    if not isinstance(alpha, torch.Tensor):
        raise TypeError(f"alpha must be a torch.Tensor (a learned parameter), got {type(alpha).__name__}")
    levels = 2**bits - 1
    y = torch.relu(x)
    y = torch.where(y < alpha, y, alpha)  # the clip: its gradient w.r.t. alpha is 1 where x >= alpha
    scale = alpha.detach() / levels  # PACT's gradient flows through the clip only, not through the step
    return round_ste(y / scale) * scale


# ----------------------------------------------------------------------------- binary and ternary weights


def _per_row(w: torch.Tensor) -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if w.dim() < 1 or w.numel() == 0:
        raise ValueError(f"w must be a non-empty tensor with an output axis first, got shape {tuple(w.shape)}")
    return w.reshape(w.shape[0], -1)


def sign_ste(w: torch.Tensor) -> torch.Tensor:
    """``sign(w)`` with 0 -> +1 forward; identity gradient (BinaryConnect's STE, for |w| <= 1)."""
    s = torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))
    return (s - w).detach() + w


def binarize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha * sign(w), alpha)`` with one ``alpha = mean |w|`` per output channel (row 0 axis), the scale
    that minimises ``||w - alpha sign(w)||^2``. Gradient: the STE through the sign, and autograd through alpha."""
    rows = _per_row(w)
    alpha = rows.abs().mean(1)
    shape = (-1,) + (1,) * (w.dim() - 1)
    return alpha.reshape(shape) * sign_ste(w), alpha


def ternary_threshold(w: torch.Tensor, factor: float = 0.7) -> torch.Tensor:
    """TWN's threshold per output channel: ``factor * mean |w|`` (shape (out,))."""
    if not 0.0 <= factor < 3.0:
        raise ValueError(f"factor must be in [0, 3), got {factor!r}")
    return factor * _per_row(w).abs().mean(1)


def ternarize(w: torch.Tensor, factor: float = 0.7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TWN (Li et al. 2016): ``(codes in {-1, 0, 1}, alpha (out,), delta (out,))`` per output channel.

    ``delta = factor * mean |w|``; a weight is kept (+-1) where ``|w| > delta``; ``alpha`` is the mean of
    ``|w|`` over the kept weights (the L2-optimal scale for those codes), 0 for a row with none kept.
    """
    rows = _per_row(w).detach()
    delta = ternary_threshold(w, factor).detach()
    kept = rows.abs() > delta[:, None]
    count = kept.sum(1)
    alpha = torch.where(count > 0, (rows.abs() * kept).sum(1) / count.clamp_min(1), torch.zeros_like(delta))
    codes = (torch.sign(rows) * kept).reshape(w.shape)
    return codes, alpha, delta


def ternarize_ste(w: torch.Tensor, factor: float = 0.7) -> torch.Tensor:
    """``alpha * codes`` from :func:`ternarize`, with an identity gradient to ``w`` (the STE)."""
    codes, alpha, _ = ternarize(w, factor)
    value = alpha.reshape((-1,) + (1,) * (w.dim() - 1)) * codes
    return (value - w).detach() + w


# ----------------------------------------------------------------------------- a quantization-aware LeNet


class WeightQuantizer(nn.Module):
    """Per-output-channel weight quantizer.

    ``mode``: "fixed" (symmetric, scale = max|w| / qmax recomputed from the current weights, clipped STE),
    "lsq" (learned step per channel, initialised at max|w| / qmax), "binary" ({-1, +1} times mean|w|),
    "ternary" (TWN). ``bits`` is ignored by "binary" (1 bit) and "ternary" (2 bits stored); ``bits=1`` with
    "fixed" or "lsq" means "binary" (a per-layer width list may mix 1-bit layers with wider ones).
    """

    def __init__(self, weight: torch.Tensor, mode: str = "lsq", bits: int = 4) -> None:
        super().__init__()
        if mode not in WEIGHT_MODES:
            raise ValueError(f"mode must be one of {WEIGHT_MODES}, got {mode!r}")
        if mode in ("fixed", "lsq") and bits == 1:  # one bit: sign codes with the XNOR-Net scale
            mode = "binary"
        self.mode = mode
        self.bits = {"binary": 1, "ternary": 2}.get(mode, bits)
        if mode in ("fixed", "lsq"):
            Q._check_bits(bits)
            self.qmin, self.qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        else:
            self.qmin, self.qmax = -1, 1
        self.shape = (-1,) + (1,) * (weight.dim() - 1)
        if mode == "lsq":
            self.step = nn.Parameter(self.max_abs_scale(weight).detach().clone())

    def max_abs_scale(self, w: torch.Tensor) -> torch.Tensor:
        return (w.detach().reshape(w.shape[0], -1).abs().amax(1) / self.qmax).clamp_min(1e-8)

    def scales(self, w: torch.Tensor) -> torch.Tensor:
        """The per-channel scales (out,) the current weights are stored with."""
        if self.mode == "lsq":
            return self.step.detach().abs().clamp_min(1e-8)
        if self.mode == "fixed":
            return self.max_abs_scale(w)
        if self.mode == "binary":
            return binarize_weight(w.detach())[1]
        return ternarize(w.detach())[1]

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Integer codes (int64, shape of w) such that ``w_hat = codes * scales``."""
        w = w.detach()
        if self.mode == "binary":
            return torch.where(w >= 0, 1, -1).to(torch.int64)
        if self.mode == "ternary":
            return ternarize(w)[0].to(torch.int64)
        s = self.scales(w).reshape(self.shape)
        return torch.clamp(torch.round(w / s), self.qmin, self.qmax).to(torch.int64)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.mode == "lsq":
            g = lsq_grad_scale(w[0].numel(), self.qmax)
            return lsq_fake_quant(w, self.step.abs().clamp_min(1e-8).reshape(self.shape), 0, self.qmin, self.qmax, g)
        if self.mode == "fixed":
            return fake_quant_ste(w, self.max_abs_scale(w).reshape(self.shape), 0, self.qmin, self.qmax)
        if self.mode == "binary":
            return binarize_weight(w)[0]
        return ternarize_ste(w)


class ActQuantizer(nn.Module):
    """Per-tensor activation quantizer onto ``bits``-bit unsigned codes with zero point ``zero_point``.

    ``mode``: "fixed" (calibrated scale), "lsq" (learned step, fixed zero point), "pact" (learned clip
    alpha of a ReLU output; zero point 0). Initialised from a calibrated range (lo, hi).
    """

    def __init__(self, lo: float, hi: float, bits: int, mode: str = "lsq", relu: bool = False) -> None:
        super().__init__()
        if mode not in ACT_MODES:
            raise ValueError(f"mode must be one of {ACT_MODES}, got {mode!r}")
        if mode == "pact" and (not relu or lo < 0):
            raise ValueError("mode='pact' needs a ReLU output (range starting at 0)")
        scale, zero_point = Q.qparams(lo, hi, bits, symmetric=False, signed=False)
        self.mode, self.bits, self.relu = mode, bits, relu
        self.qmin, self.qmax = 0, 2**bits - 1
        self.zero_point = int(zero_point)
        if mode == "fixed":
            self.register_buffer("step", torch.tensor(float(scale)))
        elif mode == "lsq":
            self.step = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.alpha = nn.Parameter(torch.tensor(float(hi)))

    def qparams(self) -> tuple[float, int]:
        """(scale, zero_point) of the codes."""
        if self.mode == "pact":
            return float(self.alpha.detach().abs()) / self.qmax, 0
        return float(self.step.detach().abs()), self.zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "pact":
            return pact(x, self.alpha.abs(), self.bits)
        if self.mode == "fixed":
            return fake_quant_ste(x, self.step, self.zero_point, self.qmin, self.qmax)
        g = lsq_grad_scale(max(1, x[0].numel()), self.qmax)
        return lsq_fake_quant(x, self.step.abs().clamp_min(1e-8), self.zero_point, self.qmin, self.qmax, g)


class QATNet(nn.Module):
    """A LeNet-300-100 or LeNet-5 with fake-quantized weights and activations, trainable with the STE.

    The quantizers sit where :func:`helpers.ptq.ptq` puts them: the input image and every layer's output
    (after its fused ReLU) on ``act_bits``-bit unsigned codes, each layer's weight per output channel.
    Activation ranges are initialised by calibration on ``x_calib`` (min-max), so before any training the
    model is post-training quantization with these bit widths.

    Args:
        model: a trained float LeNet (copied; the original is left alone).
        x_calib: calibration images (N, 1, 28, 28).
        weight_bits: one width for every layer, or one per layer (in layer order); ignored for binary/ternary.
        act_bits: activation width in [2, 16].
        weight_mode: "fixed", "lsq", "binary" or "ternary"; act_mode: "fixed", "lsq" or "pact" (PACT on the
            ReLU layers, LSQ on the others).
        ranges: the calibrated (min, max) of the input and of each layer's output, as
            :func:`helpers.ptq.calibrate` returns them for ``x_calib``; pass them to skip the calibration pass.
    """

    def __init__(
        self,
        model: nn.Module,
        x_calib: torch.Tensor,
        weight_bits: int | Sequence[int] = 4,
        act_bits: int = 8,
        weight_mode: str = "lsq",
        act_mode: str = "lsq",
        ranges: Sequence[tuple[float, float]] | None = None,
    ) -> None:
        super().__init__()
        import copy

        if weight_mode not in WEIGHT_MODES:
            raise ValueError(f"weight_mode must be one of {WEIGHT_MODES}, got {weight_mode!r}")
        if act_mode not in ACT_MODES:
            raise ValueError(f"act_mode must be one of {ACT_MODES}, got {act_mode!r}")
        Q._check_bits(act_bits)
        model = copy.deepcopy(model).float().eval()
        self.ops = PTQ.lenet_ops(model)
        layers = [op for op in self.ops if op[0] in ("linear", "conv")]
        if isinstance(weight_bits, (int, np.integer)) and not isinstance(weight_bits, bool):
            weight_bits = [int(weight_bits)] * len(layers)
        weight_bits = list(weight_bits)
        if len(weight_bits) != len(layers):
            raise ValueError(f"weight_bits must be an int or {len(layers)} ints (one per layer), got {weight_bits!r}")
        self.layers = nn.ModuleList(op[1] for op in layers)
        self.layer_names = [name for name, module in model.named_children() if any(module is op[1] for op in layers)]
        self.relu = [op[2] for op in layers]
        self.kinds = [op[0] for op in layers]
        self.weight_q = nn.ModuleList(WeightQuantizer(m.weight, weight_mode, b) for m, b in zip(self.layers, weight_bits))
        ranges = PTQ.calibrate(model, x_calib) if ranges is None else list(ranges)
        if len(ranges) != len(layers) + 1:
            raise ValueError(f"ranges must hold {len(layers) + 1} (min, max) pairs (the input and each layer's output), got {len(ranges)}")
        self.act_bits = act_bits
        acts = []
        for i, (lo, hi) in enumerate(ranges):
            relu = i > 0 and self.relu[i - 1]
            mode = act_mode if (act_mode != "pact" or relu) else "lsq"
            acts.append(ActQuantizer(lo, hi, act_bits, mode if i > 0 else "fixed", relu))
        self.act_q = nn.ModuleList(acts)

    @property
    def weight_bits(self) -> list[int]:
        return [q.bits for q in self.weight_q]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) -> the dequantized logits of the simulated integer model (N, 10)."""
        h = self.act_q[0](x)
        i = 0
        for op in self.ops:
            if op[0] == "flatten":
                h = h.flatten(1)
            elif op[0] == "pool":
                h = F.max_pool2d(h, op[1])
            else:
                layer = self.layers[i]
                w = self.weight_q[i](layer.weight)
                h = F.linear(h, w, layer.bias) if self.kinds[i] == "linear" else F.conv2d(h, w, layer.bias)
                if self.relu[i]:
                    h = torch.relu(h)
                h = self.act_q[i + 1](h)
                i += 1
        return h

    def quantized_layers(self) -> list[dict]:
        """Per layer: name, kind, bits, integer codes (numpy int64), scales (out,) float32, bias float32."""
        out = []
        for name, layer, wq in zip(self.layer_names, self.layers, self.weight_q):
            out.append(
                {
                    "name": name,
                    "bits": wq.bits,
                    "codes": wq.codes(layer.weight).numpy(),
                    "scales": wq.scales(layer.weight).numpy().astype(np.float32),
                    "bias": layer.bias.detach().numpy().astype(np.float32),
                }
            )
        return out


def to_int_model(net: QATNet) -> PTQ.Int8Model:
    """The integer-only model of a trained :class:`QATNet`: a :class:`helpers.ptq.Int8Model` whose
    ``run_integer`` uses integer arithmetic only (codes, int32 biases with scale ``s_x s_w``, fixed-point
    multipliers), with ``net``'s learned scales and activation qparams."""
    act = [q.qparams() for q in net.act_q]
    ops, i = [], 0
    for op in net.ops:
        if op[0] in ("flatten", "pool"):
            ops.append(op)
            continue
        layer, wq = net.layers[i], net.weight_q[i]
        codes = wq.codes(layer.weight).numpy()
        w_scales = wq.scales(layer.weight).numpy().astype(np.float64)
        w_scales = np.where(w_scales > 0, w_scales, 1.0)  # an all-zero ternary row: any scale represents it
        (s_in, zp_in), (s_out, zp_out) = act[i], act[i + 1]
        bias_q = np.round(layer.bias.detach().numpy().astype(np.float64) / (s_in * w_scales)).astype(np.int64)
        multipliers = [Q.quantize_multiplier(s_in * s_w / s_out) for s_w in w_scales]
        ops.append(
            (
                "layer",
                PTQ.QLayer(
                    kind=net.kinds[i],
                    q_w=codes.astype(np.int8),
                    w_scales=w_scales,
                    bias_q=bias_q.astype(np.int32),
                    in_qparams=(s_in, zp_in),
                    out_qparams=(s_out, zp_out),
                    m0=np.array([m for m, _ in multipliers], dtype=np.int64),
                    shift=np.array([s for _, s in multipliers], dtype=np.int64),
                    relu=net.relu[i],
                ),
            )
        )
        i += 1
    return PTQ.Int8Model(ops=ops, input_qparams=act[0], bits=net.act_bits, act_signed=False, weight_bits=max(net.weight_bits))


# ----------------------------------------------------------------------------- bit packing and the model file


def pack_bits(codes: np.ndarray, bits: int, qmin: int | None = None) -> bytes:
    """Pack integer codes into ``bits`` bits each (1..16), little-endian bit order, after subtracting ``qmin``
    (default: the signed minimum ``-2**(bits-1)``, or -1 for ``bits == 1``, whose codes are -1 / +1)."""
    if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in [1, 16], got {bits!r}")
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        raise TypeError(f"codes must be integers, got {codes.dtype}")
    if qmin is None:
        qmin = -1 if bits == 1 else -(2 ** (bits - 1))
    u = codes.astype(np.int64).ravel() - qmin
    if bits == 1:
        u = u // 2  # -1 -> 0, +1 -> 1
    if u.size and (u.min() < 0 or u.max() >= 2**bits):
        raise ValueError(f"codes do not fit in {bits} bits above qmin={qmin}: range [{codes.min()}, {codes.max()}]")
    planes = ((u[:, None] >> np.arange(bits)) & 1).astype(np.uint8)  # (n, bits), least significant bit first
    return np.packbits(planes.ravel(), bitorder="little").tobytes()


def unpack_bits(data: bytes, count: int, bits: int, qmin: int | None = None) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` codes as int64."""
    if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in [1, 16], got {bits!r}")
    if qmin is None:
        qmin = -1 if bits == 1 else -(2 ** (bits - 1))
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: count * bits]
    u = (flat.reshape(count, bits).astype(np.int64) << np.arange(bits)).sum(1)
    return u * 2 + qmin if bits == 1 else u + qmin


MAGIC = b"QNET1"


def write_model_file(path: str | Path, layers: Sequence[Mapping], extra: Mapping | None = None) -> int:
    """Write a quantized model: a small JSON header (layer names, shapes, bits, ``extra`` such as activation
    qparams), then per layer the packed codes, the float32 scales and the float32 bias. A layer with
    ``bits == 32`` stores its float32 weight (``codes`` holds it) and no scales. Returns the file's size
    (``os.path.getsize``)."""
    body, meta = [], []
    for layer in layers:
        bits = int(layer["bits"])
        codes = np.asarray(layer["codes"])
        if bits == 32:
            payload = codes.astype(np.float32).tobytes()
            scales = b""
        else:
            payload = pack_bits(codes, bits)
            scales = np.asarray(layer["scales"], dtype=np.float32).tobytes()
        bias = np.asarray(layer["bias"], dtype=np.float32).tobytes()
        meta.append({"name": layer["name"], "shape": list(codes.shape), "bits": bits, "sizes": [len(payload), len(scales), len(bias)]})
        body += [payload, scales, bias]
    header = json.dumps({"layers": meta, "extra": dict(extra or {})}, separators=(",", ":")).encode()
    path = Path(path)
    with open(path, "wb") as handle:
        handle.write(MAGIC + struct.pack("<I", len(header)) + header)
        for part in body:
            handle.write(part)
    return path.stat().st_size


def read_model_file(path: str | Path) -> tuple[list[dict], dict]:
    """Read :func:`write_model_file`'s file back: per layer name, bits, codes (int64) or float weight, scales, bias."""
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError(f"{path} is not a model file written by write_model_file")
    (length,) = struct.unpack("<I", data[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    header = json.loads(data[start : start + length])
    offset = start + length
    layers = []
    for meta in header["layers"]:
        n_payload, n_scales, n_bias = meta["sizes"]
        count = int(np.prod(meta["shape"]))
        payload = data[offset : offset + n_payload]
        offset += n_payload
        if meta["bits"] == 32:
            codes = np.frombuffer(payload, dtype=np.float32).reshape(meta["shape"])
        else:
            codes = unpack_bits(payload, count, meta["bits"]).reshape(meta["shape"])
        scales = np.frombuffer(data[offset : offset + n_scales], dtype=np.float32)
        offset += n_scales
        bias = np.frombuffer(data[offset : offset + n_bias], dtype=np.float32)
        offset += n_bias
        layers.append({"name": meta["name"], "bits": meta["bits"], "codes": codes, "scales": scales, "bias": bias})
    return layers, header["extra"]


def float_layers(model: nn.Module) -> list[dict]:
    """A float LeNet's layers in :func:`write_model_file`'s format (bits 32)."""
    out = []
    for name, module in model.named_children():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            out.append({"name": name, "bits": 32, "codes": module.weight.detach().numpy(), "bias": module.bias.detach().numpy()})
    return out


def layer_bytes(n_weights: int, n_out: int, bits: int) -> int:
    """Bytes one layer takes in :func:`write_model_file` (without the header): packed codes + float32
    scales + float32 bias; ``bits == 32``: float32 weights + bias."""
    if bits == 32:
        return 4 * n_weights + 4 * n_out
    return math.ceil(n_weights * bits / 8) + 4 * n_out + 4 * n_out


# ----------------------------------------------------------------------------- mixed precision


def allocate_bits(sensitivity: Mapping[str, Mapping[int, float]], cost: Mapping[str, Mapping[int, float]], budget: float) -> dict[str, int]:
    """Per-layer bit widths minimising the summed sensitivity with the summed cost <= ``budget``.

    ``sensitivity[layer][bits]``: the damage of quantizing that layer alone at ``bits`` (e.g. the noise
    power it adds to the logits on validation); ``cost[layer][bits]``: its bytes. Every combination is
    tried (a handful of layers and widths): ties in sensitivity go to the smaller total cost, then to the
    first combination in the order of the layers and the widths as given. Raises ValueError when even
    the cheapest combination exceeds the budget.
    """
    if not sensitivity:
        raise ValueError("sensitivity is empty")
    if set(sensitivity) != set(cost):
        raise ValueError(f"sensitivity and cost must name the same layers, got {sorted(sensitivity)} and {sorted(cost)}")
    names = list(sensitivity)
    options = []
    for name in names:
        widths = list(sensitivity[name])
        if not widths or set(widths) != set(cost[name]):
            raise ValueError(f"layer {name!r}: sensitivity and cost must give the same non-empty set of widths")
        options.append(widths)
    if math.prod(len(o) for o in options) > 1_000_000:
        raise ValueError("too many combinations for an exhaustive search (more than a million)")
    best, best_key = None, None
    for combo in itertools.product(*options):
        total = sum(cost[n][b] for n, b in zip(names, combo))
        if total > budget:
            continue
        key = (sum(sensitivity[n][b] for n, b in zip(names, combo)), total)
        if best_key is None or key < best_key:
            best, best_key = combo, key
    if best is None:
        cheapest = sum(min(cost[n].values()) for n in names)
        raise ValueError(f"budget {budget} is below the cheapest allocation ({cheapest})")
    return dict(zip(names, best))


__all__ = [
    "ActQuantizer",
    "FakeQuantSTE",
    "LSQFakeQuant",
    "QATNet",
    "RoundSTE",
    "WeightQuantizer",
    "allocate_bits",
    "binarize_weight",
    "fake_quant_ste",
    "float_layers",
    "layer_bytes",
    "lsq_fake_quant",
    "lsq_grad_scale",
    "lsq_ste_reference",
    "pack_bits",
    "pact",
    "read_model_file",
    "round_ste",
    "sign_ste",
    "ternarize",
    "ternarize_ste",
    "ternary_threshold",
    "to_int_model",
    "unpack_bits",
    "write_model_file",
]
