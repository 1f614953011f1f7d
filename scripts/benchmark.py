"""Hard latency numbers of the course's models on this machine, printed as a table.

Run on demand (``make benchmark``), not in the tests: absolute timings depend on the machine and
its load. Every row is a median over warm repeats at a fixed thread count, with its IQR.

    python scripts/benchmark.py [--repeats 50] [--threads 1 2] [--busy]

The second table times training steps (what most notebook cells spend their time on) at each
thread count, interleaved in rounds; ``--busy`` keeps one core busy with another process meanwhile,
which is how a shared machine or a second notebook looks to torch's thread pool.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys

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
    parser.add_argument("--busy", action="store_true", help="keep one core busy with another process during the training-step table")
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
    training_steps(threads, busy=args.busy)


def training_steps(threads: list[int], busy: bool) -> None:
    """Median time of one SGD step (batch 64) per model and thread count, interleaved in rounds."""
    from torch import nn

    from helpers.models import build

    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    models = {"mlp 784-30-10": nn.Sequential(nn.Flatten(), nn.Linear(784, 30), nn.ReLU(), nn.Linear(30, 10))}
    models.update({name: build(name) for name in ("lenet300", "lenet5")})
    load = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        print(f"\ntraining step, batch 64{' (one core kept busy by another process)' if busy else ''}")
        for name, model in models.items():
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

            def step(n: int, model: nn.Module = model, optimizer: torch.optim.Optimizer = optimizer) -> None:
                torch.set_num_threads(n)
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()

            result = metrics.compare_latency({f"{n} threads": (step, n) for n in threads}, rounds=15, calls=10, warmup=5, inference=False)
            print(f"{name}\n{result.table()}")
    finally:
        if load is not None:
            load.kill()


if __name__ == "__main__":
    main()
