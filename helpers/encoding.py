"""Weight sharing and entropy coding: k-means codebooks, Huffman, HashedNets, product quantization,
and Deep Compression's prune -> share -> Huffman pipeline written to one binary file.

Conventions:

- A *b-bit* shared layer stores a codebook of ``2**b - 1`` nonzero centroids; code 0 means an exact
  zero (a pruned weight, or a filler entry of the relative index). So every code fits in ``b`` bits.
- Bit streams are MSB-first: the first bit written is the highest bit of the first byte; the last
  byte is padded with zero bits.
- Huffman code lengths come from Huffman's algorithm; the codes themselves are *canonical*: symbols
  sorted by (length, symbol) get consecutive codes, so a decoder needs only the lengths.
"""

from __future__ import annotations

import copy
import heapq
import math
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import pruning as P

Array = np.ndarray | torch.Tensor

# ----------------------------------------------------------------------------- validation


def _as_1d_float(values: Array, name: str = "values") -> np.ndarray:
    if not isinstance(values, (np.ndarray, torch.Tensor)):
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(values).__name__}")
    a = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if not np.issubdtype(a.dtype, np.number):
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    a = a.astype(np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds NaN or inf")
    return a


def _check_positive_int(value: int, name: str, low: int = 1, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- scalar k-means (Lloyd)

INITS = ("linear", "density", "random")


def init_centroids(values: Array, k: int, method: str = "linear", seed: int = 0) -> np.ndarray:
    """Initial centroids (k,) float64, sorted, for 1-d k-means, as compared by Han et al. (2016):

    - ``"linear"``: ``k`` points evenly spaced between min and max of ``values``;
    - ``"density"``: the CDF's y axis evenly spaced, read back on x: the quantiles ``(i + 0.5) / k``;
    - ``"random"`` (Forgy): ``k`` distinct entries of ``values`` drawn without replacement (``seed``).
    """
    a = _as_1d_float(values)
    k = _check_positive_int(k, "k")
    if method not in INITS:
        raise ValueError(f"method must be one of {INITS}, got {method!r}")
    if method == "linear":
        return np.linspace(a.min(), a.max(), k)
    if method == "density":
        return np.quantile(a, (np.arange(k) + 0.5) / k)
    if k > a.size:
        raise ValueError(f"k={k} exceeds the {a.size} values for random (Forgy) initialisation")
    return np.sort(np.random.default_rng(seed).choice(a, size=k, replace=False))


def assign_clusters(values: Array, centroids: Array) -> np.ndarray:
    """Index (int64, same shape as ``values``) of the nearest centroid of each value.

    Ties (a value exactly halfway): the smaller centroid wins (for sorted centroids: the lower index).
    """
    c = _as_1d_float(centroids, "centroids")
    a = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    shape = a.shape
    a = a.astype(np.float64).ravel()
    order = np.argsort(c, kind="stable")
    sorted_c = c[order]
    midpoints = (sorted_c[1:] + sorted_c[:-1]) / 2
    return order[np.searchsorted(midpoints, a, side="left")].reshape(shape)


def lloyd_step(values: Array, centroids: Array) -> tuple[np.ndarray, np.ndarray]:
    """One Lloyd iteration: assign each value to its nearest centroid, then move every centroid to
    the mean of its values. A centroid with no values keeps its place. Returns ``(new_centroids (k,),
    labels (n,))``, float64 and int64."""
    a = _as_1d_float(values)
    c = _as_1d_float(centroids, "centroids")
    labels = assign_clusters(a, c)
    sums = np.bincount(labels, weights=a, minlength=len(c))
    counts = np.bincount(labels, minlength=len(c))
    new = c.copy()
    filled = counts > 0
    new[filled] = sums[filled] / counts[filled]
    return new, labels


def kmeans_1d(values: Array, k: int, init: str = "linear", iters: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's algorithm on scalars from :func:`init_centroids`; stops when no label changes.

    Returns ``(centroids (k,) float64, labels (n,) int64)`` for the flattened ``values``.
    """
    iters = _check_positive_int(iters, "iters")
    a = _as_1d_float(values)
    c = init_centroids(a, k, init, seed)
    labels = None
    for _ in range(iters):
        c, new_labels = lloyd_step(a, c)
        if labels is not None and np.array_equal(labels, new_labels):
            break
        labels = new_labels
    return c, assign_clusters(a, c)


def centroid_gradient(weight_grad: Array, labels: Array, k: int) -> np.ndarray:
    """dL/dc_j = sum of dL/dW over the weights of cluster j (Han et al. 2016, eq. 3): (k,) float64.

    ``labels`` has ``weight_grad``'s shape; a label < 0 marks a weight outside every cluster (pruned).
    """
    g = np.asarray(weight_grad.detach().cpu().numpy() if isinstance(weight_grad, torch.Tensor) else weight_grad, dtype=np.float64).ravel()
    lab = np.asarray(labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels).ravel()
    if g.shape != lab.shape:
        raise ValueError(f"weight_grad and labels must have the same size, got {g.size} and {lab.size}")
    keep = lab >= 0
    return np.bincount(lab[keep].astype(np.int64), weights=g[keep], minlength=_check_positive_int(k, "k"))


# ----------------------------------------------------------------------------- shared layers


class SharedLayer(nn.Module):
    """A Linear or Conv2d whose weight is ``codebook[indices] * mask``: ``k`` trainable centroids (a leaf),
    an int64 index per weight and a boolean keep-mask (pruned weights stay exactly zero).

    Gradients reach the centroids through ``index_select``: each centroid's gradient is the sum of
    its cluster's weight gradients (Han et al. 2016).
    """

    def __init__(self, layer: nn.Module, centroids: np.ndarray, indices: np.ndarray, mask: np.ndarray) -> None:
        super().__init__()
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"layer must be nn.Linear or nn.Conv2d, got {type(layer).__name__}")
        self.kind = "linear" if isinstance(layer, nn.Linear) else "conv"
        self.shape = tuple(layer.weight.shape)
        self.conv_args = (
            {}
            if self.kind == "linear"
            else {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation, "groups": layer.groups}
        )
        self.centroids = nn.Parameter(torch.as_tensor(np.asarray(centroids), dtype=torch.float32).clone())
        self.register_buffer("indices", torch.as_tensor(np.asarray(indices), dtype=torch.int64).reshape(self.shape).clone())
        self.register_buffer("mask", torch.as_tensor(np.asarray(mask), dtype=torch.bool).reshape(self.shape).clone())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight built from the codebook, differentiable with respect to the centroids."""
        return self.centroids.index_select(0, self.indices.flatten()).view(self.shape) * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return F.linear(x, self.weight, self.bias)
        return F.conv2d(x, self.weight, self.bias, **self.conv_args)


def share_layer(layer: nn.Module, bits: int, init: str = "linear", iters: int = 50, seed: int = 0) -> SharedLayer:
    """Cluster a (pruned) layer's nonzero weights into ``2**bits - 1`` centroids; zeros stay zero."""
    bits = _check_positive_int(bits, "bits", 1, 16)
    w = layer.weight.detach().cpu().numpy().astype(np.float64)
    mask = w != 0
    if not mask.any():
        raise ValueError("the layer has no nonzero weight to share")
    k = min(2**bits - 1, int(mask.sum()))
    centroids, labels = kmeans_1d(w[mask], k, init=init, iters=iters, seed=seed)
    indices = np.zeros(w.shape, dtype=np.int64)
    indices[mask] = labels
    return SharedLayer(layer, centroids, indices, mask)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def share_model(model: nn.Module, bits: int | Mapping[str, int], init: str = "linear", iters: int = 50, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose Linear / Conv2d layers are :class:`SharedLayer` s (``bits`` per layer or one for all)."""
    names = list(P.prunable_weights(model))
    if isinstance(bits, Mapping) and set(bits) != set(names):
        raise ValueError(f"bits must name every layer {names}, got {sorted(bits)}")
    shared = copy.deepcopy(model)
    for name in names:
        layer_bits = bits[name] if isinstance(bits, Mapping) else bits
        _set_module(shared, name, share_layer(shared.get_submodule(name), layer_bits, init=init, iters=iters, seed=seed))
    return shared


# ----------------------------------------------------------------------------- entropy and Huffman


def entropy_bits(counts: Array) -> float:
    """Shannon entropy ``-sum p log2 p`` in bits per symbol of a histogram (zeros ignored)."""
    c = np.asarray(counts, dtype=np.float64).ravel()
    if c.size == 0 or np.any(c < 0) or c.sum() == 0:
        raise ValueError("counts must be non-negative with a positive total")
    p = c[c > 0] / c.sum()
    return float(-(p * np.log2(p)).sum())


def huffman_code_lengths(counts: Array) -> np.ndarray:
    """Code length (int64) of each symbol ``0..len(counts)-1`` by Huffman's algorithm; 0 for absent symbols.

    Repeatedly merges the two lightest subtrees (a heap; ties by creation order, leaves first by
    symbol). One present symbol gets length 1 (a code needs at least one bit per symbol here).
    """
    c = np.asarray(counts)
    if c.ndim != 1 or not (np.issubdtype(c.dtype, np.integer) or np.issubdtype(c.dtype, np.floating)):
        raise TypeError(f"counts must be a 1-d array of counts, got shape {c.shape} dtype {c.dtype}")
    if np.any(c < 0):
        raise ValueError("counts must be >= 0")
    lengths = np.zeros(len(c), dtype=np.int64)
    present = np.flatnonzero(c > 0)
    if len(present) == 0:
        return lengths
    if len(present) == 1:
        lengths[present[0]] = 1
        return lengths
    heap = [(float(c[s]), order, [int(s)]) for order, s in enumerate(present)]
    heapq.heapify(heap)
    order = len(heap)
    while len(heap) > 1:
        w1, _, s1 = heapq.heappop(heap)
        w2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:  # every symbol below the merged node moves one level deeper
            lengths[s] += 1
        heapq.heappush(heap, (w1 + w2, order, s1 + s2))
        order += 1
    return lengths


def canonical_codes(lengths: Array) -> np.ndarray:
    """Canonical codes (uint64) for code ``lengths``: symbols sorted by (length, symbol) get consecutive
    codes, each shifted left when the length grows. Absent symbols (length 0) get 0.

    Raises ``ValueError`` when the lengths break Kraft's inequality (no prefix code has them) or exceed 64.
    """
    ell = np.asarray(lengths)
    if ell.ndim != 1 or not np.issubdtype(ell.dtype, np.integer):
        raise TypeError(f"lengths must be a 1-d integer array, got shape {ell.shape} dtype {ell.dtype}")
    if np.any(ell < 0) or np.any(ell > 64):
        raise ValueError("lengths must be in [0, 64]")
    kraft = sum(2.0 ** -int(x) for x in ell if x > 0)
    if kraft > 1.0 + 1e-12:
        raise ValueError(f"lengths break Kraft's inequality (sum of 2^-l = {kraft:.6g} > 1): no prefix code has them")
    codes = np.zeros(len(ell), dtype=np.uint64)
    code, previous = 0, 0
    for s in sorted(np.flatnonzero(ell > 0).tolist(), key=lambda s: (int(ell[s]), s)):
        code <<= int(ell[s]) - previous
        previous = int(ell[s])
        codes[s] = code
        code += 1
    return codes


class BitWriter:
    """Writes codes MSB-first into bytes; the last byte is padded with zero bits."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._acc = 0
        self._pending = 0
        self.nbits = 0

    def write(self, value: int, length: int) -> None:
        """Append the ``length`` low bits of ``value`` (0 <= value < 2**length)."""
        value, length = int(value), int(length)
        if length < 0 or value < 0 or value >> length:
            raise ValueError(f"value {value} does not fit in {length} bits")
        self._acc = (self._acc << length) | value
        self._pending += length
        self.nbits += length
        while self._pending >= 8:
            self._pending -= 8
            self._buffer.append((self._acc >> self._pending) & 0xFF)
        self._acc &= (1 << self._pending) - 1

    def getvalue(self) -> bytes:
        """The bytes written so far, the partial last byte padded with zeros."""
        tail = bytes([(self._acc << (8 - self._pending)) & 0xFF]) if self._pending else b""
        return bytes(self._buffer) + tail


class BitReader:
    """Reads bits MSB-first from ``data``; at most ``nbits`` bits (default: all). Reading past the end raises ValueError."""

    def __init__(self, data: bytes, nbits: int | None = None) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        total = 8 * len(data)
        nbits = total if nbits is None else int(nbits)
        if not 0 <= nbits <= total:
            raise ValueError(f"the stream is truncated: {nbits} bits announced, only {total} present")
        self._bits = np.unpackbits(np.frombuffer(bytes(data), dtype=np.uint8))[:nbits].tolist()
        self.position = 0
        self.nbits = nbits

    def read(self, length: int = 1) -> int:
        """The next ``length`` bits as an unsigned int."""
        if self.position + length > self.nbits:
            raise ValueError(f"the stream is truncated: asked for bit {self.position + length} of {self.nbits}")
        value = 0
        for bit in self._bits[self.position : self.position + length]:
            value = (value << 1) | bit
        self.position += length
        return value


def encode_with_codes(symbols: Array, codes: Array, lengths: Array) -> tuple[bytes, int]:
    """Concatenate ``codes[s]`` (``lengths[s]`` bits, MSB-first) for each symbol: ``(bytes, nbits)``. Vectorised."""
    s = np.asarray(symbols).ravel().astype(np.int64)
    ell = np.asarray(lengths).astype(np.int64)
    if s.size and (s.min() < 0 or s.max() >= len(ell) or np.any(ell[s] == 0)):
        raise ValueError("a symbol has no code (its length is 0 or it is out of range)")
    if s.size == 0:
        return b"", 0
    code = np.asarray(codes).astype(np.uint64)[s]
    length = ell[s]
    width = int(length.max())
    shifts = (length[:, None] - 1 - np.arange(width)[None, :]).clip(0).astype(np.uint64)
    bits = ((code[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    used = np.arange(width)[None, :] < length[:, None]
    flat = bits[used]  # row-major: each symbol's bits in order
    return np.packbits(flat).tobytes(), int(flat.size)


def decode_with_lengths(data: bytes, nbits: int, lengths: Array, count: int) -> np.ndarray:
    """Decode ``count`` symbols of a canonical code given by ``lengths`` from ``nbits`` bits of ``data``.

    Raises ``ValueError`` on a truncated stream, a bit pattern that is no code, or leftover bits.
    """
    ell = np.asarray(lengths).astype(np.int64)
    reader = BitReader(data, nbits)
    ordered = sorted(np.flatnonzero(ell > 0).tolist(), key=lambda s: (int(ell[s]), s))
    max_len = int(ell.max()) if len(ordered) else 0
    first, number, offset = [0] * (max_len + 2), [0] * (max_len + 2), [0] * (max_len + 2)
    code, position = 0, 0
    for length in range(1, max_len + 1):
        members = [s for s in ordered if ell[s] == length]
        first[length], number[length], offset[length] = code, len(members), position
        code = (code + len(members)) << 1
        position += len(members)
    bits, end = reader._bits, reader.nbits
    out = np.empty(count, dtype=np.int64)
    i = 0
    for n in range(count):
        code = 0
        for length in range(1, max_len + 1):
            if i >= end:
                raise ValueError(f"the stream is truncated: {n} of {count} symbols decoded when the {end} bits ran out")
            code = (code << 1) | bits[i]
            i += 1
            index = code - first[length]
            if 0 <= index < number[length]:
                out[n] = ordered[offset[length] + index]
                break
        else:
            raise ValueError(f"corrupt stream: bits {i - max_len}..{i} match no code (symbol {n})")
    if i != end:
        raise ValueError(f"corrupt stream: {end - i} bits left over after {count} symbols")
    return out


_HUF_MAGIC = b"HUF1"
_DTYPES = {
    "u1": np.uint8,
    "u2": np.uint16,
    "u4": np.uint32,
    "u8": np.uint64,
    "i1": np.int8,
    "i2": np.int16,
    "i4": np.int32,
    "i8": np.int64,
    "f2": np.float16,
    "f4": np.float32,
    "f8": np.float64,
}


def huffman_encode(values: Array) -> bytes:
    """A self-describing Huffman stream of an integer or float array (flattened).

    Layout (little-endian): ``b"HUF1"`` | dtype code (2 ascii bytes, e.g. ``u1``, ``f4``) | count u64 |
    alphabet size u32 | the distinct values (their raw bytes, sorted by bit pattern) | one length u8 per
    value | payload bit count u64 | payload. Values are compared by bit pattern, so -0.0, 0.0 and NaN
    round-trip exactly.
    """
    if not isinstance(values, (np.ndarray, torch.Tensor)):
        raise TypeError(f"values must be a numpy array or a torch tensor, got {type(values).__name__}")
    a = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
    a = np.ascontiguousarray(a).ravel()
    code = next((key for key, dtype in _DTYPES.items() if a.dtype == np.dtype(dtype)), None)
    if code is None:
        raise TypeError(f"values must have an integer or float dtype of 1-8 bytes, got {a.dtype}")
    a = a.astype(a.dtype.newbyteorder("<"))
    patterns = a.view(f"<u{a.dtype.itemsize}")
    alphabet, symbols = np.unique(patterns, return_inverse=True)
    counts = np.bincount(symbols.ravel(), minlength=len(alphabet))
    lengths = huffman_code_lengths(counts)
    payload, nbits = encode_with_codes(symbols, canonical_codes(lengths), lengths)
    header = _HUF_MAGIC + code.encode() + struct.pack("<QI", a.size, len(alphabet))
    return header + alphabet.tobytes() + lengths.astype(np.uint8).tobytes() + struct.pack("<Q", nbits) + payload


def huffman_decode(data: bytes) -> np.ndarray:
    """The array back from :func:`huffman_encode` (1-d). A truncated or corrupt stream raises ``ValueError``."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 18:
        raise ValueError(f"the Huffman stream is truncated: {len(data)} bytes, the header alone needs 18")
    if data[:4] != _HUF_MAGIC:
        raise ValueError("not a Huffman stream (bad magic)")
    code = data[4:6].decode("ascii", "replace")
    if code not in _DTYPES:
        raise ValueError(f"corrupt Huffman stream: unknown dtype code {code!r}")
    dtype = np.dtype(_DTYPES[code]).newbyteorder("<")
    count, size = struct.unpack_from("<QI", data, 6)
    table_end = 18 + size * dtype.itemsize + size + 8
    if len(data) < table_end:
        raise ValueError(f"the Huffman stream is truncated: its table needs {table_end} bytes, got {len(data)}")
    alphabet = np.frombuffer(data, dtype=f"<u{dtype.itemsize}", count=size, offset=18)
    lengths = np.frombuffer(data, dtype=np.uint8, count=size, offset=18 + size * dtype.itemsize).astype(np.int64)
    (nbits,) = struct.unpack_from("<Q", data, table_end - 8)
    unsorted = size > 1 and bool(np.any(alphabet[1:] <= alphabet[:-1]))
    if (size == 0 and count > 0) or np.any(lengths == 0) or unsorted:
        raise ValueError("corrupt Huffman stream: its symbol table is inconsistent")
    if size > 1 and abs(sum(2.0 ** -int(x) for x in lengths) - 1.0) > 1e-12:
        raise ValueError("corrupt Huffman stream: the code lengths do not form a complete prefix code")
    payload = data[table_end:]
    if len(payload) < (nbits + 7) // 8:
        raise ValueError(f"the Huffman stream is truncated: {nbits} payload bits announced, {8 * len(payload)} present")
    if len(payload) > (nbits + 7) // 8:
        raise ValueError(f"corrupt Huffman stream: {len(payload) - (nbits + 7) // 8} bytes after the payload")
    symbols = decode_with_lengths(payload, nbits, lengths, count)
    return alphabet[symbols].view(dtype).astype(dtype.newbyteorder("="))


# ----------------------------------------------------------------------------- fixed-width bit packing


def pack_bits(values: Array, bits: int) -> bytes:
    """Non-negative integers < 2**bits, each in ``bits`` bits, MSB-first, padded to whole bytes."""
    bits = _check_positive_int(bits, "bits", 1, 32)
    v = np.asarray(values).ravel().astype(np.int64)
    if v.size and (v.min() < 0 or v.max() >= 2**bits):
        raise ValueError(f"values must be in [0, {2**bits - 1}] for {bits} bits")
    matrix = (v[:, None] >> np.arange(bits - 1, -1, -1)[None, :]) & 1
    return np.packbits(matrix.astype(np.uint8).ravel()).tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits` (int64); a too-short ``data`` raises ``ValueError``."""
    bits = _check_positive_int(bits, "bits", 1, 32)
    if len(data) < (count * bits + 7) // 8:
        raise ValueError(f"truncated: {count} values of {bits} bits need {(count * bits + 7) // 8} bytes, got {len(data)}")
    stream = np.unpackbits(np.frombuffer(bytes(data), dtype=np.uint8))[: count * bits].reshape(count, bits).astype(np.int64)
    return (stream << np.arange(bits - 1, -1, -1)[None, :]).sum(1)


# ----------------------------------------------------------------------------- HashedNets


def hash_indices(out_features: int, in_features: int, buckets: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """HashedNets' fixed hashes (Chen et al. 2015): bucket (int64) and sign (+-1 float32) of each weight (out, in).

    A splitmix64 mix of ``seed`` and the weight's flat position, so identical on every machine.
    """
    for name, value in (("out_features", out_features), ("in_features", in_features), ("buckets", buckets)):
        _check_positive_int(value, name)
    _check_positive_int(seed, "seed", 0)
    with np.errstate(over="ignore"):
        x = np.arange(out_features * in_features, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    bucket = (x % np.uint64(buckets)).astype(np.int64).reshape(out_features, in_features)
    sign = np.where((x >> np.uint64(63)) & np.uint64(1), -1.0, 1.0).astype(np.float32).reshape(out_features, in_features)
    return torch.from_numpy(bucket), torch.from_numpy(sign)


class HashedLinear(nn.Module):
    """A Linear layer whose (out, in) weight is ``sign * w[bucket]`` for ``buckets`` trainable values ``w``.

    The hashes are recomputed from ``seed`` (non-persistent buffers), so the state_dict holds only the
    bucket values and the bias: that is what it costs on disk.
    """

    def __init__(self, in_features: int, out_features: int, buckets: int, seed: int = 0, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.buckets, self.seed = in_features, out_features, buckets, seed
        bucket, sign = hash_indices(out_features, in_features, buckets, seed)
        self.register_buffer("bucket", bucket, persistent=False)
        self.register_buffer("sign", sign, persistent=False)
        bound = 1.0 / math.sqrt(in_features)
        self.values = nn.Parameter(torch.empty(buckets).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound)) if bias else None

    @property
    def weight(self) -> torch.Tensor:
        """The virtual (out, in) weight."""
        return self.values[self.bucket] * self.sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def hashed_mlp(hidden: tuple[int, ...] = (300, 100), compression: float = 1 / 8, seed: int = 0) -> nn.Sequential:
    """A 784-hidden-10 ReLU MLP of :class:`HashedLinear` layers with ``ceil(compression * in * out)`` buckets each."""
    if not 0 < compression <= 1:
        raise ValueError(f"compression must be in (0, 1], got {compression!r}")
    sizes = (784, *hidden, 10)
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(HashedLinear(fan_in, fan_out, max(1, math.ceil(compression * fan_in * fan_out)), seed=seed + i))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- product quantization


def kmeans_vectors(x: np.ndarray, k: int, iters: int = 25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Batched k-means: ``x`` (groups, n, d) -> ``(centroids (groups, k, d), labels (groups, n))``.

    Forgy start (k distinct rows per group, ``seed``), Lloyd iterations; an empty cluster keeps its centroid.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"x must be (groups, n, d), got shape {x.shape}")
    k = _check_positive_int(k, "k", 1, x.shape[1])
    rng = np.random.default_rng(seed)
    start = np.stack([rng.choice(x.shape[1], size=k, replace=False) for _ in range(x.shape[0])])
    centroids = np.take_along_axis(x, start[:, :, None], axis=1)
    norms = (x**2).sum(-1)  # (groups, n)
    labels = np.zeros(x.shape[:2], dtype=np.int64)

    def nearest(centroids: np.ndarray) -> np.ndarray:  # squared distances by |x|^2 - 2 x.c + |c|^2: (groups, n, k), no (n, k, d) temporary
        distances = norms[:, :, None] - 2 * np.einsum("gnd,gkd->gnk", x, centroids) + (centroids**2).sum(-1)[:, None, :]
        return distances.argmin(-1)

    groups = np.arange(x.shape[0])[:, None]
    for _ in range(iters):
        labels = nearest(centroids)
        sums = np.zeros_like(centroids)
        np.add.at(sums, (groups, labels), x)
        counts = np.zeros(centroids.shape[:2])
        np.add.at(counts, (groups, labels), 1.0)
        filled = counts > 0
        centroids = np.where(filled[:, :, None], sums / np.maximum(counts, 1)[:, :, None], centroids)
    return centroids, nearest(centroids)


def pq_quantize(w: Array, d: int, k: int, iters: int = 25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Product quantization of a 2-d weight (m, n) (Jegou et al. 2011; Gong et al. 2014): the columns are split
    into ``s = n / d`` blocks of width ``d``; in each block the m row pieces (d-vectors) are clustered into
    ``k`` codewords. Returns ``(codebooks (s, k, d) float32, codes (m, s) int64)``."""
    a = np.asarray(w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else w, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"w must be 2-d, got shape {a.shape}")
    d = _check_positive_int(d, "d")
    if a.shape[1] % d:
        raise ValueError(f"d={d} must divide the number of columns {a.shape[1]}")
    blocks = a.reshape(a.shape[0], -1, d).transpose(1, 0, 2)  # (s, m, d)
    centroids, labels = kmeans_vectors(blocks, k, iters, seed)
    return centroids.astype(np.float32), labels.T.copy()


def pq_reconstruct(codebooks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The (m, s * d) matrix back from :func:`pq_quantize`'s output."""
    s = codebooks.shape[0]
    pieces = codebooks[np.arange(s)[None, :], codes]  # (m, s, d)
    return pieces.reshape(codes.shape[0], -1)


def pq_to_bytes(codebooks: np.ndarray, codes: np.ndarray) -> bytes:
    """A PQ weight as bytes: shape header, float32 codebooks, codes packed at ceil(log2 k) bits."""
    s, k, d = codebooks.shape
    bits = max(1, math.ceil(math.log2(k)))
    header = struct.pack("<IIII", codes.shape[0], s, k, d)
    return header + np.ascontiguousarray(codebooks, dtype="<f4").tobytes() + pack_bits(codes, bits)


def scalar_to_bytes(centroids: np.ndarray, labels: np.ndarray) -> bytes:
    """A scalar-k-means weight as bytes: shape header, float32 codebook, labels packed at ceil(log2 k) bits."""
    k = len(centroids)
    bits = max(1, math.ceil(math.log2(k)))
    header = struct.pack("<II", labels.size, k)
    return header + np.asarray(centroids, dtype="<f4").tobytes() + pack_bits(labels, bits)


# ----------------------------------------------------------------------------- the Deep Compression file

MAGIC = b"DCMP"
VERSION = 1
RAW, PACKED, HUFFMAN = 0, 1, 2
_CODINGS = {"raw": RAW, "packed": PACKED, "huffman": HUFFMAN}


@dataclass
class LayerSection:
    """One layer as stored in the file (see :func:`encode_model`), with the bytes of each part."""

    name: str
    kind: str
    shape: tuple[int, ...]
    index_bits: int
    entries: int
    nonzeros: int
    value_coding: int
    codebook: np.ndarray
    values: np.ndarray = field(repr=False)
    gaps: np.ndarray = field(repr=False)
    bias: np.ndarray | None = field(repr=False)
    nbytes: dict[str, int] = field(default_factory=dict)


def _layer_streams(layer: nn.Module, index_bits: int, value_coding: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(value stream, gap stream, codebook, value bits) of one layer in relative-index order."""
    if value_coding == RAW:
        dense = layer.weight.detach().cpu().numpy().astype(np.float32)
        values, gaps = P.relative_index_encode(dense, index_bits)
        return values.astype("<f4"), gaps, np.zeros(0, dtype=np.float32), 32
    if not isinstance(layer, SharedLayer):
        raise ValueError("coding the values as codes needs shared layers (helpers.encoding.share_model); use values='raw' otherwise")
    codes = (layer.indices.cpu().numpy() + 1) * layer.mask.cpu().numpy()  # code 0 = zero
    values, gaps = P.relative_index_encode(codes.astype(np.int64), index_bits)
    k = layer.centroids.numel()
    return values.astype(np.int64), gaps, layer.centroids.detach().cpu().numpy().astype(np.float32), max(1, math.ceil(math.log2(k + 1)))


def _section(stream: np.ndarray, coding: int, bits: int) -> bytes:
    if coding == RAW:
        return stream.astype("<f4").tobytes()
    if coding == PACKED:
        return pack_bits(stream, bits)
    return huffman_encode(stream.astype(np.uint8) if stream.max(initial=0) < 256 else stream.astype(np.uint16))


def encode_model(
    model: nn.Module, arch: str, values: str = "huffman", index: str = "huffman", index_bits: int | Mapping[str, int] | None = None
) -> bytes:
    """Write a pruned (and shared) model to ONE self-contained binary file image.

    Layout (little-endian)::

        header  = b"DCMP" | version u8 | arch name (u8 length + ascii) | n_layers u16
        layer   = name (u8 length + ascii) | kind u8 (0 Linear, 1 Conv2d) | ndim u8 | shape u32 x ndim
                  | index_bits u8 | entries u32 (nonzeros + relative-index fillers)
                  | value coding u8 (0 float32, 1 fixed-width codes, 2 Huffman codes)
                  | codebook size u16 | codebook float32 x size (code c > 0 means codebook[c - 1], 0 means 0.0)
                  | value section (u32 length + bytes) | index coding u8 (1 fixed-width, 2 Huffman) | gap section (u32 length + bytes)
                  | bias count u32 | bias float32 x count
        trailer = crc32 u32 of every byte before it

    ``values``: ``"raw"`` (float32 nonzeros: the P stage), ``"packed"`` (codes in ``ceil(log2(k + 1))`` bits: P+Q)
    or ``"huffman"`` (P+Q+H); ``index``: ``"packed"`` or ``"huffman"`` gaps of ``index_bits`` bits (chapter 01's
    relative index; ``None`` picks, per layer, the width in 2..8 that gives the smallest file).
    ``arch`` names a model of :mod:`helpers.models` (``"lenet300"``, ``"lenet5"``) that the loader rebuilds.
    """
    from .models import MODELS

    if arch not in MODELS:
        raise ValueError(f"arch must be one of {sorted(MODELS)}, got {arch!r}")
    if values not in _CODINGS:
        raise ValueError(f"values must be one of {sorted(_CODINGS)}, got {values!r}")
    if index not in ("packed", "huffman"):
        raise ValueError(f"index must be 'packed' or 'huffman', got {index!r}")
    layers = {name: module for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d, SharedLayer))}
    if not layers:
        raise ValueError("model has no Linear, Conv2d or SharedLayer to store")
    stored = {f"{name}.{key}" for name in layers for key in ("weight", "bias", "centroids", "indices", "mask")}
    other = [key for key in model.state_dict() if key not in stored]
    if other:
        raise ValueError(f"the file stores only Linear/Conv2d layers; model also has {other}")
    out = bytearray(MAGIC + struct.pack("<B", VERSION) + struct.pack("<B", len(arch)) + arch.encode() + struct.pack("<H", len(layers)))
    value_coding, index_coding = _CODINGS[values], _CODINGS[index]
    if isinstance(index_bits, Mapping) and set(index_bits) != set(layers):
        raise ValueError(f"index_bits must name every layer {list(layers)}, got {sorted(index_bits)}")
    for name, layer in layers.items():
        kind = 0 if isinstance(layer, nn.Linear) or getattr(layer, "kind", "") == "linear" else 1
        shape = tuple(layer.weight.shape)
        candidates = range(2, 9) if index_bits is None else [index_bits[name] if isinstance(index_bits, Mapping) else index_bits]
        best = None
        for bits in candidates:
            stream, gaps, codebook, value_bits = _layer_streams(layer, int(bits), value_coding)
            body = _section(stream, value_coding, value_bits), _section(gaps, index_coding, int(bits))
            if best is None or sum(map(len, body)) < sum(map(len, best[1])):
                best = (int(bits), body, stream, codebook)
        bits, (value_bytes, gap_bytes), stream, codebook = best
        out += struct.pack("<B", len(name)) + name.encode() + struct.pack("<BB", kind, len(shape)) + struct.pack(f"<{len(shape)}I", *shape)
        out += struct.pack("<BIBH", bits, len(stream), value_coding, len(codebook)) + codebook.astype("<f4").tobytes()
        out += struct.pack("<I", len(value_bytes)) + value_bytes + struct.pack("<BI", index_coding, len(gap_bytes)) + gap_bytes
        bias = np.zeros(0, dtype="<f4") if layer.bias is None else layer.bias.detach().cpu().numpy().astype("<f4")
        out += struct.pack("<I", bias.size) + bias.tobytes()
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


class _Cursor:
    def __init__(self, data: bytes, end: int) -> None:
        self.data, self.pos, self.end = data, 0, end

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.end:
            raise ValueError(f"corrupt or truncated file: {what} runs past the end of the data")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))


def parse_file(data: bytes) -> tuple[str, list[LayerSection]]:
    """Read and verify a file image of :func:`encode_model`: ``(arch, layer sections)`` with the bytes of each part.

    Raises ``ValueError`` with the reason on a wrong magic or version, a checksum mismatch (corruption),
    a truncated file, or an inconsistent section.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 4 or data[:4] != MAGIC:
        raise ValueError("not a Deep Compression file (bad magic; expected b'DCMP')")
    if len(data) < 13:
        raise ValueError(f"truncated file: {len(data)} bytes")
    if data[4] != VERSION:
        raise ValueError(f"unsupported file version {data[4]} (this loader reads version {VERSION})")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) != crc:
        raise ValueError("checksum mismatch: the file is corrupt or truncated")
    cursor = _Cursor(data, len(data) - 4)
    cursor.take(5, "header")
    (length,) = cursor.unpack("<B", "arch name length")
    arch = cursor.take(length, "arch name").decode("ascii")
    (n_layers,) = cursor.unpack("<H", "layer count")
    sections = []
    for _ in range(n_layers):
        start = cursor.pos
        (length,) = cursor.unpack("<B", "layer name length")
        name = cursor.take(length, "layer name").decode("ascii")
        kind, ndim = cursor.unpack("<BB", "layer kind")
        shape = cursor.unpack(f"<{ndim}I", "layer shape")
        bits, entries, value_coding, k = cursor.unpack("<BIBH", "layer header")
        header_bytes = cursor.pos - start
        codebook = np.frombuffer(cursor.take(4 * k, "codebook"), dtype="<f4").astype(np.float32)
        (length,) = cursor.unpack("<I", "value section length")
        value_bytes = cursor.take(length, "value section")
        index_coding, length = cursor.unpack("<BI", "index section header")
        gap_bytes = cursor.take(length, "index section")
        (n_bias,) = cursor.unpack("<I", "bias count")
        bias = np.frombuffer(cursor.take(4 * n_bias, "bias"), dtype="<f4").astype(np.float32) if n_bias else None
        if value_coding == RAW:
            if len(value_bytes) != 4 * entries:
                raise ValueError(f"layer {name}: the value section holds {len(value_bytes)} bytes for {entries} float32 values")
            values = np.frombuffer(value_bytes, dtype="<f4").astype(np.float32)
        elif value_coding == PACKED:
            values = unpack_bits(value_bytes, max(1, math.ceil(math.log2(k + 1))), entries)
        elif value_coding == HUFFMAN:
            values = huffman_decode(value_bytes).astype(np.int64)
        else:
            raise ValueError(f"layer {name}: unknown value coding {value_coding}")
        gaps = unpack_bits(gap_bytes, bits, entries) if index_coding == PACKED else huffman_decode(gap_bytes).astype(np.int64)
        if len(values) != entries or len(gaps) != entries:
            raise ValueError(f"layer {name}: {entries} entries announced, sections hold {len(values)} values and {len(gaps)} gaps")
        if value_coding != RAW and len(values) and values.max() > k:
            raise ValueError(f"layer {name}: a code exceeds the codebook size {k}")
        nonzeros = int(np.count_nonzero(values))
        nbytes = {
            "layer header": header_bytes,
            "codebook": 4 * k,
            "values": 4 + len(value_bytes),
            "indices": 5 + len(gap_bytes),
            "bias": 4 + 4 * n_bias,
        }
        sections.append(
            LayerSection(
                name,
                "linear" if kind == 0 else "conv",
                tuple(shape),
                bits,
                entries,
                nonzeros,
                value_coding,
                codebook,
                values,
                gaps,
                bias,
                nbytes,
            )
        )
    if cursor.pos != cursor.end:
        raise ValueError(f"corrupt file: {cursor.end - cursor.pos} unexplained bytes before the checksum")
    return arch, sections


def decode_model(data: bytes) -> nn.Module:
    """Rebuild a working PyTorch model (eval mode, plain Linear / Conv2d layers) from :func:`encode_model`'s bytes alone."""
    from .models import MODELS, build

    arch, sections = parse_file(data)
    if arch not in MODELS:
        raise ValueError(f"the file names an unknown architecture {arch!r}; known: {sorted(MODELS)}")
    model = build(arch)
    expected = P.prunable_weights(model)
    if sorted(expected) != sorted(s.name for s in sections):
        raise ValueError(f"the file's layers {[s.name for s in sections]} do not match {arch}'s {sorted(expected)}")
    with torch.no_grad():
        for s in sections:
            layer = model.get_submodule(s.name)
            if tuple(layer.weight.shape) != s.shape or (s.kind == "linear") != isinstance(layer, nn.Linear):
                raise ValueError(f"layer {s.name}: the file holds a {s.kind} of shape {s.shape}, {arch} has {tuple(layer.weight.shape)}")
            size = int(np.prod(s.shape))
            try:
                flat = P.relative_index_decode(s.values, s.gaps, size)
            except ValueError as error:
                raise ValueError(f"layer {s.name}: corrupt index section ({error})") from error
            weights = flat if s.value_coding == RAW else np.concatenate([[0.0], s.codebook]).astype(np.float32)[flat]
            layer.weight.copy_(torch.from_numpy(np.asarray(weights, dtype=np.float32).reshape(s.shape)))
            if (layer.bias is None) != (s.bias is None) or (s.bias is not None and s.bias.size != layer.bias.numel()):
                raise ValueError(f"layer {s.name}: the bias in the file does not match the architecture")
            if s.bias is not None:
                layer.bias.copy_(torch.from_numpy(s.bias))
    return model.eval()


def save_model(model: nn.Module, path: str, arch: str, **kwargs: object) -> int:
    """:func:`encode_model` to a file at ``path``; returns its size in bytes (``os.path.getsize``)."""
    import os

    data = encode_model(model, arch, **kwargs)
    with open(path, "wb") as handle:
        handle.write(data)
    return os.path.getsize(path)


def load_model(path: str) -> nn.Module:
    """:func:`decode_model` of the file at ``path``."""
    with open(path, "rb") as handle:
        return decode_model(handle.read())


def size_breakdown(data: bytes) -> dict[str, int]:
    """Bytes of a file image by part, summed over layers: file header, layer headers, codebooks, values, indices,
    bias, checksum. The parts add up to ``len(data)``."""
    arch, sections = parse_file(data)
    parts = {
        "file header": 4 + 1 + 1 + len(arch) + 2,
        "layer headers": 0,
        "codebooks": 0,
        "values": 0,
        "indices": 0,
        "bias": 0,
        "checksum": 4,
    }
    for s in sections:
        parts["layer headers"] += s.nbytes["layer header"]
        parts["codebooks"] += s.nbytes["codebook"]
        parts["values"] += s.nbytes["values"]
        parts["indices"] += s.nbytes["indices"]
        parts["bias"] += s.nbytes["bias"]
    if sum(parts.values()) != len(data):
        raise RuntimeError(f"size_breakdown counts {sum(parts.values())} bytes of {len(data)}")  # a parser bug, not bad input
    return parts


__all__ = [
    "BitReader",
    "BitWriter",
    "HashedLinear",
    "LayerSection",
    "SharedLayer",
    "assign_clusters",
    "canonical_codes",
    "centroid_gradient",
    "decode_model",
    "decode_with_lengths",
    "encode_model",
    "encode_with_codes",
    "entropy_bits",
    "hash_indices",
    "hashed_mlp",
    "huffman_code_lengths",
    "huffman_decode",
    "huffman_encode",
    "init_centroids",
    "kmeans_1d",
    "kmeans_vectors",
    "lloyd_step",
    "load_model",
    "pack_bits",
    "parse_file",
    "pq_quantize",
    "pq_reconstruct",
    "pq_to_bytes",
    "save_model",
    "scalar_to_bytes",
    "share_layer",
    "share_model",
    "size_breakdown",
    "unpack_bits",
]
