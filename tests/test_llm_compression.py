"""Chapter 12 methods: RTN groups, packed bytes, GPTQ, AWQ, SmoothQuant, Wanda, SparseGPT-lite, LoRA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers import llm_compression as L


def _layer_data(seed: int = 0, out: int = 12, cols: int = 32, tokens: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, cols, generator=g, dtype=torch.float64)
    x = torch.randn(tokens, cols, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3.0, cols, dtype=torch.float64)
    x[:, 1:] += 0.5 * x[:, :-1]  # correlated inputs, as in a real layer
    return w, x


def test_rtn_groups_are_on_the_grid_and_within_half_a_step() -> None:
    w, _ = _layer_data()
    for bits in (2, 3, 4, 8):
        codes, scales, zeros = L.quantize_codes(w, bits, 8)
        assert codes.dtype == torch.uint8 and int(codes.max()) <= 2**bits - 1
        assert scales.shape == zeros.shape == (12, 4)
        w_hat = L.quantize_rtn(w, bits, 8)
        step = scales.double().repeat_interleave(8, dim=1)
        assert torch.all((w - w_hat).abs() <= step / 2 + 1e-9)
        assert len(torch.unique(w_hat[0, :8])) <= 2**bits
    assert torch.equal(L.quantize_rtn(torch.zeros(2, 4), 4, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="group_size"):
        L.quantize_rtn(w, 4, 5)
    with pytest.raises(ValueError, match="bits"):
        L.quantize_rtn(w, 1, 8)
    with pytest.raises(ValueError, match="2-d"):
        L.quantize_rtn(torch.zeros(4), 4, 4)
    with pytest.raises(TypeError, match="w"):
        L.quantize_rtn(np.zeros((2, 4)), 4, 4)  # type: ignore[arg-type]


def test_pack_bits_round_trip_and_size() -> None:
    rng = np.random.default_rng(0)
    for bits in (2, 3, 4, 8):
        codes = rng.integers(0, 2**bits, 1001)
        data = L.pack_bits(codes, bits)
        assert len(data) == -(-1001 * bits // 8)
        assert np.array_equal(L.unpack_bits(data, bits, 1001), codes)
    with pytest.raises(ValueError, match="codes"):
        L.pack_bits(np.array([16]), 4)


def test_save_and_load_quantized_round_trip() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
    packed = {}
    for name in ("0", "2"):
        layer = model.get_submodule(name)
        packed[name] = L.quantize_codes(layer.weight.data, 3, 16)
        layer.weight.data = L.dequantize_codes(*packed[name])
    data = L.save_quantized(model, packed, 3)
    fresh = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
    L.load_quantized(data, fresh)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-3 * a.abs().max().item())
    assert len(data) < len(L.save_quantized(model, {}, 3))
    with pytest.raises(ValueError, match="quantized"):
        L.save_quantized(model, {"1": packed["0"]}, 3)
    w, x = _layer_data()
    q, (codes, scales, zeros) = L.gptq_quantize(w, L.hessian(x), 3, 16, return_codes=True)
    assert torch.allclose(L.dequantize_codes(codes, scales, zeros).double(), q, atol=1e-6)


def test_hessian_gives_the_output_error() -> None:
    w, x = _layer_data()
    w_hat = L.quantize_rtn(w, 3, 8)
    d = w - w_hat
    H = L.hessian(x)
    assert float(torch.einsum("oi,ij,oj->", d, H, d) / w.shape[0]) == pytest.approx(L.output_error(w, w_hat, x), rel=1e-9)
    with pytest.raises(ValueError, match="x"):
        L.hessian(torch.zeros(0, 3))


def test_inverse_hessian_factor_and_gptq_step_is_least_squares() -> None:
    w, x = _layer_data()
    H = L.hessian(x)
    U = L.inverse_hessian_factor(H, damp=0.0)
    assert torch.allclose(U.T @ U, torch.linalg.inv(H), rtol=1e-8, atol=1e-10) and torch.allclose(U, torch.triu(U))
    q = torch.round(w[:, 0] * 2) / 2
    updated = L.gptq_step(w, U, 0, q)
    # direct least squares: the best columns 1.. given column 0 fixed to q
    target = x @ w.T - x[:, :1] @ q[None, :]
    best, *_ = torch.linalg.lstsq(x[:, 1:], target)
    assert torch.allclose(updated[:, 1:], best.T, atol=1e-8) and torch.equal(updated[:, 0], q)
    with pytest.raises(ValueError, match="damp"):
        L.inverse_hessian_factor(H, damp=1.5)


def test_gptq_beats_rtn_and_lazy_blocks_change_nothing() -> None:
    for seed in range(3):
        w, x = _layer_data(seed)
        H = L.hessian(x)
        rtn = L.output_error(w, L.quantize_rtn(w, 3, 16), x)
        a = L.gptq_quantize(w, H, 3, 16, block_size=16)
        b = L.gptq_quantize(w, H, 3, 16, block_size=32)
        assert L.output_error(w, a, x) < 0.95 * rtn
        assert torch.allclose(a, b, atol=1e-9)
        for row in range(3):  # every group is on a 3-bit grid
            assert len(torch.unique(a[row, :16])) <= 8
    with pytest.raises(ValueError, match="block_size"):
        L.gptq_quantize(w, H, 3, 16, block_size=24)
    with pytest.raises(ValueError, match="H"):
        L.gptq_quantize(w, H[:5, :5], 3, 16)


def test_awq_scales_search_and_alpha_zero_is_rtn() -> None:
    w, x = _layer_data()
    s = L.awq_scales(x.abs().mean(0), 0.5)
    assert float(s.max() * s.min()) == pytest.approx(1.0)
    assert torch.allclose(L.awq_quantize(w, L.awq_scales(x.abs().mean(0), 0.0), 3, 8), L.quantize_rtn(w, 3, 8))
    alpha, scales, errors = L.awq_search(w, x, 3, 8, grid=10)
    assert len(errors) == 11 and errors[round(alpha * 10)] == min(errors) and errors[round(alpha * 10)] <= errors[0]
    with pytest.raises(ValueError, match="alpha"):
        L.awq_scales(x.abs().mean(0), 1.5)
    with pytest.raises(ValueError, match="grid"):
        L.awq_search(w, x, 3, 8, grid=0)


def test_smoothquant_scales_preserve_the_product_and_balance_ranges() -> None:
    g = torch.Generator().manual_seed(0)
    layer = nn.Linear(16, 4)
    x = torch.randn(50, 16, generator=g)
    x[:, 3] *= 40  # an outlier channel
    s = L.smoothquant_scales(x.abs().amax(0), layer.weight.abs().amax(0), 0.5)
    assert torch.allclose((x / s) @ (layer.weight * s).T, x @ layer.weight.T, atol=1e-3)
    assert (x / s).abs().amax(0).max() / (x / s).abs().amax(0).median() < x.abs().amax(0).max() / x.abs().amax(0).median()
    plain, smooth = L.W8A8Linear(layer), L.W8A8Linear(layer, s)
    exact = layer(x)
    assert (smooth(x) - exact).pow(2).mean() < (plain(x) - exact).pow(2).mean()
    with pytest.raises(ValueError, match="smooth"):
        L.W8A8Linear(layer, -torch.ones(16))
    with pytest.raises(ValueError, match="alpha"):
        L.smoothquant_scales(x.abs().amax(0), layer.weight.abs().amax(0), -0.1)


def test_masks_wanda_and_ties() -> None:
    scores = torch.tensor([[1.0, 1.0, 2.0, 0.5], [3.0, 0.0, 0.0, 1.0]])
    expected_keep = torch.tensor([[False, True, True, False], [True, False, False, True]])  # ties: lower index pruned first
    assert torch.equal(L.keep_per_row(scores, 0.5), expected_keep)
    assert torch.equal(L.keep_n_of_m(scores, 2, 4), expected_keep)
    assert L.keep_per_layer(scores, 0.5).sum() == 4 and not L.keep_per_layer(scores, 0.5)[1, 1]
    w, x = _layer_data()
    expected = w.abs() * torch.sqrt((x**2).sum(0))
    assert torch.allclose(L.wanda_scores(w, x), expected)
    with pytest.raises(ValueError, match="sparsity"):
        L.keep_per_row(scores, 1.0)
    with pytest.raises(ValueError, match="n="):
        L.keep_n_of_m(scores, 3, 3)
    with pytest.raises(ValueError, match="x"):
        L.wanda_scores(w, x[:, :5])


def test_sparsegpt_lite_keeps_the_pattern_and_beats_plain_masks() -> None:
    for seed in range(3):
        w, x = _layer_data(seed)
        H = L.hessian(x)
        pruned = L.sparsegpt_prune(w, H, 0.5, block_size=32)
        assert int((pruned == 0).sum(1).min()) >= 16
        nm = L.sparsegpt_prune(w, H, nm=(2, 4), block_size=32)
        assert torch.all((nm.reshape(12, -1, 4) != 0).sum(-1) <= 2)
        wanda = w * L.keep_per_row(L.wanda_scores(w, x), 0.5)
        assert L.output_error(w, pruned, x) < L.output_error(w, wanda, x)
    with pytest.raises(ValueError, match="block_size"):
        L.sparsegpt_prune(w, H, nm=(2, 4), block_size=30)


def test_lora_starts_equal_trains_only_the_factors_and_merges() -> None:
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    lora = L.LoRALinear(base, r=2, alpha=4.0)
    x = torch.randn(5, 8)
    assert torch.equal(lora(x), base(x))
    assert [n for n, p in lora.named_parameters() if p.requires_grad] == ["A", "B"]
    lora.B.data.normal_()
    assert torch.allclose(lora(x), x @ lora.merged_weight().T + base.bias, atol=1e-5)
    with pytest.raises(ValueError, match="r must"):
        L.LoRALinear(base, r=7)


def test_swap_and_replace_leave_the_original_alone() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    before = model[0].weight.clone()
    swapped = L.swap_linears(model, lambda _n, layer: L.W8A8Linear(layer), ["0"])
    assert isinstance(swapped[0], L.W8A8Linear) and isinstance(model[0], nn.Linear)
    replaced = L.replace_weights(model, {"0": torch.zeros(4, 4)})
    assert torch.equal(model[0].weight, before) and torch.equal(replaced[0].weight, torch.zeros(4, 4))
    with pytest.raises(ValueError, match="shape"):
        L.replace_weights(model, {"0": torch.zeros(3, 4)})
