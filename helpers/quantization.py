"""Quantization: affine quantization, calibration, per-channel, fixed-point requantization, integer layers.

Conventions. ``bits`` in [2, 16]. Signed integers span [-2**(b-1), 2**(b-1) - 1], unsigned
[0, 2**b - 1]. A real value x maps to ``q = clamp(round(x / scale) + zero_point)`` with round half
to even (numpy's and PyTorch's rounding) and back to ``(q - zero_point) * scale``. The range is
always widened to include 0, so that 0.0 (zero padding, ReLU outputs, pruned weights) is exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


# ----------------------------------------------------------------------------- integer ranges and qparams


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an int in [2, 16], got {bits!r}")


def qrange(bits: int = 8, signed: bool = True) -> tuple[int, int]:
    """(qmin, qmax) of a ``bits``-bit signed or unsigned integer."""
    _check_bits(bits)
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def qparams(x_min: float, x_max: float, bits: int = 8, symmetric: bool = False, signed: bool = True) -> tuple[float, int]:
    """Scale and zero point that map [x_min, x_max] (widened to include 0) onto the integer grid.

    Asymmetric: ``scale = (max - min) / (qmax - qmin)``, ``zero_point = qmin - round(min / scale)``.
    Symmetric: ``scale = max(|min|, |max|) / qmax`` and ``zero_point = 0`` (for unsigned integers the
    range is then [0, max], e.g. ReLU outputs). An empty range (x_min == x_max == 0) gets scale 1.0.
    """
    _check_bits(bits)
    x_min, x_max = float(x_min), float(x_max)
    if not (math.isfinite(x_min) and math.isfinite(x_max)):
        raise ValueError(f"x_min and x_max must be finite, got {x_min}, {x_max}")
    if x_min > x_max:
        raise ValueError(f"x_min must be <= x_max, got {x_min} > {x_max}")
    qmin, qmax = qrange(bits, signed)
    x_min, x_max = min(x_min, 0.0), max(x_max, 0.0)
    if symmetric:
        amax = max(-x_min, x_max)
        if not signed and x_min < 0:
            raise ValueError("symmetric unsigned quantization needs x_min >= 0 (it covers [0, max])")
        return (amax / qmax if amax > 0 else 1.0), 0
    if x_max == x_min:
        return 1.0, int(np.clip(0, qmin, qmax))
    scale = (x_max - x_min) / (qmax - qmin)
    zero_point = int(np.clip(qmin - np.round(x_min / scale), qmin, qmax))
    return scale, zero_point


def quantize(x: Array, scale: Array | float, zero_point: Array | int, bits: int = 8, signed: bool = True) -> Array:
    """``clamp(round_half_even(x / scale) + zero_point, qmin, qmax)`` as int64 (numpy) or int64 tensor."""
    qmin, qmax = qrange(bits, signed)
    if isinstance(x, torch.Tensor):
        q = torch.round(x / torch.as_tensor(scale, dtype=x.dtype)) + torch.as_tensor(zero_point)
        return q.clamp(qmin, qmax).to(torch.int64)
    x = np.asarray(x, dtype=np.float64) if not isinstance(x, np.ndarray) else x
    q = np.round(x / np.asarray(scale, dtype=x.dtype if x.dtype.kind == "f" else np.float64)) + np.asarray(zero_point)
    return np.clip(q, qmin, qmax).astype(np.int64)


def dequantize(q: Array, scale: Array | float, zero_point: Array | int) -> Array:
    """``(q - zero_point) * scale`` as float32."""
    if isinstance(q, torch.Tensor):
        return ((q.to(torch.int64) - torch.as_tensor(zero_point)).to(torch.float32)) * torch.as_tensor(scale, dtype=torch.float32)
    return ((np.asarray(q, dtype=np.int64) - np.asarray(zero_point)) * np.asarray(scale)).astype(np.float32)


def fake_quantize(x: Array, scale: Array | float, zero_point: Array | int, bits: int = 8, signed: bool = True) -> Array:
    """Quantize then dequantize: the float values an integer kernel can represent."""
    return dequantize(quantize(x, scale, zero_point, bits, signed), scale, zero_point)


def _expand(values: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return np.asarray(values).reshape(shape)


def qparams_per_channel(
    w: Array, axis: int = 0, bits: int = 8, symmetric: bool = True, signed: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, zero_point) arrays from each slice's min and max along ``axis``."""
    a = w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
    if a.size == 0:
        raise ValueError("w is empty")
    if not -a.ndim <= axis < a.ndim:
        raise ValueError(f"axis must be in [{-a.ndim}, {a.ndim - 1}] for a {a.ndim}-d array, got {axis}")
    moved = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)
    pairs = [qparams(row.min(), row.max(), bits, symmetric, signed) for row in moved]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs], dtype=np.int64)


