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

__all__ = ["__version__", "available_cores", "cache_dir", "seed_everything", "setup"]


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
    """Cores this process may use (the thread count :func:`setup` picks by default)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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
        threads: torch intra-op threads; ``None`` uses every core this process may use.
            A fixed count makes latency numbers comparable between runs.
        verbose: print the versions, thread count and device.

    Returns:
        ``cuda`` when a GPU is present, else ``cpu``.
    """
    available = available_cores()
    if threads is None:
        threads = available
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
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
        print(f"device: {device}{gpu} | torch threads: {threads} of {available} | seed: {seed}")
    return device
