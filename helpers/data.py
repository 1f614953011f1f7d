"""Data: the shipped MNIST subset, the opt-in full MNIST, and DataLoaders.

Nothing here touches the network unless you call ``load_mnist(full=True)``.
"""

from __future__ import annotations

import gzip
import hashlib
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

ASSETS = Path(__file__).resolve().parent / "assets"
MNIST_SUBSET = ASSETS / "mnist_5k.npz"
MNIST_SUBSET_SHA256 = "246e0c30eeea57c8d0037d3f38c8e00651ec204cc61b8022563e9aeeb9d756f4"
TRAIN_PER_CLASS = 400  # 400 train + 100 test digits of each class in the shipped subset
VALIDATION_PER_CLASS = 50  # of those 400, 50 are held out for validation: 350 train / 50 val / 100 test
FULL_VALIDATION_PER_CLASS = 500  # full MNIST: 500 of each class's training digits (5,000) for validation
SPLIT_SEED = 20151001  # fixed: the split is part of the course, not of a run
VALIDATION_SEED = 20151002

# The official MNIST files (LeCun & Cortes), from two public mirrors, with their sha256.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

Arrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 28, 28) and (N,) -> float32 (N, 1, 28, 28) in [0, 1] and int64 (N,)."""
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def stratified_split(labels: np.ndarray, train_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) taking ``train_per_class`` of each class for training, the rest for test.

    Deterministic: depends only on ``labels``, ``train_per_class`` and ``seed``. Both index arrays
    are sorted, so the data keep their original order within each part.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if train_per_class > len(members):
            raise ValueError(f"train_per_class={train_per_class} exceeds the {len(members)} samples of class {cls}")
        train.append(rng.permutation(members)[:train_per_class])
    train_idx = np.sort(np.concatenate(train))
    test_idx = np.setdiff1d(np.arange(len(labels)), train_idx)
    return train_idx, test_idx


def _subset_splits() -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The shipped subset's images, labels and (train, validation, test) indices."""
    if sha256_of(MNIST_SUBSET) != MNIST_SUBSET_SHA256:
        raise RuntimeError(
            f"{MNIST_SUBSET} does not match its sha256; restore it with `git checkout -- {MNIST_SUBSET.name}` "
            "or rebuild it with scripts/build_mnist_subset.py"
        )
    with np.load(MNIST_SUBSET) as data:
        images, labels = data["images"], data["labels"]
    train_idx, test_idx = stratified_split(labels, TRAIN_PER_CLASS, SPLIT_SEED)
    val_pos, fit_pos = stratified_split(labels[train_idx], VALIDATION_PER_CLASS, VALIDATION_SEED)
    return images, labels, (train_idx[fit_pos], train_idx[val_pos], test_idx)


def load_mnist(full: bool = False, cache: Path | None = None) -> Arrays:
    """MNIST as tensors ``(x_train, y_train, x_test, y_test)``; the validation split is :func:`load_validation`.

    Images are float32 in [0, 1] with shape (N, 1, 28, 28); labels are int64 with shape (N,).
    Training never sees a validation or test image: make every choice (sparsity, rank, T, bits)
    on :func:`load_validation` and report the test split once.

    Args:
        full: ``False`` (default) uses the 5,000-digit subset shipped with the course, split
            3,500 train / 500 validation / 1,000 test (350 / 50 / 100 per class), identical on every
            machine; no network. ``True`` uses the official MNIST (55,000 train / 5,000 validation /
            10,000 test), downloaded once into the cache folder and checked against its sha256;
            offline this fails fast with a clear error.
        cache: folder for the full download (default: ``helpers.cache_dir() / "mnist"``).
    """
    if not isinstance(full, bool):
        raise TypeError(f"full must be True or False, got {full!r}")
    if full:
        x_train, y_train, x_test, y_test = _load_full_mnist(cache)
        _, fit = stratified_split(y_train.numpy(), FULL_VALIDATION_PER_CLASS, VALIDATION_SEED)
        return x_train[fit], y_train[fit], x_test, y_test
    images, labels, (train_idx, _, test_idx) = _subset_splits()
    x_train, y_train = _to_tensors(images[train_idx], labels[train_idx])
    x_test, y_test = _to_tensors(images[test_idx], labels[test_idx])
    return x_train, y_train, x_test, y_test


