"""The checks that lab cells call.

Every check runs the learner's function on several fixed-seed random cases and edge cases,
compares with a reference (often a real PyTorch layer), and either prints one line starting
with "PASSED" or raises :class:`CheckFailure` (an ``AssertionError``) that says what was
expected, what came back, and a hint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .metrics import count_macs, count_parameters


class CheckFailure(AssertionError):
    """A lab check that did not pass; the message holds the case, expected, got and a hint.

    In Jupyter it shows only its message (``_render_traceback_``, IPython's hook): the learner sees
    expected / got / hint at once instead of below the source of the check's own frames.
    """

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


def fail(check: str, case: str, expected: Any, got: Any, hint: str) -> None:
    """Raise a :class:`CheckFailure` with a uniform, readable message."""
    __tracebackhide__ = True  # pytest and IPython hide this frame
    raise CheckFailure(f"{check} failed on {case}\n  expected: {expected}\n  got:      {got}\n  hint:     {hint}")


def passed(check: str, detail: str) -> None:
    """Print the one-line pass message of a check."""
    print(f"PASSED {check}: {detail}")


def rel_error(x: np.ndarray, y: np.ndarray) -> float:
    """Largest elementwise relative error ``|x - y| / max(1e-8, |x| + |y|)`` (CS231n's measure)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y)))) if x.size else 0.0


def _call(check: str, case: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call the learner's function; re-raise NotImplementedError unchanged, wrap other errors."""
    __tracebackhide__ = True
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise
    except Exception as error:  # noqa: BLE001 - any learner error becomes a check failure with context
        raise CheckFailure(f"{check}: your function raised {type(error).__name__}: {error}\n  on {case}") from error


def _as_int(check: str, case: str, value: Any) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (np.integer,)):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        fail(check, case, "an int", f"{value!r} ({type(value).__name__})", "return a whole number, e.g. with int(...)")
    return value


IN_PLACE_HINT = (
    "work on a copy: no `x /= s`, `w.div_(s)`, `np.abs(w, out=w)`, `q -= zp` or `w[...] = ...` on an argument "
    "(it may be a model's weight: `layer.weight.detach().numpy()` shares its memory)"
)


def _unchanged(check: str, case: str, before: Any, now: Any, what: str, hint: str = IN_PLACE_HINT) -> None:
    """Fail when the learner's function changed an argument in place: ``before`` is a copy taken before the call,
    ``now`` the object that was passed (numpy array or torch tensor)."""
    __tracebackhide__ = True
    a = before.detach().cpu().numpy() if isinstance(before, torch.Tensor) else np.asarray(before)
    b = now.detach().cpu().numpy() if isinstance(now, torch.Tensor) else np.asarray(now)
    if a.shape == b.shape and np.array_equal(a, b, equal_nan=True):
        return
    change = ""
    if a.shape == b.shape and np.issubdtype(a.dtype, np.number) and np.issubdtype(b.dtype, np.number):
        change = f" (largest change {np.max(np.abs(b.astype(np.float64) - a.astype(np.float64))):.3g})"
    fail(check, case, f"{what} left as it was", f"{what} changed in place by your function{change}", hint)


# ----------------------------------------------------------------------------- chapter 00

_LINEAR_CASES = [(784, 300, True), (300, 100, True), (100, 10, True), (7, 3, False), (1, 1, True), (1, 1, False), (64, 64, False)]

_CONV_CASES = [
    # in, out, kernel, groups, bias
    (1, 20, 5, 1, True),
    (20, 50, 5, 1, True),
    (16, 16, 3, 16, True),  # depthwise
    (32, 64, 3, 4, False),  # grouped
    (3, 8, 1, 1, False),  # pointwise
    (6, 9, (3, 5), 3, True),  # rectangular kernel, groups 3
]


def check_linear_params(fn: Callable[..., int]) -> None:
    """``fn(in_features, out_features, bias=True)`` must equal ``nn.Linear``'s parameter count."""
    name = "check_linear_params"
    for fan_in, fan_out, bias in _LINEAR_CASES:
        case = f"linear_params({fan_in}, {fan_out}, bias={bias})"
        expected = count_parameters(nn.Linear(fan_in, fan_out, bias=bias))
        got = _as_int(name, case, _call(name, case, fn, fan_in, fan_out, bias=bias))
        if got != expected:
            hint = "a Linear layer has a weight of shape (out, in) and, with bias, one bias per output"
            fail(name, case, expected, got, hint)
    passed(name, f"{len(_LINEAR_CASES)} layers match nn.Linear exactly, with and without bias")


def check_conv2d_params(fn: Callable[..., int]) -> None:
    """``fn(in_channels, out_channels, kernel_size, groups=1, bias=True)`` must equal ``nn.Conv2d``'s count."""
    name = "check_conv2d_params"
    for c_in, c_out, k, groups, bias in _CONV_CASES:
        case = f"conv2d_params({c_in}, {c_out}, kernel_size={k}, groups={groups}, bias={bias})"
        expected = count_parameters(nn.Conv2d(c_in, c_out, k, groups=groups, bias=bias))
        got = _as_int(name, case, _call(name, case, fn, c_in, c_out, k, groups=groups, bias=bias))
        if got != expected:
            hint = (
                "weight shape is (out, in / groups, kh, kw); kernel_size may be an int or a (kh, kw) pair; bias adds one per output channel"
            )
            fail(name, case, expected, got, hint)
    passed(name, f"{len(_CONV_CASES)} layers (plain, depthwise, grouped, 1x1, rectangular) match nn.Conv2d exactly")


def check_linear_macs(fn: Callable[..., int]) -> None:
    """``fn(in_features, out_features, batch=1)`` must equal the hook count on a real ``nn.Linear``."""
    name = "check_linear_macs"
    cases = [(784, 300, 1), (300, 100, 1), (100, 10, 32), (5, 7, 3), (1, 1, 1)]
    for fan_in, fan_out, batch in cases:
        case = f"linear_macs({fan_in}, {fan_out}, batch={batch})"
        expected = count_macs(nn.Linear(fan_in, fan_out), (batch, fan_in))
        got = _as_int(name, case, _call(name, case, fn, fan_in, fan_out, batch=batch))
        if got != expected:
            fail(
                name, case, expected, got, "each of the batch x out outputs needs in_features multiply-accumulates; bias adds are not MACs"
            )
    passed(name, f"{len(cases)} cases equal the forward-hook count")


def check_conv2d_macs(fn: Callable[..., int]) -> None:
    """``fn(in_channels, out_channels, kernel_size, height, width, stride=1, padding=0, groups=1)`` for one image."""
    name = "check_conv2d_macs"
    cases = [
        # in, out, k, h, w, stride, padding, groups
        (1, 20, 5, 28, 28, 1, 0, 1),
        (20, 50, 5, 12, 12, 1, 0, 1),
        (3, 16, 3, 32, 32, 2, 1, 1),
        (16, 16, 3, 15, 17, 1, 1, 16),  # depthwise, odd sizes
        (32, 64, 3, 9, 9, 2, 0, 4),  # grouped, stride that does not divide evenly
        (8, 8, 1, 7, 7, 1, 0, 1),
        (4, 6, 5, 5, 5, 1, 0, 2),  # a single output position
        (2, 4, 5, 10, 11, 2, 0, 1),  # (H - k) / s = 2.5: floor, not round
        (6, 12, 3, 14, 14, 3, 0, 1),  # (H - k) / s = 3.67
    ]
    for c_in, c_out, k, h, w, stride, padding, groups in cases:
        case = f"conv2d_macs({c_in}, {c_out}, kernel_size={k}, height={h}, width={w}, stride={stride}, padding={padding}, groups={groups})"
        layer = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, groups=groups)
        expected = count_macs(layer, (1, c_in, h, w))
        got = _as_int(name, case, _call(name, case, fn, c_in, c_out, k, h, w, stride=stride, padding=padding, groups=groups))
        if got != expected:
            out_h = (h + 2 * padding - k) // stride + 1
            hint = (
                f"the output is {out_h} pixels high here: floor((H + 2*padding - k) / stride) + 1; "
                "each output value costs (in_channels / groups) * k * k MACs"
            )
            fail(name, case, expected, got, hint)
    passed(name, f"{len(cases)} cases (stride, padding, groups, depthwise) equal the forward-hook count")


def check_linear_forward(fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> None:
    """``fn(x, W, b)`` must return ``relu(x @ W.T + b)`` like ``torch.relu(nn.Linear)``, as a float numpy array
    (float32 or float64; a torch tensor is rejected: the lab says numpy only and feeds the result back into numpy)."""
    name = "check_linear_forward"
    rng = np.random.default_rng(0)
    worst_abs = 0.0
    shapes = [(4, 6, 3), (1, 5, 5), (8, 16, 16), (3, 784, 300)]  # square cases catch a missing transpose
    for batch, fan_in, fan_out in shapes:
        x = rng.standard_normal((batch, fan_in)).astype(np.float32)
        weight = rng.standard_normal((fan_out, fan_in)).astype(np.float32)
        bias = rng.standard_normal(fan_out).astype(np.float32)
        case = f"x {x.shape}, W {weight.shape}, b {bias.shape}"
        expected = torch.relu(torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias))).numpy()
        saved = {"x": x.copy(), "W": weight.copy(), "b": bias.copy()}
        got = _call(name, case, fn, x, weight, bias)  # the learner's own arrays: an in-place edit must show
        for arg, array in (("x", x), ("W", weight), ("b", bias)):
            if not np.array_equal(array, saved[arg]):
                fail(
                    name,
                    case,
                    f"`{arg}` left as it was",
                    f"`{arg}` changed in place",
                    f"do not modify the inputs (no `{arg} += ...`, `out={arg}`, `{arg}[...] = ...`): "
                    "a layer's weights must survive a forward pass",
                )
        if not isinstance(got, np.ndarray) or got.dtype.kind != "f":
            fail(
                name,
                case,
                "a float numpy array",
                f"{type(got).__name__} {getattr(got, 'dtype', '')}".strip(),
                "use numpy only and return a numpy array, e.g. np.maximum(0, x @ W.T + b): the next cell feeds it back into numpy",
            )
        if got.shape != expected.shape:
            fail(name, case, f"shape {expected.shape}", f"shape {got.shape}", "W has shape (out, in): multiply x by W transposed")
        if not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
            hint = "compute x @ W.T + b, then ReLU (max with 0); check the transpose, the bias and the ReLU"
            fail(name, case, f"values like {expected.ravel()[:4]}", f"{got.ravel()[:4]}", hint)
        worst_abs = max(worst_abs, float(np.abs(got - expected).max()))
    passed(name, f"{len(shapes)} cases match PyTorch; largest absolute difference {worst_abs:.1e} (float32 rounding)")


class _ScriptedClock:
    """A fake ``perf_counter`` whose successive calls return scripted times (seconds)."""

    def __init__(self, durations_s: list[float]) -> None:
        self.now = 0.0
        self.durations = list(durations_s)
        self.calls_to_fn = 0
        self.started = False

    def timer(self) -> float:
        return self.now

    def workload(self, _x: Any) -> None:
        duration = self.durations[self.calls_to_fn] if self.calls_to_fn < len(self.durations) else 1.0
        self.now += duration
        self.calls_to_fn += 1


def check_measure_latency(fn: Callable[..., tuple[float, float]]) -> None:
    """``fn(f, x, repeats, warmup, timer)`` must skip warm-up and return (median ms, IQR ms) of ``repeats`` calls.

    The check drives ``fn`` with a scripted clock, so it is exact and independent of this machine.
    """
    name = "check_measure_latency"
    cases = [
        # warm-up calls are slow (first-call costs), timed ones vary, one outlier
        ([0.5, 0.2] + [0.010, 0.012, 0.011, 0.013, 0.009, 0.100, 0.010, 0.011], 8, 2),
        ([0.3] + [0.002, 0.004, 0.003, 0.005, 0.001], 5, 1),
        ([0.007] * 6, 6, 0),
        ([1.0, 1.0, 1.0] + [0.020, 0.021, 0.019, 0.500], 4, 3),
    ]
    for durations, repeats, warmup in cases:
        clock = _ScriptedClock(durations)
        case = f"repeats={repeats}, warmup={warmup}, call durations (s) {durations}"
        got = _call(name, case, fn, clock.workload, None, repeats=repeats, warmup=warmup, timer=clock.timer)
        timed_ms = np.array(durations[warmup : warmup + repeats]) * 1e3
        expected = (float(np.median(timed_ms)), float(np.subtract(*np.percentile(timed_ms, [75, 25]))))
        if clock.calls_to_fn != repeats + warmup:
            fail(
                name,
                case,
                f"{repeats + warmup} calls of f",
                f"{clock.calls_to_fn} calls",
                "call f warmup times untimed, then repeats times timed",
            )
        try:
            median, iqr = (float(v) for v in got)
        except (TypeError, ValueError):
            fail(name, case, "a pair (median_ms, iqr_ms)", repr(got), "return median and interquartile range as two numbers")
        if not np.isclose(median, expected[0], rtol=1e-6, atol=1e-9):
            hint = (
                "median (not mean, not min) of the timed calls only, in milliseconds (seconds x 1000); with an even count it is the "
                "mean of the two middle values (np.median or statistics.median; torch.median returns the lower one)"
            )
            fail(name, case, f"median {expected[0]:.4f} ms", f"{median:.4f}", hint)
        if not np.isclose(iqr, expected[1], rtol=1e-6, atol=1e-9):
            fail(
                name,
                case,
                f"IQR {expected[1]:.4f} ms",
                f"{iqr:.4f}",
                "IQR = 75th minus 25th percentile (np.percentile's default interpolation), in ms",
            )
    passed(name, f"{len(cases)} scripted-clock cases: warm-up skipped, median and IQR exact")


# ----------------------------------------------------------------------------- chapter 01: pruning


def _mask_cases() -> list[tuple[str, np.ndarray, float]]:
    rng = np.random.default_rng(1)
    many_ties = rng.integers(-3, 4, size=(40, 50)).astype(np.float64)  # 2,000 entries, 7 values: ties everywhere
    return [
        ("random 6x7 at 0.5", rng.standard_normal((6, 7)), 0.5),
        ("random 30x20 at 0.9", rng.standard_normal((30, 20)), 0.9),
        ("ties: [3, 1, 2, 1, 1, 4] at 0.3 (three 1s tie, two are pruned)", np.array([3.0, 1, 2, 1, 1, 4]), 0.3),
        ("ties with signs: [-2, 2, -2, 2, 1] at 0.4", np.array([-2.0, 2, -2, 2, 1]), 0.4),
        ("all equal 4x4 at 0.25", np.ones((4, 4)), 0.25),
        ("zeros and values at 0.5", np.array([[0.0, 0.0, 5.0], [0.0, -1.0, 0.0]]), 0.5),
        ("sparsity 0 keeps all", rng.standard_normal(10), 0.0),
        ("sparsity 1 prunes all", rng.standard_normal(10), 1.0),
        ("size 5 at 0.5: round(2.5) = 2", np.array([5.0, 4, 3, 2, 1]), 0.5),
        ("3-d tensor 2x3x4 at 0.3", rng.standard_normal((2, 3, 4)), 0.3),
        ("40x50 integers in [-3, 3] at 0.37 (hundreds of exact ties)", many_ties, 0.37),
        ("float32 40x50 integers in [-3, 3] at 0.63", many_ties.astype(np.float32), 0.63),
    ]


_UNSTABLE_HINT = (
    "among equal |w| prune the lower flat index first: np.argsort(..., kind='stable'); the default np.argsort, "
    "np.argpartition, torch.sort and torch.topk may order ties differently on large inputs"
)


def _as_mask(check: str, case: str, got: Any, shape: tuple[int, ...]) -> np.ndarray:
    """The learner's mask as a numpy bool array, or a failure naming what is wrong (type, shape, dtype)."""
    __tracebackhide__ = True
    if isinstance(got, torch.Tensor):
        got = got.detach().cpu().numpy()
    if not isinstance(got, np.ndarray):
        fail(check, case, "a numpy bool array", f"{type(got).__name__}", "return a numpy array of bools with the shape of w")
    if got.shape != tuple(shape):
        fail(check, case, f"shape {tuple(shape)}", f"shape {got.shape}", "return a mask with the shape of w (reshape the flat mask)")
    if got.dtype != bool:
        fail(check, case, "dtype bool", f"dtype {got.dtype}", "return a boolean mask (True = keep), e.g. np.ones(n, dtype=bool)")
    return got


WEIGHT_IN_PLACE_HINT = (
    "do not write into the input (np.abs(w, out=w), w /= ..., w[...] = ...): in the lab w may be "
    "model.weight.detach().numpy(), which shares memory with the model; compute on a new array"
)


def check_magnitude_mask(fn: Callable[[np.ndarray, float], np.ndarray]) -> None:
    """``fn(w, sparsity)`` -> boolean mask pruning round(sparsity*size) smallest |w|, lower index first on ties.

    The learner gets its own copy of each input, and once an array that shares memory with a torch tensor (as
    ``weight.detach().numpy()`` does); the input must come back unchanged.
    """
    from .pruning import magnitude_mask

    name = "check_magnitude_mask"
    cases = _mask_cases()
    for case, w, sparsity in cases:
        expected = magnitude_mask(w, sparsity)
        given = w.copy()
        got = _as_mask(name, case, _call(name, case, fn, given, sparsity), w.shape)
        _unchanged(name, case, w, given, "w", WEIGHT_IN_PLACE_HINT)
        if int((~got).sum()) != int((~expected).sum()):
            fail(
                name,
                case,
                f"{int((~expected).sum())} pruned",
                f"{int((~got).sum())} pruned",
                "prune exactly k = round(sparsity * w.size) entries (Python's round), even when values tie",
            )
        if not np.array_equal(got, expected):
            wrong = np.flatnonzero(got.ravel() != expected.ravel())
            tie = np.unique(np.abs(w.ravel()[wrong])).size == 1 and len(wrong) > 0
            fail(
                name,
                case,
                expected.astype(int).tolist() if w.size <= 64 else f"a mask differing at none of {w.size} entries",
                got.astype(int).tolist() if w.size <= 64 else f"differences at {len(wrong)} entries (flat {wrong[:6].tolist()} ...)",
                _UNSTABLE_HINT if tie else "prune the smallest |w|; among equal |w| prune the lower flat index first (a stable sort)",
            )
    # the lab passes model weights as weight.detach().numpy(): a view of the tensor's memory
    weight = torch.from_numpy(np.random.default_rng(5).standard_normal((8, 6)).astype(np.float32))
    original = weight.clone()
    _call(name, "a float32 view of a torch tensor (weight.detach().numpy())", fn, weight.detach().numpy(), 0.5)
    view_case = "a float32 view of a torch tensor (weight.detach().numpy())"
    _unchanged(name, view_case, original.numpy(), weight.numpy(), "the tensor", WEIGHT_IN_PLACE_HINT)
    passed(name, f"{len(cases) + 1} cases incl. ties (2,000 entries), all-equal, zeros, sparsity 0 and 1; input unchanged")


def check_global_masks(fn: Callable[[dict, float], dict]) -> None:
    """``fn(weights_dict, sparsity)`` -> dict of masks with one magnitude threshold across all layers."""
    from .pruning import global_magnitude_masks

    name = "check_global_masks"
    rng = np.random.default_rng(2)
    cases = [
        (
            "layers with different scales",
            {"a": rng.standard_normal((8, 5)) * 0.1, "b": rng.standard_normal((4, 6)), "c": rng.standard_normal(7) * 3},
            0.6,
        ),
        ("a tie across layers", {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([2.0, 5.0, 1.0])}, 0.5),
        ("one layer", {"only": rng.standard_normal((5, 5))}, 0.3),
        (
            "integer values in [-2, 2], 1,300 exact ties across three layers",
            {
                "x": rng.integers(-2, 3, (20, 30)).astype(float),
                "y": rng.integers(-2, 3, (10, 50)).astype(float),
                "z": rng.integers(-2, 3, 200).astype(float),
            },
            0.45,
        ),
        # keys not in sorted order: concatenating in sorted(weights) order prunes the tie in the wrong layer
        (
            "a tie across layers whose names are not in sorted order: {'b': [1, 2], 'a': [1, 3]}",
            {"b": np.array([1.0, 2.0]), "a": np.array([1.0, 3.0])},
            0.25,
        ),
        (
            "layers in model order fc2, conv1, fc1 (not sorted by name), integers in [-2, 2], exact ties across layers",
            {
                "fc2": rng.integers(-2, 3, (6, 10)).astype(float),
                "conv1": rng.integers(-2, 3, (4, 1, 3, 3)).astype(float),
                "fc1": rng.integers(-2, 3, (10, 12)).astype(float),
            },
            0.5,
        ),
    ]
    hint = "rank all |w| of all layers together (one threshold); ties: earlier layer (dict order), then lower index, pruned first"
    for case, weights, sparsity in cases:
        expected = global_magnitude_masks(weights, sparsity)
        in_sorted_order = global_magnitude_masks({k: weights[k] for k in sorted(weights)}, sparsity)
        given = {k: v.copy() for k, v in weights.items()}
        got = _call(name, case, fn, given, sparsity)
        if not isinstance(got, dict) or set(got) != set(weights):
            keys = sorted(got) if isinstance(got, dict) else type(got).__name__
            fail(name, case, f"a dict with keys {sorted(weights)}", keys, "return {layer name: mask}, one entry per layer")
        for layer in weights:
            _unchanged(name, f"{case}, layer {layer!r}", weights[layer], given[layer], f"weights[{layer!r}]", WEIGHT_IN_PLACE_HINT)
            mask = _as_mask(name, f"{case}, layer {layer!r}", got[layer], weights[layer].shape)
            if not np.array_equal(mask, expected[layer]):
                small = weights[layer].size <= 64
                if list(weights) != sorted(weights) and all(np.array_equal(_to_numpy(got[k]), in_sorted_order[k]) for k in weights):
                    hint = (
                        "concatenate the layers in the dict's own order (weights.values() / weights.items()), not sorted by name: "
                        "ties across layers go to the earlier layer in that order"
                    )
                fail(
                    name,
                    f"{case}, layer {layer!r}",
                    expected[layer].astype(int).tolist()
                    if small
                    else f"{int((~expected[layer]).sum())} pruned, at the stable-sort positions",
                    mask.astype(int).tolist()
                    if small
                    else f"{int((~mask).sum())} pruned, {int((mask != expected[layer]).sum())} entries differ",
                    hint + ("" if small else "; " + _UNSTABLE_HINT),
                )
    passed(name, f"{len(cases)} cases: one global threshold, ties across layers resolved in order; inputs unchanged")


def check_gradual_sparsity(fn: Callable[..., float]) -> None:
    """``fn(step, final_sparsity, begin_step, end_step, initial_sparsity)`` must follow Zhu & Gupta's cubic schedule."""
    from .pruning import gradual_sparsity

    name = "check_gradual_sparsity"
    cases = [(s, 0.9, 10, 110, 0.0) for s in (0, 10, 11, 35, 60, 85, 109, 110, 500)] + [(s, 0.8, 0, 4, 0.2) for s in range(6)]
    for step, final, begin, end, initial in cases:
        case = f"step={step}, final={final}, begin={begin}, end={end}, initial={initial}"
        expected = gradual_sparsity(step, final, begin, end, initial)
        got = _call(name, case, fn, step, final, begin, end, initial)
        if isinstance(got, (torch.Tensor, np.ndarray)) and got.ndim == 0:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, (int, float, np.floating, np.integer)):
            fail(name, case, "a number (float)", f"{got!r} ({type(got).__name__})", "return one float, the sparsity at this step")
        if not np.isclose(float(got), expected, rtol=0, atol=1e-6):  # float32 arithmetic is fine
            hint = "s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))**3 between begin and end (true division); s_i before, s_f after"
            fail(name, case, f"{expected:.8f}", f"{float(got):.8f}", hint)
    passed(name, f"{len(cases)} steps, before / during / after the ramp, match the cubic schedule")


def check_csr_encode(fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """``fn(dense)`` -> ``(values, col_idx, row_ptr)`` of the CSR format; indices are integer arrays, the input unchanged."""
    from .pruning import csr_encode

    name = "check_csr_encode"
    rng = np.random.default_rng(3)
    dense = rng.standard_normal((6, 9)) * (rng.random((6, 9)) < 0.3)
    dense[2] = 0.0  # an empty row
    tall = rng.standard_normal((300, 40)) * (rng.random((300, 40)) < 0.1)
    tall[[0, 150, 299]] = 0.0  # empty first, middle and last rows
    cases = [
        ("a 6x9 matrix with an empty row", dense),
        ("all zeros 3x4", np.zeros((3, 4))),
        ("dense 2x3", np.arange(1.0, 7.0).reshape(2, 3)),
        ("one nonzero in the last row", np.pad(np.array([[7.0]]), ((4, 0), (2, 0)))),
        ("float32 300x40 with empty first, middle and last rows", tall.astype(np.float32)),
    ]
    for case, a in cases:
        ref = csr_encode(a)
        given = a.copy()
        got = _call(name, case, fn, given)
        _unchanged(name, case, a, given, "dense", WEIGHT_IN_PLACE_HINT)
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            fail(name, case, "a tuple (values, col_idx, row_ptr)", f"{type(got).__name__}", "return the three arrays, in that order")
        values, col_idx, row_ptr = (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in got)
        for label, array in (("col_idx", col_idx), ("row_ptr", row_ptr)):
            if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
                fail(
                    name,
                    f"{case}: {label}",
                    "a 1-d integer array",
                    f"shape {array.shape}, dtype {array.dtype}",
                    f"{label} holds indices: keep it integer (np.concatenate([[0], ...]) with an int 0; no float zeros, no float division)",
                )
        if len(row_ptr) != a.shape[0] + 1 or not np.array_equal(row_ptr, ref.row_ptr):
            fail(
                name,
                case,
                ref.row_ptr.tolist() if len(ref.row_ptr) <= 12 else f"{len(ref.row_ptr)} entries, first {ref.row_ptr[:6].tolist()}",
                row_ptr.tolist() if len(row_ptr) <= 12 else f"{len(row_ptr)} entries, first {row_ptr[:6].tolist()}",
                "row_ptr has rows + 1 entries, starts at 0 and ends at nnz; row r owns values[row_ptr[r]:row_ptr[r+1]]",
            )
        if col_idx.shape != ref.col_idx.shape or not np.array_equal(col_idx, ref.col_idx):
            fail(
                name,
                case,
                ref.col_idx.tolist()[:20],
                col_idx.tolist()[:20],
                "store the column of each nonzero, row by row (row-major order), not its row",
            )
        if values.shape != ref.values.shape or not np.issubdtype(values.dtype, np.floating):
            fail(
                name, case, f"{ref.nnz} float values", f"shape {values.shape}, dtype {values.dtype}", "values holds the nonzeros themselves"
            )
        if not np.allclose(values, ref.values, rtol=1e-6, atol=0):
            fail(name, case, ref.values.tolist()[:8], values.tolist()[:8], "store the nonzero values in row-major order")
    passed(name, f"{len(cases)} matrices incl. empty rows, all zeros and fully dense; integer indices; input unchanged")


def check_sensitivity_scan(fn: Callable[..., dict], model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """``fn(model, data, sparsities)`` -> {layer: [accuracy at each sparsity]}, pruning one layer at a time, model untouched."""
    import copy

    from .pruning import apply_masks, magnitude_mask, prunable_weights
    from .train import evaluate

    name = "check_sensitivity_scan"
    sparsities = [0.0, 0.5, 0.9]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = _call(name, "sparsities [0.0, 0.5, 0.9]", fn, model, data, sparsities)
    for key, value in model.state_dict().items():
        if not torch.equal(value, before[key]):
            model.load_state_dict(before)  # repair the learner's model so that later cells start from the baseline
            fail(
                name,
                "the model after the scan",
                "unchanged weights",
                f"{key} was modified (restored now)",
                "prune a deep copy (copy.deepcopy) for each layer and sparsity, never the model itself",
            )
    expected = {}
    for layer in prunable_weights(model):
        accs = []
        for s in sparsities:
            m = copy.deepcopy(model)
            apply_masks(m, {layer: magnitude_mask(prunable_weights(m)[layer].detach(), s)})
            accs.append(evaluate(m, data))
        expected[layer] = accs
    if not isinstance(got, dict) or set(got) != set(expected):
        fail(
            name,
            "the layers scanned",
            sorted(expected),
            sorted(got) if isinstance(got, dict) else repr(got),
            "one entry per prunable layer (Linear/Conv2d weight)",
        )
    for layer in expected:
        try:
            accs = np.array([float(a) for a in got[layer]], dtype=float)
        except (TypeError, ValueError):
            fail(name, f"layer {layer!r}", f"a list of {len(sparsities)} accuracies", repr(got[layer]), "one float per sparsity")
        if accs.shape != (len(sparsities),):
            fail(name, f"layer {layer!r}", f"{len(sparsities)} accuracies", f"{accs.size}", "one accuracy per sparsity, in order")
        if not np.allclose(accs, expected[layer], atol=1e-6):
            fail(
                name,
                f"layer {layer!r}",
                [round(a, 4) for a in expected[layer]],
                [round(float(a), 4) for a in accs],
                "prune only this layer at each sparsity, starting from the original weights each time; accuracy as a fraction in [0, 1]",
            )
    passed(name, f"{len(expected)} layers x {len(sparsities)} sparsities match; the model is unchanged")


def _taylor_case(seed: int) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    from .models import LeNet300

    torch.manual_seed(seed)
    model = LeNet300(hidden=(24, 12))
    generator = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(16, 1, 28, 28, generator=generator), torch.randint(0, 10, (16,), generator=generator)) for _ in range(4)]
    return model, batches


