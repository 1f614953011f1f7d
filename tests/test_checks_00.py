"""Chapter 00's lab checks: plausible wrong answers are rejected with expected / got / hint, correct
alternatives written differently (numpy ints, floats, torch, loops) are accepted."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from helpers import checks


def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _kernel(k) -> tuple[int, int]:
    return (k, k) if isinstance(k, int) else tuple(k)


# ----------------------------------------------------------------------------- parameter counts

LINEAR_PARAMS_WRONG: dict[str, Callable] = {
    "bias per input": lambda i, o, bias=True: i * o + (i if bias else 0),
    "bias adds 1": lambda i, o, bias=True: i * o + (1 if bias else 0),
    "argument named has_bias": lambda i, o, has_bias=True: i * o + (o if has_bias else 0),
    "returns (weights, biases)": lambda i, o, bias=True: (i * o, o if bias else 0),
    "weights and gradients": lambda i, o, bias=True: 2 * (i * o + (o if bias else 0)),
}
LINEAR_PARAMS_RIGHT: dict[str, Callable] = {
    "numpy int64": lambda i, o, bias=True: np.int64(np.prod((o, i))) + o * bias,
    "a real layer": lambda i, o, bias=True: sum(p.numel() for p in nn.Linear(i, o, bias=bias).parameters()),
    "float that is whole": lambda i, o, bias=True: float(i * o + o * bias),
    "torch scalar": lambda i, o, bias=True: torch.tensor(i * o + (o if bias else 0)),
}

CONV_PARAMS_WRONG: dict[str, Callable] = {
    "groups divide the outputs too": lambda i, o, k, groups=1, bias=True: (
        (o // groups) * (i // groups) * math.prod(_kernel(k)) + (o if bias else 0)
    ),
    "a bias per group": lambda i, o, k, groups=1, bias=True: o * (i // groups) * math.prod(_kernel(k)) + (o * groups if bias else 0),
    "always a bias": lambda i, o, k, groups=1, bias=True: o * (i // groups) * math.prod(_kernel(k)) + o,
    "kernel_size assumed to be an int": lambda i, o, k, groups=1, bias=True: o * (i // groups) * k * k + (o if bias else 0),
    "groups squared": lambda i, o, k, groups=1, bias=True: o * i * math.prod(_kernel(k)) // groups**2 + (o if bias else 0),
}
CONV_PARAMS_RIGHT: dict[str, Callable] = {
    "a real layer": lambda i, o, k, groups=1, bias=True: sum(p.numel() for p in nn.Conv2d(i, o, k, groups=groups, bias=bias).parameters()),
    "product of the weight shape": lambda i, o, k, groups=1, bias=True: math.prod((o, i // groups, *_kernel(k))) + o * int(bias),
    "total divided by groups": lambda i, o, k, groups=1, bias=True: i * o * math.prod(_kernel(k)) // groups + (o if bias else 0),
    "numpy": lambda i, o, k, groups=1, bias=True: np.int64(o) * (i // groups) * np.prod(_kernel(k)) + np.int64(o if bias else 0),
}

# ----------------------------------------------------------------------------- MACs

LINEAR_MACS_WRONG: dict[str, Callable] = {
    "counts additions": lambda i, o, batch=1: batch * (i - 1) * o,
    "FLOPs (2 per MAC)": lambda i, o, batch=1: 2 * batch * i * o,
    "batch added, not multiplied": lambda i, o, batch=1: i * o + batch - 1,
    "inputs plus outputs": lambda i, o, batch=1: batch * (i + o),
}
LINEAR_MACS_RIGHT: dict[str, Callable] = {
    "numpy int64": lambda i, o, batch=1: np.int64(batch) * i * o,
    "torch count of weight uses": lambda i, o, batch=1: torch.ones(batch, o, i).sum().long(),
    "a loop": lambda i, o, batch=1: sum(i for _ in range(batch) for _ in range(o)),
}

CONV_MACS_WRONG: dict[str, Callable] = {
    "forgets padding": lambda i, o, k, h, w, stride=1, padding=0, groups=1: (
        o * _conv_out(h, k, stride, 0) * _conv_out(w, k, stride, 0) * (i // groups) * k * k
    ),
    "padding on one side only": lambda i, o, k, h, w, stride=1, padding=0, groups=1: (
        o * ((h + padding - k) // stride + 1) * ((w + padding - k) // stride + 1) * (i // groups) * k * k
    ),
    "ceil instead of floor": lambda i, o, k, h, w, stride=1, padding=0, groups=1: (
        o * (math.ceil((h + 2 * padding - k) / stride) + 1) * (math.ceil((w + 2 * padding - k) / stride) + 1) * (i // groups) * k * k
    ),
    "groups divide the outputs too": lambda i, o, k, h, w, stride=1, padding=0, groups=1: (
        (o // groups) * _conv_out(h, k, stride, padding) * _conv_out(w, k, stride, padding) * (i // groups) * k * k
    ),
    "height used for width": lambda i, o, k, h, w, stride=1, padding=0, groups=1: (
        o * _conv_out(h, k, stride, padding) ** 2 * (i // groups) * k * k
    ),
}
CONV_MACS_RIGHT: dict[str, Callable] = {
    "float floor": lambda i, o, k, h, w, stride=1, padding=0, groups=1: (
        o * (math.floor((h + 2 * padding - k) / stride) + 1) * (math.floor((w + 2 * padding - k) / stride) + 1) * (i * k * k / groups)
    ),
    "shape of a real convolution's output": lambda i, o, k, h, w, stride=1, padding=0, groups=1: (
        nn.Conv2d(i, o, k, stride=stride, padding=padding, groups=groups)(torch.zeros(1, i, h, w)).numel() * (i // groups) * k * k
    ),
}

# ----------------------------------------------------------------------------- numpy forward


def _zeroes_x_after_use(x, W, b):
    out = np.maximum(0.0, x @ W.T + b)
    x[:] = 0  # "frees" the input: the caller's batch is gone
    return out


def _relu_in_place_on_b(x, W, b):
    b += x[:, : len(b)].sum() * 0  # looks harmless, but writes into b (and would broadcast-fail on other shapes)
    np.maximum(b, 0, out=b)
    return np.maximum(0.0, x @ W.T) + b


FORWARD_WRONG: dict[str, Callable] = {
    "ReLU before the bias": lambda x, W, b: np.maximum(0.0, x @ W.T) + b,
    "abs instead of ReLU": lambda x, W, b: np.abs(x @ W.T + b),
    "zeroes x after use": _zeroes_x_after_use,
    "clips the bias in place": _relu_in_place_on_b,
    "W @ x.T (outputs by batch)": lambda x, W, b: np.maximum(0.0, W @ x.T + b[:, None]),
    "integer result": lambda x, W, b: np.maximum(0.0, x @ W.T + b).astype(np.int64),
    # the exercise says numpy only, and the next lab cell feeds the result back into numpy (h @ W.T): a tensor is rejected
    "torch F.linear, returns a tensor": lambda x, W, b: torch.relu(
        nn.functional.linear(torch.from_numpy(x), torch.from_numpy(W), torch.from_numpy(b))
    ),
    "numpy maths, wrapped in torch.from_numpy": lambda x, W, b: torch.relu(torch.from_numpy(x @ W.T + b)),
    "a nested list": lambda x, W, b: np.maximum(0.0, x @ W.T + b).tolist(),
}
FORWARD_RIGHT: dict[str, Callable] = {
    "torch F.linear, converted back with .numpy()": lambda x, W, b: torch.relu(
        nn.functional.linear(torch.from_numpy(x), torch.from_numpy(W), torch.from_numpy(b))
    ).numpy(),
    "float64 einsum": lambda x, W, b: np.clip(np.einsum("nk,mk->nm", x.astype(np.float64), W.astype(np.float64)) + b, 0, None),
    "in place on its own output": lambda x, W, b: (lambda y: (np.add(y, b, out=y), np.maximum(y, 0, out=y))[1])(x @ W.T),
    "np.where": lambda x, W, b: np.where(x @ W.T + b > 0, x @ W.T + b, 0.0),
}

# ----------------------------------------------------------------------------- latency


def _times(f, x, repeats, warmup, timer):
    for _ in range(warmup):
        f(x)
    out = []
    for _ in range(repeats):
        t = timer()
        f(x)
        out.append((timer() - t) * 1e3)
    return np.array(out)


LATENCY_WRONG: dict[str, Callable] = {
    "std instead of IQR": lambda f, x, repeats=50, warmup=10, timer=time.perf_counter: (
        float(np.median(t := _times(f, x, repeats, warmup, timer))),
        float(t.std()),
    ),
    "max - min instead of IQR": lambda f, x, repeats=50, warmup=10, timer=time.perf_counter: (
        float(np.median(t := _times(f, x, repeats, warmup, timer))),
        float(np.ptp(t)),
    ),
    "torch.median (the lower middle value)": lambda f, x, repeats=50, warmup=10, timer=time.perf_counter: (
        float(torch.median(torch.tensor(t := _times(f, x, repeats, warmup, timer)))),
        float(np.subtract(*np.percentile(t, [75, 25]))),
    ),
    "ignores the timer argument": lambda f, x, repeats=50, warmup=10, timer=time.perf_counter: (
        float(np.median(t := _times(f, x, repeats, warmup, time.perf_counter))),
        float(np.subtract(*np.percentile(t, [75, 25]))),
    ),
    "one call short": lambda f, x, repeats=50, warmup=10, timer=time.perf_counter: (
        float(np.median(t := _times(f, x, repeats - 1, warmup, timer))),
        float(np.subtract(*np.percentile(t, [75, 25]))),
    ),
    "IQR reversed (25th - 75th)": lambda f, x, repeats=50, warmup=10, timer=time.perf_counter: (
        float(np.median(t := _times(f, x, repeats, warmup, timer))),
        float(np.subtract(*np.percentile(t, [25, 75]))),
    ),
}
LATENCY_RIGHT: dict[str, Callable] = {
    "statistics.median and np.quantile": lambda f, x, repeats=50, warmup=10, timer=time.perf_counter: (
        statistics.median((t := _times(f, x, repeats, warmup, timer)).tolist()),
        float(np.quantile(t, 0.75) - np.quantile(t, 0.25)),
    ),
    "torch.quantile": lambda f, x, repeats=50, warmup=10, timer=time.perf_counter: tuple(
        (
            q := torch.quantile(
                torch.tensor(_times(f, x, repeats, warmup, timer), dtype=torch.float64),
                torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64),
            )
        )[[1, 2]]
        - torch.tensor([0.0, float(q[0])], dtype=torch.float64)
    ),
    "all calls timed, warm-up sliced off": lambda f, x, repeats=50, warmup=10, timer=time.perf_counter: (
        float(np.median(t := _times(f, x, repeats + warmup, 0, timer)[warmup:])),
        float(np.percentile(t, 75) - np.percentile(t, 25)),
    ),
}

CASES = {
    "check_linear_params": (LINEAR_PARAMS_WRONG, LINEAR_PARAMS_RIGHT),
    "check_conv2d_params": (CONV_PARAMS_WRONG, CONV_PARAMS_RIGHT),
    "check_linear_macs": (LINEAR_MACS_WRONG, LINEAR_MACS_RIGHT),
    "check_conv2d_macs": (CONV_MACS_WRONG, CONV_MACS_RIGHT),
    "check_linear_forward": (FORWARD_WRONG, FORWARD_RIGHT),
    "check_measure_latency": (LATENCY_WRONG, LATENCY_RIGHT),
}


@pytest.mark.parametrize(("check", "name"), [(c, n) for c, (wrong, _) in CASES.items() for n in wrong])
def test_check_rejects(check: str, name: str) -> None:
    with pytest.raises(checks.CheckFailure) as caught:
        getattr(checks, check)(CASES[check][0][name])
    message = str(caught.value)
    assert ("expected" in message and "hint" in message) or "your function raised" in message, message


@pytest.mark.parametrize(("check", "name"), [(c, n) for c, (_, right) in CASES.items() for n in right])
def test_check_accepts(check: str, name: str, capsys: pytest.CaptureFixture) -> None:
    getattr(checks, check)(CASES[check][1][name])
    assert capsys.readouterr().out.startswith(f"PASSED {check}")


def test_linear_forward_names_the_mutated_input() -> None:
    with pytest.raises(checks.CheckFailure, match="`x` changed in place"):
        checks.check_linear_forward(_zeroes_x_after_use)


def test_linear_forward_says_numpy_when_given_a_tensor() -> None:
    with pytest.raises(checks.CheckFailure, match="return a numpy array"):
        checks.check_linear_forward(FORWARD_WRONG["numpy maths, wrapped in torch.from_numpy"])
