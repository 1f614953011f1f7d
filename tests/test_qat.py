"""QAT helpers: STE, LSQ (against autograd and PyTorch's learnable fake-quant), PACT, binary/ternary, packing, files, allocation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import ptq, qat
from helpers.models import LeNet5, LeNet300


def test_round_ste_rounds_half_to_even_and_passes_the_gradient() -> None:
    x = torch.tensor([-1.5, -0.5, 0.5, 1.5, 2.5, 0.2], requires_grad=True)
    y = qat.round_ste(x)
    assert y.tolist() == [-2.0, -0.0, 0.0, 2.0, 2.0, 0.0]
    y.backward(torch.arange(6.0))
    assert x.grad.tolist() == list(range(6))


def test_fake_quant_ste_matches_pytorch_values_and_gradients() -> None:
    torch.manual_seed(0)
    x = (torch.randn(4, 6) * 3).requires_grad_()
    scale = torch.rand(4) * 0.5 + 0.1
    zp = torch.randint(-3, 3, (4,))
    ours = qat.fake_quant_ste(x, scale[:, None], zp[:, None].float(), -8, 7)
    ref_x = x.detach().clone().requires_grad_()
    theirs = torch.fake_quantize_per_channel_affine(ref_x, scale, zp.int(), 0, -8, 7)
    assert torch.allclose(ours, theirs, atol=1e-6)
    grad = torch.randn(4, 6)
    ours.backward(grad)
    theirs.backward(grad)
    assert torch.equal(x.grad, ref_x.grad)
    assert (x.grad == 0).any(), "some values should be clipped in this case"


def test_clipped_ste_equals_the_gradient_of_the_clamp_surrogate() -> None:
    x = torch.linspace(-3, 3, 61, dtype=torch.float64, requires_grad=True)
    qat.fake_quant_ste(x, 0.25, 0, -8, 7).sum().backward()
    surrogate = torch.linspace(-3, 3, 61, dtype=torch.float64, requires_grad=True)
    torch.clamp(surrogate / 0.25, -8.5, 7.5).sum().backward()  # slope 1/0.25 inside the rounding range
    assert torch.equal(x.grad, surrogate.grad * 0.25)


def test_lsq_gradient_equals_autograd_through_the_ste_and_pytorch_learnable() -> None:
    torch.manual_seed(1)
    x = torch.randn(5, 40, dtype=torch.float64) * 0.3
    s0 = torch.rand(5, dtype=torch.float64) * 0.05 + 0.02
    g = qat.lsq_grad_scale(40, 7)
    grad = torch.randn(5, 40, dtype=torch.float64)
    xs = [x.clone().requires_grad_() for _ in range(3)]
    ss = [s0.clone().requires_grad_() for _ in range(3)]
    a = qat.lsq_fake_quant(xs[0], ss[0][:, None], 0, -8, 7, g)
    b = qat.lsq_ste_reference(xs[1], ss[1][:, None], 0, -8, 7, g)
    c = torch._fake_quantize_learnable_per_channel_affine(xs[2].float(), ss[2].float(), torch.zeros(5), 0, -8, 7, g)
    for out in (a, b):
        out.backward(grad)
    c.backward(grad.float())
    assert torch.allclose(a, b) and torch.allclose(a.float(), c, atol=1e-6)
    assert torch.allclose(xs[0].grad, xs[1].grad) and torch.allclose(ss[0].grad, ss[1].grad, atol=1e-12)
    assert torch.allclose(ss[0].grad, ss[2].grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(xs[0].grad, xs[2].grad)


def test_lsq_grad_scale_and_errors() -> None:
    assert qat.lsq_grad_scale(100, 7) == pytest.approx(1 / np.sqrt(700))
    for n, qmax in ((0, 7), (10, 0), (2.5, 7)):
        with pytest.raises(ValueError):
            qat.lsq_grad_scale(n, qmax)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="scale"):
        qat.lsq_fake_quant(torch.zeros(3), 0.1, 0, -8, 7)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="qmin"):
        qat.fake_quant_ste(torch.zeros(3), 0.1, 0, 7, -8)
    with pytest.raises(ValueError, match="scale"):
        qat.fake_quant_ste(torch.zeros(3), 0.0, 0, -8, 7)


def test_pact_gradient_wrt_alpha_is_the_clipped_fraction() -> None:
    x = torch.tensor([-1.0, 0.3, 0.9, 1.5, 4.0])
    alpha = torch.tensor(1.2, requires_grad=True)
    y = qat.pact(x, alpha, 2)
    assert torch.allclose(y, torch.tensor([0.0, 0.4, 0.8, 1.2, 1.2]))
    y.sum().backward()
    assert alpha.grad.item() == pytest.approx(2.0)  # two values above alpha
    with pytest.raises(ValueError, match="bits"):
        qat.pact(x, alpha, 0)
    with pytest.raises(TypeError, match="alpha"):
        qat.pact(x, 1.0, 4)  # type: ignore[arg-type]


def test_binary_scale_is_l2_optimal_and_ternary_follows_twn() -> None:
    torch.manual_seed(2)
    w = torch.randn(3, 50)
    wb, alpha = qat.binarize_weight(w)
    for row in range(3):
        errors = [((w[row] - a * torch.sign(w[row])) ** 2).sum() for a in alpha[row] * torch.tensor([0.9, 1.0, 1.1])]
        assert errors[1] < errors[0] and errors[1] < errors[2]
    assert torch.allclose(wb.abs(), alpha[:, None].expand(3, 50))
    codes, a, delta = qat.ternarize(w)
    assert torch.allclose(delta, 0.7 * w.abs().mean(1))
    kept = w.abs() > delta[:, None]
    assert torch.equal(codes, torch.sign(w) * kept)
    assert torch.allclose(a, (w.abs() * kept).sum(1) / kept.sum(1))
    zero_codes, zero_alpha, _ = qat.ternarize(torch.zeros(2, 4))
    assert torch.equal(zero_codes, torch.zeros(2, 4)) and torch.equal(zero_alpha, torch.zeros(2))
    with pytest.raises(TypeError):
        qat.binarize_weight(np.ones((2, 2)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="factor"):
        qat.ternarize(w, factor=-0.1)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8, 16])
def test_pack_bits_round_trip_and_size(bits: int) -> None:
    rng = np.random.default_rng(bits)
    codes = rng.choice([-1, 1], 101) if bits == 1 else rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), 101)
    data = qat.pack_bits(codes, bits)
    assert len(data) == (101 * bits + 7) // 8
    assert np.array_equal(qat.unpack_bits(data, 101, bits), codes)


def test_pack_bits_errors() -> None:
    with pytest.raises(ValueError, match="fit"):
        qat.pack_bits(np.array([8]), 4)
    with pytest.raises(ValueError, match="bits"):
        qat.pack_bits(np.array([0]), 0)
    with pytest.raises(TypeError, match="integers"):
        qat.pack_bits(np.array([0.5]), 4)


def _calib() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(32, 1, 28, 28)


def test_qatnet_before_training_is_ptq_and_runs_in_integers(tmp_path) -> None:
    torch.manual_seed(0)
    model, x = LeNet300(), _calib()
    net = qat.QATNet(model, x, 4, 4, "fixed", "fixed").eval()
    helper = ptq.ptq(model, x, bits=4)
    with torch.no_grad():
        ours = net(x)
    assert (ours.argmax(1) == helper.fake_quant(x).argmax(1)).float().mean() >= 0.9
    int_model = qat.to_int_model(net)
    integer = int_model.run_integer(x)
    scale, zp = int_model.output_qparams
    assert np.abs(integer - (np.round(ours.double().numpy() / scale) + zp)).max() <= 2
    size = qat.write_model_file(tmp_path / "m.bin", net.quantized_layers(), {"act": [q.qparams() for q in net.act_q]})
    assert size == (tmp_path / "m.bin").stat().st_size
    layers, extra = qat.read_model_file(tmp_path / "m.bin")
    for a, b in zip(layers, net.quantized_layers()):
        assert np.array_equal(a["codes"], b["codes"]) and np.array_equal(a["scales"], b["scales"]) and np.array_equal(a["bias"], b["bias"])
    assert len(extra["act"]) == 4
    expected = sum(qat.layer_bytes(m.weight.numel(), m.weight.shape[0], 4) for m in (model.fc1, model.fc2, model.fc3))
    assert expected < size < expected + 1000  # plus the JSON header


def test_qatnet_trains_every_mode_and_mixed_widths() -> None:
    torch.manual_seed(0)
    model, x = LeNet5(), _calib()
    y = torch.randint(0, 10, (32,))
    for mode, bits in (("lsq", 4), ("fixed", 3), ("binary", 4), ("ternary", 4), ("lsq", [8, 4, 1, 2])):
        net = qat.QATNet(model, x, bits, 8, mode, "pact" if mode == "lsq" else "lsq")
        torch.nn.functional.cross_entropy(net(x), y).backward()
        assert all(p.grad is not None for p in net.layers.parameters())
        codes = [layer["codes"] for layer in net.quantized_layers()]
        for c, b in zip(codes, net.weight_bits):
            assert c.min() >= (-1 if b == 1 else -(2 ** (b - 1))) and c.max() <= (1 if b == 1 else 2 ** (b - 1) - 1)
    assert net.weight_bits == [8, 4, 1, 2]
    with pytest.raises(ValueError, match="weight_bits"):
        qat.QATNet(model, x, [4, 4], 8)
    with pytest.raises(ValueError, match="weight_mode"):
        qat.QATNet(model, x, 4, 8, "bogus")
    with pytest.raises(ValueError, match="act_mode"):
        qat.QATNet(model, x, 4, 8, "lsq", "bogus")
    with pytest.raises(ValueError, match="bits"):
        qat.QATNet(model, x, 4, 1)
    with pytest.raises(ValueError, match="ranges"):
        qat.QATNet(model, x, 4, 8, ranges=[(0.0, 1.0)])
    ranges = ptq.calibrate(model, x)
    a, b = qat.QATNet(model, x, 4, 8, "fixed", "fixed").eval(), qat.QATNet(model, x[:1], 4, 8, "fixed", "fixed", ranges=ranges).eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x)), "precomputed ranges must give the same model as calibrating on x"


def test_allocate_bits_exhaustive_with_ties_and_errors() -> None:
    sens = {"a": {2: 5.0, 4: 1.0, 8: 0.0}, "b": {2: 0.5, 4: 0.1, 8: 0.0}}
    cost = {"a": {2: 10, 4: 20, 8: 40}, "b": {2: 100, 4: 200, 8: 400}}
    assert qat.allocate_bits(sens, cost, 220) == {"a": 8, "b": 2}  # 0.5 (140 bytes) beats a at 2, b at 4 (5.1, 210 bytes)
    assert qat.allocate_bits(sens, cost, 440) == {"a": 8, "b": 8}
    tie = {"a": {2: 0.0, 4: 0.0}, "b": {2: 0.0, 4: 0.0}}
    assert qat.allocate_bits(tie, {"a": {2: 1, 4: 2}, "b": {2: 1, 4: 2}}, 10) == {"a": 2, "b": 2}  # the cheaper on a tie
    with pytest.raises(ValueError, match="budget"):
        qat.allocate_bits(sens, cost, 50)
    with pytest.raises(ValueError, match="same layers"):
        qat.allocate_bits(sens, {"a": cost["a"]}, 1000)
    with pytest.raises(ValueError, match="empty"):
        qat.allocate_bits({}, {}, 1)
    with pytest.raises(ValueError, match="widths"):
        qat.allocate_bits({"a": {2: 1.0}}, {"a": {4: 1}}, 10)


def test_layer_bytes() -> None:
    assert qat.layer_bytes(100, 10, 4) == 50 + 40 + 40
    assert qat.layer_bytes(101, 10, 1) == 13 + 80
    assert qat.layer_bytes(100, 10, 32) == 440