def check_taylor_scores(fn: Callable[..., dict]) -> None:
    """``fn(model, batches)`` -> {layer: mean over batches of (w * dL_b/dw)**2}, L_b the batch's mean cross-entropy.

    One entry per prunable weight (``P.prunable_weights``), each of the weight's shape; the model's weights unchanged.
    """
    import copy

    from .pruning import accumulate_taylor_scores, prunable_weights

    name = "check_taylor_scores"
    for seed in (0, 1):
        model, batches = _taylor_case(seed)
        case = f"a small LeNet-300 (24, 12 hidden), {len(batches)} batches of 16 (seed {seed})"
        expected = accumulate_taylor_scores(copy.deepcopy(model), batches)
        before = copy.deepcopy(model.state_dict())
        try:
            got = fn(model, batches)
        except NotImplementedError:
            raise
        except RuntimeError as error:
            if "does not require grad" in str(error) or "grad_fn" in str(error):
                fail(
                    name,
                    case,
                    "a backward pass through the model",
                    f"RuntimeError: {error}",
                    "compute the loss with gradients enabled (no torch.no_grad(), no detached weights), then call .backward()",
                )
            raise CheckFailure(f"{name}: your function raised RuntimeError: {error}\n  on {case}") from error
        except Exception as error:  # noqa: BLE001 - any learner error becomes a check failure with context
            raise CheckFailure(f"{name}: your function raised {type(error).__name__}: {error}\n  on {case}") from error
        for key, value in model.state_dict().items():
            if not torch.equal(value, before[key]):
                fail(
                    name,
                    case,
                    "the model's weights unchanged",
                    f"{key} changed",
                    "only compute gradients; no optimizer step, no in-place edits of w",
                )
        layers = list(prunable_weights(model))
        if not isinstance(got, dict) or set(got) != set(layers):
            fail(
                name,
                case,
                f"a dict with keys {layers}",
                sorted(got) if isinstance(got, dict) else type(got).__name__,
                "one entry per prunable weight: for name, w in P.prunable_weights(model).items()",
            )
        for layer in layers:
            value = got[layer]
            if isinstance(value, np.ndarray):
                value = torch.from_numpy(value)
            if not isinstance(value, torch.Tensor):
                fail(name, f"{case}, layer {layer!r}", "a torch tensor", type(value).__name__, "return a tensor of the weight's shape")
            value = value.detach().to(torch.float64)
            ref = expected[layer].to(torch.float64)
            if value.shape != ref.shape:
                fail(name, f"{case}, layer {layer!r}", f"shape {tuple(ref.shape)}", f"shape {tuple(value.shape)}", "one score per weight")
            error = float((value - ref).abs().max() / ref.abs().max())
            if not error < 1e-4:
                ratio = float(value.sum() / ref.sum())
                if abs(ratio - len(batches)) < 1e-3 * len(batches):
                    hint = "divide by the number of batches: the score is the mean over batches, not the sum"
                elif abs(ratio - 16**2) < 0.1:
                    hint = "use the batch's mean loss (F.cross_entropy's default reduction), not the sum"
                elif bool((value < 0).any()):
                    hint = "square w * grad for each batch: the score is never negative"
                else:
                    hint = (
                        "for each batch: model.zero_grad(), mean loss, backward, then add (w * w.grad)**2; square per batch "
                        "before averaging (averaging the gradient first cancels it out); no abs instead of the square"
                    )
                fail(
                    name,
                    f"{case}, layer {layer!r}",
                    f"max {float(ref.max()):.4e}, sum {float(ref.sum()):.4e}",
                    f"max {float(value.max()):.4e}, sum {float(value.sum()):.4e} (relative error {error:.1e})",
                    hint,
                )
    passed(name, "2 models x 3 layers: mean over batches of (w * g_b)^2 matches; the model is unchanged")


# ----------------------------------------------------------------------------- chapter 02: structured pruning


def check_nm_mask(fn: Callable[..., np.ndarray]) -> None:
    """``fn(w, n, m)`` -> boolean mask keeping the n largest |w| of every m consecutive entries along the input axis.

    For a Linear weight (out, in) the groups run along ``in``; for a conv weight (out, in, kh, kw) along ``in`` at each
    kernel position (``w[o, c:c+m, u, v]``).

    The learner's function gets the case's own array (not a copy) and must leave it unchanged. A numpy bool array
    or a torch bool tensor is accepted; ties (exact, on integer-valued weights) must prune the lower index first.
    """
    from .pruning import nm_mask

    name = "check_nm_mask"
    rng = np.random.default_rng(4)
    cases = [
        ("random 6x16, 2:4", rng.standard_normal((6, 16)), 2, 4),
        ("random 3x24, 1:4", rng.standard_normal((3, 24)), 1, 4),
        ("random 4x16, 2:8", rng.standard_normal((4, 16)), 2, 8),
        ("ties: [[1, 1, 1, 1, 2, 2, 0, 0]], 2:4", np.array([[1.0, 1, 1, 1, 2, 2, 0, 0]]), 2, 4),
        ("signs: [[-5, 1, 2, -3]], 2:4", np.array([[-5.0, 1, 2, -3]]), 2, 4),
        ("a tall matrix 4x8 (groups run along rows, not columns)", rng.standard_normal((4, 8)), 2, 4),
        ("many exact ties: 64x64 integers in -2..2, 2:4", rng.integers(-2, 3, (64, 64)).astype(np.float64), 2, 4),
        ("many exact ties: 32x64 integers in -1..1, 1:4", rng.integers(-1, 2, (32, 64)).astype(np.float64), 1, 4),
        ("many exact ties: 32x64 integers in -2..2, 2:8", rng.integers(-2, 3, (32, 64)).astype(np.float64), 2, 8),
        ("many exact ties: 16x64 integers in -3..3, 4:16 (float32)", rng.integers(-3, 4, (16, 64)).astype(np.float32), 4, 16),
        ("conv weight (6, 8, 3, 3), 2:4 (groups along input channels)", rng.standard_normal((6, 8, 3, 3)), 2, 4),
        ("conv weight (4, 16, 1, 1), 2:8 (pointwise)", rng.standard_normal((4, 16, 1, 1)), 2, 8),
        ("conv weight (8, 8, 2, 3) of integers in -2..2, 2:4 (exact ties)", rng.integers(-2, 3, (8, 8, 2, 3)).astype(np.float32), 2, 4),
    ]
    for case, w, n, m in cases:
        expected = np.asarray(nm_mask(w, n, m))
        pristine = w.copy()
        got = _call(name, case, fn, w, n, m)  # the learner's function gets the array itself: in-place edits show
        _unchanged(name, case, pristine, w, "the input w", "do not modify w (np.abs(w, out=w), w[...] = ...): compute |w| into a new array")
        if isinstance(got, torch.Tensor):
            got = got.detach().cpu().numpy()
        if not isinstance(got, np.ndarray):
            fail(
                name,
                case,
                f"a bool numpy array of shape {w.shape}",
                type(got).__name__,
                "return a numpy array (a torch tensor is accepted too)",
            )
        if got.shape != w.shape:
            fail(
                name, case, f"a bool mask of shape {w.shape}", f"shape {got.shape}", "return a mask shaped like w (reshape the groups back)"
            )
        if got.dtype != bool:
            fail(
                name,
                case,
                f"dtype bool, shape {w.shape}",
                f"dtype {got.dtype}",
                "return a boolean mask (mask.astype(bool)): w[mask] and ~mask misbehave on a 0/1 array",
            )
        if not np.array_equal(got, expected):
            # the same kept |w| in every group, at other positions: only the order among exact ties differs
            groups_w = np.abs(np.moveaxis(w, 1, -1).reshape(-1, m)).astype(np.float64)
            groups_got, groups_exp = np.moveaxis(got, 1, -1).reshape(-1, m), np.moveaxis(expected, 1, -1).reshape(-1, m)
            ties_only = bool(np.all(groups_got.sum(-1) == n)) and all(
                np.array_equal(np.sort(a[g]), np.sort(a[e])) for a, g, e in zip(groups_w, groups_got, groups_exp)
            )
            if ties_only:
                hint = "ties: prune the lower index first with a stable sort (np.argsort(..., kind='stable')), not argpartition or topk"
            elif w.ndim == 4:
                hint = "conv weight: group along the input channels (dim 1) at each kernel position: move dim 1 last, group, move it back"
            else:
                hint = "keep the n largest |w| in each group of m consecutive entries along the last (input) axis"
            wrong = np.argwhere(got != expected)[:3].tolist()
            fail(
                name,
                case,
                f"{int(expected.sum())} kept entries, as the reference",
                f"{len(np.argwhere(got != expected))} entries differ, e.g. at {wrong}",
                hint,
            )
    for shape in ((2, 6), (4, 6, 2, 2)):
        case = f"w of shape {shape} with m = 4 (input dimension 6)"
        try:
            fn(np.ones(shape), 2, 4)
        except ValueError:
            continue
        except NotImplementedError:
            raise
        except Exception as error:  # noqa: BLE001
            fail(
                name,
                case,
                "ValueError",
                f"{type(error).__name__}: {error}",
                "raise ValueError when the input dimension is not divisible by m",
            )
        fail(name, case, "ValueError", "no error", "raise ValueError when the input dimension (dim 1) is not divisible by m")
    passed(
        name,
        f"{len(cases)} cases: Linear and conv weights, exact ties, 1:4 / 2:8 / 4:16, input left unchanged, ValueError when indivisible",
    )


def check_top_filters(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(weight, keep, norm)`` -> sorted indices (an integer torch tensor) of the ``keep`` output channels of highest L1/L2 norm.

    The weight is passed as an ``nn.Parameter`` (as in the lab, ``layer.weight``) and must come back unchanged.
    """
    from .pruning import channel_scores, top_channels

    name = "check_top_filters"
    torch.manual_seed(5)
    tied = torch.tensor([[1.0, -1.0], [3.0, 0.0], [0.5, 0.5], [-1.0, 1.0]])
    l1_vs_l2 = torch.tensor([[3.0, 0.0, 0.0], [1.2, 1.2, 1.2], [0.1, 0.1, 0.1]])  # L1 prefers row 1, L2 row 0
    many_ties = torch.randint(-1, 2, (64, 3, 2, 2)).float()  # L1 norms 0..12 and L2 norms sqrt(0..12): exact ties everywhere
    cases = [
        ("conv weight (8, 4, 3, 3), keep 3, l1", torch.randn(8, 4, 3, 3), 3, "l1"),
        ("conv weight (6, 10, 5, 5), keep 5, l2", torch.randn(6, 10, 5, 5), 5, "l2"),
        ("linear weight (12, 7), keep 4, l1", torch.randn(12, 7), 4, "l1"),
        ("ties: rows 0 and 3 have equal L1 norm, keep 2, l1", tied, 2, "l1"),
        ("L1 and L2 disagree, keep 1, l1", l1_vs_l2, 1, "l1"),
        ("L1 and L2 disagree, keep 1, l2", l1_vs_l2, 1, "l2"),
        ("many exact ties: conv weight (64, 3, 2, 2) of -1/0/1, keep 20, l1", many_ties, 20, "l1"),
        ("many exact ties: conv weight (64, 3, 2, 2) of -1/0/1, keep 37, l2", many_ties, 37, "l2"),
        ("keep every channel: linear weight (5, 3), keep 5, l1", torch.randn(5, 3), 5, "l1"),
    ]
    for case, weight, keep, norm in cases:
        expected = top_channels(channel_scores(weight, norm), keep)
        param = nn.Parameter(weight.clone())  # what the lab passes: layer.weight, which requires grad
        got = _call(name, case, fn, param, keep, norm)
        _unchanged(
            name, case, weight, param, "the weight", "do not modify the weight (w.abs_(), w.pow_(2)): compute the scores out of place"
        )
        if not isinstance(got, torch.Tensor):
            fail(
                name,
                case,
                "a torch tensor of integer indices",
                type(got).__name__,
                "return a torch LongTensor (torch.from_numpy(idx) or torch.tensor(idx)): the lab slices layer weights with it and builds "
                "the flattened feature indices with torch ops",
            )
        if got.dtype not in (torch.int64, torch.int32) or got.dim() != 1:
            fail(
                name,
                case,
                "a 1-d integer (int64) tensor",
                f"dtype {got.dtype}, shape {tuple(got.shape)}",
                "return indices as a 1-d torch.long tensor",
            )
        if got.tolist() != expected.tolist():
            hint = (
                "score each OUTPUT channel (dim 0) by the L1 (sum |w|) or L2 (sqrt of sum w^2) norm of all its weights; "
                "keep the largest; ties: lower index kept, so use a stable sort (torch.topk and unstable sorts order ties arbitrarily); "
                "return the indices sorted ascending"
            )
            fail(name, case, expected.tolist(), got.tolist(), hint)
    passed(name, f"{len(cases)} cases: conv and linear weights, L1 and L2, many exact ties, weight left unchanged")


def _pair_reference(conv: nn.Conv2d, successor: nn.Module, keep: torch.Tensor, x: torch.Tensor, spatial: int | None) -> torch.Tensor:
    """Output of conv -> ReLU -> (flatten) -> successor with the dropped channels of conv zeroed."""
    import copy

    zeroed = copy.deepcopy(conv)
    drop = torch.ones(conv.out_channels, dtype=torch.bool)
    drop[keep] = False
    with torch.no_grad():
        zeroed.weight[drop] = 0
        if zeroed.bias is not None:
            zeroed.bias[drop] = 0
        h = torch.relu(zeroed(x))
        return successor(h.flatten(1) if spatial else h)


def _check_new_layer(name: str, case: str, layer: nn.Module, label: str, originals: list[torch.Tensor]) -> None:
    """Shared checks for a shrunk layer: attributes agree with the weight, trainable Parameters of their own."""
    __tracebackhide__ = True
    if isinstance(layer, nn.Conv2d):
        declared = (layer.out_channels, layer.in_channels // layer.groups, *layer.kernel_size)
        attrs = f"out_channels={layer.out_channels}, in_channels={layer.in_channels}"
        make = "nn.Conv2d(in_channels, out_channels, kernel_size, stride=..., padding=...)"
    else:
        declared = (layer.out_features, layer.in_features)
        attrs = f"out_features={layer.out_features}, in_features={layer.in_features}"
        make = "nn.Linear(in_features, out_features)"
    if tuple(layer.weight.shape) != declared:
        fail(
            name,
            case,
            f"{label}'s attributes to describe its weight of shape {tuple(layer.weight.shape)}",
            attrs,
            f"the attributes are stale: a copy.deepcopy of the old layer keeps the old sizes when you replace its weight; "
            f"build a new {make} "
            "(or update the attributes); repr, MAC counters and later shrinking read them",
        )
    for pname, p in layer.named_parameters():
        if not p.requires_grad:
            fail(
                name, case, f"{label}.{pname} trainable (requires_grad=True)", "requires_grad=False", "the shrunk model is fine-tuned next"
            )
        for q in originals:
            if p.untyped_storage().data_ptr() == q.untyped_storage().data_ptr():
                fail(
                    name,
                    case,
                    f"{label}.{pname} with memory of its own",
                    "it shares memory with a parameter of the original layers",
                    "copy the slices (weight[keep] makes a copy; .clone() a whole tensor): "
                    "fine-tuning the new layer would change the original",
                )


def _same(small: torch.Tensor | None, expected: torch.Tensor | None) -> bool:
    if small is None or expected is None:
        return small is None and expected is None
    return tuple(small.shape) == tuple(expected.shape) and torch.allclose(
        small.detach().double(), expected.detach().double(), rtol=1e-6, atol=1e-7
    )


def check_shrink_conv_pair(fn: Callable[..., tuple[nn.Module, nn.Module]]) -> None:
    """``fn(conv, next_conv, keep)`` -> (smaller conv, smaller next_conv) computing the same as zeroing the dropped filters."""
    name = "check_shrink_conv_pair"
    torch.manual_seed(6)
    cases = [
        ("conv 3->8 (3x3), next 8->5 (3x3), keep [0, 2, 5, 7]", nn.Conv2d(3, 8, 3), nn.Conv2d(8, 5, 3), torch.tensor([0, 2, 5, 7])),
        ("conv 1->20 (5x5), next 20->50 (5x5), keep 10 filters", nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5), torch.arange(0, 20, 2)),
        ("padded 3x3 convs, keep 1 filter", nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 3, 3, padding=1), torch.tensor([3])),
        (
            "stride 2, padding 1, keep [1, 2, 4]",
            nn.Conv2d(3, 6, 3, stride=2, padding=1),
            nn.Conv2d(6, 4, 3, stride=2),
            torch.tensor([1, 2, 4]),
        ),
    ]
    for case, conv, successor, keep in cases:
        x = torch.randn(2, conv.in_channels, 16, 16)
        expected = _pair_reference(conv, successor, keep, x, None)
        params = [*conv.parameters(), *successor.parameters()]
        originals = [t.detach().clone() for t in params]
        got = _call(name, case, fn, conv, successor, keep)
        for before, after in zip(originals, params):
            _unchanged(
                name,
                case,
                before,
                after,
                "the original layers",
                "copy the kept slices into new layers; leave conv and next_conv as they are",
            )
        try:
            small, small_next = got
        except (TypeError, ValueError):
            fail(name, case, "a pair (new conv, new next conv)", repr(got), "return both new layers")
        if not isinstance(small, nn.Conv2d) or not isinstance(small_next, nn.Conv2d):
            fail(name, case, "two nn.Conv2d", f"{type(small).__name__}, {type(small_next).__name__}", "build new nn.Conv2d layers")
        for layer, label in ((small, "the new conv"), (small_next, "the new next conv")):
            _check_new_layer(name, case, layer, label, params)
        if small.out_channels != len(keep) or small_next.in_channels != len(keep):
            fail(
                name,
                case,
                f"out_channels {len(keep)} and next in_channels {len(keep)}",
                f"{small.out_channels} and {small_next.in_channels}",
                "the first layer loses output channels (dim 0 of its weight), the next loses the same input channels (dim 1)",
            )
        for layer, original, label in ((small, conv, "the new conv"), (small_next, successor, "the new next conv")):
            settings = ("kernel_size", "stride", "padding", "dilation")
            if any(getattr(layer, s) != getattr(original, s) for s in settings):
                fail(
                    name,
                    case,
                    ", ".join(f"{s}={getattr(original, s)}" for s in settings),
                    ", ".join(f"{s}={getattr(layer, s)}" for s in settings),
                    f"build {label} with the original's kernel_size, stride and padding",
                )
        pieces = (
            (small.weight, conv.weight[keep], "the new conv's weight", "conv.weight[keep] (its filters, dim 0)"),
            (
                small.bias,
                None if conv.bias is None else conv.bias[keep],
                "the new conv's bias",
                "conv.bias[keep]: each kept filter keeps its own bias",
            ),
            (
                small_next.weight,
                successor.weight[:, keep],
                "the new next conv's weight",
                "next_conv.weight[:, keep] (its input channels, dim 1)",
            ),
            (
                small_next.bias,
                successor.bias,
                "the new next conv's bias",
                "next_conv.bias, whole and unchanged (its outputs are all still there)",
            ),
        )
        for have, want, label, hint in pieces:
            if not _same(have, want):
                fail(name, case, f"{label} equal to {hint.split(' ')[0]}", "different values or shape", f"copy {hint}")
        try:
            with torch.no_grad():
                out = small_next(torch.relu(small(x)))
        except Exception as error:  # noqa: BLE001
            fail(
                name,
                case,
                "layers that run: conv -> ReLU -> next conv",
                f"{type(error).__name__}: {error}",
                "keep float32 weights, as the originals",
            )
        if out.shape != expected.shape or not torch.allclose(out, expected, atol=1e-5):
            fail(
                name,
                case,
                "the same output as zeroing the dropped filters",
                f"max difference {(out - expected).abs().max():.3g}" if out.shape == expected.shape else f"shape {tuple(out.shape)}",
                "copy weight[keep] and bias[keep] of the first conv, weight[:, keep] and the whole bias of the next",
            )
    passed(
        name, f"{len(cases)} pairs: smaller layers with consistent attributes, same function as the zeroed original, originals untouched"
    )


def check_shrink_conv_linear(fn: Callable[..., tuple[nn.Module, nn.Module]]) -> None:
    """``fn(conv, linear, keep, spatial)``: drop conv filters and the ``spatial`` flattened features each fed the linear layer."""
    name = "check_shrink_conv_linear"
    torch.manual_seed(7)
    cases = [
        ("conv 20->50, 4x4 output, fc 800->500, keep 25", nn.Conv2d(20, 50, 5), nn.Linear(800, 500), torch.arange(0, 50, 2), 16),
        ("conv 3->6, 2x2 output, fc 24->7, keep [1, 4]", nn.Conv2d(3, 6, 3), nn.Linear(24, 7), torch.tensor([1, 4]), 4),
        ("conv 2->5, 3x3 output, fc 45->3, keep [0, 1, 4]", nn.Conv2d(2, 5, 1), nn.Linear(45, 3), torch.tensor([0, 1, 4]), 9),
    ]
    for case, conv, linear, keep, spatial in cases:
        side = int(round(spatial**0.5)) + conv.kernel_size[0] - 1  # input side giving a sqrt(spatial) output
        x = torch.randn(3, conv.in_channels, side, side)
        expected = _pair_reference(conv, linear, keep, x, spatial)
        params = [*conv.parameters(), *linear.parameters()]
        originals = [t.detach().clone() for t in params]
        got = _call(name, case, fn, conv, linear, keep, spatial)
        for before, after in zip(originals, params):
            _unchanged(
                name, case, before, after, "the original layers", "copy the kept slices into new layers; leave conv and linear as they are"
            )
        try:
            small, small_linear = got
        except (TypeError, ValueError):
            fail(name, case, "a pair (new conv, new linear)", repr(got), "return both new layers")
        if not isinstance(small, nn.Conv2d) or not isinstance(small_linear, nn.Linear):
            fail(
                name,
                case,
                "(nn.Conv2d, nn.Linear)",
                f"{type(small).__name__}, {type(small_linear).__name__}",
                "build a new nn.Conv2d and nn.Linear",
            )
        for layer, label in ((small, "the new conv"), (small_linear, "the new linear")):
            _check_new_layer(name, case, layer, label, params)
        if small.out_channels != len(keep) or small_linear.in_features != len(keep) * spatial:
            fail(
                name,
                case,
                f"out_channels {len(keep)} and in_features {len(keep) * spatial}",
                f"{small.out_channels} and {small_linear.in_features}",
                f"the linear layer keeps len(keep) * spatial = {len(keep) * spatial} input features",
            )
        features = (keep[:, None] * spatial + torch.arange(spatial)[None, :]).flatten()
        pieces = (
            (small.weight, conv.weight[keep], "the new conv's weight", "conv.weight[keep]"),
            (small.bias, conv.bias[keep], "the new conv's bias", "conv.bias[keep]: each kept filter keeps its own bias"),
            (small_linear.bias, linear.bias, "the new linear's bias", "linear.bias, whole and unchanged"),
        )
        for have, want, label, hint in pieces:
            if not _same(have, want):
                fail(name, case, f"{label} equal to {hint.split(':')[0]}", "different values or shape", f"copy {hint}")
        if not _same(small_linear.weight, linear.weight[:, features]):
            fail(
                name,
                case,
                f"the new linear's weight = linear.weight[:, features] with features {features[: 2 * spatial].tolist()}...",
                "other columns",
                "flattening (C, H, W) puts channel c's features at c*spatial ... c*spatial + spatial - 1 (channel-major); "
                "keep those columns, "
                "in that order",
            )
        try:
            with torch.no_grad():
                out = small_linear(torch.relu(small(x)).flatten(1))
        except Exception as error:  # noqa: BLE001
            fail(
                name,
                case,
                "layers that run: conv -> ReLU -> flatten -> linear",
                f"{type(error).__name__}: {error}",
                f"the linear layer keeps len(keep) * spatial = {len(keep) * spatial} input features",
            )
        if not torch.allclose(out, expected, atol=1e-5):
            fail(
                name,
                case,
                "the same output as zeroing the dropped filters",
                f"max difference {(out - expected).abs().max():.3g}",
                "flattening puts channel c's features at c*spatial ... c*spatial + spatial - 1; keep those columns of the linear weight",
            )
    passed(name, f"{len(cases)} conv -> flatten -> linear pairs shrunk with the right feature columns, originals untouched")


def check_lenet5_macs(fn: Callable[[int, int, int], int]) -> None:
    """``fn(c1, c2, hidden)`` -> MACs of a LeNet-5 with c1 / c2 filters and ``hidden`` fc1 neurons, one 28x28 image."""
    from .models import LeNet5

    name = "check_lenet5_macs"
    cases = [(20, 50, 500), (10, 25, 250), (12, 20, 200), (1, 1, 1), (7, 33, 100)]
    for c1, c2, hidden in cases:
        case = f"lenet5_macs({c1}, {c2}, {hidden})"
        expected = count_macs(LeNet5(channels=(c1, c2), hidden=hidden), (1, 1, 28, 28))
        got = _as_int(name, case, _call(name, case, fn, c1, c2, hidden))
        if got != expected:
            hint = "conv1: c1*24*24*25; conv2 sees c1 channels: c2*8*8*(c1*25); fc1 has c2*4*4 inputs; fc2 has hidden inputs"
            fail(name, case, expected, got, hint)
    passed(name, f"{len(cases)} widths match the hook count, the full model included")


# ----------------------------------------------------------------------------- chapter 03: quantization fundamentals


def _q_int_array(check: str, case: str, got: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """The learner's result as an integer numpy array of ``shape``, or a failure that says why not."""
    __tracebackhide__ = True
    if isinstance(got, torch.Tensor):
        got = got.detach().cpu().numpy()
    if got is None or isinstance(got, tuple):
        fail(check, case, f"{what} (an integer array of shape {shape})", repr(got)[:80], "return one array")
    got = np.asarray(got)
    if got.shape != shape:
        fail(check, case, f"shape {shape}", f"shape {got.shape}", "keep the input's shape (no keepdims, no transpose, no flatten)")
    if got.dtype.kind not in "iu":
        fail(
            check,
            case,
            "an integer array",
            f"dtype {got.dtype}",
            "integer codes: convert with .astype(np.int64) after rounding and clamping",
        )
    return got.astype(np.int64)


def _q_requantized_options(acc: np.ndarray, m0: np.ndarray, shift: np.ndarray, zp: int, qmin: int, qmax: int) -> tuple[np.ndarray, ...]:
    """The outputs a correct requantizer may give: ``acc * m0 / 2**(31 + shift)`` rounded once to nearest (a
    tie either way) or gemmlowp's two roundings; plus the zero point, clamped. Exact integer arithmetic."""
    from .quantization import rounding_right_shift, saturating_rounding_doubling_high_mul

    acc = np.asarray(acc, dtype=np.int64)
    m0 = np.asarray(m0, dtype=np.int64)
    total = 31 + np.asarray(shift, dtype=np.int64)
    product = acc * m0  # |acc| < 2**31 and m0 < 2**31: exact in int64
    half = np.int64(1) << (total - 1)
    ties_up = (product + half) >> total  # floor(v + 1/2)
    ties_down = -((-product + half) >> total)  # ceil(v - 1/2)
    gemmlowp = rounding_right_shift(saturating_rounding_doubling_high_mul(acc, m0), np.asarray(shift, dtype=np.int64))
    return tuple(np.clip(v + zp, qmin, qmax) for v in (ties_up, ties_down, gemmlowp))


def _q_check_requantized(check: str, case: str, got: np.ndarray, options: tuple[np.ndarray, ...], acc: np.ndarray, hint: str) -> None:
    __tracebackhide__ = True
    ok = np.zeros(got.shape, dtype=bool)
    for option in options:
        ok |= got == option
    if not ok.all():
        bad = np.argwhere(~ok)[0]
        where = tuple(int(i) for i in bad)
        fail(check, f"{case}, accumulator {int(acc[where])} at index {where}", int(options[0][where]), int(got[where]), hint)


def check_qparams(fn: Callable[..., tuple[float, int]]) -> None:
    """``fn(x_min, x_max, bits, symmetric, signed)`` -> (scale, zero_point) as in :func:`helpers.quantization.qparams`."""
    from .quantization import qparams

    name = "check_qparams"
    cases = [
        (-1.0, 3.0, 8, False, True),
        (-1.0, 3.0, 8, False, False),
        (0.5, 2.0, 8, False, False),  # does not contain 0: widen to [0, 2]
        (-3.0, -1.0, 8, False, True),  # all negative: widen to [-3, 0]
        (-0.7, 2.2, 4, False, True),
        (-1.25, 6.25, 4, False, False),  # min / scale = -2.5 exactly: half to even gives zero point 2
        (-0.75, 6.75, 4, False, False),  # min / scale = -1.5 exactly: half to even gives zero point 2
        (-1.0, 3.0, 8, True, True),
        (-5.0, 2.0, 4, True, True),
        (0.0, 6.0, 8, True, False),
        (0.0, 0.0, 8, False, True),  # empty range
        (0.0, 0.0, 4, True, True),  # empty range, symmetric
    ]
    for x_min, x_max, bits, symmetric, signed in cases:
        case = f"qparams({x_min}, {x_max}, bits={bits}, symmetric={symmetric}, signed={signed})"
        expected = qparams(x_min, x_max, bits, symmetric, signed)
        got = _call(name, case, fn, x_min, x_max, bits, symmetric, signed)
        try:
            scale, zero_point = got
            scale = float(scale)
        except (TypeError, ValueError):
            fail(name, case, "a pair (scale, zero_point)", repr(got)[:80], "return two values: a float scale and an int zero point")
        if not np.isfinite(scale) or scale <= 0:
            fail(
                name,
                case,
                f"scale {expected[0]:.8g}",
                scale,
                "the scale must be positive and finite; an empty range gets scale 1.0 (no division by 0)",
            )
        if not np.isclose(scale, expected[0], rtol=1e-6, atol=0):
            hint = (
                "widen the range to include 0; asymmetric: (max - min) / (qmax - qmin); symmetric: max(|min|, |max|) / qmax; "
                "an empty range gets scale 1.0"
            )
            fail(name, case, f"scale {expected[0]:.8g}", f"{scale:.8g}", hint)
        if (
            isinstance(zero_point, torch.Tensor)
            or isinstance(zero_point, np.ndarray)
            or not isinstance(zero_point, (int, np.integer))
            or isinstance(zero_point, bool)
        ):
            fail(
                name,
                case,
                f"an int zero point {expected[1]}",
                f"{zero_point!r} ({type(zero_point).__name__})",
                "np.round returns a float: wrap the zero point in int(...)",
            )
        if int(zero_point) != expected[1]:
            fail(
                name,
                case,
                f"zero_point {expected[1]}",
                int(zero_point),
                "zero_point = qmin - round(min / scale) with np.round (half to even: -2.5 -> -2), clamped to [qmin, qmax]; 0 if symmetric",
            )
    passed(name, f"{len(cases)} cases: signed/unsigned, symmetric, ranges without 0, exact .5 zero points, empty ranges")


def check_quantize(quantize_fn: Callable[..., np.ndarray], dequantize_fn: Callable[..., np.ndarray]) -> None:
    """``quantize_fn(x, scale, zp, bits, signed)`` rounds half to even and clamps; ``dequantize_fn(q, scale, zp)`` inverts."""
    name = "check_quantize"
    rng = np.random.default_rng(8)
    cases = [
        ("exact ties: x / scale = 0.5, 1.5, 2.5, -0.5, -1.5, -2.5", np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5]) * 0.25, 0.25, 0, 8, True),
        (
            "exact ties with a zero point: x / scale = 0.5, 3.5, -0.5, -3.5, 4.5",
            np.array([0.5, 3.5, -0.5, -3.5, 4.5]) * 0.125,
            0.125,
            3,
            8,
            False,
        ),
        ("values beyond the range clamp to -128 and 127", np.array([-100.0, -12.85, -12.75, 12.7, 12.75, 100.0]), 0.1, 0, 8, True),
        ("unsigned with a zero point", rng.uniform(-1, 3, 50), 4 / 255, 64, 8, False),
        ("4-bit signed, clamps to [-8, 7]", np.array([-1.0, -0.8, -0.75, 0.65, 0.7, 0.75, 1.0]), 0.1, 0, 4, True),
        ("4-bit unsigned, clamps to [0, 15]", np.array([-0.5, -0.125, 0.0, 0.3, 1.7, 1.8, 5.0]), 0.125, 1, 4, False),
        ("random normal, int8 with a zero point", rng.standard_normal(200), 0.03, -5, 8, True),
        ("float32 weights (2, 50)", rng.standard_normal((2, 50)).astype(np.float32), 0.02, 0, 8, True),
    ]
    for case, x, scale, zp, bits, signed in cases:
        qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        ratio = x.astype(np.float64) / scale
        expected = np.clip(np.round(ratio) + zp, qmin, qmax).astype(np.int64)
        near_tie = (np.abs(ratio - np.floor(ratio) - 0.5) < 1e-5) if x.dtype == np.float32 else np.zeros(x.shape, dtype=bool)
        saved = x.copy()
        got = _q_int_array(name, case, _call(name, case, quantize_fn, x, scale, zp, bits, signed), x.shape, "integer codes")
        _unchanged(name, case, saved, x, "`x`")
        wrong = (got != expected) & ~near_tie  # float32 input: a value within float32 error of a .5 tie may go either way
        if wrong.any():
            bad = np.flatnonzero(wrong.ravel())[:3]
            hint = (
                "q = clip(np.round(x / scale) + zero_point, qmin, qmax): np.round rounds half to even (0.5 -> 0, 2.5 -> 2, -1.5 -> -2; "
                "not floor(x + 0.5), not away from zero); qmax is 2**(bits-1) - 1 (signed) or 2**bits - 1"
            )
            fail(name, f"{case}, at x = {saved.ravel()[bad].tolist()}", expected.ravel()[bad].tolist(), got.ravel()[bad].tolist(), hint)
        codes = expected.copy()
        back = _call(name, f"dequantize on {case}", dequantize_fn, codes, scale, zp)
        _unchanged(name, f"dequantize on {case}", expected, codes, "`q`")
        back = np.asarray(back.detach().cpu().numpy() if isinstance(back, torch.Tensor) else back)
        reference = (expected - zp) * scale
        if back.shape != x.shape or back.dtype.kind != "f":
            fail(
                name,
                f"dequantize on {case}",
                f"floats of shape {x.shape}",
                f"dtype {back.dtype}, shape {back.shape}",
                "x_hat = (q - zero_point) * scale, a float array",
            )
        if not np.allclose(back.astype(np.float64), reference, rtol=1e-6, atol=1e-9):
            fail(
                name, f"dequantize on {case}", reference.ravel()[:4].tolist(), back.ravel()[:4].tolist(), "x_hat = (q - zero_point) * scale"
            )
    passed(name, f"{len(cases)} cases: exact half-to-even ties, clamping at both ends, 4 and 8 bits, float32 input, round trip")


