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
    y = torch.randint(0, 2, (256,))
    x = torch.rand(256, 1, 28, 28) - 0.5
    x[y == 1, :, :14] += 0.5  # class 1: a brighter top half, learnable in a few epochs from any seed
    teacher_logits = torch.stack([1 - y, y], 1).float() * 4
    student = MLP(hidden=(16,), num_classes=2)
    D.distill(student, x, y, teacher_logits, 15, seed=0, lr=0.05)
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


def test_soft_targets_are_cached_once_and_equal_the_kd_loss() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(6, 10, requires_grad=True), torch.randn(6, 10) * 3
    log_p = D.soft_targets(t, 4.0)
    assert torch.allclose(log_p.exp().sum(1), torch.ones(6))
    cached = D.kd_loss_from_soft_targets(s, log_p, 4.0)
    assert cached.item() == pytest.approx(D.kd_loss(s, t, 4.0).item(), rel=1e-6)
    cached.backward()
    assert np.allclose(s.grad.numpy(), D.kd_grad(s.detach().numpy(), t.numpy(), 4.0), atol=1e-6)
    with pytest.raises(ValueError, match="T"):
        D.soft_targets(t, 0.0)


def test_distill_equals_a_plain_loop_with_distillation_loss() -> None:
    """The loop's cached soft targets and sliced batches give the same student as the textbook loop."""
    torch.manual_seed(0)
    x = torch.rand(200, 1, 28, 28)
    y = torch.randint(0, 10, (200,))
    teacher_logits = torch.randn(200, 10) * 3
    a = MLP(hidden=(8,))
    b = MLP(hidden=(8,))
    b.load_state_dict(a.state_dict())
    D.distill(a, x, y, teacher_logits, 2, T=3.0, alpha=0.7, lr=0.05, seed=5, batch_size=32)
    generator = torch.Generator().manual_seed(5)
    optimizer = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2)
    for _ in range(2):
        order = torch.randperm(200, generator=generator)
        for start in range(0, 200, 32):
            ib = order[start : start + 32]
            loss = D.distillation_loss(b(x[ib]), teacher_logits[ib], y[ib], 3.0, 0.7)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(b.parameters()), 5.0)
            optimizer.step()
        scheduler.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5)


def test_distill_pairs_scratch_and_distilled_runs_on_the_same_batches() -> None:
    x, y = torch.rand(100, 1, 28, 28), torch.randint(0, 10, (100,))
    seen: dict[str, list[torch.Tensor]] = {"scratch": [], "distilled": []}

    def recorder(name: str):
        def extra(model, xb, ib):
            seen[name].append(ib.clone())
            return torch.zeros(())

        return extra

    D.distill(MLP(hidden=(4,)), x, y, None, 2, seed=7, batch_size=16, extra_loss=recorder("scratch"))
    D.distill(MLP(hidden=(4,)), x, y, torch.randn(100, 10), 2, seed=7, batch_size=16, extra_loss=recorder("distilled"))
    assert len(seen["scratch"]) == 14 and all(torch.equal(p, q) for p, q in zip(seen["scratch"], seen["distilled"]))
    assert sorted(torch.cat(seen["scratch"][:7]).tolist()) == list(range(100))  # each epoch visits every example once
    with pytest.raises(ValueError, match="alpha"):
        D.distill(MLP(hidden=(4,)), x, y, None, 1, alpha=1.5)
    with pytest.raises(ValueError, match="rows"):
        D.distill(MLP(hidden=(4,)), x, y, torch.randn(50, 10), 1)
    with pytest.raises(ValueError, match="batch_size"):
        D.distill(MLP(hidden=(4,)), x, y, None, 1, batch_size=0)
