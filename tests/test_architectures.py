"""helpers.architectures: numpy convolutions equal torch's, cost formulas equal the hook counter, blocks and nets behave."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import architectures as A
from helpers import metrics


@pytest.mark.parametrize(
    ("shape", "k", "stride", "padding"),
    [((2, 3, 7, 7), 3, 1, 0), ((1, 4, 8, 6), 3, 2, 1), ((2, 2, 9, 9), 5, 2, 2), ((1, 3, 5, 5), 1, 1, 0)],
)
def test_depthwise_equals_torch(shape, k, stride, padding) -> None:
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal(shape), rng.standard_normal((shape[1], 1, k, k)), rng.standard_normal(shape[1])
    expected = F.conv2d(
        torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride=stride, padding=padding, groups=shape[1]
    ).numpy()
    np.testing.assert_allclose(A.depthwise_conv2d(x, w, b, stride, padding), expected, atol=1e-12)


@pytest.mark.parametrize(
    ("c_in", "c_out", "groups", "stride", "padding"), [(6, 9, 3, 1, 1), (4, 8, 1, 2, 0), (8, 8, 8, 1, 1), (6, 4, 2, 3, 2)]
)
def test_grouped_and_pointwise_equal_torch(c_in, c_out, groups, stride, padding) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, c_in, 8, 7))
    w = rng.standard_normal((c_out, c_in // groups, 3, 3))
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=stride, padding=padding, groups=groups).numpy()
    np.testing.assert_allclose(A.grouped_conv2d(x, w, None, stride, padding, groups), expected, atol=1e-12)
    w1 = rng.standard_normal((c_out, c_in, 1, 1))
    np.testing.assert_allclose(A.pointwise_conv2d(x, w1), F.conv2d(torch.from_numpy(x), torch.from_numpy(w1)).numpy(), atol=1e-12)


def test_im2col_layout() -> None:
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    cols = A.im2col(x, 3)
    assert cols.shape == (1, 1, 9, 4)
    np.testing.assert_array_equal(cols[0, 0, :, 0], x[0, 0, :3, :3].ravel())


@pytest.mark.parametrize(
    ("c_in", "c_out", "k", "h", "stride", "padding", "groups"),
    [(1, 16, 3, 28, 2, 1, 1), (16, 16, 3, 14, 1, 1, 16), (24, 48, 1, 14, 1, 0, 2), (8, 8, 3, 5, 2, 0, 8)],
)
def test_conv2d_macs_equals_hooks(c_in, c_out, k, h, stride, padding, groups) -> None:
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, groups=groups)
    assert A.conv2d_macs(c_in, c_out, k, h, h, stride, padding, groups) == metrics.count_macs(conv, (1, c_in, h, h))


@pytest.mark.parametrize(("m", "n", "k"), [(16, 32, 3), (64, 128, 5), (3, 8, 3)])
def test_separable_cost_ratio_equals_hook_ratio(m, n, k) -> None:
    standard = nn.Conv2d(m, n, k, padding=k // 2)
    separable = nn.Sequential(nn.Conv2d(m, m, k, padding=k // 2, groups=m), nn.Conv2d(m, n, 1))
    ratio = metrics.count_macs(separable, (1, m, 10, 10)) / metrics.count_macs(standard, (1, m, 10, 10))
    assert ratio == pytest.approx(A.separable_cost_ratio(n, k), abs=1e-12)


def test_channel_shuffle_is_the_permutation_for_numpy_and_torch() -> None:
    x = np.random.default_rng(2).standard_normal((2, 12, 3, 3))
    perm = A.shuffle_permutation(12, 3)
    assert perm.tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    np.testing.assert_array_equal(A.channel_shuffle(x, 3), x[:, perm])
    np.testing.assert_array_equal(A.channel_shuffle(torch.from_numpy(x), 3).numpy(), x[:, perm])
    np.testing.assert_array_equal(A.channel_shuffle(x, 1), x)
    assert A.channel_shuffle(x, 3) is not x


def test_inverted_residual_shortcut_and_linear_bottleneck() -> None:
    block = A.InvertedResidual(8, 8, 6, 1).eval()
    assert block.residual and not isinstance(block.layers[-1], (nn.ReLU, nn.ReLU6))
    assert not A.InvertedResidual(8, 16, 6, 1).residual and not A.InvertedResidual(8, 8, 6, 2).residual
    assert len(A.InvertedResidual(8, 8, 1, 1).layers) == 5  # no expansion conv at expand 1
    x = torch.randn(2, 8, 7, 7)
    with torch.no_grad():
        assert torch.allclose(block(x), x + block.layers(x))
    assert A.InvertedResidual(8, 16, 6, 2)(x).shape == (2, 16, 4, 4)


def test_shuffle_unit_shapes() -> None:
    x = torch.randn(2, 24, 14, 14)
    assert A.ShuffleUnit(24, 48, 2, 2)(x).shape == (2, 48, 7, 7)
    assert A.ShuffleUnit(24, 24, 3, 1)(x).shape == (2, 24, 14, 14)


def test_mnist_nets_forward_and_cost() -> None:
    for net in (A.MobileNetMNIST(), A.MobileNetMNIST(0.5), A.ShuffleNetMNIST(2), A.ShuffleNetMNIST(3)):
        assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)
        assert metrics.count_macs(net, (1, 1, 28, 28)) < metrics.count_macs(A.MobileNetMNIST(2.0), (1, 1, 28, 28))
    assert A.MobileNetMNIST()(torch.randn(1, 1, 20, 20)).shape == (1, 10)  # resolution multiplier


def test_fold_batchnorm_keeps_outputs_and_int8_roundtrip() -> None:
    torch.manual_seed(0)
    net = A.MobileNetMNIST().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    folded = A.fold_batchnorm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # the original is untouched
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-5)
        blob = A.int8_weight_bytes(folded)
        restored = A.load_int8_weights(folded, blob)
        assert (restored(x) - folded(x)).abs().max() < 0.05 * folded(x).abs().max()
    assert len(blob) < metrics.serialized_size(folded) / 2
    assert len(A.int8_weight_bytes(folded, per_channel=False)) < len(blob)


def test_fp32_weight_bytes_is_the_same_container_in_float32() -> None:
    import io

    folded = A.fold_batchnorm(A.MobileNetMNIST().eval())
    blob = A.fp32_weight_bytes(folded)
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        layers = [(n, m) for n, m in folded.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        for name, layer in layers:
            assert archive[f"{name}.float"].dtype == np.float32
            np.testing.assert_array_equal(archive[f"{name}.float"], layer.weight.detach().numpy())
            np.testing.assert_array_equal(archive[f"{name}.bias"], layer.bias.detach().numpy())
        assert len(archive.files) == 2 * len(layers)
    weights = sum(m.weight.numel() for _, m in layers)
    int8 = A.int8_weight_bytes(folded)
    assert len(blob) > 4 * weights and 0 < len(blob) - len(int8) < 3 * weights  # int8 saves < 3 bytes per weight (its scales cost some)


def test_load_int8_rejects_a_foreign_file() -> None:
    blob = A.int8_weight_bytes(A.fold_batchnorm(A.ShuffleNetMNIST(2)))
    with pytest.raises(ValueError, match="layer"):
        A.load_int8_weights(A.MobileNetMNIST(), blob)
    with pytest.raises(TypeError, match="data"):
        A.load_int8_weights(A.MobileNetMNIST(), "not bytes")


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: A.conv_output_size(3, 5), ValueError, "kernel"),
        (lambda: A.conv_output_size(5, 3, stride=0), ValueError, "stride"),
        (lambda: A.conv2d_macs(6, 9, 3, 8, 8, groups=4), ValueError, "groups"),
        (lambda: A.separable_cost_ratio(0, 3), ValueError, "c_out"),
        (lambda: A.depthwise_conv2d(np.zeros((1, 3, 5, 5)), np.zeros((2, 1, 3, 3))), ValueError, "w must have shape"),
        (lambda: A.depthwise_conv2d([[1.0]], np.zeros((1, 1, 1, 1))), TypeError, "x must be"),
        (lambda: A.depthwise_conv2d(np.zeros((3, 5, 5)), np.zeros((3, 1, 3, 3))), ValueError, "4 dimensions"),
        (lambda: A.grouped_conv2d(np.zeros((1, 6, 5, 5)), np.zeros((4, 3, 3, 3)), groups=3), ValueError, "groups"),
        (lambda: A.pointwise_conv2d(np.zeros((1, 3, 5, 5)), np.zeros((4, 3, 3, 3))), ValueError, "w must have shape"),
        (lambda: A.channel_shuffle(np.zeros((1, 6, 2, 2)), 4), ValueError, "groups"),
        (lambda: A.channel_shuffle(np.zeros((6, 2, 2)), 2), ValueError, "shape"),
        (lambda: A.channel_shuffle([1, 2], 2), TypeError, "x must be"),
        (lambda: A.shuffle_permutation(6, 0), ValueError, "groups"),
        (lambda: A.InvertedResidual(8, 8, 6, 3), ValueError, "stride"),
        (lambda: A.InvertedResidual(8, 8, 0, 1), ValueError, "expand"),
        (lambda: A.ShuffleUnit(24, 48, 2, 1), ValueError, "c_in must equal c_out"),
        (lambda: A.ShuffleUnit(24, 48, 5, 2), ValueError, "groups"),
        (lambda: A.scaled(16, 0), ValueError, "width"),
        (lambda: A.fold_batchnorm("net"), TypeError, "model"),
        (lambda: A.int8_weight_bytes(nn.ReLU()), ValueError, "no Conv2d"),
        (lambda: A.fp32_weight_bytes(nn.ReLU()), ValueError, "no Conv2d"),
        (lambda: A.int8_weight_bytes(A.MobileNetMNIST(), per_channel=1), TypeError, "per_channel"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()


def test_compact_nets_are_registered_baselines() -> None:
    from helpers.models import build
    from helpers.train import RECIPES

    for name, cls in (("mobilenet", A.MobileNetMNIST), ("shufflenet", A.ShuffleNetMNIST)):
        assert name in RECIPES and isinstance(build(name), cls)