def check_per_channel_qparams(fn: Callable[..., tuple[np.ndarray, np.ndarray]]) -> None:
    """``fn(w, axis, bits)`` -> symmetric signed per-channel (scales, zero_points) along ``axis``."""
    from .quantization import qparams_per_channel

    name = "check_per_channel_qparams"
    rng = np.random.default_rng(9)
    cases = [
        ("linear weight (5, 7), axis 0", rng.standard_normal((5, 7)) * np.array([[0.1], [1], [10], [0.01], [3]]), 0, 8),
        ("conv weight (4, 3, 3, 3), axis 0", rng.standard_normal((4, 3, 3, 3)), 0, 8),
        ("float32 conv weight (6, 2, 3, 3), axis 0", (rng.standard_normal((6, 2, 3, 3)) * 0.1).astype(np.float32), 0, 4),
        ("transposed weight (7, 5), axis 1", rng.standard_normal((7, 5)) * np.array([0.1, 1, 10, 0.01, 3]), 1, 4),
        (
            "conv weight (3, 4, 2, 2), axis 1 (input channels)",
            rng.standard_normal((3, 4, 2, 2)) * np.array([1, 5, 0.2, 2])[None, :, None, None],
            1,
            8,
        ),
        ("rows whose largest magnitude is negative", -np.abs(rng.standard_normal((3, 6))) + 0.05, 0, 8),
        ("a channel of zeros", np.vstack([np.zeros(6), rng.standard_normal(6)]), 0, 8),
    ]
    for case, w, axis, bits in cases:
        expected_s, expected_z = qparams_per_channel(w, axis=axis, bits=bits, symmetric=True, signed=True)
        saved = w.copy()
        got = _call(name, case, fn, w, axis, bits)
        _unchanged(name, case, saved, w, "`w`")
        try:
            scales, zps = (np.asarray(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v) for v in got)
        except (TypeError, ValueError):
            fail(name, case, "a pair (scales, zero_points)", repr(got)[:80], "return two arrays, one value per channel each")
        n = w.shape[axis]
        if scales.shape != (n,) or zps.shape != (n,):
            fail(
                name,
                case,
                f"two arrays of shape ({n},)",
                f"shapes {scales.shape} and {zps.shape}",
                "one scale per slice along axis: reduce over every other axis, no keepdims",
            )
        if not np.all(np.isfinite(scales)) or np.any(scales <= 0):
            fail(
                name,
                case,
                "positive, finite scales",
                np.round(scales, 6).tolist(),
                "an all-zero channel gets scale 1.0: a zero scale divides by zero in quantize",
            )
        if not np.allclose(scales, expected_s, rtol=1e-6, atol=0):
            fail(
                name,
                case,
                np.round(expected_s, 6).tolist(),
                np.round(scales, 6).tolist(),
                "symmetric: scale = max |w| of the channel (the largest magnitude, negative values included) / qmax (127 for 8 bits)",
            )
        if not np.array_equal(zps, np.zeros(n)):
            fail(name, case, "zero points all 0", zps.tolist(), "symmetric quantization has zero point 0")
    passed(name, f"{len(cases)} cases: linear and conv weights, axis 0 and 1, float32, negative extremes, a zero channel")


def check_mse_range(fn: Callable[..., tuple[float, float]]) -> None:
    """``fn(x, bits)`` -> a clipping range (lo, hi) whose asymmetric quantization MSE is (near) minimal."""
    from .quantization import minmax_range, mse_range, quantization_mse

    name = "check_mse_range"
    rng = np.random.default_rng(10)
    cases = [
        ("normal data with two outliers, 4 bits", np.concatenate([rng.standard_normal(20_000), [12.0, -9.0]]), 4),
        ("ReLU-like data with a long tail, 4 bits", np.maximum(rng.standard_t(3, 20_000), 0), 4),
        ("normal data, 8 bits", rng.standard_normal(20_000), 8),
        ("float32 data with one far outlier, 3 bits", np.append(rng.standard_normal(10_000), 40.0).astype(np.float32), 3),
        ("all-zero activations (a dead channel), 8 bits", np.zeros(1000), 8),
    ]
    for case, x, bits in cases:
        best = quantization_mse(x, *mse_range(x, bits), bits)
        minmax = quantization_mse(x, *minmax_range(x), bits)
        saved = x.copy()
        got = _call(name, case, fn, x, bits)
        _unchanged(name, case, saved, x, "`x`")
        try:
            lo, hi = (float(v) for v in got)
        except (TypeError, ValueError):
            fail(name, case, "a pair (lo, hi)", repr(got)[:80], "return the clipping range as two numbers")
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
            fail(name, case, "finite lo <= hi", (lo, hi), "return (lo, hi) of the best candidate range")
        error = quantization_mse(x, lo, hi, bits)
        if not np.isfinite(error) or error > 1.05 * best:
            hint = (
                "shrink BOTH ends of the min-max range by the same fraction (100 fractions from 1.0 to 0.01), measure the MSE over ALL "
                "values (clipped ones included) with asymmetric qparams, keep the smallest"
            )
            fail(name, case, f"MSE <= {1.05 * best:.4g} (min-max gives {minmax:.4g})", f"{error:.4g} with range ({lo:.4g}, {hi:.4g})", hint)
    passed(name, f"{len(cases)} distributions: your ranges are within 5% of the best MSE")


def check_quantize_multiplier(fn: Callable[[float], tuple[int, int]]) -> None:
    """``fn(M)`` -> (m0, shift) with int m0 in [2**30, 2**31) the nearest integer to ``M * 2**(31 + shift)``."""
    from fractions import Fraction

    name = "check_quantize_multiplier"
    rng = np.random.default_rng(13)
    multipliers = [0.5, 0.75, 0.3, 0.999999, 0.0123456, 1.52849e-3, 2.0**-20, 1e-7, 0.49999999]
    multipliers += [1 - 2.0**-40, 0.5 - 2.0**-45, 2.0**-10 - 2.0**-50]  # round(f * 2**31) reaches 2**31
    multipliers += [float(m) for m in np.exp(rng.uniform(np.log(1e-6), np.log(0.99), 12))]
    for m in multipliers:
        case = f"M = {m!r}"
        got = _call(name, case, fn, m)
        try:
            m0, shift = got
        except (TypeError, ValueError):
            fail(name, case, "a pair (m0, shift)", repr(got)[:80], "return two integers")
        m0, shift = _as_int(name, case, m0), _as_int(name, case, shift)
        if not 2**30 <= m0 < 2**31:
            hint = (
                "m0 = round(f * 2**31) with (f, e) = math.frexp(M), f in [0.5, 1); if that rounds to exactly 2**31 (f very close to 1), "
                "int32 cannot hold it: use m0 = 2**30 and shift - 1"
                if m0 == 2**31
                else "m0 = round(f * 2**31) with (f, e) = math.frexp(M), f in [0.5, 1), and shift = -e"
            )
            fail(name, case, "m0 in [2**30, 2**31)", m0, hint)
        represented = Fraction(m0) * Fraction(2) ** (-31 - shift)
        if abs(represented - Fraction(m)) > Fraction(2) ** (-32 - shift):
            hint = (
                "m0 must be the NEAREST integer to f * 2**31 (round, not int() or floor, which truncate), and shift = -e where M = f * 2**e"
                if abs(represented - Fraction(m)) < Fraction(2) ** (-30 - shift)
                else "shift = -e where M = f * 2**e (math.frexp); check the sign and an off-by-one"
            )
            fail(
                name,
                case,
                f"m0 * 2**(-31 - shift) within half a unit of m0 of {m!r}",
                f"{float(represented)!r} (m0={m0}, shift={shift})",
                hint,
            )
    passed(name, f"{len(multipliers)} multipliers: m0 the nearest integer in [2**30, 2**31), the 2**31 rounding case included")


def check_requantize(fn: Callable[..., np.ndarray]) -> None:
    """``fn(acc, m0, shift, zero_point, bits)`` -> clamp(round(acc * M) + zero_point) with integer operations.

    Exact: each output must be ``acc * m0 / 2**(31 + shift)`` rounded to nearest (an exact tie may go either
    way) or gemmlowp's two-step rounding, plus the zero point, clamped to the signed ``bits`` range.
    """
    from .quantization import quantize_multiplier

    name = "check_requantize"
    rng = np.random.default_rng(11)
    cases = [
        (0.0123456, 0, 8, 2**20),
        (0.3, -7, 8, 1000),
        (2.0**-10, 100, 8, 2**22),
        (0.0015, 3, 4, 20_000),
        (0.75, 0, 8, 200),
        (1e-7, 5, 8, 2**31 - 1),
    ]
    for multiplier, zp, bits, span in cases:
        m0, shift = quantize_multiplier(multiplier)
        acc = rng.integers(-span, span, 5000)
        acc[:9] = [0, 1, -1, 2, -2, 6, -6, span - 1, -span]  # small values and ties (acc * 0.75 = 1.5, -1.5, 4.5 ...), both ends
        case = f"M = {multiplier}, zero_point = {zp}, bits = {bits}"
        saved = acc.copy()
        got = _q_int_array(name, case, _call(name, case, fn, acc, m0, shift, zp, bits), acc.shape, "requantized integers")
        _unchanged(name, case, saved, acc, "`acc`")
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        hint = (
            "round to NEAREST, not down: add half of the divisor, 1 << (31 + shift - 1), to acc * m0 (int64) before >> (31 + shift); "
            "then add the zero point and clamp to the signed `bits` range"
        )
        _q_check_requantized(name, case, got, _q_requantized_options(saved, m0, shift, zp, qmin, qmax), saved, hint)
    passed(name, f"{len(cases)} multipliers x 5000 accumulators: exact rounding to nearest (ties either way), zero point, clamping")


def check_quantized_linear(fn: Callable[..., np.ndarray]) -> None:
    """``fn(q_x, zp_x, q_w, bias_q, m0, shift, zp_y)`` -> uint8 outputs of an integer-only Linear layer.

    ``q_x`` arrives as a uint8 array and ``q_w`` as int8 in one case: the learner must widen them before arithmetic.
    """
    from .quantization import qparams, qparams_per_channel, quantize, quantize_multiplier, quantize_per_channel

    name = "check_quantized_linear"
    rng = np.random.default_rng(12)
    for n, k, m_out, narrow, y_range in ((5, 12, 4, False, 1.0), (16, 784, 30, True, 1.0), (1, 3, 2, False, 1.0), (8, 50, 6, True, 0.5)):
        x = rng.uniform(-0.5, 2.0, (n, k))
        w = rng.standard_normal((m_out, k)) * 0.2
        b = rng.standard_normal(m_out) * 0.3
        sx, zx = qparams(x.min(), x.max(), 8, signed=False)
        ws, _ = qparams_per_channel(w)
        y = x @ w.T + b
        sy, zy = qparams(y.min() * y_range, y.max() * y_range, 8, signed=False)  # y_range < 1: outputs clamp at 0 and 255
        q_x, q_w = quantize(x, sx, zx, 8, False), quantize_per_channel(w, ws, np.zeros(m_out, dtype=np.int64))
        if narrow:
            q_x, q_w = q_x.astype(np.uint8), q_w.astype(np.int8)
        bias_q = np.round(b / (sx * ws)).astype(np.int64)
        mult = [quantize_multiplier(sx * s / sy) for s in ws]
        m0, shift = np.array([p[0] for p in mult]), np.array([p[1] for p in mult])
        case = f"N={n}, K={k}, M={m_out}, zp_x={zx}, zp_y={zy}, q_x {q_x.dtype}, q_w {q_w.dtype}" + (
            ", outputs that clamp" if y_range < 1 else ""
        )
        inputs = {"q_x": q_x, "q_w": q_w, "bias_q": bias_q}
        saved = {key: value.copy() for key, value in inputs.items()}
        got = _call(name, case, fn, q_x, zx, q_w, bias_q, m0, shift, zy)
        for key in inputs:
            _unchanged(name, case, saved[key], inputs[key], f"`{key}`")
        got = _q_int_array(name, case, got, (n, m_out), "uint8 outputs")
        acc = (saved["q_x"].astype(np.int64) - zx) @ saved["q_w"].astype(np.int64).T + bias_q
        hint = (
            "acc = (q_x - zp_x) @ q_w.T + bias_q in int64 (convert uint8/int8 inputs with .astype(np.int64) first: "
            "uint8 arithmetic wraps), "
            "then requantize column j with (m0[j], shift[j]), add zp_y, clamp to [0, 255]"
        )
        _q_check_requantized(name, case, got, _q_requantized_options(acc, m0[None, :], shift[None, :], zy, 0, 255), acc, hint)
    passed(name, "4 layers equal the integer reference exactly (uint8/int8 inputs, per-channel multipliers, clamping)")


# ----------------------------------------------------------------------------- chapter 04: post-training quantization


def _to_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def check_observer(observer_class: type) -> None:
    """``observer_class()`` with ``update(x)`` over batches and ``qparams()`` -> asymmetric uint8 (scale, zero_point)."""
    from .quantization import qparams

    name = "check_observer"
    rng = np.random.default_rng(13)
    cases = [
        ("three batches with different ranges", [rng.normal(0, 1, 100), rng.normal(2, 3, 50), rng.normal(-1, 0.5, 70)]),
        ("the widest batch first, narrower ones after", [rng.uniform(-3, 5, 40), rng.uniform(-1, 1, 40), rng.uniform(0, 2, 40)]),
        ("all positive (range widened to include 0)", [rng.uniform(1, 2, 20), rng.uniform(1.5, 3, 20)]),
        ("all negative", [rng.uniform(-4, -1, 30), rng.uniform(-2, -0.5, 30)]),
        ("range [-1, 1.3]: -min / scale = 110.87, so the zero point rounds to 111", [np.array([-1.0, 0.2]), np.array([1.3, 0.0])]),
        ("a constant zero tensor", [np.zeros(10)]),
        ("2-d torch tensors", [torch.randn(4, 8), torch.randn(2, 8) * 5 - 1]),
        ("a float32 numpy batch and a torch batch", [rng.normal(0, 2, (3, 5)).astype(np.float32), torch.rand(6) * 7]),
    ]
    for case, batches in cases:
        observer = _call(name, case, observer_class)
        for batch in batches:
            before = batch.clone() if isinstance(batch, torch.Tensor) else batch.copy()
            _call(name, case, observer.update, batch)
            _unchanged(name, case, before, batch, "`x`")
        values = np.concatenate([_to_numpy(b).astype(np.float64).ravel() for b in batches])
        expected = qparams(values.min(), values.max(), 8, symmetric=False, signed=False)
        got = _call(name, case, observer.qparams)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            fail(name, case, "a pair (scale, zero_point)", repr(got), "return scale, zero_point")
        scale, zero_point = got
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            fail(name, case, "a float scale", repr(scale), "return the scale as a Python float")
        zero_point = _as_int(name, f"{case} (the zero point)", zero_point)
        if not np.isclose(scale, expected[0], rtol=1e-6) or zero_point != expected[1]:
            hint = (
                "keep the running min and max over ALL batches seen (a new batch must not reset them; negative values count), "
                "then asymmetric uint8 qparams: range widened to include 0, scale = (max - min) / 255, zero_point = round(-min / scale)"
            )
            fail(name, case, f"(scale {expected[0]:.6g}, zero_point {expected[1]})", f"({scale:.6g}, {zero_point})", hint)
    passed(name, f"{len(cases)} sequences of batches (numpy and torch): running min/max and uint8 qparams, inputs untouched")


def check_fake_quant_weight(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """``fn(w, bits)`` -> per-output-channel symmetric fake-quantized weight (a float torch tensor shaped like w)."""
    from .quantization import dequantize_per_channel, qparams_per_channel, quantize_per_channel

    name = "check_fake_quant_weight"
    torch.manual_seed(14)
    # Rows whose max |w| is qmax make the scale exactly 1.0, so the other entries sit exactly on .5 ties.
    ties8 = torch.tensor([[127.0, 2.5, -2.5, 0.5, -0.5, 3.5], [-127.0, 1.5, -1.5, 4.5, 0.0, 6.5]])
    ties4 = torch.tensor([[7.0, 2.5, -2.5, 0.5, -0.5, 3.5], [-7.0, 1.5, -1.5, 4.5, 0.0, 6.5]])
    cases = [
        ("linear (6, 10), 8 bits, rows of different scales", torch.randn(6, 10) * torch.tensor([[0.01], [0.1], [1], [10], [0.5], [2]]), 8),
        ("conv (4, 3, 3, 3), 4 bits", torch.randn(4, 3, 3, 3), 4),
        ("linear (3, 5) with a zero row, 8 bits", torch.cat([torch.zeros(1, 5), torch.randn(2, 5)]), 8),
        ("exact .5 ties (scale 1.0), 8 bits", ties8, 8),
        ("exact .5 ties (scale 1.0), 4 bits", ties4, 4),
        ("a layer's weight (an nn.Parameter, requires grad), 3 bits", nn.Parameter(torch.randn(5, 7)), 3),
    ]
    for case, w, bits in cases:
        scales, zps = qparams_per_channel(w.detach(), axis=0, bits=bits, symmetric=True, signed=True)
        expected = dequantize_per_channel(quantize_per_channel(w.detach().double(), scales, zps, axis=0, bits=bits), scales, zps, axis=0)
        before = w.detach().clone()
        with torch.no_grad() if isinstance(w, nn.Parameter) else _nullcontext():
            got = _call(name, case, fn, w, bits)
        _unchanged(name, case, before, w, "`w`")
        if not isinstance(got, torch.Tensor):
            fail(
                name,
                case,
                "a torch.Tensor",
                type(got).__name__,
                "return a torch tensor: the lab copies it into the layer with module.weight.copy_(...)",
            )
        if not got.is_floating_point():
            fail(
                name,
                case,
                "a float tensor (the values snapped to the grid)",
                f"dtype {got.dtype}",
                "multiply the integer codes back by the scale",
            )
        if tuple(got.shape) != tuple(w.shape):
            fail(
                name,
                case,
                f"shape {tuple(w.shape)}",
                f"shape {tuple(got.shape)}",
                "return a tensor shaped like w (keep the scale broadcastable)",
            )
        got64 = got.detach().double()
        if not torch.allclose(got64, expected.double(), rtol=1e-5, atol=1e-7):
            hint = (
                "one symmetric scale per OUTPUT channel (dim 0): max |w| over the rest / (2**(bits-1) - 1), 1.0 for an all-zero channel; "
                "torch.round (half to even: 2.5 -> 2, -0.5 -> 0); clamp to [-2**(bits-1), 2**(bits-1) - 1]"
            )
            bad = int(torch.nonzero(~torch.isclose(got64, expected.double(), rtol=1e-5, atol=1e-7).flatten())[0])
            fail(name, case, f"{expected.flatten()[bad].item():.6g} at flat index {bad}", f"{got64.flatten()[bad].item():.6g}", hint)
    passed(name, f"{len(cases)} weights: per-output-channel symmetric, 3, 4 and 8 bits, a zero row, exact .5 ties, input untouched")


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: Any) -> None:
        return None


def check_activation_ranges(fn: Callable[..., dict], model: nn.Module, x: torch.Tensor, relu_after: tuple[str, ...] = ("fc1",)) -> None:
    """``fn(model, x, relu_after)`` -> {layer name: (min, max)} of every Linear/Conv2d output, after the fused ReLU where named."""
    name = "check_activation_ranges"
    expected: dict[str, tuple[float, float]] = {}
    handles = []
    for layer_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):

            def hook(m: nn.Module, inputs: tuple, output: torch.Tensor, key: str = layer_name) -> None:
                out = torch.relu(output) if key in relu_after else output
                expected[key] = (float(out.min()), float(out.max()))

            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        reference_out = model(x)
    for handle in handles:
        handle.remove()
    x_before = x.clone()
    params_before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    hooks_before = {id(m): (set(m._forward_hooks), set(m._forward_pre_hooks)) for m in model.modules()}
    case = f"the model and {len(x)} calibration images, relu_after={relu_after!r}"
    got = _call(name, case, fn, model, x, relu_after)
    # Only hooks added by THIS call are the learner's fault (an earlier attempt may have left some); remove them so that
    # the model is clean for the next attempt, then fail.
    leaked = 0
    for m in model.modules():
        forward_before, pre_before = hooks_before.get(id(m), (set(), set()))
        new_forward = [k for k in m._forward_hooks if k not in forward_before]
        new_pre = [k for k in m._forward_pre_hooks if k not in pre_before]
        for k in new_forward:
            for attr in ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
                getattr(m, attr, {}).pop(k, None)
        for k in new_pre:
            for attr in ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs"):
                getattr(m, attr, {}).pop(k, None)
        leaked += bool(new_forward or new_pre)
    if leaked:
        fail(
            name,
            "hooks after the call",
            "no hooks left on the model",
            f"{leaked} modules still hooked by your function (the check removed them, so the model is clean for your next try)",
            "keep each handle from register_forward_hook and call handle.remove() after the forward pass",
        )
    _unchanged(name, case, x_before, x, "`x`")
    for k, v in params_before.items():
        _unchanged(name, case, v, model.state_dict()[k], f"`model.{k}`")
    with torch.no_grad():
        if not torch.equal(model(x), reference_out):
            fail(
                name,
                case,
                "the model computing what it computed before",
                "different outputs",
                "do not change the model (remove hooks that alter outputs)",
            )
    if not isinstance(got, dict) or set(got) != set(expected):
        fail(
            name,
            "the layers",
            sorted(expected),
            sorted(got) if isinstance(got, dict) else repr(got),
            "one entry per Linear/Conv2d, keyed by its name in model.named_modules()",
        )
    for key, (lo, hi) in expected.items():
        try:
            values = [float(v) for v in got[key]]
        except (TypeError, ValueError):
            values = []
        if len(values) != 2:
            fail(name, f"layer {key!r}", "a pair (min, max) of numbers", repr(got[key]), "store (float(t.min()), float(t.max()))")
        if not np.allclose(values, [lo, hi], rtol=1e-5, atol=1e-6):
            fused = key in relu_after
            hint = (
                f"{key!r} is followed by a fused ReLU: its stored activation is relu(output), so the range starts at 0"
                if fused
                else "record the OUTPUT of each layer (the hook's third argument) over the whole batch; no ReLU on layers not in relu_after"
            )
            fail(name, f"layer {key!r}{' (fused ReLU)' if fused else ''}", (round(lo, 5), round(hi, 5)), tuple(values), hint)
    passed(name, f"{len(expected)} layers' output ranges match (fused ReLU on {', '.join(relu_after) or 'none'}); no hooks left behind")


def check_bias_quantization(fn: Callable[..., np.ndarray]) -> None:
    """``fn(bias, input_scale, weight_scales)`` -> int32 ``round(bias / (s_x * s_w))`` per output channel.

    Exact: float64 inputs, computed in float64 (a float32 quotient near 1e5 can round to a neighbouring integer)."""
    name = "check_bias_quantization"
    rng = np.random.default_rng(15)
    cases = []
    for n in (5, 50):
        bias = rng.standard_normal(n) * 0.3
        s_x, s_w = 0.0173, rng.uniform(0.001, 0.02, n)
        cases.append((f"{n} channels", bias, s_x, s_w))
    # Power-of-two scales: the ties below are exact in float32 and float64 (half to even: 2.5 -> 2, -2.5 -> -2, 0.5 -> 0, 3.5 -> 4).
    s_w = np.array([2.0**-7, 2.0**-8, 2.0**-6, 2.0**-7, 2.0**-9])
    cases.append(("exact .5 ties", np.array([2.5, -2.5, 0.5, 3.5, -0.5]) * 2.0**-6 * s_w, 2.0**-6, s_w))
    # Realistic scales where float32 is not enough: bias / (s_x s_w) = -119021.4949 in float64, -119021.5 (-> -119022) in float32.
    cases.append(
        (
            "realistic scales, a quotient near 1.2e5 that is 0.005 from a .5 tie",
            np.array([-0.2219822529008637, 0.05, -0.013]),
            0.00933485783094929,
            np.array([0.00019979524402900816, 0.0031, 0.00045]),
        )
    )
    for case, bias, s_x, s_w in cases:
        expected = np.round(bias / (s_x * s_w)).astype(np.int32)
        b_in, w_in = bias.copy(), s_w.copy()
        got = _call(name, case, fn, b_in, s_x, w_in)
        _unchanged(name, case, bias, b_in, "`bias`")
        _unchanged(name, case, s_w, w_in, "`weight_scales`")
        got = _to_numpy(got)
        if got.dtype != np.int32:
            fail(name, case, "dtype int32", f"dtype {got.dtype}", "the accumulator is int32: return .astype(np.int32) after rounding")
        if got.shape != expected.shape:
            fail(name, case, f"shape {expected.shape}", f"shape {got.shape}", "one int32 bias per output channel")
        if not np.array_equal(got, expected):
            bad = int(np.flatnonzero(got != expected)[0])
            quotient = bias[bad] / (s_x * s_w[bad])
            hint = "bias scale = input scale x THAT channel's weight scale, zero point 0; np.round (half to even), then .astype(np.int32)"
            if abs(int(got[bad]) - int(expected[bad])) == 1 and 0 < abs(abs(quotient % 1) - 0.5) < 0.01:
                hint = "compute in float64 (the inputs are float64): in float32 a quotient this close to a .5 tie rounds the other way"
            fail(name, case, f"{expected[bad]} for channel {bad} (bias / (s_x s_w) = {quotient:.4f})", int(got[bad]), hint)
    passed(name, f"{len(cases)} layers: int32 biases with scale s_x * s_w, rounded half to even (exact ties), inputs untouched")


def check_int_conv2d(fn: Callable[..., np.ndarray]) -> None:
    """``fn(q_x, zp_x, q_w)``: uint8 (N, C, H, W), int zero point, int8 (F, C, k, k) -> int64 accumulators (N, F, Ho, Wo)."""
    name = "check_int_conv2d"
    rng = np.random.default_rng(16)
    for n, c, h, w, f, k, zp in ((2, 1, 8, 8, 3, 3, 0), (1, 3, 9, 11, 4, 5, 37), (3, 20, 12, 12, 5, 5, 128), (2, 2, 6, 7, 2, 3, 255)):
        q_x = rng.integers(0, 256, (n, c, h, w)).astype(np.uint8)
        q_w = rng.integers(-128, 128, (f, c, k, k)).astype(np.int8)
        q_w.flat[0] = -128  # the extremes: (0 - 255) * -128 and (255 - 0) * 127 must not wrap
        shifted = torch.from_numpy(q_x.astype(np.int64) - zp).double()
        expected = torch.nn.functional.conv2d(shifted, torch.from_numpy(q_w.astype(np.int64)).double()).numpy().astype(np.int64)
        case = f"uint8 x {q_x.shape} with zero point {zp}, int8 w {q_w.shape}"
        x_in, w_in = q_x.copy(), q_w.copy()
        got = _call(name, case, fn, x_in, zp, w_in)
        _unchanged(name, case, q_x, x_in, "`q_x`")
        _unchanged(name, case, q_w, w_in, "`q_w`")
        got = _to_numpy(got)
        if got.shape != expected.shape:
            fail(name, case, f"shape {expected.shape}", f"shape {got.shape}", "(N, C, H, W) * (F, C, k, k) -> (N, F, H-k+1, W-k+1)")
        if got.dtype.kind != "i" or got.dtype.itemsize < 4:
            fail(
                name, case, "int64 accumulators", f"dtype {got.dtype}", "cast to np.int64 BEFORE subtracting the zero point and multiplying"
            )
        if not np.array_equal(got, expected):
            hint = (
                "cast q_x and q_w to int64 first (uint8 - zp wraps around; int8 products overflow); "
                "im2col: patches of shape (C*k*k) in the same (c, i, j) order as q_w.reshape(F, -1); subtract zp_x from the input"
            )
            fail(name, case, expected.ravel()[:4].tolist(), got.ravel()[:4].tolist(), hint)
    passed(name, "4 convolutions on uint8 / int8 codes equal conv2d on the zero-point-shifted integers, exactly; inputs untouched")


