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
    """``fn(x, W, b)`` must return ``relu(x @ W.T + b)`` like ``torch.relu(nn.Linear)``, in numpy."""
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
        got = _call(name, case, fn, x.copy(), weight.copy(), bias.copy())
        got = np.asarray(got)
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
            hint = "median (not mean, not min) of the timed calls only, in milliseconds (seconds x 1000)"
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


def _unchanged(check: str, case: str, before: np.ndarray, after: np.ndarray, what: str = "w") -> None:
    __tracebackhide__ = True
    if before.shape != after.shape or not np.array_equal(before, after):
        fail(
            check,
            case,
            f"{what} left unchanged",
            f"{what} was modified in place",
            "do not write into the input (np.abs(w, out=w), w /= ..., w[...] = ...): in the lab w may be "
            "model.weight.detach().numpy(), which shares memory with the model; compute on a new array",
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
        _unchanged(name, case, w, given)
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
    _unchanged(name, "a float32 view of a torch tensor (weight.detach().numpy())", original.numpy(), weight.numpy(), "the tensor")
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
    ]
    hint = "rank all |w| of all layers together (one threshold); ties: earlier layer (dict order), then lower index, pruned first"
    for case, weights, sparsity in cases:
        expected = global_magnitude_masks(weights, sparsity)
        given = {k: v.copy() for k, v in weights.items()}
        got = _call(name, case, fn, given, sparsity)
        if not isinstance(got, dict) or set(got) != set(weights):
            keys = sorted(got) if isinstance(got, dict) else type(got).__name__
            fail(name, case, f"a dict with keys {sorted(weights)}", keys, "return {layer name: mask}, one entry per layer")
        for layer in weights:
            _unchanged(name, f"{case}, layer {layer!r}", weights[layer], given[layer], f"weights[{layer!r}]")
            mask = _as_mask(name, f"{case}, layer {layer!r}", got[layer], weights[layer].shape)
            if not np.array_equal(mask, expected[layer]):
                small = weights[layer].size <= 64
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
        _unchanged(name, case, a, given, "dense")
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
    """``fn(w, n, m)`` -> boolean mask keeping the n largest |w| of every m consecutive entries along the last axis."""
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
    ]
    for case, w, n, m in cases:
        expected = nm_mask(w, n, m)
        got = np.asarray(_call(name, case, fn, w.copy(), n, m))
        if got.shape != w.shape or got.dtype != bool:
            fail(name, case, f"a bool mask of shape {w.shape}", f"{got.dtype} of shape {got.shape}", "return a boolean mask shaped like w")
        if not np.array_equal(got, expected):
            hint = (
                "groups of m consecutive entries along the last axis (w.reshape(-1, m)); "
                "keep the n largest |w|; ties: lower index pruned first"
            )
            fail(name, case, expected.astype(int).tolist(), got.astype(int).tolist(), hint)
    try:
        fn(np.ones((2, 6)), 2, 4)
    except ValueError:
        pass
    except NotImplementedError:
        raise
    except Exception as error:  # noqa: BLE001
        fail(
            name,
            "w of shape (2, 6) with m = 4",
            "ValueError",
            f"{type(error).__name__}: {error}",
            "raise ValueError when the last axis is not divisible by m",
        )
    else:
        fail(name, "w of shape (2, 6) with m = 4", "ValueError", "no error", "raise ValueError when the last axis is not divisible by m")
    passed(name, f"{len(cases)} cases incl. ties and 1:4 / 2:8, and a clear error for an indivisible axis")


