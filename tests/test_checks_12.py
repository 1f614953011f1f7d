"""Chapter 12's lab checks: plausible wrong answers are rejected, correct answers written differently pass."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from helpers import checks
from helpers import llm_compression as L

# ----------------------------------------------------------------------------- group-wise asymmetric quantization


def _np64(a):
    return np.array(a.detach().numpy() if isinstance(a, torch.Tensor) else a, dtype=np.float64)


def group_quantize(w, bits, group_size):  # the reference: the helper, in float64
    codes, scales, zeros = L.quantize_codes(torch.as_tensor(w, dtype=torch.float64), bits, group_size)
    return codes, scales, zeros


def _gq_numpy(w, bits, group_size, rounding=np.round, zero_round=np.round, include_zero=True, along_rows=True, one_scale=False):
    a = np.array(w.detach().numpy() if isinstance(w, torch.Tensor) else w, dtype=np.float64)
    out, cols = a.shape
    if along_rows:
        g = a.reshape(out, cols // group_size, group_size)
    else:  # wrong axis: strided groups (every n_groups-th input)
        g = a.reshape(out, group_size, cols // group_size).transpose(0, 2, 1)
    lo, hi = g.min(axis=2), g.max(axis=2)
    if include_zero:
        lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
    if one_scale:  # one range for the whole row
        lo, hi = np.repeat(lo.min(axis=1, keepdims=True), g.shape[1], 1), np.repeat(hi.max(axis=1, keepdims=True), g.shape[1], 1)
    scales = (hi - lo) / (2**bits - 1)
    scales = np.where(scales > 0, scales, 1.0)
    zeros = zero_round(-lo / scales)
    codes = np.clip(rounding(g / scales[..., None]) + zeros[..., None], 0, 2**bits - 1)
    if not along_rows:
        codes = codes.transpose(0, 2, 1)
    return codes.reshape(out, cols), scales, zeros


def _gq_torch_loop(w, bits, group_size):  # correct: a loop over groups in torch float64
    t = torch.as_tensor(w).detach().double()
    out, cols = t.shape
    codes, scales, zeros = torch.zeros(out, cols), torch.zeros(out, cols // group_size), torch.zeros(out, cols // group_size)
    for k in range(cols // group_size):
        g = t[:, k * group_size : (k + 1) * group_size]
        lo, hi = g.min(1).values.clamp(max=0), g.max(1).values.clamp(min=0)
        s = (hi - lo) / (2**bits - 1)
        s[s == 0] = 1.0
        z = torch.round(-lo / s)
        codes[:, k * group_size : (k + 1) * group_size] = torch.clamp(torch.round(g / s[:, None]) + z[:, None], 0, 2**bits - 1)
        scales[:, k], zeros[:, k] = s, z
    return codes, scales, zeros


def _half_away(x):
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _gq_in_place(w, bits, group_size):  # wrong: normalizes the learner's array in place
    result = _gq_numpy(w, bits, group_size)
    if isinstance(w, torch.Tensor):
        w.sub_(w.min())
    else:
        w -= w.min()
    return result


def _gq_zero_scale(w, bits, group_size):  # wrong: no guard for an all-zero group (0 / 0)
    a = _np64(w)
    out, cols = a.shape
    g = a.reshape(out, -1, group_size)
    lo, hi = np.minimum(g.min(2), 0), np.maximum(g.max(2), 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = (hi - lo) / (2**bits - 1)
        zeros = np.round(-lo / scales)
        codes = np.clip(np.round(g / scales[..., None]) + zeros[..., None], 0, 2**bits - 1)
    return np.nan_to_num(codes).reshape(out, cols), scales, np.nan_to_num(zeros)


GQ_WRONG = [
    lambda w, b, g: _gq_numpy(w, b, g, rounding=np.floor),  # floor instead of round
    lambda w, b, g: _gq_numpy(w, b, g, rounding=_half_away),  # round half away from zero
    lambda w, b, g: _gq_numpy(w, b, g, zero_round=np.trunc),  # truncated zero point
    lambda w, b, g: _gq_numpy(w, b, g, include_zero=False),  # range not widened to include 0
    lambda w, b, g: _gq_numpy(w, b, g, along_rows=False),  # strided groups (wrong axis)
    lambda w, b, g: _gq_numpy(w, b, g, one_scale=True),  # one range per row
    lambda w, b, g: (lambda c, s, z: (c, s, -z))(*_gq_numpy(w, b, g)),  # zero point with the wrong sign
    _gq_in_place,
    _gq_zero_scale,
]
GQ_RIGHT = [group_quantize, _gq_numpy, _gq_torch_loop]

# ----------------------------------------------------------------------------- one GPTQ column update


def gptq_update(W, U, j, q):  # the reference: the helper
    return L.gptq_step(torch.as_tensor(W), torch.as_tensor(U), j, torch.as_tensor(q))


def _gptq_numpy(W, U, j, q):  # correct: numpy, a loop over the later columns
    W, U, q = _np64(W), _np64(U), _np64(q)
    err = (W[:, j] - q) / U[j, j]
    W[:, j] = q
    for k in range(j + 1, W.shape[1]):
        W[:, k] -= err * U[j, k]
    return W


def _gptq_generic(W, U, j, q, divide=True, square=False, sign=1.0, column=False, set_q=True, only_next=False):
    W, U, q = _np64(W), _np64(U), _np64(q)
    d = U[j, j] ** 2 if square else U[j, j]
    err = (W[:, j] - q) / d if divide else W[:, j] - q
    row = U[j + 1 :, j] if column else U[j, j + 1 :]
    if only_next:
        row = row[:1]
    W[:, j + 1 : j + 1 + len(row)] -= sign * np.outer(err, row)
    if set_q:
        W[:, j] = q
    return W


def _gptq_in_place(W, U, j, q):  # wrong: updates the learner's W in place
    result = _gptq_numpy(W, U, j, q)
    if isinstance(W, torch.Tensor):
        W.copy_(torch.as_tensor(result))
    else:
        W[...] = result
    return result


GPTQ_WRONG = [
    lambda W, U, j, q: _gptq_generic(W, U, j, q, divide=False),  # no division by U[j, j]
    lambda W, U, j, q: _gptq_generic(W, U, j, q, square=True),  # divides by U[j, j]^2 (the H^-1 diagonal)
    lambda W, U, j, q: _gptq_generic(W, U, j, q, sign=-1.0),  # adds the correction
    lambda W, U, j, q: _gptq_generic(W, U, j, q, column=True),  # column of U (zero below the diagonal of an upper factor)
    lambda W, U, j, q: _gptq_generic(W, U, j, q, set_q=False),  # forgets to set column j
    lambda W, U, j, q: _gptq_generic(W, U, j, q, only_next=True),  # corrects only the neighbouring column j + 1
    _gptq_in_place,
]
GPTQ_RIGHT = [gptq_update, _gptq_numpy]

# ----------------------------------------------------------------------------- AWQ scale search


def awq_search(w, x, bits, group_size, alphas):  # the reference
    w64 = torch.as_tensor(w).double()
    x64 = torch.as_tensor(x).double()
    mean = x64.abs().mean(0)
    best = None
    for a in alphas:
        s = L.awq_scales(mean, a)
        err = L.output_error(w64, L.awq_quantize(w64, s, bits, group_size), x64)
        if best is None or err < best[0]:
            best = (err, a, s)
    return best[1], best[2]


def _awq_numpy(w, x, bits, group_size, alphas, stat="mean", normalize=True, score="output", pick=np.argmin, fold_back=True):
    w = np.asarray(w.detach().numpy() if isinstance(w, torch.Tensor) else w, dtype=np.float64)
    x = np.asarray(x.detach().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    channel = {"mean": np.abs(x).mean(0), "max": np.abs(x).max(0), "signed": np.abs(x.mean(0))}[stat]
    errors, scales = [], []
    for a in alphas:
        s = np.maximum(channel, 1e-8) ** a
        if normalize:
            s = s / np.sqrt(s.max() * s.min())
        w_hat = L.quantize_rtn(torch.tensor(w * s), bits, group_size).numpy()
        if fold_back:
            w_hat = w_hat / s
        errors.append(((x @ (w - w_hat).T) ** 2).mean() if score == "output" else ((w - w_hat) ** 2).mean())
        scales.append(s)
    best = int(pick(errors))
    return alphas[best], scales[best]


AWQ_WRONG = [
    lambda w, x, b, g, al: _awq_numpy(w, x, b, g, al, stat="max"),  # max |x| instead of the mean
    lambda w, x, b, g, al: _awq_numpy(w, x, b, g, al, normalize=False),  # scales not normalized
    lambda w, x, b, g, al: _awq_numpy(w, x, b, g, al, score="weight"),  # scores the weight error, not the output error
    lambda w, x, b, g, al: _awq_numpy(w, x, b, g, al, pick=np.argmax),  # keeps the worst alpha
    lambda w, x, b, g, al: _awq_numpy(w, x, b, g, al, fold_back=False),  # forgets to divide by s
    lambda w, x, b, g, al: _awq_numpy(w, x, b, g, al, stat="signed"),  # |mean x| instead of mean |x|
]
AWQ_RIGHT = [awq_search, lambda w, x, b, g, al: _awq_numpy(w, x, b, g, al)]

# ----------------------------------------------------------------------------- Wanda


def wanda_mask(w, x, sparsity):  # the reference: the helpers
    w64 = torch.as_tensor(w).double()
    return L.keep_per_row(L.wanda_scores(w64, torch.as_tensor(x).double()), sparsity)


def _wanda_numpy(w, x, sparsity, norm="l2", per_row=True, kind="stable", descending=False):
    w = np.asarray(w.detach().numpy() if isinstance(w, torch.Tensor) else w, dtype=np.float64)
    x = np.asarray(x.detach().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    channel = {"l2": np.sqrt((x**2).sum(0)), "sq": (x**2).sum(0), "mean": np.abs(x).mean(0), "none": np.ones(x.shape[1]), "tokens": None}[
        norm
    ]
    if channel is None:  # norm over the channels of each token: wrong axis, broadcast by truncation
        channel = np.sqrt((x**2).sum(1))[: x.shape[1]]
    scores = np.abs(w) * channel[None, :]
    if descending:
        scores = -scores
    k = int(sparsity * w.shape[1])
    keep = np.ones(w.shape, dtype=bool)
    if per_row:
        order = np.argsort(scores, axis=1, kind=kind)[:, :k]
        np.put_along_axis(keep, order, False, axis=1)
    else:
        flat = np.argsort(scores.ravel(), kind=kind)[: k * w.shape[0]]
        keep.ravel()[flat] = False
    return keep


def _wanda_torch(w, x, sparsity):  # correct: torch, float32 is fine (stable sort on ties)
    w, x = torch.as_tensor(w).float(), torch.as_tensor(x).float()
    scores = w.abs() * x.norm(p=2, dim=0)
    k = int(sparsity * w.shape[1])
    idx = torch.sort(scores, dim=1, stable=True).indices[:, :k]
    return torch.ones_like(w, dtype=torch.bool).scatter(1, idx, False)


def _wanda_unstable(w, x, sparsity):  # wrong: ties broken from the highest index
    scores = np.abs(np.asarray(w, dtype=np.float64)) * np.sqrt((np.asarray(x, dtype=np.float64) ** 2).sum(0))
    k = int(sparsity * scores.shape[1])
    keep = np.ones(scores.shape, dtype=bool)
    for r in range(scores.shape[0]):
        order = np.lexsort((-np.arange(scores.shape[1]), scores[r]))[:k]
        keep[r, order] = False
    return keep


WANDA_WRONG = [
    lambda w, x, s: _wanda_numpy(w, x, s, norm="sq"),  # squared norm
    lambda w, x, s: _wanda_numpy(w, x, s, norm="mean"),  # mean |x| instead of the L2 norm
    lambda w, x, s: _wanda_numpy(w, x, s, norm="none"),  # magnitude only
    lambda w, x, s: _wanda_numpy(w, x, s, per_row=False),  # compared over the whole layer
    lambda w, x, s: _wanda_numpy(w, x, s, descending=True),  # removes the largest
    _wanda_unstable,
    lambda w, x, s: _wanda_numpy(w, x, s).astype(np.int64),  # 0/1 integers, not a boolean mask
]
WANDA_RIGHT = [wanda_mask, _wanda_numpy, _wanda_torch]

CHECK_CASES = {
    "check_group_quantize": (group_quantize, GQ_WRONG, None),
    "check_gptq_update": (gptq_update, GPTQ_WRONG, None),
    "check_awq_search": (awq_search, AWQ_WRONG, None),
    "check_wanda_mask": (wanda_mask, WANDA_WRONG, None),
}
RIGHT: dict[str, list[Callable]] = {
    "check_group_quantize": GQ_RIGHT,
    "check_gptq_update": GPTQ_RIGHT,
    "check_awq_search": AWQ_RIGHT,
    "check_wanda_mask": WANDA_RIGHT,
}


@pytest.mark.parametrize(("name", "index"), [(n, i) for n in RIGHT for i in range(len(RIGHT[n]))])
def test_correct_alternative_passes(name: str, index: int, capsys: pytest.CaptureFixture) -> None:
    getattr(checks, name)(RIGHT[name][index])
    assert capsys.readouterr().out.startswith(f"PASSED {name}")


def test_in_place_mutation_is_named() -> None:
    for name, fn in (("check_group_quantize", _gq_in_place), ("check_gptq_update", _gptq_in_place)):
        with pytest.raises(checks.CheckFailure, match="in place"):
            getattr(checks, name)(fn)


def test_half_away_rounding_is_caught_on_the_exact_ties() -> None:
    with pytest.raises(checks.CheckFailure, match="ties|half to even"):
        checks.check_group_quantize(lambda w, b, g: _gq_numpy(w, b, g, rounding=_half_away, zero_round=_half_away))
