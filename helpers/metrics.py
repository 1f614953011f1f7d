"""The scorecard: parameters, nonzeros, bytes on disk, MACs, latency and compression ratio.

Sizes are bytes really serialized (``torch.save`` into memory, or a file's size), never
"parameters x 4". MACs are multiply-accumulates of Linear and Conv layers counted with forward
hooks on a real forward pass. Latency is the median over repeated timed calls after warm-up,
with a fixed thread count, plus its spread (interquartile range); to say how much faster B is than
A, :func:`compare_latency` runs them interleaved in rounds and reports the median per-round ratio.
"""

from __future__ import annotations

import gzip
import io
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# ----------------------------------------------------------------------------- counting


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (weights and biases) of ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_nonzero(model: nn.Module) -> int:
    """Number of parameters that are not exactly zero (what pruning reduces)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())


def serialized_size(obj: Any, compress: bool = False) -> int:
    """Bytes on disk of ``obj``.

    - ``nn.Module``: its ``state_dict`` written by ``torch.save`` (into memory; the bytes equal a
      file named ``archive.pt``: torch.save's zip archive prefixes each entry with the file's stem,
      so other names differ by a few bytes per tensor);
    - ``str`` / ``Path``: the size of that file;
    - ``bytes``: its length; a numpy array: the bytes of ``np.save``;
    - anything else ``torch.save`` accepts (a tensor, a dict of tensors, ...): what it writes.

    ``compress=True`` returns the size after gzip (level 9) instead, which shows how much a
    general-purpose compressor finds to squeeze (e.g. the zeros of a pruned model).
    """
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.is_file():
            raise FileNotFoundError(f"obj names no file: {path}")
        data = path.read_bytes()
    elif isinstance(obj, (bytes, bytearray)):
        data = bytes(obj)
    elif isinstance(obj, np.ndarray):
        buffer = io.BytesIO()
        np.save(buffer, obj, allow_pickle=False)
        data = buffer.getvalue()
    else:
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        data = buffer.getvalue()
    if compress:
        return len(gzip.compress(data, compresslevel=9, mtime=0))
    return len(data)


def compression_ratio(before: float, after: float) -> float:
    """``before / after`` (e.g. bytes of the baseline over bytes of the compressed model); both > 0."""
    if not before > 0 or not after > 0:
        raise ValueError(f"before and after must be > 0, got before={before!r}, after={after!r}")
    return before / after


def mac_table(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """MACs of each Linear / Conv1d / Conv2d / Conv3d layer for one forward pass on zeros of ``input_shape``.

    ``input_shape`` includes the batch dimension, e.g. ``(1, 1, 28, 28)``; the counts are for
    the whole batch. A Linear layer costs ``in_features`` MACs per output value; a convolution
    costs ``in_channels / groups * prod(kernel_size)`` MACs per output value (so depthwise and
    grouped convolutions are counted right). Bias additions, activations and pooling are not
    counted. Layers called twice are counted twice.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    shape = tuple(input_shape)
    if len(shape) < 2 or any((not isinstance(s, int)) or s < 1 for s in shape):
        raise ValueError(f"input_shape must be positive ints including the batch dimension, e.g. (1, 1, 28, 28); got {input_shape!r}")
    counts: dict[str, int] = {}
    handles = []

    def hook(name: str) -> Callable:
        def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(module, nn.Linear):
                macs = output.numel() * module.in_features
            else:
                per_output = module.in_channels // module.groups * int(np.prod(module.kernel_size))
                macs = output.numel() * per_output
            counts[name] = counts.get(name, 0) + int(macs)

        return count

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
        dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(shape, device=device, dtype=dtype))
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return counts


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Total multiply-accumulates of one forward pass (see :func:`mac_table`).

    LeNet-300-100 at ``(1, 1, 28, 28)``: 266,200; LeNet-5: 2,293,000.
    """
    return sum(mac_table(model, input_shape).values())


# ----------------------------------------------------------------------------- latency


@dataclass
class Latency:
    """Timings of repeated calls, in milliseconds."""

    median_ms: float
    iqr_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    threads: int
    times_ms: list[float] = field(repr=False)

    def __str__(self) -> str:
        return f"{self.median_ms:.3f} ms (IQR {self.iqr_ms:.3f} ms, {len(self.times_ms)} repeats, {self.threads} threads)"


def measure_latency(
    model: Callable[[Any], Any],
    x: Any,
    repeats: int = 50,
    warmup: int = 10,
    threads: int | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> Latency:
    """Time ``model(x)``: ``warmup`` untimed calls, then ``repeats`` timed calls; median and IQR.

    ``model`` is any callable (an ``nn.Module`` is run in eval mode under ``torch.inference_mode``).
    ``threads`` fixes torch's intra-op thread count during the measurement (restored afterwards);
    ``None`` keeps the current setting. Compare latencies only within one run on one machine,
    as ratios: absolute numbers move with the machine and its load.
    """
    for name, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    times = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            for _ in range(repeats):
                start = timer()
                model(x)
                times.append((timer() - start) * 1e3)
    finally:
        torch.set_num_threads(previous_threads)
        if isinstance(model, nn.Module):
            model.train(was_training)
    p25, median, p75 = np.percentile(times, [25, 50, 75])
    return Latency(
        median_ms=float(median),
        iqr_ms=float(p75 - p25),
        p25_ms=float(p25),
        p75_ms=float(p75),
        min_ms=float(min(times)),
        threads=threads if threads is not None else previous_threads,
        times_ms=times,
    )


@dataclass
class Comparison:
    """Interleaved timings of several callables (see :func:`compare_latency`), in milliseconds.

    ``rounds_ms[name]`` holds one median per round. Within a round every candidate ran back to back,
    so a burst of load from another process hits all of them alike; ratios are taken per round and
    then summarised, which cancels most of that load.
    """

    rounds_ms: dict[str, list[float]]
    threads: int

    def median_ms(self, name: str) -> float:
        """Median over rounds of ``name``'s per-round median time."""
        return float(np.median(self._get(name)))

    def spread_ms(self, name: str) -> tuple[float, float]:
        """(25th, 75th) percentile over rounds of ``name``'s per-round median time."""
        p25, p75 = np.percentile(self._get(name), [25, 75])
        return float(p25), float(p75)

    def ratios(self, slow: str, fast: str) -> np.ndarray:
        """Per-round speedups ``time(slow) / time(fast)`` (> 1 means ``fast`` is faster)."""
        return np.asarray(self._get(slow)) / np.asarray(self._get(fast))

    def speedup(self, slow: str, fast: str) -> float:
        """Median over rounds of ``time(slow) / time(fast)``."""
        return float(np.median(self.ratios(slow, fast)))

    def speedup_range(self, slow: str, fast: str) -> tuple[float, float]:
        """(25th, 75th) percentile over rounds of the speedup ``time(slow) / time(fast)``."""
        p25, p75 = np.percentile(self.ratios(slow, fast), [25, 75])
        return float(p25), float(p75)

    def _get(self, name: str) -> list[float]:
        if name not in self.rounds_ms:
            raise KeyError(f"no candidate named {name!r}; candidates: {list(self.rounds_ms)}")
        return self.rounds_ms[name]

    def table(self, baseline: str | None = None) -> str:
        """One line per candidate: median, interquartile range over rounds, speedup over ``baseline``."""
        baseline = baseline or next(iter(self.rounds_ms))
        width = max(len(n) for n in self.rounds_ms)
        lines = [f"{'candidate':<{width}}  median ms   (IQR over rounds)   speedup vs {baseline} (IQR)"]
        for name in self.rounds_ms:
            lo, hi = self.spread_ms(name)
            s_lo, s_hi = self.speedup_range(baseline, name)
            lines.append(
                f"{name:<{width}}  {self.median_ms(name):9.3f}   ({lo:8.3f} - {hi:8.3f})   "
                f"{self.speedup(baseline, name):6.2f}x ({s_lo:.2f} - {s_hi:.2f})"
            )
        lines.append(f"{len(next(iter(self.rounds_ms.values())))} rounds, {self.threads} torch threads")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def compare_latency(
    candidates: Mapping[str, Callable[[Any], Any] | tuple[Callable[[Any], Any], Any]],
    x: Any = None,
    rounds: int = 15,
    calls: int = 5,
    warmup: int = 3,
    threads: int | None = None,
    timer: Callable[[], float] = time.perf_counter,
    inference: bool = True,
) -> Comparison:
    """Time several callables interleaved in rounds: the robust way to say "B is k times faster than A".

    Each round runs every candidate ``calls`` times back to back (the order rotates from round to
    round) and keeps the median of those calls. Load from other processes comes and goes in bursts;
    since the candidates of one round share the same moment, the per-round ratio cancels most of it.

    Args:
        candidates: name -> callable (called as ``f(x)``), or name -> ``(callable, its own input)``.
            ``nn.Module`` candidates run in eval mode under ``torch.inference_mode``.
        x: the input of candidates given without their own.
        rounds: rounds (>= 3); calls: timed calls per candidate per round (>= 1); warmup: untimed calls
            per candidate before the first round (>= 0).
        threads: torch's intra-op thread count during the measurement (restored afterwards);
            ``None`` keeps the current setting.
        inference: run under ``torch.inference_mode`` with modules in eval mode (default); ``False``
            times the callables as they are, e.g. whole training steps.
    """
    if not candidates:
        raise ValueError("candidates is empty")
    for name, value, low in (("rounds", rounds, 3), ("calls", calls, 1), ("warmup", warmup, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    runs: dict[str, tuple[Callable, Any]] = {}
    for name, entry in candidates.items():
        fn, arg = entry if isinstance(entry, tuple) else (entry, x)
        if not callable(fn):
            raise TypeError(f"candidate {name!r} must be callable or (callable, input), got {type(fn).__name__}")
        runs[name] = (fn, arg)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    modes = {name: fn.training for name, (fn, _) in runs.items() if isinstance(fn, nn.Module) and inference}
    for name in modes:
        runs[name][0].eval()
    names = list(runs)
    results: dict[str, list[float]] = {name: [] for name in names}
    try:
        with torch.inference_mode(inference):
            for name in names:
                fn, arg = runs[name]
                for _ in range(warmup):
                    fn(arg)
            for r in range(rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    fn, arg = runs[name]
                    times = []
                    for _ in range(calls):
                        start = timer()
                        fn(arg)
                        times.append((timer() - start) * 1e3)
                    results[name].append(float(np.median(times)))
    finally:
        torch.set_num_threads(previous_threads)
        for name, was_training in modes.items():
            runs[name][0].train(was_training)
    return Comparison(rounds_ms=results, threads=threads if threads is not None else previous_threads)


# ----------------------------------------------------------------------------- scorecard


def size_vs_first(ratio: float) -> str:
    """``first bytes / these bytes`` in words: ``"6.00x smaller"``, ``"same"`` or ``"1.61x larger"``."""
    if round(ratio, 2) == 1.0:
        return "same"
    return f"{ratio:.2f}x smaller" if ratio > 1 else f"{1 / ratio:.2f}x larger"


class Scorecard(list):
    """Rows of :func:`scorecard` (dicts); prints as a side-by-side table."""

    COLUMNS = (
        ("name", "model", "{}"),
        ("accuracy", "accuracy", "{:.2%}"),
        ("params", "params", "{:,}"),
        ("nonzeros", "nonzeros", "{:,}"),
        ("bytes", "bytes on disk", "{:,}"),
        ("size_ratio", "size vs first row", size_vs_first),
        ("macs", "MACs", "{:,}"),
        ("latency_ms", "latency (ms)", "{:.3f}"),
        ("latency_iqr_ms", "IQR (ms)", "{:.3f}"),
    )

    def _cells(self) -> list[list[str]]:
        def cell(value: Any, fmt: str | Callable[[Any], str]) -> str:
            if value is None:
                return "-"
            return fmt(value) if callable(fmt) else fmt.format(value)

        return [[cell(row.get(key), fmt) for key, _, fmt in self.COLUMNS] for row in self]

    def table(self) -> str:
        """A plain-text table, one row per model."""
        header = [title for _, title, _ in self.COLUMNS]
        body = self._cells()
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths))) for r in [header, *body]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def _repr_markdown_(self) -> str:
        header = [title for _, title, _ in self.COLUMNS]
        rows = self._cells()
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)