def _groupwise_reference(w: np.ndarray, bits: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Group-wise symmetric codes/scales with a shorter last group when group_size does not divide the width."""
    qmax = 2 ** (bits - 1) - 1
    out, width = w.shape
    n_groups = -(-width // group_size)
    padded = np.zeros((out, n_groups * group_size))
    padded[:, :width] = w
    amax = np.abs(padded.reshape(out, n_groups, group_size)).max(axis=2)
    scales = np.where(amax > 0, amax / qmax, 1.0)
    codes = np.clip(np.round(w / np.repeat(scales, group_size, axis=1)[:, :width]), -qmax, qmax).astype(np.int8)
    return codes, scales


def check_groupwise(fn: Callable[..., tuple[np.ndarray, np.ndarray]]) -> None:
    """``fn(w, bits, group_size)`` -> (int8 codes (out, in) in [-qmax, qmax], scales (out, ceil(in / group_size))), symmetric per group."""
    name = "check_groupwise"
    rng = np.random.default_rng(17)
    cases = [((4, 32), 4, 8), ((3, 30), 3, 10), ((2, 16), 4, 16), ((5, 12), 2, 4), ((3, 30), 4, 7), ((4, 12), 3, 5), ((2, 9), 4, 16)]
    for shape, bits, group in cases:
        w = rng.standard_normal(shape) * rng.uniform(0.1, 3, (shape[0], 1))
        w[0, :group] = 0.0  # an all-zero group
        qmax = 2 ** (bits - 1) - 1
        if shape[0] > 1 and shape[1] >= 4:  # exact .5 ties: a group whose max is qmax has scale 1.0
            w[1, :4] = [qmax, 0.5, -0.5, 1.5 if qmax > 1 else -qmax]
        codes, scales = _groupwise_reference(w, bits, group)
        case = f"w {shape}, {bits} bits, groups of {group}" + ("" if shape[1] % group == 0 else f" (a last group of {shape[1] % group})")
        w_in = w.copy()
        got = _call(name, case, fn, w_in, bits, group)
        _unchanged(name, case, w, w_in, "`w`")
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            fail(name, case, "a pair (codes, scales)", type(got).__name__, "return codes, scales")
        g_codes, g_scales = (_to_numpy(v) for v in got)
        if g_codes.shape != codes.shape:
            fail(name, case, f"codes of shape {codes.shape}", f"shape {g_codes.shape}", "one code per weight, shaped like w")
        if g_codes.dtype != np.int8:
            fail(name, case, "int8 codes", f"dtype {g_codes.dtype}", "codes are small integers: np.round(...) then .astype(np.int8)")
        if g_scales.shape != scales.shape:
            fail(
                name,
                case,
                f"scales of shape {scales.shape}",
                f"shape {g_scales.shape}",
                "one scale per group of group_size consecutive inputs in each row; a shorter last group when group_size does not divide in",
            )
        if g_scales.dtype.kind != "f":
            fail(name, case, "float scales", f"dtype {g_scales.dtype}", "keep the scales as floats (max |w| / qmax)")
        if g_codes.min() < -qmax or g_codes.max() > qmax:
            fail(name, case, f"codes in [-{qmax}, {qmax}]", f"[{g_codes.min()}, {g_codes.max()}]", "symmetric: clamp to [-qmax, qmax]")
        if not np.allclose(g_scales, scales, rtol=1e-6, atol=0):
            bad = np.unravel_index(int(np.flatnonzero(~np.isclose(g_scales, scales, rtol=1e-6, atol=0))[0]), scales.shape)
            fail(
                name,
                f"{case}, the scale of row {bad[0]}, group {bad[1]}",
                f"{scales[bad]:.6g}",
                f"{g_scales[bad]:.6g}",
                "scale = max |w| over the group's own inputs / qmax, and 1.0 for an all-zero group (never 0: w / 0 is NaN)",
            )
        ratio = w / np.repeat(scales, group, axis=1)[:, : shape[1]]
        near_tie = np.abs(np.abs(ratio - np.floor(ratio)) - 0.5) < 1e-5
        exact_tie = np.abs(ratio - np.floor(ratio)) == 0.5
        wrong = (g_codes != codes) & ~(near_tie & ~exact_tie)  # float32 may round a NEAR-tie either way; exact ties are defined
        if wrong.any():
            r, c = np.argwhere(wrong)[0]
            fail(
                name,
                f"{case}, weight ({r}, {c}) = {w[r, c]:.6g} / scale {scales[r, c // group]:.6g}",
                int(codes[r, c]),
                int(g_codes[r, c]),
                "codes = np.round(w / scale) (half to even: 0.5 -> 0, 1.5 -> 2, -0.5 -> 0), clipped to [-qmax, qmax]",
            )
    passed(
        name, f"{len(cases)} weights: groups along the input dimension (with a shorter last group), 2-4 bits, an all-zero group, exact ties"
    )


# ----------------------------------------------------------------------------- chapter 05: quantization-aware training


def _qat_tensor(check: str, case: str, got: Any, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """The learner's torch tensor of the expected shape; anything else fails with a hint."""
    __tracebackhide__ = True
    if not isinstance(got, torch.Tensor):
        fail(check, case, f"{what}: a torch.Tensor", type(got).__name__, "stay in torch: autograd needs tensors to carry the gradient")
    if tuple(got.shape) != tuple(shape):
        fail(check, case, f"{what} of shape {tuple(shape)}", f"shape {tuple(got.shape)}", "keep the input's shape (the scale broadcasts)")
    return got


def check_fake_quant_ste(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(x, scale, zero_point, qmin, qmax)`` -> ``s (clamp(round(x / s) + z, qmin, qmax) - z)`` with the clipped STE:
    the gradient w.r.t. x is passed where ``qmin <= round(x / s) + z <= qmax`` and is 0 where the value was clipped."""
    name = "check_fake_quant_ste"
    gen = torch.Generator().manual_seed(50)
    ties = torch.tensor(
        [0.25, -0.25, 0.75, -0.75, 1.25, 3.75, -4.25, 3.8, -4.3, 9.0, -9.0]
    )  # scale 0.5: x/s = .5 ties, and beyond the range
    cases = [
        ("per-tensor, 4 bits, float32", torch.randn(6, 9, generator=gen) * 2, torch.tensor(0.3), torch.tensor(0.0), -8, 7),
        ("per-tensor with zero point 3, uint4", torch.rand(40, generator=gen) * 6 - 1, torch.tensor(0.4), torch.tensor(3.0), 0, 15),
        (
            "per-channel (4, 1) scales, 3 bits",
            torch.randn(4, 12, generator=gen),
            torch.tensor([[0.1], [0.2], [0.5], [0.05]]),
            torch.tensor(0.0),
            -4,
            3,
        ),
        ("exact .5 ties and clipped values, scale 0.5, 4 bits", ties, torch.tensor(0.5), torch.tensor(0.0), -8, 7),
        (
            "values half a step beyond the last level (still rounded onto it)",
            torch.tensor([3.6, 3.74, -4.2, -4.24, 3.76, -4.26]),
            torch.tensor(0.5),
            torch.tensor(0.0),
            -8,
            7,
        ),
        (
            "float64, 8 bits",
            torch.randn(5, 5, generator=gen, dtype=torch.float64) * 3,
            torch.tensor(0.02, dtype=torch.float64),
            torch.tensor(0.0, dtype=torch.float64),
            -128,
            127,
        ),
    ]
    for case, x0, scale, zp, qmin, qmax in cases:
        x = x0.clone().requires_grad_()
        before = x0.clone()
        got = _call(name, case, fn, x, scale, zp, qmin, qmax)
        _unchanged(name, case, before, x, "x")
        got = _qat_tensor(name, case, got, tuple(x0.shape), "the fake-quantized x")
        q = torch.round(x0 / scale) + zp
        expected = (q.clamp(qmin, qmax) - zp) * scale
        if not torch.allclose(got.detach().double(), expected.double(), rtol=1e-6, atol=1e-6):
            bad = int(torch.nonzero(~torch.isclose(got.detach().double(), expected.double(), rtol=1e-6, atol=1e-6).flatten())[0])
            fail(
                name,
                case,
                f"{expected.flatten()[bad].item():.6g} for x = {x0.flatten()[bad].item():.6g}",
                f"{got.detach().flatten()[bad].item():.6g}",
                "torch.round (half to even: 0.5 -> 0, 2.5 -> 2), add the zero point, clamp to [qmin, qmax], subtract it, times the scale",
            )
        if not got.requires_grad:
            fail(
                name,
                case,
                "an output that carries a gradient back to x",
                "an output detached from the graph",
                "write a torch.autograd.Function (or the x + (q - x).detach() trick): no .detach()/.numpy() of the whole result",
            )
        upstream = torch.linspace(0.5, 1.5, x0.numel(), dtype=x0.dtype).reshape(x0.shape)
        got.backward(upstream)
        mask = (q >= qmin) & (q <= qmax)
        expected_grad = upstream * mask
        grad = x.grad if x.grad is not None else torch.zeros_like(x0)
        if not torch.allclose(grad, expected_grad, atol=1e-6):
            bad = int(torch.nonzero(~torch.isclose(grad, expected_grad, atol=1e-6).flatten())[0])
            xv = x0.flatten()[bad].item()
            if bool(mask.flatten()[bad]) and grad.flatten()[bad] == 0 and (grad == 0).all():
                hint = "no gradient at all: round() has zero derivative; the STE passes the upstream gradient straight through"
            elif bool(mask.flatten()[bad]):
                hint = (
                    "the value rounds onto the grid (round(x/s) + z within [qmin, qmax]), so it is NOT clipped: "
                    "decide the mask on the "
                    "rounded code, not on x/s itself (x/s up to half a step beyond the last level still counts)"
                )
            else:
                hint = "the clipped STE: zero gradient where round(x/s) + z fell outside [qmin, qmax]"
            fail(
                name, case, f"gradient {expected_grad.flatten()[bad].item():.4g} at x = {xv:.4g}", f"{grad.flatten()[bad].item():.4g}", hint
            )
    passed(
        name,
        f"{len(cases)} cases (per-tensor, per-channel, zero point, .5 ties, half-step clipping, float64): values and STE gradients",
    )


def _lsq_reference(x: np.ndarray, s: float, qmin: int, qmax: int, g: float, grad: np.ndarray) -> tuple[np.ndarray, float]:
    v = np.asarray(x, dtype=np.float64) / s
    q = np.round(v)
    below, above = q < qmin, q > qmax
    d_s = np.where(below, qmin, np.where(above, qmax, q - v))
    return np.asarray(grad, dtype=np.float64) * ~(below | above), float(g * np.sum(np.asarray(grad, dtype=np.float64) * d_s))


def check_lsq_grads(fn: Callable[..., tuple]) -> None:
    """``fn(x, s, qmin, qmax, g, grad)`` -> ``(d loss / d x, d loss / d s)`` of LSQ's ``x_hat = s clamp(round(x / s), qmin, qmax)``
    (zero point 0) for the upstream gradient ``grad = d loss / d x_hat``: numpy arrays; the step's gradient is one float."""
    name = "check_lsq_grads"
    rng = np.random.default_rng(51)
    cases = [
        ("random weights, 4 bits, some clipped", rng.standard_normal(50) * 0.4, 0.05, -8, 7, 1 / np.sqrt(50 * 7)),
        ("a (6, 8) matrix, 3 bits", rng.standard_normal((6, 8)), 0.3, -4, 3, 1 / np.sqrt(48 * 3)),
        ("exact .5 ties (s = 0.5): round half to even", np.array([0.25, 0.75, 1.25, -0.25, -0.75, 1.75, -1.25]), 0.5, -8, 7, 0.1),
        ("clipped on both sides, g = 1", np.array([-9.0, -3.0, 0.1, 2.0, 7.7, 20.0]), 1.0, -8, 7, 1.0),
        ("float32 input, 2 bits", (rng.standard_normal(30) * 0.2).astype(np.float32), 0.1, -2, 1, 1 / np.sqrt(30)),
    ]
    for case, x, s, qmin, qmax, g in cases:
        grad = rng.standard_normal(np.shape(x)).astype(x.dtype)
        x_before, grad_before = x.copy(), grad.copy()
        got = _call(name, case, fn, x, s, qmin, qmax, g, grad)
        _unchanged(name, case, x_before, x, "x")
        _unchanged(name, case, grad_before, grad, "grad")
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            fail(name, case, "a pair (dx, ds)", f"{type(got).__name__}", "return dx (an array shaped like x) and ds (one number)")
        dx, ds = got
        if isinstance(dx, torch.Tensor):
            dx = dx.detach().numpy()
        if isinstance(ds, torch.Tensor):
            ds = ds.detach().numpy()
        ds = np.asarray(ds, dtype=np.float64)
        if ds.size != 1:
            fail(
                name, case, "ds: one number", f"an array of shape {ds.shape}", "the step is shared by every value: sum their contributions"
            )
        dx = np.asarray(dx, dtype=np.float64)
        exp_dx, exp_ds = _lsq_reference(x, s, qmin, qmax, g, grad)
        if dx.shape != exp_dx.shape or not np.allclose(dx, exp_dx, atol=1e-6):
            fail(
                name,
                case,
                f"dx = {np.round(exp_dx.ravel()[:6], 4).tolist()}...",
                f"{np.round(dx.ravel()[:6], 4).tolist()}...",
                "dx: the upstream gradient where round(x/s) lies in [qmin, qmax], 0 where it was clipped (the clipped STE)",
            )
        tol = 1e-4 * max(1.0, abs(exp_ds)) if x.dtype == np.float32 else 1e-8 * max(1.0, abs(exp_ds))
        if not abs(float(ds) - exp_ds) <= tol:
            fail(
                name,
                case,
                f"ds = {exp_ds:.6g}",
                f"{float(ds):.6g}",
                "d x_hat / d s = round(v) - v inside (v = x/s; np.round rounds half to even), qmin below, qmax above; "
                "times grad, summed over all values, times g",
            )
    passed(name, f"{len(cases)} cases (clipping on both sides, .5 ties, 2 to 4 bits, float32): dx and ds match LSQ's gradient")


def _ternary_reference(w: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.asarray(w, dtype=np.float64).reshape(len(w), -1)
    delta = factor * np.abs(a).mean(1)
    kept = np.abs(a) > delta[:, None]
    count = kept.sum(1)
    alpha = np.where(count > 0, (np.abs(a) * kept).sum(1) / np.maximum(count, 1), 0.0)
    return (np.sign(a) * kept).reshape(np.shape(w)), alpha, delta


def check_ternarize(fn: Callable[..., tuple]) -> None:
    """``fn(w, factor=0.7)`` -> ``(codes, alpha, delta)`` per output channel (row): ``delta = factor * mean|w|``, codes ``sign(w)``
    where ``|w| > delta`` (strictly) else 0, ``alpha`` = mean of ``|w|`` over the kept weights (0 for a row with none)."""
    name = "check_ternarize"
    rng = np.random.default_rng(52)
    cases = [
        ("a (8, 30) weight, factor 0.7", rng.standard_normal((8, 30)) * 0.1, 0.7),
        ("a conv weight (4, 3, 3, 3)", rng.standard_normal((4, 3, 3, 3)), 0.7),
        ("rows of very different scales", rng.standard_normal((3, 20)) * np.array([[0.01], [1.0], [100.0]]), 0.7),
        ("exact ties |w| == delta (factor 0.5): tied weights become 0", np.array([[0.5, 1.5, -0.5, -1.5], [1.0, 1.0, 1.0, 1.0]]), 0.5),
        ("an all-zero row", np.vstack([np.zeros(6), rng.standard_normal(6)]), 0.7),
        ("float32", (rng.standard_normal((5, 16)) * 0.05).astype(np.float32), 0.7),
    ]
    for case, w, factor in cases:
        before = w.copy()
        got = _call(name, case, fn, w, factor)
        _unchanged(name, case, before, w, "w")
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            fail(name, case, "a tuple (codes, alpha, delta)", type(got).__name__, "return the three arrays")
        codes, alpha, delta = (np.asarray(v.detach().numpy() if isinstance(v, torch.Tensor) else v, dtype=np.float64) for v in got)
        exp_codes, exp_alpha, exp_delta = _ternary_reference(w, factor)
        if delta.shape != exp_delta.shape or not np.allclose(delta, exp_delta, rtol=1e-5, atol=1e-12):
            fail(
                name,
                case,
                f"delta {np.round(exp_delta[:3], 5).tolist()} (shape {exp_delta.shape})",
                f"{np.round(delta.ravel()[:3], 5).tolist()} (shape {delta.shape})",
                "one threshold per output channel (row): factor * mean |w| of that row, not of the whole tensor, not of max |w|",
            )
        if codes.shape != exp_codes.shape or not np.array_equal(codes, exp_codes):
            tie = bool(np.any(np.isclose(np.abs(np.asarray(w, dtype=np.float64)).reshape(len(w), -1), exp_delta[:, None])))
            hint = (
                "a weight is kept only where |w| > delta (strictly: a tie |w| == delta becomes 0), with its sign"
                if tie
                else "codes = sign(w) where |w| > delta, else 0, shaped like w"
            )
            fail(name, case, f"codes {exp_codes.ravel()[:8].tolist()}...", f"{codes.ravel()[:8].tolist()}...", hint)
        if not np.all(np.isfinite(alpha)):
            fail(
                name,
                case,
                "finite scales (0 for a row with no kept weight)",
                f"{alpha.tolist()}",
                "guard the division by the count of kept weights",
            )
        if alpha.shape != exp_alpha.shape or not np.allclose(alpha, exp_alpha, rtol=1e-5, atol=1e-12):
            fail(
                name,
                case,
                f"alpha {np.round(exp_alpha[:3], 5).tolist()}",
                f"{np.round(alpha.ravel()[:3], 5).tolist()}",
                "alpha = mean of |w| over the KEPT weights of the row (the L2-optimal scale for those codes), "
                "not over all of them, not of signed w",
            )
    passed(name, f"{len(cases)} weights (rows of different scales, a conv, exact ties, an all-zero row, float32), input untouched")


def _qat_step_reference(layer: nn.Linear, step: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: float, bits: int) -> float:
    from .qat import lsq_fake_quant, lsq_grad_scale

    qmax = 2 ** (bits - 1) - 1
    w_hat = lsq_fake_quant(layer.weight, step, 0, -(2 ** (bits - 1)), qmax, lsq_grad_scale(layer.in_features, qmax))
    loss = torch.nn.functional.cross_entropy(torch.nn.functional.linear(x, w_hat, layer.bias), y)
    params = [layer.weight, layer.bias, step]
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, gr in zip(params, grads):
            p -= lr * gr
    return loss.item()


def check_qat_step(fn: Callable[..., float]) -> None:
    """``fn(layer, step, x, y, lr, bits)``: one QAT step of a Linear classifier with LSQ weights: fake-quantize ``layer.weight``
    (per-row learned ``step`` of shape (out, 1), ``g = 1/sqrt(in_features * qmax)``), cross-entropy, backward, plain SGD on the
    weight, the bias and the step, gradients cleared; returns the loss (before the update) as a float. Checked over two calls."""
    name = "check_qat_step"
    for seed, (n_in, n_out, bits, lr) in enumerate(((20, 5, 4, 0.5), (12, 3, 3, 1.0), (30, 10, 2, 0.2))):
        gen = torch.Generator().manual_seed(53 + seed)
        layer = nn.Linear(n_in, n_out)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(n_out, n_in, generator=gen) * 0.5)
            layer.bias.copy_(torch.randn(n_out, generator=gen) * 0.1)
        qmax = 2 ** (bits - 1) - 1
        step = (layer.weight.detach().abs().amax(1, keepdim=True) / qmax * 0.8).requires_grad_()
        ref_layer, ref_step = nn.Linear(n_in, n_out), step.detach().clone().requires_grad_()
        ref_layer.load_state_dict(layer.state_dict())
        case = f"Linear({n_in}, {n_out}), {bits} bits, lr {lr}"
        for call in (1, 2):
            x = torch.randn(16, n_in, generator=gen)
            y = torch.randint(0, n_out, (16,), generator=gen)
            x_before = x.clone()
            got = _call(name, f"{case}, call {call}", fn, layer, step, x, y, lr, bits)
            _unchanged(name, f"{case}, call {call}", x_before, x, "x")
            expected = _qat_step_reference(ref_layer, ref_step, x, y, lr, bits)
            if isinstance(got, torch.Tensor) and got.numel() == 1:
                got = got.item()
            if not isinstance(got, float):
                fail(name, case, "the loss as a float", type(got).__name__, "return loss.item()")
            if abs(got - expected) > 1e-5:
                fail(
                    name,
                    f"{case}, call {call}",
                    f"loss {expected:.6f}",
                    f"{got:.6f}",
                    "return the loss of the forward pass with the quantized weight, computed BEFORE the update",
                )
            for what, ours, ref, hint in (
                (
                    "the weight",
                    layer.weight,
                    ref_layer.weight,
                    "the weight's gradient reaches it through the STE: fake-quantize with autograd, no .detach() of the weight",
                ),
                ("the bias", layer.bias, ref_layer.bias, "SGD on the bias too: p -= lr * p.grad"),
                (
                    "the step",
                    step,
                    ref_step,
                    "SGD on the step with LSQ's gradient scaled by g = 1/sqrt(in_features * qmax); clear the gradients after each step",
                ),
            ):
                if not torch.allclose(ours.detach(), ref.detach(), atol=1e-5):
                    diff = (ours.detach() - ref.detach()).abs().max().item()
                    fail(
                        name,
                        f"{case}, after call {call}",
                        f"{what} as after the reference step",
                        f"{what} differs by up to {diff:.3g}",
                        hint,
                    )
        for p in (layer.weight, layer.bias, step):
            if p.grad is not None and p.grad.abs().max() > 0:
                fail(
                    name,
                    case,
                    "gradients cleared after the step (None or zero)",
                    "a leftover gradient",
                    "zero the gradients (p.grad = None) so the next step does not add to them",
                )
    passed(name, "3 layers (2 to 4 bits), two consecutive steps each: loss, weight, bias and step match the reference")


def _allocation_cases() -> list[tuple[str, dict, dict, float]]:
    rng = np.random.default_rng(54)
    cases = []
    for i, (n_layers, widths) in enumerate(((3, (2, 4, 8)), (4, (1, 2, 4, 8)), (5, (2, 3, 4)))):
        sens, cost = {}, {}
        for j in range(n_layers):
            size = int(rng.integers(100, 5000))
            weight = float(rng.uniform(0.1, 5.0))
            sens[f"layer{j}"] = {b: weight * 4.0 ** (-b) for b in widths}
            cost[f"layer{j}"] = {b: size * b // 8 + 16 for b in widths}
        cheapest = sum(min(c.values()) for c in cost.values())
        dearest = sum(max(c.values()) for c in cost.values())
        cases.append((f"{n_layers} layers, widths {widths}", sens, cost, float(cheapest + (dearest - cheapest) * (0.3 + 0.2 * i))))
    # a greedy upgrade by sensitivity per byte fails here; the exhaustive search does not
    sens = {"big": {2: 1.0, 4: 0.0}, "small": {2: 0.6, 4: 0.0}, "mid": {2: 0.6, 4: 0.0}}
    cost = {"big": {2: 100, 4: 200}, "small": {2: 10, 4: 60}, "mid": {2: 50, 4: 100}}
    cases.append(("greedy-trap: one big upgrade beats two small ones", sens, cost, 260.0))
    # the budget equals an allocation's exact cost: <= budget is allowed
    cases.append(("budget exactly equal to the best allocation's bytes", sens, cost, 310.0))
    # a tie in sensitivity: the cheaper allocation wins
    tie_s = {"a": {2: 0.0, 4: 0.0, 8: 0.0}, "b": {2: 1.0, 4: 0.5, 8: 0.0}}
    tie_c = {"a": {2: 10, 4: 20, 8: 40}, "b": {2: 10, 4: 20, 8: 40}}
    cases.append(("a tie in sensitivity (layer a is insensitive): the cheaper allocation", tie_s, tie_c, 100.0))
    return cases


def check_allocate_bits(fn: Callable[..., dict]) -> None:
    """``fn(sensitivity, cost, budget)`` -> {layer: bits} minimising the summed sensitivity with the summed cost <= budget;
    among equal sensitivities the cheaper allocation; raises ValueError when no allocation fits."""
    from .qat import allocate_bits

    name = "check_allocate_bits"
    for case, sens, cost, budget in _allocation_cases():
        import copy as _copy

        sens_before, cost_before = _copy.deepcopy(sens), _copy.deepcopy(cost)
        got = _call(name, case, fn, sens, cost, budget)
        if sens != sens_before or cost != cost_before:
            fail(name, case, "sensitivity and cost left as they were", "changed by your function", IN_PLACE_HINT)
        expected = allocate_bits(sens, cost, budget)
        if not isinstance(got, dict) or set(got) != set(expected):
            fail(
                name,
                case,
                f"a dict {{layer: bits}} over {sorted(expected)}",
                f"{type(got).__name__} {got!r}"[:120],
                "return one width per layer name, e.g. dict(zip(names, combo))",
            )
        if any(got[n] not in cost[n] for n in got):
            fail(
                name, case, f"widths from the options {[list(cost[n]) for n in cost]}", f"{got}", "choose each layer's width among its keys"
            )
        total = sum(cost[n][got[n]] for n in got)
        if total > budget:
            fail(
                name, case, f"an allocation within the budget {budget:g}", f"{got}: {total} bytes", "the summed bytes must be <= the budget"
            )
        got_s, exp_s = sum(sens[n][got[n]] for n in got), sum(sens[n][expected[n]] for n in expected)
        exp_total = sum(cost[n][expected[n]] for n in expected)
        if got_s > exp_s + 1e-12:
            fail(
                name,
                case,
                f"{expected} (summed sensitivity {exp_s:.4g}, {exp_total} bytes)",
                f"{got} (summed sensitivity {got_s:.4g}, {total} bytes)",
                "try every combination (itertools.product over the layers' widths): a greedy upgrade can miss the best one; "
                "<= budget is allowed",
            )
        if total > exp_total:
            fail(
                name,
                case,
                f"{expected} ({exp_total} bytes)",
                f"{got} ({total} bytes, same sensitivity)",
                "among equal sensitivities take the cheaper allocation",
            )
    sens, cost = {"a": {2: 1.0, 4: 0.5}}, {"a": {2: 100, 4: 200}}
    try:
        got = fn(sens, cost, 50.0)
    except NotImplementedError:
        raise
    except ValueError:
        got = "ValueError"
    except Exception as error:  # noqa: BLE001
        fail(
            name,
            "a budget below the cheapest allocation",
            "ValueError",
            f"{type(error).__name__}: {error}",
            "raise ValueError('budget ...') when nothing fits",
        )
    if got != "ValueError":
        fail(
            name,
            "a budget below the cheapest allocation",
            "ValueError",
            f"{got!r}",
            "raise ValueError when no allocation fits the budget (do not return None or an over-budget one)",
        )
    passed(name, "6 problems (random, a greedy trap, a budget met exactly, a sensitivity tie) and an infeasible budget")


# ----------------------------------------------------------------------------- chapter 06: weight sharing and coding


def _ws_array(check: str, case: str, value: Any, what: str, hint: str) -> np.ndarray:
    """A learner's numpy array / torch tensor / list of numbers as a numpy array; anything else fails."""
    __tracebackhide__ = True
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, (list, tuple)):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray) or not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
        fail(check, case, f"{what} as a numpy array (or torch tensor)", f"{type(value).__name__}", hint)
    return value


def _lloyd_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(61)
    cases = [
        ("200 normal values, 5 centroids (float64)", rng.standard_normal(200), np.linspace(-2, 2, 5)),
        ("500 values, 16 centroids (float32)", rng.standard_normal(500).astype(np.float32), np.linspace(-2.5, 2.5, 16).astype(np.float32)),
        ("ties: values exactly halfway between centroids", np.array([0.5, 1.5, 0.5, 2.0, 0.0]), np.array([0.0, 1.0, 2.0])),
        ("empty clusters: no value near 10 or 20", rng.uniform(0, 1, 50), np.array([0.0, 10.0, 20.0])),
        ("one centroid", rng.standard_normal(30), np.array([3.0])),
        (
            "a pruned layer's two lobes",
            np.concatenate([rng.normal(-0.1, 0.02, 300), rng.normal(0.12, 0.03, 200)]),
            np.linspace(-0.15, 0.2, 8),
        ),
    ]
    return cases


def check_lloyd_step(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
    """``fn(values, centroids)`` -> the centroids after one Lloyd iteration (k,): nearest-centroid assignment (ties: the lower
    index; centroids are sorted), then each centroid moves to the mean of its values; a centroid with no value stays."""
    from .encoding import lloyd_step

    name = "check_lloyd_step"
    cases = _lloyd_cases()
    for case, values, centroids in cases:
        v_before, c_before = values.copy(), centroids.copy()
        got = _call(name, case, fn, values, centroids)
        _unchanged(name, case, v_before, values, "values")
        _unchanged(name, case, c_before, centroids, "centroids")
        got = _ws_array(name, case, got, "the new centroids", "return the k new centroids (one number per centroid), not the labels")
        expected = lloyd_step(v_before, c_before)[0]
        if got.shape != expected.shape:
            fail(name, case, f"shape {expected.shape}", f"shape {got.shape}", "one new value per centroid, in the centroids' order")
        if not np.all(np.isfinite(got)):
            fail(
                name,
                case,
                np.round(expected, 5).tolist(),
                np.round(got.astype(np.float64), 5).tolist(),
                "an empty cluster (no value assigned) keeps its old centroid: no mean of an empty set (NaN), no 0",
            )
        tol = 1e-5 if values.dtype == np.float32 else 1e-10
        if not np.allclose(got.astype(np.float64), expected, rtol=tol, atol=tol):
            empty = np.setdiff1d(
                np.arange(len(c_before)), np.unique(np.abs(v_before[:, None].astype(np.float64) - c_before[None]).argmin(1))
            )
            hint = "assign each value to the NEAREST centroid (argmin of |v - c|; on a tie the lower index), then take each cluster's MEAN"
            if len(empty):
                hint += f"; centroids {empty.tolist()} get no value here and must keep their old place"
            fail(name, case, np.round(expected, 6).tolist(), np.round(got.astype(np.float64), 6).tolist(), hint)
    passed(name, f"{len(cases)} cases (float64 and float32, ties, empty clusters, one centroid), inputs left unchanged")


def _reference_centroid_grad(weight_grad: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    centroids = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    weight = centroids.index_select(0, indices.flatten()).view(indices.shape) * mask
    (weight * weight_grad.double()).sum().backward()  # dL/dW = weight_grad, so dL/dc by the chain rule
    return centroids.grad


def check_centroid_gradient(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]) -> None:
    """``fn(weight_grad, indices, mask, k)`` -> dL/dcentroids (k,): the sum of the gradients of the KEPT weights of each cluster,
    compared with autograd through ``index_select`` (weight = centroids[indices] * mask)."""
    name = "check_centroid_gradient"
    gen = torch.Generator().manual_seed(62)
    cases = []
    for shape, k, keep, dtype in (
        ((6, 9), 4, 0.7, torch.float32),
        ((30, 20), 16, 0.1, torch.float32),
        ((5, 5), 8, 1.0, torch.float64),
        ((4, 3, 3, 3), 7, 0.5, torch.float32),
    ):
        indices = torch.randint(0, k - 1, shape, generator=gen)  # the last cluster gets no weight
        mask = torch.rand(shape, generator=gen) < keep
        cases.append(
            (f"weight {tuple(shape)}, k={k}, {keep:.0%} kept, {dtype}", torch.randn(shape, generator=gen, dtype=dtype), indices, mask, k)
        )
    shape = (3, 4)
    cases.append(
        (
            "every weight pruned (all gradients 0)",
            torch.randn(shape, generator=gen),
            torch.randint(0, 3, shape, generator=gen),
            torch.zeros(shape, dtype=torch.bool),
            3,
        )
    )
    for case, grad, indices, mask, k in cases:
        before = [grad.clone(), indices.clone(), mask.clone()]
        got = _call(name, case, fn, grad, indices, mask, k)
        for old, new, what in zip(before, (grad, indices, mask), ("weight_grad", "indices", "mask")):
            _unchanged(name, case, old, new, what)
        got = _ws_array(name, case, got, "the centroid gradient", "return a tensor of k numbers, one per centroid")
        expected = _reference_centroid_grad(grad, indices, mask, k).numpy()
        if got.shape != expected.shape:
            fail(
                name,
                case,
                f"shape {expected.shape}",
                f"shape {got.shape}",
                "one gradient per centroid, k of them, even for clusters with no weight "
                "(torch.zeros(k).index_add_ or np.bincount(..., minlength=k))",
            )
        scale = float(np.abs(expected).max(initial=0.0)) + 1.0
        if not np.allclose(got.astype(np.float64), expected, rtol=1e-5, atol=1e-5 * scale):
            fail(
                name,
                case,
                np.round(expected, 4).tolist(),
                np.round(got.astype(np.float64), 4).tolist(),
                "SUM (not mean) the gradients of each cluster's weights, and only of the kept ones (mask True): "
                "a pruned weight is 0 whatever its centroid",
            )
    passed(
        name, f"{len(cases)} cases equal autograd through index_select (an empty cluster, all pruned, a conv shape), inputs left unchanged"
    )


def _huffman_count_cases() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(63)
    fib = [1, 1]
    while len(fib) < 12:
        fib.append(fib[-1] + fib[-2])
    return [
        ("6 symbols (CLRS: 45, 13, 12, 16, 9, 5)", np.array([45, 13, 12, 16, 9, 5])),
        ("16 random counts with zeros", np.where(rng.random(16) < 0.25, 0, rng.integers(1, 500, 16))),
        ("two symbols", np.array([0, 900, 3])),
        ("one symbol", np.array([0, 0, 42, 0])),
        ("Fibonacci counts: codes up to 11 bits", np.array(fib)),
        ("8 equal counts (ties everywhere)", np.full(8, 10)),
        ("40 skewed counts", (1000 * rng.random(40) ** 4).astype(np.int64) + 1),
    ]


def check_code_lengths(fn: Callable[[np.ndarray], np.ndarray]) -> None:
    """``fn(counts)`` -> Huffman code length per symbol (0 for a count of 0; one present symbol gets 1). Any optimal set of lengths
    passes (ties can give several): the lengths must form a complete prefix code (Kraft sum 1) with the minimum total bits."""
    from .encoding import huffman_code_lengths

    name = "check_code_lengths"
    cases = _huffman_count_cases()
    for case, counts in cases:
        before = counts.copy()
        got = _call(name, case, fn, counts)
        _unchanged(name, case, before, counts, "counts")
        got = _ws_array(name, case, got, "the code lengths", "return one integer length per symbol, e.g. np.array(lengths)")
        expected = huffman_code_lengths(before)
        if got.shape != expected.shape or not np.all(np.equal(np.mod(got, 1), 0)):
            fail(
                name,
                case,
                f"{len(expected)} integer lengths",
                f"shape {got.shape}, dtype {got.dtype}",
                "one whole-number length per symbol, absent ones included",
            )
        got = got.astype(np.int64)
        if not np.array_equal(got == 0, before == 0):
            fail(
                name,
                case,
                expected.tolist(),
                got.tolist(),
                "a symbol with count 0 gets length 0 (no code); every present symbol gets at least 1 bit, even when it is the only one",
            )
        present = got[before > 0]
        kraft = float(np.sum(2.0 ** -present.astype(np.float64)))
        if len(present) > 1 and abs(kraft - 1.0) > 1e-12:
            fail(
                name,
                case,
                f"lengths with Kraft sum 1, e.g. {expected.tolist()}",
                f"{got.tolist()} (Kraft sum {kraft:.4g})",
                "a symbol's length is its leaf's DEPTH in the Huffman tree: +1 for every merge above it (not ceil(-log2 p), not depth + 1)",
            )
        best, cost = int((before * expected).sum()), int((before * got).sum())
        if cost != best:
            fail(
                name,
                case,
                f"{best} bits in total, e.g. lengths {expected.tolist()}",
                f"{cost} bits with lengths {got.tolist()}",
                "always merge the two LIGHTEST subtrees (a min-heap of (count, ...)); Shannon's ceil(-log2 p) is not optimal",
            )
    passed(name, f"{len(cases)} histograms: optimal, complete codes (one symbol, two, ties, 11-bit Fibonacci codes), counts left unchanged")


def check_canonical_codes(fn: Callable[[np.ndarray], np.ndarray]) -> None:
    """``fn(lengths)`` -> canonical code per symbol (an int; 0 for length 0): symbols sorted by (length, symbol) get consecutive
    codes, shifted left by the growth in length (the DEFLATE rule)."""
    from .encoding import canonical_codes, huffman_code_lengths

    name = "check_canonical_codes"
    cases = [
        ("lengths [2, 1, 3, 3]", np.array([2, 1, 3, 3])),
        ("with absent symbols", np.array([0, 2, 2, 0, 2, 2])),
        ("one symbol", np.array([0, 1, 0])),
    ]
    cases += [(f"Huffman lengths of {case}", huffman_code_lengths(counts)) for case, counts in _huffman_count_cases() if "one" not in case]
    for case, lengths in cases:
        before = lengths.copy()
        got = _call(name, case, fn, lengths)
        _unchanged(name, case, before, lengths, "lengths")
        got = _ws_array(name, case, got, "the codes", "return one integer code per symbol")
        expected = canonical_codes(before).astype(np.int64)
        if got.shape != expected.shape or not np.array_equal(got.astype(np.int64), expected):
            fmt = lambda c, n: format(int(c), f"0{int(n)}b") if n else "-"  # noqa: E731
            fail(
                name,
                case,
                [fmt(c, n) for c, n in zip(expected, before)],
                [fmt(c, n) for c, n in zip(np.ravel(got)[: len(before)], before)],
                "sort the present symbols by (length, symbol); code = 0 for the first; then code = (code + 1) << (new length - old length)",
            )
    passed(name, f"{len(cases)} length tables give the canonical codes exactly, lengths left unchanged")


def _stream_cases() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    from .encoding import canonical_codes, huffman_code_lengths

    rng = np.random.default_rng(64)
    cases = []
    for case, counts in _huffman_count_cases():
        lengths = huffman_code_lengths(counts)
        p = counts / counts.sum()
        symbols = rng.choice(len(counts), size=int(rng.integers(1, 300)), p=p)
        cases.append((f"{len(symbols)} symbols, code of {case}", symbols, canonical_codes(lengths).astype(np.int64), lengths))
    lengths = np.array([1, 1])
    cases.append(("no symbols at all", np.zeros(0, dtype=np.int64), canonical_codes(lengths).astype(np.int64), lengths))
    return cases


def _bits(data: bytes, nbits: int) -> str:
    return "".join(format(b, "08b") for b in data)[:nbits]


def check_huffman_encode(fn: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple]) -> None:
    """``fn(symbols, codes, lengths)`` -> ``(data, nbits)``: each symbol's code, ``lengths[s]`` bits, most significant bit first,
    packed into bytes (the first bit is the top bit of the first byte; the last byte padded with 0 bits); ``nbits`` the bits written."""
    from .encoding import encode_with_codes

    name = "check_huffman_encode"
    cases = _stream_cases()
    for case, symbols, codes, lengths in cases:
        before = [symbols.copy(), codes.copy(), lengths.copy()]
        got = _call(name, case, fn, symbols, codes, lengths)
        for old, new, what in zip(before, (symbols, codes, lengths), ("symbols", "codes", "lengths")):
            _unchanged(name, case, old, new, what)
        if not isinstance(got, (tuple, list)) or len(got) != 2 or not isinstance(got[0], (bytes, bytearray)):
            fail(name, case, "a pair (bytes, nbits)", f"{type(got).__name__}", "return bytes(...) and the number of bits written")
        data, nbits = bytes(got[0]), got[1]
        expected, expected_bits = encode_with_codes(*before)
        if _as_int(name, case, nbits) != expected_bits:
            fail(
                name,
                case,
                f"nbits = {expected_bits}",
                f"{nbits}",
                "count the code bits only (sum of lengths[s] over the symbols), not the padding",
            )
        if data != expected:
            fail(
                name,
                case,
                f"{len(expected)} bytes, first bits {_bits(expected, 48)}",
                f"{len(data)} bytes, first bits {_bits(data, 48)}",
                "write each code's bits from its MOST significant (bit lengths[s]-1) down to bit 0, fill bytes from their top bit, "
                "pad the last byte with ZEROS at the end",
            )
    passed(name, f"{len(cases)} streams equal the reference bit for bit (one symbol, no symbols, long codes), inputs left unchanged")


def check_huffman_decode(fn: Callable[[bytes, int, np.ndarray, int], np.ndarray]) -> None:
    """``fn(data, nbits, lengths, count)`` -> the ``count`` symbols of a canonical code given by ``lengths``, read MSB-first from
    the first ``nbits`` bits of ``data``; a stream that runs out of bits must raise ``ValueError``."""
    from .encoding import encode_with_codes

    name = "check_huffman_decode"
    cases = _stream_cases()
    for case, symbols, codes, lengths in cases:
        data, nbits = encode_with_codes(symbols, codes, lengths)
        lengths_before = lengths.copy()
        got = _call(name, case, fn, data, nbits, lengths, len(symbols))
        _unchanged(name, case, lengths_before, lengths, "lengths")
        got = _ws_array(name, case, got, "the decoded symbols", "return the symbols as an array of ints")
        if got.shape != symbols.shape or not np.array_equal(got.astype(np.int64), symbols):
            fail(
                name,
                case,
                symbols[:12].tolist(),
                np.ravel(got)[:12].tolist(),
                "read one bit at a time, MSB-first; after each bit compare (length so far, code so far) with the canonical table: "
                "a code is only a match at ITS length (code 2 of 2 bits '10' is not code 2 of 3 bits '010')",
            )
    case, symbols, codes, lengths = cases[1]
    data, nbits = encode_with_codes(symbols, codes, lengths)
    short = nbits - int(lengths[symbols[-1]]) - 1  # the last code and one more bit cut off
    try:
        fn(data[: (short + 7) // 8], short, lengths, len(symbols))
    except NotImplementedError:
        raise
    except ValueError:
        pass
    except Exception as error:  # noqa: BLE001
        fail(
            name,
            "a truncated stream",
            "ValueError",
            f"{type(error).__name__}: {error}",
            "check the position against nbits before reading a bit and raise ValueError('truncated ...')",
        )
    else:
        fail(
            name,
            "a truncated stream",
            "ValueError",
            "no error (a silently wrong result)",
            "when the bits run out before `count` symbols are decoded, raise ValueError: never return a partial or padded result",
        )
    passed(name, f"{len(cases)} streams decoded exactly, and a truncated stream raises ValueError")


# ----------------------------------------------------------------------------- chapter 07: distillation


def _logit_cases() -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    rng = np.random.default_rng(18)
    far = np.stack([rng.standard_normal(6) * 3 + 1000, rng.standard_normal(6) * 3 - 1000])  # rows 2000 apart: a per-row max is needed
    return [
        ("random logits, T = 1", rng.standard_normal((4, 10)) * 3, rng.standard_normal((4, 10)) * 3, 1.0),
        ("random logits, T = 4", rng.standard_normal((6, 10)) * 5, rng.standard_normal((6, 10)) * 5, 4.0),
        ("large logits (near 1000), T = 1", rng.standard_normal((3, 5)) * 3 + 1000, rng.standard_normal((3, 5)) * 3 + 1000, 1.0),
        ("rows near +1000 and -1000, T = 2", far, far[::-1].copy() + rng.standard_normal((2, 6)), 2.0),
        ("batch of one, T = 10", rng.standard_normal((1, 7)), rng.standard_normal((1, 7)), 10.0),
        ("10 x 10 logits, T = 3 (a wrong axis keeps the shape)", rng.standard_normal((10, 10)) * 4, rng.standard_normal((10, 10)) * 4, 3.0),
    ]


def _numpy_result(check: str, case: str, value: Any, shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """The learner's array as float64 and whether it was computed in float32 (then float32 tolerances apply)."""
    __tracebackhide__ = True
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        fail(
            check,
            case,
            f"a float numpy array of shape {shape}",
            f"{type(value).__name__} {getattr(value, 'dtype', '')}",
            "return a numpy array",
        )
    if value.shape != shape:
        fail(
            check,
            case,
            f"shape {shape}",
            f"shape {value.shape}",
            "keep the (batch, classes) shape: reduce with keepdims=True along the last axis",
        )
    return value.astype(np.float64), value.dtype.itemsize < 8


SOFTMAX_IN_PLACE_HINT = "do not write into the input (z /= T, z -= max, np.exp(z, out=z)): write z = z / T, which makes a new array"


def _float_result(check: str, case: str, value: Any) -> float:
    __tracebackhide__ = True
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (float, int, np.floating)):
        fail(check, case, "a float", f"{value!r} ({type(value).__name__})", "return one number, the batch mean, e.g. with float(...)")
    return float(value)


def check_distillation_step(fn: Callable[..., float]) -> None:
    """``fn(student, optimizer, x, y, teacher_logits, T, alpha)``: one optimizer step on the distillation loss; returns the loss."""
    from .distillation import distillation_loss
    from .models import MLP

    name = "check_distillation_step"
    torch.manual_seed(19)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    teacher_logits = torch.randn(16, 10) * 3
    for T, alpha in ((4.0, 0.9), (2.0, 0.3), (1.0, 1.0), (3.0, 0.0)):
        case = f"T = {T}, alpha = {alpha}, two steps in a row (SGD with momentum)"
        ours, theirs = MLP(hidden=(12,)), MLP(hidden=(12,))
        theirs.load_state_dict(ours.state_dict())
        opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
        opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
        for step in range(2):
            expected = distillation_loss(ours(x), teacher_logits, y, T, alpha)
            opt_ours.zero_grad()
            expected.backward()
            opt_ours.step()
            t_arg = teacher_logits.clone()
            got = _float_result(name, f"{case}, step {step + 1}", _call(name, case, fn, theirs, opt_theirs, x, y, t_arg, T, alpha))
            if not torch.equal(t_arg, teacher_logits):
                fail(
                    name,
                    case,
                    "teacher_logits left unchanged",
                    "modified in place",
                    "write t = teacher_logits / T, not teacher_logits /= T",
                )
            if not np.isclose(got, expected.item(), rtol=1e-5):
                hint = "alpha * kd_loss + (1 - alpha) * cross_entropy on the student's logits for x, computed before the step"
                if np.isclose(got, distillation_loss(ours(x), teacher_logits, y, T, 1 - alpha).item(), rtol=1e-5) and alpha != 0.5:
                    hint = "alpha weights the soft targets (KD), 1 - alpha the labels (cross-entropy)"
                fail(name, f"{case}, step {step + 1}", f"loss {expected.item():.6f}", f"{got:.6f}", hint)
            for p, q in zip(ours.parameters(), theirs.parameters()):
                if not torch.allclose(p, q, atol=1e-6):
                    fail(
                        name,
                        f"{case}, step {step + 1}",
                        "the same parameters as one SGD step on that loss",
                        "different parameters",
                        "optimizer.zero_grad(), loss.backward(), optimizer.step() once; the whole loss must reach the student "
                        "(no .detach() on its logits)",
                    )
    passed(name, "4 settings x 2 consecutive steps: same loss and same parameters as the reference")


def check_hint_loss(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(student_features, teacher_features, regressor)`` -> mean squared error of regressor(student) vs teacher.

    A float64 result is accepted; gradients must reach the student's features and the regressor, not the teacher's."""
    from .distillation import HintRegressor, hint_loss

    name = "check_hint_loss"
    torch.manual_seed(20)
    for cs, ct, hw in ((4, 12, 6), (8, 50, 8)):
        fs = torch.randn(3, cs, hw, hw, requires_grad=True)
        ft = torch.randn(3, ct, hw, hw, requires_grad=True)
        regressor = HintRegressor(cs, ct)
        case = f"student {cs} channels, teacher {ct}, {hw}x{hw}"
        expected = hint_loss(fs, ft, regressor)
        expected_grad = torch.autograd.grad(expected, fs)[0]
        fs_before, ft_before = fs.detach().clone(), ft.detach().clone()
        got = _call(name, case, fn, fs, ft, regressor)
        if not isinstance(got, torch.Tensor) or got.dim() != 0:
            fail(
                name,
                case,
                "a scalar tensor",
                f"{type(got).__name__} {tuple(getattr(got, 'shape', ()))}",
                "return a differentiable 0-dim tensor (.mean())",
            )
        if not (torch.equal(fs.detach(), fs_before) and torch.equal(ft.detach(), ft_before)):
            fail(name, case, "the feature tensors left unchanged", "modified in place", "no in-place operations (sub_, pow_) on the inputs")
        if not torch.isclose(got.detach().double(), expected.detach().double(), rtol=1e-5):
            fail(name, case, f"{expected.item():.6f}", f"{got.item():.6f}", "mean over all elements of (regressor(student) - teacher)**2")
        if not got.requires_grad:
            fail(
                name,
                case,
                "a loss that gradients flow through",
                "a tensor without grad",
                "do not wrap the loss in torch.no_grad() or detach it",
            )
        got.backward()
        if ft.grad is not None and ft.grad.abs().sum() > 0:
            fail(
                name,
                case,
                "no gradient into the teacher's features",
                "a gradient reached them",
                "use teacher_features.detach(): the teacher is fixed",
            )
        if (
            regressor.proj.weight.grad is None
            or fs.grad is None
            or not torch.allclose(fs.grad.double(), expected_grad.double(), rtol=1e-4, atol=1e-8)
        ):
            fail(
                name,
                case,
                "gradients for the regressor and the student's features",
                "none or different",
                "apply the regressor to the student's features inside the loss; do not detach the student's features",
            )
    passed(name, "2 layer pairs: MSE through the regressor, teacher detached, gradients reach student and regressor")


def _attention_gradient(
    check: str, case: str, got: torch.Tensor, features: torch.Tensor, weights: torch.Tensor, expected_grad: torch.Tensor
) -> None:
    """Fail unless gradients of ``(got * weights).sum()`` reach ``features`` finite and equal to the reference's."""
    __tracebackhide__ = True
    if not got.requires_grad:
        fail(check, case, "a map that gradients flow through", "a tensor without grad", "do not detach the features or use torch.no_grad()")
    grad = torch.autograd.grad((got * weights.to(got.dtype)).sum(), features, allow_unused=True)[0]
    if grad is not None and not torch.all(torch.isfinite(grad)):
        fail(
            check,
            case,
            "finite gradients (zero for an all-zero example)",
            "NaN or inf in the gradient",
            "the gradient of sqrt at 0 is infinite: take the norm with .norm(dim=1) or F.normalize, whose gradient at 0 is 0",
        )
    if grad is None or not torch.allclose(grad.double(), expected_grad.double(), rtol=1e-4, atol=1e-6):
        fail(
            check,
            case,
            "the gradient of the reference map",
            "none or different",
            "build the map from features with differentiable torch ops",
        )


def _ensemble_cases() -> list[tuple[str, list[np.ndarray], float]]:
    rng = np.random.default_rng(23)
    up, down = rng.standard_normal((2, 6)) * 3 + 1000, rng.standard_normal((2, 6)) * 3 - 1000
    return [
        ("two teachers, T = 1", [rng.standard_normal((4, 10)) * 3, rng.standard_normal((4, 10)) * 3], 1.0),
        (
            "a confident and a hesitant teacher (logit scales 10 and 1), T = 4",
            [rng.standard_normal((6, 10)) * 10, rng.standard_normal((6, 10))],
            4.0,
        ),
        ("three teachers, T = 2", [rng.standard_normal((5, 10)) * 4 for _ in range(3)], 2.0),
        ("teacher 0 near +1000, teacher 1 near -1000, T = 1", [up, down], 1.0),
        ("one teacher, batch of one, T = 10", [rng.standard_normal((1, 7)) * 5], 10.0),
        ("two teachers, 10 x 10 logits, T = 3 (a wrong axis keeps the shape)", [rng.standard_normal((10, 10)) * 4 for _ in range(2)], 3.0),
    ]


def check_ensemble_soft_targets(fn: Callable[[list, float], np.ndarray]) -> None:
    """``fn(teacher_logits, T)`` -> the mean over the K teachers of softmax(logits_k / T), (batch, classes).

    ``teacher_logits`` is a list of K numpy arrays (batch, classes); none may be modified. A float32 result is
    accepted at float32 tolerance, a torch tensor too."""
    from .distillation import ensemble_soft_targets, softmax_t

    name = "check_ensemble_soft_targets"
    for case, logits, T in _ensemble_cases():
        expected = ensemble_soft_targets(logits, T)
        arguments = [z.copy() for z in logits]
        with np.errstate(all="ignore"):
            raw = _call(name, case, fn, arguments, T)
        for k, (z, argument) in enumerate(zip(logits, arguments)):
            _unchanged(name, case, z, argument, f"teacher_logits[{k}]", SOFTMAX_IN_PLACE_HINT)
        if tuple(np.shape(raw)) != expected.shape and isinstance(raw, (np.ndarray, torch.Tensor)):
            fail(
                name,
                case,
                f"shape {expected.shape}",
                f"shape {tuple(np.shape(raw))}",
                "average over the teachers (the list), not over the batch",
            )
        got, single = _numpy_result(name, case, raw, expected.shape)
        if not np.all(np.isfinite(got)):
            fail(
                name,
                case,
                "finite probabilities",
                "inf or NaN",
                "subtract each teacher's own row maximum before exp (per teacher, per row)",
            )
        if not np.allclose(got, expected, rtol=1e-4 if single else 1e-9, atol=1e-5 if single else 1e-12):
            hint = "softmax(logits_k / T) for each teacher k, then the mean over the teachers (each row then sums to 1)"
            for other, why in (
                (
                    softmax_t(np.mean(logits, axis=0), T),
                    "average the probabilities, not the logits: softmax(mean of logits), the normalised geometric mean, "
                    "lets the confident teacher dominate",
                ),
                (len(logits) * expected, "the mean over the teachers, not the sum (each row must sum to 1)"),
                (softmax_t(logits[0], T), "use every teacher in the list, not only the first"),
                (np.mean([softmax_t(z, 1.0) for z in logits], axis=0), "divide each teacher's logits by T before the softmax"),
            ):
                if len(logits) > 1 or why.startswith("divide"):
                    if np.allclose(got, other, rtol=1e-4, atol=1e-6) and not np.allclose(other, expected, rtol=1e-4, atol=1e-6):
                        hint = why
                        break
            row = int(np.argmax(np.abs(got - expected).max(axis=-1)))
            fail(
                name,
                case,
                f"row {row}: {np.round(expected[row, :4], 5).tolist()}",
                f"row {row}: {np.round(got[row, :4], 5).tolist()}",
                hint,
            )
    passed(name, f"{len(_ensemble_cases())} ensembles of 1-3 teachers incl. logits near +-1000 and different scales; inputs left unchanged")


def _soft_loss_cases() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, float, float]]:
    from .distillation import ensemble_soft_targets

    rng = np.random.default_rng(24)
    cases = []
    for case, s, t, T in _logit_cases():
        p = ensemble_soft_targets([t, rng.standard_normal(t.shape) * 3], T)
        cases.append((case, s, p, T))
    sparse = np.zeros((4, 10))
    sparse[np.arange(4), [1, 4, 7, 9]] = [0.7, 1.0, 0.55, 0.9]
    sparse[np.arange(4), [2, 4, 3, 0]] += [0.3, 0.0, 0.45, 0.1]
    cases.append(("soft targets with exact zeros (0 log 0 = 0), T = 2", rng.standard_normal((4, 10)) * 3, sparse, 2.0))
    alphas = [0.9, 0.3, 0.7, 1.0, 0.0, 0.6, 0.8]
    out = []
    for (case, s, p, T), alpha in zip(cases, alphas):
        labels = rng.integers(0, s.shape[1], len(s))
        out.append((f"{case}, alpha = {alpha}", s, p, labels, T, alpha))
    # The student's softmax underflows: q = exp(-2000) is 0 in float64, so np.log(softmax) gives -inf where
    # log-sum-exp gives -2000 (the label is that class, so both terms need the stable log).
    underflow = np.array([[1000.0, -1000.0, 0.0]])
    targets = ensemble_soft_targets([np.array([[0.0, 1.0, 2.0]])], 1.0)
    out.append(
        ("student [[1000, -1000, 0]] whose softmax underflows, label 1, T = 1, alpha = 0.5", underflow, targets, np.array([1]), 1.0, 0.5)
    )
    return out


def _soft_parts(s: np.ndarray, p: np.ndarray, y: np.ndarray, T: float) -> tuple[float, float, float, float]:
    """(KL(p || q_T) batch mean, CE(y, q_1), CE(y, q_T), KL(q_T || p)) for the hints."""
    from .distillation import log_softmax_t

    log_q, log_q1 = log_softmax_t(s, T), log_softmax_t(s, 1.0)
    with np.errstate(all="ignore"):
        p_log_p = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        reverse = float((np.exp(log_q) * (log_q - np.log(p))).sum(-1).mean())
    rows = np.arange(len(y))
    return float((p_log_p - p * log_q).sum(-1).mean()), float(-log_q1[rows, y].mean()), float(-log_q[rows, y].mean()), reverse


def check_soft_target_loss(fn: Callable[..., float]) -> None:
    """``fn(student_logits, soft_targets, labels, T, alpha)`` -> alpha T^2 mean KL(p || softmax(s/T)) + (1 - alpha) mean CE(y, softmax(s)).

    ``soft_targets`` are probabilities already at temperature T (they may hold exact zeros); accepted within a relative 3e-4
    (float32 passes); no argument may be modified."""
    from .distillation import soft_target_loss

    name = "check_soft_target_loss"
    cases = _soft_loss_cases()
    for case, s, p, y, T, alpha in cases:
        expected = soft_target_loss(s, p, y, T, alpha)
        args = (s.copy(), p.copy(), y.copy())
        with np.errstate(all="ignore"):
            got = _float_result(name, case, _call(name, case, fn, *args, T, alpha))
        for what, before, now in zip(("`student_logits`", "`soft_targets`", "`labels`"), (s, p, y), args):
            _unchanged(name, case, before, now, what, SOFTMAX_IN_PLACE_HINT)
        if not np.isclose(got, expected, rtol=3e-4, atol=1e-7):
            kl, ce, ce_t, reverse = _soft_parts(s, p, y, T)
            hint = (
                "alpha * T**2 * mean_b sum_i p_i (log p_i - log q_i) with q = softmax(s / T), plus (1 - alpha) * mean_b -log softmax(s)[y]"
            )
            if not np.isfinite(got):
                hint = (
                    "0 log 0 = 0: soft targets may be exactly 0, take p log p only where p > 0 (np.where or scipy.special.xlogy); "
                    "log q by log-sum-exp (z - max - log sum exp(z - max)), not np.log(softmax), which is -inf where softmax underflows"
                )
            else:
                for other, why in (
                    ((1 - alpha) * T * T * kl + alpha * ce, "alpha weights the soft targets (KL), 1 - alpha the labels (cross-entropy)"),
                    (alpha * kl + (1 - alpha) * ce, "the T**2 factor on the KL term is missing"),
                    (
                        alpha * T * T * kl + (1 - alpha) * ce_t,
                        "the cross-entropy with the labels uses the student's logits at T = 1, not s / T",
                    ),
                    (
                        alpha * T * T * reverse + (1 - alpha) * ce,
                        "the KL is the wrong way round: KL(p || q) = sum p (log p - log q), p = soft targets",
                    ),
                    (alpha * T * T * kl * len(s) + (1 - alpha) * ce * len(s), "average over the batch, do not sum"),
                    (alpha * T * T * kl / s.shape[1] + (1 - alpha) * ce, "sum the KL over the classes and average over the batch only"),
                    (alpha * T * T * kl, "add the (1 - alpha) cross-entropy with the labels"),
                    (
                        alpha * T * T * (kl - _soft_parts(np.log(np.maximum(p, 1e-300)), p, y, 1.0)[0]) + (1 - alpha) * ce,
                        "the KL includes the teacher's side, sum p log p (0 log 0 = 0), not only -sum p log q",
                    ),
                ):
                    if np.isfinite(other) and np.isclose(got, other, rtol=1e-4, atol=1e-9):
                        hint = why
                        break
            fail(name, case, f"{expected:.8g}", f"{got:.8g}", hint)
    passed(
        name,
        f"{len(cases)} cases (alpha 0 to 1, T 1 to 10, logits near +-1000, a softmax that underflows, soft targets with exact zeros); "
        "arguments unchanged",
    )


def check_soft_target_grad(fn: Callable[..., np.ndarray]) -> None:
    """``fn(student_logits, soft_targets, labels, T, alpha)`` -> the gradient of check_soft_target_loss's loss w.r.t. the
    student's logits, (batch, classes). Accepted within 3e-4 of the largest entry (float32 passes); arguments unchanged."""
    from .distillation import soft_target_grad, softmax_t

    name = "check_soft_target_grad"
    cases = _soft_loss_cases()
    for case, s, p, y, T, alpha in cases:
        expected = soft_target_grad(s, p, y, T, alpha)
        args = (s.copy(), p.copy(), y.copy())
        with np.errstate(all="ignore"):
            raw = _call(name, case, fn, *args, T, alpha)
        for what, before, now in zip(("`student_logits`", "`soft_targets`", "`labels`"), (s, p, y), args):
            _unchanged(name, case, before, now, what, SOFTMAX_IN_PLACE_HINT)
        got, _ = _numpy_result(name, case, raw, expected.shape)
        scale = np.abs(expected).max()
        if not np.all(np.isfinite(got)) or np.abs(got - expected).max() > 3e-4 * scale + 1e-12:
            B = len(s)
            kd = T * (softmax_t(s, T) - p) / B
            hard = (softmax_t(s, 1.0) - np.eye(s.shape[1])[y]) / B
            hint = "(alpha * T * (softmax(s / T) - p) + (1 - alpha) * (softmax(s) - onehot(y))) / batch"
            if np.all(np.isfinite(got)):
                for other, why in (
                    (
                        alpha * kd / T + (1 - alpha) * hard,
                        "the KL part is T * (q - p) / B: the T**2 of the loss times the 1/T of softmax(s / T)",
                    ),
                    (alpha * kd * T + (1 - alpha) * hard, "the KL part's factor is T, not T**2"),
                    (-expected, "the sign: student minus target, q - p and softmax(s) - onehot(y)"),
                    (B * expected, "divide by the batch size (the loss is a batch mean)"),
                    ((1 - alpha) * kd + alpha * hard, "alpha weights the soft-target part, 1 - alpha the labels"),
                    (alpha * kd, "add the cross-entropy part (1 - alpha) * (softmax(s) - onehot(y)) / B"),
                    (alpha * kd + (1 - alpha) * (softmax_t(s, T) - np.eye(s.shape[1])[y]) / B, "the label part uses softmax(s) at T = 1"),
                ):
                    if np.allclose(got, other, rtol=1e-4, atol=1e-12) and not np.allclose(other, expected, rtol=1e-4, atol=1e-12):
                        hint = why
                        break
            row = int(np.argmax(np.abs(got - expected).max(axis=-1))) if np.all(np.isfinite(got)) else 0
            fail(
                name,
                case,
                f"row {row}: {np.round(expected[row, :4], 6).tolist()}",
                f"row {row}: {np.round(got[row, :4], 6).tolist()}",
                hint,
            )
    passed(name, f"{len(cases)} cases equal the gradient of the mixed loss (KL part and label part); arguments unchanged")


def check_pooled_attention_map(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(features, size, p)`` -> (N, size*size): sum_c |F_c|**p, average-pooled to size x size, flattened, unit L2 norm
    per example (an all-zero example stays zero). A torch tensor that gradients flow through; float64 is accepted."""
    import torch.nn.functional as F

    from .distillation import pooled_attention_map

    name = "check_pooled_attention_map"
    torch.manual_seed(25)
    cases = [((2, 8, 24, 24), 8, 2), ((3, 4, 24, 24), 12, 1), ((2, 5, 8, 8), 8, 2), ((3, 6, 12, 12), 4, 4), ((3, 5, 24, 24), 8, 2),
             ((2, 3, 12, 6), 3, 2)]  # fmt: skip
    for shape, size, p in cases:
        features = torch.randn(*shape) * torch.rand(shape[0], 1, 1, 1) * 5
        zero_row = shape == (3, 5, 24, 24)
        if zero_row:
            features[1] = 0.0
        case = f"features {shape} to {size}x{size}, p = {p}" + (" (example 1 all zeros)" if zero_row else "")
        features.requires_grad_(True)
        expected = pooled_attention_map(features, size, p)
        weights = torch.randn(expected.shape)
        expected_grad = torch.autograd.grad((expected * weights).sum(), features)[0]
        argument = features.detach().clone().requires_grad_(True)
        got = _call(name, case, fn, argument, size, p)
        if not isinstance(got, torch.Tensor):
            fail(
                name,
                case,
                "a torch tensor",
                type(got).__name__,
                "stay in torch (no .numpy()): the map is used in a loss and needs gradients",
            )
        if not torch.equal(argument.detach(), features.detach()):
            fail(name, case, "features left unchanged", "modified in place", "use features.abs(), not features.abs_() or pow_")
        if tuple(got.shape) != tuple(expected.shape):
            fail(
                name,
                case,
                f"shape {tuple(expected.shape)}",
                f"shape {tuple(got.shape)}",
                "pool (N, 1, H, W) with a kernel of (H // size, W // size) (or F.adaptive_avg_pool2d(m, size)), then flatten",
            )
        if not torch.all(torch.isfinite(got)):
            fail(
                name,
                case,
                "finite maps (zeros for an all-zero example)",
                "NaN or inf",
                "guard the norm: F.normalize or norm.clamp_min(1e-12)",
            )
        if not torch.allclose(got.detach().double(), expected.detach().double(), atol=1e-6):
            hint = "|F|**p summed over channels, then average-pooled to size x size, then flattened and divided by its L2 norm"
            energy = features.detach().abs().pow(p).sum(1, keepdim=True)
            k = (shape[2] // size, shape[3] // size)
            for other, why in (
                (
                    F.normalize(F.max_pool2d(energy, k).flatten(1), dim=1),
                    "average-pool (F.avg_pool2d), not max-pool: every pixel's energy counts",
                ),
                (
                    F.normalize(F.avg_pool2d(features.detach(), k).abs().pow(p).sum(1).flatten(1), dim=1),
                    "pool the energy sum_c |F_c|**p, not the features: averaging signed activations first cancels them",
                ),
                (F.avg_pool2d(energy, k).flatten(1), "normalise each example's pooled map to unit L2 norm"),
                (
                    F.avg_pool2d(F.normalize(energy.flatten(1), dim=1).view_as(energy), k).flatten(1),
                    "pool first, then normalise (normalising first leaves a map whose norm is not 1)",
                ),
            ):
                if torch.allclose(got.detach().double(), other.double(), atol=1e-6):
                    hint = why
                    break
            fail(name, case, expected[0, :4].tolist(), got[0, :4].tolist(), hint)
        _attention_gradient(name, case, got, argument, weights, expected_grad)
    passed(
        name,
        f"{len(cases)} feature maps (24x24 to 8x8 and 12x12, a non-square map, an all-zero example): pooled, unit norm, gradients intact",
    )


# ----------------------------------------------------------------------------- chapter 08: low-rank factorization


def _lr_array(check: str, case: str, value: Any, what: str) -> np.ndarray:
    """A learner's numpy array or torch tensor as a float64 numpy array; anything else fails with a hint."""
    __tracebackhide__ = True
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.number):
        fail(
            check,
            case,
            f"{what} as a numpy array (or torch tensor)",
            f"{type(value).__name__}",
            "return the arrays themselves, e.g. U[:, :rank]",
        )
    return value


def check_truncated_svd(fn: Callable[[np.ndarray, int], tuple]) -> None:
    """``fn(W, rank)`` -> (U_r (m, r), S_r (r,), Vt_r (r, n)): the leading singular triplets, S_r decreasing.

    Any correct truncated SVD passes (a singular vector pair may flip sign); float32 inputs are judged at
    float32 tolerance, float64 inputs at float64 tolerance.
    """
    from .lowrank import low_rank_approx

    name = "check_truncated_svd"
    rng = np.random.default_rng(22)
    cases = [
        ((8, 5), 2, np.float64),
        ((5, 8), 3, np.float64),
        ((30, 30), 30, np.float64),
        ((12, 7), 1, np.float64),
        ((40, 25), 6, np.float32),
    ]
    for shape, rank, dtype in cases:
        W = rng.standard_normal(shape).astype(dtype)
        W_before = W.copy()
        case = f"W {shape} {np.dtype(dtype).name}, rank {rank}"
        got = _call(name, case, fn, W, rank)
        _unchanged(name, case, W_before, W, "W")
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            fail(name, case, "a tuple (U_r, S_r, Vt_r)", f"{type(got).__name__}", "return U[:, :rank], S[:rank], Vt[:rank]")
        U, S, Vt = (_lr_array(name, case, v, part) for v, part in zip(got, ("U_r", "S_r", "Vt_r")))
        if U.shape != (shape[0], rank) or S.shape != (rank,) or Vt.shape != (rank, shape[1]):
            fail(
                name,
                case,
                f"shapes {(shape[0], rank)}, {(rank,)}, {(rank, shape[1])}",
                f"{U.shape}, {S.shape}, {Vt.shape}",
                "np.linalg.svd(W, full_matrices=False) gives U, S, Vt; keep the first `rank` columns of U, entries of S, rows of Vt "
                "(Vt, not V: its rows are the right singular vectors)",
            )
        if not np.all(np.isfinite(U)) or not np.all(np.isfinite(S)) or not np.all(np.isfinite(Vt)):
            fail(name, case, "finite numbers", "NaN or inf", "a division by a zero singular value? (sqrt of a tiny negative eigenvalue?)")
        float64_in = dtype == np.float64
        tol = 1e-8 if float64_in else 2e-4  # scaled by the largest singular value below
        scale = float(np.linalg.norm(W_before, 2))
        ref_S = np.linalg.svd(W_before.astype(np.float64), compute_uv=False)[:rank]
        low_precision = float64_in and (U.dtype != np.float64 or S.dtype != np.float64 or Vt.dtype != np.float64)
        precision_hint = " Your result is not float64 although W is: compute in float64." if low_precision else ""
        float32_hint = (
            "compute in float64: W is float64 and your result agrees with the reference only to float32 precision "
            "(no .astype(np.float32) / torch.float32 on the way)"
        )
        tol32 = 2e-4  # the float32 tolerance, scaled by the largest singular value as tol is
        if np.any(np.diff(S.astype(np.float64)) > tol * scale) or np.any(S < -tol * scale):
            fail(
                name,
                case,
                f"S_r decreasing and >= 0: {np.round(ref_S[:4], 4).tolist()}...",
                np.round(S[:4].astype(np.float64), 4).tolist(),
                "return the singular values largest first (np.linalg.eigh sorts eigenvalues INCREASING: reverse them, and their vectors)",
            )
        if not np.allclose(S, ref_S, rtol=0, atol=tol * scale):
            if float64_in and np.allclose(S, ref_S, rtol=0, atol=tol32 * scale):
                fail(
                    name,
                    case,
                    f"the {rank} largest singular values to float64 precision: {ref_S[:3].tolist()}...",
                    f"{S[:3].astype(np.float64).tolist()}... (largest difference {np.abs(S - ref_S).max():.1e})",
                    float32_hint,
                )
            fail(
                name,
                case,
                f"the {rank} largest singular values {np.round(ref_S[:4], 5).tolist()}...",
                np.round(S[:4].astype(np.float64), 5).tolist(),
                "keep the LARGEST singular values; a singular value is the square root of an eigenvalue of W^T W." + precision_hint,
            )
        eye = np.eye(rank)
        gram_u, gram_v = U.T.astype(np.float64) @ U, Vt.astype(np.float64) @ Vt.T
        if not np.allclose(gram_u, eye, atol=10 * tol) or not np.allclose(gram_v, eye, atol=10 * tol):
            orthonormal_at_float32 = float64_in and np.allclose(gram_u, eye, atol=10 * tol32) and np.allclose(gram_v, eye, atol=10 * tol32)
            gram_u, gram_v = np.abs(gram_u - eye).max(), np.abs(gram_v - eye).max()
            fail(
                name,
                case,
                "orthonormal columns in U_r and orthonormal rows in Vt_r" + (" to float64 precision" if orthonormal_at_float32 else ""),
                f"max |U^T U - I| = {gram_u:.2e}, max |Vt Vt^T - I| = {gram_v:.2e}",
                float32_hint
                if orthonormal_at_float32
                else "U_r = W V_r / S_r (divide each column by its singular value); do not multiply S into U or Vt." + precision_hint,
            )
        product = (U.astype(np.float64) * S) @ Vt
        best = low_rank_approx(W_before.astype(np.float64), rank)
        if not np.allclose(product, best, rtol=0, atol=tol * scale):
            at_float32 = float64_in and np.allclose(product, best, rtol=0, atol=tol32 * scale)
            fail(
                name,
                case,
                "U_r diag(S_r) Vt_r = the best rank-r approximation" + (" to float64 precision" if at_float32 else ""),
                f"a different matrix (largest difference {np.abs(product - best).max():.1e})",
                float32_hint
                if at_float32
                else "each column u_i must pair with its own row v_i and sigma_i (same order, consistent signs: U_r = W V_r / S_r)."
                + precision_hint,
            )
    passed(name, f"{len(cases)} matrices (tall, wide, square full rank, rank 1, float32), inputs left unchanged")


def check_low_rank_error(fn: Callable[[np.ndarray, int], float]) -> None:
    """``fn(singular_values, rank)`` -> Frobenius error of the rank-r truncation, sqrt(sum of the discarded sigma**2)."""
    name = "check_low_rank_error"
    rng = np.random.default_rng(23)
    cases = [(10, 3, np.float64), (10, 10, np.float64), (5, 1, np.float64), (40, 12, np.float64), (40, 39, np.float64), (20, 4, np.float32)]
    for n, rank, dtype in cases:
        W = rng.standard_normal((n + 3, n))
        U, S_, Vt = np.linalg.svd(W, full_matrices=False)
        expected = float(np.linalg.norm(W - (U[:, :rank] * S_[:rank]) @ Vt[:rank]))
        S = S_.astype(dtype)
        S_before = S.copy()
        case = f"{n} singular values ({np.dtype(dtype).name}), rank {rank}"
        raw = _call(name, case, fn, S, rank)
        _unchanged(name, case, S_before, S, "singular_values")
        try:
            got = float(raw)
        except (TypeError, ValueError):
            fail(
                name,
                case,
                "a single float",
                f"{type(raw).__name__} {getattr(raw, 'shape', '')}",
                "return one number, e.g. float(np.sqrt(...))",
            )
        scale = float(np.linalg.norm(S_))
        atol = (1e-6 if dtype == np.float32 else 1e-7) * scale  # room for sqrt(total - kept) rounding at rank = n
        if not np.isfinite(got) or not np.isclose(got, expected, rtol=1e-9 if dtype == np.float64 else 1e-6, atol=atol):
            fail(
                name,
                case,
                f"{expected:.8g}",
                f"{got:.8g}",
                "Eckart-Young: sqrt(sum of sigma_i**2 for the DISCARDED i >= rank) (0-based); the square root matters; "
                "sum the discarded ones directly (sqrt(total - kept) can go negative by rounding)",
            )
    passed(name, f"{len(cases)} cases equal the measured error ||W - W_r||_F (float64 and float32), inputs left unchanged")


def check_rank_for_energy(fn: Callable[[np.ndarray, float], int]) -> None:
    """``fn(singular_values, energy)`` -> smallest r with sum(sigma[:r]**2) >= energy * sum(sigma**2)."""
    from .lowrank import rank_for_energy

    name = "check_rank_for_energy"
    rng = np.random.default_rng(24)
    cases = [(np.array([3.0, 2.0, 1.0, 0.0]), e) for e in (0.5, 9 / 14, 0.65, 13 / 14, 0.99, 1.0)]
    cases += [(np.sort(rng.random(50))[::-1] ** 3, e) for e in (0.3, 0.9)]
    cases += [(np.array([2.0, 1.0, 1.0, 1.0]), e) for e in (0.1, 5 / 7, 6 / 7)]  # exact thresholds with ties
    cases += [(np.linspace(1.0, 0.1, 30, dtype=np.float32), 0.8)]
    for s, energy in cases:
        case = f"sigma {np.round(s[:4], 3).tolist()}... ({len(s)} values, {s.dtype.name}), energy {energy:.4f}"
        expected = rank_for_energy(s, energy)
        s_before = s.copy()
        got = _as_int(name, case, _call(name, case, fn, s, energy))
        _unchanged(name, case, s_before, s, "singular_values")
        if got != expected:
            fail(
                name,
                case,
                expected,
                got,
                "energy is sum of sigma**2 (not sigma); the SMALLEST r whose cumulative energy reaches (>=) the target; r counts from 1",
            )
    passed(name, f"{len(cases)} cases incl. exact thresholds, ties and trailing zeros, inputs left unchanged")


def _lr_module_checks(check: str, case: str, got: Any, kinds: tuple, original: nn.Module, ranks: tuple) -> None:
    """Structure of a factorized block: an nn.Sequential of fresh layers of ``kinds``, trainable, in the original dtype."""
    __tracebackhide__ = True
    names = " -> ".join(k.__name__ for k in kinds)
    if not isinstance(got, nn.Sequential) or len(got) != len(kinds) or not all(isinstance(m, k) for m, k in zip(got, kinds)):
        fail(
            check,
            case,
            f"nn.Sequential({names})",
            f"{type(got).__name__}: {repr(got)[:90]}",
            f"return nn.Sequential(...) of {len(kinds)} layers (an nn.Module, not numpy factors)",
        )
    for index, m in enumerate(got):
        if m.weight.dtype != original.weight.dtype:
            fail(
                check,
                case,
                f"layer {index} weight {original.weight.dtype}",
                m.weight.dtype,
                "copy_ the float64 factors into float32 layers (the model runs in float32)",
            )
        if not m.weight.requires_grad or (m.bias is not None and not m.bias.requires_grad):
            fail(
                check,
                case,
                "trainable parameters (requires_grad)",
                f"layer {index} is frozen",
                "create the layers with nn.Linear / nn.Conv2d and fill them under torch.no_grad()",
            )
        for p in (m.weight, m.bias):
            if p is not None and any(p is q or p.data_ptr() == q.data_ptr() for q in original.parameters()):
                fail(
                    check,
                    case,
                    "new parameters",
                    f"layer {index} shares a tensor with the original layer",
                    "copy the bias (second.bias.copy_(layer.bias)) instead of assigning it: if shared, fine-tuning changes the original",
                )


def check_factorize_linear(fn: Callable[[nn.Linear, int], nn.Module]) -> None:
    """``fn(layer, rank)`` -> nn.Sequential(Linear(in, r, bias=False) = sqrt(S) Vt, Linear(r, out) = U sqrt(S) + bias)."""
    from .lowrank import low_rank_approx, truncated_svd

    name = "check_factorize_linear"
    torch.manual_seed(25)
    cases = ((20, 12, 4, True), (50, 30, 30, True), (9, 16, 1, True), (14, 10, 3, False))
    for fan_in, fan_out, rank, bias in cases:
        layer = nn.Linear(fan_in, fan_out, bias=bias)
        state = {k: v.clone() for k, v in layer.state_dict().items()}
        case = f"Linear({fan_in}, {fan_out}, bias={bias}), rank {rank}"
        got = _call(name, case, fn, layer, rank)
        for k, v in layer.state_dict().items():
            _unchanged(name, case, state[k].numpy(), v, f"layer.{k}")
        _lr_module_checks(name, case, got, (nn.Linear, nn.Linear), layer, (rank,))
        first, second = got
        if tuple(first.weight.shape) != (rank, fan_in) or tuple(second.weight.shape) != (fan_out, rank):
            fail(
                name,
                case,
                f"weights ({rank}, {fan_in}) and ({fan_out}, {rank})",
                f"{tuple(first.weight.shape)} and {tuple(second.weight.shape)}",
                "first layer: in -> rank (weight sqrt(S) Vt); second: rank -> out (weight U sqrt(S)); check for a transposed factor",
            )
        attributes = (first.in_features, first.out_features, second.in_features, second.out_features)
        if attributes != (fan_in, rank, rank, fan_out):
            fail(
                name,
                case,
                f"in/out_features {(fan_in, rank, rank, fan_out)}",
                attributes,
                "build nn.Linear(in, rank) and nn.Linear(rank, out) rather than overwriting .weight of other-sized layers",
            )
        if first.bias is not None:
            fail(
                name,
                case,
                "first layer without bias",
                "a bias of shape " + str(tuple(first.bias.shape)),
                "nn.Linear(in, rank, bias=False): the original bias belongs to the second layer only",
            )
        if bias and second.bias is None:
            fail(name, case, "second layer with the original bias", "no bias", "nn.Linear(rank, out) keeps a bias: copy layer.bias into it")
        if not bias and second.bias is not None and second.bias.detach().abs().max() > 0:
            fail(name, case, "no bias (the layer had none)", "a random bias", "nn.Linear(rank, out, bias=layer.bias is not None)")
        x = torch.randn(5, fan_in)
        b = layer.bias.detach().double() if bias else 0.0
        expected = x.double() @ torch.from_numpy(low_rank_approx(layer.weight.detach().double(), rank)).T + b
        with torch.no_grad():
            out = got(x).double()
        if not torch.allclose(out, expected, atol=1e-4):
            fail(
                name,
                case,
                "x W_r^T + b",
                f"max difference {(out - expected).abs().max():.3g}",
                "the bias belongs to the second layer only; use the leading singular triplets",
            )
        _, S, _ = truncated_svd(layer.weight.detach().double(), rank)
        norms = first.weight.detach().double().norm(dim=1).numpy()
        if not np.allclose(norms, np.sqrt(S), rtol=1e-4):
            fail(
                name,
                case,
                f"row norms of the first weight = sqrt(S) = {np.round(np.sqrt(S[:3]), 4).tolist()}",
                np.round(norms[:3], 4).tolist(),
                "split sqrt(S) between the two factors: first = sqrt(S)[:, None] * Vt, second = U * sqrt(S)",
            )
    passed(name, f"{len(cases)} layers: correct product, shapes, bias on the second layer only, the even sqrt(S) split, original untouched")


def check_factorize_conv(fn: Callable[[nn.Conv2d, int], nn.Module]) -> None:
    """``fn(conv, rank)`` -> nn.Sequential(Conv2d(C_in, r, k, stride, padding, bias=False), Conv2d(r, C_out, 1) + bias) from the
    SVD of the kernel reshaped to (C_out, C_in k k), sqrt(S) split evenly."""
    from .lowrank import factorize_conv

    name = "check_factorize_conv"
    torch.manual_seed(28)
    cases = ((20, 50, 5, 1, 0, 10, True), (3, 8, 3, 2, 1, 4, True), (6, 4, (3, 1), 1, (1, 0), 4, False), (4, 6, 3, 1, 1, 6, True))
    for c_in, c_out, k, stride, pad, rank, bias in cases:
        conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, bias=bias)
        state = {key: v.clone() for key, v in conv.state_dict().items()}
        case = f"Conv2d({c_in}, {c_out}, kernel_size={k}, stride={stride}, padding={pad}, bias={bias}), rank {rank}"
        got = _call(name, case, fn, conv, rank)
        for key, v in conv.state_dict().items():
            _unchanged(name, case, state[key].numpy(), v, f"conv.{key}")
        _lr_module_checks(name, case, got, (nn.Conv2d, nn.Conv2d), conv, (rank,))
        first, second = got
        ref_first, ref_second = factorize_conv(conv, rank)
        for label, mine, ref in (("first", first, ref_first), ("second", second, ref_second)):
            mine_cfg = (tuple(mine.weight.shape), mine.in_channels, mine.out_channels, mine.kernel_size, mine.stride, mine.padding)
            ref_cfg = (tuple(ref.weight.shape), ref.in_channels, ref.out_channels, ref.kernel_size, ref.stride, ref.padding)
            if mine_cfg != ref_cfg:
                fail(
                    name,
                    case,
                    f"{label} conv (weight shape, in, out, kernel, stride, padding) = {ref_cfg}",
                    mine_cfg,
                    "first: nn.Conv2d(C_in, rank, k, stride, padding, bias=False) holding sqrt(S) Vt reshaped to (rank, C_in, kh, kw); "
                    "second: nn.Conv2d(rank, C_out, 1) holding U sqrt(S) and the bias",
                )
        if first.bias is not None:
            fail(name, case, "first conv without bias", "a bias", "bias=False on the first conv: the original bias belongs to the 1x1 conv")
        if (second.bias is None) == bias:
            fail(
                name,
                case,
                f"1x1 conv {'with' if bias else 'without'} a bias",
                f"{'no' if second.bias is None else 'a'} bias",
                "copy conv.bias into the second conv when the original has one",
            )
        x = torch.randn(2, c_in, 9, 9)
        with torch.no_grad():
            out, expected = got(x), ref_second(ref_first(x))
        if not torch.allclose(out, expected, atol=1e-4):
            fail(
                name,
                case,
                "the convolution with the rank-r kernel",
                f"max difference {(out - expected).abs().max():.3g}",
                "reshape the kernel to (C_out, C_in*kh*kw), take the leading triplets, reshape sqrt(S) Vt back to (rank, C_in, kh, kw)",
            )
        if rank >= min(c_out, c_in * conv.weight[0, 0].numel()):
            with torch.no_grad():
                full = conv(x)
            if not torch.allclose(out, full, atol=1e-4):
                fail(
                    name,
                    case,
                    "at full rank, the original convolution's output",
                    f"max difference {(out - full).abs().max():.3g}",
                    "stride and padding go to the first conv only",
                )
        norms = first.weight.detach().double().flatten(1).norm(dim=1).numpy()
        ref_norms = ref_first.weight.detach().double().flatten(1).norm(dim=1).numpy()
        if not np.allclose(norms, ref_norms, rtol=1e-4):
            fail(
                name,
                case,
                f"filter norms of the first conv = sqrt(S) = {np.round(ref_norms[:3], 4).tolist()}",
                np.round(norms[:3], 4).tolist(),
                "split sqrt(S) evenly: first = sqrt(S)[:, None] * Vt, second = U * sqrt(S)",
            )
    passed(
        name, f"{len(cases)} convolutions (stride, padding, rectangular kernel, full rank): rank-r output, even split, original untouched"
    )


def check_hosvd(fn: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """``fn(K, rank_out, rank_in)`` -> (core, U_out, U_in) of the Tucker-2 HOSVD of a 4-d kernel."""
    from .lowrank import hosvd_tucker2, tucker2_reconstruct

    name = "check_hosvd"
    rng = np.random.default_rng(26)
    cases = (
        ((6, 4, 3, 3), 3, 2, np.float64),
        ((10, 5, 5, 5), 10, 5, np.float64),
        ((8, 6, 1, 1), 2, 6, np.float64),
        ((12, 9, 3, 3), 4, 7, np.float32),
    )
    for shape, r_out, r_in, dtype in cases:
        K = rng.standard_normal(shape).astype(dtype)
        K_before = K.copy()
        case = f"K {shape} {np.dtype(dtype).name}, ranks (rank_out={r_out}, rank_in={r_in})"
        ref_core, ref_out, ref_in = hosvd_tucker2(K_before, r_out, r_in)
        got = _call(name, case, fn, K, r_out, r_in)
        _unchanged(name, case, K_before, K, "K")
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            fail(name, case, "a tuple (core, U_out, U_in)", type(got).__name__, "return core, U_out, U_in")
        core, U_out, U_in = (_lr_array(name, case, v, part).astype(np.float64) for v, part in zip(got, ("core", "U_out", "U_in")))
        if U_out.shape != ref_out.shape or U_in.shape != ref_in.shape or core.shape != ref_core.shape:
            fail(
                name,
                case,
                f"core {ref_core.shape}, U_out {ref_out.shape}, U_in {ref_in.shape}",
                f"{core.shape}, {U_out.shape}, {U_in.shape}",
                "U_out from the mode-0 unfolding (C_out rows), U_in from the mode-1 unfolding (C_in rows); core (rank_out, rank_in, k, k); "
                "return them in the order (core, U_out, U_in)",
            )
        tol = 1e-8 if dtype == np.float64 else 1e-4
        for label, U in (("U_out", U_out), ("U_in", U_in)):
            if not np.allclose(U.T @ U, np.eye(U.shape[1]), atol=tol):
                fail(
                    name,
                    case,
                    f"{label} with orthonormal columns",
                    f"max |U^T U - I| = {np.abs(U.T @ U - np.eye(U.shape[1])).max():.2e}",
                    "left singular vectors only (the U of the SVD, not U * S)",
                )
        if not np.allclose(U_out @ U_out.T, ref_out @ ref_out.T, atol=tol) or not np.allclose(U_in @ U_in.T, ref_in @ ref_in.T, atol=tol):
            fail(
                name,
                case,
                "the leading left singular subspaces of the unfoldings",
                "different subspaces",
                "the LEADING (largest) singular vectors; mode-1 unfolding: move axis 1 to the front before reshaping "
                "(K.transpose(1, 0, 2, 3).reshape(C_in, -1)); do not centre K",
            )
        scale = float(np.linalg.norm(K_before))
        if not np.allclose(tucker2_reconstruct(core, U_out, U_in), tucker2_reconstruct(ref_core, ref_out, ref_in), atol=tol * scale):
            fail(
                name,
                case,
                "core = K x0 U_out^T x1 U_in^T",
                "a different core",
                "project K onto the factors: contract mode 0 with U_out and mode 1 with U_in (einsum 'oikl,or,is->rskl')",
            )
    passed(
        name, f"{len(cases)} kernels (one float32): orthonormal factors spanning the right subspaces, the projected core, K left unchanged"
    )


def check_tucker2_macs(fn: Callable[..., int]) -> None:
    """``fn(c_in, c_out, k, rank_in, rank_out, height, width, padding)`` -> MACs of the Tucker-2 block (stride 1), one image."""
    from .lowrank import tucker2_conv

    name = "check_tucker2_macs"
    torch.manual_seed(27)
    cases = (
        (20, 50, 5, 8, 16, 12, 12, 0),
        (16, 32, 3, 4, 8, 10, 14, 1),
        (3, 6, 3, 3, 6, 9, 9, 0),
        (7, 5, 3, 5, 2, 6, 11, 2),
        (4, 4, 1, 2, 3, 5, 5, 0),
    )
    for c_in, c_out, k, r_in, r_out, h, w, pad in cases:
        case = f"c_in={c_in}, c_out={c_out}, k={k}, rank_in={r_in}, rank_out={r_out}, {h}x{w}, padding {pad}"
        expected = count_macs(tucker2_conv(nn.Conv2d(c_in, c_out, k, padding=pad), r_out, r_in), (1, c_in, h, w))
        got = _as_int(name, case, _call(name, case, fn, c_in, c_out, k, r_in, r_out, h, w, pad))
        if got != expected:
            fail(
                name,
                case,
                expected,
                got,
                "first 1x1 on the INPUT size (c_in r_in H W); core on the output size (r_in r_out k^2 H' W', H' = H + 2p - k + 1); "
                "last 1x1 (r_out c_out H' W'); 1x1 convs have no k^2",
            )
    passed(name, f"{len(cases)} blocks (padding, non-square inputs, rank_in != rank_out, k = 1) equal the hook count")


def check_tucker2_conv(fn: Callable[[nn.Conv2d, int, int], nn.Module]) -> None:
    """``fn(conv, rank_out, rank_in)`` -> nn.Sequential(1x1 C_in -> R_in, kxk R_in -> R_out (conv's padding), 1x1 R_out -> C_out + bias),
    equal in output to ``helpers.lowrank.tucker2_conv``, to the conv itself at full ranks, with the formula's MACs."""
    from .lowrank import tucker2_conv, tucker2_macs

    name = "check_tucker2_conv"
    torch.manual_seed(29)
    cases = ((20, 50, 5, 0, 16, 8, True), (8, 12, 3, 1, 5, 3, True), (6, 4, 3, 1, 4, 6, False), (10, 7, 3, 0, 7, 10, True))
    for c_in, c_out, k, pad, r_out, r_in, bias in cases:
        conv = nn.Conv2d(c_in, c_out, k, padding=pad, bias=bias)
        state = {key: v.clone() for key, v in conv.state_dict().items()}
        case = f"Conv2d({c_in}, {c_out}, {k}, padding={pad}, bias={bias}), rank_out={r_out}, rank_in={r_in}"
        got = _call(name, case, fn, conv, r_out, r_in)
        for key, v in conv.state_dict().items():
            _unchanged(name, case, state[key].numpy(), v, f"conv.{key}")
        _lr_module_checks(name, case, got, (nn.Conv2d, nn.Conv2d, nn.Conv2d), conv, (r_out, r_in))
        reference = tucker2_conv(conv, r_out, r_in)
        for index, (mine, ref) in enumerate(zip(got, reference)):
            mine_cfg = (
                tuple(mine.weight.shape),
                mine.in_channels,
                mine.out_channels,
                mine.kernel_size,
                mine.padding,
                mine.bias is not None,
            )
            ref_cfg = (tuple(ref.weight.shape), ref.in_channels, ref.out_channels, ref.kernel_size, ref.padding, ref.bias is not None)
            if mine_cfg != ref_cfg:
                fail(
                    name,
                    case,
                    f"conv {index} (weight shape, in, out, kernel, padding, has bias) = {ref_cfg}",
                    mine_cfg,
                    "1x1 (C_in -> rank_in, weight U_in^T, no bias) -> kxk core (rank_in -> rank_out, the original padding, no bias) "
                    "-> 1x1 (rank_out -> C_out, weight U_out, the original bias)",
                )
        x = torch.randn(2, c_in, 11, 11)
        with torch.no_grad():
            out, expected = got(x), reference(x)
        if not torch.allclose(out, expected, atol=1e-4):
            fail(
                name,
                case,
                "the output of the Tucker-2 (HOSVD) block",
                f"max difference {(out - expected).abs().max():.3g}",
                "first weight U_in.T[:, :, None, None], core G (rank_out, rank_in, k, k), last weight U_out[:, :, None, None]; "
                "U_out from the mode-0 unfolding, U_in from the mode-1 unfolding",
            )
        if r_out == c_out and r_in == c_in:
            with torch.no_grad():
                full = conv(x)
            if not torch.allclose(out, full, atol=1e-4):
                fail(
                    name,
                    case,
                    "at full ranks, the original convolution's output",
                    f"max difference {(out - full).abs().max():.3g}",
                    "the bias goes on the last 1x1 conv",
                )
        h = 11 + 2 * pad - k + 1
        macs, formula = count_macs(got, (1, c_in, 11, 11)), tucker2_macs(c_in, c_out, k, r_in, r_out, 11, 11, h, h)
        if macs != formula:
            fail(
                name, case, f"{formula:,} MACs (the Tucker-2 formula)", f"{macs:,}", "three convolutions: 1x1, kxk core, 1x1; nothing else"
            )
    passed(name, f"{len(cases)} convolutions (padding, no bias, full ranks): equal to the HOSVD block, MACs = formula, original untouched")


# ----------------------------------------------------------------------------- chapter 09: compact architectures


def _cc_array(check: str, case: str, value: Any, shape: tuple, hint: str) -> np.ndarray:
    """A learner's array (numpy or torch) of the expected shape, as float64 numpy; anything else fails with a hint."""
    __tracebackhide__ = True
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.number):
        fail(check, case, f"a numpy array of shape {shape}", f"{type(value).__name__}", hint)
    if value.shape != shape:
        fail(check, case, f"shape {shape}", f"shape {value.shape}", hint)
    return value.astype(np.float64)


def check_depthwise_conv2d(fn: Callable[..., np.ndarray]) -> None:
    """``fn(x, w, stride=1, padding=0)`` -> depthwise convolution of x (N, C, H, W) with w (C, 1, k, k), no bias:
    equal to ``torch.nn.functional.conv2d(x, w, stride=stride, padding=padding, groups=C)`` (cross-correlation, zero padding)."""
    name = "check_depthwise_conv2d"
    rng = np.random.default_rng(90)
    cases = [
        ((2, 3, 7, 7), 3, 1, 0, np.float64),
        ((1, 4, 8, 6), 3, 1, 1, np.float64),  # rectangular image
        ((2, 5, 9, 9), 3, 2, 1, np.float64),  # stride 2
        ((1, 2, 10, 10), 5, 2, 2, np.float32),
        ((3, 1, 5, 5), 1, 1, 0, np.float64),  # one channel, 1x1 kernel
        ((1, 6, 8, 8), 3, 3, 0, np.float64),  # stride 3: 2x2 output
        ((2, 3, 6, 7), 2, 2, 0, np.float32),  # even kernel, last column not covered
    ]
    for shape, k, stride, padding, dtype in cases:
        x = rng.standard_normal(shape).astype(dtype)
        w = rng.standard_normal((shape[1], 1, k, k)).astype(dtype)
        x_before, w_before = x.copy(), w.copy()
        expected = torch.nn.functional.conv2d(
            torch.from_numpy(x).double(), torch.from_numpy(w).double(), stride=stride, padding=padding, groups=shape[1]
        ).numpy()
        case = f"x {shape} {np.dtype(dtype).name}, kernel {k}x{k}, stride {stride}, padding {padding}"
        got = _call(name, case, fn, x, w, stride=stride, padding=padding)
        _unchanged(name, case, x_before, x, "x")
        _unchanged(name, case, w_before, w, "w")
        got = _cc_array(
            name,
            case,
            got,
            expected.shape,
            "one output channel per input channel; H' = (H + 2 padding - k) // stride + 1 (floor), the same for W'",
        )
        tol = 1e-9 if dtype == np.float64 else 1e-4
        if not np.allclose(got, expected, rtol=tol, atol=tol):
            flipped = torch.nn.functional.conv2d(
                torch.from_numpy(x).double(),
                torch.from_numpy(w[:, :, ::-1, ::-1].copy()).double(),
                stride=stride,
                padding=padding,
                groups=shape[1],
            )
            hint = (
                "do not flip the kernel: deep-learning 'convolution' is cross-correlation, out[r, s] = sum(patch * w[c, 0])"
                if np.allclose(got, flipped.numpy(), rtol=tol, atol=tol)
                else "channel c of the output uses only channel c of x and w[c, 0]; pad with zeros on all four sides; "
                "step the window by `stride`"
            )
            fail(name, case, f"{np.round(expected.ravel()[:4], 4).tolist()}...", f"{np.round(got.ravel()[:4], 4).tolist()}...", hint)
    passed(
        name,
        f"{len(cases)} cases (strides 1-3, padding 0-2, kernels 1-5, rectangular, float32) equal torch's groups=C conv, inputs unchanged",
    )


def check_conv_macs(fn: Callable[..., int]) -> None:
    """``fn(c_in, c_out, kernel, height, width, stride=1, padding=0, groups=1)`` -> MACs of one Conv2d on one image,
    equal to the hook count (:func:`helpers.metrics.count_macs`) of a real ``nn.Conv2d``."""
    name = "check_conv_macs"
    cases = [
        (1, 16, 3, 28, 28, 2, 1, 1),
        (16, 16, 3, 14, 14, 1, 1, 16),  # depthwise
        (16, 32, 1, 14, 14, 1, 0, 1),  # pointwise
        (24, 48, 1, 14, 14, 1, 0, 2),  # grouped 1x1
        (32, 64, 3, 7, 7, 2, 1, 4),  # grouped, stride 2, odd size
        (20, 50, 5, 12, 12, 1, 0, 1),  # LeNet-5's conv2
        (6, 9, 3, 10, 8, 3, 0, 3),  # rectangular, stride 3
        (8, 8, 3, 5, 5, 2, 0, 8),  # depthwise, stride 2 with a leftover row
    ]
    for c_in, c_out, k, h, w, stride, padding, groups in cases:
        case = f"conv_macs({c_in}, {c_out}, kernel={k}, height={h}, width={w}, stride={stride}, padding={padding}, groups={groups})"
        expected = count_macs(nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, groups=groups), (1, c_in, h, w))
        got = _as_int(name, case, _call(name, case, fn, c_in, c_out, k, h, w, stride=stride, padding=padding, groups=groups))
        if got != expected:
            fail(
                name,
                case,
                f"{expected:,}",
                f"{got:,}",
                "MACs = c_out * H' * W' * (c_in / groups) * k * k with H' = (H + 2 padding - k) // stride + 1 (floor; the OUTPUT size)",
            )
    passed(name, f"{len(cases)} convolutions (standard, depthwise, pointwise, grouped, strided, rectangular) equal the hook count")