def load_validation(full: bool = False, cache: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation split ``(x_val, y_val)``: 500 digits (50 per class) of the shipped subset, or 5,000
    of full MNIST's training digits; disjoint from :func:`load_mnist`'s train and test splits.

    Use it for every choice a chapter makes (a sparsity, a rank, a temperature, a bit width, when to
    stop); the test split is for reporting the chosen model once.
    """
    if not isinstance(full, bool):
        raise TypeError(f"full must be True or False, got {full!r}")
    if full:
        x_train, y_train, _, _ = _load_full_mnist(cache)
        val, _ = stratified_split(y_train.numpy(), FULL_VALIDATION_PER_CLASS, VALIDATION_SEED)
        return x_train[val], y_train[val]
    images, labels, (_, val_idx, _) = _subset_splits()
    return _to_tensors(images[val_idx], labels[val_idx])


def make_loaders(
    batch_size: int = 64,
    test_batch_size: int = 1000,
    seed: int = 0,
    full: bool = False,
    data: Arrays | None = None,
) -> tuple[DataLoader, DataLoader]:
    """``(train_loader, test_loader)`` over :func:`load_mnist`, with ``num_workers=0``.

    The training loader shuffles with its own generator seeded by ``seed``, so the batch order
    is the same on every run regardless of other random draws. Pass ``data`` to reuse arrays
    you already loaded.
    """
    for name, value in (("batch_size", batch_size), ("test_batch_size", test_batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    x_train, y_train, x_test, y_test = data if data is not None else load_mnist(full=full)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True, generator=generator, num_workers=0)
    test_loader = DataLoader(TensorDataset(x_test, y_test), batch_size=test_batch_size, shuffle=False, num_workers=0)
    return train_loader, test_loader


def random_shift(x: torch.Tensor, max_shift: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
    """Input jitter: roll every image of the batch (N, C, H, W) by the same random offset in
    [-max_shift, max_shift] pixels along each axis (MNIST digits have empty borders, so a small roll
    is a translation)."""
    if not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be a non-negative int, got {max_shift!r}")
    dx, dy = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=(dx, dy), dims=(2, 3))


def balanced_subset(y: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of ``per_class`` random examples of each class (the shipped data are grouped by class)."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(y):
        members = torch.nonzero(y == cls).flatten()
        if per_class > len(members):
            raise ValueError(f"per_class={per_class} exceeds the {len(members)} examples of class {int(cls)}")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.sort(torch.cat(chosen)).values


# --------------------------------------------------------------------------- full MNIST (opt-in)


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) into a uint8 array."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {body.size} values")
    return body.reshape(dims)


def download(url: str, dest: Path, sha256: str, timeout: float = 15.0) -> Path:
    """Download ``url`` to ``dest`` (atomically) and check its sha256; raise on any failure."""
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
    except (TimeoutError, urllib.error.URLError, OSError) as error:
        tmp.unlink(missing_ok=True)
        raise ConnectionError(f"could not download {url}: {error}") from error
    got = sha256_of(tmp)
    if got != sha256:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{url}: sha256 {got} does not match the expected {sha256}; file discarded")
    tmp.replace(dest)
    return dest


def _load_full_mnist(cache: Path | None) -> Arrays:
    if cache is None:
        from . import cache_dir

        cache = cache_dir() / "mnist"
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    for name, sha in MNIST_FILES.items():
        path = cache / name
        if path.exists() and sha256_of(path) == sha:
            continue
        errors = []
        for mirror in MNIST_MIRRORS:
            try:
                download(mirror + name, path, sha)
                break
            except (ConnectionError, RuntimeError) as error:
                errors.append(str(error))
        else:
            raise ConnectionError(
                "full MNIST is not available: " + " | ".join(errors) + ". You seem to be offline; "
                "use load_mnist() (the shipped 5,000-digit subset) instead, or copy the four official "
                f"MNIST .gz files into {cache}."
            )
    x_train, y_train = _to_tensors(read_idx(cache / "train-images-idx3-ubyte.gz"), read_idx(cache / "train-labels-idx1-ubyte.gz"))
    x_test, y_test = _to_tensors(read_idx(cache / "t10k-images-idx3-ubyte.gz"), read_idx(cache / "t10k-labels-idx1-ubyte.gz"))
    return x_train, y_train, x_test, y_test
