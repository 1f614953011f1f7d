"""Distillation helpers: temperature softmax, KD loss in numpy and torch, its gradient, feature losses, the loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import distillation as D
from helpers.models import MLP, LeNet5, Teacher


def test_softmax_t_is_stable_and_agrees_across_backends() -> None:
    z = np.array([[1000.0, 999.0, -1000.0], [0.0, 0.0, 0.0]])
    p = D.softmax_t(z, 1.0)
    assert np.all(np.isfinite(p)) and np.allclose(p.sum(1), 1) and np.allclose(p[1], 1 / 3)
    assert np.allclose(D.softmax_t(torch.tensor(z), 2.0).numpy(), D.softmax_t(z, 2.0))
    assert np.allclose(np.exp(D.log_softmax_t(z, 3.0)), D.softmax_t(z, 3.0))
    for bad in (0, -1.0, True):
        with pytest.raises(ValueError, match="T"):
            D.softmax_t(z, bad)  # type: ignore[arg-type]


def test_kd_loss_matches_torch_kl_div_and_is_zero_for_equal_logits() -> None:
    rng = np.random.default_rng(0)
    s, t = rng.standard_normal((8, 10)) * 3, rng.standard_normal((8, 10)) * 3
    for T in (1.0, 4.0):
        ref = (
            torch.nn.functional.kl_div(
                torch.log_softmax(torch.tensor(s) / T, 1), torch.softmax(torch.tensor(t) / T, 1), reduction="batchmean"
            ).item()
            * T
            * T
        )
        assert D.kd_loss(s, t, T) == pytest.approx(ref, rel=1e-9)
        assert D.kd_loss(torch.tensor(s), torch.tensor(t), T).item() == pytest.approx(ref, rel=1e-9)
    assert D.kd_loss(s, s, 4.0) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="shape"):
        D.kd_loss(s, t[:, :5], 2.0)
    with pytest.raises(ValueError, match="batch"):
        D.kd_loss(s[0], t[0], 2.0)


def test_kd_gradient_formula_finite_differences_and_autograd() -> None:
    rng = np.random.default_rng(1)
    s, t = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    T = 3.0
    eps = 1e-6
    numeric = np.zeros_like(s)
    for idx in np.ndindex(*s.shape):
        plus, minus = s.copy(), s.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (D.kd_loss(plus, t, T) - D.kd_loss(minus, t, T)) / (2 * eps)
    assert np.allclose(D.kd_grad(s, t, T), numeric, atol=1e-8)
    st = torch.tensor(s, requires_grad=True)
    D.kd_loss(st, torch.tensor(t), T).backward()
    assert np.allclose(st.grad.numpy(), D.kd_grad(s, t, T))


def test_distillation_loss_mixes_soft_and_hard() -> None:
    rng = np.random.default_rng(2)
    s, t, y = rng.standard_normal((6, 10)), rng.standard_normal((6, 10)), rng.integers(0, 10, 6)
    ce = torch.nn.functional.cross_entropy(torch.tensor(s), torch.tensor(y)).item()
    assert D.distillation_loss(s, t, y, 2.0, 0.0) == pytest.approx(ce)
    assert D.distillation_loss(s, t, y, 2.0, 1.0) == pytest.approx(D.kd_loss(s, t, 2.0))
    torch_value = D.distillation_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), 2.0, 0.3).item()
    assert torch_value == pytest.approx(D.distillation_loss(s, t, y, 2.0, 0.3))
    with pytest.raises(ValueError, match="alpha"):
        D.distillation_loss(s, t, y, 2.0, 1.5)


def test_hint_and_attention_losses() -> None:
    torch.manual_seed(0)
    fs, ft = torch.randn(2, 8, 6, 6), torch.randn(2, 50, 6, 6)
    regressor = D.HintRegressor(8, 50)
    loss = D.hint_loss(fs, ft, regressor)
    loss.backward()
    assert loss.item() > 0 and regressor.proj.weight.grad is not None
    with pytest.raises(ValueError, match="do not match"):
        D.hint_loss(fs, torch.randn(2, 50, 5, 5), regressor)
    a = D.attention_map(fs)
    assert a.shape == (2, 36) and torch.allclose(a.norm(dim=1), torch.ones(2))
    assert torch.allclose(a, D.attention_map(3 * fs))  # scale invariant
    assert D.attention_loss(fs, fs * 2).item() == pytest.approx(0.0, abs=1e-12)
    assert D.attention_loss(fs, ft).item() > 0
    with pytest.raises(ValueError, match="spatial"):
        D.attention_loss(fs, torch.randn(2, 8, 4, 4))
    with pytest.raises(ValueError, match="N, C, H, W"):
        D.attention_map(torch.randn(3, 4))


def test_distill_loop_learns_and_scratch_mode_is_cross_entropy() -> None:
    torch.manual_seed(0)
    x = torch.rand(256, 1, 28, 28)
    y = (x.flatten(1).mean(1) > x.flatten(1).mean(1).median()).long()
    teacher_logits = torch.stack([1 - y, y], 1).float() * 4
    student = MLP(hidden=(16,), num_classes=2)
    D.distill(student, x, y, teacher_logits, 15, seed=0, lr=0.1)
    with torch.no_grad():
        acc = (student(x).argmax(1) == y).float().mean().item()
    assert acc > 0.8
    a, b = MLP(hidden=(8,), num_classes=2), MLP(hidden=(8,), num_classes=2)
    b.load_state_dict(a.state_dict())
    D.distill(a, x, y, None, 2, seed=3)
    D.distill(b, x, y, None, 2, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # deterministic given the seed


def test_models_for_distillation() -> None:
    assert sum(p.numel() for p in Teacher().parameters()) == 784 * 800 + 800 + 800 * 800 + 800 + 8010
    assert sum(p.numel() for p in MLP(hidden=(30,)).parameters()) == 23_860
    assert LeNet5(channels=(4, 8), hidden=32).features(torch.zeros(1, 1, 28, 28)).shape == (1, 8, 8, 8)
    with pytest.raises(ValueError, match="dropout"):
        MLP(dropout=1.0)
    with pytest.raises(ValueError, match="hidden"):
        MLP(hidden=())
