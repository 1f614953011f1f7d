"""Helpers for the model-compression course: data, models, training, metrics, plots, checks.

Each chapter builds a technique in its notebook; the reference version lives here so that
later chapters can reuse it. Start every notebook with :func:`setup`.
"""

from __future__ import annotations

import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

__version__ = "0.1.0"

__all__ = ["__version__", "available_cores", "cache_dir", "choose_threads", "cpu_quota", "seed_everything", "setup"]


def cache_dir() -> Path:
    """The course's cache folder (pretrained baselines, the optional full MNIST).

    ``$COMPRESSION_COURSE_CACHE`` if set, else ``$XDG_CACHE_HOME/compression-course``,
    else ``~/.cache/compression-course``. Created on first use.
    """
    override = os.environ.get("COMPRESSION_COURSE_CACHE")
    if override:
        path = Path(override)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
        path = Path(base) / "compression-course"
    path.mkdir(parents=True, exist_ok=True)
    return path


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity mask; ``os.cpu_count()`` where there is none)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (e.g. 1.5), or ``None`` when there is none.

    Reads cgroup v2 ``cpu.max`` ("quota period" or "max period") and falls back to cgroup v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``. A JupyterHub or a container often caps a kernel this
    way while ``os.cpu_count()`` still reports every core of the server.
    """
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def choose_threads(threads: int | None = None) -> tuple[int, str]:
    """The torch thread count a notebook should use, and why: ``(threads, reason)``.

    In order: an explicit ``threads``; ``$OMP_NUM_THREADS``; else one thread per usable core, where
    usable means within the affinity mask and the cgroup CPU quota, less one core kept free for the
    rest of the machine (Jupyter, the browser, other kernels) when there are at most four, and never
    fewer than one.

    Why one thread on a 2-core laptop: the course's models are small, so a second thread buys little
    (notebook 00: 1.1x quiet), while an OpenMP thread that shares its core with another busy process
    waits at every barrier: a 784-30-10 student took 86 s at 2 threads vs 6 s at 1 with one core busy.
    """
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        return threads, "asked for"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            value = int(env.split(",")[0])
        except ValueError:
            value = 0
        if value >= 1:
            return value, "OMP_NUM_THREADS"
    cores = available_cores()
    quota = cpu_quota()
    usable = cores if quota is None else max(1, min(cores, int(quota)))
    reason = f"{cores} cores" + ("" if quota is None else f", cgroup quota {quota:g} cores")
    if usable <= 4:
        return max(1, usable - 1), reason + ", one left free"
    return usable, reason


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and CUDA)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup(seed: int = 0, threads: int | None = None, verbose: bool = True) -> torch.device:
    """Prepare a notebook: seeds, torch thread count, plot style; print versions; return the device.

    Args:
        seed: seed for python, numpy and torch (>= 0).
        threads: torch intra-op threads; ``None`` picks them with :func:`choose_threads`
            (``$OMP_NUM_THREADS``, the affinity mask and the cgroup CPU quota). A fixed count makes
            latency numbers comparable between runs.
        verbose: print the versions, thread count and device.

    Returns:
        ``cuda`` when a GPU is present, else ``cpu``.
    """
    available = available_cores()
    threads, reason = choose_threads(threads)
    seed_everything(seed)
    torch.set_num_threads(threads)
    from . import plotting  # imported here so that `import helpers` stays light

    plotting.use_course_style()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if verbose:
        import matplotlib

        print(
            f"python {platform.python_version()} | torch {torch.__version__} | numpy {np.__version__} | "
            f"matplotlib {matplotlib.__version__} | helpers {__version__}"
        )
        gpu = f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else ""
        print(f"device: {device}{gpu} | torch threads: {threads} of {available} ({reason}) | seed: {seed}")
    return device
