"""Mixed-precision training (chapter 10): float formats bit by bit, summation, loss scaling, autocast, fp8 storage.

- :class:`FloatFormat` and :data:`FORMATS`: fp32, fp16, bf16, fp8 E4M3 (the "fn" variant: finite, no
  infinities, one NaN per sign) and fp8 E5M2; :func:`decode` / :func:`encode` go between bit patterns
  and values from sign, exponent and mantissa (subnormals, round-to-nearest-even, inf/NaN rules);
  :func:`format_limits` reads max, smallest normal, smallest subnormal and machine epsilon off the decoder.
- :func:`sequential_sum` and :func:`kahan_sum`: summation with an accumulator of a given dtype (swamping).
- :func:`flushed_fraction`: how many nonzero values become 0 when cast to a format (gradient underflow).
- :class:`StaticLossScaler` and :class:`DynamicLossScaler`: loss scaling with the same decisions as
  ``torch.amp.GradScaler`` (:func:`gradscaler_defaults` reads its defaults from the installed torch).
- :func:`autocast_output_dtypes`, :func:`amp_train_step`: autocast on CPU (bf16) and CUDA (fp16 + GradScaler).
- :func:`fp8_quantize` / :func:`fp8_dequantize` / :func:`fp8_state_dict`: fp8 weights with per-tensor or
  per-channel scales, stored as real ``torch.float8_*`` tensors.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import torch
from torch import nn

__all__ = [
    "FORMATS",
    "DynamicLossScaler",
    "FloatFormat",
    "StaticLossScaler",
    "amp_train_step",
    "autocast_output_dtypes",
    "decode",
    "encode",
    "encode_max_code",
    "flushed_fraction",
    "format_limits",
    "fp8_dequantize",
    "fp8_quantize",
    "fp8_state_dict",
    "gradients_finite",
    "gradscaler_defaults",
    "kahan_sum",
    "numpy_dtype",
    "sequential_sum",
    "torch_dtype",
]


# ----------------------------------------------------------------------------- formats, decode, encode


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: 1 sign bit, ``exponent_bits``, ``mantissa_bits`` (stored fraction bits).

    ``finite_only`` is the "fn" convention of fp8 E4M3 (Micikevicius et al. 2022): the all-ones exponent
    holds ordinary numbers, there is no infinity, and only exponent and mantissa all ones is NaN.
    Otherwise IEEE 754 rules: all-ones exponent with mantissa 0 is +-inf, with mantissa != 0 NaN.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    finite_only: bool = False

    @property
    def bits(self) -> int:
        """Total width in bits."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        """Exponent bias ``2**(exponent_bits - 1) - 1``."""
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def min_exponent(self) -> int:
        """Unbiased exponent of the smallest normal number (and of the subnormals' scale), ``1 - bias``."""
        return 1 - self.bias


FORMATS: dict[str, FloatFormat] = {
    "fp32": FloatFormat("fp32", 8, 23),
    "fp16": FloatFormat("fp16", 5, 10),
    "bf16": FloatFormat("bf16", 8, 7),
    "e4m3fn": FloatFormat("e4m3fn", 4, 3, finite_only=True),
    "e5m2": FloatFormat("e5m2", 5, 2),
}

_NUMPY = {
    "fp32": np.float32,
    "fp16": np.float16,
    "bf16": ml_dtypes.bfloat16,
    "e4m3fn": ml_dtypes.float8_e4m3fn,
    "e5m2": ml_dtypes.float8_e5m2,
}
_TORCH = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
_UINT = {8: np.uint8, 16: np.uint16, 32: np.uint32}


def _format(fmt: FloatFormat | str) -> FloatFormat:
    if isinstance(fmt, FloatFormat):
        return fmt
    if isinstance(fmt, str) and fmt in FORMATS:
        return FORMATS[fmt]
    raise ValueError(f"fmt must be a FloatFormat or one of {sorted(FORMATS)}, got {fmt!r}")


def numpy_dtype(fmt: FloatFormat | str) -> type:
    """The numpy scalar type of a named format (``ml_dtypes`` for bf16 and fp8)."""
    return _NUMPY[_format(fmt).name]


def torch_dtype(fmt: FloatFormat | str) -> torch.dtype:
    """The torch dtype of a named format."""
    return _TORCH[_format(fmt).name]


def decode(bits: np.ndarray | Sequence[int] | int, fmt: FloatFormat | str) -> np.ndarray:
    """Values (float64, exact) of bit patterns: ``(-1)**s * 1.m * 2**(e - bias)``, subnormals ``0.m * 2**(1 - bias)``.

    ``bits``: unsigned integers below ``2**fmt.bits`` (any shape). Returns float64 of the same shape, with
    +-inf and NaN where the format's rules say so.
    """
    fmt = _format(fmt)
    b = np.asarray(bits)
    if b.dtype.kind not in "ui":
        raise TypeError(f"bits must hold integers, got dtype {b.dtype}")
    b = b.astype(np.int64)
    if b.size and (b.min() < 0 or b.max() >= 2**fmt.bits):
        raise ValueError(f"bits must be in [0, 2**{fmt.bits}) for {fmt.name}, got values in [{b.min()}, {b.max()}]")
    m, e_all = fmt.mantissa_bits, 2**fmt.exponent_bits - 1
    sign = np.where((b >> (fmt.bits - 1)) & 1, -1.0, 1.0)
    exponent = (b >> m) & e_all
    mantissa = b & (2**m - 1)
    normal = np.ldexp((2**m + mantissa).astype(np.float64), (exponent - fmt.bias - m).astype(np.int32))
    subnormal = np.ldexp(mantissa.astype(np.float64), np.int32(fmt.min_exponent - m))
    value = sign * np.where(exponent == 0, subnormal, normal)
    if fmt.finite_only:
        value = np.where((exponent == e_all) & (mantissa == 2**m - 1), np.nan, value)
    else:
        value = np.where(exponent == e_all, np.where(mantissa == 0, sign * np.inf, np.nan), value)
    return value


def _max_finite(fmt: FloatFormat) -> float:
    m = fmt.mantissa_bits
    top = 2**fmt.exponent_bits - 1 - (0 if fmt.finite_only else 1)  # largest exponent field of a finite number
    top_mantissa = 2**m - 2 if fmt.finite_only else 2**m - 1
    return math.ldexp(2**m + top_mantissa, top - fmt.bias - m)


def encode(x: np.ndarray | Sequence[float] | float, fmt: FloatFormat | str, saturate: bool = False) -> np.ndarray:
    """Bit patterns (uint8/16/32) of ``x`` rounded to ``fmt`` to nearest, ties to even, from float64.

    Overflow (a rounded magnitude above the largest finite value): +-inf in IEEE formats; NaN in
    ``finite_only`` formats (ml_dtypes' rule); with ``saturate=True`` +-max instead (torch's rule for
    float8_e4m3fn). An infinite input follows the same rule; NaN in gives the format's NaN (sign kept).
    """
    fmt = _format(fmt)
    a = np.asarray(x, dtype=np.float64)
    m, e_all = fmt.mantissa_bits, 2**fmt.exponent_bits - 1
    sign = np.signbit(a).astype(np.int64)
    mag = np.abs(a)
    finite = np.isfinite(mag)
    safe = np.where(finite & (mag > 0), mag, 1.0)
    _, e2 = np.frexp(safe)  # safe = f * 2**e2, f in [0.5, 1): floor(log2) = e2 - 1
    exponent = np.maximum(e2 - 1, fmt.min_exponent)
    significand = np.rint(np.ldexp(safe, (m - exponent).astype(np.int32))).astype(np.int64)  # half to even
    carry = significand == 2 ** (m + 1)
    exponent = np.where(carry, exponent + 1, exponent)
    significand = np.where(carry, 2**m, significand)
    is_normal = significand >= 2**m
    exp_field = np.where(is_normal, exponent + fmt.bias, 0)
    man_field = np.where(is_normal, significand - 2**m, significand)
    code = (exp_field << m) | man_field
    code = np.where(finite & (mag > 0), code, 0)
    max_code = int(encode_max_code(fmt))
    overflow = finite & (np.ldexp(significand.astype(np.float64), (exponent - m).astype(np.int32)) > _max_finite(fmt))
    nan_code = (e_all << m) | (2**m - 1 if fmt.finite_only else 2 ** (m - 1))
    too_big = max_code if saturate else (nan_code if fmt.finite_only else e_all << m)  # +-max, NaN, or +-inf
    code = np.where(overflow | np.isinf(mag), too_big, code)  # an infinite input is treated as an overflow
    code = np.where(np.isnan(a), nan_code, code)
    return ((sign << (fmt.bits - 1)) | code).astype(_UINT[fmt.bits])


def encode_max_code(fmt: FloatFormat | str) -> int:
    """The positive bit pattern of the largest finite value."""
    fmt = _format(fmt)
    m = fmt.mantissa_bits
    if fmt.finite_only:
        return ((2**fmt.exponent_bits - 1) << m) | (2**m - 2)
    return ((2**fmt.exponent_bits - 2) << m) | (2**m - 1)


def format_limits(fmt: FloatFormat | str) -> dict[str, float]:
    """``max``, ``min_normal``, ``min_subnormal`` and ``eps`` (the gap from 1 to the next value) read off :func:`decode`."""
    fmt = _format(fmt)
    m = fmt.mantissa_bits
    one = fmt.bias << m
    return {
        "max": float(decode(encode_max_code(fmt), fmt)),
        "min_normal": float(decode(1 << m, fmt)),
        "min_subnormal": float(decode(1, fmt)),
        "eps": float(decode(one + 1, fmt) - decode(one, fmt)),
    }


# ----------------------------------------------------------------------------- summation


def _values(x: np.ndarray | torch.Tensor | Sequence[float]) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.dtype.kind not in "fiu" and a.dtype not in (ml_dtypes.bfloat16,):
        raise TypeError(f"x must hold numbers, got dtype {a.dtype}")
    if a.size == 0:
        raise ValueError("x is empty")
    return a.ravel()


def sequential_sum(x: np.ndarray | torch.Tensor | Sequence[float], dtype: type = np.float16) -> float:
    """Left-to-right sum of ``x`` with one accumulator of ``dtype`` (each value first rounded to ``dtype``)."""
    values = _values(x).astype(dtype)
    total = dtype(0)
    for v in values:
        total = dtype(total + v)
    return float(total)


def kahan_sum(x: np.ndarray | torch.Tensor | Sequence[float], dtype: type = np.float16) -> float:
    """Kahan's compensated sum of ``x`` in ``dtype``: a second accumulator keeps the low part each add rounds away."""
    values = _values(x).astype(dtype)
    total, compensation = dtype(0), dtype(0)
    for v in values:
        y = dtype(v - compensation)
        t = dtype(total + y)
        compensation = dtype(dtype(t - total) - y)
        total = t
    return float(total)


def flushed_fraction(values: np.ndarray | torch.Tensor, fmt: FloatFormat | str = "fp16", scale: float = 1.0) -> float:
    """Fraction of the nonzero ``values`` that become 0 when ``scale * values`` is rounded to ``fmt``."""
    a = _values(values).astype(np.float64)
    if not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    nonzero = a[a != 0]
    if nonzero.size == 0:
        raise ValueError("values has no nonzero entry")
    rounded = decode(encode(nonzero * scale, fmt), fmt)
    return float(np.mean(rounded == 0))


# ----------------------------------------------------------------------------- loss scaling


def gradscaler_defaults() -> dict[str, float]:
    """``init_scale``, ``growth_factor``, ``backoff_factor``, ``growth_interval`` as the installed torch.amp.GradScaler defines them."""
    params = inspect.signature(torch.amp.GradScaler.__init__).parameters
    return {k: params[k].default for k in ("init_scale", "growth_factor", "backoff_factor", "growth_interval")}


def gradients_finite(grads: Iterable[torch.Tensor | None]) -> bool:
    """True when every given gradient (None skipped) holds only finite values."""
    return all(bool(torch.isfinite(g).all()) for g in grads if g is not None)


class StaticLossScaler:
    """Multiply the loss by a fixed ``scale`` before backward; divide the gradients by it before the step."""

    def __init__(self, scale: float) -> None:
        if not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        self.scale = float(scale)

    def unscale(self, grads: Iterable[torch.Tensor | None]) -> bool:
        """Divide the gradients in place by the scale; return whether they are all finite."""
        grads = [g for g in grads if g is not None]
        for g in grads:
            g.div_(self.scale)
        return gradients_finite(grads)


class DynamicLossScaler(StaticLossScaler):
    """Loss scaling with GradScaler's rule: on inf/NaN skip the step, multiply the scale by ``backoff_factor``
    and restart the count; after ``growth_interval`` finite steps in a row multiply it by ``growth_factor``.

    Arguments default to the installed ``torch.amp.GradScaler``'s defaults (read, not hard-coded).
    """

    def __init__(
        self,
        init_scale: float | None = None,
        growth_factor: float | None = None,
        backoff_factor: float | None = None,
        growth_interval: int | None = None,
    ) -> None:
        defaults = gradscaler_defaults()
        init_scale = defaults["init_scale"] if init_scale is None else init_scale
        super().__init__(init_scale)
        self.growth_factor = float(defaults["growth_factor"] if growth_factor is None else growth_factor)
        self.backoff_factor = float(defaults["backoff_factor"] if backoff_factor is None else backoff_factor)
        self.growth_interval = defaults["growth_interval"] if growth_interval is None else growth_interval
        if not self.growth_factor > 1:
            raise ValueError(f"growth_factor must be > 1, got {self.growth_factor!r}")
        if not 0 < self.backoff_factor < 1:
            raise ValueError(f"backoff_factor must be in (0, 1), got {self.backoff_factor!r}")
        if not isinstance(self.growth_interval, int) or isinstance(self.growth_interval, bool) or self.growth_interval < 1:
            raise ValueError(f"growth_interval must be an int >= 1, got {self.growth_interval!r}")
        self.good_steps = 0

    def update(self, found_inf: bool) -> bool:
        """Record one step's outcome and adjust the scale; returns whether the optimizer step should be taken."""
        if found_inf:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            return False
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0
        return True


# ----------------------------------------------------------------------------- autocast and a mixed-precision step


def autocast_output_dtypes(
    model: nn.Module, x: torch.Tensor, device_type: str = "cpu", dtype: torch.dtype = torch.bfloat16
) -> dict[str, torch.dtype]:
    """The output dtype of every leaf module of ``model`` in one forward pass of ``x`` under ``torch.autocast``.

    Keys are module names (``named_modules``); hooks are removed afterwards.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"device_type must be 'cpu' or 'cuda', got {device_type!r}")
    found: dict[str, torch.dtype] = {}
    handles = [
        module.register_forward_hook(lambda mod, inputs, output, name=name: found.__setitem__(name, output.dtype))
        for name, module in model.named_modules()
        if name and not list(module.children())
    ]
    try:
        with torch.no_grad(), torch.autocast(device_type, dtype=dtype):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return found


def amp_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    scaler: torch.amp.GradScaler | None = None,
    dtype: torch.dtype | None = torch.bfloat16,
) -> float:
    """One mixed-precision training step on the device of ``model``; returns the loss.

    The forward pass runs under ``torch.autocast`` with ``dtype`` (``None``: plain fp32). The weights stay
    fp32 (master weights). With a ``scaler`` (fp16 needs one; bf16 does not) the loss is scaled, the
    gradients unscaled before the step, and a step with inf/NaN gradients is skipped.
    """
    device_type = next(model.parameters()).device.type
    x, y = x.to(device_type), y.to(device_type)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = nn.functional.cross_entropy(model(x), y)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return float(loss.detach())


# ----------------------------------------------------------------------------- fp8 weight storage


def fp8_quantize(w: torch.Tensor, fmt: str = "e4m3fn", per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """fp8 codes and float32 scales of a weight: ``codes = fp8(w / scale)``, ``scale = amax / fp8 max``.

    ``per_channel``: one scale per output channel (dim 0), shape (out,); else one scale, shape (). An
    all-zero channel gets scale 1. The codes are a ``torch.float8_*`` tensor of ``w``'s shape (1 byte each).
    """
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise TypeError(f"w must be a floating-point torch tensor, got {type(w).__name__}")
    if fmt not in ("e4m3fn", "e5m2"):
        raise ValueError(f"fmt must be 'e4m3fn' or 'e5m2', got {fmt!r}")
    if w.numel() == 0:
        raise ValueError("w is empty")
    w = w.detach().float()
    fp8_max = format_limits(fmt)["max"]
    amax = w.abs().flatten(1).amax(1) if (per_channel and w.dim() > 1) else w.abs().max()
    scale = torch.where(amax > 0, amax / fp8_max, torch.ones_like(amax))
    shaped = scale.reshape(-1, *([1] * (w.dim() - 1))) if scale.dim() else scale
    return (w / shaped).to(torch_dtype(fmt)), scale


def fp8_dequantize(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 weights back from :func:`fp8_quantize`'s codes and scales."""
    shaped = scale.reshape(-1, *([1] * (codes.dim() - 1))) if scale.dim() else scale
    return codes.float() * shaped


def fp8_state_dict(model: nn.Module, fmt: str = "e4m3fn", per_channel: bool = True) -> dict[str, torch.Tensor]:
    """What to store: every Linear/Conv weight as fp8 codes plus float32 scales; every other tensor (biases) as is."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        if name.endswith("weight") and isinstance(module, (nn.Linear, nn.Conv2d)):
            codes, scale = fp8_quantize(tensor, fmt, per_channel)
            state[name] = codes
            state[name + "_scale"] = scale
        else:
            state[name] = tensor.detach().clone()
    return state
