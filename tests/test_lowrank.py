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
