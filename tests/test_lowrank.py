"""Low-rank helpers: truncated SVD (Eckart-Young), energy ranks, factorized Linear, Tucker-2 and CP convolutions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers import lowrank as L
from helpers.metrics import count_macs, count_parameters


def test_truncated_svd_shapes_and_eckart_young_error() -> None:
    rng = np.random.default_rng(0)
    W = rng.standard_normal((40, 25))
    S_all = np.linalg.svd(W, compute_uv=False)
    for r in (1, 5, 25):
        U, S, Vt = L.truncated_svd(W, r)
        assert U.shape == (40, r) and S.shape == (r,) and Vt.shape == (r, 25)
        error = np.linalg.norm(W - L.low_rank_approx(W, r))
        assert error == pytest.approx(np.sqrt(np.sum(S_all[r:] ** 2)), abs=1e-9)
    for _ in range(5):  # no other rank-5 matrix does better
        other = rng.standard_normal((40, 5)) @ rng.standard_normal((5, 25))
        best_scale = np.sum(W * other) / np.sum(other * other)
        assert np.linalg.norm(W - best_scale * other) > np.linalg.norm(W - L.low_rank_approx(W, 5))
    for bad in (0, 26, 2.5):
        with pytest.raises(ValueError, match="rank"):
            L.truncated_svd(W, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2-d"):
        L.truncated_svd(np.zeros(3), 1)


def test_rank_for_energy() -> None:
    s = np.array([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert L.rank_for_energy(s, 9 / 14) == 1
    assert L.rank_for_energy(s, 0.65) == 2
    assert L.rank_for_energy(s, 13 / 14) == 2
    assert L.rank_for_energy(s, 1.0) == 3
    assert L.rank_for_energy(torch.tensor([1.0, 3.0, 2.0]), 0.6) == 1  # order does not matter
    with pytest.raises(ValueError, match="energy"):
        L.rank_for_energy(s, 0.0)


def test_factorize_linear_matches_the_rank_r_product_and_splits_sqrt() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(30, 20)
    factored = L.factorize_linear(layer, 6)
    x = torch.randn(7, 30)
    approx = torch.from_numpy(L.low_rank_approx(layer.weight.detach().double(), 6)).float()
    assert torch.allclose(factored(x), x @ approx.T + layer.bias, atol=1e-5)
    _, S, _ = L.truncated_svd(layer.weight.detach().double(), 6)
    assert np.allclose(np.linalg.norm(factored[0].weight.detach().numpy(), axis=1), np.sqrt(S), rtol=1e-5)
    assert np.allclose(np.linalg.norm(factored[1].weight.detach().numpy(), axis=0), np.sqrt(S), rtol=1e-5)
    assert count_parameters(factored) == 6 * (30 + 20) + 20
    full = L.factorize_linear(layer, 20)
    assert torch.allclose(full(x), layer(x), atol=1e-5)
    with pytest.raises(TypeError, match="Linear"):
        L.factorize_linear(nn.Conv2d(1, 1, 1), 1)


def test_unfold_and_mode_product() -> None:
    T = np.arange(24.0).reshape(2, 3, 4)
    assert L.unfold(T, 1).shape == (3, 8) and np.array_equal(L.unfold(T, 0), T.reshape(2, 12))
    M = np.random.default_rng(1).standard_normal((5, 3))
    out = L.mode_product(T, M, 1)
    assert out.shape == (2, 5, 4) and np.allclose(out, np.einsum("ab,ibj->iaj", M, T))


def test_tucker2_full_rank_is_exact_and_macs_formula_matches_hooks() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, padding=1)
    core, U_out, U_in = L.hosvd_tucker2(conv.weight, 10, 6)
    assert np.allclose(L.tucker2_reconstruct(core, U_out, U_in), conv.weight.detach().double().numpy())
    assert np.allclose(U_out.T @ U_out, np.eye(10)) and np.allclose(U_in.T @ U_in, np.eye(6))
    x = torch.randn(2, 6, 9, 9)
    assert torch.allclose(L.tucker2_conv(conv, 10, 6)(x), conv(x), atol=1e-5)
    block = L.tucker2_conv(conv, 4, 3)
    assert count_macs(block, (1, 6, 9, 9)) == L.tucker2_macs(6, 10, 3, 3, 4, 9, 9, 9, 9)
    with pytest.raises(ValueError, match="rank_in"):
        L.hosvd_tucker2(conv.weight, 4, 7)


def test_cp_als_recovers_an_exact_low_rank_tensor_and_cp_conv_matches() -> None:
    rng = np.random.default_rng(2)
    factors = [rng.standard_normal((d, 3)) for d in (6, 5, 3, 3)]
    X = L.cp_reconstruct(factors)
    found, errors = L.cp_als(X, 3, iterations=500)
    assert errors[-1] < 1e-6 and errors[-1] <= errors[0]
    conv = nn.Conv2d(5, 6, 3, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(X.transpose(0, 1, 2, 3)).float())
    block = L.cp_conv(conv, 3, iterations=500)
    x = torch.randn(2, 5, 7, 7)
    assert torch.allclose(block(x), conv(x), atol=1e-3)
    assert [m.groups for m in block] == [1, 3, 3, 1]
    with pytest.raises(ValueError, match="rank"):
        L.cp_als(X, 0)


def test_cp_factors_are_balanced_and_normalize_balance_keep_the_tensor() -> None:
    rng = np.random.default_rng(3)
    factors = [rng.standard_normal((d, 4)) * s for d, s in ((6, 10.0), (5, 0.1), (3, 1.0), (3, 3.0))]
    weights, unit = L.cp_normalize(factors)
    for r in range(4):  # the norm of an outer product is the product of the vectors' norms
        component = np.einsum("a,b,c,d->abcd", *[f[:, r] for f in factors])
        assert weights[r] == pytest.approx(np.linalg.norm(component), rel=1e-12)
    assert all(np.allclose(np.linalg.norm(u, axis=0), 1.0) for u in unit)
    balanced = L.cp_balance(factors)
    assert np.allclose(L.cp_reconstruct(balanced), L.cp_reconstruct(factors))
    assert np.allclose(L.cp_component_norms(balanced), weights)
    column_norms = np.array([np.linalg.norm(f, axis=0) for f in balanced])  # (modes, R): equal down each column
    assert np.allclose(column_norms, weights[None, :] ** 0.25)
    found, _ = L.cp_als(L.cp_reconstruct(factors), 4, iterations=50)
    found_norms = np.array([np.linalg.norm(f, axis=0) for f in found])
    assert np.allclose(found_norms, found_norms[:1], rtol=1e-9), "cp_als must return balanced factors"


def test_cp_ridge_bounds_the_components_of_a_degenerate_problem() -> None:
    # a x a x b + a x b x a + b x a x a has rank 3 but border rank 2 (de Silva & Lim 2008): rank-2 ALS
    # lowers its error only by letting two components grow and cancel; the ridge term keeps them bounded
    a, b = np.linalg.qr(np.random.default_rng(0).standard_normal((4, 2)))[0].T
    T = sum(np.einsum("i,j,k->ijk", *v) for v in ((a, a, b), (a, b, a), (b, a, a)))
    norm = np.linalg.norm(T)
    plain, plain_errors = L.cp_als(T, 2, iterations=2000, tol=0)
    tamed, tamed_errors = L.cp_als(T, 2, iterations=2000, tol=0, ridge=0.01)
    assert plain_errors[-1] < 0.01 and L.cp_component_norms(plain).max() > 2 * norm  # degenerate
    assert L.cp_component_norms(tamed).max() < norm and tamed_errors[-1] < 0.2  # bounded, still a fair fit
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="ridge"):
            L.cp_als(T, 2, ridge=bad)


def test_cp_conv_with_ridge_is_stable_under_tiny_kernel_noise() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, padding=1)
    block = L.cp_conv(conv, 6, iterations=60, ridge=0.01)
    with torch.no_grad():
        conv.weight.add_(1e-7 * torch.randn_like(conv.weight))
    other = L.cp_conv(conv, 6, iterations=60, ridge=0.01)
    x = torch.randn(2, 8, 7, 7)
    assert torch.allclose(block(x), other(x), atol=1e-4)


def test_draw_low_rank_uses_the_originals_colour_scale_with_a_colourbar() -> None:
    import matplotlib.pyplot as plt

    from helpers import widgets

    image = np.random.default_rng(0).random((20, 30))
    fig = widgets.draw_low_rank(image, 2)
    left, right, bar = fig.axes
    assert left.images[0].get_clim() == right.images[0].get_clim() == (image.min(), image.max())
    assert "pixel value" in bar.get_ylabel()
    plt.close(fig)


def test_factorize_conv_at_full_rank_is_the_convolution() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        assert torch.allclose(L.factorize_conv(conv, 5)(x), conv(x), atol=1e-5)