def scorecard(
    models: Mapping[str, nn.Module],
    data: tuple[torch.Tensor, torch.Tensor],
    input_shape: Sequence[int] = (1, 1, 28, 28),
    latency_batch: int = 256,
    repeats: int = 30,
    warmup: int = 5,
    threads: int | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    latency: bool = True,
) -> Scorecard:
    """One row per model: accuracy, params, nonzeros, bytes on disk, MACs, latency, size ratio.

    Args:
        models: name -> model (on the CPU).
        data: ``(x_test, y_test)`` for accuracy; the first ``latency_batch`` images time the model.
        input_shape: shape (with batch dimension) for the MAC count.
        overrides: name -> {column: value} replacing measured columns, e.g. ``{"bytes": ...}`` for a
            model stored in a custom format (its real file size) or ``{"macs": ...}`` for a sparse one.
        repeats, warmup, threads: about ``repeats`` timed calls per model, run interleaved with the
            other models in rounds (:func:`compare_latency`), after ``warmup`` untimed calls, at a
            fixed thread count; the latency column is the median over rounds, its IQR the spread.
        latency: ``False`` skips the timing (latency columns show "-"), e.g. when the notebook has
            timed the models already with its own :func:`compare_latency`.

    ``size_ratio`` is the first row's bytes divided by each row's bytes.
    """
    from .train import evaluate

    if not models:
        raise ValueError("models is empty")
    if not isinstance(latency_batch, int) or latency_batch < 1:
        raise ValueError(f"latency_batch must be a positive int, got {latency_batch!r}")
    overrides = overrides or {}
    unknown = set(overrides) - set(models)
    if unknown:
        raise ValueError(f"overrides name models that are not in models: {sorted(unknown)}")
    x, y = data
    batch = x[:latency_batch]
    timing = None
    if latency:
        if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
            raise ValueError(f"repeats must be a positive int, got {repeats!r}")
        rounds = max(3, min(repeats, 10))
        timing = compare_latency(models, batch, rounds=rounds, calls=max(1, round(repeats / rounds)), warmup=warmup, threads=threads)
    rows = Scorecard()
    for name, model in models.items():
        p25, p75 = timing.spread_ms(name) if timing else (None, None)
        row = {
            "name": name,
            "accuracy": evaluate(model, (x, y)),
            "params": count_parameters(model),
            "nonzeros": count_nonzero(model),
            "bytes": serialized_size(model),
            "macs": count_macs(model, input_shape),
            "latency_ms": timing.median_ms(name) if timing else None,
            "latency_iqr_ms": (p75 - p25) if timing else None,
        }
        row.update(overrides.get(name, {}))
        rows.append(row)
    for row in rows:
        row["size_ratio"] = compression_ratio(rows[0]["bytes"], row["bytes"])
    return rows
