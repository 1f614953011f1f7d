"""Pruning: masks (magnitude, global, random, Taylor scores, N:M), schedules, structured shrinking, sparse formats.

Conventions: a mask is boolean with the shape of its weight, True = keep. ``sparsity`` is the
fraction of entries pruned, in [0, 1]. Functions accept a numpy array or a torch tensor and
return the same kind.

Tie rule (every mask here): exactly ``k = round(sparsity * size)`` entries are pruned (Python's
``round``), those with the smallest scores; among equal scores the entry with the lower flat
index is pruned first. So every kept score is >= every pruned score, and the result never
depends on the sort algorithm.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

Array = np.ndarray | torch.Tensor


# ----------------------------------------------------------------------------- validation


def _check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1], got {sparsity!r}")
    if not 0.0 <= float(sparsity) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {sparsity!r}")
    return float(sparsity)


def _check_array(w: Array, name: str = "w") -> None:
    if not isinstance(w, (np.ndarray, torch.Tensor)):
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(w).__name__}")
    if w.size == 0 if isinstance(w, np.ndarray) else w.numel() == 0:
        raise ValueError(f"{name} is empty")


def _to_numpy(w: Array) -> np.ndarray:
    return w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)


def _like(mask: np.ndarray, w: Array) -> Array:
    return torch.from_numpy(mask).to(w.device) if isinstance(w, torch.Tensor) else mask


# ----------------------------------------------------------------------------- unstructured masks


def mask_from_scores(scores: Array, sparsity: float) -> Array:
    """Keep the entries with the highest ``scores``; prune ``round(sparsity * size)`` (see the tie rule)."""
    _check_array(scores, "scores")
    sparsity = _check_sparsity(sparsity)
    s = _to_numpy(scores).astype(np.float64)
    k = round(sparsity * s.size)
    order = np.argsort(s.ravel(), kind="stable")  # ascending; equal scores keep index order
    mask = np.ones(s.size, dtype=bool)
    mask[order[:k]] = False
    return _like(mask.reshape(s.shape), scores)


def magnitude_mask(w: Array, sparsity: float) -> Array:
    """Boolean mask (True = keep) pruning the ``round(sparsity * w.size)`` smallest ``|w|``.

    Ties at the threshold: the lower flat index is pruned first. ``sparsity`` in [0, 1].
    Same kind (numpy / torch) and shape as ``w``.
    """
    _check_array(w)
    return mask_from_scores(np.abs(_to_numpy(w)) if isinstance(w, np.ndarray) else w.detach().abs(), sparsity)


def random_mask(w: Array, sparsity: float, seed: int = 0) -> Array:
    """A mask pruning a uniformly random ``round(sparsity * w.size)`` entries (a baseline criterion)."""
    _check_array(w)
    scores = np.random.default_rng(seed).random(tuple(w.shape))
    return _like(_to_numpy(mask_from_scores(scores, sparsity)), w)


def taylor_scores(w: Array, grad: Array) -> Array:
    """First-order Taylor importance ``|w * dL/dw|``: the loss change estimated for removing each weight."""
    _check_array(w)
    _check_array(grad, "grad")
    if tuple(w.shape) != tuple(grad.shape):
        raise ValueError(f"w and grad must have the same shape, got {tuple(w.shape)} and {tuple(grad.shape)}")
    return (w * grad).abs() if isinstance(w, torch.Tensor) else np.abs(w * grad)


def accumulate_taylor_scores(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{layer: mean over batches of (w * dL_b/dw)**2}`` for every prunable weight of ``model``.

    ``batches`` yields ``(x, y)`` pairs; ``L_b`` is the mean cross-entropy of batch b. The model's
    weights are not changed; its ``.grad`` fields are left cleared (None). Scores have each weight's shape.
    """
    import torch.nn.functional as F

    weights = prunable_weights(model)
    totals = {name: torch.zeros_like(w, dtype=torch.float64) for name, w in weights.items()}
    count = 0
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            F.cross_entropy(model(x), y).backward()
        for name, w in weights.items():
            totals[name] += (w.detach().double() * w.grad.double()) ** 2
        count += 1
    model.zero_grad(set_to_none=True)
    if count == 0:
        raise ValueError("batches is empty")
    return {name: (total / count).to(weights[name].dtype) for name, total in totals.items()}