def check_top_filters(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(weight, keep, norm)`` -> sorted indices (LongTensor) of the ``keep`` output channels of highest L1/L2 norm."""
    from .pruning import channel_scores, top_channels

    name = "check_top_filters"
    torch.manual_seed(5)
    tied = torch.tensor([[1.0, -1.0], [3.0, 0.0], [0.5, 0.5], [-1.0, 1.0]])
    l1_vs_l2 = torch.tensor([[3.0, 0.0, 0.0], [1.2, 1.2, 1.2], [0.1, 0.1, 0.1]])  # L1 prefers row 1, L2 row 0
    cases = [
        ("conv weight (8, 4, 3, 3), keep 3, l1", torch.randn(8, 4, 3, 3), 3, "l1"),
        ("conv weight (6, 10, 5, 5), keep 5, l2", torch.randn(6, 10, 5, 5), 5, "l2"),
        ("linear weight (12, 7), keep 4, l1", torch.randn(12, 7), 4, "l1"),
        ("ties: rows 0 and 3 have equal L1 norm, keep 2, l1", tied, 2, "l1"),
        ("L1 and L2 disagree, keep 1, l1", l1_vs_l2, 1, "l1"),
        ("L1 and L2 disagree, keep 1, l2", l1_vs_l2, 1, "l2"),
    ]
    for case, weight, keep, norm in cases:
        expected = top_channels(channel_scores(weight, norm), keep)
        got = _call(name, case, fn, weight.clone(), keep, norm)
        got = torch.as_tensor(got)
        if got.tolist() != expected.tolist():
            hint = (
                "score each OUTPUT channel (dim 0) by the L1 (sum |w|) or L2 (sqrt of sum w^2) norm of all its weights; "
                "keep the largest; ties: lower index kept; return the indices sorted ascending"
            )
            fail(name, case, expected.tolist(), got.tolist(), hint)
    passed(name, f"{len(cases)} cases: conv and linear weights, L1 and L2, ties")


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


def check_shrink_conv_pair(fn: Callable[..., tuple[nn.Module, nn.Module]]) -> None:
    """``fn(conv, next_conv, keep)`` -> (smaller conv, smaller next_conv) computing the same as zeroing the dropped filters."""
    name = "check_shrink_conv_pair"
    torch.manual_seed(6)
    cases = [
        ("conv 3->8 (3x3), next 8->5 (3x3), keep [0, 2, 5, 7]", nn.Conv2d(3, 8, 3), nn.Conv2d(8, 5, 3), torch.tensor([0, 2, 5, 7])),
        ("conv 1->20 (5x5), next 20->50 (5x5), keep 10 filters", nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5), torch.arange(0, 20, 2)),
        ("padded 3x3 convs, keep 1 filter", nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 3, 3, padding=1), torch.tensor([3])),
    ]
    for case, conv, successor, keep in cases:
        x = torch.randn(2, conv.in_channels, 16, 16)
        expected = _pair_reference(conv, successor, keep, x, None)
        originals = [t.clone() for t in (conv.weight, conv.bias, successor.weight, successor.bias)]
        got = _call(name, case, fn, conv, successor, keep)
        try:
            small, small_next = got
        except (TypeError, ValueError):
            fail(name, case, "a pair (new conv, new next conv)", repr(got), "return both new layers")
        if not isinstance(small, nn.Conv2d) or not isinstance(small_next, nn.Conv2d):
            fail(name, case, "two nn.Conv2d", f"{type(small).__name__}, {type(small_next).__name__}", "build new nn.Conv2d layers")
        if small.out_channels != len(keep) or small_next.in_channels != len(keep):
            fail(
                name,
                case,
                f"out_channels {len(keep)} and next in_channels {len(keep)}",
                f"{small.out_channels} and {small_next.in_channels}",
                "the first layer loses output channels (dim 0 of its weight), the next loses the same input channels (dim 1)",
            )
        for before, after in zip(originals, (conv.weight, conv.bias, successor.weight, successor.bias)):
            if not torch.equal(before, after):
                fail(name, case, "the original layers unchanged", "they were modified", "copy the kept slices into new layers")
        with torch.no_grad():
            out = small_next(torch.relu(small(x)))
        if out.shape != expected.shape or not torch.allclose(out, expected, atol=1e-5):
            fail(
                name,
                case,
                "the same output as zeroing the dropped filters",
                f"max difference {(out - expected).abs().max():.3g}" if out.shape == expected.shape else f"shape {tuple(out.shape)}",
                "copy weight[keep] and bias[keep] of the first conv, weight[:, keep] and the whole bias of the next",
            )
    passed(name, f"{len(cases)} pairs: smaller layers, same function as the zeroed original")


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
        got = _call(name, case, fn, conv, linear, keep, spatial)
        try:
            small, small_linear = got
            with torch.no_grad():
                out = small_linear(torch.relu(small(x)).flatten(1))
        except NotImplementedError:
            raise
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
    passed(name, f"{len(cases)} conv -> flatten -> linear pairs shrunk with the right feature columns")


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
        (-1.0, 3.0, 8, True, True),
        (-5.0, 2.0, 4, True, True),
        (0.0, 6.0, 8, True, False),
        (0.0, 0.0, 8, False, True),  # empty range
    ]
    for x_min, x_max, bits, symmetric, signed in cases:
        case = f"qparams({x_min}, {x_max}, bits={bits}, symmetric={symmetric}, signed={signed})"
        expected = qparams(x_min, x_max, bits, symmetric, signed)
        got = _call(name, case, fn, x_min, x_max, bits, symmetric, signed)
        try:
            scale, zero_point = got
        except (TypeError, ValueError):
            fail(name, case, "a pair (scale, zero_point)", repr(got), "return two values")
        if not np.isclose(float(scale), expected[0], rtol=1e-9):
            hint = (
                "widen the range to include 0; asymmetric: (max - min) / (qmax - qmin); symmetric: max(|min|, |max|) / qmax; "
                "an empty range gets scale 1.0"
            )
            fail(name, case, f"scale {expected[0]:.8g}", f"{float(scale):.8g}", hint)
        if isinstance(zero_point, float) and not float(zero_point).is_integer():
            fail(name, case, f"an integer zero point {expected[1]}", repr(zero_point), "round the zero point: it must be an integer")
        if int(zero_point) != expected[1]:
            fail(
                name,
                case,
                f"zero_point {expected[1]}",
                int(zero_point),
                "zero_point = qmin - round(min / scale), clamped to [qmin, qmax]; 0 if symmetric",
            )
    passed(name, f"{len(cases)} cases: signed/unsigned, symmetric, ranges without 0, an empty range")


def check_quantize(quantize_fn: Callable[..., np.ndarray], dequantize_fn: Callable[..., np.ndarray]) -> None:
    """``quantize_fn(x, scale, zp, bits, signed)`` rounds half to even and clamps; ``dequantize_fn(q, scale, zp)`` inverts."""
    from .quantization import dequantize, quantize

    name = "check_quantize"
    rng = np.random.default_rng(8)
    cases = [
        ("exact ties: x / scale = 0.5, 1.5, 2.5, -0.5, -1.5, -2.5", np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5]) * 0.1, 0.1, 0, 8, True),
        ("values beyond the range clamp to -128 and 127", np.array([-100.0, -12.85, -12.75, 12.7, 12.75, 100.0]), 0.1, 0, 8, True),
        ("unsigned with a zero point", rng.uniform(-1, 3, 50), 4 / 255, 64, 8, False),
        ("4-bit signed, clamps to [-8, 7]", np.array([-1.0, -0.8, -0.75, 0.65, 0.7, 0.75, 1.0]), 0.1, 0, 4, True),
        ("random normal, int8 with a zero point", rng.standard_normal(200), 0.03, -5, 8, True),
    ]
    for case, x, scale, zp, bits, signed in cases:
        expected = quantize(x, scale, zp, bits, signed)
        got = np.asarray(_call(name, case, quantize_fn, x.copy(), scale, zp, bits, signed))
        if got.shape != x.shape or not np.array_equal(got.astype(np.int64), expected):
            bad = np.flatnonzero(got.astype(np.int64) != expected)[:3] if got.shape == x.shape else []
            hint = (
                "q = clip(np.round(x / scale) + zero_point, qmin, qmax): np.round rounds half to even; "
                "qmax is 2**(bits-1) - 1 (signed) or 2**bits - 1"
            )
            fail(
                name,
                f"{case}, at x = {x[bad].tolist() if len(bad) else x[:3].tolist()}",
                expected[bad].tolist() if len(bad) else expected.tolist()[:6],
                got.ravel()[bad].tolist() if len(bad) else got.ravel().tolist()[:6],
                hint,
            )
        if got.dtype.kind not in "iu":
            fail(name, case, "an integer array", f"dtype {got.dtype}", "convert with .astype(np.int64)")
        back = np.asarray(_call(name, f"dequantize on {case}", dequantize_fn, expected, scale, zp), dtype=np.float64)
        if not np.allclose(back, dequantize(expected, scale, zp), atol=1e-6):
            fail(
                name,
                f"dequantize on {case}",
                dequantize(expected, scale, zp)[:4].tolist(),
                back[:4].tolist(),
                "x_hat = (q - zero_point) * scale",
            )
    passed(name, f"{len(cases)} cases: half-to-even ties, clamping at both ends, 4 and 8 bits, round trip")


def check_per_channel_qparams(fn: Callable[..., tuple[np.ndarray, np.ndarray]]) -> None:
    """``fn(w, axis, bits)`` -> symmetric signed per-channel (scales, zero_points) along ``axis``."""
    from .quantization import qparams_per_channel

    name = "check_per_channel_qparams"
    rng = np.random.default_rng(9)
    cases = [
        ("linear weight (5, 7), axis 0", rng.standard_normal((5, 7)) * np.array([[0.1], [1], [10], [0.01], [3]]), 0, 8),
        ("conv weight (4, 3, 3, 3), axis 0", rng.standard_normal((4, 3, 3, 3)), 0, 8),
        ("transposed weight (7, 5), axis 1", rng.standard_normal((7, 5)) * np.array([0.1, 1, 10, 0.01, 3]), 1, 4),
        ("a channel of zeros", np.vstack([np.zeros(6), rng.standard_normal(6)]), 0, 8),
    ]
    for case, w, axis, bits in cases:
        expected_s, expected_z = qparams_per_channel(w, axis=axis, bits=bits, symmetric=True, signed=True)
        got = _call(name, case, fn, w.copy(), axis, bits)
        scales, zps = (np.asarray(v) for v in got)
        if scales.shape != expected_s.shape:
            fail(
                name,
                case,
                f"{expected_s.shape[0]} scales",
                f"shape {scales.shape}",
                "one scale per slice along axis (reduce over every other axis)",
            )
        if not np.allclose(scales, expected_s, rtol=1e-9) or not np.array_equal(zps.astype(np.int64), expected_z):
            fail(
                name,
                case,
                np.round(expected_s, 6).tolist(),
                np.round(scales, 6).tolist(),
                "symmetric: scale = max|w| of the channel / qmax, zero point 0; an all-zero channel gets scale 1.0",
            )
    passed(name, f"{len(cases)} cases: linear and conv weights, axis 0 and 1, a zero channel")


def check_mse_range(fn: Callable[..., tuple[float, float]]) -> None:
    """``fn(x, bits)`` -> a clipping range (lo, hi) whose asymmetric quantization MSE is (near) minimal."""
    from .quantization import minmax_range, mse_range, quantization_mse

    name = "check_mse_range"
    rng = np.random.default_rng(10)
    cases = [
        ("normal data with two outliers, 4 bits", np.concatenate([rng.standard_normal(20_000), [12.0, -9.0]]), 4),
        ("ReLU-like data with a long tail, 4 bits", np.maximum(rng.standard_t(3, 20_000), 0), 4),
        ("normal data, 8 bits", rng.standard_normal(20_000), 8),
    ]
    for case, x, bits in cases:
        best = quantization_mse(x, *mse_range(x, bits), bits)
        minmax = quantization_mse(x, *minmax_range(x), bits)
        got = _call(name, case, fn, x.copy(), bits)
        lo, hi = (float(v) for v in got)
        error = quantization_mse(x, lo, hi, bits)
        if error > 1.05 * best:
            hint = "shrink the min-max range in small steps (e.g. 100 fractions) and keep the range with the smallest mean squared error"
            fail(name, case, f"MSE <= {1.05 * best:.4g} (min-max gives {minmax:.4g})", f"{error:.4g} with range ({lo:.4g}, {hi:.4g})", hint)
    passed(name, f"{len(cases)} distributions: your ranges are within 5% of the best MSE")


def check_quantize_multiplier(fn: Callable[[float], tuple[int, int]]) -> None:
    """``fn(M)`` -> (m0, shift) with int32 m0 in [2**30, 2**31) and M ~= m0 * 2**(-31 - shift)."""
    name = "check_quantize_multiplier"
    multipliers = [0.5, 0.75, 0.999999, 0.0123456, 1.52849e-3, 2.0**-20, 0.3, 1e-7, 0.49999999]
    for m in multipliers:
        case = f"M = {m!r}"
        got = _call(name, case, fn, m)
        m0, shift = (int(v) for v in got)
        if not 2**30 <= m0 < 2**31:
            fail(
                name, case, "m0 in [2**30, 2**31)", m0, "m0 = round(M0 * 2**31) with M0 = M * 2**n in [0.5, 1) (math.frexp gives M0 and -n)"
            )
        if abs(m0 * 2.0 ** (-31 - shift) - m) > m * 2**-30:
            fail(
                name,
                case,
                f"m0 * 2**(-31 - shift) = {m!r}",
                f"{m0 * 2.0 ** (-31 - shift)!r} (m0={m0}, shift={shift})",
                "shift = n where M = M0 * 2**-n; check the sign and an off-by-one",
            )
    passed(name, f"{len(multipliers)} multipliers represented to 2**-30 relative error")


def check_requantize(fn: Callable[..., np.ndarray]) -> None:
    """``fn(acc, m0, shift, zero_point, bits)`` -> clamp(round(acc * M) + zero_point) with integer operations."""
    from .quantization import quantize_multiplier

    name = "check_requantize"
    rng = np.random.default_rng(11)
    cases = [(0.0123456, 0, 8, 2**20), (0.3, -7, 8, 1000), (2.0**-10, 100, 8, 2**22), (0.0015, 3, 4, 20_000), (0.75, 0, 8, 200)]
    for multiplier, zp, bits, span in cases:
        m0, shift = quantize_multiplier(multiplier)
        acc = rng.integers(-span, span, 5000)
        case = f"M = {multiplier}, zero_point = {zp}, bits = {bits}"
        got = np.asarray(_call(name, case, fn, acc.copy(), m0, shift, zp, bits))
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        ideal = np.clip(np.round(acc * multiplier) + zp, qmin, qmax)
        if got.dtype.kind not in "iu":
            fail(name, case, "an integer array", f"dtype {got.dtype}", "stay in integers: int64 products, >> shifts, masks")
        diff = np.abs(got.astype(np.int64) - ideal)
        if diff.max() > 1:
            worst = int(np.argmax(diff))
            hint = "multiply by m0 and divide by 2**31 with rounding, then a rounding right shift by `shift`, add the zero point, clamp"
            fail(name, f"{case}, acc = {acc[worst]}", int(ideal[worst]), int(got[worst]), hint)
    passed(name, f"{len(cases)} multipliers x 5000 accumulators within 1 of round(acc * M) + zero_point, clamped")


def check_quantized_linear(fn: Callable[..., np.ndarray]) -> None:
    """``fn(q_x, zp_x, q_w, bias_q, m0, shift, zp_y)`` -> uint8 outputs of an integer-only Linear layer."""
    from .quantization import qparams, qparams_per_channel, quantize, quantize_multiplier, quantize_per_channel, quantized_linear

    name = "check_quantized_linear"
    rng = np.random.default_rng(12)
    for n, k, m_out in ((5, 12, 4), (16, 784, 30), (1, 3, 2)):
        x = rng.uniform(-0.5, 2.0, (n, k))
        w = rng.standard_normal((m_out, k)) * 0.2
        b = rng.standard_normal(m_out) * 0.3
        sx, zx = qparams(x.min(), x.max(), 8, signed=False)
        ws, wz = qparams_per_channel(w)
        y = x @ w.T + b
        sy, zy = qparams(y.min(), y.max(), 8, signed=False)
        q_x, q_w = quantize(x, sx, zx, 8, False), quantize_per_channel(w, ws, wz)
        bias_q = np.round(b / (sx * ws)).astype(np.int64)
        mult = [quantize_multiplier(sx * s / sy) for s in ws]
        m0, shift = np.array([p[0] for p in mult]), np.array([p[1] for p in mult])
        expected = quantized_linear(q_x, zx, q_w, 0, bias_q, m0, shift, zy, 8, False)
        case = f"N={n}, K={k}, M={m_out}, zp_x={zx}, zp_y={zy}"
        got = np.asarray(_call(name, case, fn, q_x.copy(), zx, q_w.copy(), bias_q.copy(), m0, shift, zy))
        if got.shape != expected.shape:
            fail(name, case, f"shape {expected.shape}", f"shape {got.shape}", "(N, K) x (M, K) -> (N, M)")
        if np.abs(got.astype(np.int64) - expected).max() > 1:
            hint = (
                "acc = (q_x - zp_x) @ q_w.T + bias_q (int64), then requantize per output column "
                "with (m0[j], shift[j]), add zp_y, clamp to [0, 255]"
            )
            fail(name, case, expected[0, :6].tolist(), got[0, :6].tolist(), hint)
    passed(name, "3 layers within 1 LSB of the reference integer engine")


# ----------------------------------------------------------------------------- chapter 04: post-training quantization


def check_observer(observer_class: type) -> None:
    """``observer_class()`` with ``update(x)`` over batches and ``qparams()`` -> asymmetric uint8 (scale, zero_point)."""
    from .quantization import qparams

    name = "check_observer"
    rng = np.random.default_rng(13)
    cases = [
        ("three batches with different ranges", [rng.normal(0, 1, 100), rng.normal(2, 3, 50), rng.normal(-1, 0.5, 70)]),
        ("all positive (range widened to include 0)", [rng.uniform(1, 2, 20), rng.uniform(1.5, 3, 20)]),
        ("all negative", [rng.uniform(-4, -1, 30)]),
        ("a constant zero tensor", [np.zeros(10)]),
        ("torch tensors", [torch.randn(4, 8), torch.randn(2, 8) * 5]),
    ]
    for case, batches in cases:
        observer = _call(name, case, observer_class)
        for batch in batches:
            _call(name, case, observer.update, batch)
        values = np.concatenate([np.asarray(b).ravel() for b in batches])
        expected = qparams(values.min(), values.max(), 8, symmetric=False, signed=False)
        scale, zero_point = _call(name, case, observer.qparams)
        if not np.isclose(float(scale), expected[0], rtol=1e-6) or int(zero_point) != expected[1]:
            hint = "keep the running min and max over ALL batches seen, then asymmetric uint8 qparams (range widened to include 0)"
            fail(name, case, f"(scale {expected[0]:.6g}, zero_point {expected[1]})", f"({float(scale):.6g}, {zero_point})", hint)
    passed(name, f"{len(cases)} sequences of batches: running min/max and uint8 qparams")


def check_fake_quant_weight(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """``fn(w, bits)`` -> per-output-channel symmetric fake-quantized weight (same shape, float)."""
    from .quantization import dequantize_per_channel, qparams_per_channel, quantize_per_channel

    name = "check_fake_quant_weight"
    torch.manual_seed(14)
    cases = [
        ("linear (6, 10), 8 bits, rows of different scales", torch.randn(6, 10) * torch.tensor([[0.01], [0.1], [1], [10], [0.5], [2]]), 8),
        ("conv (4, 3, 3, 3), 4 bits", torch.randn(4, 3, 3, 3), 4),
        ("linear (3, 5) with a zero row, 8 bits", torch.cat([torch.zeros(1, 5), torch.randn(2, 5)]), 8),
    ]
    for case, w, bits in cases:
        scales, zps = qparams_per_channel(w, axis=0, bits=bits, symmetric=True, signed=True)
        expected = dequantize_per_channel(quantize_per_channel(w.double(), scales, zps, axis=0, bits=bits), scales, zps, axis=0)
        got = _call(name, case, fn, w.clone(), bits)
        got = torch.as_tensor(got, dtype=torch.float64)
        if tuple(got.shape) != tuple(w.shape):
            fail(name, case, f"shape {tuple(w.shape)}", f"shape {tuple(got.shape)}", "return a tensor shaped like w")
        if not torch.allclose(got, expected.double(), rtol=1e-5, atol=1e-7):
            hint = "one symmetric scale per OUTPUT channel (dim 0): max |w| over the rest / (2**(bits-1) - 1); round half to even; clamp"
            fail(name, case, expected.flatten()[:4].tolist(), got.flatten()[:4].tolist(), hint)
    passed(name, f"{len(cases)} weights: per-output-channel symmetric, 4 and 8 bits, a zero row")


def check_activation_ranges(fn: Callable[..., dict], model: nn.Module, x: torch.Tensor) -> None:
    """``fn(model, x)`` -> {layer name: (min, max) of that Linear/Conv2d layer's output} from forward hooks."""
    name = "check_activation_ranges"
    expected: dict[str, tuple[float, float]] = {}
    handles = []
    for layer_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):

            def hook(m: nn.Module, inputs: tuple, output: torch.Tensor, key: str = layer_name) -> None:
                expected[key] = (float(output.min()), float(output.max()))

            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    got = _call(name, "the model and calibration images", fn, model, x)
    leftover = [m for m in model.modules() if m._forward_hooks]
    if leftover:
        fail(
            name,
            "hooks after the call",
            "no forward hooks left on the model",
            f"{len(leftover)} modules still hooked",
            "keep the handles and call .remove()",
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
        if not np.allclose([float(v) for v in got[key]], [lo, hi], rtol=1e-5, atol=1e-6):
            fail(
                name,
                f"layer {key!r}",
                (round(lo, 5), round(hi, 5)),
                got[key],
                "record the OUTPUT of each layer (the hook's third argument), over the whole batch",
            )
    passed(name, f"{len(expected)} layers' output ranges match; no hooks left behind")


def check_bias_quantization(fn: Callable[..., np.ndarray]) -> None:
    """``fn(bias, input_scale, weight_scales)`` -> int32 ``round(bias / (s_x * s_w))`` per output channel."""
    name = "check_bias_quantization"
    rng = np.random.default_rng(15)
    for n in (5, 50):
        bias = rng.standard_normal(n) * 0.3
        s_x, s_w = 0.0173, rng.uniform(0.001, 0.02, n)
        bias[0] = 2.5 * s_x * s_w[0]  # an exact tie: half to even gives 2
        expected = np.round(bias / (s_x * s_w)).astype(np.int32)
        got = np.asarray(_call(name, f"{n} channels", fn, bias.copy(), s_x, s_w.copy()))
        if got.dtype != np.int32:
            fail(name, f"{n} channels", "dtype int32", f"dtype {got.dtype}", "the accumulator is int32: return .astype(np.int32)")
        if not np.array_equal(got, expected):
            fail(
                name,
                f"{n} channels",
                expected[:5].tolist(),
                got[:5].tolist(),
                "bias scale = input scale x that channel's weight scale, zero point 0; round half to even",
            )
    passed(name, "2 layers: int32 biases with scale s_x * s_w, rounded half to even")


def check_int_conv2d(fn: Callable[..., np.ndarray]) -> None:
    """``fn(q_x, zp_x, q_w)`` -> int64 accumulators (N, F, Ho, Wo) of sum (q_x - zp_x) * q_w, valid stride-1 conv."""
    name = "check_int_conv2d"
    rng = np.random.default_rng(16)
    for n, c, h, f, k, zp in ((2, 1, 8, 3, 3, 0), (1, 3, 9, 4, 5, 37), (3, 20, 12, 5, 5, 128)):
        q_x = rng.integers(0, 256, (n, c, h, h))
        q_w = rng.integers(-127, 128, (f, c, k, k))
        expected = torch.nn.functional.conv2d(torch.from_numpy(q_x - zp).double(), torch.from_numpy(q_w).double()).numpy().astype(np.int64)
        case = f"x {q_x.shape} with zero point {zp}, w {q_w.shape}"
        got = np.asarray(_call(name, case, fn, q_x.copy(), zp, q_w.copy()))
        if got.shape != expected.shape:
            fail(name, case, f"shape {expected.shape}", f"shape {got.shape}", "(N, C, H, W) * (F, C, k, k) -> (N, F, H-k+1, W-k+1)")
        if got.dtype.kind not in "iu" or not np.array_equal(got, expected):
            hint = (
                "im2col: patches of shape (C*k*k) in the same (c, i, j) order as q_w.reshape(F, -1); "
                "subtract zp_x from the input; integer matmul"
            )
            fail(name, case, expected.ravel()[:4].tolist(), got.ravel()[:4].tolist(), hint)
    passed(name, "3 convolutions equal to conv2d on the zero-point-shifted integers, exactly")


def check_groupwise(fn: Callable[..., tuple[np.ndarray, np.ndarray]]) -> None:
    """``fn(w, bits, group_size)`` -> (codes int in [-qmax, qmax], scales (out, in / group_size)) symmetric per group."""
    from .quantization import dequantize_groupwise, quantize_groupwise

    name = "check_groupwise"
    rng = np.random.default_rng(17)
    cases = [((4, 32), 4, 8), ((3, 30), 3, 10), ((2, 16), 4, 16), ((5, 12), 2, 4)]
    for shape, bits, group in cases:
        w = rng.standard_normal(shape) * rng.uniform(0.1, 3, (shape[0], 1))
        w[0, :group] = 0.0  # an all-zero group
        codes, scales = quantize_groupwise(w, bits, group)
        case = f"w {shape}, {bits} bits, groups of {group}"
        got = _call(name, case, fn, w.copy(), bits, group)
        g_codes, g_scales = (np.asarray(v) for v in got)
        if g_scales.shape != scales.shape:
            fail(
                name,
                case,
                f"scales of shape {scales.shape}",
                f"shape {g_scales.shape}",
                "one scale per group of group_size consecutive inputs in each row",
            )
        qmax = 2 ** (bits - 1) - 1
        if g_codes.min() < -qmax or g_codes.max() > qmax:
            fail(
                name,
                case,
                f"codes in [-{qmax}, {qmax}]",
                f"[{g_codes.min()}, {g_codes.max()}]",
                "symmetric: clamp to [-qmax, qmax] so that the grid is symmetric",
            )
        if not np.allclose(
            dequantize_groupwise(g_codes.astype(np.int8), g_scales.astype(np.float32)), dequantize_groupwise(codes, scales), atol=1e-6
        ):
            fail(
                name,
                case,
                "the reference reconstruction",
                "a different one",
                "scale = max |w| of the group / qmax (1.0 for an all-zero group); codes = round(w / scale)",
            )
    passed(name, f"{len(cases)} weights: groups along the input dimension, 2-4 bits, an all-zero group")


# ----------------------------------------------------------------------------- chapter 07: distillation


def _logit_cases() -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    rng = np.random.default_rng(18)
    return [
        ("random logits, T = 1", rng.standard_normal((4, 10)) * 3, rng.standard_normal((4, 10)) * 3, 1.0),
        ("random logits, T = 4", rng.standard_normal((6, 10)) * 5, rng.standard_normal((6, 10)) * 5, 4.0),
        ("large logits (near 1000), T = 1", rng.standard_normal((3, 5)) * 3 + 1000, rng.standard_normal((3, 5)) * 3 + 1000, 1.0),
        ("batch of one, T = 10", rng.standard_normal((1, 7)), rng.standard_normal((1, 7)), 10.0),
    ]


def check_softmax_t(fn: Callable[[np.ndarray, float], np.ndarray]) -> None:
    """``fn(logits, T)`` -> softmax(logits / T) over the last axis, finite for large logits."""
    from .distillation import softmax_t

    name = "check_softmax_t"
    for case, s, _, T in _logit_cases():
        expected = softmax_t(s, T)
        with np.errstate(all="ignore"):
            got = np.asarray(_call(name, case, fn, s.copy(), T), dtype=np.float64)
        if got.shape != expected.shape or not np.all(np.isfinite(got)):
            fail(
                name,
                case,
                f"finite probabilities of shape {expected.shape}",
                f"shape {got.shape}, finite: {bool(np.all(np.isfinite(got)))}",
                "subtract the row maximum before exp (it cancels in the ratio)",
            )
        if not np.allclose(got, expected, atol=1e-9):
            fail(
                name,
                case,
                np.round(expected[0, :4], 5).tolist(),
                np.round(got[0, :4], 5).tolist(),
                "divide the logits by T, then softmax along the last axis (each row sums to 1)",
            )
    passed(name, "4 cases incl. logits near 1000 and a batch of one")


def check_kd_loss(fn: Callable[[np.ndarray, np.ndarray, float], float]) -> None:
    """``fn(student, teacher, T)`` -> T**2 * mean over the batch of KL(softmax(teacher/T) || softmax(student/T))."""
    from .distillation import kd_loss

    name = "check_kd_loss"
    for case, s, t, T in _logit_cases():
        expected = kd_loss(s, t, T)
        got = float(_call(name, case, fn, s.copy(), t.copy(), T))
        if not np.isclose(got, expected, rtol=1e-6, atol=1e-9):
            ratio = got / expected if expected else float("nan")
            hint = "T**2 * sum_i p_i (log p_i - log q_i), p = teacher, q = student, both at temperature T; mean over the batch"
            if np.isclose(ratio, 1 / T**2, rtol=1e-3) and T != 1:
                hint = "the T**2 factor is missing"
            elif np.isclose(ratio, len(s), rtol=1e-3) and len(s) > 1:
                hint = "average over the batch, do not sum"
            fail(name, case, f"{expected:.8g}", f"{got:.8g}", hint)
    passed(name, "4 cases match T^2 KL(teacher || student), batch mean, stable for large logits")


def check_kd_grad(fn: Callable[[np.ndarray, np.ndarray, float], np.ndarray]) -> None:
    """``fn(student, teacher, T)`` -> dL_KD / d(student logits), shape (batch, classes)."""
    from .distillation import kd_grad

    name = "check_kd_grad"
    for case, s, t, T in _logit_cases():
        expected = kd_grad(s, t, T)
        got = np.asarray(_call(name, case, fn, s.copy(), t.copy(), T), dtype=np.float64)
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-6, atol=1e-12):
            fail(
                name,
                case,
                np.round(expected[0, :4], 6).tolist(),
                np.round(got.ravel()[:4], 6).tolist(),
                "T * (q - p) / batch: student minus teacher probabilities at temperature T",
            )
    passed(name, "4 cases equal T (q - p) / B")


def check_distillation_step(fn: Callable[..., float]) -> None:
    """``fn(student, optimizer, x, y, teacher_logits, T, alpha)``: one optimizer step on the distillation loss; returns the loss."""
    from .distillation import distillation_loss
    from .models import MLP

    name = "check_distillation_step"
    torch.manual_seed(19)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    teacher_logits = torch.randn(16, 10) * 3
    for T, alpha in ((4.0, 0.9), (2.0, 0.3), (1.0, 1.0)):
        case = f"T = {T}, alpha = {alpha}, two steps in a row"
        ours, theirs = MLP(hidden=(12,)), MLP(hidden=(12,))
        theirs.load_state_dict(ours.state_dict())
        opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)
        opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1)
        for step in range(2):
            expected = distillation_loss(ours(x), teacher_logits, y, T, alpha)
            opt_ours.zero_grad()
            expected.backward()
            opt_ours.step()
            got = _call(name, case, fn, theirs, opt_theirs, x, y, teacher_logits, T, alpha)
            if not np.isclose(float(got), expected.item(), rtol=1e-5):
                fail(
                    name,
                    f"{case}, step {step + 1}",
                    f"loss {expected.item():.6f}",
                    float(got),
                    "alpha * kd_loss + (1 - alpha) * cross_entropy, on the student's logits for x",
                )
            for p, q in zip(ours.parameters(), theirs.parameters()):
                if not torch.allclose(p, q, atol=1e-6):
                    fail(
                        name,
                        f"{case}, step {step + 1}",
                        "the same parameters as one SGD step",
                        "different parameters",
                        "zero the gradients, backward, optimizer.step(); do not let the teacher's logits receive gradients",
                    )
    passed(name, "3 settings x 2 consecutive steps: same loss and same parameters as the reference")


