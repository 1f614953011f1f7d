"""Compact architectures: depthwise-separable, grouped and shuffled convolutions, inverted residuals.

Chapter 09 builds these in its notebook; the reference versions live here:

- numpy convolutions: :func:`im2col`, :func:`depthwise_conv2d`, :func:`pointwise_conv2d`,
  :func:`grouped_conv2d` (equal to ``torch.nn.functional.conv2d`` with ``groups=``);
- cost formulas: :func:`conv2d_macs` (equal to the hook counter of :mod:`helpers.metrics`) and
  :func:`separable_cost_ratio`, the ``1/N + 1/k^2`` of Howard et al. 2017;
- :func:`channel_shuffle` (a reshape-transpose) and the permutation it applies, :func:`shuffle_permutation`;
- blocks: :class:`DepthwiseSeparable` (MobileNet), :class:`ShuffleUnit` (ShuffleNet v1) and
  :class:`InvertedResidual` (MobileNetV2's linear bottleneck);
- the small MNIST nets of the chapter, :class:`MobileNetMNIST` and :class:`ShuffleNetMNIST`;
- compression of a compact net: :func:`fold_batchnorm` and real int8 weight files
  (:func:`int8_weight_bytes`, :func:`load_int8_weights`).

Arrays are ``(N, C, H, W)``; kernels ``(C_out, C_in / groups, k, k)``, as in PyTorch.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- validation


def _positive_int(name: str, value: object, low: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _array4(name: str, value: object) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(value).__name__}")
    if value.ndim != 4:
        raise ValueError(f"{name} must have 4 dimensions (N, C, H, W) / (C_out, C_in/groups, k, k), got shape {value.shape}")
    if value.size == 0:
        raise ValueError(f"{name} is empty (shape {value.shape})")
    return value


# ----------------------------------------------------------------------------- sizes and costs


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output height (or width) of a convolution: ``floor((size + 2 padding - kernel) / stride) + 1``."""
    size, kernel, stride = _positive_int("size", size), _positive_int("kernel", kernel), _positive_int("stride", stride)
    padding = _positive_int("padding", padding, 0)
    if size + 2 * padding < kernel:
        raise ValueError(f"kernel {kernel} is larger than the padded input {size} + 2 x {padding}")
    return (size + 2 * padding - kernel) // stride + 1