def quantize_per_channel(w: Array, scales: np.ndarray, zero_points: np.ndarray, axis: int = 0, bits: int = 8, signed: bool = True) -> Array:
    """:func:`quantize` with one (scale, zero_point) per slice along ``axis``."""
    ndim = w.dim() if isinstance(w, torch.Tensor) else np.ndim(w)
    s, z = _expand(scales, ndim, axis), _expand(zero_points, ndim, axis)
    if isinstance(w, torch.Tensor):
        return quantize(w, torch.from_numpy(s).to(w.dtype), torch.from_numpy(z), bits, signed)
    return quantize(w, s, z, bits, signed)


def dequantize_per_channel(q: Array, scales: np.ndarray, zero_points: np.ndarray, axis: int = 0) -> Array:
    ndim = q.dim() if isinstance(q, torch.Tensor) else np.ndim(q)
    s, z = _expand(scales, ndim, axis), _expand(zero_points, ndim, axis)
    if isinstance(q, torch.Tensor):
        return dequantize(q, torch.from_numpy(s).float(), torch.from_numpy(z))
    return dequantize(q, s, z)


# ----------------------------------------------------------------------------- calibration


def _np(x: Array) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.size == 0:
        raise ValueError("x is empty")
    return a.astype(np.float64).ravel()


def minmax_range(x: Array) -> tuple[float, float]:
    """(min, max) of the data."""
    a = _np(x)
    return float(a.min()), float(a.max())


def percentile_range(x: Array, percentile: float = 99.99) -> tuple[float, float]:
    """Clip the ``100 - percentile`` % most extreme values on each side (e.g. 99.99 -> 0.01 % tails)."""
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    a = _np(x)
    return float(np.percentile(a, 100.0 - percentile)), float(np.percentile(a, percentile))


def quantization_mse(x: Array, x_min: float, x_max: float, bits: int = 8, symmetric: bool = False, signed: bool = True) -> float:
    """Mean squared error of fake-quantizing ``x`` with the range [x_min, x_max]."""
    a = _np(x)
    scale, zp = qparams(x_min, x_max, bits, symmetric, signed)
    return float(np.mean((fake_quantize(a, scale, zp, bits, signed).astype(np.float64) - a) ** 2))


def mse_range(x: Array, bits: int = 8, symmetric: bool = False, signed: bool = True, grid: int = 100) -> tuple[float, float]:
    """The clipping range, shrunk from min-max in ``grid`` steps, that minimises the quantization MSE.

    Clipping trades a large error on the few clipped outliers for a finer grid for everything else.
    """
    lo, hi = minmax_range(x)
    best, best_range = math.inf, (lo, hi)
    for fraction in np.linspace(1.0, 1.0 / grid, grid):
        candidate = (lo * fraction, hi * fraction)
        error = quantization_mse(x, *candidate, bits, symmetric, signed)
        if error < best:
            best, best_range = error, candidate
    return best_range