def check_hint_loss(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(student_features, teacher_features, regressor)`` -> mean squared error of regressor(student) vs teacher."""
    from .distillation import HintRegressor, hint_loss

    name = "check_hint_loss"
    torch.manual_seed(20)
    for cs, ct, hw in ((4, 12, 6), (8, 50, 8)):
        fs = torch.randn(3, cs, hw, hw, requires_grad=True)
        ft = torch.randn(3, ct, hw, hw, requires_grad=True)
        regressor = HintRegressor(cs, ct)
        case = f"student {cs} channels, teacher {ct}, {hw}x{hw}"
        expected = hint_loss(fs, ft, regressor)
        got = _call(name, case, fn, fs, ft, regressor)
        if not isinstance(got, torch.Tensor) or got.dim() != 0:
            fail(name, case, "a scalar tensor", repr(type(got)), "return a differentiable scalar")
        if not torch.isclose(got, expected, rtol=1e-5):
            fail(name, case, f"{expected.item():.6f}", f"{got.item():.6f}", "mean over all elements of (regressor(student) - teacher)**2")
        got.backward()
        if ft.grad is not None and ft.grad.abs().sum() > 0:
            fail(
                name,
                case,
                "no gradient into the teacher's features",
                "a gradient reached them",
                "use teacher_features.detach(): the teacher is fixed",
            )
        if regressor.proj.weight.grad is None or fs.grad is None:
            fail(
                name,
                case,
                "gradients for the regressor and the student",
                "none",
                "apply the regressor to the student's features inside the loss",
            )
    passed(name, "2 layer pairs: MSE through the regressor, teacher detached, gradients reach student and regressor")


def check_attention_map(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(features, p)`` -> (N, H*W) maps sum_c |F_c|**p, L2-normalised per example."""
    from .distillation import attention_map

    name = "check_attention_map"
    torch.manual_seed(21)
    for shape, p in (((2, 8, 6, 6), 2), ((3, 4, 5, 7), 1), ((1, 50, 8, 8), 2), ((4, 3, 4, 4), 4)):
        features = torch.randn(*shape) * torch.rand(shape[0], 1, 1, 1) * 5
        case = f"features {shape}, p = {p}"
        expected = attention_map(features, p)
        got = torch.as_tensor(_call(name, case, fn, features.clone(), p))
        if tuple(got.shape) != tuple(expected.shape):
            fail(name, case, f"shape {tuple(expected.shape)}", f"shape {tuple(got.shape)}", "sum over channels (dim 1), then flatten H x W")
        if not torch.allclose(got, expected, atol=1e-6):
            fail(
                name,
                case,
                expected[0, :4].tolist(),
                got[0, :4].tolist(),
                "|F|**p summed over channels, then divide each example's map by its L2 norm (dim 1 after flattening)",
            )
    passed(name, "4 feature maps: channel sum of |F|^p, flattened, unit L2 norm per example")


# ----------------------------------------------------------------------------- chapter 08: low-rank factorization


def check_truncated_svd(fn: Callable[[np.ndarray, int], tuple]) -> None:
    """``fn(W, rank)`` -> (U_r (m, r), S_r (r,), Vt_r (r, n)) of the leading singular triplets."""
    from .lowrank import low_rank_approx

    name = "check_truncated_svd"
    rng = np.random.default_rng(22)
    for shape, rank in (((8, 5), 2), ((5, 8), 3), ((30, 30), 30), ((12, 7), 1)):
        W = rng.standard_normal(shape)
        case = f"W {shape}, rank {rank}"
        got = _call(name, case, fn, W.copy(), rank)
        U, S, Vt = (np.asarray(v) for v in got)
        if U.shape != (shape[0], rank) or S.shape != (rank,) or Vt.shape != (rank, shape[1]):
            fail(
                name,
                case,
                f"shapes {(shape[0], rank)}, {(rank,)}, {(rank, shape[1])}",
                f"{U.shape}, {S.shape}, {Vt.shape}",
                "np.linalg.svd(W, full_matrices=False) gives U, S, Vt; keep the first `rank` columns of U, entries of S, rows of Vt",
            )
        if not np.allclose((U * S) @ Vt, low_rank_approx(W, rank), atol=1e-8):
            fail(
                name,
                case,
                "U_r diag(S_r) Vt_r = the best rank-r approximation",
                "a different matrix",
                "keep the LARGEST singular values (np.linalg.svd sorts them in decreasing order)",
            )
    passed(name, "4 matrices (tall, wide, square full rank, rank 1)")


def check_low_rank_error(fn: Callable[[np.ndarray, int], float]) -> None:
    """``fn(singular_values, rank)`` -> Frobenius error of the rank-r truncation, sqrt(sum of the discarded sigma**2)."""
    name = "check_low_rank_error"
    rng = np.random.default_rng(23)
    for n, rank in ((10, 3), (10, 10), (5, 1), (40, 12)):
        W = rng.standard_normal((n + 3, n))
        S = np.linalg.svd(W, compute_uv=False)
        U, S_, Vt = np.linalg.svd(W, full_matrices=False)
        expected = float(np.linalg.norm(W - (U[:, :rank] * S_[:rank]) @ Vt[:rank]))
        case = f"{n} singular values, rank {rank}"
        got = float(_call(name, case, fn, S.copy(), rank))
        if not np.isclose(got, expected, rtol=1e-9, atol=1e-12):
            fail(
                name,
                case,
                f"{expected:.8g}",
                f"{got:.8g}",
                "Eckart-Young: sqrt(sum of sigma_i**2 for i >= rank) (0-based); the square root matters",
            )
    passed(name, "4 cases equal the measured error ||W - W_r||_F")


def check_rank_for_energy(fn: Callable[[np.ndarray, float], int]) -> None:
    """``fn(singular_values, energy)`` -> smallest r with sum(sigma[:r]**2) >= energy * sum(sigma**2)."""
    from .lowrank import rank_for_energy

    name = "check_rank_for_energy"
    rng = np.random.default_rng(24)
    cases = [(np.array([3.0, 2.0, 1.0, 0.0]), e) for e in (0.5, 9 / 14, 0.65, 13 / 14, 0.99, 1.0)]
    cases += [(np.sort(rng.random(50))[::-1] ** 3, e) for e in (0.3, 0.9)]
    for s, energy in cases:
        case = f"sigma {np.round(s[:4], 3).tolist()}..., energy {energy:.4f}"
        expected = rank_for_energy(s, energy)
        got = _as_int(name, case, _call(name, case, fn, s.copy(), energy))
        if got != expected:
            fail(
                name,
                case,
                expected,
                got,
                "energy is sum of sigma**2 (not sigma); the smallest r whose cumulative energy reaches the target; r counts from 1",
            )
    passed(name, f"{len(cases)} cases incl. exact thresholds and trailing zeros")


def check_factorize_linear(fn: Callable[[nn.Linear, int], nn.Module]) -> None:
    """``fn(layer, rank)`` -> nn.Sequential(Linear(in, r, bias=False) = sqrt(S) Vt, Linear(r, out) = U sqrt(S) + bias)."""
    from .lowrank import low_rank_approx, truncated_svd

    name = "check_factorize_linear"
    torch.manual_seed(25)
    for fan_in, fan_out, rank in ((20, 12, 4), (50, 30, 30), (9, 16, 1)):
        layer = nn.Linear(fan_in, fan_out)
        case = f"Linear({fan_in}, {fan_out}), rank {rank}"
        got = _call(name, case, fn, layer, rank)
        if not isinstance(got, nn.Sequential) or len(got) != 2 or not all(isinstance(m, nn.Linear) for m in got):
            fail(name, case, "nn.Sequential of two nn.Linear", repr(got)[:80], "return nn.Sequential(first, second)")
        first, second = got
        if tuple(first.weight.shape) != (rank, fan_in) or tuple(second.weight.shape) != (fan_out, rank):
            fail(
                name,
                case,
                f"weights ({rank}, {fan_in}) and ({fan_out}, {rank})",
                f"{tuple(first.weight.shape)} and {tuple(second.weight.shape)}",
                "first layer: in -> rank (weight sqrt(S) Vt); second: rank -> out (weight U sqrt(S)); check for a transposed factor",
            )
        x = torch.randn(5, fan_in)
        expected = x.double() @ torch.from_numpy(low_rank_approx(layer.weight.detach().double(), rank)).T + layer.bias.double()
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
    passed(name, "3 layers: correct product, shapes and the even sqrt(S) split")


def check_hosvd(fn: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """``fn(K, rank_out, rank_in)`` -> (core, U_out, U_in) of the Tucker-2 HOSVD of a 4-d kernel."""
    from .lowrank import hosvd_tucker2, tucker2_reconstruct

    name = "check_hosvd"
    rng = np.random.default_rng(26)
    for shape, r_out, r_in in (((6, 4, 3, 3), 3, 2), ((10, 5, 5, 5), 10, 5), ((8, 6, 1, 1), 2, 6)):
        K = rng.standard_normal(shape)
        case = f"K {shape}, ranks ({r_out}, {r_in})"
        ref_core, ref_out, ref_in = hosvd_tucker2(K, r_out, r_in)
        got = _call(name, case, fn, K.copy(), r_out, r_in)
        core, U_out, U_in = (np.asarray(v, dtype=np.float64) for v in got)
        if U_out.shape != ref_out.shape or U_in.shape != ref_in.shape or core.shape != ref_core.shape:
            fail(
                name,
                case,
                f"core {ref_core.shape}, U_out {ref_out.shape}, U_in {ref_in.shape}",
                f"{core.shape}, {U_out.shape}, {U_in.shape}",
                "U_out from the mode-0 unfolding (C_out rows), U_in from the mode-1 unfolding (C_in rows)",
            )
        if not np.allclose(U_out @ U_out.T, ref_out @ ref_out.T, atol=1e-8) or not np.allclose(U_in @ U_in.T, ref_in @ ref_in.T, atol=1e-8):
            fail(
                name,
                case,
                "the leading left singular subspaces of the unfoldings",
                "different subspaces",
                "mode-1 unfolding: move axis 1 to the front before reshaping (K.transpose(1, 0, 2, 3).reshape(C_in, -1))",
            )
        if not np.allclose(tucker2_reconstruct(core, U_out, U_in), tucker2_reconstruct(ref_core, ref_out, ref_in), atol=1e-8):
            fail(
                name,
                case,
                "core = K x0 U_out^T x1 U_in^T",
                "a different core",
                "project K onto the factors: contract mode 0 with U_out and mode 1 with U_in",
            )
    passed(name, "3 kernels: orthonormal factors spanning the right subspaces, and the projected core")


def check_tucker2_macs(fn: Callable[..., int]) -> None:
    """``fn(c_in, c_out, k, rank_in, rank_out, height, width, padding)`` -> MACs of the Tucker-2 block (stride 1), one image."""
    from .lowrank import tucker2_conv

    name = "check_tucker2_macs"
    torch.manual_seed(27)
    for c_in, c_out, k, r_in, r_out, h, w, pad in ((20, 50, 5, 8, 16, 12, 12, 0), (16, 32, 3, 4, 8, 10, 14, 1), (3, 6, 3, 3, 6, 9, 9, 0)):
        case = f"c_in={c_in}, c_out={c_out}, k={k}, ranks in/out {r_in}/{r_out}, {h}x{w}, padding {pad}"
        expected = count_macs(tucker2_conv(nn.Conv2d(c_in, c_out, k, padding=pad), r_out, r_in), (1, c_in, h, w))
        got = _as_int(name, case, _call(name, case, fn, c_in, c_out, k, r_in, r_out, h, w, pad))
        if got != expected:
            fail(
                name,
                case,
                expected,
                got,
                "first 1x1 on the INPUT size (c_in r_in H W); core on the output size (r_in r_out k^2 H' W'); last 1x1 (r_out c_out H' W')",
            )
    passed(name, "3 blocks equal the hook count")
