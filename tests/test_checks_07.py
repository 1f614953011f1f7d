"""Chapter 07's checks reject the wrong answers learners really write and accept correct ones written differently."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import checks
from helpers import distillation as KD

# ----------------------------------------------------------------------------- numpy softmax helpers for the answers below


def _softmax_float32(z, T):
    z = np.asarray(z, dtype=np.float32) / np.float32(T)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


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


def _softmax_naive(z, T):
    e = np.exp(z / T)
    return e / e.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------- torch: step, hint


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


CASES = {
    "check_distillation_step": (WRONG_STEPS, RIGHT_STEPS),
    "check_hint_loss": (WRONG_HINTS, RIGHT_HINTS),
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


def test_detached_teacher_hint() -> None:
    with pytest.raises(checks.CheckFailure, match="detach"):
        checks.check_hint_loss(WRONG_HINTS[3])


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


def _pooled_sqrt_norm(f, size, p=2):  # right values, but sqrt of a zero sum: NaN gradient at an all-zero example
    m = F.avg_pool2d(_energy(f, p), _pool_kernel(f, size)).flatten(1)
    return m / m.pow(2).sum(1, keepdim=True).sqrt().clamp_min(1e-12)


WRONG_POOLED = [
    _pooled_sqrt_norm,
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
        (checks.check_soft_target_loss, _loss_log_of_softmax, "not np.log"),
        (checks.check_soft_target_grad, WRONG_SOFT_GRAD[5], "cross-entropy part"),
        (checks.check_pooled_attention_map, WRONG_POOLED[1], "max-pool"),
        (checks.check_pooled_attention_map, WRONG_POOLED[2], "not the features"),
        (checks.check_pooled_attention_map, _pooled_sqrt_norm, "gradient of sqrt"),
        (checks.check_pooled_attention_map, _pooled_no_eps, "clamp_min"),
    ):
        with pytest.raises(checks.CheckFailure, match=words):
            check(wrong)