def global_magnitude_masks(weights: Mapping[str, Array], sparsity: float) -> dict[str, Array]:
    """One magnitude threshold across all layers: prune ``round(sparsity * total)`` smallest ``|w|`` overall.

    Ties are broken by position in the concatenation (the dict's order, then flat index): the
    earlier entry is pruned first. Layers may end up with very different sparsities.
    """
    if not weights:
        raise ValueError("weights is empty")
    for name, w in weights.items():
        _check_array(w, f"weights[{name!r}]")
    flat = np.concatenate([np.abs(_to_numpy(w)).ravel().astype(np.float64) for w in weights.values()])
    keep = _to_numpy(mask_from_scores(flat, sparsity))
    masks, start = {}, 0
    for name, w in weights.items():
        size = int(np.prod(tuple(w.shape)))
        masks[name] = _like(keep[start : start + size].reshape(tuple(w.shape)), w)
        start += size
    return masks


def nm_mask(w: Array, n: int = 2, m: int = 4) -> Array:
    """N:M mask: in every group of ``m`` consecutive weights along the input dimension, keep the ``n`` largest ``|w|``.

    For a Linear weight (out, in) the groups run along ``in``; for a conv weight (out, in, kh, kw)
    they run along ``in`` at each kernel position (as sparse tensor cores require). Ties: lower
    index pruned first. ``in`` must be divisible by ``m``.
    """
    _check_array(w)
    for name, value in (("n", n), ("m", m)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if n > m:
        raise ValueError(f"n must be <= m, got n={n}, m={m}")
    a = np.abs(_to_numpy(w)).astype(np.float64)
    if a.ndim == 4:
        a = a.transpose(0, 2, 3, 1)  # (out, kh, kw, in): groups along input channels
    elif a.ndim != 2:
        raise ValueError(f"w must be 2-d (Linear) or 4-d (Conv2d), got shape {tuple(w.shape)}")
    if a.shape[-1] % m:
        raise ValueError(f"the input dimension ({a.shape[-1]}) of w must be divisible by m={m}")
    groups = a.reshape(-1, m)
    order = np.argsort(groups, axis=1, kind="stable")  # ascending, lower index first among ties
    keep = np.ones_like(groups, dtype=bool)
    np.put_along_axis(keep, order[:, : m - n], False, axis=1)
    keep = keep.reshape(a.shape)
    if keep.ndim == 4:
        keep = keep.transpose(0, 3, 1, 2)
    return _like(np.ascontiguousarray(keep), w)


def gradual_sparsity(step: int, final_sparsity: float, begin_step: int, end_step: int, initial_sparsity: float = 0.0) -> float:
    """Zhu & Gupta (2017) cubic schedule: ``s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))**3``.

    ``initial_sparsity`` before ``begin_step``, ``final_sparsity`` from ``end_step`` on; it prunes
    fast early, while many redundant weights remain, and slowly near the end.
    """
    _check_sparsity(final_sparsity, "final_sparsity")
    _check_sparsity(initial_sparsity, "initial_sparsity")
    if not end_step > begin_step:
        raise ValueError(f"end_step must be > begin_step, got begin_step={begin_step}, end_step={end_step}")
    if step <= begin_step:
        return float(initial_sparsity)
    if step >= end_step:
        return float(final_sparsity)
    progress = (step - begin_step) / (end_step - begin_step)
    return float(final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3)


# ----------------------------------------------------------------------------- masks on a model


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights of a model's Linear and Conv2d layers, by module name (biases are not pruned)."""
    return {name: module.weight for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place: ``weight *= mask`` for each named layer."""
    layers = dict(model.named_modules())
    for name, mask in masks.items():
        if name not in layers or not hasattr(layers[name], "weight"):
            raise ValueError(f"masks names {name!r}, which is not a layer with a weight; layers: {sorted(prunable_weights(model))}")
        weight = layers[name].weight
        if tuple(mask.shape) != tuple(weight.shape):
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, the weight {tuple(weight.shape)}")
        weight.mul_(mask.to(weight.device, weight.dtype))


def keep_masks(masks: Mapping[str, torch.Tensor]) -> Callable[[nn.Module, int], None]:
    """An ``on_step`` callback for :func:`helpers.train.train` that re-applies ``masks`` after every step.

    Without it, momentum and weight decay bring pruned weights back to life.
    """

    def on_step(model: nn.Module, step: int) -> None:
        apply_masks(model, masks)

    return on_step


def sparsity_of(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros in each prunable weight, plus ``"total"`` over all of them."""
    weights = prunable_weights(model)
    report = {name: float((w == 0).float().mean()) for name, w in weights.items()}
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    report["total"] = zeros / sum(w.numel() for w in weights.values())
    return report


# ----------------------------------------------------------------------------- structured pruning


def channel_scores(weight: torch.Tensor, norm: str = "l1") -> torch.Tensor:
    """Importance of each output neuron / filter: the L1 or L2 norm of its weights (Li et al. 2017).

    ``weight`` is (out, in) or (out, in, kh, kw); returns (out,).
    """
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    flat = weight.detach().flatten(1)
    return flat.abs().sum(1) if norm == "l1" else flat.pow(2).sum(1).sqrt()


def top_channels(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Sorted indices of the ``keep`` highest scores (ties: the lower index wins, i.e. is kept)."""
    if not isinstance(keep, int) or not 1 <= keep <= len(scores):
        raise ValueError(f"keep must be an int in [1, {len(scores)}], got {keep!r}")
    order = np.argsort(-scores.detach().cpu().numpy().astype(np.float64), kind="stable")
    return torch.from_numpy(np.sort(order[:keep]))


def _new_like(layer: nn.Module, **sizes: int) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return nn.Linear(
            sizes.get("in_features", layer.in_features), sizes.get("out_features", layer.out_features), bias=layer.bias is not None
        )
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError("grouped convolutions are not supported here")
        return nn.Conv2d(
            sizes.get("in_channels", layer.in_channels),
            sizes.get("out_channels", layer.out_channels),
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            bias=layer.bias is not None,
        )
    raise TypeError(f"layer must be nn.Linear or nn.Conv2d, got {type(layer).__name__}")


@torch.no_grad()
def shrink_outputs(layer: nn.Module, keep: torch.Tensor) -> nn.Module:
    """A new, smaller Linear/Conv2d holding only the output neurons / filters ``keep``."""
    key = "out_features" if isinstance(layer, nn.Linear) else "out_channels"
    new = _new_like(layer, **{key: len(keep)})
    new.weight.copy_(layer.weight[keep])
    if layer.bias is not None:
        new.bias.copy_(layer.bias[keep])
    return new


@torch.no_grad()
def shrink_inputs(layer: nn.Module, keep: torch.Tensor, positions: int = 1) -> nn.Module:
    """A new Linear/Conv2d that reads only input channels ``keep``.

    ``positions`` handles a Linear layer after a flatten: each channel fed it ``positions``
    consecutive features (e.g. 4 x 4 = 16 for LeNet-5's fc1), all of which are kept or cut together.
    """
    if isinstance(layer, nn.Linear):
        features = (keep[:, None] * positions + torch.arange(positions)[None, :]).flatten()
        new = _new_like(layer, in_features=len(features))
        new.weight.copy_(layer.weight[:, features])
    else:
        if positions != 1:
            raise ValueError("positions applies to a Linear layer after a flatten")
        new = _new_like(layer, in_channels=len(keep))
        new.weight.copy_(layer.weight[:, keep])
    if layer.bias is not None:
        new.bias.copy_(layer.bias)
    return new


def shrink_pair(layer: nn.Module, successor: nn.Module, keep: torch.Tensor, positions: int = 1) -> tuple[nn.Module, nn.Module]:
    """Remove output channels of ``layer`` not in ``keep`` and the matching inputs of ``successor``.

    Only valid when everything between them (ReLU, max-pool, flatten) acts per channel.
    """
    return shrink_outputs(layer, keep), shrink_inputs(successor, keep, positions)


def shrink_lenet5(model: nn.Module, conv1: int, conv2: int, fc1: int, norm: str = "l1") -> nn.Module:
    """A physically smaller copy of a LeNet-5 keeping the ``conv1`` / ``conv2`` filters and ``fc1`` neurons of highest norm."""
    import copy

    small = copy.deepcopy(model)
    keep = top_channels(channel_scores(small.conv1.weight, norm), conv1)
    small.conv1, small.conv2 = shrink_pair(small.conv1, small.conv2, keep)
    keep = top_channels(channel_scores(small.conv2.weight, norm), conv2)
    spatial = small.fc1.in_features // model.conv2.out_channels
    small.conv2, small.fc1 = shrink_pair(small.conv2, small.fc1, keep, positions=spatial)
    keep = top_channels(channel_scores(small.fc1.weight, norm), fc1)
    small.fc1, small.fc2 = shrink_pair(small.fc1, small.fc2, keep)
    return small


def shrink_lenet300(model: nn.Module, fc1: int, fc2: int, norm: str = "l1") -> nn.Module:
    """A physically smaller copy of a LeNet-300-100 keeping the ``fc1`` and ``fc2`` neurons of highest norm."""
    import copy

    small = copy.deepcopy(model)
    keep = top_channels(channel_scores(small.fc1.weight, norm), fc1)
    small.fc1, small.fc2 = shrink_pair(small.fc1, small.fc2, keep)
    keep = top_channels(channel_scores(small.fc2.weight, norm), fc2)
    small.fc2, small.fc3 = shrink_pair(small.fc2, small.fc3, keep)
    return small


# ----------------------------------------------------------------------------- sparse storage


@dataclass
class CSR:
    """Compressed sparse row form of a 2-d matrix: nonzero ``values`` row by row, their column
    indices ``col_idx`` and ``row_ptr`` (length rows + 1) where row r owns ``values[row_ptr[r]:row_ptr[r+1]]``."""

    values: np.ndarray
    col_idx: np.ndarray
    row_ptr: np.ndarray
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return int(len(self.values))


def index_dtype(limit: int) -> np.dtype:
    """The smallest unsigned integer type that holds values up to ``limit``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if limit <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def csr_encode(dense: Array) -> CSR:
    """CSR of a 2-d array; indices use the smallest unsigned type that fits (uint8/16/32)."""
    _check_array(dense, "dense")
    a = _to_numpy(dense)
    if a.ndim != 2:
        raise ValueError(f"dense must be 2-d, got shape {a.shape}")
    rows, cols = np.nonzero(a)
    counts = np.bincount(rows, minlength=a.shape[0])
    row_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(index_dtype(len(rows)))
    return CSR(values=a[rows, cols].copy(), col_idx=cols.astype(index_dtype(a.shape[1] - 1)), row_ptr=row_ptr, shape=a.shape)


def csr_decode(csr: CSR) -> np.ndarray:
    """The dense matrix back from its CSR form."""
    dense = np.zeros(csr.shape, dtype=csr.values.dtype)
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.row_ptr.astype(np.int64)))
    dense[rows, csr.col_idx.astype(np.int64)] = csr.values
    return dense


def csr_nbytes(csr: CSR) -> int:
    """Bytes of the three arrays' payloads: values + column indices + row pointers (no header)."""
    return csr.values.nbytes + csr.col_idx.nbytes + csr.row_ptr.nbytes


def csr_to_bytes(csr: CSR) -> bytes:
    """A self-describing file image: a small header (shape, nnz, dtypes) then the three arrays."""
    header = struct.pack("<4sIII", b"CSR1", csr.shape[0], csr.shape[1], csr.nnz)
    dtypes = "|".join(str(a.dtype) for a in (csr.values, csr.col_idx, csr.row_ptr)).encode()
    buffer = io.BytesIO()
    buffer.write(header + struct.pack("<H", len(dtypes)) + dtypes)
    for array in (csr.values, csr.col_idx, csr.row_ptr):
        buffer.write(np.ascontiguousarray(array).tobytes())
    return buffer.getvalue()


def csr_from_bytes(data: bytes) -> CSR:
    """Inverse of :func:`csr_to_bytes`."""
    magic, rows, cols, nnz = struct.unpack_from("<4sIII", data, 0)
    if magic != b"CSR1":
        raise ValueError("data is not a CSR1 file image")
    (length,) = struct.unpack_from("<H", data, 16)
    dtypes = data[18 : 18 + length].decode().split("|")
    offset, arrays = 18 + length, []
    for dtype, count in zip(dtypes, (nnz, nnz, rows + 1)):
        array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        arrays.append(array.copy())
        offset += array.nbytes
    return CSR(arrays[0], arrays[1], arrays[2], (rows, cols))


def csr_matmul(csr: CSR, x: np.ndarray) -> np.ndarray:
    """``dense @ x`` computed from the CSR form, for x of shape (cols,) or (cols, k)."""
    counts = np.diff(csr.row_ptr.astype(np.int64))
    rows = np.repeat(np.arange(csr.shape[0]), counts)
    products = csr.values[:, None] * np.asarray(x).reshape(csr.shape[1], -1)[csr.col_idx.astype(np.int64)]
    out = np.zeros((csr.shape[0], products.shape[1]), dtype=np.result_type(csr.values, x))
    np.add.at(out, rows, products)
    return out.reshape(csr.shape[0], *np.asarray(x).shape[1:])


def relative_index_encode(dense: Array, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Deep Compression's relative indexing (Han et al. 2016) of a flattened array.

    Each nonzero is stored with the gap (distance) from the previous stored entry in ``bits``
    bits. A gap larger than ``2**bits - 1`` is bridged by filler entries: a zero value stored at
    the largest gap. Returns ``(values, gaps)``; the first gap counts from position -1.
    """
    _check_array(dense, "dense")
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in [1, 16], got {bits!r}")
    flat = _to_numpy(dense).ravel()
    max_gap = 2**bits - 1
    values, gaps = [], []
    previous = -1
    for position in np.flatnonzero(flat):
        gap = int(position - previous)
        while gap > max_gap:
            values.append(0)
            gaps.append(max_gap)
            gap -= max_gap
        values.append(flat[position])
        gaps.append(gap)
        previous = int(position)
    return np.asarray(values, dtype=flat.dtype), np.asarray(gaps, dtype=index_dtype(max_gap))


def relative_index_decode(values: np.ndarray, gaps: np.ndarray, size: int) -> np.ndarray:
    """The flat dense array back from :func:`relative_index_encode`'s output."""
    positions = np.cumsum(gaps.astype(np.int64)) - 1
    if len(positions) and positions[-1] >= size:
        raise ValueError(f"the gaps reach position {positions[-1]}, beyond size {size}")
    flat = np.zeros(size, dtype=values.dtype)
    flat[positions] = values
    return flat


def relative_index_nbytes(n_entries: int, bits: int, value_bits: int = 32) -> int:
    """Bytes of ``n_entries`` (value, gap) pairs packed at ``value_bits + bits`` bits each, rounded up."""
    return (n_entries * (value_bits + bits) + 7) // 8


# ----------------------------------------------------------------------------- N:M storage


def nm_pack(w: Array, n: int = 2, m: int = 4) -> tuple[np.ndarray, bytes]:
    """Compressed N:M storage of a 2-d weight (out, in): the ``n`` kept values of every group of ``m``
    along ``in`` (shape (out, in * n / m)) and their positions in the group, ``ceil(log2 m)`` bits
    each, bit-packed. This is the layout sparse tensor cores read (values + 2-bit metadata for 2:4)."""
    a = _to_numpy(w)
    if a.ndim != 2:
        raise ValueError(f"w must be 2-d (out, in), got shape {a.shape}; flatten a conv weight to (out, kh*kw*in) first")
    keep = _to_numpy(nm_mask(a, n, m)).reshape(-1, m)
    groups = a.reshape(-1, m)
    positions = np.nonzero(keep)[1].reshape(-1, n)  # row-major nonzero: ascending position within each group
    values = np.take_along_axis(groups, positions, axis=1).reshape(a.shape[0], -1)
    bits = max(1, int(np.ceil(np.log2(m))))
    bit_matrix = ((positions.reshape(-1, 1) >> np.arange(bits - 1, -1, -1)) & 1).astype(np.uint8)
    return values, np.packbits(bit_matrix.ravel()).tobytes()


def nm_unpack(values: np.ndarray, index_bytes: bytes, shape: tuple[int, int], n: int = 2, m: int = 4) -> np.ndarray:
    """The dense (out, in) matrix back from :func:`nm_pack`."""
    bits = max(1, int(np.ceil(np.log2(m))))
    groups = shape[0] * shape[1] // m
    stream = np.unpackbits(np.frombuffer(index_bytes, dtype=np.uint8))[: groups * n * bits].reshape(-1, bits)
    positions = (stream * (1 << np.arange(bits - 1, -1, -1))).sum(1).reshape(groups, n)
    dense = np.zeros((groups, m), dtype=values.dtype)
    np.put_along_axis(dense, positions, values.reshape(groups, n), axis=1)
    return dense.reshape(shape)
