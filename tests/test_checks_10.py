"""Chapter 10 checks: plausible wrong answers are rejected with expected/got/hint, correct alternatives pass."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from helpers import checks
from helpers import mixed_precision as MP

# ----------------------------------------------------------------------------- decode_float


def _decode(bits, e, m, finite_only):
    return MP.decode(bits, MP.FloatFormat("x", e, m, finite_only))


def _decode_loop(bits, e, m, finite_only):  # one pattern at a time, math.ldexp
    import math

    bias, out = 2 ** (e - 1) - 1, []
    for code in np.asarray(bits).ravel().tolist():
        s, E, M = code >> (e + m), (code >> m) & (2**e - 1), code & (2**m - 1)
        sign = -1.0 if s else 1.0
        if E == 2**e - 1 and not finite_only:
            out.append(sign * math.inf if M == 0 else math.nan)
        elif finite_only and E == 2**e - 1 and M == 2**m - 1:
            out.append(math.nan)
        elif E == 0:
            out.append(sign * math.ldexp(M, 1 - bias - m))
        else:
            out.append(sign * math.ldexp(2**m + M, E - bias - m))
    return np.array(out).reshape(np.shape(bits))


def _decode_torch(bits, e, m, finite_only):  # torch float64 arithmetic
    b = torch.from_numpy(np.asarray(bits).astype(np.int64))
    bias = 2 ** (e - 1) - 1
    sign = 1.0 - 2.0 * ((b >> (e + m)) & 1).double()
    E, M = (b >> m) & (2**e - 1), (b & (2**m - 1)).double()
    value = torch.where(E == 0, M / 2**m * 2.0 ** (1 - bias), (1 + M / 2**m) * torch.pow(2.0, (E - bias).double()))
    value = sign * value
    top = E == 2**e - 1
    if finite_only:
        value = torch.where(top & (M == 2**m - 1), torch.tensor(float("nan"), dtype=torch.float64), value)
    else:
        value = torch.where(top, torch.where(M == 0, sign * float("inf"), torch.tensor(float("nan"), dtype=torch.float64)), value)
    return value


def _decode_no_subnormals(bits, e, m, finite_only):
    out = _decode(bits, e, m, finite_only)
    b = np.asarray(bits).astype(np.int64)
    E, M = (b >> m) & (2**e - 1), b & (2**m - 1)
    sign = np.where((b >> (e + m)) & 1, -1.0, 1.0)
    return np.where((E == 0) & (M != 0), sign * np.ldexp(1 + M / 2**m, -(2 ** (e - 1) - 1)), out)  # implicit 1 kept


def _decode_subnormal_minus_bias(bits, e, m, finite_only):
    out = _decode(bits, e, m, finite_only)
    b = np.asarray(bits).astype(np.int64)
    E = (b >> m) & (2**e - 1)
    return np.where(E == 0, out / 2, out)  # 2**(-bias) instead of 2**(1 - bias)


def _decode_fn_as_ieee(bits, e, m, finite_only):
    return _decode(bits, e, m, False)


def _decode_ieee_as_fn(bits, e, m, finite_only):
    return _decode(bits, e, m, True) if e < 8 else _decode(bits, e, m, finite_only)


def _decode_bias_power(bits, e, m, finite_only):
    return _decode(bits, e, m, finite_only) * 0.5  # bias 2**(e-1) instead of 2**(e-1) - 1


def _decode_no_sign(bits, e, m, finite_only):
    return np.abs(_decode(bits, e, m, finite_only))


def _decode_float32(bits, e, m, finite_only):  # float32 holds every value of these formats exactly: correct too
    return _decode(bits, e, m, finite_only).astype(np.float32)


def _decode_mantissa_shift(bits, e, m, finite_only):  # M / 2**(m + 1): the fraction's scale off by one bit
    b = np.asarray(bits).astype(np.int64)
    M = b & (2**m - 1)
    out = _decode(bits, e, m, finite_only)
    return out * (1 + M / 2 ** (m + 1)) / (1 + M / 2**m)


def _decode_in_place(bits, e, m, finite_only):
    out = _decode(bits, e, m, finite_only)
    bits &= 2 ** (e + m) - 1  # strips the sign bits of the caller's array
    return out


DECODE_WRONG = [
    _decode_no_subnormals,
    _decode_subnormal_minus_bias,
    _decode_fn_as_ieee,
    _decode_ieee_as_fn,
    _decode_bias_power,
    _decode_no_sign,
    _decode_mantissa_shift,
    _decode_in_place,
]
DECODE_RIGHT = [_decode, _decode_loop, _decode_torch, _decode_float32]

# ----------------------------------------------------------------------------- kahan_sum


def _kahan_ref(values, dtype):
    return MP.kahan_sum(values, dtype)


def _kahan_torch(values, dtype):  # torch scalars for fp16/bf16/fp32: same roundings
    tdtype = {np.dtype(np.float16): torch.float16, np.dtype(ml_dtypes.bfloat16): torch.bfloat16, np.dtype(np.float32): torch.float32}[
        np.dtype(dtype)
    ]
    x = torch.from_numpy(np.asarray(values, dtype=np.float32)).to(tdtype)
    s, c = torch.zeros((), dtype=tdtype), torch.zeros((), dtype=tdtype)
    for v in x:
        y = v - c
        t = s + y
        c = (t - s) - y
        s = t
    return float(s)


def _kahan_list(values, dtype):  # python list, explicit casts
    s = c = dtype(0)
    for v in [dtype(v) for v in np.asarray(values).tolist()]:
        y = dtype(v - c)
        t = dtype(s + y)
        c = dtype(dtype(t - s) - y)
        s = t
    return float(s)


def _kahan_sign_flipped(values, dtype):
    s = c = dtype(0)
    for v in np.asarray(values).astype(dtype):
        y = dtype(v + c)  # adds the compensation instead of subtracting it
        t = dtype(s + y)
        c = dtype(dtype(t - s) - y)
        s = t
    return float(s)


def _kahan_float64_intermediates(values, dtype):
    s, c = 0.0, 0.0
    for v in np.asarray(values).astype(dtype).astype(np.float64):
        y = v - c
        t = s + y
        c = (t - s) - y
        s = t
    return float(s)


def _kahan_in_place(values, dtype):
    values -= 0  # harmless ...
    values[0] = 0  # ... but this drops the first value from the caller's array
    return MP.kahan_sum(values, dtype)


KAHAN_WRONG = [
    lambda v, d: MP.sequential_sum(v, d),  # plain running sum
    lambda v, d: float(np.sum(np.asarray(v, dtype=np.float64))),  # exact sum
    lambda v, d: float(np.sum(np.asarray(v).astype(d))),  # pairwise np.sum
    _kahan_sign_flipped,
    _kahan_float64_intermediates,
    _kahan_in_place,
]
KAHAN_RIGHT = [_kahan_ref, _kahan_torch, _kahan_list]

# ----------------------------------------------------------------------------- dynamic scaler


class _Scaler:
    def __init__(self, init_scale, growth_factor, backoff_factor, growth_interval):
        self.scale, self.g, self.b, self.n, self.count = init_scale, growth_factor, backoff_factor, growth_interval, 0

    def update(self, found_inf):
        if found_inf:
            self.scale *= self.b
            self.count = 0
            return False
        self.count += 1
        if self.count == self.n:
            self.scale *= self.g
            self.count = 0
        return True


class _ScalerCountdown:  # counts down instead of up: the same rule written differently
    def __init__(self, init_scale, growth_factor, backoff_factor, growth_interval):
        self.scale, self.g, self.b, self.n = float(init_scale), growth_factor, backoff_factor, growth_interval
        self.left = growth_interval

    def update(self, found_inf):
        if found_inf:
            self.scale, self.left = self.scale * self.b, self.n
            return False
        self.left -= 1
        if self.left == 0:
            self.scale, self.left = self.scale * self.g, self.n
        return True


class _ScalerTorchState(_Scaler):  # keeps the scale as a float32 tensor, like GradScaler
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = torch.tensor(float(self.scale), dtype=torch.float32)

    def update(self, found_inf):
        taken = super().update(found_inf)
        return bool(taken)


class _NoResetOnInf(_Scaler):
    def update(self, found_inf):
        if found_inf:
            self.scale *= self.b
            return False
        return super().update(False)


class _GrowsLate(_Scaler):  # off by one: grows after growth_interval + 1 good steps
    def update(self, found_inf):
        if found_inf:
            return super().update(True)
        self.count += 1
        if self.count > self.n:
            self.scale *= self.g
            self.count = 0
        return True


class _NoResetAfterGrowth(_Scaler):
    def update(self, found_inf):
        if found_inf:
            return super().update(True)
        self.count += 1
        if self.count >= self.n:
            self.scale *= self.g  # grows after every later good step too
        return True


class _StepsOnInf(_Scaler):
    def update(self, found_inf):
        super().update(found_inf)
        return True  # takes the step with inf gradients


class _BackoffByDivision(_Scaler):
    def update(self, found_inf):
        if found_inf:
            self.scale /= self.g  # divides by the growth factor instead of multiplying by backoff
            self.count = 0
            return False
        return super().update(False)


SCALER_WRONG = [_NoResetOnInf, _GrowsLate, _NoResetAfterGrowth, _StepsOnInf, _BackoffByDivision]
SCALER_RIGHT = [_Scaler, _ScalerCountdown, _ScalerTorchState, MP.DynamicLossScaler]

# ----------------------------------------------------------------------------- autocast dtypes


def _leaves(model):
    return [(n, m) for n, m in model.named_modules() if n and not list(m.children())]


def _dtypes_with(dtype=torch.bfloat16, inputs=False, leaves=True, remove=True, enabled=True):
    def fn(model, x):
        found = {}
        modules = _leaves(model) if leaves else list(model.named_modules())
        handles = [m.register_forward_hook(lambda mod, i, o, n=n: found.__setitem__(n, (i[0] if inputs else o).dtype)) for n, m in modules]
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=enabled):
            model(x)
        if remove:
            for h in handles:
                h.remove()
        return found

    return fn


def _dtypes_by_half(model, x):
    model.bfloat16()  # casts the model itself instead of using autocast
    return _dtypes_with(enabled=False)(model, x.bfloat16())


def _dtypes_pre_hooks(model, x):  # records outputs through the NEXT module's input? no: a correct alternative via a manual walk
    found = {}
    handles = []
    for n, m in _leaves(model):
        handles.append(m.register_forward_hook(lambda mod, i, o, n=n: found.update({n: o.dtype})))
    try:
        with torch.inference_mode(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return found


AUTOCAST_WRONG = [
    _dtypes_with(enabled=False),  # no autocast
    _dtypes_with(dtype=torch.float16),  # fp16 instead of bf16
    _dtypes_with(inputs=True),  # input dtypes
    _dtypes_with(leaves=False),  # includes the model and containers
    _dtypes_with(remove=False),  # hooks left behind
    _dtypes_by_half,
]
AUTOCAST_RIGHT = [MP.autocast_output_dtypes, _dtypes_with(), _dtypes_pre_hooks]

# ----------------------------------------------------------------------------- fp8 per channel


def _fp8_ref(w):
    return MP.fp8_quantize(w, "e4m3fn", per_channel=True)


def _fp8_numpy(w):  # numpy + ml_dtypes, scales as a numpy array
    a = w.detach().numpy().astype(np.float64)
    amax = np.abs(a.reshape(a.shape[0], -1)).max(1)
    scales = np.where(amax > 0, amax / 448.0, 1.0).astype(np.float32)
    codes = (a / scales.reshape(-1, *[1] * (a.ndim - 1)).astype(np.float64)).astype(np.float32).astype(ml_dtypes.float8_e4m3fn)
    return codes, scales


def _fp8_loop(w):  # channel by channel in torch
    scales, codes = [], []
    for row in w:
        amax = row.abs().max()
        scale = amax / 448 if amax > 0 else torch.tensor(1.0)
        scales.append(scale)
        codes.append((row / scale).to(torch.float8_e4m3fn))
    return torch.stack(codes), torch.stack(scales)


def _fp8_with(divisor=448.0, per_channel=True, fmt=torch.float8_e4m3fn, round_first=False):
    def fn(w):
        amax = w.abs().flatten(1).amax(1) if per_channel else w.abs().max().expand(w.shape[0])
        scales = torch.where(amax > 0, amax / divisor, torch.ones_like(amax))
        x = w / scales.reshape(-1, *[1] * (w.dim() - 1))
        return (torch.round(x) if round_first else x).to(fmt), scales

    return fn


def _fp8_in_place(w):
    amax = w.abs().flatten(1).amax(1)
    scales = torch.where(amax > 0, amax / 448, torch.ones_like(amax))
    w /= scales.reshape(-1, *[1] * (w.dim() - 1))  # divides the caller's weight
    return w.to(torch.float8_e4m3fn), scales


def _fp8_zero_channel_nan(w):
    amax = w.abs().flatten(1).amax(1)
    scales = amax / 448  # 0 for an all-zero channel: 0 / 0 = NaN codes
    return (w / scales.reshape(-1, *[1] * (w.dim() - 1))).to(torch.float8_e4m3fn), scales


FP8_WRONG = [
    _fp8_with(per_channel=False),  # one scale for the tensor
    _fp8_with(divisor=57344.0),  # E5M2's max
    _fp8_with(divisor=240.0),  # the max of the fnuz / IEEE-style E4M3
    _fp8_with(divisor=127.0),  # int8's qmax
    _fp8_with(fmt=torch.float8_e5m2),  # the other fp8 format
    _fp8_with(round_first=True),  # rounds to integers first
    _fp8_in_place,
    _fp8_zero_channel_nan,
]
FP8_RIGHT = [_fp8_ref, _fp8_numpy, _fp8_loop]

CASES = {
    "check_decode_float": (DECODE_WRONG, DECODE_RIGHT),
    "check_kahan_sum": (KAHAN_WRONG, KAHAN_RIGHT),
    "check_dynamic_scaler": (SCALER_WRONG, SCALER_RIGHT),
    "check_autocast_dtypes": (AUTOCAST_WRONG, AUTOCAST_RIGHT),
    "check_fp8_per_channel": (FP8_WRONG, FP8_RIGHT),
}

CHECK_CASES = {name: (right[0], wrong, None) for name, (wrong, right) in CASES.items()}


@pytest.mark.parametrize(("name", "index"), [(n, i) for n in CASES for i in range(len(CASES[n][0]))])
def test_wrong_answer_is_rejected_with_a_message(name: str, index: int) -> None:
    with pytest.raises(checks.CheckFailure) as error:
        getattr(checks, name)(CASES[name][0][index])
    message = str(error.value)
    assert "expected" in message and "got" in message and "hint" in message, message


@pytest.mark.parametrize(("name", "index"), [(n, i) for n in CASES for i in range(len(CASES[n][1]))])
def test_correct_alternative_passes(name: str, index: int, capsys: pytest.CaptureFixture) -> None:
    getattr(checks, name)(CASES[name][1][index])
    assert capsys.readouterr().out.startswith(f"PASSED {name}")


def test_hints_name_the_mistake() -> None:
    for name, fn, words in (
        ("check_decode_float", _decode_no_subnormals, "subnormal"),
        ("check_decode_float", _decode_fn_as_ieee, "finite_only"),
        ("check_kahan_sum", lambda v, d: MP.sequential_sum(v, d), "running sum"),
        ("check_kahan_sum", _kahan_in_place, "in place"),
        ("check_dynamic_scaler", _StepsOnInf, "skip the step"),
        ("check_autocast_dtypes", _dtypes_with(remove=False), "remove"),
        ("check_autocast_dtypes", _dtypes_with(enabled=False), "torch.autocast"),
    ):
        with pytest.raises(checks.CheckFailure, match=words):
            getattr(checks, name)(fn)