def check_channel_shuffle(fn: Callable[[np.ndarray, int], np.ndarray]) -> None:
    """``fn(x, groups)`` -> ShuffleNet's channel shuffle of x (N, C, H, W): output channel ``a * groups + b`` is
    input channel ``b * (C / groups) + a`` (reshape to (N, groups, C/groups, H, W), swap axes 1 and 2, flatten)."""
    from .architectures import shuffle_permutation

    name = "check_channel_shuffle"
    rng = np.random.default_rng(91)
    cases = [
        ((1, 12, 1, 1), 3),
        ((2, 12, 3, 3), 4),
        ((2, 8, 2, 5), 2),
        ((1, 18, 2, 2), 3),
        ((2, 6, 4, 4), 6),
        ((1, 5, 3, 3), 1),
        ((3, 24, 2, 2), 2),
    ]
    for shape, groups in cases:
        x = rng.standard_normal(shape)
        x[:, :, 0, 0] = np.arange(shape[1])  # the first pixel names its channel, so a wrong order is readable
        x_before = x.copy()
        expected = x[:, shuffle_permutation(shape[1], groups)]
        case = f"x {shape}, groups {groups}"
        got = _call(name, case, fn, x, groups)
        _unchanged(name, case, x_before, x, "x")
        got = _cc_array(name, case, got, shape, "return an array of the same shape as x: the channels reordered, nothing else")
        if not np.array_equal(got, expected):
            hint = "reshape to (N, groups, C // groups, H, W) (group first), swap axes 1 and 2, reshape back"
            if np.array_equal(got, x):
                hint = "the reshape alone changes nothing: swap the two channel axes (transpose) before flattening. " + hint
            fail(
                name,
                case,
                f"channel order {expected[0, :, 0, 0].astype(int).tolist()}",
                f"{np.round(got[0, :, 0, 0], 2).tolist()}",
                hint,
            )
    passed(name, f"{len(cases)} cases (C/groups != groups, groups = 1 and groups = C) equal the shuffle permutation, x unchanged")


