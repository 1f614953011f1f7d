"""Chapter 03's lab checks: plausible wrong answers are rejected with expected / got / hint, correct
alternatives written differently (float32, torch, loops, Fraction, other tie rules) are accepted."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pytest
import torch

from helpers import checks
from helpers import quantization as Q

# ----------------------------------------------------------------------------- check_qparams


def _qrange(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def _qparams_parts(lo, hi, bits, symmetric, signed, *, zp_round=np.round, sym_div=None, empty_scale=1.0, widen=True):
    qmin, qmax = _qrange(bits, signed)
    if widen:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        amax = max(-lo, hi)
        return (amax / (sym_div(bits) if sym_div else qmax) if amax > 0 else empty_scale), 0
    if hi == lo:
        return empty_scale, 0
    scale = (hi - lo) / (qmax - qmin)
    return scale, int(np.clip(qmin - zp_round(lo / scale), qmin, qmax))


QPARAMS_WRONG: dict[str, Callable] = {
    "zero point rounded half away from zero": lambda lo, hi, b=8, sym=False, sg=True: _qparams_parts(
        lo, hi, b, sym, sg, zp_round=lambda v: np.sign(v) * np.floor(np.abs(v) + 0.5)
    ),
    "zero point rounded half up, floor(v + 0.5)": lambda lo, hi, b=8, sym=False, sg=True: _qparams_parts(
        lo, hi, b, sym, sg, zp_round=lambda v: np.floor(v + 0.5)
    ),
    "zero point truncated with int()": lambda lo, hi, b=8, sym=False, sg=True: _qparams_parts(lo, hi, b, sym, sg, zp_round=np.trunc),
    "symmetric scale over 2**(b-1) - 0.5 (PyTorch's 127.5)": lambda lo, hi, b=8, sym=False, sg=True: _qparams_parts(
        lo, hi, b, sym, sg, sym_div=lambda bits: 2 ** (bits - 1) - 0.5
    ),
    "empty range gives scale 0": lambda lo, hi, b=8, sym=False, sg=True: _qparams_parts(lo, hi, b, sym, sg, empty_scale=0.0),
    "empty range divides by zero (nan)": lambda lo, hi, b=8, sym=False, sg=True: _qparams_parts(
        lo, hi, b, sym, sg, empty_scale=float("nan")
    ),
    "zero point returned as a float": lambda lo, hi, b=8, sym=False, sg=True: (
        Q.qparams(lo, hi, b, sym, sg)[0],
        float(Q.qparams(lo, hi, b, sym, sg)[1]),
    ),
    "range not widened to include 0": lambda lo, hi, b=8, sym=False, sg=True: (
        _qparams_parts(lo, hi, b, sym, sg, widen=False) if lo != hi else (1.0, 0)
    ),
    "unsigned symmetric uses the signed qmax": lambda lo, hi, b=8, sym=False, sg=True: _qparams_parts(lo, hi, b, sym, True if sym else sg),
}

QPARAMS_RIGHT: dict[str, Callable] = {
    "helper": lambda lo, hi, b=8, sym=False, sg=True: Q.qparams(lo, hi, b, sym, sg),
    "numpy int zero point and float32 scale": lambda lo, hi, b=8, sym=False, sg=True: (
        np.float32(Q.qparams(lo, hi, b, sym, sg)[0]),
        np.int64(Q.qparams(lo, hi, b, sym, sg)[1]),
    ),
    "python round (also half to even)": lambda lo, hi, b=8, sym=False, sg=True: _qparams_parts(lo, hi, b, sym, sg, zp_round=round),
    "list instead of tuple": lambda lo, hi, b=8, sym=False, sg=True: list(Q.qparams(lo, hi, b, sym, sg)),
}


@pytest.mark.parametrize("name", sorted(QPARAMS_WRONG))
def test_qparams_rejects(name: str) -> None:
    with pytest.raises(checks.CheckFailure, match="expected"):
        checks.check_qparams(QPARAMS_WRONG[name])


@pytest.mark.parametrize("name", sorted(QPARAMS_RIGHT))
def test_qparams_accepts(name: str, capsys: pytest.CaptureFixture) -> None:
    checks.check_qparams(QPARAMS_RIGHT[name])
    assert capsys.readouterr().out.startswith("PASSED check_qparams")


# ----------------------------------------------------------------------------- check_quantize


def _dequantize(q, s, z):
    return (q - z) * s


def _quantize_inplace(x, s, z, b=8, sg=True):
    x /= s  # mutates the caller's array
    return np.clip(np.round(x) + z, *_qrange(b, sg)).astype(np.int64)


def _dequantize_inplace(q, s, z):
    q -= z
    return q * s


QUANTIZE_WRONG: dict[str, tuple[Callable, Callable]] = {
    "half away from zero": (
        lambda x, s, z, b=8, sg=True: np.clip(np.sign(x / s) * np.floor(np.abs(x / s) + 0.5) + z, *_qrange(b, sg)).astype(np.int64),
        _dequantize,
    ),
    "floor(x + 0.5)": (lambda x, s, z, b=8, sg=True: np.clip(np.floor(x / s + 0.5) + z, *_qrange(b, sg)).astype(np.int64), _dequantize),
    "truncation toward zero": (lambda x, s, z, b=8, sg=True: np.clip(np.trunc(x / s) + z, *_qrange(b, sg)).astype(np.int64), _dequantize),
    "clamp before adding the zero point": (
        lambda x, s, z, b=8, sg=True: (np.clip(np.round(x / s), *_qrange(b, sg)) + z).astype(np.int64),
        _dequantize,
    ),
    "x /= scale in place": (_quantize_inplace, _dequantize),
    "q -= zero_point in place in dequantize": (Q.quantize, _dequantize_inplace),
    "int8 codes for unsigned data (wraps)": (
        lambda x, s, z, b=8, sg=True: np.clip(np.round(x / s) + z, *_qrange(b, sg)).astype(np.int8),
        _dequantize,
    ),
    "float codes": (lambda x, s, z, b=8, sg=True: np.clip(np.round(x / s) + z, *_qrange(b, sg)), _dequantize),
    "signed range used for unsigned": (
        lambda x, s, z, b=8, sg=True: np.clip(np.round(x / s) + z, *_qrange(b, True)).astype(np.int64),
        _dequantize,
    ),
    "dequantize adds the zero point": (Q.quantize, lambda q, s, z: (q + z) * s),
    "dequantize returns integers": (Q.quantize, lambda q, s, z: (q - z) * int(round(1 / s)) // int(round(1 / s))),
}

QUANTIZE_RIGHT: dict[str, tuple[Callable, Callable]] = {
    "helper": (Q.quantize, Q.dequantize),
    "torch round (half to even) on a tensor": (
        lambda x, s, z, b=8, sg=True: (torch.round(torch.from_numpy(np.asarray(x, np.float64)) / s) + z).clamp(*_qrange(b, sg)).long(),
        lambda q, s, z: torch.from_numpy(np.asarray(q)).sub(z).double().mul(s),
    ),
    "np.rint, int32 codes, float32 dequantize": (
        lambda x, s, z, b=8, sg=True: np.clip(np.rint(x / s) + z, *_qrange(b, sg)).astype(np.int32),
        lambda q, s, z: ((q - z) * s).astype(np.float32),
    ),
    "a Python loop with round()": (
        lambda x, s, z, b=8, sg=True: np.array(
            [min(max(round(float(v) / s) + z, _qrange(b, sg)[0]), _qrange(b, sg)[1]) for v in x.ravel()]
        ).reshape(x.shape),
        lambda q, s, z: np.array([(int(v) - z) * s for v in np.ravel(q)]).reshape(np.shape(q)),
    ),
    "in place, but on its own copy": (lambda x, s, z, b=8, sg=True: _quantize_inplace(x.copy(), s, z, b, sg), _dequantize),
}


@pytest.mark.parametrize("name", sorted(QUANTIZE_WRONG))
def test_quantize_rejects(name: str) -> None:
    with pytest.raises(checks.CheckFailure, match="expected"):
        checks.check_quantize(*QUANTIZE_WRONG[name])


@pytest.mark.parametrize("name", sorted(QUANTIZE_RIGHT))
def test_quantize_accepts(name: str, capsys: pytest.CaptureFixture) -> None:
    checks.check_quantize(*QUANTIZE_RIGHT[name])
    assert capsys.readouterr().out.startswith("PASSED check_quantize")


# ----------------------------------------------------------------------------- check_per_channel_qparams


def _per_channel(w, axis=0, bits=8):
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    amax = np.abs(moved).max(1)
    return np.where(amax > 0, amax / (2 ** (bits - 1) - 1), 1.0), np.zeros(len(amax), dtype=np.int64)


def _per_channel_abs_inplace(w, axis=0, bits=8):
    np.abs(w, out=w)
    return _per_channel(w, axis, bits)


PER_CHANNEL_WRONG: dict[str, Callable] = {
    "np.abs(w, out=w) mutates the weight": _per_channel_abs_inplace,
    "max instead of max |w|": lambda w, axis=0, bits=8: (
        np.maximum(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1).max(1), 1e-12) / (2 ** (bits - 1) - 1),
        np.zeros(w.shape[axis], dtype=np.int64),
    ),
    "zero scale for an all-zero channel": lambda w, axis=0, bits=8: (
        np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(1) / (2 ** (bits - 1) - 1),
        np.zeros(w.shape[axis], dtype=np.int64),
    ),
    "keepdims scales": lambda w, axis=0, bits=8: tuple(v.reshape(-1, *([1] * (w.ndim - 1))) for v in _per_channel(w, axis, bits)),
    "reduces over the last axis only": lambda w, axis=0, bits=8: (
        _per_channel(w.reshape(w.shape[0], -1) if axis == 0 else w, 0, bits)
        if w.ndim == 2 or axis == 0
        else (np.abs(w).max(axis=-1).max(axis=-1).max(axis=0) / 127, np.zeros(w.shape[axis], dtype=np.int64))
    ),
    "divides by 2**(bits-1)": lambda w, axis=0, bits=8: (
        _per_channel(w, axis, bits)[0] * (2 ** (bits - 1) - 1) / 2 ** (bits - 1),
        np.zeros(w.shape[axis]),
    ),
    "ignores axis": lambda w, axis=0, bits=8: _per_channel(w, 0, bits),
}

PER_CHANNEL_RIGHT: dict[str, Callable] = {
    "helper": lambda w, axis=0, bits=8: Q.qparams_per_channel(w, axis=axis, bits=bits),
    "vectorised with float zero points": lambda w, axis=0, bits=8: (_per_channel(w, axis, bits)[0], np.zeros(w.shape[axis])),
    "torch amax in float32": lambda w, axis=0, bits=8: (
        torch.where(
            (a := torch.from_numpy(np.ascontiguousarray(np.moveaxis(w, axis, 0))).float().flatten(1).abs().amax(1)) > 0,
            a / (2 ** (bits - 1) - 1),
            torch.ones_like(a),
        ),
        torch.zeros(w.shape[axis], dtype=torch.int32),
    ),
    "a loop over channels with np.take": lambda w, axis=0, bits=8: (
        np.array([(np.abs(np.take(w, i, axis=axis)).max() / (2 ** (bits - 1) - 1)) or 1.0 for i in range(w.shape[axis])]),
        np.array([0] * w.shape[axis]),
    ),
}


@pytest.mark.parametrize("name", sorted(PER_CHANNEL_WRONG))
def test_per_channel_qparams_rejects(name: str) -> None:
    with pytest.raises(checks.CheckFailure, match="expected"):
        checks.check_per_channel_qparams(PER_CHANNEL_WRONG[name])


@pytest.mark.parametrize("name", sorted(PER_CHANNEL_RIGHT))
def test_per_channel_qparams_accepts(name: str, capsys: pytest.CaptureFixture) -> None:
    checks.check_per_channel_qparams(PER_CHANNEL_RIGHT[name])
    assert capsys.readouterr().out.startswith("PASSED check_per_channel_qparams")


# ----------------------------------------------------------------------------- check_mse_range


def _mse_search(x, bits, fractions=None, symmetric=False, clipped_error_ignored=False):
    lo, hi = float(np.min(x)), float(np.max(x))
    if symmetric:
        lo, hi = -max(-lo, hi), max(-lo, hi)
    best, best_range = math.inf, (lo, hi)
    for f in np.linspace(1.0, 0.01, 100) if fractions is None else fractions:
        a, b = lo * f, hi * f
        s, z = Q.qparams(a, b, bits)
        x_hat = Q.fake_quantize(x, s, z, bits).astype(np.float64)
        inside = (x >= a) & (x <= b) if clipped_error_ignored else np.ones(x.shape, dtype=bool)
        error = np.mean((x_hat - x)[inside] ** 2)
        if error < best:
            best, best_range = error, (a, b)
    return best_range


def _mse_inplace(x, bits):
    result = _mse_search(x.copy(), bits)
    x -= x.mean()  # "centres" the caller's data
    return result


MSE_WRONG: dict[str, Callable] = {
    "min-max": lambda x, bits: Q.minmax_range(x),
    "symmetric range on one-sided data": lambda x, bits: _mse_search(x, bits, symmetric=True),
    "error measured only inside the range": lambda x, bits: _mse_search(x, bits, clipped_error_ignored=True),
    "search stops at half the range": lambda x, bits: _mse_search(x, bits, fractions=np.linspace(1.0, 0.5, 50)),
    "mutates x": _mse_inplace,
    "returns the fraction, not the range": lambda x, bits: (0.0, 0.3),
    "returns nan for the range": lambda x, bits: (float("nan"), float("nan")),
}

MSE_RIGHT: dict[str, Callable] = {
    "helper": lambda x, bits: Q.mse_range(x, bits),
    "coarser grid of 50 fractions": lambda x, bits: _mse_search(x, bits, fractions=np.linspace(1.0, 0.02, 50)),
    "float32 throughout": lambda x, bits: tuple(np.float32(v) for v in _mse_search(x.astype(np.float32), bits)),
    "torch tensors": lambda x, bits: tuple(torch.tensor(v) for v in _mse_search(x, bits)),
}


@pytest.mark.parametrize("name", sorted(MSE_WRONG))
def test_mse_range_rejects(name: str) -> None:
    with pytest.raises(checks.CheckFailure, match="expected"):
        checks.check_mse_range(MSE_WRONG[name])


@pytest.mark.parametrize("name", sorted(MSE_RIGHT))
def test_mse_range_accepts(name: str, capsys: pytest.CaptureFixture) -> None:
    checks.check_mse_range(MSE_RIGHT[name])
    assert capsys.readouterr().out.startswith("PASSED check_mse_range")


# ----------------------------------------------------------------------------- check_quantize_multiplier


def _multiplier_no_overflow_fix(m):
    f, e = math.frexp(m)
    return round(f * 2**31), -e


MULTIPLIER_WRONG: dict[str, Callable] = {
    "truncates with int()": lambda m: (int(math.frexp(m)[0] * 2**31), -math.frexp(m)[1]),
    "floor": lambda m: (math.floor(math.frexp(m)[0] * 2**31), -math.frexp(m)[1]),
    "no fix when rounding reaches 2**31": _multiplier_no_overflow_fix,
    "fix that keeps the shift": lambda m: (
        (2**30, -math.frexp(m)[1]) if round(math.frexp(m)[0] * 2**31) == 2**31 else _multiplier_no_overflow_fix(m)
    ),
    "shift with the wrong sign": lambda m: (Q.quantize_multiplier(m)[0], -Q.quantize_multiplier(m)[1]),
    "m0 as an unrounded float": lambda m: (math.frexp(m)[0] * 2**31, -math.frexp(m)[1]),
    "shift off by one": lambda m: (Q.quantize_multiplier(m)[0], Q.quantize_multiplier(m)[1] + 1),
}


def _multiplier_loop(m):
    shift = 0
    while m < 0.5:
        m *= 2
        shift += 1
    m0 = round(m * 2**31)
    return (m0 // 2, shift - 1) if m0 == 2**31 else (m0, shift)


def _multiplier_fraction(m):
    f, e = np.frexp(np.float64(m))
    m0 = round(Fraction(float(f)) * 2**31)
    return (np.int64(2**30), np.int64(-e - 1)) if m0 == 2**31 else (np.int64(m0), np.int64(-e))


MULTIPLIER_RIGHT: dict[str, Callable] = {
    "helper": Q.quantize_multiplier,
    "normalising loop": _multiplier_loop,
    "np.frexp, Fraction, numpy ints": _multiplier_fraction,
    "half up instead of half even": lambda m: (
        (2**30, -math.frexp(m)[1] - 1)
        if math.floor(math.frexp(m)[0] * 2**31 + 0.5) == 2**31
        else (math.floor(math.frexp(m)[0] * 2**31 + 0.5), -math.frexp(m)[1])
    ),
}


@pytest.mark.parametrize("name", sorted(MULTIPLIER_WRONG))
def test_quantize_multiplier_rejects(name: str) -> None:
    with pytest.raises(checks.CheckFailure, match="expected"):
        checks.check_quantize_multiplier(MULTIPLIER_WRONG[name])


@pytest.mark.parametrize("name", sorted(MULTIPLIER_RIGHT))
def test_quantize_multiplier_accepts(name: str, capsys: pytest.CaptureFixture) -> None:
    checks.check_quantize_multiplier(MULTIPLIER_RIGHT[name])
    assert capsys.readouterr().out.startswith("PASSED check_quantize_multiplier")


def test_quantize_multiplier_exercises_the_2_to_31_case() -> None:
    hits = [m for m in (1 - 2.0**-40, 0.5 - 2.0**-45) if round(math.frexp(m)[0] * 2**31) == 2**31]
    assert len(hits) == 2


# ----------------------------------------------------------------------------- check_requantize


def _requantize_single(acc, m0, shift, zp, bits=8, rounding="half_up"):
    total = 31 + shift
    product = acc.astype(np.int64) * np.int64(m0)
    half = np.int64(1) << (total - 1)
    if rounding == "half_up":
        rounded = (product + half) >> total
    elif rounding == "half_away":
        rounded = np.sign(product) * ((np.abs(product) + half) >> total)
    elif rounding == "floor":
        rounded = product >> total
    elif rounding == "trunc":
        rounded = np.sign(product) * (np.abs(product) >> total)
    else:  # half to even, via Python's exact integers
        rounded = np.array([round(Fraction(int(p), 2**total)) for p in product], dtype=np.int64)
    return np.clip(rounded + zp, *_qrange(bits, True))


def _requantize_inplace(acc, m0, shift, zp, bits=8):
    acc *= m0  # int64 product stored back into the caller's array
    acc += np.int64(1) << (30 + shift)
    acc >>= 31 + shift
    return np.clip(acc + zp, *_qrange(bits, True))


REQUANTIZE_WRONG: dict[str, Callable] = {
    "floor (>> without the rounding nudge)": lambda acc, m0, shift, zp, bits=8: _requantize_single(acc, m0, shift, zp, bits, "floor"),
    "truncation toward zero": lambda acc, m0, shift, zp, bits=8: _requantize_single(acc, m0, shift, zp, bits, "trunc"),
    "in-place on acc": _requantize_inplace,
    "clamped to int8 whatever bits": lambda acc, m0, shift, zp, bits=8: _requantize_single(acc, m0, shift, zp, 8),
    "zero point added after the clamp": lambda acc, m0, shift, zp, bits=8: _requantize_single(acc, m0, shift, 0, bits) + zp,
    "int32 product overflows": lambda acc, m0, shift, zp, bits=8: (
        np.clip(((acc.astype(np.int32) * np.int32(m0)).astype(np.int64) + (1 << (30 + shift))) >> (31 + shift), *_qrange(bits, True))
        + 0 * zp
    ),
    "forgets the 31 in the shift": lambda acc, m0, shift, zp, bits=8: np.clip(
        (acc * m0 + (1 << max(shift - 1, 0))) >> shift, *_qrange(bits, True)
    ),
}

REQUANTIZE_RIGHT: dict[str, Callable] = {
    "gemmlowp helper (two roundings)": lambda acc, m0, shift, zp, bits=8: Q.requantize(acc, m0, shift, zp, bits),
    "one rounding, ties up": lambda acc, m0, shift, zp, bits=8: _requantize_single(acc, m0, shift, zp, bits, "half_up"),
    "one rounding, ties away from zero": lambda acc, m0, shift, zp, bits=8: _requantize_single(acc, m0, shift, zp, bits, "half_away"),
    "one rounding, ties to even, Python ints": lambda acc, m0, shift, zp, bits=8: _requantize_single(acc, m0, shift, zp, bits, "even"),
    "torch int64": lambda acc, m0, shift, zp, bits=8: (((torch.from_numpy(acc) * m0 + (1 << (30 + shift))) >> (31 + shift)) + zp).clamp(
        *_qrange(bits, True)
    ),
    "int8 output": lambda acc, m0, shift, zp, bits=8: _requantize_single(acc, m0, shift, zp, bits).astype(np.int8),
}


@pytest.mark.parametrize("name", sorted(REQUANTIZE_WRONG))
def test_requantize_rejects(name: str) -> None:
    with pytest.raises(checks.CheckFailure, match="expected"):
        checks.check_requantize(REQUANTIZE_WRONG[name])


@pytest.mark.parametrize("name", sorted(REQUANTIZE_RIGHT))
def test_requantize_accepts(name: str, capsys: pytest.CaptureFixture) -> None:
    checks.check_requantize(REQUANTIZE_RIGHT[name])
    assert capsys.readouterr().out.startswith("PASSED check_requantize")


# ----------------------------------------------------------------------------- check_quantized_linear


def _linear(q_x, zp_x, q_w, bias_q, m0, shift, zp_y, *, rounding="half_up", widen=True, clamp=(0, 255), use_bias=True, zp_y_on=True):
    a = q_x.astype(np.int64) if widen else q_x
    w = q_w.astype(np.int64) if widen else q_w
    acc = (a - zp_x) @ w.T + (bias_q if use_bias else 0)
    acc = np.asarray(acc, dtype=np.int64)
    out = np.empty_like(acc)
    for j in range(acc.shape[1]):
        out[:, j] = _requantize_single(acc[:, j], int(m0[j]), int(shift[j]), 0, 16, rounding)
    out = out + (zp_y if zp_y_on else 0)
    return np.clip(out, *clamp) if clamp else out


def _linear_inplace(q_x, zp_x, q_w, bias_q, m0, shift, zp_y):
    q_x -= zp_x  # mutates the caller's activations (and wraps if they are uint8)
    return _linear(q_x, 0, q_w, bias_q, m0, shift, zp_y)


LINEAR_WRONG: dict[str, Callable] = {
    "uint8 arithmetic without widening": lambda *a: _linear(*a, widen=False),
    "floor in the requantizer": lambda *a: _linear(*a, rounding="floor"),
    "clamps to int8": lambda *a: _linear(*a, clamp=(-128, 127)),
    "no clamp": lambda *a: _linear(*a, clamp=None),
    "forgets zp_y": lambda *a: _linear(*a, zp_y_on=False),
    "forgets the bias": lambda *a: _linear(*a, use_bias=False),
    "subtracts zp_x in place": _linear_inplace,
    "returns floats": lambda *a: _linear(*a).astype(np.float64),
    "transposed output": lambda *a: _linear(*a).T,
}

LINEAR_RIGHT: dict[str, Callable] = {
    "helper engine": lambda q_x, zp_x, q_w, bias_q, m0, shift, zp_y: Q.quantized_linear(
        q_x, zp_x, q_w, 0, bias_q, m0, shift, zp_y, 8, False
    ),
    "loop, ties away": lambda *a: _linear(*a, rounding="half_away"),
    "einsum, vectorised requantizer, uint8 result": lambda q_x, zp_x, q_w, bias_q, m0, shift, zp_y: np.clip(
        (
            ((np.einsum("nk,mk->nm", q_x.astype(np.int64) - zp_x, q_w.astype(np.int64)) + bias_q) * m0 + (np.int64(1) << (30 + shift)))
            >> (31 + shift)
        )
        + zp_y,
        0,
        255,
    ).astype(np.uint8),
    "torch int64": lambda q_x, zp_x, q_w, bias_q, m0, shift, zp_y: torch.from_numpy(
        Q.quantized_linear(q_x, zp_x, q_w, 0, bias_q, m0, shift, zp_y, 8, False)
    ),
}


@pytest.mark.parametrize("name", sorted(LINEAR_WRONG))
def test_quantized_linear_rejects(name: str) -> None:
    with pytest.raises(checks.CheckFailure, match="expected"):
        checks.check_quantized_linear(LINEAR_WRONG[name])


@pytest.mark.parametrize("name", sorted(LINEAR_RIGHT))
def test_quantized_linear_accepts(name: str, capsys: pytest.CaptureFixture) -> None:
    checks.check_quantized_linear(LINEAR_RIGHT[name])
    assert capsys.readouterr().out.startswith("PASSED check_quantized_linear")


def test_failure_messages_name_the_case_and_give_a_hint() -> None:
    with pytest.raises(checks.CheckFailure) as caught:
        checks.check_requantize(REQUANTIZE_WRONG["floor (>> without the rounding nudge)"])
    message = str(caught.value)
    assert "accumulator" in message and "hint" in message and "NEAREST" in message
    with pytest.raises(checks.CheckFailure) as caught:
        checks.check_quantize(*QUANTIZE_WRONG["x /= scale in place"])
    assert "changed in place" in str(caught.value)
