"""Chapter 05 checks: plausible wrong answers are rejected with expected/got/hint, correct alternatives pass."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import checks
from helpers import qat as QAT

# ----------------------------------------------------------------------------- fake_quant_ste


class _ClippedSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s, z, qmin, qmax):
        q = torch.round(x / s) + z
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return (q.clamp(qmin, qmax) - z) * s

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fq_reference(x, s, z, qmin, qmax):
    return _ClippedSTE.apply(x, s, z, qmin, qmax)


def _fq_detach_trick(x, s, z, qmin, qmax):  # correct: the straight-through trick with detach, clipped by a mask
    q = torch.round(x / s) + z
    inside = ((q >= qmin) & (q <= qmax)).to(x.dtype)
    out = (q.clamp(qmin, qmax) - z) * s
    return out.detach() + (x - x.detach()) * inside


def _fq_float64(x, s, z, qmin, qmax):  # correct: the arithmetic in float64, cast back to the input's dtype
    x64 = x.double()
    q = torch.round(x64 / s.double()) + z.double()
    inside = ((q >= qmin) & (q <= qmax)).to(x.dtype)
    value = ((q.clamp(qmin, qmax) - z.double()) * s.double()).to(x.dtype)
    return value.detach() + (x - x.detach()) * inside


def _fq_no_ste(x, s, z, qmin, qmax):  # plain round: zero gradient everywhere
    return (torch.clamp(torch.round(x / s) + z, qmin, qmax) - z) * s


def _fq_unclipped(x, s, z, qmin, qmax):  # STE without the clip
    value = (torch.clamp(torch.round(x / s) + z, qmin, qmax) - z) * s
    return x + (value - x).detach()


def _fq_mask_on_x(x, s, z, qmin, qmax):  # the mask on x/s + z instead of the rounded code
    v = x / s + z
    inside = ((v >= qmin) & (v <= qmax)).to(x.dtype)
    value = (torch.clamp(torch.round(v), qmin, qmax) - z) * s
    return value.detach() + (x - x.detach()) * inside


def _fq_half_away(x, s, z, qmin, qmax):  # floor(v + 0.5): ties away from zero... upward
    q = torch.floor(x / s + 0.5) + z
    inside = ((q >= qmin) & (q <= qmax)).to(x.dtype)
    return ((q.clamp(qmin, qmax) - z) * s).detach() + (x - x.detach()) * inside


def _fq_in_place(x, s, z, qmin, qmax):  # divides the learner's input in place
    with torch.no_grad():
        x.div_(s)
        x.mul_(s)
        x.add_(1e-3)
    return fq_reference(x, s, z, qmin, qmax)


def _fq_no_zero_point(x, s, z, qmin, qmax):  # forgets to subtract the zero point after the clamp
    q = torch.round(x / s) + z
    inside = ((q >= qmin) & (q <= qmax)).to(x.dtype)
    return (q.clamp(qmin, qmax) * s).detach() + (x - x.detach()) * inside


def _fq_numpy(x, s, z, qmin, qmax):  # leaves torch
    return (np.clip(np.round(x.detach().numpy() / s.numpy()) + z.numpy(), qmin, qmax) - z.numpy()) * s.numpy()


FQ_WRONG = [_fq_no_ste, _fq_unclipped, _fq_mask_on_x, _fq_half_away, _fq_in_place, _fq_no_zero_point, _fq_numpy]
FQ_RIGHT = [fq_reference, _fq_detach_trick, _fq_float64, QAT.fake_quant_ste]

# ----------------------------------------------------------------------------- lsq_grads


def lsq_reference(x, s, qmin, qmax, g, grad):
    v = np.asarray(x, dtype=np.float64) / s
    q = np.round(v)
    below, above = q < qmin, q > qmax
    d_s = np.where(below, qmin, np.where(above, qmax, q - v))
    return grad * ~(below | above), float(g * np.sum(grad * d_s))


def _lsq_torch(x, s, qmin, qmax, g, grad):  # correct: autograd through the STE formulation (the helper)
    xt = torch.from_numpy(np.asarray(x, dtype=np.float64)).requires_grad_()
    st = torch.tensor(float(s), dtype=torch.float64, requires_grad=True)
    QAT.lsq_ste_reference(xt, st, 0, qmin, qmax, g).backward(torch.from_numpy(np.asarray(grad, dtype=np.float64)))
    return xt.grad.numpy(), st.grad


def _lsq_loop(x, s, qmin, qmax, g, grad):  # correct: a plain loop
    dx, ds = np.zeros(np.shape(x)), 0.0
    for i in np.ndindex(np.shape(x)):
        v = float(x[i]) / s
        q = round(v)  # Python's round is half to even too
        if q < qmin:
            ds += grad[i] * qmin
        elif q > qmax:
            ds += grad[i] * qmax
        else:
            dx[i] = grad[i]
            ds += grad[i] * (q - v)
    return dx, g * ds


def _lsq_sign_flipped(x, s, qmin, qmax, g, grad):
    dx, ds = lsq_reference(x, s, qmin, qmax, g, grad)
    v = np.asarray(x, dtype=np.float64) / s
    q = np.round(v)
    inside = (q >= qmin) & (q <= qmax)
    return dx, ds - 2 * g * float(np.sum(grad * np.where(inside, q - v, 0.0)))  # v - round(v) inside


def _lsq_no_g(x, s, qmin, qmax, g, grad):
    return lsq_reference(x, s, qmin, qmax, 1.0, grad)


def _lsq_zero_outside(x, s, qmin, qmax, g, grad):
    v = np.asarray(x, dtype=np.float64) / s
    q = np.round(v)
    inside = (q >= qmin) & (q <= qmax)
    return grad * inside, float(g * np.sum(grad * np.where(inside, q - v, 0.0)))


def _lsq_not_summed(x, s, qmin, qmax, g, grad):
    v = np.asarray(x, dtype=np.float64) / s
    q = np.round(v)
    below, above = q < qmin, q > qmax
    return grad * ~(below | above), g * grad * np.where(below, qmin, np.where(above, qmax, q - v))


def _lsq_floor(x, s, qmin, qmax, g, grad):  # rounds half up
    v = np.asarray(x, dtype=np.float64) / s
    q = np.floor(v + 0.5)
    below, above = q < qmin, q > qmax
    return grad * ~(below | above), float(g * np.sum(grad * np.where(below, qmin, np.where(above, qmax, q - v))))


def _lsq_unclipped_dx(x, s, qmin, qmax, g, grad):
    return grad.copy(), lsq_reference(x, s, qmin, qmax, g, grad)[1]


def _lsq_in_place(x, s, qmin, qmax, g, grad):
    grad *= 1.0 + 1e-3
    return lsq_reference(x, s, qmin, qmax, g, grad)


LSQ_WRONG = [_lsq_sign_flipped, _lsq_no_g, _lsq_zero_outside, _lsq_not_summed, _lsq_floor, _lsq_unclipped_dx, _lsq_in_place]
LSQ_RIGHT = [lsq_reference, _lsq_torch, _lsq_loop]

# ----------------------------------------------------------------------------- ternarize


def ternarize_reference(w, factor=0.7):
    a = np.asarray(w, dtype=np.float64).reshape(len(w), -1)
    delta = factor * np.abs(a).mean(1)
    kept = np.abs(a) > delta[:, None]
    count = kept.sum(1)
    alpha = np.where(count > 0, (np.abs(a) * kept).sum(1) / np.maximum(count, 1), 0.0)
    return (np.sign(a) * kept).reshape(np.shape(w)), alpha, delta


def _tern_torch(w, factor=0.7):  # correct: the course helper on a torch tensor
    codes, alpha, delta = QAT.ternarize(torch.from_numpy(np.asarray(w, dtype=np.float64)), factor)
    return codes, alpha, delta


def _tern_loop(w, factor=0.7):  # correct: row by row
    rows = np.asarray(w, dtype=np.float64).reshape(len(w), -1)
    codes, alphas, deltas = np.zeros_like(rows), [], []
    for i, row in enumerate(rows):
        delta = factor * np.mean(np.abs(row))
        keep = np.abs(row) > delta
        codes[i] = np.sign(row) * keep
        alphas.append(np.abs(row[keep]).mean() if keep.any() else 0.0)
        deltas.append(delta)
    return codes.reshape(np.shape(w)), np.array(alphas), np.array(deltas)


def _tern_global(w, factor=0.7):  # one threshold for the whole tensor
    a = np.asarray(w, dtype=np.float64).reshape(len(w), -1)
    delta = np.full(len(a), factor * np.abs(a).mean())
    kept = np.abs(a) > delta[:, None]
    alpha = np.where(kept.any(1), (np.abs(a) * kept).sum(1) / np.maximum(kept.sum(1), 1), 0.0)
    return (np.sign(a) * kept).reshape(np.shape(w)), alpha, delta


def _tern_alpha_all(w, factor=0.7):  # alpha over every weight
    codes, _, delta = ternarize_reference(w, factor)
    return codes, np.abs(np.asarray(w, dtype=np.float64)).reshape(len(w), -1).mean(1), delta


def _tern_ge(w, factor=0.7):  # keeps ties |w| == delta
    a = np.asarray(w, dtype=np.float64).reshape(len(w), -1)
    delta = factor * np.abs(a).mean(1)
    kept = np.abs(a) >= delta[:, None]
    alpha = np.where(kept.any(1), (np.abs(a) * kept).sum(1) / np.maximum(kept.sum(1), 1), 0.0)
    return (np.sign(a) * kept).reshape(np.shape(w)), alpha, delta


def _tern_max(w, factor=0.7):  # threshold from max |w|
    a = np.asarray(w, dtype=np.float64).reshape(len(w), -1)
    delta = factor * np.abs(a).max(1)
    kept = np.abs(a) > delta[:, None]
    alpha = np.where(kept.any(1), (np.abs(a) * kept).sum(1) / np.maximum(kept.sum(1), 1), 0.0)
    return (np.sign(a) * kept).reshape(np.shape(w)), alpha, delta


def _tern_nan(w, factor=0.7):  # divides by the count without a guard
    a = np.asarray(w, dtype=np.float64).reshape(len(w), -1)
    delta = factor * np.abs(a).mean(1)
    kept = np.abs(a) > delta[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = (np.abs(a) * kept).sum(1) / kept.sum(1)
    return (np.sign(a) * kept).reshape(np.shape(w)), alpha, delta


def _tern_signed_alpha(w, factor=0.7):  # mean of the signed kept weights
    a = np.asarray(w, dtype=np.float64).reshape(len(w), -1)
    codes, _, delta = ternarize_reference(w, factor)
    kept = codes.reshape(len(a), -1) != 0
    alpha = np.where(kept.any(1), (a * kept).sum(1) / np.maximum(kept.sum(1), 1), 0.0)
    return codes, alpha, delta


def _tern_in_place(w, factor=0.7):
    out = ternarize_reference(w, factor)
    w[np.abs(w) <= out[2].reshape(-1, *([1] * (w.ndim - 1)))] = 0
    return out


TERN_WRONG = [_tern_global, _tern_alpha_all, _tern_ge, _tern_max, _tern_nan, _tern_signed_alpha, _tern_in_place]
TERN_RIGHT = [ternarize_reference, _tern_torch, _tern_loop]

# ----------------------------------------------------------------------------- qat_step


def qat_step_reference(layer, step, x, y, lr, bits):
    qmax = 2 ** (bits - 1) - 1
    w_hat = QAT.lsq_fake_quant(layer.weight, step, 0, -(2 ** (bits - 1)), qmax, QAT.lsq_grad_scale(layer.in_features, qmax))
    loss = F.cross_entropy(F.linear(x, w_hat, layer.bias), y)
    loss.backward()
    with torch.no_grad():
        for p in (layer.weight, layer.bias, step):
            p -= lr * p.grad
            p.grad = None
    return loss.item()


def _step_optimizer(layer, step, x, y, lr, bits):  # correct: torch.optim.SGD and the autograd (STE) formulation
    qmax = 2 ** (bits - 1) - 1
    optimizer = torch.optim.SGD([layer.weight, layer.bias, step], lr=lr)
    optimizer.zero_grad()
    w_hat = QAT.lsq_ste_reference(layer.weight, step, 0, -(2 ** (bits - 1)), qmax, 1 / np.sqrt(layer.in_features * qmax))
    loss = F.cross_entropy(x @ w_hat.T + layer.bias, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def _step_variant(layer, step, x, y, lr, bits, *, quantize=True, detach=False, g=True, zero=True, update_step=True, after=False):
    qmax = 2 ** (bits - 1) - 1
    w = layer.weight.detach() if detach else layer.weight
    gs = QAT.lsq_grad_scale(layer.in_features, qmax) if g else 1.0
    w_hat = QAT.lsq_fake_quant(w, step, 0, -(2 ** (bits - 1)), qmax, gs) if quantize else w
    loss = F.cross_entropy(F.linear(x, w_hat, layer.bias), y)
    loss.backward()
    with torch.no_grad():
        for p in (layer.weight, layer.bias, step):
            if p.grad is None or (p is step and not update_step):
                continue
            p -= lr * p.grad
            if zero:
                p.grad = None
    if after:
        with torch.no_grad():
            w_new = QAT.lsq_fake_quant(layer.weight, step, 0, -(2 ** (bits - 1)), qmax, gs)
            return F.cross_entropy(F.linear(x, w_new, layer.bias), y).item()
    return loss.item()


STEP_WRONG = [
    lambda *a: _step_variant(*a, quantize=False),  # trains the float weight, no fake quantization
    lambda *a: _step_variant(*a, detach=True),  # detached weight: no gradient reaches it
    lambda *a: _step_variant(*a, g=False),  # LSQ without the gradient scale
    lambda *a: _step_variant(*a, zero=False),  # gradients never cleared: the second step adds to them
    lambda *a: _step_variant(*a, update_step=False),  # the step is not learned
    lambda *a: _step_variant(*a, after=True),  # returns the loss after the update
]
STEP_RIGHT = [qat_step_reference, _step_optimizer]

# ----------------------------------------------------------------------------- allocate_bits


def allocate_reference(sensitivity, cost, budget):
    return QAT.allocate_bits(sensitivity, cost, budget)


def _alloc_dp(sensitivity, cost, budget):  # correct: exhaustive, written differently (sorted by sensitivity then bytes)
    names = list(sensitivity)
    best = None
    for combo in itertools.product(*(sorted(cost[n]) for n in names)):
        total = sum(cost[n][b] for n, b in zip(names, combo))
        if total <= budget:
            key = (sum(sensitivity[n][b] for n, b in zip(names, combo)), total)
            if best is None or key < best[0]:
                best = (key, combo)
    if best is None:
        raise ValueError("budget too small")
    return dict(zip(names, best[1]))


def _alloc_greedy(sensitivity, cost, budget):  # start cheapest, upgrade by best sensitivity drop per byte
    alloc = {n: min(cost[n], key=cost[n].get) for n in cost}
    if sum(cost[n][alloc[n]] for n in alloc) > budget:
        raise ValueError("budget too small")
    while True:
        spent = sum(cost[n][alloc[n]] for n in alloc)
        options = []
        for n in alloc:
            for b in cost[n]:
                extra = cost[n][b] - cost[n][alloc[n]]
                gain = sensitivity[n][alloc[n]] - sensitivity[n][b]
                if extra > 0 and gain > 0 and spent + extra <= budget:
                    options.append((gain / extra, n, b))
        if not options:
            return alloc
        _, n, b = max(options)
        alloc[n] = b


def _alloc_strict(sensitivity, cost, budget):  # < budget instead of <=
    return _alloc_dp(sensitivity, cost, budget - 1e-9)


def _alloc_tie_dearer(sensitivity, cost, budget):  # ties go to the more expensive allocation
    names = list(sensitivity)
    best = None
    for combo in itertools.product(*(list(cost[n]) for n in names)):
        total = sum(cost[n][b] for n, b in zip(names, combo))
        if total <= budget:
            key = (sum(sensitivity[n][b] for n, b in zip(names, combo)), -total)
            if best is None or key < best[0]:
                best = (key, combo)
    if best is None:
        raise ValueError("budget too small")
    return dict(zip(names, best[1]))


def _alloc_list(sensitivity, cost, budget):  # a list of widths, not a dict
    return list(allocate_reference(sensitivity, cost, budget).values())


def _alloc_none(sensitivity, cost, budget):  # returns None when nothing fits
    try:
        return allocate_reference(sensitivity, cost, budget)
    except ValueError:
        return None


ALLOC_WRONG = [_alloc_greedy, _alloc_strict, _alloc_tie_dearer, _alloc_list, _alloc_none]
ALLOC_RIGHT = [allocate_reference, _alloc_dp]

# ----------------------------------------------------------------------------- registration and tests

CHECK_CASES = {
    "check_fake_quant_ste": (fq_reference, FQ_WRONG, None),
    "check_lsq_grads": (lsq_reference, LSQ_WRONG, None),
    "check_ternarize": (ternarize_reference, TERN_WRONG, None),
    "check_qat_step": (qat_step_reference, STEP_WRONG, None),
    "check_allocate_bits": (allocate_reference, ALLOC_WRONG, None),
}
RIGHT = {
    "check_fake_quant_ste": FQ_RIGHT,
    "check_lsq_grads": LSQ_RIGHT,
    "check_ternarize": TERN_RIGHT,
    "check_qat_step": STEP_RIGHT,
    "check_allocate_bits": ALLOC_RIGHT,
}


@pytest.mark.parametrize(("name", "index"), [(n, i) for n in RIGHT for i in range(len(RIGHT[n]))])
def test_correct_alternative_passes(name: str, index: int, capsys: pytest.CaptureFixture) -> None:
    getattr(checks, name)(RIGHT[name][index])
    assert capsys.readouterr().out.startswith(f"PASSED {name}")


@pytest.mark.parametrize(("name", "index"), [(n, i) for n in CHECK_CASES for i in range(len(CHECK_CASES[n][1]))])
def test_wrong_answer_is_rejected_with_a_message(name: str, index: int) -> None:
    with pytest.raises(checks.CheckFailure) as error:
        getattr(checks, name)(CHECK_CASES[name][1][index])
    message = str(error.value)
    assert "expected" in message and "got" in message and "hint" in message, message


def test_hints_name_the_mistake() -> None:
    for check, wrong, words in (
        (checks.check_fake_quant_ste, _fq_no_ste, "zero derivative"),
        (checks.check_fake_quant_ste, _fq_mask_on_x, "rounded code"),
        (checks.check_fake_quant_ste, _fq_in_place, "in place"),
        (checks.check_lsq_grads, _lsq_not_summed, "sum"),
        (checks.check_ternarize, _tern_ge, "strictly"),
        (checks.check_ternarize, _tern_nan, "guard"),
        (checks.check_allocate_bits, _alloc_greedy, "greedy"),
        (checks.check_allocate_bits, _alloc_none, "ValueError"),
    ):
        with pytest.raises(checks.CheckFailure, match=words):
            check(wrong)