def check_inverted_residual(fn: Callable[[int, int, int, int], nn.Module]) -> None:
    """``fn(c_in, c_out, expand, stride)`` -> an nn.Module computing MobileNetV2's inverted residual:
    [1x1 conv c_in -> expand*c_in, BN, ReLU6] (omitted when expand == 1), 3x3 depthwise conv (stride, padding 1), BN,
    ReLU6, 1x1 conv -> c_out, BN (no activation: the linear bottleneck); x added back iff stride == 1 and c_in == c_out.
    Convs without bias. Its parameters, in ``.parameters()`` order, must match that layer order: the check copies the
    reference block's weights and BN statistics into yours and compares outputs and MACs."""
    from .architectures import InvertedResidual

    name = "check_inverted_residual"
    cases = [(8, 8, 6, 1), (8, 16, 4, 2), (16, 16, 1, 1), (8, 12, 2, 1), (12, 12, 3, 2)]
    order = "expand conv (1x1), BN, depthwise conv (3x3, groups = hidden), BN, project conv (1x1), BN"
    for c_in, c_out, expand, stride in cases:
        case = f"inverted_residual(c_in={c_in}, c_out={c_out}, expand={expand}, stride={stride})"
        torch.manual_seed(c_in * 100 + c_out + expand)
        reference = InvertedResidual(c_in, c_out, expand, stride)
        block = _call(name, case, fn, c_in, c_out, expand, stride)
        if not isinstance(block, nn.Module):
            fail(
                name,
                case,
                "an nn.Module",
                type(block).__name__,
                "return the block, e.g. an nn.Module whose forward adds x back when it should",
            )
        ref_params, params = list(reference.parameters()), list(block.parameters())
        ref_shapes, shapes = [tuple(p.shape) for p in ref_params], [tuple(p.shape) for p in params]
        if shapes != ref_shapes:
            fail(
                name,
                case,
                f"parameters of shapes {ref_shapes}",
                f"{shapes}",
                f"layers in this order: {order}; no expand conv when expand == 1; the depthwise conv has groups = its channels "
                "(weight (hidden, 1, 3, 3)); convs with bias=False",
            )
        ref_buffers = [b for b in reference.buffers() if b.is_floating_point()]
        buffers = [b for b in block.buffers() if b.is_floating_point()]
        if [tuple(b.shape) for b in buffers] != [tuple(b.shape) for b in ref_buffers]:
            fail(
                name,
                case,
                f"{len(ref_buffers)} BatchNorm statistics buffers",
                f"{len(buffers)}",
                f"one nn.BatchNorm2d after each conv: {order}",
            )
        generator = torch.Generator().manual_seed(c_in + 7 * c_out + stride)
        with torch.no_grad():
            for p in ref_params:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
            for b in ref_buffers:
                b.copy_(torch.rand(b.shape, generator=generator) + 0.5)
            for mine, theirs in zip(params + buffers, ref_params + ref_buffers):
                mine.copy_(theirs)
        reference.eval()
        block.eval()
        x = torch.randn(2, c_in, 9, 9, generator=generator) * 4.0  # large enough to cross ReLU6's clip at 6
        with torch.no_grad():
            expected = reference(x)
            try:
                got = block(x)
            except NotImplementedError:
                raise
            except Exception as error:  # noqa: BLE001 - a shape error in the learner's forward becomes a check failure with a hint
                fail(
                    name,
                    case,
                    f"an output of shape {tuple(expected.shape)}",
                    f"{type(error).__name__}: {str(error)[:120]}",
                    "add x back only when stride == 1 and c_in == c_out (else the shapes differ); the stride goes on the depthwise conv",
                )
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            fail(
                name,
                case,
                f"output of shape {tuple(expected.shape)}",
                f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}",
                "the stride belongs to the depthwise conv (padding 1); the projection maps to c_out channels",
            )
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
            fail(
                name,
                case,
                f"{np.round(expected.flatten()[:4].numpy(), 3).tolist()}...",
                f"{np.round(got.flatten()[:4].numpy(), 3).tolist()}...",
                "ReLU6 (not ReLU) after the expand and the depthwise BN; NO activation after the projection BN; add x back only when "
                "stride == 1 and c_in == c_out; the stride goes on the depthwise conv, not on the 1x1s",
            )
        expected_macs, macs = count_macs(reference, (1, c_in, 9, 9)), count_macs(block, (1, c_in, 9, 9))
        if macs != expected_macs:
            fail(
                name,
                case,
                f"{expected_macs:,} MACs",
                f"{macs:,}",
                "the stride goes on the depthwise conv; every conv runs once per forward",
            )
        block.train()
        out = block(x)
        out.sum().backward()
        if any(p.grad is None for p in params):
            fail(
                name,
                case,
                "gradients for every parameter",
                "some parameter got no gradient",
                "build the block from nn layers, no .detach() or numpy",
            )
    passed(name, f"{len(cases)} blocks (expand 1-6, stride 1-2, with and without the shortcut) equal the reference, MACs equal, trainable")


