"""Every lab check passes the reference answer and rejects plausible wrong ones (it is not vacuous)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

from helpers import checks

# ----------------------------------------------------------------------------- reference answers


def linear_params(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def conv2d_params(i: int, o: int, k, groups: int = 1, bias: bool = True) -> int:
    kh, kw = (k, k) if isinstance(k, int) else k
    return o * (i // groups) * kh * kw + (o if bias else 0)


def linear_macs(i: int, o: int, batch: int = 1) -> int:
    return batch * i * o


def conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def conv2d_macs(i, o, k, h, w, stride=1, padding=0, groups=1) -> int:
    return o * conv_out(h, k, stride, padding) * conv_out(w, k, stride, padding) * (i // groups) * k * k


def linear_forward(x, W, b):
    return np.maximum(0.0, x @ W.T + b)


def measure(f, x, repeats=50, warmup=10, timer=time.perf_counter):
    for _ in range(warmup):
        f(x)
    times = []
    for _ in range(repeats):
        t = timer()
        f(x)
        times.append((timer() - t) * 1e3)
    p25, med, p75 = np.percentile(times, [25, 50, 75])
    return med, p75 - p25


def blank(*args, **kwargs):
    raise NotImplementedError()


# ----------------------------------------------------------------------------- wrong answers

WRONG: dict[str, tuple[Callable, list[Callable]]] = {
    "check_linear_params": (
        linear_params,
        [
            lambda i, o, bias=True: i * o,  # forgets the bias
            lambda i, o, bias=True: i * o + o,  # ignores bias=False
            lambda i, o, bias=True: (i + 1) * (o + 1),  # off by one
        ],
    ),
    "check_conv2d_params": (
        conv2d_params,
        [
            lambda i, o, k, groups=1, bias=True: conv2d_params(i, o, k, 1, bias),  # ignores groups
            lambda i, o, k, groups=1, bias=True: conv2d_params(i, o, k, groups, False),  # forgets the bias
            lambda i, o, k, groups=1, bias=True: (
                o * (i // groups) * (k if isinstance(k, int) else k[0]) ** 2 + (o if bias else 0)
            ),  # square only
        ],
    ),
    "check_linear_macs": (
        linear_macs,
        [
            lambda i, o, batch=1: i * o,  # ignores the batch
            lambda i, o, batch=1: batch * (i * o + o),  # counts bias adds
        ],
    ),
    "check_conv2d_macs": (
        conv2d_macs,
        [
            lambda i, o, k, h, w, stride=1, padding=0, groups=1: o * h * w * (i // groups) * k * k,  # input size for output size
            lambda i, o, k, h, w, stride=1, padding=0, groups=1: conv2d_macs(i, o, k, h, w, stride, padding, 1),  # ignores groups
            lambda i, o, k, h, w, stride=1, padding=0, groups=1: (
                o * ((h + 2 * padding - k) // stride) * ((w + 2 * padding - k) // stride) * (i // groups) * k * k
            ),  # missing +1
            lambda i, o, k, h, w, stride=1, padding=0, groups=1: conv2d_macs(i, o, k, h, w, 1, padding, groups),  # ignores stride
            lambda i, o, k, h, w, stride=1, padding=0, groups=1: (
                o * round((h + 2 * padding - k) / stride + 1) * round((w + 2 * padding - k) / stride + 1) * (i // groups) * k * k
            ),  # rounds instead of floor
        ],
    ),
    "check_linear_forward": (
        linear_forward,
        [
            lambda x, W, b: x @ W.T + b,  # no ReLU
            lambda x, W, b: np.maximum(0, x @ W.T),  # no bias
            lambda x, W, b: (
                np.maximum(0, x @ W + b) if W.shape[0] == W.shape[1] else np.maximum(0, x @ W.T + b)
            ),  # transpose slip on square W
            lambda x, W, b: np.maximum(0, x @ W.T + b).astype(np.float16),  # precision lost
        ],
    ),
    "check_measure_latency": (
        measure,
        [
            lambda f, x, repeats=50, warmup=10, timer=time.perf_counter: measure(f, x, repeats + warmup, 0, timer),  # times the warm-up
            lambda f, x, repeats=50, warmup=10, timer=time.perf_counter: tuple(
                v / 1e3 for v in measure(f, x, repeats, warmup, timer)
            ),  # seconds
            lambda f, x, repeats=50, warmup=10, timer=time.perf_counter: _mean_instead(f, x, repeats, warmup, timer),  # mean
            lambda f, x, repeats=50, warmup=10, timer=time.perf_counter: (measure(f, x, repeats, warmup, timer)[0], 0.0),  # no spread
        ],
    ),
}


def _mean_instead(f, x, repeats, warmup, timer):
    for _ in range(warmup):
        f(x)
    times = []
    for _ in range(repeats):
        t = timer()
        f(x)
        times.append((timer() - t) * 1e3)
    return float(np.mean(times)), float(np.subtract(*np.percentile(times, [75, 25])))


@pytest.mark.parametrize("name", sorted(WRONG))
def test_check_passes_the_reference(name: str, capsys: pytest.CaptureFixture) -> None:
    getattr(checks, name)(WRONG[name][0])
    assert capsys.readouterr().out.startswith(f"PASSED {name}")


@pytest.mark.parametrize("name", sorted(WRONG))
def test_check_rejects_the_blank(name: str) -> None:
    with pytest.raises(NotImplementedError):
        getattr(checks, name)(blank)


@pytest.mark.parametrize(("name", "index"), [(n, i) for n in sorted(WRONG) for i in range(len(WRONG[n][1]))])
def test_check_rejects_a_plausible_wrong_answer(name: str, index: int) -> None:
    with pytest.raises(checks.CheckFailure) as error:
        getattr(checks, name)(WRONG[name][1][index])
    message = str(error.value)
    assert "expected" in message and "got" in message and "hint" in message


def test_every_public_check_is_covered_here() -> None:
    public = {n for n in dir(checks) if n.startswith("check_")}
    assert public == set(WRONG), f"add wrong answers for {sorted(public - set(WRONG))}"


def test_learner_errors_become_check_failures() -> None:
    with pytest.raises(checks.CheckFailure, match="ZeroDivisionError"):
        checks.check_linear_params(lambda i, o, bias=True: 1 // 0)
    with pytest.raises(checks.CheckFailure, match="an int"):
        checks.check_linear_params(lambda i, o, bias=True: "many")
