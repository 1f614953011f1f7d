"""Chapter 07's checks reject the wrong answers learners really write and accept correct ones written differently."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import checks
from helpers import distillation as KD

# ----------------------------------------------------------------------------- numpy: softmax_t, kd_loss, kd_grad


def _softmax_inplace(z, T):
    z /= T  # writes into the learner's (and the caller's) array
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    return z / z.sum(axis=-1, keepdims=True)


def _softmax_global_max(z, T):
    z = z / T - (z / T).max()  # one max for the whole batch: rows far below it underflow to 0/0
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_times_t(z, T):
    z = z * T
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_sum_all(z, T):
    e = np.exp(z / T - (z / T).max(axis=-1, keepdims=True))
    return e / e.sum()  # normalised over the whole batch


def _softmax_axis0(z, T):
    e = np.exp(z / T - (z / T).max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def _softmax_no_keepdims(z, T):
    z = z / T
    e = np.exp(z - z.max(axis=-1)[:, None])
    return e / e.sum(axis=-1)  # broadcasts against the wrong axis (or fails)


def _softmax_float32(z, T):
    z = np.asarray(z, dtype=np.float32) / np.float32(T)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_torch(z, T):
    return torch.softmax(torch.from_numpy(z) / T, dim=-1)


def _softmax_logsumexp(z, T):
    z = z / T
    m = z.max(axis=-1, keepdims=True)
    return np.exp(z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))


def _softmax_loop(z, T):
    out = np.empty_like(z, dtype=np.float64)
    for b, row in enumerate(z):
        e = np.exp((row - row.max()) / T)
        out[b] = e / e.sum()
    return out


def _log_softmax(z, T):
    z = z / T
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _kd_inplace(s, t, T):
    s /= T
    t /= T
    return float(np.mean(np.sum(np.exp(_log_softmax(t, 1)) * (_log_softmax(t, 1) - _log_softmax(s, 1)), -1)) * T * T)


def _kd_naive_log(s, t, T):
    p, q = np.exp(t / T) / np.exp(t / T).sum(-1, keepdims=True), np.exp(s / T) / np.exp(s / T).sum(-1, keepdims=True)
    return float(T * T * (p * (np.log(p) - np.log(q))).sum(-1).mean())  # overflows / 0 * log 0 near 1000


def _kd_log_of_stable_softmax(s, t, T):  # wrong: a stable softmax, then np.log: a probability that underflows to 0 gives -inf
    p, q = KD.softmax_t(t, T), KD.softmax_t(s, T)
    return float(T * T * (p * (np.log(p) - np.log(q))).sum(-1).mean())


def _kd_log_clipped(s, t, T):  # wrong: np.log(softmax + 1e-12) hides the -inf but caps log q at -27.6 instead of -2000
    p, q = KD.softmax_t(t, T), KD.softmax_t(s, T)
    return float(T * T * (p * (np.log(p + 1e-12) - np.log(q + 1e-12))).sum(-1).mean())


def _kd_scipy_style_rel_entr(s, t, T):  # wrong: sum of p * log(p / q) on stable softmaxes: p / 0 = inf
    p, q = KD.softmax_t(t, T), KD.softmax_t(s, T)
    with np.errstate(divide="ignore"):
        return float(T * T * (p * np.log(p / q)).sum(-1).mean())


def _kd_logsumexp_by_hand(s, t, T):  # correct: log q = z - max - log(sum(exp(z - max))), per row, via np.logaddexp.reduce
    zs, zt = s / T, t / T
    lq = zs - np.logaddexp.reduce(zs, axis=-1, keepdims=True)
    lp = zt - np.logaddexp.reduce(zt, axis=-1, keepdims=True)
    return float(T * T * np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))


def _kd_swapped(s, t, T):
    lp, lq = _log_softmax(t, T), _log_softmax(s, T)
    return float(T * T * (np.exp(lq) * (lq - lp)).sum(-1).mean())


def _kd_no_t2(s, t, T):
    lp, lq = _log_softmax(t, T), _log_softmax(s, T)
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


def _kd_elementwise_mean(s, t, T):  # F.kl_div(reduction="mean"): divides by batch * classes
    lp, lq = _log_softmax(t, T), _log_softmax(s, T)
    return float(T * T * (np.exp(lp) * (lp - lq)).mean())


def _kd_batch_sum(s, t, T):
    lp, lq = _log_softmax(t, T), _log_softmax(s, T)
    return float(T * T * (np.exp(lp) * (lp - lq)).sum())


def _kd_cross_entropy_only(s, t, T):  # drops the teacher's entropy: not the KL
    lp, lq = _log_softmax(t, T), _log_softmax(s, T)
    return float(T * T * (-np.exp(lp) * lq).sum(-1).mean())


def _kd_student_unsoftened(s, t, T):
    lp, lq = _log_softmax(t, T), _log_softmax(s, 1.0)
    return float(T * T * (np.exp(lp) * (lp - lq)).sum(-1).mean())


def _kd_log2(s, t, T):
    lp, lq = _log_softmax(t, T), _log_softmax(s, T)
    return float(T * T * (np.exp(lp) * (lp - lq)).sum(-1).mean() / np.log(2))


def _kd_float32(s, t, T):
    s, t = s.astype(np.float32), t.astype(np.float32)
    lp, lq = _log_softmax(t, np.float32(T)), _log_softmax(s, np.float32(T))
    return float(np.float32(T * T) * (np.exp(lp) * (lp - lq)).sum(-1).mean())


def _kd_torch_kl_div(s, t, T):
    log_q = F.log_softmax(torch.from_numpy(s) / T, dim=-1)
    log_p = F.log_softmax(torch.from_numpy(t) / T, dim=-1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * T * T  # a 0-dim tensor


def _kd_torch_float32(s, t, T):
    return _kd_torch_kl_div(s.astype(np.float32), t.astype(np.float32), T).item()


def _kd_entropy_form(s, t, T):  # cross-entropy minus entropy, written as two sums
    lp, lq = _log_softmax(t, T), _log_softmax(s, T)
    p = np.exp(lp)
    return T**2 * ((-(p * lq).sum(-1)) - (-(p * lp).sum(-1))).mean()  # a numpy float64


def _grad_inplace(s, t, T):
    s /= T
    t /= T
    return T * (KD.softmax_t(s, 1.0) - KD.softmax_t(t, 1.0)) / len(s)


WRONG_GRADS: list[Callable] = [
    lambda s, t, T: KD.kd_grad(s, t, T) / T,  # forgot T
    lambda s, t, T: KD.kd_grad(s, t, T) * T,  # T^2 instead of T
    lambda s, t, T: -KD.kd_grad(s, t, T),  # p - q
    lambda s, t, T: KD.kd_grad(s, t, T) * len(s),  # no batch mean
    lambda s, t, T: T * (KD.softmax_t(s, 1.0) - KD.softmax_t(t, 1.0)) / len(s),  # probabilities at T = 1
    lambda s, t, T: T * (KD.softmax_t(s, T) - KD.softmax_t(t, T)),  # batch size forgotten, via broadcasting shape
    lambda s, t, T: (T * (KD.softmax_t(s, T) - KD.softmax_t(t, T)) / len(s)).sum(-1),  # summed over classes: wrong shape
    lambda s, t, T: T * (_softmax_naive(s, T) - _softmax_naive(t, T)) / len(s),  # overflows near 1000
    _grad_inplace,
]


def _softmax_naive(z, T):
    e = np.exp(z / T)
    return e / e.sum(-1, keepdims=True)


def _grad_float32(s, t, T):
    s, t = s.astype(np.float32), t.astype(np.float32)
    return np.float32(T) * (_softmax_float32(s, T) - _softmax_float32(t, T)) / np.float32(len(s))


def _grad_torch_autograd(s, t, T):
    st = torch.tensor(s, requires_grad=True)
    KD.kd_loss(st, torch.tensor(t), T).backward()
    return st.grad  # a torch tensor


WRONG_SOFTMAX = [
    _softmax_inplace,
    _softmax_global_max,
    _softmax_times_t,
    _softmax_sum_all,
    _softmax_axis0,
    _softmax_no_keepdims,
    _softmax_naive,
]
RIGHT_SOFTMAX = [KD.softmax_t, _softmax_float32, _softmax_torch, _softmax_logsumexp, _softmax_loop]
WRONG_KD = [
    _kd_inplace,
    _kd_naive_log,
    _kd_swapped,
    _kd_no_t2,
    _kd_elementwise_mean,
    _kd_batch_sum,
    _kd_cross_entropy_only,
    _kd_student_unsoftened,
    _kd_log2,
    _kd_log_of_stable_softmax,
    _kd_log_clipped,
    _kd_scipy_style_rel_entr,
]
RIGHT_KD = [KD.kd_loss, _kd_float32, _kd_torch_kl_div, _kd_torch_float32, _kd_entropy_form, _kd_logsumexp_by_hand]
RIGHT_GRADS = [KD.kd_grad, _grad_float32, _grad_torch_autograd]

# ----------------------------------------------------------------------------- torch: step, hint, attention


def _step(student, optimizer, x, y, t, T, alpha):
    loss = KD.distillation_loss(student(x), t, y, T, alpha)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def _step_with(loss_fn):
    def step(student, optimizer, x, y, t, T, alpha):
        loss = loss_fn(student(x), t, y, T, alpha)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def _step_no_zero_grad(student, optimizer, x, y, t, T, alpha):
    loss = KD.distillation_loss(student(x), t, y, T, alpha)
    loss.backward()
    optimizer.step()
    return loss.item()


def _step_loss_after(student, optimizer, x, y, t, T, alpha):
    _step(student, optimizer, x, y, t, T, alpha)
    return KD.distillation_loss(student(x), t, y, T, alpha).item()  # the loss after the step


def _step_no_step(student, optimizer, x, y, t, T, alpha):
    loss = KD.distillation_loss(student(x), t, y, T, alpha)
    optimizer.zero_grad()
    loss.backward()
    return loss.item()


def _step_detached_soft(student, optimizer, x, y, t, T, alpha):
    logits = student(x)
    loss = alpha * KD.kd_loss(logits.detach(), t, T) + (1 - alpha) * F.cross_entropy(logits, y)  # no gradient from the soft part
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def _step_teacher_inplace(student, optimizer, x, y, t, T, alpha):
    t /= T  # softens the caller's teacher logits in place
    logits = student(x)
    log_p, log_q = F.log_softmax(t, -1), F.log_softmax(logits / T, -1)
    loss = alpha * T * T * (log_p.exp() * (log_p - log_q)).sum(-1).mean() + (1 - alpha) * F.cross_entropy(logits, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


WRONG_STEPS = [
    _step_no_zero_grad,
    lambda s, o, x, y, t, T, a: _step(s, o, x, y, t, T, 1 - a),  # alpha on the labels
    _step_loss_after,
    _step_no_step,
    _step_detached_soft,
    _step_teacher_inplace,
    _step_with(
        lambda s, t, y, T, a: (
            a * F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") + (1 - a) * F.cross_entropy(s, y)
        )
    ),  # no T^2
    _step_with(
        lambda s, t, y, T, a: (
            a * T * T * F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="mean") + (1 - a) * F.cross_entropy(s, y)
        )
    ),
    _step_with(lambda s, t, y, T, a: a * KD.kd_loss(s, t, T) + (1 - a) * F.cross_entropy(s / T, y)),  # labels on softened logits
    _step_with(
        lambda s, t, y, T, a: (
            a * T * T * F.kl_div(F.log_softmax(t / T, -1), F.softmax(s / T, -1), reduction="batchmean") + (1 - a) * F.cross_entropy(s, y)
        )
    ),
]
RIGHT_STEPS = [
    _step,
    _step_with(
        lambda s, t, y, T, a: (
            a * T * T * F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="batchmean", log_target=True)
            + (1 - a) * F.cross_entropy(s, y)
        )
    ),
    lambda s, o, x, y, t, T, a: (lambda loss: (o.zero_grad(set_to_none=False), loss.backward(), o.step(), loss)[-1])(
        KD.distillation_loss(s(x), t, y, T, a)
    ),  # returns the 0-dim tensor, not a float
]


WRONG_HINTS = [
    lambda fs, ft, r: F.mse_loss(r(fs), ft),  # teacher not detached
    lambda fs, ft, r: (r(fs) - ft.detach()).pow(2).sum(),  # sum
    lambda fs, ft, r: (r(fs) - ft.detach()).abs().mean(),  # L1
    lambda fs, ft, r: F.mse_loss(r(fs.detach()), ft.detach()),  # student detached: only the regressor learns
    lambda fs, ft, r: F.mse_loss(r(fs), ft.detach()).detach(),  # no gradient at all
    lambda fs, ft, r: 0.5 * F.mse_loss(r(fs), ft.detach()),  # FitNets' 1/2 ||.||^2, not the documented mean
    lambda fs, ft, r: (r(fs) - ft.detach()).pow(2).sum((1, 2, 3)).mean(),  # per-example sum
    lambda fs, ft, r: F.mse_loss(F.normalize(r(fs).flatten(1), dim=1), F.normalize(ft.detach().flatten(1), dim=1)),  # normalised
    lambda fs, ft, r: F.mse_loss(r(fs), ft.detach(), reduction="none").mean((1, 2, 3)),  # per-example vector, not a scalar
]
RIGHT_HINTS = [
    KD.hint_loss,
    lambda fs, ft, r: F.mse_loss(r(fs).double(), ft.detach().double()),  # float64
    lambda fs, ft, r: torch.mean(torch.square(r(fs) - ft.detach())),
    lambda fs, ft, r: (
        ((torch.einsum("oc,nchw->nohw", r.proj.weight[:, :, 0, 0], fs) + r.proj.bias[:, None, None]) - ft.detach()).pow(2).mean()
    ),
    lambda fs, ft, r: (r(fs) - ft.detach()).pow(2).sum() / ft.numel(),
]


def _att_no_eps(f, p=2):
    maps = f.abs().pow(p).sum(1).flatten(1)
    return maps / maps.norm(dim=1, keepdim=True)


def _att_inplace(f, p=2):
    f.abs_()  # overwrites the learner's input
    return F.normalize(f.pow(p).sum(1).flatten(1), dim=1)


WRONG_ATTENTION = [
    lambda f, p=2: f.abs().pow(p).sum(1).flatten(1),  # not normalised
    lambda f, p=2: KD.attention_map(f, 1),  # ignores p
    lambda f, p=2: F.normalize(f.abs().pow(p).sum(1).flatten(1), dim=0),  # normalised over the batch
    _att_no_eps,  # NaN on an all-zero example
    lambda f, p=2: F.normalize(f.detach().abs().pow(p).sum(1).flatten(1), dim=1),  # detached: no gradient to the student
    _att_inplace,
    lambda f, p=2: F.normalize(f.pow(p).sum(1).flatten(1), dim=1),  # no abs: wrong for odd p
    lambda f, p=2: (lambda m: m / m.max(dim=1, keepdim=True).values.clamp_min(1e-12))(f.abs().pow(p).sum(1).flatten(1)),  # max-normalised
    lambda f, p=2: F.normalize(f.abs().pow(p).sum(1).flatten(1), p=1, dim=1),  # L1 norm
    lambda f, p=2: F.normalize(f.abs().pow(p).sum(1), dim=1),  # not flattened: (N, H, W)
    lambda f, p=2: F.normalize(f.abs().pow(p).sum(1).flatten(1), dim=1).detach().numpy(),  # numpy
    # sqrt of a sum at an all-zero example: right values, NaN gradient (would poison training)
    lambda f, p=2: (lambda m: m / m.pow(2).sum(1, keepdim=True).sqrt().clamp_min(1e-12))(f.abs().pow(p).sum(1).view(f.shape[0], -1)),
]
RIGHT_ATTENTION = [
    KD.attention_map,
    lambda f, p=2: F.normalize(f.double().abs().pow(p).mean(1).flatten(1), dim=1),  # float64, mean over channels (scale cancels)
    lambda f, p=2: (lambda m: m / (m.norm(dim=1, keepdim=True) + 1e-12))(torch.einsum("nchw->nhw", f.abs() ** p).reshape(len(f), -1)),
]

CASES = {
    "check_softmax_t": (WRONG_SOFTMAX, RIGHT_SOFTMAX),
    "check_kd_loss": (WRONG_KD, RIGHT_KD),
    "check_kd_grad": (WRONG_GRADS, RIGHT_GRADS),
    "check_distillation_step": (WRONG_STEPS, RIGHT_STEPS),
    "check_hint_loss": (WRONG_HINTS, RIGHT_HINTS),
    "check_attention_map": (WRONG_ATTENTION, RIGHT_ATTENTION),
}


@pytest.mark.parametrize(("name", "index"), [(n, i) for n in CASES for i in range(len(CASES[n][0]))])
def test_chapter07_check_rejects_a_wrong_answer(name: str, index: int) -> None:
    with pytest.raises(checks.CheckFailure) as caught:
        getattr(checks, name)(CASES[name][0][index])
    message = str(caught.value)
    assert ("expected" in message and "got" in message and "hint" in message) or "your function raised" in message, message


@pytest.mark.parametrize(("name", "index"), [(n, i) for n in CASES for i in range(len(CASES[n][1]))])
def test_chapter07_check_accepts_a_correct_alternative(name: str, index: int, capsys: pytest.CaptureFixture) -> None:
    getattr(checks, name)(CASES[name][1][index])
    assert capsys.readouterr().out.startswith(f"PASSED {name}")


def test_kd_loss_hints_name_the_mistake() -> None:
    for wrong, words in (
        (_kd_no_t2, r"T\*\*2"),
        (_kd_swapped, "wrong way round"),
        (_kd_batch_sum, "do not sum"),
        (_kd_elementwise_mean, "batchmean"),
    ):
        with pytest.raises(checks.CheckFailure, match=words):
            checks.check_kd_loss(wrong)


def test_kd_loss_rejects_log_of_softmax_on_an_underflowing_student(capsys: pytest.CaptureFixture) -> None:
    """student [[1000, -1000, 0]]: q_1 = exp(-2000) underflows to 0, so np.log(softmax) is -inf; log-sum-exp gives 1153.87."""
    s, t = np.array([[1000.0, -1000.0, 0.0]]), np.array([[0.0, 1.0, 2.0]])
    assert np.isclose(KD.kd_loss(s, t, 1.0), 1153.8655, rtol=1e-6)
    with np.errstate(all="ignore"):
        assert not np.isfinite(_kd_log_of_stable_softmax(s, t, 1.0))
    with pytest.raises(checks.CheckFailure, match="not np.log"):
        checks.check_kd_loss(_kd_log_of_stable_softmax)
    checks.check_kd_loss(KD.kd_loss)  # and the PASSED line's claim about underflow is now backed by that case
    assert "underflows to 0" in capsys.readouterr().out


def test_mutation_and_eps_hints() -> None:
    with pytest.raises(checks.CheckFailure, match="in place"):
        checks.check_softmax_t(_softmax_inplace)
    with pytest.raises(checks.CheckFailure, match="clamp_min"):
        checks.check_attention_map(_att_no_eps)
    with pytest.raises(checks.CheckFailure, match="detach"):
        checks.check_hint_loss(WRONG_HINTS[3])
    with pytest.raises(checks.CheckFailure, match="gradient of sqrt"):
        checks.check_attention_map(WRONG_ATTENTION[-1])


# ----------------------------------------------------------------------------- the lab's new exercises: ensemble, mixed loss, its gradient,
# pooled attention (exercises 1-3 and 6 apply the lecture's ideas somewhere new)


def _ens_average_logits(zs, T):
    return KD.softmax_t(np.mean(zs, axis=0), T)  # product of experts: the confident teacher dominates


def _ens_geometric(zs, T):
    log_p = np.mean([KD.log_softmax_t(z, T) for z in zs], axis=0)
    e = np.exp(log_p - log_p.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _ens_inplace(zs, T):
    out = []
    for z in zs:
        z /= T  # softens the caller's logits in place
        z -= z.max(-1, keepdims=True)
        out.append(np.exp(z) / np.exp(z).sum(-1, keepdims=True))
    return np.mean(out, axis=0)


def _ens_global_max(zs, T):
    stack = np.stack(zs) / T
    e = np.exp(stack - stack.max())  # one max for all teachers and rows: the -1000 teacher underflows to 0/0
    return (e / e.sum(-1, keepdims=True)).mean(0)


def _ens_float32(zs, T):
    return np.mean([_softmax_float32(z, T) for z in zs], axis=0)


def _ens_torch(zs, T):
    return torch.stack([torch.softmax(torch.from_numpy(z) / T, dim=-1) for z in zs]).mean(0)


def _ens_loop(zs, T):
    total = np.zeros_like(zs[0], dtype=np.float64)
    for z in zs:
        total = total + _softmax_loop(z, T)
    return total / len(zs)


WRONG_ENSEMBLE = [
    _ens_average_logits,
    _ens_geometric,
    lambda zs, T: np.sum([KD.softmax_t(z, T) for z in zs], axis=0),  # sum, not mean
    lambda zs, T: KD.softmax_t(zs[0], T),  # only the first teacher
    lambda zs, T: np.mean([KD.softmax_t(z, 1.0) for z in zs], axis=0),  # T ignored
    _ens_inplace,
    _ens_global_max,
    lambda zs, T: np.mean([_softmax_naive(z, T) for z in zs], axis=0),  # overflows near 1000
    lambda zs, T: np.mean(np.stack([KD.softmax_t(z, T) for z in zs]), axis=1),  # mean over the batch, not over the teachers
]
RIGHT_ENSEMBLE = [KD.ensemble_soft_targets, _ens_float32, _ens_torch, _ens_loop]


def _xlogy(p):
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)


def _mixed(s, p, y, T, alpha, kl=None, ce=None, t2=True):
    lq, lq1 = _log_softmax(s, T), _log_softmax(s, 1.0)
    kl = (_xlogy(p) - p * lq).sum(-1).mean() if kl is None else kl
    ce = -lq1[np.arange(len(y)), y].mean() if ce is None else ce
    return float(alpha * (T * T if t2 else 1.0) * kl + (1 - alpha) * ce)


def _loss_nan_on_zeros(s, p, y, T, alpha):
    lq = _log_softmax(s, T)
    with np.errstate(all="ignore"):
        kl = (p * (np.log(p) - lq)).sum(-1).mean()  # 0 * log 0 = NaN
    return _mixed(s, p, y, T, alpha, kl=kl)


def _loss_inplace(s, p, y, T, alpha):
    s /= T  # overwrites the student's logits, then uses them "at T = 1"
    lq = _log_softmax(s, 1.0)
    kl = (_xlogy(p) - p * lq).sum(-1).mean()
    ce = -_log_softmax(s * T, 1.0)[np.arange(len(y)), y].mean()
    return float(alpha * T * T * kl + (1 - alpha) * ce)


def _loss_float32(s, p, y, T, alpha):
    s32, p32 = s.astype(np.float32), p.astype(np.float32)
    lq, lq1 = _log_softmax(s32, np.float32(T)), _log_softmax(s32, np.float32(1.0))
    kl = (_xlogy(p32) - p32 * lq).sum(-1).mean()
    return float(np.float32(alpha * T * T) * kl + np.float32(1 - alpha) * -lq1[np.arange(len(y)), y].mean())


def _loss_torch(s, p, y, T, alpha):
    st = torch.from_numpy(s)
    soft = F.kl_div(F.log_softmax(st / T, -1), torch.from_numpy(p), reduction="batchmean")  # xlogy inside: 0 log 0 = 0
    return alpha * T * T * soft + (1 - alpha) * F.cross_entropy(st, torch.from_numpy(y))  # a 0-dim tensor


def _loss_onehot_loop(s, p, y, T, alpha):
    total = 0.0
    for b in range(len(s)):
        lq, lq1 = _log_softmax(s[b : b + 1], T)[0], _log_softmax(s[b : b + 1], 1.0)[0]
        kl = sum(p[b, i] * (np.log(p[b, i]) - lq[i]) for i in range(s.shape[1]) if p[b, i] > 0)
        total += alpha * T * T * kl - (1 - alpha) * (np.eye(s.shape[1])[y[b]] * lq1).sum()
    return total / len(s)


def _loss_eps(s, p, y, T, alpha):  # p log(p + eps): a correct answer within tolerance
    lq = _log_softmax(s, T)
    return _mixed(s, p, y, T, alpha, kl=(p * (np.log(p + 1e-12) - lq)).sum(-1).mean())


def _loss_log_of_softmax(s, p, y, T, alpha):  # wrong: np.log of a stable softmax is -inf where the softmax underflows
    with np.errstate(divide="ignore"):
        lq, lq1 = np.log(KD.softmax_t(s, T)), np.log(KD.softmax_t(s, 1.0))
    return _mixed(s, p, y, T, alpha, kl=(_xlogy(p) - np.where(p > 0, p * lq, 0.0)).sum(-1).mean(), ce=-lq1[np.arange(len(y)), y].mean())


WRONG_SOFT_LOSS = [
    lambda s, p, y, T, a: _mixed(s, p, y, T, 1 - a),  # alpha on the labels
    lambda s, p, y, T, a: _mixed(s, p, y, T, a, t2=False),  # no T^2
    lambda s, p, y, T, a: _mixed(s, p, y, T, a, ce=-_log_softmax(s, T)[np.arange(len(y)), y].mean()),  # CE on s / T
    _loss_nan_on_zeros,
    lambda s, p, y, T, a: _mixed(s, p, y, T, a, kl=(-p * _log_softmax(s, T)).sum(-1).mean()),  # cross-entropy to p, not KL
    lambda s, p, y, T, a: _mixed(s, p, y, T, a, ce=-_log_softmax(s, 1.0)[:, y].mean()),  # [:, y]: a (B, B) block
    lambda s, p, y, T, a: _mixed(s, p, y, T, a, kl=(_xlogy(p) - p * _log_softmax(s, T)).mean()),  # elementwise mean
    lambda s, p, y, T, a: len(s) * _mixed(s, p, y, T, a),  # batch sum
    _loss_inplace,
    lambda s, p, y, T, a: _mixed(s, p, y, T, a, kl=(_xlogy(p) - p * np.log(KD.softmax_t(s, 1.0) ** (1 / T))).sum(-1).mean()),  # q^(1/T)
    lambda s, p, y, T, a: _mixed(s, p, y, T, a, ce=0.0),  # labels forgotten
    _loss_log_of_softmax,
]
RIGHT_SOFT_LOSS = [KD.soft_target_loss, _loss_float32, _loss_torch, _loss_onehot_loop, _loss_eps]


def _grad_parts(s, p, y, T):
    B = len(s)
    return T * (KD.softmax_t(s, T) - p) / B, (KD.softmax_t(s, 1.0) - np.eye(s.shape[1])[y]) / B


def _soft_grad_inplace(s, p, y, T, alpha):
    p *= alpha  # scales the caller's soft targets
    q = KD.softmax_t(s, T)
    return (T * (alpha * q - p) + (1 - alpha) * (KD.softmax_t(s, 1.0) - np.eye(s.shape[1])[y])) / len(s)


def _soft_grad_float32(s, p, y, T, alpha):
    s32 = s.astype(np.float32)
    q, q1 = _softmax_float32(s32, T), _softmax_float32(s32, 1.0)
    onehot = np.eye(s.shape[1], dtype=np.float32)[y]
    return (np.float32(alpha * T) * (q - p.astype(np.float32)) + np.float32(1 - alpha) * (q1 - onehot)) / np.float32(len(s))


def _soft_grad_autograd(s, p, y, T, alpha):
    st = torch.tensor(s, requires_grad=True)
    _loss_torch_grad = alpha * T * T * F.kl_div(F.log_softmax(st / T, -1), torch.from_numpy(p), reduction="batchmean")
    (_loss_torch_grad + (1 - alpha) * F.cross_entropy(st, torch.from_numpy(y))).backward()
    return st.grad


def _soft_grad_loop(s, p, y, T, alpha):
    g = np.zeros_like(s)
    for b in range(len(s)):
        kd, hard = _grad_parts(s[b : b + 1], p[b : b + 1], y[b : b + 1], T)
        g[b] = (alpha * kd + (1 - alpha) * hard)[0] / len(s)  # each part was divided by a batch of 1
    return g


WRONG_SOFT_GRAD = [
    lambda s, p, y, T, a: (lambda kd, h: a * kd / T + (1 - a) * h)(*_grad_parts(s, p, y, T)),  # T missing
    lambda s, p, y, T, a: (lambda kd, h: a * kd * T + (1 - a) * h)(*_grad_parts(s, p, y, T)),  # T^2
    lambda s, p, y, T, a: (lambda kd, h: -(a * kd + (1 - a) * h))(*_grad_parts(s, p, y, T)),  # sign
    lambda s, p, y, T, a: (lambda kd, h: len(s) * (a * kd + (1 - a) * h))(*_grad_parts(s, p, y, T)),  # no batch mean
    lambda s, p, y, T, a: (lambda kd, h: (1 - a) * kd + a * h)(*_grad_parts(s, p, y, T)),  # alpha swapped
    lambda s, p, y, T, a: a * _grad_parts(s, p, y, T)[0],  # label part forgotten
    lambda s, p, y, T, a: a * _grad_parts(s, p, y, T)[0] + (1 - a) * (KD.softmax_t(s, T) - np.eye(s.shape[1])[y]) / len(s),  # softened
    _soft_grad_inplace,
    lambda s, p, y, T, a: a * _grad_parts(s, p, y, T)[0] + (1 - a) * (KD.softmax_t(s, 1.0) - np.eye(len(s))[y]) / len(s),  # eye(batch)
]
RIGHT_SOFT_GRAD = [KD.soft_target_grad, _soft_grad_float32, _soft_grad_autograd, _soft_grad_loop]


def _energy(f, p):
    return f.abs().pow(p).sum(1, keepdim=True)


def _pool_kernel(f, size):
    return (f.shape[2] // size, f.shape[3] // size)


def _pooled_no_eps(f, size, p=2):
    m = F.avg_pool2d(_energy(f, p), _pool_kernel(f, size)).flatten(1)
    return m / m.norm(dim=1, keepdim=True)


def _pooled_inplace(f, size, p=2):
    f.abs_()
    return F.normalize(F.avg_pool2d(f.pow(p).sum(1, keepdim=True), _pool_kernel(f, size)).flatten(1), dim=1)


WRONG_POOLED = [
    lambda f, size, p=2: F.normalize(F.max_pool2d(_energy(f, p), _pool_kernel(f, size)).flatten(1), dim=1),  # max-pool
    lambda f, size, p=2: F.normalize(F.avg_pool2d(f, _pool_kernel(f, size)).abs().pow(p).sum(1).flatten(1), dim=1),  # pools features
    lambda f, size, p=2: F.avg_pool2d(_energy(f, p), _pool_kernel(f, size)).flatten(1),  # not normalised
    lambda f, size, p=2: F.avg_pool2d(KD.attention_map(f, p).view(len(f), 1, *f.shape[2:]), _pool_kernel(f, size)).flatten(1),  # norm first
    _pooled_no_eps,
    lambda f, size, p=2: F.normalize(F.avg_pool2d(_energy(f.detach(), p), _pool_kernel(f, size)).flatten(1), dim=1),  # detached
    _pooled_inplace,
    lambda f, size, p=2: F.normalize(F.interpolate(_energy(f, p), size=(size, size), mode="bilinear").flatten(1), dim=1),  # bilinear
    lambda f, size, p=2: F.normalize(F.interpolate(_energy(f, p), size=(size, size), mode="nearest").flatten(1), dim=1),  # nearest
    lambda f, size, p=2: F.normalize(F.avg_pool2d(_energy(f, p), f.shape[2] // size).flatten(1), dim=1),  # square kernel from H only
    lambda f, size, p=2: F.normalize(F.avg_pool2d(_energy(f, p), _pool_kernel(f, size)).transpose(2, 3).flatten(1), dim=1),  # W-major
    lambda f, size, p=2: F.normalize(F.avg_pool2d(_energy(f, p), _pool_kernel(f, size)).flatten(1), dim=1).detach().numpy(),  # numpy
]
RIGHT_POOLED = [
    KD.pooled_attention_map,
    lambda f, size, p=2: F.normalize(F.adaptive_avg_pool2d(f.double().abs().pow(p).mean(1, keepdim=True), size).flatten(1), dim=1),  # f64
    lambda f, size, p=2: F.normalize(F.interpolate(_energy(f, p), size=(size, size), mode="area").flatten(1), dim=1),
    lambda f, size, p=2: (lambda m: m / (m.norm(dim=1, keepdim=True) + 1e-12))(  # block sums by reshaping, no pooling op
        (f.abs() ** p).sum(1).reshape(len(f), size, f.shape[2] // size, size, f.shape[3] // size).sum((2, 4)).reshape(len(f), -1)
    ),
]

NEW_CASES = {
    "check_ensemble_soft_targets": (WRONG_ENSEMBLE, RIGHT_ENSEMBLE),
    "check_soft_target_loss": (WRONG_SOFT_LOSS, RIGHT_SOFT_LOSS),
    "check_soft_target_grad": (WRONG_SOFT_GRAD, RIGHT_SOFT_GRAD),
    "check_pooled_attention_map": (WRONG_POOLED, RIGHT_POOLED),
}


@pytest.mark.parametrize(("name", "index"), [(n, i) for n in NEW_CASES for i in range(len(NEW_CASES[n][0]))])
def test_lab07_new_check_rejects_a_wrong_answer(name: str, index: int) -> None:
    with pytest.raises(checks.CheckFailure) as caught:
        getattr(checks, name)(NEW_CASES[name][0][index])
    message = str(caught.value)
    assert ("expected" in message and "got" in message and "hint" in message) or "your function raised" in message, message


@pytest.mark.parametrize(("name", "index"), [(n, i) for n in NEW_CASES for i in range(len(NEW_CASES[n][1]))])
def test_lab07_new_check_accepts_a_correct_alternative(name: str, index: int, capsys: pytest.CaptureFixture) -> None:
    getattr(checks, name)(NEW_CASES[name][1][index])
    assert capsys.readouterr().out.startswith(f"PASSED {name}")


def test_lab07_new_hints_name_the_mistake() -> None:
    for check, wrong, words in (
        (checks.check_ensemble_soft_targets, _ens_average_logits, "not the logits"),
        (checks.check_ensemble_soft_targets, _ens_inplace, "in place"),
        (checks.check_soft_target_loss, WRONG_SOFT_LOSS[0], "alpha weights the soft targets"),
        (checks.check_soft_target_loss, WRONG_SOFT_LOSS[1], r"T\*\*2"),
        (checks.check_soft_target_loss, _loss_nan_on_zeros, "0 log 0"),
        (checks.check_soft_target_grad, WRONG_SOFT_GRAD[5], "cross-entropy part"),
        (checks.check_pooled_attention_map, WRONG_POOLED[0], "max-pool"),
        (checks.check_pooled_attention_map, WRONG_POOLED[1], "not the features"),
        (checks.check_pooled_attention_map, _pooled_no_eps, "clamp_min"),
    ):
        with pytest.raises(checks.CheckFailure, match=words):
            check(wrong)
