"""Chapter 06 checks: plausible wrong answers are rejected with expected/got/hint, correct alternatives pass."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

import numpy as np
import pytest
import torch

from helpers import checks
from helpers import encoding as E

# ----------------------------------------------------------------------------- lloyd_step


def lloyd_reference(values, centroids):
    return E.lloyd_step(values, centroids)[0]


def _lloyd_loop(values, centroids):  # plain loops, float64
    v, c = np.asarray(values, dtype=np.float64), np.asarray(centroids, dtype=np.float64)
    groups = [[] for _ in c]
    for x in v:
        groups[int(np.argmin(np.abs(x - c)))].append(x)
    return np.array([np.mean(g) if g else c[j] for j, g in enumerate(groups)])


def _lloyd_torch(values, centroids):  # torch, in the input's precision
    v, c = torch.from_numpy(values), torch.from_numpy(centroids)
    labels = (v[:, None] - c[None, :]).abs().argmin(1)
    sums = torch.zeros_like(c).index_add_(0, labels, v)
    counts = torch.bincount(labels, minlength=len(c)).to(c.dtype)
    return torch.where(counts > 0, sums / counts.clamp(min=1), c)


def _lloyd_ties_high(values, centroids):  # a value halfway goes to the HIGHER centroid
    v, c = np.asarray(values, dtype=np.float64), np.asarray(centroids, dtype=np.float64)
    d = np.abs(v[:, None] - c[None, :])
    labels = len(c) - 1 - d[:, ::-1].argmin(1)
    return np.array([v[labels == j].mean() if np.any(labels == j) else c[j] for j in range(len(c))])


def _lloyd_empty_nan(values, centroids):  # mean of an empty cluster: NaN
    v, c = np.asarray(values, dtype=np.float64), np.asarray(centroids, dtype=np.float64)
    labels = np.abs(v[:, None] - c[None, :]).argmin(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(labels, weights=v, minlength=len(c)) / np.bincount(labels, minlength=len(c))


def _lloyd_empty_zero(values, centroids):  # an empty cluster's centroid set to 0
    v, c = np.asarray(values, dtype=np.float64), np.asarray(centroids, dtype=np.float64)
    labels = np.abs(v[:, None] - c[None, :]).argmin(1)
    return np.bincount(labels, weights=v, minlength=len(c)) / np.maximum(np.bincount(labels, minlength=len(c)), 1)


def _lloyd_median(values, centroids):  # median instead of mean (k-medians)
    v, c = np.asarray(values, dtype=np.float64), np.asarray(centroids, dtype=np.float64)
    labels = np.abs(v[:, None] - c[None, :]).argmin(1)
    return np.array([np.median(v[labels == j]) if np.any(labels == j) else c[j] for j in range(len(c))])


def _lloyd_searchsorted(values, centroids):  # "nearest" by searchsorted: the next centroid up, not the nearest
    v, c = np.asarray(values, dtype=np.float64), np.asarray(centroids, dtype=np.float64)
    labels = np.clip(np.searchsorted(c, v), 0, len(c) - 1)
    return np.array([v[labels == j].mean() if np.any(labels == j) else c[j] for j in range(len(c))])


def _lloyd_in_place(values, centroids):  # updates the learner's centroids array
    new = lloyd_reference(values, centroids)
    centroids[...] = new
    return centroids


def _lloyd_labels(values, centroids):  # returns the labels, not the centroids
    return E.lloyd_step(values, centroids)[1]


LLOYD_WRONG = [_lloyd_ties_high, _lloyd_empty_nan, _lloyd_empty_zero, _lloyd_median, _lloyd_searchsorted, _lloyd_in_place, _lloyd_labels]
LLOYD_RIGHT = [lloyd_reference, _lloyd_loop, _lloyd_torch]

# ----------------------------------------------------------------------------- centroid_gradient


def centroid_grad_reference(grad, indices, mask, k):
    return torch.zeros(k, dtype=grad.dtype).index_add_(0, indices[mask], grad[mask])


def _cg_numpy(grad, indices, mask, k):  # numpy bincount, float64
    m = mask.numpy()
    return np.bincount(indices.numpy()[m], weights=grad.double().numpy()[m], minlength=k)


def _cg_autograd(grad, indices, mask, k):  # autograd through index_select
    c = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    (c.index_select(0, indices.flatten()).view(indices.shape) * mask * grad.double()).sum().backward()
    return c.grad


def _cg_loop(grad, indices, mask, k):  # one cluster at a time
    return torch.stack([grad[(indices == j) & mask].sum() for j in range(k)])


def _cg_no_mask(grad, indices, mask, k):  # pruned weights' gradients counted too
    return torch.zeros(k, dtype=grad.dtype).index_add_(0, indices.flatten(), grad.flatten())


def _cg_mean(grad, indices, mask, k):  # mean instead of sum
    sums = centroid_grad_reference(grad, indices, mask, k)
    return sums / torch.bincount(indices[mask], minlength=k).clamp(min=1)


def _cg_no_minlength(grad, indices, mask, k):  # np.bincount without minlength: too short when the last clusters are empty
    m = mask.numpy()
    return np.bincount(indices.numpy()[m], weights=grad.double().numpy()[m])


def _cg_in_place(grad, indices, mask, k):  # zeroes the pruned gradients in the caller's tensor
    grad.mul_(mask)
    return torch.zeros(k, dtype=grad.dtype).index_add_(0, indices.flatten(), grad.flatten())


def _cg_inverted_mask(grad, indices, mask, k):  # sums the PRUNED weights' gradients
    return centroid_grad_reference(grad, indices, ~mask, k)


def _cg_off_by_one(grad, indices, mask, k):  # treats indices as 1-based codes
    return torch.zeros(k + 1, dtype=grad.dtype).index_add_(0, (indices[mask] + 1), grad[mask])[:k]


CG_WRONG = [_cg_no_mask, _cg_mean, _cg_no_minlength, _cg_in_place, _cg_inverted_mask, _cg_off_by_one]
CG_RIGHT = [centroid_grad_reference, _cg_numpy, _cg_autograd, _cg_loop]

# ----------------------------------------------------------------------------- code_lengths


def code_lengths_reference(counts):
    return E.huffman_code_lengths(counts)


def _lengths_tree(counts):  # explicit tree nodes, depths by a walk; ties broken by the newest node first
    order = itertools.count()
    heap = [(int(c), -next(order), ("leaf", s)) for s, c in enumerate(counts) if c > 0]
    lengths = np.zeros(len(counts), dtype=np.int64)
    if len(heap) == 1:
        lengths[heap[0][2][1]] = 1
        return lengths
    heapq.heapify(heap)
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        heapq.heappush(heap, (a[0] + b[0], -next(order), ("node", a[2], b[2])))
    stack = [(heap[0][2], 0)] if heap else []
    while stack:
        node, depth = stack.pop()
        if node[0] == "leaf":
            lengths[node[1]] = depth
        else:
            stack += [(node[1], depth + 1), (node[2], depth + 1)]
    return lengths


def _lengths_two_queues(counts):  # van Leeuwen's two-queue method on sorted counts (returns a list)
    items = sorted((int(c), s) for s, c in enumerate(counts) if c > 0)
    lengths = [0] * len(counts)
    if len(items) == 1:
        lengths[items[0][1]] = 1
        return lengths
    leaves = [(c, [s]) for c, s in items]
    merged: list = []
    while len(leaves) + len(merged) > 1:
        picked = []
        for _ in range(2):
            if merged and (not leaves or merged[0][0] < leaves[0][0]):
                picked.append(merged.pop(0))
            else:
                picked.append(leaves.pop(0))
        for s in picked[0][1] + picked[1][1]:
            lengths[s] += 1
        merged.append((picked[0][0] + picked[1][0], picked[0][1] + picked[1][1]))
    return lengths


def _lengths_shannon(counts):  # Shannon's ceil(-log2 p): a prefix code, not an optimal one
    c = np.asarray(counts, dtype=np.float64)
    out = np.zeros(len(c), dtype=np.int64)
    out[c > 0] = np.maximum(1, np.ceil(-np.log2(c[c > 0] / c.sum())))
    return out


def _lengths_plus_one(counts):  # counts the root as a level
    lengths = code_lengths_reference(counts)
    return np.where(lengths > 0, lengths + 1, 0)


def _lengths_heaviest(counts):  # merges the two HEAVIEST subtrees
    heap = [(-int(c), s, [s]) for s, c in enumerate(counts) if c > 0]
    lengths = np.zeros(len(counts), dtype=np.int64)
    if len(heap) == 1:
        lengths[heap[0][2][0]] = 1
        return lengths
    heapq.heapify(heap)
    tie = len(counts)
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        lengths[a[2] + b[2]] += 1
        heapq.heappush(heap, (a[0] + b[0], tie, a[2] + b[2]))
        tie += 1
    return lengths


def _lengths_one_symbol_zero(counts):  # a lone symbol gets 0 bits
    lengths = code_lengths_reference(counts)
    return np.zeros_like(lengths) if np.count_nonzero(counts) == 1 else lengths


def _lengths_absent_coded(counts):  # absent symbols kept in the tree (count 0)
    return code_lengths_reference(np.asarray(counts) + (np.asarray(counts) == 0) * 1e-9)


LENGTHS_WRONG = [_lengths_shannon, _lengths_plus_one, _lengths_heaviest, _lengths_one_symbol_zero, _lengths_absent_coded]
LENGTHS_RIGHT = [code_lengths_reference, _lengths_tree, _lengths_two_queues]

# ----------------------------------------------------------------------------- canonical_codes


def canonical_reference(lengths):
    return E.canonical_codes(lengths)


def _canonical_deflate(lengths):  # RFC 1951's bl_count / next_code algorithm
    ell = [int(x) for x in lengths]
    top = max(ell, default=0)
    bl_count = [0] * (top + 1)
    for n in ell:
        if n:
            bl_count[n] += 1
    code, next_code = 0, [0] * (top + 2)
    for bits in range(1, top + 1):
        code = (code + bl_count[bits - 1]) << 1 if bits > 1 else 0
        next_code[bits] = code
    out = []
    for n in ell:
        if n:
            out.append(next_code[n])
            next_code[n] += 1
        else:
            out.append(0)
    return out


def _canonical_torch(lengths):  # a different loop, returned as a torch tensor
    order = sorted(range(len(lengths)), key=lambda s: (int(lengths[s]), s))
    codes = torch.zeros(len(lengths), dtype=torch.int64)
    code, previous = -1, None
    for s in order:
        if lengths[s] == 0:
            continue
        code = 0 if previous is None else (code + 1) << (int(lengths[s]) - previous)
        previous = int(lengths[s])
        codes[s] = code
    return codes


def _canonical_symbol_order(lengths):  # consecutive codes in symbol order, ignoring the length order
    codes, code, previous = np.zeros(len(lengths), dtype=np.int64), 0, 0
    for s in np.flatnonzero(lengths):
        code = code << max(0, int(lengths[s]) - previous)
        previous = int(lengths[s])
        codes[s] = code
        code += 1
    return codes


def _canonical_no_shift(lengths):  # forgets to shift when the length grows
    codes, code = np.zeros(len(lengths), dtype=np.int64), 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        codes[s] = code
        code += 1
    return codes


def _canonical_shift_by_length(lengths):  # shifts by the new length, not by the difference
    codes, code, previous = np.zeros(len(lengths), dtype=np.int64), 0, 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        if lengths[s] != previous and previous:
            code <<= int(lengths[s])
        previous = int(lengths[s])
        codes[s] = code
        code += 1
    return codes


def _canonical_longest_first(lengths):  # consecutive codes from the LONGEST length down
    codes, code, previous = np.zeros(len(lengths), dtype=np.int64), 0, None
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (-lengths[s], s)):
        if previous is not None and lengths[s] != previous:
            code >>= previous - int(lengths[s])
        previous = int(lengths[s])
        codes[s] = code
        code += 1
    return codes


def _canonical_reversed_bits(lengths):  # each code written LSB-first
    codes = canonical_reference(lengths).astype(np.int64)
    return np.array([int(format(int(c), f"0{int(n)}b")[::-1], 2) if n else 0 for c, n in zip(codes, lengths)])


CANONICAL_WRONG = [
    _canonical_symbol_order,
    _canonical_no_shift,
    _canonical_shift_by_length,
    _canonical_longest_first,
    _canonical_reversed_bits,
]
CANONICAL_RIGHT = [canonical_reference, _canonical_deflate, _canonical_torch]

# ----------------------------------------------------------------------------- huffman_encode / huffman_decode


def encode_reference(symbols, codes, lengths):
    return E.encode_with_codes(symbols, codes, lengths)


def _encode_writer(symbols, codes, lengths):  # E.BitWriter, one code at a time
    writer = E.BitWriter()
    for s in symbols:
        writer.write(int(codes[s]), int(lengths[s]))
    return writer.getvalue(), writer.nbits


def _encode_string(symbols, codes, lengths):  # a string of '0'/'1', then int.to_bytes
    bits = "".join(format(int(codes[s]), f"0{int(lengths[s])}b") for s in symbols)
    padded = bits + "0" * (-len(bits) % 8)
    return (int(padded, 2).to_bytes(len(padded) // 8, "big") if padded else b""), len(bits)


def _encode_lsb_first(symbols, codes, lengths):  # each code's bits reversed
    bits = "".join(format(int(codes[s]), f"0{int(lengths[s])}b")[::-1] for s in symbols)
    padded = bits + "0" * (-len(bits) % 8)
    return (int(padded, 2).to_bytes(len(padded) // 8, "big") if padded else b""), len(bits)


def _encode_pad_ones(symbols, codes, lengths):  # pads the last byte with 1 bits
    bits = "".join(format(int(codes[s]), f"0{int(lengths[s])}b") for s in symbols)
    padded = bits + "1" * (-len(bits) % 8)
    return (int(padded, 2).to_bytes(len(padded) // 8, "big") if padded else b""), len(bits)


def _encode_nbits_padded(symbols, codes, lengths):  # reports the padded length
    data, _ = encode_reference(symbols, codes, lengths)
    return data, 8 * len(data)


def _encode_little_endian_bits(symbols, codes, lengths):  # np.packbits(..., bitorder="little")
    bits = [int(b) for s in symbols for b in format(int(codes[s]), f"0{int(lengths[s])}b")]
    return np.packbits(np.array(bits, dtype=np.uint8), bitorder="little").tobytes(), len(bits)


def _encode_pad_front(symbols, codes, lengths):  # padding zeros in front of the first code
    bits = "".join(format(int(codes[s]), f"0{int(lengths[s])}b") for s in symbols)
    padded = "0" * (-len(bits) % 8) + bits
    return (int(padded, 2).to_bytes(len(padded) // 8, "big") if padded else b""), len(bits)


ENCODE_WRONG = [_encode_lsb_first, _encode_pad_ones, _encode_nbits_padded, _encode_little_endian_bits, _encode_pad_front]
ENCODE_RIGHT = [encode_reference, _encode_writer, _encode_string]


def decode_reference(data, nbits, lengths, count):
    return E.decode_with_lengths(data, nbits, lengths, count)


def _table(lengths):
    codes = E.canonical_codes(np.asarray(lengths))
    return {(int(n), int(c)): s for s, (c, n) in enumerate(zip(codes, lengths)) if n}


def _decode_dict(data, nbits, lengths, count):  # a dict keyed by (length, code), bits from a string
    table, bits = _table(lengths), "".join(format(b, "08b") for b in data)[:nbits]
    out, code, length, i = [], 0, 0, 0
    while len(out) < count:
        if i >= len(bits):
            raise ValueError("truncated stream")
        code, length, i = (code << 1) | int(bits[i]), length + 1, i + 1
        if (length, code) in table:
            out.append(table[length, code])
            code, length = 0, 0
    return np.array(out, dtype=np.int64)


def _decode_reader(data, nbits, lengths, count):  # E.BitReader (raises ValueError itself), a torch result
    table, reader, out = _table(lengths), E.BitReader(data, nbits), []
    while len(out) < count:
        code, length = 0, 0
        while (length, code) not in table:
            code, length = (code << 1) | reader.read(1), length + 1
        out.append(table[length, code])
    return torch.tensor(out, dtype=torch.int64)


def _decode_code_only(data, nbits, lengths, count):  # a dict keyed by the code value alone: '10' and '010' collide
    codes = E.canonical_codes(np.asarray(lengths))
    table = {}
    for s, (c, n) in enumerate(zip(codes, lengths)):
        if n:
            table.setdefault(int(c), s)
    bits, out, code, i = "".join(format(b, "08b") for b in data)[:nbits], [], 0, 0
    while len(out) < count:
        if i >= len(bits):
            raise ValueError("truncated")
        code, i = (code << 1) | int(bits[i]), i + 1
        if code in table:
            out.append(table[code])
            code = 0
    return np.array(out)


def _decode_lsb_first(data, nbits, lengths, count):  # reads each byte from its lowest bit
    table = _table(lengths)
    bits = "".join(format(b, "08b")[::-1] for b in data)[:nbits]
    out, code, length = [], 0, 0
    for bit in bits:
        code, length = (code << 1) | int(bit), length + 1
        if (length, code) in table:
            out.append(table[length, code])
            code, length = 0, 0
        if len(out) == count:
            break
    if len(out) < count:
        raise ValueError("truncated")
    return np.array(out)


def _decode_ignores_nbits(data, nbits, lengths, count):  # reads past nbits into zero padding: a truncated stream passes silently
    table, bits = _table(lengths), "".join(format(b, "08b") for b in data) + "0" * 64
    out, code, length, i = [], 0, 0, 0
    while len(out) < count and i < len(bits):
        code, length, i = (code << 1) | int(bits[i]), length + 1, i + 1
        if (length, code) in table:
            out.append(table[length, code])
            code, length = 0, 0
    return np.array(out)


def _decode_index_error(data, nbits, lengths, count):  # runs off the end with an IndexError, not a ValueError
    table, bits = _table(lengths), "".join(format(b, "08b") for b in data)[:nbits]
    out, code, length, i = [], 0, 0, 0
    while len(out) < count:
        code, length, i = (code << 1) | int(bits[i]), length + 1, i + 1
        if (length, code) in table:
            out.append(table[length, code])
            code, length = 0, 0
    return np.array(out)


DECODE_WRONG = [_decode_code_only, _decode_lsb_first, _decode_ignores_nbits, _decode_index_error]
DECODE_RIGHT = [decode_reference, _decode_dict, _decode_reader]

# ----------------------------------------------------------------------------- registration and tests

CHECK_CASES = {
    "check_lloyd_step": (lloyd_reference, LLOYD_WRONG, None),
    "check_centroid_gradient": (centroid_grad_reference, CG_WRONG, None),
    "check_code_lengths": (code_lengths_reference, LENGTHS_WRONG, None),
    "check_canonical_codes": (canonical_reference, CANONICAL_WRONG, None),
    "check_huffman_encode": (encode_reference, ENCODE_WRONG, None),
    "check_huffman_decode": (decode_reference, DECODE_WRONG, None),
}

RIGHT: dict[str, list[Callable]] = {
    "check_lloyd_step": LLOYD_RIGHT,
    "check_centroid_gradient": CG_RIGHT,
    "check_code_lengths": LENGTHS_RIGHT,
    "check_canonical_codes": CANONICAL_RIGHT,
    "check_huffman_encode": ENCODE_RIGHT,
    "check_huffman_decode": DECODE_RIGHT,
}


@pytest.mark.parametrize(("name", "index"), [(n, i) for n in RIGHT for i in range(len(RIGHT[n]))])
def test_correct_alternative_passes(name: str, index: int, capsys: pytest.CaptureFixture) -> None:
    getattr(checks, name)(RIGHT[name][index])
    assert capsys.readouterr().out.startswith(f"PASSED {name}")


@pytest.mark.parametrize(("name", "index"), [(n, i) for n in CHECK_CASES for i in range(len(CHECK_CASES[n][1]))])
def test_wrong_answer_fails_with_expected_got_hint(name: str, index: int) -> None:
    with pytest.raises(checks.CheckFailure) as error:
        getattr(checks, name)(CHECK_CASES[name][1][index])
    message = str(error.value)
    assert "expected" in message and "got" in message and "hint" in message, message


def test_in_place_mutation_is_named() -> None:
    for name, fn in (("check_lloyd_step", _lloyd_in_place), ("check_centroid_gradient", _cg_in_place)):
        with pytest.raises(checks.CheckFailure, match="in place"):
            getattr(checks, name)(fn)


def test_shannon_lengths_are_named_in_the_hint() -> None:
    with pytest.raises(checks.CheckFailure, match=r"ceil\(-log2 p\)"):
        checks.check_code_lengths(_lengths_shannon)


def test_silent_truncation_is_named() -> None:
    with pytest.raises(checks.CheckFailure, match="truncated stream"):
        checks.check_huffman_decode(_decode_ignores_nbits)
