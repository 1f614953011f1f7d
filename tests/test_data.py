"""The shipped MNIST subset, its split and loaders, and the opt-in full download."""

from __future__ import annotations

import gzip
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import data


def test_shipped_subset_checksum_and_content() -> None:
    assert data.sha256_of(data.MNIST_SUBSET) == data.MNIST_SUBSET_SHA256
    assert data.MNIST_SUBSET.stat().st_size < 2_000_000
    with np.load(data.MNIST_SUBSET) as npz:
        images, labels = npz["images"], npz["labels"]
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and images.min() == 0


def test_load_mnist_shapes_types_and_stratified_split() -> None:
    x_train, y_train, x_test, y_test = data.load_mnist()
    assert x_train.shape == (3500, 1, 28, 28) and x_test.shape == (1000, 1, 28, 28)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert float(x_train.min()) == 0.0 and float(x_train.max()) == 1.0
    assert torch.bincount(y_train).tolist() == [350] * 10
    assert torch.bincount(y_test).tolist() == [100] * 10
    x_val, y_val = data.load_validation()
    assert x_val.shape == (500, 1, 28, 28) and torch.bincount(y_val).tolist() == [50] * 10


def test_train_validation_and_test_are_disjoint_and_cover_the_subset() -> None:
    x_train, _, x_test, _ = data.load_mnist()
    x_val, _ = data.load_validation()
    every = torch.cat([x_train, x_val, x_test]).flatten(1)
    assert len(every) == 5000 and len(torch.unique(every, dim=0)) == 5000  # no digit in two splits
    _, _, (train_idx, val_idx, test_idx) = data._subset_splits()
    assert val_idx[:8].tolist() == FIRST_VALIDATION_INDICES


def test_split_is_fixed_and_disjoint() -> None:
    first, second = data.load_mnist(), data.load_mnist()
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    with np.load(data.MNIST_SUBSET) as npz:
        labels = npz["labels"]
    train_idx, test_idx = data.stratified_split(labels, data.TRAIN_PER_CLASS, data.SPLIT_SEED)
    assert len(np.intersect1d(train_idx, test_idx)) == 0 and len(train_idx) + len(test_idx) == 5000
    # Pinned: the first training indices never change (a changed split would silently move every number).
    assert train_idx[:8].tolist() == FIRST_TRAIN_INDICES


FIRST_TRAIN_INDICES = [0, 2, 3, 5, 6, 7, 8, 9]  # of the 4,000 before the validation split
FIRST_VALIDATION_INDICES = [2, 12, 34, 37, 39, 46, 47, 77]


def test_corrupted_subset_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "MNIST_SUBSET_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="sha256"):
        data.load_mnist()


def test_load_mnist_rejects_non_bool_full() -> None:
    with pytest.raises(TypeError, match="full"):
        data.load_mnist(full="yes")  # type: ignore[arg-type]


def test_make_loaders_order_is_seeded_and_workers_zero() -> None:
    a, test_a = data.make_loaders(batch_size=32, seed=3)
    b, _ = data.make_loaders(batch_size=32, seed=3)
    c, _ = data.make_loaders(batch_size=32, seed=4)
    ya, yb, yc = next(iter(a))[1], next(iter(b))[1], next(iter(c))[1]
    assert torch.equal(ya, yb) and not torch.equal(ya, yc)
    assert a.num_workers == 0 and test_a.num_workers == 0
    assert sum(len(y) for _, y in test_a) == 1000


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_make_loaders_validates_batch_size(bad: object) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        data.make_loaders(batch_size=bad)  # type: ignore[arg-type]


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_read_idx_round_trip_and_bad_header(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", array)
    assert np.array_equal(data.read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04"))
    with pytest.raises(ValueError, match="IDX"):
        data.read_idx(tmp_path / "bad.gz")


def test_full_mnist_offline_fails_fast_with_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline(url: str, timeout: float) -> None:
        calls.append(url)
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(ConnectionError, match="offline"):
        data.load_mnist(full=True, cache=tmp_path)
    assert len(calls) == len(data.MNIST_MIRRORS)  # each mirror tried once, then a clear error
    assert not list(tmp_path.glob("*.part"))


def test_full_mnist_download_rejects_a_wrong_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeResponse:
        def __init__(self) -> None:
            self.chunks = [b"not mnist", b""]

        def read(self, _n: int) -> bytes:
            return self.chunks.pop(0)

        def __enter__(self) -> FakeResponse:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: FakeResponse())
    with pytest.raises(RuntimeError, match="sha256"):
        data.download("https://example.invalid/x.gz", tmp_path / "x.gz", "0" * 64)
    assert not (tmp_path / "x.gz").exists() and not list(tmp_path.glob("*.part"))


def test_full_mnist_uses_verified_cached_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (6, 28, 28)),
        "train-labels-idx1-ubyte.gz": np.arange(6) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (3, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": np.arange(3),
    }
    for name, array in files.items():
        _write_idx(tmp_path / name, array)
    monkeypatch.setattr(data, "MNIST_FILES", {name: data.sha256_of(tmp_path / name) for name in files})

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not download files that are cached and verified")

    monkeypatch.setattr(data.urllib.request, "urlopen", no_network)
    monkeypatch.setattr(data, "FULL_VALIDATION_PER_CLASS", 0)
    x_train, y_train, x_test, y_test = data.load_mnist(full=True, cache=tmp_path)
    assert x_train.shape == (6, 1, 28, 28) and y_test.tolist() == [0, 1, 2]
    assert torch.allclose(x_train[0, 0], torch.from_numpy(files["train-images-idx3-ubyte.gz"][0] / 255.0).float())
    files["train-labels-idx1-ubyte.gz"] = np.array([0, 0, 1, 1, 2, 2])
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", files["train-labels-idx1-ubyte.gz"])
    monkeypatch.setattr(data, "MNIST_FILES", {name: data.sha256_of(tmp_path / name) for name in files})
    monkeypatch.setattr(data, "FULL_VALIDATION_PER_CLASS", 1)  # one digit of each class held out
    x_fit, y_fit, _, _ = data.load_mnist(full=True, cache=tmp_path)
    x_val, y_val = data.load_validation(full=True, cache=tmp_path)
    assert sorted(y_fit.tolist()) == [0, 1, 2] and sorted(y_val.tolist()) == [0, 1, 2]
    assert len(torch.unique(torch.cat([x_fit, x_val]).flatten(1), dim=0)) == 6


def test_random_shift_and_balanced_subset() -> None:
    x = torch.zeros(2, 1, 28, 28)
    x[:, 0, 10, 10] = 1.0
    shifted = data.random_shift(x, 2, torch.Generator().manual_seed(0))
    position = torch.nonzero(shifted[0, 0])[0].tolist()
    assert abs(position[0] - 10) <= 2 and abs(position[1] - 10) <= 2 and shifted.sum() == 2
    assert torch.equal(data.random_shift(x, 0), x)
    with pytest.raises(ValueError, match="max_shift"):
        data.random_shift(x, -1)
    y = torch.tensor([0] * 10 + [1] * 5 + [2] * 7)
    idx = data.balanced_subset(y, 3, seed=1)
    assert torch.bincount(y[idx]).tolist() == [3, 3, 3] and torch.equal(idx, torch.sort(idx).values)
    assert torch.equal(idx, data.balanced_subset(y, 3, seed=1))
    with pytest.raises(ValueError, match="per_class"):
        data.balanced_subset(y, 6)
