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
]
RIGHT_KD = [KD.kd_loss, _kd_float32, _kd_torch_kl_div, _kd_torch_float32, _kd_entropy_form]
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


def test_mutation_and_eps_hints() -> None:
    with pytest.raises(checks.CheckFailure, match="in place"):
        checks.check_softmax_t(_softmax_inplace)
    with pytest.raises(checks.CheckFailure, match="clamp_min"):
        checks.check_attention_map(_att_no_eps)
    with pytest.raises(checks.CheckFailure, match="detach"):
        checks.check_hint_loss(WRONG_HINTS[3])
    with pytest.raises(checks.CheckFailure, match="gradient of sqrt"):
        checks.check_attention_map(WRONG_ATTENTION[-1])