# ----------------------------------------------------------------------------- chapter 10: mixed-precision training


def _decode_cases() -> list[tuple[str, np.ndarray, int, int, bool]]:
    rng = np.random.default_rng(101)
    fp32 = rng.integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32)
    fp32[:6] = [0x00000001, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0x7F800000, 0xFF800001]
    return [
        ("fp16 (E5M10), all 65,536 patterns", np.arange(2**16, dtype=np.uint16), 5, 10, False),
        ("bf16 (E8M7), all 65,536 patterns", np.arange(2**16, dtype=np.uint16), 8, 7, False),
        ("fp8 E4M3fn, all 256 patterns (finite_only: no inf, NaN only at S.1111.111)", np.arange(256, dtype=np.uint8), 4, 3, True),
        ("fp8 E5M2, all 256 patterns", np.arange(256, dtype=np.uint8), 5, 2, False),
        ("fp32, 4,096 random patterns and the special ones", fp32, 8, 23, False),
        ("a 7-bit E3M3 format (IEEE rules), all 128 patterns", np.arange(128, dtype=np.uint8), 3, 3, False),
    ]


def check_decode_float(fn: Callable[..., np.ndarray]) -> None:
    """``fn(bits, exponent_bits, mantissa_bits, finite_only)`` -> float64 values of unsigned bit patterns (any shape);
    compared with the helper's decoder (itself equal to numpy, ml_dtypes and torch) on every pattern, NaN where NaN."""
    from .mixed_precision import FloatFormat, decode

    name = "check_decode_float"
    for case, bits, e, m, finite_only in _decode_cases():
        expected = decode(bits, FloatFormat("case", e, m, finite_only))
        argument = bits.copy()
        with np.errstate(all="ignore"):
            raw = _call(name, case, fn, argument, e, m, finite_only)
        _unchanged(name, case, bits, argument, "`bits`")
        if isinstance(raw, torch.Tensor):
            raw = raw.detach().cpu().numpy()
        if not isinstance(raw, np.ndarray) or raw.dtype.kind != "f" or raw.shape != bits.shape:
            fail(
                name,
                case,
                f"a float numpy array of shape {bits.shape}",
                f"{type(raw).__name__} {getattr(raw, 'dtype', '')} {getattr(raw, 'shape', '')}",
                "return one float64 value per pattern (np.ldexp(...) on float64 arrays)",
            )
        got = raw.astype(np.float64)
        both_nan = np.isnan(got) & np.isnan(expected)
        wrong = ~(both_nan | (got == expected) | (np.isclose(got, expected, rtol=1e-12, atol=0) & np.isfinite(expected)))
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            code = int(bits.ravel()[i])
            s, exp_field, man = code >> (e + m), (code >> m) & (2**e - 1), code & (2**m - 1)
            hint = "normal: (-1)**s * (1 + M / 2**m) * 2**(E - bias), bias = 2**(e-1) - 1"
            if exp_field == 0 and man != 0:
                hint = "E = 0 is subnormal: (-1)**s * (M / 2**m) * 2**(1 - bias), no implicit leading 1, exponent 1 - bias (not -bias)"
            elif exp_field == 2**e - 1:
                hint = (
                    "finite_only (E4M3fn): the all-ones exponent holds normal numbers; only E and M all ones is NaN, there is no inf"
                    if finite_only
                    else "IEEE: the all-ones exponent is inf when M = 0 (with the sign), NaN otherwise"
                )
            elif s and np.isfinite(expected.ravel()[i]) and got.ravel()[i] == -expected.ravel()[i]:
                hint = "the top bit is the sign: value * -1 when it is set"
            elif raw.dtype.itemsize < 8 and np.isclose(got.ravel()[i], expected.ravel()[i], rtol=1e-6):
                hint = "compute in float64: float32 cannot hold every value exactly (fp32 subnormals, ldexp on float32)"
            fail(
                name,
                f"{case}, pattern {code:#0{2 + (1 + e + m + 3) // 4}x} (sign {s}, exponent field {exp_field}, mantissa {man})",
                repr(float(expected.ravel()[i])),
                repr(float(got.ravel()[i])),
                hint,
            )
    passed(
        name,
        f"{len(_decode_cases())} formats (fp16, bf16, E4M3fn, E5M2, fp32, E3M3): every pattern decoded exactly, inf/NaN rules included",
    )


def _kahan_cases() -> list[tuple[str, np.ndarray, type]]:
    import ml_dtypes

    rng = np.random.default_rng(102)
    losses = np.exp(rng.normal(-7, 2.5, 3000)).astype(np.float32)  # many tiny values and a few large: like a trained model's losses
    big_first = np.concatenate([[2048.0], rng.uniform(0.1, 0.9, 1500)]).astype(np.float32)
    mixed = (rng.standard_normal(2000) * np.exp2(rng.integers(-12, 4, 2000))).astype(np.float32)
    return [
        ("3,000 loss-like values (lognormal), fp16", losses, np.float16),
        ("2048 then 1,500 values in (0.1, 0.9), fp16", big_first, np.float16),
        ("2,000 values of both signs and mixed sizes, fp16", mixed, np.float16),
        ("3,000 loss-like values, bf16", losses, ml_dtypes.bfloat16),
        ("2048 then 1,500 values in (0.1, 0.9), float32", big_first, np.float32),
        ("one value, fp16", np.array([0.3], dtype=np.float32), np.float16),
    ]


def check_kahan_sum(fn: Callable[..., float]) -> None:
    """``fn(values, dtype)`` -> Kahan's compensated sum of ``values`` in ``dtype`` (values first rounded to ``dtype``, every
    operation rounded to ``dtype``), as a Python float. Kahan in a given dtype is deterministic: it must match within 1e-9."""
    from .mixed_precision import kahan_sum, sequential_sum

    name = "check_kahan_sum"
    for case, values, dtype in _kahan_cases():
        expected = kahan_sum(values, dtype)
        argument = values.copy()
        with np.errstate(all="ignore"):
            got = _float_result(name, case, _call(name, case, fn, argument, dtype))
        _unchanged(name, case, values, argument, "`values`")
        if not np.isclose(got, expected, rtol=1e-9, atol=0):
            exact = float(np.sum(values.astype(np.float64)))
            hint = "y = v - c; t = s + y; c = (t - s) - y; s = t, each result rounded to dtype (e.g. np.float16(...))"
            for other, why in (
                (sequential_sum(values, dtype), "that is the plain running sum: carry the compensation c from step to step"),
                (exact, "that is the exact (float64) sum: do every operation in `dtype`, the point is what fp16 can do"),
                (float(np.sum(values.astype(dtype))), "that is np.sum (pairwise): write the loop, one value at a time"),
                (
                    float(np.sum(values.astype(dtype).astype(np.float64))),
                    "every intermediate must be rounded to dtype, not kept in float64",
                ),
            ):
                if np.isclose(got, other, rtol=1e-9, atol=0):
                    hint = why
                    break
            fail(name, case, f"{expected!r} (exact float64 sum {exact:.6g})", repr(got), hint)
    passed(name, f"{len(_kahan_cases())} sums in fp16, bf16 and float32 equal the reference Kahan sum; values unchanged")


def _scaler_scripts() -> list[tuple[str, dict, int, set[int]]]:
    from .mixed_precision import gradscaler_defaults

    rng = np.random.default_rng(103)
    scripts = [("GradScaler's defaults (read from torch), 4,500 steps", gradscaler_defaults(), 4500, {0, 1, 2, 2100, 4400})]
    for k in range(4):
        options = {
            "init_scale": float(2.0 ** rng.integers(0, 20)),
            "growth_factor": float(rng.choice([2.0, 1.5, 4.0])),
            "backoff_factor": float(rng.choice([0.5, 0.25, 0.75])),
            "growth_interval": int(rng.integers(1, 6)),
        }
        n = 60
        infinite = set(np.flatnonzero(rng.random(n) < 0.2).tolist()) | {int(rng.integers(0, 5))}
        scripts.append((f"random settings {k + 1}: {options}, {n} steps", options, n, infinite))
    scripts.append(
        (
            "infinite twice in a row right after growth, growth_interval 2",
            {"init_scale": 8.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2},
            12,
            {2, 3, 8},
        )
    )
    return scripts


def _gradscaler_replay(options: dict, n: int, infinite: set[int]) -> tuple[list[float], list[bool]]:
    weight = nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([weight], lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", **options)
    scales, taken = [], []
    for step in range(n):
        optimizer.zero_grad()
        scaler.scale(weight.sum()).backward()
        if step in infinite:
            weight.grad.fill_(float("inf"))
        before = weight.detach().clone()
        scaler.step(optimizer)
        scaler.update()
        taken.append(not torch.equal(before, weight.detach()))
        scales.append(float(scaler.get_scale()))
    return scales, taken


def check_dynamic_scaler(cls: Callable[..., Any]) -> None:
    """``cls(init_scale, growth_factor, backoff_factor, growth_interval)``: an object with ``.scale`` and ``.update(found_inf) -> bool``
    (whether the optimizer step is taken) that decides exactly like ``torch.amp.GradScaler("cpu")`` step by step."""
    name = "check_dynamic_scaler"
    for case, options, n, infinite in _scaler_scripts():
        scales, taken = _gradscaler_replay(options, n, infinite)
        scaler = _call(name, case, cls, **options)
        start = _float_result(name, f"{case}, .scale before any step", _call(name, case, getattr, scaler, "scale"))
        if not np.isclose(start, options["init_scale"], rtol=1e-12):
            fail(name, case, f"scale {options['init_scale']} before the first step", start, "store init_scale in self.scale")
        for step in range(n):
            where = f"{case}, step {step} ({'inf' if step in infinite else 'finite'} gradients)"
            did = _call(name, where, scaler.update, step in infinite)
            if not isinstance(did, (bool, np.bool_)):
                fail(
                    name,
                    where,
                    "True or False (is the step taken?)",
                    repr(did),
                    "update() returns whether the optimizer step should be taken",
                )
            scale = _float_result(name, where, scaler.scale)
            if bool(did) != taken[step] or not np.isclose(scale, scales[step], rtol=1e-5):  # GradScaler keeps its scale in float32
                history = ", ".join(f"{'inf' if s in infinite else 'ok'}" for s in range(max(0, step - 4), step + 1))
                hint = (
                    "inf/NaN: skip the step (return False), scale *= backoff_factor, and restart the count of good steps; "
                    "finite: count it, and when the count reaches growth_interval, scale *= growth_factor and restart the count"
                )
                if bool(did) != taken[step]:
                    hint = "skip the step (return False) exactly when found_inf is True"
                fail(
                    name,
                    f"{where}; the last steps: {history}",
                    f"step taken {taken[step]}, scale {scales[step]:g}",
                    f"step taken {bool(did)}, scale {scale:g}",
                    hint,
                )
    passed(
        name,
        f"{len(_scaler_scripts())} scripted runs (defaults and random settings): same steps and scales as torch.amp.GradScaler",
    )


def _autocast_models() -> list[tuple[str, nn.Module, torch.Tensor]]:
    from .models import MLP, LeNet5

    torch.manual_seed(104)
    normed = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 10), nn.Softmax(dim=1))
    conv_bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    return [
        ("LeNet-5", LeNet5().eval(), torch.rand(4, 1, 28, 28)),
        ("an MLP with dropout (eval mode)", MLP(hidden=(16, 8), dropout=0.5).eval(), torch.rand(3, 1, 28, 28)),
        ("Linear -> LayerNorm -> GELU -> Linear -> Softmax", normed.eval(), torch.rand(2, 1, 28, 28)),
        ("Conv -> BatchNorm -> ReLU -> pool -> Linear", conv_bn.eval(), torch.rand(2, 1, 12, 12)),
    ]