def conv2d_macs(c_in: int, c_out: int, kernel: int, height: int, width: int, stride: int = 1, padding: int = 0, groups: int = 1) -> int:
    """Multiply-accumulates of one Conv2d on one (c_in, height, width) image.

    Every one of the ``c_out x H' x W'`` outputs sums ``(c_in / groups) x k x k`` products, so
    ``MACs = c_out * H' * W' * (c_in / groups) * k^2``. Depthwise is ``groups = c_in = c_out``.
    """
    c_in, c_out, groups = _positive_int("c_in", c_in), _positive_int("c_out", c_out), _positive_int("groups", groups)
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide c_in={c_in} and c_out={c_out}")
    h_out = conv_output_size(height, kernel, stride, padding)
    w_out = conv_output_size(width, kernel, stride, padding)
    return c_out * h_out * w_out * (c_in // groups) * kernel * kernel


def separable_cost_ratio(c_out: int, kernel: int) -> float:
    """MACs of a depthwise-separable conv over a standard one with the same shapes: ``1/c_out + 1/k^2``.

    Standard: ``k^2 M N H W``; depthwise ``k^2 M H W`` plus pointwise ``M N H W`` (M inputs, N outputs,
    stride 1, 'same' padding), so the ratio is ``(k^2 + N) / (k^2 N) = 1/N + 1/k^2`` (Howard et al. 2017).
    """
    return 1.0 / _positive_int("c_out", c_out) + 1.0 / _positive_int("kernel", kernel) ** 2


# ----------------------------------------------------------------------------- numpy convolutions


def im2col(x: np.ndarray, kernel: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Patches of ``x`` (N, C, H, W) as an array (N, C, k*k, H'*W'): ``cols[n, c, i*k + j, p]`` is the
    input value under kernel tap (i, j) of channel c at output position p (row-major over H', W')."""
    x = _array4("x", x)
    n, c, h, w = x.shape
    h_out, w_out = conv_output_size(h, kernel, stride, padding), conv_output_size(w, kernel, stride, padding)
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = np.empty((n, c, kernel * kernel, h_out * w_out), dtype=x.dtype)
    for i in range(kernel):
        for j in range(kernel):
            patch = padded[:, :, i : i + stride * h_out : stride, j : j + stride * w_out : stride]
            cols[:, :, i * kernel + j, :] = patch.reshape(n, c, -1)
    return cols


def grouped_conv2d(
    x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, stride: int = 1, padding: int = 0, groups: int = 1
) -> np.ndarray:
    """``conv2d`` in numpy with ``groups``: output channels of group g see only input channels of group g.

    x (N, C_in, H, W), w (C_out, C_in / groups, k, k), bias (C_out,) or None -> (N, C_out, H', W').
    """
    x, w = _array4("x", x), _array4("w", w)
    groups = _positive_int("groups", groups)
    n, c_in, h, width = x.shape
    c_out, per_group_in, k, k2 = w.shape
    if k != k2:
        raise ValueError(f"w must have a square kernel, got {k}x{k2}")
    if c_in % groups or c_out % groups or per_group_in != c_in // groups:
        raise ValueError(
            f"groups={groups} does not fit x with {c_in} channels and w of shape {w.shape} (needs C_in / groups = {w.shape[1]})"
        )
    h_out, w_out = conv_output_size(h, k, stride, padding), conv_output_size(width, k, stride, padding)
    cols = im2col(x, k, stride, padding).reshape(n, groups, per_group_in * k * k, h_out * w_out)
    wg = w.reshape(groups, c_out // groups, per_group_in * k * k)
    out = np.einsum("gok,ngkp->ngop", wg, cols).reshape(n, c_out, h_out, w_out)
    if bias is not None:
        out = out + np.asarray(bias).reshape(1, -1, 1, 1)
    return out


def depthwise_conv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Depthwise convolution by im2col: channel c of the output is channel c of ``x`` convolved with ``w[c, 0]``.

    x (N, C, H, W), w (C, 1, k, k), bias (C,) or None -> (N, C, H', W'); equals ``F.conv2d(..., groups=C)``.
    """
    x, w = _array4("x", x), _array4("w", w)
    if w.shape[1] != 1 or w.shape[0] != x.shape[1]:
        raise ValueError(f"w must have shape (C, 1, k, k) with C = {x.shape[1]} channels of x, got {w.shape}")
    k = w.shape[2]
    n, c = x.shape[:2]
    h_out, w_out = conv_output_size(x.shape[2], k, stride, padding), conv_output_size(x.shape[3], k, stride, padding)
    cols = im2col(x, k, stride, padding)  # (N, C, k*k, P)
    out = np.einsum("ck,nckp->ncp", w.reshape(c, k * k), cols).reshape(n, c, h_out, w_out)
    if bias is not None:
        out = out + np.asarray(bias).reshape(1, -1, 1, 1)
    return out


def pointwise_conv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """1x1 convolution: a matrix product over channels at every pixel. x (N, C_in, H, W), w (C_out, C_in, 1, 1)."""
    x, w = _array4("x", x), _array4("w", w)
    if w.shape[2:] != (1, 1) or w.shape[1] != x.shape[1]:
        raise ValueError(f"w must have shape (C_out, {x.shape[1]}, 1, 1), got {w.shape}")
    out = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x)
    if bias is not None:
        out = out + np.asarray(bias).reshape(1, -1, 1, 1)
    return out


# ----------------------------------------------------------------------------- channel shuffle


def shuffle_permutation(channels: int, groups: int) -> np.ndarray:
    """The permutation of :func:`channel_shuffle`: output channel i is input channel ``perm[i]``.

    With ``m = channels / groups`` channels per group, output ``i = a * groups + b`` takes channel
    ``a`` of group ``b``: ``perm[i] = (i % groups) * m + i // groups``.
    """
    channels, groups = _positive_int("channels", channels), _positive_int("groups", groups)
    if channels % groups:
        raise ValueError(f"groups={groups} must divide channels={channels}")
    i = np.arange(channels)
    return (i % groups) * (channels // groups) + i // groups


def channel_shuffle(x: torch.Tensor | np.ndarray, groups: int) -> torch.Tensor | np.ndarray:
    """ShuffleNet's channel shuffle (Zhang et al. 2018): reshape (N, g, C/g, H, W), swap the two channel axes, flatten.

    After it, every group of the next grouped convolution holds channels from every group of the previous one.
    Works on torch tensors and numpy arrays of shape (N, C, H, W); returns a new tensor / array.
    """
    groups = _positive_int("groups", groups)
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise TypeError(f"x must be a torch tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    n, c, h, w = x.shape
    if c % groups:
        raise ValueError(f"groups={groups} must divide the {c} channels of x")
    if isinstance(x, torch.Tensor):
        return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
    return x.reshape(n, groups, c // groups, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w).copy()


class ChannelShuffle(nn.Module):
    """:func:`channel_shuffle` as a layer."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = _positive_int("groups", groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


# ----------------------------------------------------------------------------- blocks


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]


class DepthwiseSeparable(nn.Sequential):
    """MobileNet's block: 3x3 depthwise conv (stride s) -> BN -> ReLU -> 1x1 pointwise conv -> BN -> ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        c_in, c_out, stride = _positive_int("c_in", c_in), _positive_int("c_out", c_out), _positive_int("stride", stride)
        super().__init__(*_conv_bn(c_in, c_in, 3, stride, groups=c_in), nn.ReLU(), *_conv_bn(c_in, c_out, 1), nn.ReLU())


class InvertedResidual(nn.Module):
    """MobileNetV2's block (Sandler et al. 2018): 1x1 expand (x ``expand``) -> BN -> ReLU6 -> 3x3 depthwise (stride s)
    -> BN -> ReLU6 -> 1x1 project -> BN, with NO activation after the projection (the linear bottleneck), and
    the input added back when ``stride == 1`` and ``c_in == c_out``. ``expand == 1`` skips the expansion conv.

    ``self.layers`` is the nn.Sequential of the residual branch; ``self.residual`` says whether x is added.
    """

    def __init__(self, c_in: int, c_out: int, expand: int = 6, stride: int = 1) -> None:
        super().__init__()
        c_in, c_out, expand = _positive_int("c_in", c_in), _positive_int("c_out", c_out), _positive_int("expand", expand)
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(c_in, hidden, 1), nn.ReLU6()]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(), *_conv_bn(hidden, c_out, 1)]
        self.layers = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, c_in, H, W) -> (N, c_out, H / stride, W / stride)."""
        out = self.layers(x)
        return x + out if self.residual else out


class ShuffleUnit(nn.Module):
    """ShuffleNet v1's unit (Zhang et al. 2018): grouped 1x1 -> BN -> ReLU -> channel shuffle -> 3x3 depthwise
    (stride s) -> BN -> grouped 1x1 -> BN, bottleneck width ``c_out / 4``.

    Stride 1 (``c_in == c_out``): ``relu(x + branch(x))``. Stride 2: the branch makes ``c_out - c_in`` channels and is
    concatenated with a 3x3 average pool (stride 2) of x, then ReLU, so the unit doubles channels cheaply.
    """

    def __init__(self, c_in: int, c_out: int, groups: int = 2, stride: int = 1) -> None:
        super().__init__()
        c_in, c_out, groups = _positive_int("c_in", c_in), _positive_int("c_out", c_out), _positive_int("groups", groups)
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        if stride == 1 and c_in != c_out:
            raise ValueError(f"a stride-1 unit adds x back, so c_in must equal c_out, got {c_in} and {c_out}")
        branch_out = c_out if stride == 1 else c_out - c_in
        mid = c_out // 4
        if branch_out < 1 or c_in % groups or mid % groups or branch_out % groups:
            raise ValueError(f"groups={groups} must divide c_in={c_in}, c_out/4={mid} and the branch's {branch_out} outputs")
        self.stride = stride
        self.branch = nn.Sequential(
            *_conv_bn(c_in, mid, 1, groups=groups),
            nn.ReLU(),
            ChannelShuffle(groups),
            *_conv_bn(mid, mid, 3, stride, groups=mid),
            *_conv_bn(mid, branch_out, 1, groups=groups),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, c_in, H, W) -> (N, c_out, H / stride, W / stride)."""
        if self.stride == 1:
            return F.relu(x + self.branch(x))
        return F.relu(torch.cat([F.avg_pool2d(x, 3, stride=2, padding=1), self.branch(x)], dim=1))


# ----------------------------------------------------------------------------- the chapter's MNIST nets


def scaled(channels: int, width: float, divisor: int = 1) -> int:
    """``channels * width`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``): the width multiplier."""
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
        raise ValueError(f"width must be a number > 0, got {width!r}")
    divisor = _positive_int("divisor", divisor)
    return max(divisor, int(round(channels * width / divisor)) * divisor)


class MobileNetMNIST(nn.Module):
    """A MobileNet-style net for 28x28 digits: 3x3 conv (stride 2) -> 3 depthwise-separable blocks -> global
    average pool -> fc. Channels 16, 32, 64, 64 times the width multiplier ``width``.

    Fully convolutional up to the pooling, so any input size (the resolution multiplier) works.
    """

    def __init__(self, width: float = 1.0, num_classes: int = 10) -> None:
        super().__init__()
        c0, c1, c2 = scaled(16, width), scaled(32, width), scaled(64, width)
        self.stem = nn.Sequential(*_conv_bn(1, c0, 3, 2), nn.ReLU())  # 28 -> 14
        self.blocks = nn.Sequential(DepthwiseSeparable(c0, c1, 1), DepthwiseSeparable(c1, c2, 2), DepthwiseSeparable(c2, c2, 1))  # 14 -> 7
        self.fc = nn.Linear(c2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) -> logits (N, num_classes)."""
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class ShuffleNetMNIST(nn.Module):
    """A ShuffleNet-style net for 28x28 digits: 3x3 conv 1 -> 24 (stride 2) -> a stride-2 ShuffleUnit to 48 channels ->
    two stride-1 units -> global average pool -> fc (channels times ``width``, kept divisible by 4 x ``groups``)."""

    def __init__(self, groups: int = 2, width: float = 1.0, num_classes: int = 10) -> None:
        super().__init__()
        groups = _positive_int("groups", groups)
        c0 = scaled(24, width, 4 * groups)
        c1 = 2 * c0
        self.stem = nn.Sequential(*_conv_bn(1, c0, 3, 2), nn.ReLU())  # 28 -> 14
        self.units = nn.Sequential(ShuffleUnit(c0, c1, groups, 2), ShuffleUnit(c1, c1, groups, 1), ShuffleUnit(c1, c1, groups, 1))  # -> 7
        self.fc = nn.Linear(c1, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) -> logits (N, num_classes)."""
        return self.fc(self.units(self.stem(x)).mean(dim=(2, 3)))


# ----------------------------------------------------------------------------- compression of a compact net


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every BatchNorm2d that directly follows a Conv2d inside an
    nn.Sequential folded into that conv (``w' = w * gamma / sqrt(var + eps)``, ``b' = beta + (b - mean) * gamma /
    sqrt(var + eps)``) and replaced by nn.Identity. Outputs are unchanged up to float rounding."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module._modules.items())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * scale)
                module._modules[bn_name] = nn.Identity()
    return folded


def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@torch.no_grad()
def int8_weight_bytes(model: nn.Module, per_channel: bool = True) -> bytes:
    """The weights of every Conv2d / Linear of ``model`` as a real file: int8 codes (symmetric, one scale per
    output channel, or one per tensor when ``per_channel=False``), float32 scales and float32 biases, in an
    ``np.savez`` archive (no pickle). Other state (e.g. BatchNorm) is not stored: fold it first
    (:func:`fold_batchnorm`). :func:`load_int8_weights` reads it back."""
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel must be a bool, got {type(per_channel).__name__}")
    layers = _weight_layers(model)
    if not layers:
        raise ValueError("model has no Conv2d or Linear layer")
    arrays: dict[str, np.ndarray] = {}
    for name, layer in layers:
        w = layer.weight.detach().cpu().double().numpy()
        flat = w.reshape(w.shape[0], -1)
        peak = np.abs(flat).max(axis=1) if per_channel else np.full(w.shape[0], np.abs(flat).max())
        scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        codes = np.clip(np.rint(flat / scales[:, None].astype(np.float64)), -127, 127).astype(np.int8).reshape(w.shape)
        arrays[f"{name}.codes"] = codes
        arrays[f"{name}.scales"] = scales if per_channel else scales[:1]
        if layer.bias is not None:
            arrays[f"{name}.bias"] = layer.bias.detach().cpu().numpy().astype(np.float32)
    return _savez_bytes(arrays)


def _savez_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes of an ``np.savez`` file holding ``arrays`` (what would be written to disk)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@torch.no_grad()
def fp32_weight_bytes(model: nn.Module) -> bytes:
    """The float32 weights and biases of every Conv2d / Linear of ``model`` in the same ``np.savez`` container
    as :func:`int8_weight_bytes` (same array names, no scales): the fair float reference for its size, so that
    a size ratio between the two measures int8 alone, not a change of file format or of what is stored."""
    layers = _weight_layers(model)
    if not layers:
        raise ValueError("model has no Conv2d or Linear layer")
    arrays: dict[str, np.ndarray] = {}
    for name, layer in layers:
        arrays[f"{name}.float"] = layer.weight.detach().cpu().numpy().astype(np.float32)
        if layer.bias is not None:
            arrays[f"{name}.bias"] = layer.bias.detach().cpu().numpy().astype(np.float32)
    return _savez_bytes(arrays)


@torch.no_grad()
def load_int8_weights(model: nn.Module, data: bytes) -> nn.Module:
    """A copy of ``model`` whose Conv2d / Linear weights (and biases) are the dequantized contents of ``data``
    (written by :func:`int8_weight_bytes` from a model of the same structure)."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    restored = copy.deepcopy(model).eval()
    with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as archive:
        for name, layer in _weight_layers(restored):
            if f"{name}.codes" not in archive:
                raise ValueError(f"data holds no weights for layer {name!r}: was it written from a model of this structure?")
            codes, scales = archive[f"{name}.codes"], archive[f"{name}.scales"]
            if codes.shape != tuple(layer.weight.shape):
                raise ValueError(f"layer {name!r}: stored codes have shape {codes.shape}, the layer {tuple(layer.weight.shape)}")
            scale = scales.reshape(-1, *([1] * (codes.ndim - 1))).astype(np.float32)
            layer.weight.copy_(torch.from_numpy(codes.astype(np.float32) * scale))
            if f"{name}.bias" in archive:
                if layer.bias is None:
                    layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0]))
                layer.bias.copy_(torch.from_numpy(archive[f"{name}.bias"]))
    return restored


__all__ = [
    "ChannelShuffle",
    "DepthwiseSeparable",
    "InvertedResidual",
    "MobileNetMNIST",
    "ShuffleNetMNIST",
    "ShuffleUnit",
    "channel_shuffle",
    "conv2d_macs",
    "conv_output_size",
    "fp32_weight_bytes",
    "depthwise_conv2d",
    "fold_batchnorm",
    "grouped_conv2d",
    "im2col",
    "int8_weight_bytes",
    "load_int8_weights",
    "pointwise_conv2d",
    "scaled",
    "separable_cost_ratio",
    "shuffle_permutation",
]
