"""Hard latency numbers of the course's models on this machine, printed as a table.

Run on demand (``make benchmark``), not in the tests: absolute timings depend on the machine and
its load. Every row is a median over warm repeats at a fixed thread count, with its IQR.

    python scripts/benchmark.py [--repeats 50] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import platform

import torch

import helpers
from helpers import metrics
from helpers.data import load_mnist
from helpers.train import pretrained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per row (default 50)")
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: 1 and all cores)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256], help="batch sizes (default 1 32 256)")
    args = parser.parse_args()
    helpers.setup(seed=0)
    threads = args.threads or sorted({1, helpers.available_cores()})
    _, _, x_test, _ = load_mnist()
    models = {"lenet300": pretrained("lenet300"), "lenet5": pretrained("lenet5")}
    print(f"\n{platform.processor() or platform.machine()} | torch {torch.__version__} | {helpers.available_cores()} cores")
    print(f"{'model':10s} {'batch':>5s} {'threads':>7s} {'median ms':>10s} {'IQR ms':>8s} {'us/image':>9s}")
    for name, model in models.items():
        for batch in args.batches:
            for n in threads:
                result = metrics.measure_latency(model, x_test[:batch], repeats=args.repeats, warmup=10, threads=n)
                per_image = result.median_ms / batch * 1e3
                print(f"{name:10s} {batch:5d} {n:7d} {result.median_ms:10.3f} {result.iqr_ms:8.3f} {per_image:9.2f}")


if __name__ == "__main__":
    main()