def check_autocast_dtypes(fn: Callable[..., dict]) -> None:
    """``fn(model, x)`` -> {name: output dtype} for every leaf module (no children) of ``model`` in one forward pass of ``x`` under
    ``torch.autocast("cpu", dtype=torch.bfloat16)``; keys as in ``model.named_modules()``; hooks removed, model unchanged."""
    from .mixed_precision import autocast_output_dtypes

    name = "check_autocast_dtypes"
    for case, model, x in _autocast_models():
        expected = autocast_output_dtypes(model, x)
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        argument = x.clone()
        got = _call(name, case, fn, model, argument)
        _unchanged(name, case, x, argument, "`x`")
        leftover = [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
        if leftover:
            fail(
                name,
                case,
                "no hooks left on the model",
                f"hooks still on {leftover}",
                "keep the handles of register_forward_hook and call handle.remove()",
            )
        changed = [k for k, v in model.state_dict().items() if v.dtype != before[k].dtype or not torch.equal(v, before[k])]
        if changed:
            fail(
                name,
                case,
                "the model's parameters and buffers unchanged (fp32)",
                f"changed: {changed[:3]}",
                "autocast casts copies; do not call model.bfloat16() or model.half(), and run in eval mode under torch.no_grad()",
            )
        if not isinstance(got, dict):
            fail(
                name,
                case,
                "a dict {module name: torch.dtype}",
                type(got).__name__,
                "collect the output dtypes in a dict from forward hooks",
            )
        if set(got) != set(expected):
            missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
            hint = "one entry per leaf module (no children), named as in model.named_modules(); not the model itself ('') or containers"
            if not got:
                hint = "register a forward hook on every leaf module before the forward pass"
            fail(name, case, f"keys {sorted(expected)}", f"missing {missing}, extra {extra}", hint)
        for key, dtype in expected.items():
            if got[key] != dtype:
                values = set(got.values())
                hint = "the dtype of each module's OUTPUT (the hook's third argument), inside torch.autocast('cpu', dtype=torch.bfloat16)"
                if values == {torch.float32}:
                    hint = (
                        "run the forward pass inside `with torch.autocast('cpu', dtype=torch.bfloat16):` (linear and conv then output bf16)"
                    )
                elif torch.float16 in values:
                    hint = "autocast with dtype=torch.bfloat16 (the CPU's low-precision type here), not float16"
                fail(name, f"{case}, module {key!r}", str(dtype), str(got[key]), hint)
    passed(
        name,
        f"{len(_autocast_models())} models (conv, linear, norms, softmax): every leaf's bf16-autocast output dtype; hooks removed",
    )


def _fp8_cases() -> list[tuple[str, torch.Tensor]]:
    torch.manual_seed(105)
    zero_row = torch.randn(6, 20) * 0.05
    zero_row[2] = 0.0
    outlier = torch.randn(8, 30) * 0.02
    outlier[5, 7] = 3.0
    return [
        ("a Linear weight (300, 784) like LeNet-300-100's fc1", torch.randn(300, 784) * 0.03),
        ("a Conv2d weight (50, 20, 5, 5)", torch.randn(50, 20, 5, 5) * 0.05),
        ("a weight with an all-zero output channel (row 2)", zero_row),
        ("a weight with one outlier (row 5)", outlier),
        ("rows of very different scales", torch.randn(4, 16) * torch.tensor([[1e-3], [1.0], [30.0], [1e-5]])),
    ]


def check_fp8_per_channel(fn: Callable[[torch.Tensor], tuple]) -> None:
    """``fn(w)`` -> ``(codes, scales)``: E4M3fn codes of ``w / scale`` (``torch.float8_e4m3fn`` or ml_dtypes ``float8_e4m3fn``) and
    one float scale per output channel (dim 0), ``max|w_channel| / 448``, 1 for an all-zero channel; ``w`` unchanged."""
    import ml_dtypes

    from .mixed_precision import fp8_dequantize, fp8_quantize

    name = "check_fp8_per_channel"
    for case, w in _fp8_cases():
        expected_codes, expected_scales = fp8_quantize(w, "e4m3fn", per_channel=True)
        argument = w.clone()
        got = _call(name, case, fn, argument)
        _unchanged(name, case, w, argument, "`w`")
        if not isinstance(got, tuple) or len(got) != 2:
            fail(name, case, "a pair (codes, scales)", type(got).__name__, "return codes, scales")
        codes, scales = got
        if isinstance(codes, np.ndarray) and codes.dtype == ml_dtypes.float8_e4m3fn:
            codes = torch.from_numpy(codes.view(np.uint8)).view(torch.float8_e4m3fn)
        if not isinstance(codes, torch.Tensor) or codes.dtype != torch.float8_e4m3fn or tuple(codes.shape) != tuple(w.shape):
            fail(
                name,
                case,
                f"float8_e4m3fn codes of shape {tuple(w.shape)}",
                f"{type(codes).__name__} {getattr(codes, 'dtype', '')} {tuple(getattr(codes, 'shape', ()))}",
                "codes = (w / scale).to(torch.float8_e4m3fn): one byte per weight, in E4M3fn",
            )
        scales = torch.as_tensor(np.asarray(scales) if not isinstance(scales, torch.Tensor) else scales).double().reshape(-1)
        if scales.numel() != w.shape[0]:
            fail(
                name,
                case,
                f"{w.shape[0]} scales (one per output channel, dim 0)",
                f"{scales.numel()} scales",
                "amax over every dim but 0: w.abs().flatten(1).amax(1)",
            )
        if not torch.allclose(scales, expected_scales.double(), rtol=1e-6, atol=0):
            i = int(torch.argmax((scales - expected_scales.double()).abs()))
            hint = "scale = max |w| of the channel / 448 (E4M3fn's largest value); an all-zero channel gets 1"
            ratio = float(scales[i] / expected_scales[i]) if expected_scales[i] != 0 else float("nan")
            if np.isclose(ratio, 448 / 57344, rtol=1e-4):
                hint = "448 is E4M3fn's max; 57344 is E5M2's"
            elif np.isclose(ratio, 448 / 240, rtol=1e-4):
                hint = "E4M3fn's max is 448 (240 is the max of E4M3 with IEEE-style infinities / the fnuz variant)"
            elif np.isclose(ratio, 448 / 127, rtol=1e-4):
                hint = "that is int8's scale (amax / 127); fp8 E4M3fn's largest value is 448"
            fail(name, f"{case}, channel {i}", f"{float(expected_scales[i]):.6g}", f"{float(scales[i]):.6g}", hint)
        if not torch.equal(codes.float(), expected_codes.float()):
            diff = (codes.float() != expected_codes.float()).flatten()
            i = int(torch.nonzero(diff)[0])
            hint = "codes = (w / scale) cast to torch.float8_e4m3fn, scale broadcast over the channel: scale.reshape(-1, 1, ...)"
            if torch.equal(codes.float(), torch.round(expected_codes.float())):
                hint = "do not round to integers: the fp8 cast does the rounding, to E4M3fn's own grid"
            fail(name, f"{case}, weight {i}", float(expected_codes.flatten()[i].float()), float(codes.flatten()[i].float()), hint)
        error = (fp8_dequantize(codes, scales.float()) - w).abs().max()
        if not error <= w.abs().max() * 2.0**-4 + 1e-12:
            fail(
                name,
                case,
                "codes * scale within half an E4M3 step of w",
                f"max error {float(error):.3g}",
                "dequantize as codes.float() * scale",
            )
    passed(
        name, f"{len(_fp8_cases())} weights (Linear, Conv2d, a zero channel, an outlier, mixed scales): E4M3fn codes and per-channel scales"
    )


# ----------------------------------------------------------------------------- chapter 11: deployment


def _agreement_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(110)
    ref = rng.standard_normal((40, 10)).astype(np.float32) * 3
    close = ref + rng.standard_normal(ref.shape).astype(np.float32) * 0.5  # some argmaxes flip
    tie = np.zeros((3, 4), dtype=np.float32)
    tie[:, 1] = tie[:, 3] = 2.0  # classes 1 and 3 tie in every row: the first index, 1, is the prediction
    tie_ref = np.zeros((3, 4), dtype=np.float32)
    tie_ref[:, 3] = 1.0  # the reference predicts class 3
    square = rng.standard_normal((10, 10)) * 2  # square: a wrong axis keeps the shape
    return [
        ("40 x 10 float32 logits, noise 0.5 (some predictions differ)", close, ref),
        ("10 x 10 float64 logits (square: the argmax axis matters)", square + rng.standard_normal((10, 10)), square),
        ("identical logits", ref.copy(), ref),
        ("ties: classes 1 and 3 equal in every row (argmax takes the first)", tie, tie_ref),
        (
            "one row, logits that differ by -7 (the largest difference is negative)",
            np.array([[0.0, 1.0, -7.0]]),
            np.array([[0.0, 2.0, 0.0]]),
        ),
    ]


def check_agreement(fn: Callable[[np.ndarray, np.ndarray], tuple[float, float]]) -> None:
    """``fn(logits, reference)`` -> ``(top-1 agreement, max |logits - reference|)`` for (N, C) arrays; ties go to the first index."""
    name = "check_agreement"
    for case, logits, reference in _agreement_cases():
        before_l, before_r = logits.copy(), reference.copy()
        got = _call(name, case, fn, logits, reference)
        _unchanged(name, case, before_l, logits, "logits")
        _unchanged(name, case, before_r, reference, "reference")
        if not isinstance(got, tuple) or len(got) != 2:
            fail(name, case, "a tuple (agreement, max_diff)", f"{type(got).__name__}", "return top1, max_diff")
        top1 = float(np.mean(before_l.argmax(1) == before_r.argmax(1)))
        diff = float(np.max(np.abs(before_l.astype(np.float64) - before_r.astype(np.float64))))
        g1, g2 = (float(v.item() if hasattr(v, "item") else v) for v in got)
        if not np.isclose(g1, top1, atol=1e-9):
            hint = "the fraction (0..1) of rows whose argmax over the classes (axis 1) is the same"
            if np.isclose(g1, top1 * len(logits)):
                hint = "a fraction, not a count: divide by the number of rows (np.mean of the comparison)"
            elif np.isclose(g1, 100 * top1):
                hint = "a fraction in [0, 1], not a percentage"
            fail(name, case, f"top-1 agreement {top1:.4f}", f"{g1:.4f}", hint)
        if not np.isclose(g2, diff, rtol=1e-6, atol=1e-7):
            fail(
                name,
                case,
                f"max |difference| {diff:.6g}",
                f"{g2:.6g}",
                "the largest ABSOLUTE difference over all entries: np.max(np.abs(a - b))",
            )
    passed(
        name,
        "5 cases (float32/float64, square, identical, ties, a negative difference): agreement and max |diff| correct, inputs untouched",
    )


def _quantize_linear_cases() -> list[tuple[str, np.ndarray, float, int]]:
    rng = np.random.default_rng(111)
    halves = (np.arange(-6, 6) + 0.5).astype(np.float32) * np.float32(0.0625)  # x / s lands exactly on k + 0.5
    return [
        ("images in [0, 1], scale 1/255, zero point 0", rng.random((2, 1, 4, 4), dtype=np.float32), 1 / 255, 0),
        ("values in [-3, 3], scale 0.02, zero point 128 (both ends saturate)", rng.uniform(-3, 3, 200).astype(np.float32), 0.02, 128),
        ("exact halves, scale 0.0625, zero point 10 (ties go to the even integer)", halves, 0.0625, 10),
        ("exact halves, scale 0.0625, zero point 7 (odd: add it after rounding)", halves, 0.0625, 7),
        ("all zeros, zero point 255", np.zeros(5, dtype=np.float32), 0.1, 255),
    ]


def check_quantize_linear(fn: Callable[[np.ndarray, float, int], np.ndarray]) -> None:
    """``fn(x, scale, zero_point)`` -> uint8 codes of ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point) in [0, 255]."""
    name = "check_quantize_linear"
    for case, x, scale, zp in _quantize_linear_cases():
        before = x.copy()
        got = _call(name, case, fn, x, scale, zp)
        _unchanged(name, case, before, x, "x")
        if isinstance(got, torch.Tensor):
            got = got.detach().cpu().numpy()
        if not isinstance(got, np.ndarray) or got.dtype != np.uint8:
            fail(
                name,
                case,
                "a numpy array of dtype uint8",
                f"{type(got).__name__} {getattr(got, 'dtype', '')}",
                "finish with .astype(np.uint8) AFTER clipping to [0, 255]",
            )
        if got.shape != x.shape:
            fail(name, case, f"shape {x.shape}", f"shape {got.shape}", "quantize elementwise: the shape does not change")
        expected = np.clip(np.rint(before / np.float32(scale)) + zp, 0, 255).astype(np.uint8)
        if not np.array_equal(got, expected):
            at = int(np.argmax(got != expected))
            value = float(before.flat[at]) / scale
            hint = "round(x / scale) half to even (np.rint), THEN add the zero point, then clip to [0, 255]"
            if abs(abs(value - np.floor(value)) - 0.5) < 1e-6:
                hint = (
                    f"x / scale = {value:g} is a tie: round half to even (np.rint or np.round), not half up or away from zero, "
                    "and before adding the zero point"
                )
            elif not (0 <= np.rint(value) + zp <= 255):
                hint = "saturate: clip to [0, 255] before converting to uint8 (astype wraps around)"
            fail(name, case, f"code {int(expected.flat[at])} at index {at}", f"{int(got.flat[at])}", hint)
    passed(name, "5 cases (images, saturation at both ends, ties with even and odd zero points, zeros): codes equal ONNX QuantizeLinear")


def _speedup_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(112)
    load = rng.choice([1.0, 1.0, 1.0, 3.0, 6.0], size=15)  # bursts of load from another process, shared by both in a round
    slow = 2.0 * load * rng.uniform(0.95, 1.05, 15)
    fast = 1.0 * load * rng.uniform(0.95, 1.05, 15)
    b = np.array([1.0, 1.0, 1.0, 10.0, 10.0])
    return [
        ("15 rounds with load bursts shared by both candidates", slow, fast),
        ("5 rounds, the candidate slower in two of them", np.array([2.0, 2.1, 1.9, 8.0, 9.0]), b),
        ("3 rounds", np.array([3.0, 6.0, 4.5]), np.array([1.0, 2.5, 1.0])),
        ("identical timings", fast.copy(), fast.copy()),
    ]


def check_round_speedup(fn: Callable[[np.ndarray, np.ndarray], tuple[float, tuple[float, float]]]) -> None:
    """``fn(baseline_ms, candidate_ms)`` (one median per round, same rounds) -> (median of the per-round ratios baseline / candidate,
    (25th, 75th) percentile of those ratios), percentiles as np.percentile's default (linear interpolation)."""
    name = "check_round_speedup"
    for case, a, b in _speedup_cases():
        before_a, before_b = a.copy(), b.copy()
        got = _call(name, case, fn, a, b)
        _unchanged(name, case, before_a, a, "baseline_ms")
        _unchanged(name, case, before_b, b, "candidate_ms")
        ratios = before_a / before_b
        med, (p25, p75) = float(np.median(ratios)), tuple(float(v) for v in np.percentile(ratios, [25, 75]))
        try:
            g_med, (g25, g75) = got
            g_med, g25, g75 = float(g_med), float(g25), float(g75)
        except (TypeError, ValueError):
            fail(name, case, "(median, (p25, p75))", repr(got), "return speedup, (low, high)")
        if not np.isclose(g_med, med, rtol=1e-9):
            hint = "pair the rounds: ratio per round (baseline[i] / candidate[i]), then the median of those ratios"
            if np.isclose(g_med, np.median(before_a) / np.median(before_b), rtol=1e-9):
                hint = "that is the ratio of the medians; take the median of the per-round ratios, so each round's load cancels"
            elif np.isclose(g_med, 1 / med, rtol=1e-9):
                hint = "speedup = baseline / candidate (> 1 when the candidate is faster), not candidate / baseline"
            elif np.isclose(g_med, np.mean(ratios), rtol=1e-9):
                hint = "the median of the ratios, not their mean (one bad round should not move it)"
            fail(name, case, f"median speedup {med:.6f}", f"{g_med:.6f}", hint)
        if not (np.isclose(g25, p25, rtol=1e-9) and np.isclose(g75, p75, rtol=1e-9)):
            fail(
                name,
                case,
                f"(p25, p75) = ({p25:.6f}, {p75:.6f})",
                f"({g25:.6f}, {g75:.6f})",
                "np.percentile(ratios, [25, 75]) of the per-round ratios",
            )
    passed(name, "4 cases (load bursts, a candidate slower in some rounds, 3 rounds, identical): median and IQR of the per-round ratios")


def _budget_cases() -> list[tuple[str, list[dict], tuple[float, float, float]]]:
    rows = [
        {"name": "a", "bytes": 90_000, "ram_bytes": 120_000, "latency_ms": 0.05, "latency_32_ms": 0.9},
        {"name": "b", "bytes": 150_000, "ram_bytes": 256_000, "latency_ms": 0.20, "latency_32_ms": 2.0},  # exactly at every limit: fits
        {"name": "c", "bytes": 150_001, "ram_bytes": 100_000, "latency_ms": 0.01, "latency_32_ms": 0.1},  # one byte too many
        {"name": "d", "bytes": 20_000, "ram_bytes": 300_000, "latency_ms": 0.01, "latency_32_ms": 0.1},  # RAM too large
        {"name": "e", "bytes": 20_000, "ram_bytes": 30_000, "latency_ms": 0.30, "latency_32_ms": 0.1},  # too slow at batch 1
        {"name": "f", "bytes": 500_000, "ram_bytes": 900_000, "latency_ms": 5.0, "latency_32_ms": 40.0},  # breaks all three
    ]
    return [
        ("six candidates, one exactly at every limit", rows, (150_000, 256_000, 0.2)),
        ("the same rows, a loose budget (everything fits)", rows, (1e9, 1e9, 1e9)),
        ("the same rows in reverse order", rows[::-1], (150_000, 256_000, 0.2)),
        ("no candidates", [], (1000, 1000, 1.0)),
    ]


def check_meets_budget(fn: Callable[[list[dict], float, float, float], list[bool]]) -> None:
    """``fn(rows, flash_bytes, ram_bytes, latency_ms)`` -> one bool per row, in order: bytes, ram_bytes and latency_ms (batch 1)
    all within (<=) their limit."""
    import copy as _copy

    name = "check_meets_budget"
    for case, rows, (flash, ram, latency) in _budget_cases():
        given = [dict(r) for r in rows]
        snapshot = _copy.deepcopy(given)
        got = _call(name, case, fn, given, flash, ram, latency)
        if given != snapshot:
            fail(
                name,
                case,
                "rows left as they were",
                "rows changed (sorted, filtered or edited in place)",
                "build a new list; do not sort or pop the argument",
            )
        expected = [r["bytes"] <= flash and r["ram_bytes"] <= ram and r["latency_ms"] <= latency for r in snapshot]
        try:
            got_list = [bool(v) for v in got]
        except TypeError:
            fail(name, case, f"a list of {len(expected)} bools", repr(got), "one True/False per row, in the rows' order")
        if got_list != expected:
            if len(got_list) != len(expected):
                fail(
                    name,
                    case,
                    f"{len(expected)} bools (one per row)",
                    f"{len(got_list)} values",
                    "one bool per row, not the fitting rows or their indices",
                )
            at = next(i for i, (g, e) in enumerate(zip(got_list, expected)) if g != e)
            r = snapshot[at]
            hint = "a row fits when bytes <= flash AND ram_bytes <= ram AND latency_ms <= latency (batch 1)"
            if r["bytes"] == flash or r["ram_bytes"] == ram or r["latency_ms"] == latency:
                hint = "a value exactly at its limit fits: use <=, not <"
            fail(name, case, f"row {r['name']!r} -> {expected[at]}", f"{got_list[at]}", hint)
    passed(name, "4 cases (values exactly at the limits, each limit broken alone, a loose budget, reversed order, empty): one bool per row")


# ----------------------------------------------------------------------------- chapter 12: transformer compression


def _as_backends(*arrays: np.ndarray):
    """Yield (backend label, inputs, untouched copies) for the same float64 ``arrays`` given to the learner
    as torch float32 tensors and as numpy float64 arrays (the inputs are the learner's own, checked afterwards)."""
    for backend in ("torch float32", "numpy float64"):
        args = [torch.tensor(a, dtype=torch.float32) if backend.startswith("torch") else a.copy() for a in arrays]
        yield backend, args, [a.clone() if isinstance(a, torch.Tensor) else a.copy() for a in args]


def _llm_array(check: str, case: str, value: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A learner's tensor or array as float64 numpy, with its shape checked."""
    __tracebackhide__ = True
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        fail(check, case, f"{what} as a tensor or array", type(value).__name__, "return a torch tensor (or a numpy array)")
    if value.shape != shape:
        fail(check, case, f"{what} of shape {shape}", f"shape {value.shape}", "keep the layout (out, in) of nn.Linear's weight")
    return value


def _asym_group_reference(w: np.ndarray, bits: int, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric min-max codes / scales / zero points per group of ``group`` consecutive inputs (float64, half to even)."""
    out, cols = w.shape
    g = w.reshape(out, cols // group, group)
    lo, hi = np.minimum(g.min(axis=2), 0.0), np.maximum(g.max(axis=2), 0.0)
    scales = (hi - lo) / (2**bits - 1)
    scales = np.where(scales > 0, scales, 1.0)
    zeros = np.round(-lo / scales)
    codes = np.clip(np.round(g / scales[..., None]) + zeros[..., None], 0, 2**bits - 1)
    return codes.reshape(out, cols), scales, zeros


def check_group_quantize(fn: Callable[..., tuple]) -> None:
    """``fn(w, bits, group_size)`` -> (codes (out, in) in 0..2**bits-1, scales (out, in/g), zeros (out, in/g)): asymmetric
    min-max per group of consecutive inputs, the range widened to include 0, round half to even, an all-zero group scale 1."""
    name = "check_group_quantize"
    rng = np.random.default_rng(1201)
    cases: list[tuple[str, np.ndarray, int, int]] = []
    for shape, bits, group in (((4, 32), 4, 8), ((3, 48), 3, 16), ((6, 16), 2, 4), ((2, 64), 4, 64), ((5, 24), 8, 12)):
        w = rng.standard_normal(shape) * rng.uniform(0.05, 2.0, (shape[0], 1))
        cases.append((f"w {shape}, {bits} bits, groups of {group}", w, bits, group))
    w = rng.standard_normal((3, 16))
    w[0, :8] = 0.0  # an all-zero group
    w[1, :8] = np.abs(w[1, :8]) + 0.5  # all positive: the range must still include 0
    w[2, 8:] = -np.abs(w[2, 8:]) - 0.5  # all negative
    cases.append(("w (3, 16) with an all-zero, an all-positive and an all-negative group of 8, 4 bits", w, 4, 8))
    ties = np.array([[0.0, 15.0, 2.5, 7.5, 10.5, 1.0, 3.0, 4.0], [-6.5, 8.5, 0.5, -2.5, 1.5, 0.0, 3.0, 2.0]])
    cases.append(("exact ties (scale 1: codes x.5 and a zero point 6.5), 4 bits, one group of 8", ties, 4, 8))
    for case, w, bits, group in cases:
        codes, scales, zeros = _asym_group_reference(w, bits, group)
        for backend, (w_in,), (before,) in _as_backends(w):
            label = f"{case} ({backend})"
            got = _call(name, label, fn, w_in, bits, group)
            _unchanged(name, label, before, w_in, "`w`")
            if not isinstance(got, (tuple, list)) or len(got) != 3:
                fail(name, label, "a triple (codes, scales, zeros)", type(got).__name__, "return codes, scales, zeros")
            n_groups = w.shape[1] // group
            g_codes = _llm_array(name, label, got[0], w.shape, "codes")
            g_scales = _llm_array(name, label, got[1], (w.shape[0], n_groups), "scales (one per row and group)")
            g_zeros = _llm_array(name, label, got[2], (w.shape[0], n_groups), "zeros (one per row and group)")
            if not np.all(np.isfinite(g_scales)) or np.any(g_scales <= 0):
                fail(
                    name,
                    label,
                    "finite positive scales",
                    f"min {np.nanmin(g_scales):.3g}",
                    "an all-zero group has max - min = 0: use scale 1 there",
                )
            if not np.allclose(g_scales, scales, rtol=1e-5, atol=1e-12):
                r, c = np.argwhere(~np.isclose(g_scales, scales, rtol=1e-5, atol=1e-12))[0]
                fail(
                    name,
                    f"{label}, row {r}, group {c}",
                    f"scale {scales[r, c]:.6g}",
                    f"{g_scales[r, c]:.6g}",
                    "scale = (max - min) / (2**bits - 1) over the group's own inputs, the range widened to include 0 (min <= 0 <= max)",
                )
            if not np.array_equal(g_zeros, zeros):
                r, c = np.argwhere(g_zeros != zeros)[0]
                fail(
                    name,
                    f"{label}, row {r}, group {c} (min {min(w[r, c * group : (c + 1) * group].min(), 0):.4g})",
                    f"zero point {zeros[r, c]:.0f}",
                    f"{g_zeros[r, c]:.4g}",
                    "zero = round(-min / scale), rounded half to even (np.round / torch.round), a whole number",
                )
            if g_codes.min() < 0 or g_codes.max() > 2**bits - 1:
                fail(
                    name,
                    label,
                    f"codes in 0..{2**bits - 1}",
                    f"{g_codes.min():.0f}..{g_codes.max():.0f}",
                    "clamp round(w / scale) + zero to 0..2**bits - 1",
                )
            if not np.array_equal(g_codes, codes):
                ratio = w / np.repeat(scales, group, axis=1)
                near = np.abs(np.abs(ratio - np.floor(ratio)) - 0.5) < 1e-4
                exact = np.abs(ratio - np.floor(ratio)) == 0.5
                wrong = (g_codes != codes) & ~(near & ~exact) if backend.startswith("torch") else g_codes != codes
                if wrong.any():
                    r, c = np.argwhere(wrong)[0]
                    fail(
                        name,
                        f"{label}, weight ({r}, {c}) = {w[r, c]:.6g}",
                        f"code {codes[r, c]:.0f}",
                        f"{g_codes[r, c]:.4g}",
                        "code = clamp(round(w / scale) + zero, 0, 2**bits - 1), half to even (2.5 -> 2, 7.5 -> 8), groups along the inputs",
                    )
    passed(name, f"{len(cases)} weights x 2 backends: asymmetric groups along the inputs, 2-8 bits, zero / one-signed groups, exact ties")


def _gptq_case(rng: np.random.Generator, out: int, cols: int, tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = rng.standard_normal((tokens, cols)) * rng.uniform(0.3, 3.0, cols)
    x[:, 1:] += 0.6 * x[:, :-1]  # correlated inputs, as in a real layer
    H = x.T @ x / tokens
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper: U^T U = H^-1
    return rng.standard_normal((out, cols)), x, U


def check_gptq_update(fn: Callable[..., Any]) -> None:
    """``fn(W, U, j, q)`` -> W after column j is set to q and columns j+1.. absorb its error through row j of the upper
    Cholesky factor U of H^-1; verified against a direct least-squares solve over the calibration inputs."""
    name = "check_gptq_update"
    rng = np.random.default_rng(1202)
    cases = [(6, 8, 200, 0), (5, 12, 300, 4), (4, 10, 150, 9), (3, 16, 400, 1), (8, 6, 100, 2)]
    for out, cols, tokens, j in cases:
        W, x, U = _gptq_case(rng, out, cols, tokens)
        q = np.round(W[:, j] * 2) / 2  # column j rounded to a grid of 0.5
        # least squares: the change of columns j+1.. that best cancels (q - w_j) x_j over the tokens
        rest = x[:, j + 1 :]
        if rest.shape[1]:
            target = -np.outer(x[:, j], q - W[:, j])  # (tokens, out)
            delta, *_ = np.linalg.lstsq(rest, target, rcond=None)
            expected_rest = W[:, j + 1 :] + delta.T
        else:
            expected_rest = W[:, j + 1 :]
        case = f"W {W.shape}, column j = {j} of {cols}, {tokens} calibration tokens"
        for backend in ("torch float64", "numpy float64"):
            label = f"{case} ({backend})"
            if backend.startswith("torch"):
                args = [torch.tensor(W), torch.tensor(U), j, torch.tensor(q)]
                before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
            else:
                args = [W.copy(), U.copy(), j, q.copy()]
                before = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
            got = _call(name, label, fn, *args)
            for what, b, a in (("`W`", before[0], args[0]), ("`U`", before[1], args[1]), ("`q`", before[3], args[3])):
                _unchanged(name, label, b, a, what)
            got = _llm_array(name, label, got, W.shape, "the updated W")
            if not np.allclose(got[:, :j], W[:, :j], atol=1e-10):
                fail(
                    name, label, "columns before j unchanged", "they changed", "only the columns after j move (they are already quantized)"
                )
            if not np.allclose(got[:, j], q, atol=1e-10):
                fail(name, label, "column j equal to q", f"max |column j - q| = {np.abs(got[:, j] - q).max():.3g}", "set W[:, j] = q")
            if not np.allclose(got[:, j + 1 :], expected_rest, atol=1e-7, rtol=1e-6):
                error = np.abs(got[:, j + 1 :] - expected_rest).max()
                fail(
                    name,
                    label,
                    "columns j+1.. equal to the least-squares optimum",
                    f"max difference {error:.3g}",
                    "err = (W[:, j] - q) / U[j, j]; W[:, j+1:] -= outer(err, U[j, j+1:]) (row j of the UPPER factor, divided once)",
                )
    passed(name, f"{len(cases)} layers, first / middle / last columns, torch and numpy: equal to the least-squares solve")


def _awq_reference(w: np.ndarray, x: np.ndarray, bits: int, group: int, alphas: list[float]) -> tuple[float, np.ndarray, list[float]]:
    from .llm_compression import quantize_rtn

    mean = np.abs(x).mean(axis=0)
    errors, scales = [], []
    for a in alphas:
        s = np.maximum(mean, 1e-8) ** a
        s = s / np.sqrt(s.max() * s.min())
        w_hat = quantize_rtn(torch.tensor(w * s), bits, group).numpy() / s
        errors.append(float(((x @ (w - w_hat).T) ** 2).mean()))
        scales.append(s)
    best = int(np.argmin(errors))
    return alphas[best], scales[best], errors


def check_awq_search(fn: Callable[..., tuple]) -> None:
    """``fn(w, x, bits, group_size, alphas)`` -> (best alpha, s): s = mean_tokens |x|^alpha normalized to max*min = 1, the
    error of quantize_rtn(w * s) / s on the outputs x w^T; the smallest error wins (the first alpha on ties)."""
    name = "check_awq_search"
    rng = np.random.default_rng(1203)
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    chosen = set()
    for out, cols, tokens, bits, group, salient in (
        (8, 32, 256, 3, 16, 2),
        (6, 64, 200, 3, 32, 4),
        (10, 32, 300, 4, 32, 1),
        (4, 16, 128, 2, 8, 3),
        (6, 32, 256, 3, 32, 0),
    ):
        w = rng.standard_normal((out, cols)) * 0.1
        x = rng.standard_normal((tokens, cols))
        idx = rng.choice(cols, salient, replace=False)
        x[:, idx] *= 25.0  # salient input channels, as AWQ describes
        best, s, errors = _awq_reference(w, x, bits, group, alphas)
        chosen.add(best)
        case = f"w ({out}, {cols}), {salient} salient channels, {bits} bits, groups of {group}"
        for backend, args, before in _as_backends(w, x):
            label = f"{case} ({backend})"
            got = _call(name, label, fn, *args, bits, group, list(alphas))
            _unchanged(name, label, before[0], args[0], "`w`")
            _unchanged(name, label, before[1], args[1], "`x`")
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                fail(name, label, "a pair (best_alpha, s)", type(got).__name__, "return best_alpha, s")
            g_alpha = float(got[0])
            if g_alpha != best:
                close = (
                    abs(errors[alphas.index(best)] - errors[alphas.index(g_alpha)]) <= 1e-4 * errors[alphas.index(best)]
                    if g_alpha in alphas
                    else False
                )
                if not (close and backend.startswith("torch")):
                    fail(
                        name,
                        label,
                        f"alpha {best} (errors per alpha {np.round(errors, 6).tolist()})",
                        g_alpha,
                        "score each alpha by the OUTPUT error mean((x (w - w_hat)^T)^2), w_hat = quantize_rtn(w * s) / s; keep the least",
                    )
                continue
            g_s = _llm_array(name, label, got[1], (cols,), "s (one scale per input channel)")
            if not np.allclose(g_s, s, rtol=2e-4):
                fail(
                    name,
                    label,
                    f"s[:4] = {np.round(s[:4], 5).tolist()}",
                    f"{np.round(g_s[:4], 5).tolist()}",
                    "s = (mean over tokens of |x|) ** alpha, then divided by sqrt(s.max() * s.min())",
                )
    if len(chosen) < 2:  # pragma: no cover - a guard on the check's own cases
        raise RuntimeError("check_awq_search's cases must not all choose the same alpha")
    passed(name, f"5 layers with salient channels, torch and numpy: the same alpha (chosen: {sorted(chosen)}) and scales as the reference")


def _wanda_reference(w: np.ndarray, x: np.ndarray, sparsity: float) -> np.ndarray:
    scores = np.abs(w) * np.sqrt((x.astype(np.float64) ** 2).sum(axis=0))
    k = int(sparsity * w.shape[1])
    keep = np.ones(w.shape, dtype=bool)
    order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    np.put_along_axis(keep, order, False, axis=1)
    return keep


def check_wanda_mask(fn: Callable[..., Any]) -> None:
    """``fn(w, x, sparsity)`` -> boolean keep-mask (out, in): in every output row, remove the int(sparsity * in) lowest
    scores |W_ij| * ||X_j||_2 (norm over the calibration tokens); among equal scores the lower input index goes first."""
    name = "check_wanda_mask"
    rng = np.random.default_rng(1204)
    cases = []
    for out, cols, tokens, sparsity in ((6, 16, 50, 0.5), (4, 20, 30, 0.3), (5, 12, 40, 0.75), (3, 10, 20, 0.0)):
        w = rng.standard_normal((out, cols))
        x = rng.standard_normal((tokens, cols)) * rng.uniform(0.1, 5.0, cols)
        cases.append((f"w ({out}, {cols}), {tokens} tokens, sparsity {sparsity}", w, x, sparsity))
    w = np.array([[1.0, -1.0, 1.0, 2.0, -2.0, 0.5], [3.0, 3.0, 3.0, 3.0, 3.0, 3.0]])
    x = np.ones((4, 6))
    x[:, 5] = 4.0  # channel 5 has norm 8, the others 2
    cases.append(("ties: equal scores in a row (ties go lowest index first), sparsity 0.5", w, x, 0.5))
    w = rng.standard_normal((4, 8))
    x = rng.standard_normal((10, 8))
    x[:, 2] *= 40.0  # one outlier channel: a per-layer comparison or |W| alone gets this row-wise mask wrong
    cases.append(("an outlier input channel, sparsity 0.5", w, x, 0.5))
    for case, w, x, sparsity in cases:
        keep = _wanda_reference(w, x, sparsity)
        for backend, args, before in _as_backends(w, x):
            label = f"{case} ({backend})"
            got = _call(name, label, fn, args[0], args[1], sparsity)
            _unchanged(name, label, before[0], args[0], "`w`")
            _unchanged(name, label, before[1], args[1], "`x`")
            got = _llm_array(name, label, got, w.shape, "the keep-mask")
            if got.dtype != np.bool_:
                fail(name, label, "a boolean mask (True = keep)", f"dtype {got.dtype}", "return a comparison or .bool()")
            removed = (~got).sum(axis=1)
            if not np.all(removed == int(sparsity * w.shape[1])):
                fail(
                    name,
                    label,
                    f"{int(sparsity * w.shape[1])} weights removed in EVERY row",
                    f"per row: {removed.tolist()}",
                    "Wanda compares scores within each output row: k = int(sparsity * in) per row, not over the whole matrix",
                )
            if not np.array_equal(got, keep):
                r = int(np.argwhere((got != keep).any(axis=1))[0][0])
                fail(
                    name,
                    f"{label}, row {r}",
                    f"keep {keep[r].astype(int).tolist()}",
                    f"{got[r].astype(int).tolist()}",
                    "score = |W_ij| * sqrt(sum over tokens of x_tj^2) (the L2 norm of input channel j); remove the lowest, stable on ties",
                )
    passed(name, f"{len(cases)} layers x 2 backends: per-row masks, L2 norms over the tokens, an outlier channel, ties, sparsity 0")
