"""Pruning helpers: masks and their tie rule, schedules, structured shrinking, sparse formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers import pruning as P
from helpers.models import LeNet5, LeNet300


def test_magnitude_mask_count_order_and_ties() -> None:
    rng = np.random.default_rng(0)
    for shape, s in [((10, 7), 0.3), ((50,), 0.9), ((3, 4, 5), 0.55)]:
        w = rng.standard_normal(shape)
        mask = P.magnitude_mask(w, s)
        assert mask.dtype == bool and mask.shape == w.shape
        assert (~mask).sum() == round(s * w.size)
        if mask.any() and (~mask).any():
            assert np.abs(w[mask]).min() >= np.abs(w[~mask]).max()
    tied = np.array([3.0, 1, 2, 1, 1, 4])
    assert P.magnitude_mask(tied, 0.3).tolist() == [True, False, True, False, True, True]  # 3 ties, 2 pruned
    assert P.magnitude_mask(np.ones(4), 0.5).tolist() == [False, False, True, True]
    assert P.magnitude_mask(np.arange(5.0), 0.5).sum() == 3  # round(2.5) == 2 pruned


def test_magnitude_mask_torch_matches_numpy_and_validates() -> None:
    w = torch.randn(20, 30)
    m = P.magnitude_mask(w, 0.7)
    assert isinstance(m, torch.Tensor) and m.dtype == torch.bool
    assert np.array_equal(m.numpy(), P.magnitude_mask(w.numpy(), 0.7))
    assert P.magnitude_mask(w, 0.0).all() and not P.magnitude_mask(w, 1.0).any()
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\]"):
            P.magnitude_mask(w, bad)
    with pytest.raises(TypeError, match="sparsity"):
        P.magnitude_mask(w, "half")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        P.magnitude_mask(np.array([]), 0.5)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        P.magnitude_mask([1.0, 2.0], 0.5)  # type: ignore[arg-type]


def test_same_mask_as_torch_prune_l1_unstructured() -> None:
    import torch.nn.utils.prune as tprune

    torch.manual_seed(0)
    layer = nn.Linear(50, 40)
    ours = P.magnitude_mask(layer.weight.detach(), 0.8)
    tprune.l1_unstructured(layer, "weight", amount=0.8)
    assert torch.equal(ours, layer.weight_mask.bool())


def test_global_masks_share_one_threshold() -> None:
    rng = np.random.default_rng(1)
    weights = {"small": rng.standard_normal(100) * 0.01, "big": rng.standard_normal(100)}
    masks = P.global_magnitude_masks(weights, 0.5)
    assert (~masks["small"]).sum() + (~masks["big"]).sum() == 100
    assert (~masks["small"]).sum() > 90  # the small-scale layer takes most of the pruning
    kept = np.concatenate([np.abs(w[masks[k]]) for k, w in weights.items()])
    pruned = np.concatenate([np.abs(w[~masks[k]]) for k, w in weights.items()])
    assert kept.min() >= pruned.max()
    with pytest.raises(ValueError, match="empty"):
        P.global_magnitude_masks({}, 0.5)


def test_random_and_taylor() -> None:
    w = np.arange(1.0, 101.0)
    m = P.random_mask(w, 0.3, seed=1)
    assert (~m).sum() == 30 and not np.array_equal(m, P.magnitude_mask(w, 0.3))
    assert np.array_equal(P.taylor_scores(np.array([1.0, -2.0]), np.array([-3.0, 0.5])), [3.0, 1.0])
    with pytest.raises(ValueError, match="same shape"):
        P.taylor_scores(np.ones(3), np.ones(4))


def test_nm_mask_keeps_n_of_every_m() -> None:
    w = torch.randn(8, 16)
    m = P.nm_mask(w, 2, 4)
    assert torch.all(m.reshape(8, 4, 4).sum(-1) == 2)
    groups = w.abs().reshape(-1, 4)
    kept = m.reshape(-1, 4)
    assert torch.all(groups.masked_fill(~kept, float("inf")).min(1).values >= groups.masked_fill(kept, -1).max(1).values)
    assert P.nm_mask(np.array([[1.0, 1, 1, 1]]), 2, 4).tolist() == [[False, False, True, True]]
    conv = torch.randn(6, 8, 3, 3)
    cm = P.nm_mask(conv, 2, 4)
    assert torch.all(cm.permute(0, 2, 3, 1).reshape(-1, 4).sum(1) == 2)
    with pytest.raises(ValueError, match="divisible by m=4"):
        P.nm_mask(torch.randn(3, 6), 2, 4)
    with pytest.raises(ValueError, match="n must be <= m"):
        P.nm_mask(torch.randn(3, 8), 5, 4)


def test_gradual_sparsity_schedule() -> None:
    assert P.gradual_sparsity(0, 0.9, 10, 110) == 0.0
    assert P.gradual_sparsity(110, 0.9, 10, 110) == 0.9 == P.gradual_sparsity(10_000, 0.9, 10, 110)
    assert P.gradual_sparsity(60, 0.9, 10, 110) == pytest.approx(0.9 - 0.9 * 0.5**3)
    values = [P.gradual_sparsity(t, 0.9, 10, 110) for t in range(0, 120)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="end_step"):
        P.gradual_sparsity(5, 0.9, 10, 10)


def test_apply_and_keep_masks_and_sparsity_report() -> None:
    model = LeNet300()
    masks = {n: P.magnitude_mask(w.detach(), 0.9) for n, w in P.prunable_weights(model).items()}
    P.apply_masks(model, masks)
    report = P.sparsity_of(model)
    assert report["fc1"] == pytest.approx(0.9, abs=1e-3) and report["total"] == pytest.approx(0.9, abs=1e-3)
    with torch.no_grad():
        model.fc1.weight.add_(1.0)
    P.keep_masks(masks)(model, 1)
    assert P.sparsity_of(model)["fc1"] == pytest.approx(0.9, abs=1e-3)
    with pytest.raises(ValueError, match="not a layer"):
        P.apply_masks(model, {"nope": masks["fc1"]})
    with pytest.raises(ValueError, match="shape"):
        P.apply_masks(model, {"fc1": masks["fc2"]})


def test_structured_shrinking_preserves_the_function_of_kept_channels() -> None:
    torch.manual_seed(0)
    model = LeNet5().eval()
    x = torch.randn(4, 1, 28, 28)
    same = P.shrink_lenet5(model, 20, 50, 500)  # keeping every channel reproduces the model
    assert torch.allclose(same(x), model(x), atol=1e-5)
    small = P.shrink_lenet5(model, 10, 25, 250)
    assert (small.conv1.out_channels, small.conv2.in_channels, small.conv2.out_channels) == (10, 10, 25)
    assert (small.fc1.in_features, small.fc1.out_features, small.fc2.in_features) == (400, 250, 250)
    # Zeroing the dropped filters in the big model gives exactly the small model's output.
    zeroed = LeNet5().eval()
    zeroed.load_state_dict(model.state_dict())
    keep1 = P.top_channels(P.channel_scores(model.conv1.weight), 10)
    drop = torch.ones(20, dtype=torch.bool)
    drop[keep1] = False
    with torch.no_grad():
        zeroed.conv1.weight[drop] = 0
        zeroed.conv1.bias[drop] = 0
    assert torch.allclose(P.shrink_lenet5(model, 10, 50, 500)(x), zeroed(x), atol=1e-5)


def test_shrink_lenet300_and_channel_ranking() -> None:
    model = LeNet300()
    small = P.shrink_lenet300(model, 100, 30)
    assert small(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert sum(p.numel() for p in small.parameters()) == 784 * 100 + 100 + 100 * 30 + 30 + 30 * 10 + 10
    w = torch.tensor([[1.0, -1.0], [3.0, 0.0], [0.5, 0.5], [-1.0, 1.0]])
    assert P.channel_scores(w, "l1").tolist() == [2.0, 3.0, 1.0, 2.0]
    assert P.top_channels(P.channel_scores(w, "l1"), 2).tolist() == [0, 1]  # tie 0 vs 3: lower index kept
    with pytest.raises(ValueError, match="norm"):
        P.channel_scores(w, "l3")
    with pytest.raises(ValueError, match="keep"):
        P.top_channels(torch.ones(3), 4)


def test_csr_round_trip_bytes_and_matmul() -> None:
    rng = np.random.default_rng(0)
    dense = (rng.standard_normal((300, 784)) * (rng.random((300, 784)) < 0.08)).astype(np.float32)
    csr = P.csr_encode(dense)
    assert np.array_equal(P.csr_decode(csr), dense)
    assert csr.col_idx.dtype == np.uint16 and csr.row_ptr.dtype == np.uint16
    assert P.csr_nbytes(csr) == csr.nnz * (4 + 2) + 301 * 2
    blob = P.csr_to_bytes(csr)
    assert 0 < len(blob) - P.csr_nbytes(csr) < 64
    assert np.array_equal(P.csr_decode(P.csr_from_bytes(blob)), dense)
    x = rng.standard_normal((784, 5)).astype(np.float32)
    assert np.allclose(P.csr_matmul(csr, x), dense @ x, atol=1e-4)
    assert np.allclose(P.csr_matmul(csr, x[:, 0]), dense @ x[:, 0], atol=1e-4)
    with pytest.raises(ValueError, match="2-d"):
        P.csr_encode(np.zeros(3))
    with pytest.raises(ValueError, match="CSR1"):
        P.csr_from_bytes(b"XXXX" + bytes(20))


def test_relative_index_with_fillers() -> None:
    flat = np.zeros(40, dtype=np.float32)
    flat[[2, 3, 30, 39]] = [1, 2, 3, 4]
    values, gaps = P.relative_index_encode(flat, bits=3)  # gaps of at most 7
    assert values.tolist() == [1, 2, 0, 0, 0, 3, 0, 4]
    assert gaps.tolist() == [3, 1, 7, 7, 7, 6, 7, 2]
    assert np.array_equal(P.relative_index_decode(values, gaps, 40), flat)
    assert P.relative_index_nbytes(len(values), 3, 32) == (8 * 35 + 7) // 8
    with pytest.raises(ValueError, match="bits"):
        P.relative_index_encode(flat, 0)
    with pytest.raises(ValueError, match="beyond size"):
        P.relative_index_decode(values, gaps, 20)


def test_nm_pack_round_trip_and_size() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((50, 800)).astype(np.float32)
    values, index_bytes = P.nm_pack(w, 2, 4)
    assert values.shape == (50, 400) and len(index_bytes) == 50 * 200 * 2 * 2 // 8
    dense = P.nm_unpack(values, index_bytes, w.shape, 2, 4)
    assert np.array_equal(dense, w * P.nm_mask(w, 2, 4))
    # fp32 2:4 storage: 2 values (8 B) + 4 bits of positions per group of 4 (16 B dense)
    assert (values.nbytes + len(index_bytes)) / w.nbytes == pytest.approx(8.5 / 16)
    v18, b18 = P.nm_pack(w[:, :16], 1, 8)
    assert np.array_equal(P.nm_unpack(v18, b18, (50, 16), 1, 8), w[:, :16] * P.nm_mask(w[:, :16], 1, 8))
    with pytest.raises(ValueError, match="2-d"):
        P.nm_pack(np.zeros((2, 4, 3, 3)), 2, 4)
