"""Chapter 09 checks: plausible wrong answers are rejected with expected/got/hint, correct alternatives pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import architectures as A
from helpers import checks

# ----------------------------------------------------------------------------- depthwise_conv2d


def _dw_reference(x, w, stride=1, padding=0):
    return A.depthwise_conv2d(x, w, stride=stride, padding=padding)


def _dw_torch(x, w, stride=1, padding=0):  # torch, in the input's precision
    return F.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=stride, padding=padding, groups=x.shape[1])


def _dw_loops(x, w, stride=1, padding=0):  # four loops, float64
    n, c, h, width = x.shape
    k = w.shape[-1]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = (h + 2 * padding - k) // stride + 1, (width + 2 * padding - k) // stride + 1
    out = np.zeros((n, c, ho, wo))
    for i in range(n):
        for ch in range(c):
            for r in range(ho):
                for s in range(wo):
                    out[i, ch, r, s] = np.sum(xp[i, ch, r * stride : r * stride + k, s * stride : s * stride + k] * w[ch, 0])
    return out


def _dw_flipped(x, w, stride=1, padding=0):  # a true convolution: kernel flipped
    return _dw_loops(x, w[:, :, ::-1, ::-1], stride, padding)


def _dw_ignores_stride(x, w, stride=1, padding=0):
    return _dw_loops(x, w, 1, padding)


def _dw_ceil_size(x, w, stride=1, padding=0):  # ceil instead of floor: one extra row/column on strided cases
    out = _dw_loops(x, w, stride, padding)
    h, k = x.shape[2], w.shape[-1]
    if (h + 2 * padding - k) % stride:
        out = np.concatenate([out, out[:, :, -1:]], axis=2)
    return out


def _dw_pads_one_side(x, w, stride=1, padding=0):  # pads only bottom/right
    xp = np.pad(x, ((0, 0), (0, 0), (0, 2 * padding), (0, 2 * padding)))
    return _dw_loops(xp, w, stride, 0)


def _dw_sums_channels(x, w, stride=1, padding=0):  # a dense conv with all channels sharing one filter set
    out = _dw_loops(x, w, stride, padding)
    return np.repeat(out.sum(axis=1, keepdims=True), x.shape[1], axis=1)


def _dw_in_place(x, w, stride=1, padding=0):  # standardises x in place first
    out = _dw_loops(x, w, stride, padding)
    x -= x.mean()
    return out


def _dw_transposed_kernel(x, w, stride=1, padding=0):  # w[c, 0].T per channel
    return _dw_loops(x, np.swapaxes(w, 2, 3), stride, padding)


DW_WRONG = [_dw_flipped, _dw_ignores_stride, _dw_ceil_size, _dw_pads_one_side, _dw_sums_channels, _dw_in_place, _dw_transposed_kernel]
DW_RIGHT = [_dw_torch, _dw_loops]

# ----------------------------------------------------------------------------- conv_macs


def _macs_reference(c_in, c_out, kernel, height, width, stride=1, padding=0, groups=1):
    return A.conv2d_macs(c_in, c_out, kernel, height, width, stride, padding, groups)


def _macs_float(c_in, c_out, kernel, height, width, stride=1, padding=0, groups=1):  # float arithmetic, whole result
    h = np.floor((height + 2 * padding - kernel) / stride) + 1
    w = np.floor((width + 2 * padding - kernel) / stride) + 1
    return float(c_out * h * w * c_in / groups * kernel**2)


def _macs_per_group_loop(c_in, c_out, kernel, height, width, stride=1, padding=0, groups=1):
    h, w = (height + 2 * padding - kernel) // stride + 1, (width + 2 * padding - kernel) // stride + 1
    return sum((c_in // groups) * (c_out // groups) * kernel * kernel * h * w for _ in range(groups))


def _macs_no_groups(c_in, c_out, kernel, height, width, stride=1, padding=0, groups=1):
    return _macs_reference(c_in, c_out, kernel, height, width, stride, padding, 1)


def _macs_groups_twice(c_in, c_out, kernel, height, width, stride=1, padding=0, groups=1):
    return _macs_reference(c_in, c_out, kernel, height, width, stride, padding, groups) // groups


def _macs_input_size(c_in, c_out, kernel, height, width, stride=1, padding=0, groups=1):  # H x W of the input
    return c_out * height * width * (c_in // groups) * kernel * kernel


def _macs_ceil(c_in, c_out, kernel, height, width, stride=1, padding=0, groups=1):
    h, w = -(-(height + 2 * padding - kernel) // stride) + 1, -(-(width + 2 * padding - kernel) // stride) + 1
    return c_out * h * w * (c_in // groups) * kernel * kernel


def _macs_kernel_once(c_in, c_out, kernel, height, width, stride=1, padding=0, groups=1):  # k instead of k^2
    return _macs_reference(c_in, c_out, kernel, height, width, stride, padding, groups) // kernel


def _macs_no_stride(c_in, c_out, kernel, height, width, stride=1, padding=0, groups=1):
    return _macs_reference(c_in, c_out, kernel, height, width, 1, padding, groups)


MACS_WRONG = [_macs_no_groups, _macs_groups_twice, _macs_input_size, _macs_ceil, _macs_kernel_once, _macs_no_stride]
MACS_RIGHT = [_macs_float, _macs_per_group_loop]

# ----------------------------------------------------------------------------- channel_shuffle


def _shuffle_reference(x, groups):
    return A.channel_shuffle(x, groups)


def _shuffle_index(x, groups):  # explicit permutation
    c = x.shape[1]
    return x[:, [(i % groups) * (c // groups) + i // groups for i in range(c)]]


def _shuffle_torch(x, groups):
    n, c, h, w = x.shape
    return torch.from_numpy(x).view(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


def _shuffle_inverse(x, groups):  # reshape (N, C/g, g, ...) first: the inverse permutation
    n, c, h, w = x.shape
    return x.reshape(n, c // groups, groups, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)


def _shuffle_no_transpose(x, groups):
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).reshape(n, c, h, w)


def _shuffle_reversed(x, groups):  # reverses the channels instead
    return x[:, ::-1]


def _shuffle_wrong_axis(x, groups):  # transposes the batch axis with the group axis
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, groups, c // groups, h, w).transpose(1, 0, 2, 3, 4)).reshape(n, c, h, w)


def _shuffle_in_place(x, groups):
    x[:] = _shuffle_index(x.copy(), groups)
    return x


SHUFFLE_WRONG = [_shuffle_inverse, _shuffle_no_transpose, _shuffle_reversed, _shuffle_wrong_axis, _shuffle_in_place]
SHUFFLE_RIGHT = [_shuffle_index, _shuffle_torch]

# ----------------------------------------------------------------------------- inverted_residual


def _ir_reference(c_in, c_out, expand, stride):
    return A.InvertedResidual(c_in, c_out, expand, stride)


class _IRSequential(nn.Module):  # written differently: a flat list of layers and an explicit flag
    def __init__(self, c_in, c_out, expand, stride, last_act=None, residual="auto", dw_groups=True, stride_on="dw", act=nn.ReLU6):
        super().__init__()
        hidden = c_in * expand
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, stride=stride if stride_on == "expand" else 1, bias=False), nn.BatchNorm2d(hidden), act()]
        dw_stride = stride if stride_on == "dw" else 1
        layers += [nn.Conv2d(hidden, hidden, 3, dw_stride, 1, groups=hidden if dw_groups else 1, bias=False), nn.BatchNorm2d(hidden), act()]
        layers += [nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        if last_act is not None:
            layers.append(last_act())
        self.body = nn.ModuleList(layers)
        self.use_shortcut = (stride == 1 and c_in == c_out) if residual == "auto" else residual

    def forward(self, x):
        y = x
        for layer in self.body:
            y = layer(y)
        return x + y if self.use_shortcut else y


def _ir_alternative(c_in, c_out, expand, stride):
    return _IRSequential(c_in, c_out, expand, stride)


class _IRFunctional(nn.Module):  # named attributes, functional clamp instead of ReLU6 modules, float64-safe
    def __init__(self, c_in, c_out, expand, stride):
        super().__init__()
        hidden = c_in * expand
        self.expand = nn.Conv2d(c_in, hidden, 1, bias=False) if expand != 1 else None
        self.bn_expand = nn.BatchNorm2d(hidden) if expand != 1 else None
        self.dw = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn_dw = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, c_out, 1, bias=False)
        self.bn_project = nn.BatchNorm2d(c_out)
        self.shortcut = stride == 1 and c_in == c_out

    def forward(self, x):
        y = x if self.expand is None else torch.clamp(self.bn_expand(self.expand(x)), 0.0, 6.0)
        y = torch.clamp(self.bn_dw(self.dw(y)), 0.0, 6.0)
        y = self.bn_project(self.project(y))
        return y + x if self.shortcut else y


def _ir_functional(c_in, c_out, expand, stride):
    return _IRFunctional(c_in, c_out, expand, stride)


def _ir_relu_after_projection(c_in, c_out, expand, stride):
    return _IRSequential(c_in, c_out, expand, stride, last_act=nn.ReLU6)


def _ir_no_shortcut(c_in, c_out, expand, stride):
    return _IRSequential(c_in, c_out, expand, stride, residual=False)


def _ir_always_shortcut(c_in, c_out, expand, stride):  # adds x even when shapes differ -> error
    return _IRSequential(c_in, c_out, expand, stride, residual=True)


def _ir_dense_3x3(c_in, c_out, expand, stride):
    return _IRSequential(c_in, c_out, expand, stride, dw_groups=False)


def _ir_stride_on_expand(c_in, c_out, expand, stride):
    return _IRSequential(c_in, c_out, expand, stride, stride_on="expand" if expand != 1 else "dw")


def _ir_plain_relu(c_in, c_out, expand, stride):
    return _IRSequential(c_in, c_out, expand, stride, act=nn.ReLU)


def _ir_expands_at_one(c_in, c_out, expand, stride):  # keeps the expand conv when expand == 1
    block = _IRSequential(c_in, c_out, max(expand, 2), stride) if expand == 1 else _IRSequential(c_in, c_out, expand, stride)
    return block


IR_WRONG = [
    _ir_relu_after_projection,
    _ir_no_shortcut,
    _ir_always_shortcut,
    _ir_dense_3x3,
    _ir_stride_on_expand,
    _ir_plain_relu,
    _ir_expands_at_one,
]
IR_RIGHT = [_ir_alternative, _ir_functional]


CHECK_CASES = {
    "check_depthwise_conv2d": (_dw_reference, DW_WRONG, None),
    "check_conv_macs": (_macs_reference, MACS_WRONG, None),
    "check_channel_shuffle": (_shuffle_reference, SHUFFLE_WRONG, None),
    "check_inverted_residual": (_ir_reference, IR_WRONG, None),
}

RIGHT = {
    "check_depthwise_conv2d": DW_RIGHT,
    "check_conv_macs": MACS_RIGHT,
    "check_channel_shuffle": SHUFFLE_RIGHT,
    "check_inverted_residual": IR_RIGHT,
}


@pytest.mark.parametrize(("name", "index"), [(n, i) for n in RIGHT for i in range(len(RIGHT[n]))])
def test_correct_alternative_passes(name: str, index: int, capsys: pytest.CaptureFixture) -> None:
    getattr(checks, name)(RIGHT[name][index])
    assert capsys.readouterr().out.startswith(f"PASSED {name}")


def test_every_check_has_four_wrong_answers_and_two_right_ones() -> None:
    for name, (_, wrong, _) in CHECK_CASES.items():
        assert len(wrong) >= 4, name
        assert len(RIGHT[name]) >= 2, name  # besides the reference


def test_in_place_mutation_is_named() -> None:
    for name, fn in (("check_depthwise_conv2d", _dw_in_place), ("check_channel_shuffle", _shuffle_in_place)):
        with pytest.raises(checks.CheckFailure, match="in place"):
            getattr(checks, name)(fn)


def test_flipped_kernel_gets_the_cross_correlation_hint() -> None:
    with pytest.raises(checks.CheckFailure, match="do not flip"):
        checks.check_depthwise_conv2d(_dw_flipped)


def test_relu_after_the_projection_is_caught_by_the_outputs() -> None:
    with pytest.raises(checks.CheckFailure, match="NO activation after the projection"):
        checks.check_inverted_residual(_ir_relu_after_projection)