def kl_range(x: Array, bits: int = 8, bins: int = 2048, unsigned: bool | None = None) -> tuple[float, float]:
    """Entropy (KL-divergence) calibration, as in TensorRT (Migacz 2017) and NVIDIA's pytorch-quantization.

    Builds a ``bins``-bin histogram of the nonzero |x| (exact zeros, e.g. from a ReLU, are
    represented exactly whatever the threshold, so they are left out); for each candidate threshold, folds the clipped tail into
    the last bin (P), merges the bins into as many levels as the integer grid has on one side of 0,
    ``2**(bits - 1 + unsigned)`` (128 for int8, 256 for uint8: pytorch-quantization's
    ``1 << (num_bits - 1 + int(unsigned))``), expands them back (Q), and keeps the threshold minimising
    KL(P || Q). ``unsigned=None`` infers it from the data (unsigned when min(x) >= 0). Returns the
    symmetric range (-t, t), or (0, t) for unsigned.
    """
    _check_bits(bits)
    raw = _np(x)
    if unsigned is None:
        unsigned = bool(raw.min() >= 0)
    elif unsigned and raw.min() < 0:
        raise ValueError("unsigned=True needs non-negative data (min(x) >= 0)")
    a = np.abs(raw)
    a = a[a > 0] if np.any(a > 0) else a
    levels = 2 ** (bits - 1 + int(unsigned))
    if bins < levels:
        raise ValueError(f"bins must be >= 2**(bits - 1 + unsigned) = {levels}, got {bins}")
    hist, edges = np.histogram(a, bins=bins, range=(0.0, float(a.max()) or 1.0))
    hist = hist.astype(np.float64)
    best, best_i = math.inf, bins
    for i in range(levels, bins + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        q = np.zeros(i)
        for chunk in np.array_split(np.arange(i), levels):
            nonzero = hist[chunk] > 0
            if nonzero.any():
                q[chunk[nonzero]] = hist[chunk].sum() / nonzero.sum()
        p_sum, q_sum = p.sum(), q.sum()
        if q_sum == 0:
            continue
        mask = p > 0
        q_safe = np.where(q > 0, q / q_sum, 1e-12)
        kl = float(np.sum(p[mask] / p_sum * np.log((p[mask] / p_sum) / q_safe[mask])))
        if kl < best:
            best, best_i = kl, i
    threshold = float(edges[best_i])
    return (0.0 if unsigned else -threshold), threshold


def sqnr_db(x: Array, x_hat: Array) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - x_hat)^2)`` in dB."""
    a, b = _np(x), _np(x_hat)
    noise = np.sum((a - b) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(a**2) / noise))


# ----------------------------------------------------------------------------- fixed-point requantization


def quantize_multiplier(multiplier: float) -> tuple[int, int]:
    """``(m0, shift)`` with ``multiplier ~= m0 * 2**(-31 - shift)``, int32 ``m0`` in [2**30, 2**31) (Jacob et al. 2018).

    ``multiplier`` must be in (0, 1): the ratio ``s_x * s_w / s_y`` of a layer.
    """
    multiplier = float(multiplier)
    if not 0.0 < multiplier < 1.0:
        raise ValueError(f"multiplier must be in (0, 1), got {multiplier}")
    fraction, exponent = math.frexp(multiplier)  # multiplier = fraction * 2**exponent, fraction in [0.5, 1)
    m0 = round(fraction * 2**31)
    if m0 == 2**31:  # rounding reached the next power of two
        m0 //= 2
        exponent += 1
    return int(m0), int(-exponent)


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: int | np.ndarray) -> np.ndarray:
    """``round(a * b / 2**31)`` for int32 a and b, in integer arithmetic (gemmlowp's SQRDMULH).

    Rounds to nearest; an exact tie rounds up (1.5 -> 2, -1.5 -> -1), gemmlowp's convention.
    Saturates the single overflow case a == b == -2**31.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    product = a * b
    nudge = np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    result = (product + nudge) // (1 << 31)
    result = np.where(product + nudge < 0, -((-(product + nudge)) // (1 << 31)), result)  # truncate toward zero
    overflow = (a == -(2**31)) & (b == -(2**31))
    return np.where(overflow, 2**31 - 1, result).astype(np.int64)


def rounding_right_shift(x: np.ndarray, shift: int | np.ndarray) -> np.ndarray:
    """``x / 2**shift`` rounded to nearest, ties away from zero, with shifts and masks only (gemmlowp)."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    if np.any(shift < 0) or np.any(shift > 62):
        raise ValueError(f"shift must be in [0, 62], got {shift}")
    mask = (np.int64(1) << shift) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> shift) + (remainder > threshold)


def requantize(
    acc: np.ndarray, m0: int | np.ndarray, shift: int | np.ndarray, zero_point: int, bits: int = 8, signed: bool = True
) -> np.ndarray:
    """int32 accumulators -> ``bits``-bit outputs: ``clamp(round(acc * M) + zero_point)`` in integers only.

    ``M = m0 * 2**(-31 - shift)`` from :func:`quantize_multiplier`; ``m0`` and ``shift`` may be
    per-channel arrays broadcasting against ``acc``'s last axis. Equal to ``round(acc * M)`` within 1.
    """
    qmin, qmax = qrange(bits, signed)
    acc = np.asarray(acc, dtype=np.int64)
    if np.any(acc > 2**31 - 1) or np.any(acc < -(2**31)):
        raise ValueError("acc must fit in int32")
    scaled = rounding_right_shift(saturating_rounding_doubling_high_mul(acc, m0), shift)
    return np.clip(scaled + zero_point, qmin, qmax).astype(np.int64)


def int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The exact integer product ``a @ b.T`` of (N, K) and (M, K) integer arrays, as int64.

    numpy has no fast integer matrix multiply, so when every partial sum is guaranteed to stay below
    2**53 in magnitude (K * max|a| * max|b| < 2**53: always the case for 8-bit operands) the product
    is computed by float64 BLAS, which represents every such integer exactly: the result is the
    integer product, bit for bit, only faster. Otherwise numpy's int64 product is used.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if a.size == 0 or b.size == 0:
        return a @ b.T
    bound = a.shape[1] * int(np.abs(a).max()) * int(np.abs(b).max())
    if bound < 2**53:
        return np.rint(a.astype(np.float64) @ b.astype(np.float64).T).astype(np.int64)
    return a @ b.T


def quantized_linear(
    q_x: np.ndarray,
    zp_x: int,
    q_w: np.ndarray,
    zp_w: np.ndarray | int,
    bias_q: np.ndarray | None,
    m0: np.ndarray | int,
    shift: np.ndarray | int,
    zp_y: int,
    bits: int = 8,
    signed: bool = True,
    matmul: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Integer-only ``y = x W^T + b``: (N, K) and (M, K) integers -> (N, M) ``bits``-bit integers.

    ``matmul(q_x, q_w)`` computes the raw products ``q_x @ q_w.T`` (default :func:`int_matmul`,
    exact); pass a model of a particular kernel, e.g. ``helpers.ptq.u8s8_saturating_matmul``.

    The int32 accumulator folds the zero points,
    ``sum_k (x - z_x)(w - z_w) = x.w - z_x sum_k w - z_w sum_k x + K z_x z_w``, adds the int32 bias
    (scale ``s_x * s_w``, zero point 0) and is requantized with the fixed-point multiplier
    ``(m0, shift)`` of ``s_x s_w / s_y`` (per output channel allowed). No floating point inside.
    """
    if np.asarray(q_x).dtype.kind not in "iu" or np.asarray(q_w).dtype.kind not in "iu":
        raise TypeError(f"q_x and q_w must be integer arrays, got {np.asarray(q_x).dtype} and {np.asarray(q_w).dtype}")
    q_x = np.asarray(q_x, dtype=np.int64)
    q_w = np.asarray(q_w, dtype=np.int64)
    if q_x.ndim != 2 or q_w.ndim != 2 or q_x.shape[1] != q_w.shape[1]:
        raise ValueError(f"q_x (N, K) and q_w (M, K) must share K, got {q_x.shape} and {q_w.shape}")
    zp_w = np.asarray(zp_w, dtype=np.int64)
    k = q_x.shape[1]
    acc = (matmul or int_matmul)(q_x, q_w) - zp_x * q_w.sum(1)[None, :] - zp_w * q_x.sum(1)[:, None] + k * zp_x * zp_w
    if bias_q is not None:
        acc = acc + np.asarray(bias_q, dtype=np.int64)[None, :]
    if np.any(np.abs(acc) > 2**31 - 1):
        raise OverflowError("the accumulator exceeds int32")
    return requantize(acc, m0, shift, zp_y, bits, signed)


def im2col(x: np.ndarray, kernel: int) -> np.ndarray:
    """(N, C, H, W) -> (N * Ho * Wo, C * k * k) patches of a valid, stride-1 convolution (any dtype)."""
    n, c, h, w = x.shape
    ho, wo = h - kernel + 1, w - kernel + 1
    cols = np.empty((n, c, kernel, kernel, ho, wo), dtype=x.dtype)
    for i in range(kernel):
        for j in range(kernel):
            cols[:, :, i, j] = x[:, :, i : i + ho, j : j + wo]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * ho * wo, c * kernel * kernel)


# ----------------------------------------------------------------------------- weight-only low-bit, non-uniform


def quantize_groupwise(w: Array, bits: int = 4, group_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric ``bits``-bit weight-only quantization with one scale per ``group_size`` consecutive
    inputs of each row: (out, in) -> (codes (out, in) int8, scales (out, in / group_size) float32)."""
    a = w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
    if a.ndim != 2:
        raise ValueError(f"w must be 2-d (out, in), got shape {a.shape}")
    if not isinstance(group_size, int) or group_size < 1 or a.shape[1] % group_size:
        raise ValueError(f"group_size must be a positive divisor of in = {a.shape[1]}, got {group_size!r}")
    _, qmax = qrange(bits, True)
    groups = a.reshape(a.shape[0], -1, group_size)
    amax = np.abs(groups).max(axis=2, keepdims=True)
    scales = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    codes = np.clip(np.round(groups / scales), -qmax, qmax).astype(np.int8)
    return codes.reshape(a.shape), scales[..., 0]


def dequantize_groupwise(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float32 weight back from :func:`quantize_groupwise`."""
    out, n_groups = scales.shape
    return (codes.reshape(out, n_groups, -1).astype(np.float32) * scales[..., None]).reshape(codes.shape)


def pack_int4(codes: np.ndarray) -> bytes:
    """Two signed 4-bit codes per byte (low nibble first); an odd count is padded with 0."""
    flat = (np.asarray(codes, dtype=np.int64).ravel() & 0xF).astype(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, 0)
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def unpack_int4(data: bytes, count: int) -> np.ndarray:
    """Inverse of :func:`pack_int4`: ``count`` signed codes as int8."""
    raw = np.frombuffer(data, dtype=np.uint8)
    nibbles = np.stack([raw & 0xF, raw >> 4], axis=1).ravel()[:count].astype(np.int8)
    return np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.int8)


def power_of_two_quantize(x: Array, bits: int = 4) -> np.ndarray:
    """Logarithmic quantization: each value to ``sign * 2**e`` with e rounded in the log domain, over
    ``2**(bits - 1) - 1`` exponents below the largest magnitude; smaller magnitudes become 0.
    Multiplying by such a weight is a bit shift (Miyashita et al. 2016)."""
    _check_bits(bits)
    a = _np(x).reshape(np.shape(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x))
    amax = np.abs(a).max()
    if amax == 0:
        return np.zeros_like(a)
    top = np.floor(np.log2(amax))
    levels = 2 ** (bits - 1) - 1
    with np.errstate(divide="ignore"):
        exponent = np.round(np.log2(np.abs(a)))
    exponent = np.clip(exponent, top - levels + 1, top)
    out = np.sign(a) * 2.0**exponent
    return np.where(np.abs(a) < 2.0 ** (top - levels + 1) / np.sqrt(2), 0.0, out)


def binarize(x: Array) -> tuple[np.ndarray, float]:
    """XNOR-Net style binarization (Rastegari et al. 2016): ``sign(x)`` (0 -> +1) and the scale
    ``alpha = mean |x|`` minimising ``||x - alpha * sign(x)||^2``."""
    a = _np(x).reshape(np.shape(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x))
    return np.where(a >= 0, 1.0, -1.0), float(np.abs(a).mean())
