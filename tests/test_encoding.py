"""Unit tests of helpers.encoding: k-means sharing, Huffman and bit streams, HashedNets, PQ, the Deep Compression file."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import encoding as E
from helpers import pruning as P
from helpers.models import LeNet5, LeNet300

# ----------------------------------------------------------------------------- k-means


def test_init_centroids_linear_density_random() -> None:
    values = np.arange(11, dtype=np.float64)
    assert np.allclose(E.init_centroids(values, 3, "linear"), [0, 5, 10])
    assert np.allclose(E.init_centroids(values, 2, "density"), np.quantile(values, [0.25, 0.75]))
    forgy = E.init_centroids(values, 4, "random", seed=3)
    assert len(set(forgy.tolist())) == 4 and set(forgy.tolist()) <= set(values.tolist()) and np.all(np.diff(forgy) > 0)
    assert np.array_equal(forgy, E.init_centroids(values, 4, "random", seed=3))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"values": np.zeros(0), "k": 2}, ValueError),
        ({"values": [1.0, 2.0], "k": 2}, TypeError),
        ({"values": np.ones(3), "k": 0}, ValueError),
        ({"values": np.ones(3), "k": 2, "method": "kmeans++"}, ValueError),
        ({"values": np.ones(3), "k": 4, "method": "random"}, ValueError),
        ({"values": np.array([1.0, np.nan]), "k": 1}, ValueError),
    ],
)
def test_init_centroids_rejects_bad_input(kwargs, error) -> None:
    with pytest.raises(error):
        E.init_centroids(**kwargs)


def test_assign_ties_go_to_the_smaller_centroid() -> None:
    labels = E.assign_clusters(np.array([0.5, 1.5, -1.0, 3.0]), np.array([0.0, 1.0, 2.0]))
    assert labels.tolist() == [0, 1, 0, 2]
    assert E.assign_clusters(np.array([0.5]), np.array([1.0, 0.0])).tolist() == [1]  # unsorted centroids: the smaller one


def test_lloyd_step_means_and_empty_cluster() -> None:
    new, labels = E.lloyd_step(np.array([0.0, 0.2, 1.0, 1.4]), np.array([0.1, 1.1, 5.0]))
    assert np.allclose(new, [0.1, 1.2, 5.0]) and labels.tolist() == [0, 0, 1, 1]


def test_kmeans_matches_brute_force_and_never_increases_error() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(2000)
    c = E.init_centroids(w, 8)
    errors = []
    for _ in range(30):
        labels = np.abs(w[:, None] - c[None]).argmin(1)
        errors.append(np.mean((w - c[labels]) ** 2))
        c, _ = E.lloyd_step(w, c)
    assert all(b <= a + 1e-15 for a, b in zip(errors, errors[1:]))
    centroids, labels = E.kmeans_1d(w, 8, iters=500)
    assert np.array_equal(labels, np.abs(w[:, None] - centroids[None]).argmin(1))
    assert np.allclose(centroids, [w[labels == j].mean() for j in range(8)])


def test_centroid_gradient_equals_autograd_through_index_select() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(20, 7)
    with torch.no_grad():
        layer.weight[layer.weight.abs() < 0.05] = 0
    shared = E.share_layer(layer, 3)
    x = torch.randn(5, 20)
    shared(x).pow(2).sum().backward()
    W = shared.weight.detach().requires_grad_(True)
    F.linear(x, W, shared.bias.detach()).pow(2).sum().backward()
    labels = np.where(shared.mask.numpy(), shared.indices.numpy(), -1)
    assert np.allclose(shared.centroids.grad.numpy(), E.centroid_gradient(W.grad, labels, 7), atol=1e-5)
    assert torch.all(shared.weight[~shared.mask] == 0)
    with pytest.raises(ValueError, match="same size"):
        E.centroid_gradient(np.zeros(3), np.zeros(4, dtype=int), 2)


def test_share_model_keeps_zeros_and_uses_few_values() -> None:
    torch.manual_seed(0)
    model = LeNet300()
    P.apply_masks(model, {n: P.magnitude_mask(w.detach(), 0.8) for n, w in P.prunable_weights(model).items()})
    shared = E.share_model(model, {"fc1": 2, "fc2": 3, "fc3": 4})
    for name, bits in (("fc1", 2), ("fc2", 3), ("fc3", 4)):
        w = shared.get_submodule(name).weight.detach()
        assert torch.equal(w == 0, model.get_submodule(name).weight == 0)
        assert len(torch.unique(w[w != 0])) <= 2**bits - 1
    conv = E.share_layer(LeNet5().conv2, 4)
    assert conv(torch.randn(1, 20, 12, 12)).shape == (1, 50, 8, 8)
    with pytest.raises(TypeError):
        E.SharedLayer(nn.ReLU(), np.zeros(1), np.zeros(1), np.ones(1))
    with pytest.raises(ValueError, match="bits"):
        E.share_layer(nn.Linear(3, 3), 0)
    with pytest.raises(ValueError, match="every layer"):
        E.share_model(model, {"fc1": 2})
    with pytest.raises(ValueError, match="every layer"):
        E.encode_model(shared, "lenet300", index_bits={"fc1": 4})


# ----------------------------------------------------------------------------- Huffman and bits


def test_entropy_and_huffman_bound() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        counts = rng.integers(0, 1000, size=rng.integers(2, 40))
        counts[:2] += 1
        lengths = E.huffman_code_lengths(counts)
        H, L = E.entropy_bits(counts), (counts * lengths).sum() / counts.sum()
        assert H <= L + 1e-12 < H + 1
        assert abs(sum(2.0 ** -int(x) for x in lengths[counts > 0]) - 1) < 1e-12  # complete code
        assert np.all(lengths[counts == 0] == 0)
    with pytest.raises(ValueError):
        E.entropy_bits([0, 0])


def test_huffman_lengths_known_example_and_edge_cases() -> None:
    lengths = E.huffman_code_lengths(np.array([5, 9, 12, 13, 16, 45]))  # the CLRS example
    assert (np.array([5, 9, 12, 13, 16, 45]) * lengths).sum() == 224
    assert E.huffman_code_lengths(np.array([0, 7, 0])).tolist() == [0, 1, 0]
    assert E.huffman_code_lengths(np.array([0, 0])).tolist() == [0, 0]
    with pytest.raises(ValueError):
        E.huffman_code_lengths(np.array([1, -1]))
    with pytest.raises(TypeError):
        E.huffman_code_lengths(np.ones((2, 2)))


def test_canonical_codes() -> None:
    codes = E.canonical_codes(np.array([2, 1, 3, 3]))  # DEFLATE's rule: B=0, A=10, C=110, D=111
    assert codes.tolist() == [0b10, 0b0, 0b110, 0b111]
    assert E.canonical_codes(np.array([0, 2, 2, 0, 2, 2])).tolist() == [0, 0, 1, 0, 2, 3]
    with pytest.raises(ValueError, match="Kraft"):
        E.canonical_codes(np.array([1, 1, 1]))
    with pytest.raises(TypeError):
        E.canonical_codes(np.array([1.0, 1.0]))


def test_bit_writer_reader_and_vectorised_encoder_agree() -> None:
    writer = E.BitWriter()
    for value, length in ((1, 1), (0, 2), (5, 3), (255, 8), (0, 0), (3, 2)):
        writer.write(value, length)
    assert writer.nbits == 16 and writer.getvalue() == bytes([0b10010111, 0b11111111])[:1] + bytes([0b11111111])
    reader = E.BitReader(writer.getvalue(), writer.nbits)
    assert [reader.read(n) for n in (1, 2, 3, 8, 2)] == [1, 0, 5, 255, 3]
    with pytest.raises(ValueError, match="truncated"):
        reader.read(1)
    with pytest.raises(ValueError):
        writer.write(4, 2)
    rng = np.random.default_rng(2)
    counts = rng.integers(1, 100, 12)
    lengths = E.huffman_code_lengths(counts)
    codes = E.canonical_codes(lengths)
    symbols = rng.integers(0, 12, 500)
    writer = E.BitWriter()
    for s in symbols:
        writer.write(int(codes[s]), int(lengths[s]))
    payload, nbits = E.encode_with_codes(symbols, codes, lengths)
    assert (payload, nbits) == (writer.getvalue(), writer.nbits)
    assert np.array_equal(E.decode_with_lengths(payload, nbits, lengths, len(symbols)), symbols)


@pytest.mark.parametrize(
    "values",
    [
        np.array([], dtype=np.uint8),
        np.array([4], dtype=np.int32),
        np.full(9, -3, dtype=np.int8),
        np.array([1, 2, 2, 2], dtype=np.uint16),
        np.array([0.0, -0.0, np.nan, 1e-30, 0.0], dtype=np.float32),
        np.random.default_rng(3).integers(0, 300, 5000).astype(np.int64),
        np.random.default_rng(4).standard_normal(300).astype(np.float64),
    ],
)
def test_huffman_round_trip_is_bit_exact(values) -> None:
    back = E.huffman_decode(E.huffman_encode(values))
    assert back.dtype == values.dtype and back.view(np.uint8).tobytes() == values.view(np.uint8).tobytes()


def test_huffman_rejects_bad_streams_and_input() -> None:
    stream = E.huffman_encode(np.random.default_rng(5).integers(0, 6, 400).astype(np.uint8))
    for bad, match in (
        (stream[:-1], "truncated"),
        (stream[:10], "truncated"),
        (b"XXXX" + stream[4:], "magic"),
        (stream + b"\x00", "after the payload"),
    ):
        with pytest.raises(ValueError, match=match):
            E.huffman_decode(bad)
    size = 6
    lengths_at = 18 + size
    with pytest.raises(ValueError, match="complete prefix code"):
        E.huffman_decode(stream[:lengths_at] + bytes([stream[lengths_at] + 1]) + stream[lengths_at + 1 :])
    with pytest.raises(TypeError):
        E.huffman_encode([1, 2, 3])
    with pytest.raises(TypeError):
        E.huffman_encode(np.array([True, False]))
    with pytest.raises(TypeError):
        E.huffman_decode("HUF1")


def test_pack_bits_round_trip_and_errors() -> None:
    values = np.random.default_rng(6).integers(0, 32, 101)
    data = E.pack_bits(values, 5)
    assert len(data) == (101 * 5 + 7) // 8
    assert np.array_equal(E.unpack_bits(data, 5, 101), values)
    with pytest.raises(ValueError):
        E.pack_bits(np.array([32]), 5)
    with pytest.raises(ValueError, match="truncated"):
        E.unpack_bits(data[:-1], 5, 101)


# ----------------------------------------------------------------------------- HashedNets and PQ


def test_hash_is_fixed_and_balanced() -> None:
    bucket, sign = E.hash_indices(30, 40, 16, seed=7)
    again, sign_again = E.hash_indices(30, 40, 16, seed=7)
    assert torch.equal(bucket, again) and torch.equal(sign, sign_again)
    assert bucket.min() >= 0 and bucket.max() < 16
    counts = torch.bincount(bucket.flatten(), minlength=16).float()
    assert counts.min() > 0.6 * counts.mean() and abs(sign.mean()) < 0.15
    assert E.hash_indices(2, 3, 5, seed=0)[0].tolist() == E.hash_indices(2, 3, 5, seed=0)[0].tolist()
    assert not torch.equal(bucket, E.hash_indices(30, 40, 16, seed=8)[0])
    with pytest.raises(ValueError):
        E.hash_indices(3, 3, 0)


def test_hashed_linear_and_mlp() -> None:
    torch.manual_seed(0)
    layer = E.HashedLinear(10, 4, buckets=6)
    assert set(layer.state_dict()) == {"values", "bias"}
    x = torch.randn(3, 10)
    layer(x).sum().backward()
    W = layer.weight.detach().requires_grad_(True)
    F.linear(x, W, layer.bias.detach()).sum().backward()
    assert torch.allclose(
        layer.values.grad, torch.zeros(6).index_add_(0, layer.bucket.flatten(), (W.grad * layer.sign).flatten()), atol=1e-6
    )
    model = E.hashed_mlp((30, 10), 1 / 4)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert sum(m.values.numel() for m in model if isinstance(m, E.HashedLinear)) == 784 * 30 // 4 + 30 * 10 // 4 + 100 // 4
    with pytest.raises(ValueError):
        E.hashed_mlp(compression=0)


def test_product_quantization() -> None:
    rng = np.random.default_rng(8)
    w = rng.standard_normal((50, 12))
    codebooks, codes = E.pq_quantize(w, 3, 8)
    assert codebooks.shape == (4, 8, 3) and codes.shape == (50, 4)
    w_hat = E.pq_reconstruct(codebooks, codes)
    assert w_hat.shape == w.shape and np.linalg.norm(w - w_hat) < np.linalg.norm(w)
    assert np.allclose(E.pq_reconstruct(*E.pq_quantize(w, 3, 50)), w, atol=1e-6)  # k = rows: exact
    assert len(E.pq_to_bytes(codebooks, codes)) == 16 + 4 * codebooks.size + (codes.size * 3 + 7) // 8
    with pytest.raises(ValueError):
        E.pq_quantize(w, 5, 8)
    with pytest.raises(ValueError):
        E.pq_quantize(w[0], 3, 8)


# ----------------------------------------------------------------------------- the file


def _small_pruned_shared(arch: str = "lenet300"):
    torch.manual_seed(0)
    model = LeNet300() if arch == "lenet300" else LeNet5()
    P.apply_masks(model, {n: P.magnitude_mask(w.detach(), 0.9) for n, w in P.prunable_weights(model).items()})
    return model, E.share_model(model, 4)


@pytest.mark.parametrize("arch", ["lenet300", "lenet5"])
def test_file_round_trip_rebuilds_the_model(arch: str) -> None:
    pruned, shared = _small_pruned_shared(arch)
    x = torch.rand(4, 1, 28, 28)
    data = E.encode_model(shared, arch)
    loaded = E.decode_model(data)
    assert type(loaded) is type(pruned)
    with torch.no_grad():
        assert torch.allclose(loaded(x), shared(x), atol=1e-6)
    raw = E.decode_model(E.encode_model(pruned, arch, values="raw", index="packed"))
    with torch.no_grad():
        assert torch.equal(raw.fc1.weight, pruned.fc1.weight)
    sizes = [
        len(E.encode_model(pruned, arch, values="raw", index="packed")),
        len(E.encode_model(shared, arch, values="packed", index="packed")),
        len(data),
    ]
    assert sizes[0] > sizes[1] > sizes[2]
    assert sum(E.size_breakdown(data).values()) == len(data)


def test_file_index_bits_and_fillers() -> None:
    _, shared = _small_pruned_shared()
    data = E.encode_model(shared, "lenet300", index_bits=2)
    _, sections = E.parse_file(data)
    assert all(s.index_bits == 2 and s.entries > s.nonzeros for s in sections)  # 2-bit gaps need fillers
    assert torch.equal(E.decode_model(data).fc1.weight, shared.fc1.weight.detach())


def test_file_errors(tmp_path) -> None:
    pruned, shared = _small_pruned_shared()
    data = E.encode_model(shared, "lenet300")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1
    for bad, match in (
        (bytes(flipped), "checksum"),
        (data[:-10], "checksum"),
        (data[:8], "truncated"),
        (b"", "magic"),
        (b"ABCD" + data[4:], "magic"),
    ):
        with pytest.raises(ValueError, match=match):
            E.decode_model(bad)
    version = bytearray(data)
    version[4] = 9
    with pytest.raises(ValueError, match="version"):
        E.decode_model(bytes(version))
    other = bytearray(data[:-4])  # a consistent checksum over a wrong architecture name
    other[6:14] = b"lenet5\x00\x00"[:8]
    with pytest.raises(ValueError):
        E.decode_model(bytes(other) + zlib.crc32(bytes(other)).to_bytes(4, "little"))
    with pytest.raises(ValueError, match="arch"):
        E.encode_model(shared, "resnet")
    with pytest.raises(ValueError, match="shared layers"):
        E.encode_model(pruned, "lenet300", values="packed")
    with pytest.raises(ValueError, match="values"):
        E.encode_model(shared, "lenet300", values="zip")
    with pytest.raises(ValueError, match="BatchNorm|also has"):
        E.encode_model(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), "lenet300")
    path = tmp_path / "m.dcmp"
    assert E.save_model(shared, str(path), "lenet300") == len(data)
    assert torch.equal(E.load_model(str(path)).fc2.weight, shared.fc2.weight.detach())
