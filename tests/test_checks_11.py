"""Chapter 11 checks: plausible wrong answers are rejected with expected/got/hint, correct alternatives pass."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import numpy as np
import pytest
import torch

from helpers import checks
from helpers import deploy as DP

# ----------------------------------------------------------------------------- agreement


def _agree_ref(logits, reference):
    return DP.agreement(logits, reference)


def _agree_torch(logits, reference):  # torch: argmax also returns the first maximal index
    a, b = torch.from_numpy(np.asarray(logits, dtype=np.float64)), torch.from_numpy(np.asarray(reference, dtype=np.float64))
    return (a.argmax(1) == b.argmax(1)).double().mean().item(), (a - b).abs().max().item()


def _agree_loop(logits, reference):  # plain Python loops
    same, worst = 0, 0.0
    for row_a, row_b in zip(logits.tolist(), reference.tolist()):
        same += row_a.index(max(row_a)) == row_b.index(max(row_b))
        worst = max(worst, max(abs(p - q) for p, q in zip(row_a, row_b)))
    return same / len(logits), worst


def _last_argmax(a):  # the LAST maximal index (argmax of the reversed row)
    return a.shape[1] - 1 - a[:, ::-1].argmax(1)


AGREE_WRONG = [
    lambda a, b: (float(np.mean(a.argmax(0) == b.argmax(0))), float(np.max(np.abs(a - b)))),  # wrong axis
    lambda a, b: (float(np.mean(a.argmax(1) == b.argmax(1))), float(np.mean(np.abs(a - b)))),  # mean, not max
    lambda a, b: (float(np.mean(a.argmax(1) == b.argmax(1))), float(np.max(a - b))),  # signed difference
    lambda a, b: (float(np.sum(a.argmax(1) == b.argmax(1))), float(np.max(np.abs(a - b)))),  # a count
    lambda a, b: (100 * float(np.mean(a.argmax(1) == b.argmax(1))), float(np.max(np.abs(a - b)))),  # a percentage
    lambda a, b: (float(np.mean(_last_argmax(a) == _last_argmax(b))), float(np.max(np.abs(a - b)))),  # ties to the last index
    lambda a, b: (float(np.mean(a.argmax(1) == b.argmax(1))), float(np.max(np.abs(np.subtract(a, b, out=a))))),  # writes into logits
]
AGREE_RIGHT = [_agree_ref, _agree_torch, _agree_loop]

# ----------------------------------------------------------------------------- quantize_linear


def _qlin_ref(x, scale, zp):
    return np.clip(np.rint(x / np.float32(scale)) + zp, 0, 255).astype(np.uint8)


def _qlin_torch(x, scale, zp):  # torch.round rounds half to even too
    q = torch.round(torch.from_numpy(np.asarray(x, dtype=np.float32)) / scale) + zp
    return q.clamp(0, 255).to(torch.uint8).numpy()


def _qlin_float64(x, scale, zp):  # float64 division, np.round (half to even)
    return np.clip(np.round(np.asarray(x, dtype=np.float64) / scale) + zp, 0, 255).astype(np.uint8)


QLIN_WRONG = [
    lambda x, s, z: np.clip(np.floor(x / s + 0.5) + z, 0, 255).astype(np.uint8),  # half up
    lambda x, s, z: np.clip(np.trunc(x / s) + z, 0, 255).astype(np.uint8),  # truncation
    lambda x, s, z: (np.rint(x / s) + z).astype(np.int64).astype(np.uint8),  # no saturation: wraps around
    lambda x, s, z: np.clip(np.rint(x / s + z), 0, 255).astype(np.uint8),  # zero point added before rounding (odd zp ties)
    lambda x, s, z: np.clip(np.sign(x / s) * np.floor(np.abs(x / s) + 0.5) + z, 0, 255).astype(np.uint8),  # half away from zero
    lambda x, s, z: np.clip(np.rint(x / s) + z, 0, 255),  # float result, not uint8
    lambda x, s, z: np.clip(np.rint(x * s) + z, 0, 255).astype(np.uint8),  # multiplies by the scale
    lambda x, s, z: np.clip(np.rint(np.divide(x, s, out=x)) + z, 0, 255).astype(np.uint8),  # divides in place
]
QLIN_RIGHT = [_qlin_ref, _qlin_torch, _qlin_float64]

# ----------------------------------------------------------------------------- round speedup


def _speed_ref(a, b):
    ratios = np.asarray(a) / np.asarray(b)
    p25, p75 = np.percentile(ratios, [25, 75])
    return float(np.median(ratios)), (float(p25), float(p75))


def _speed_torch(a, b):  # torch.quantile interpolates linearly, as np.percentile does
    ratios = torch.from_numpy(np.asarray(a, dtype=np.float64)) / torch.from_numpy(np.asarray(b, dtype=np.float64))
    q = torch.quantile(ratios, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return q[1].item(), (q[0].item(), q[2].item())


def _speed_statistics(a, b):  # statistics module, a loop for the ratios
    ratios = [x / y for x, y in zip(a.tolist(), b.tolist())]
    p25, _, p75 = statistics.quantiles(ratios, n=4, method="inclusive")  # "inclusive" is linear interpolation
    return statistics.median(ratios), (p25, p75)


SPEED_WRONG = [
    lambda a, b: (float(np.median(a) / np.median(b)), tuple(np.percentile(a / b, [25, 75]))),  # ratio of medians
    lambda a, b: _speed_ref(b, a),  # inverted
    lambda a, b: (float(np.mean(a / b)), tuple(np.percentile(a / b, [25, 75]))),  # mean of ratios
    lambda a, b: _speed_ref(np.sort(a), np.sort(b)),  # sorts each list: the rounds are no longer paired
    lambda a, b: (float(np.median(a / b)), (float(np.min(a / b)), float(np.max(a / b)))),  # min..max, not the IQR
    lambda a, b: (float(np.median(a / b)), tuple(np.percentile(a / b, [25, 75], method="nearest"))),  # nearest, not linear
    lambda a, b: _speed_ref(np.divide(a, b, out=a), np.ones_like(b)),  # overwrites the baseline
]
SPEED_RIGHT = [_speed_ref, _speed_torch, _speed_statistics]

# ----------------------------------------------------------------------------- meets_budget


def _budget_ref(rows, flash, ram, latency):
    return DP.meets_budget(rows, DP.Budget(flash, ram, latency))


def _budget_numpy(rows, flash, ram, latency):  # vectorised
    if not rows:
        return []
    cols = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in ("bytes", "ram_bytes", "latency_ms")}
    return list((cols["bytes"] <= flash) & (cols["ram_bytes"] <= ram) & (cols["latency_ms"] <= latency))


def _budget_loop(rows, flash, ram, latency):
    out = []
    for r in rows:
        ok = True
        for key, limit in (("bytes", flash), ("ram_bytes", ram), ("latency_ms", latency)):
            if r[key] > limit:
                ok = False
        out.append(ok)
    return out


def _budget_sorts(rows, flash, ram, latency):  # sorts the caller's list in place first
    rows.sort(key=lambda r: r["bytes"])
    return _budget_ref(rows, flash, ram, latency)


BUDGET_WRONG = [
    lambda rows, f, m, t: [r["bytes"] < f and r["ram_bytes"] < m and r["latency_ms"] < t for r in rows],  # strict <
    lambda rows, f, m, t: [r["bytes"] <= f and r["latency_ms"] <= t for r in rows],  # forgets RAM
    lambda rows, f, m, t: [r["bytes"] <= f and r["ram_bytes"] <= m and r["latency_32_ms"] <= t for r in rows],  # batch 32
    lambda rows, f, m, t: [r["bytes"] <= f or r["ram_bytes"] <= m or r["latency_ms"] <= t for r in rows],  # or
    lambda rows, f, m, t: [i for i, r in enumerate(rows) if r["bytes"] <= f and r["ram_bytes"] <= m and r["latency_ms"] <= t],  # indices
    lambda rows, f, m, t: [r["bytes"] / 1000 <= f and r["ram_bytes"] <= m and r["latency_ms"] <= t for r in rows],  # kB vs bytes
    _budget_sorts,
]
BUDGET_RIGHT = [_budget_ref, _budget_numpy, _budget_loop]

# ----------------------------------------------------------------------------- registration and the tests

CHECK_CASES = {
    "check_agreement": (_agree_ref, AGREE_WRONG, None),
    "check_quantize_linear": (_qlin_ref, QLIN_WRONG, None),
    "check_round_speedup": (_speed_ref, SPEED_WRONG, None),
    "check_meets_budget": (_budget_ref, BUDGET_WRONG, None),
}
CASES: dict[str, tuple[list[Callable], list[Callable]]] = {
    "check_agreement": (AGREE_WRONG, AGREE_RIGHT),
    "check_quantize_linear": (QLIN_WRONG, QLIN_RIGHT),
    "check_round_speedup": (SPEED_WRONG, SPEED_RIGHT),
    "check_meets_budget": (BUDGET_WRONG, BUDGET_RIGHT),
}


@pytest.mark.parametrize(("name", "index"), [(n, i) for n in CASES for i in range(len(CASES[n][0]))])
def test_wrong_answer_is_rejected_with_a_message(name: str, index: int) -> None:
    with pytest.raises(checks.CheckFailure) as error:
        getattr(checks, name)(CASES[name][0][index])
    message = str(error.value)
    assert "expected" in message and "got" in message and "hint" in message, message


@pytest.mark.parametrize(("name", "index"), [(n, i) for n in CASES for i in range(len(CASES[n][1]))])
def test_correct_alternative_passes(name: str, index: int, capsys: pytest.CaptureFixture) -> None:
    getattr(checks, name)(CASES[name][1][index])
    assert capsys.readouterr().out.startswith(f"PASSED {name}")


def test_quantize_linear_names_the_tie_rule() -> None:
    with pytest.raises(checks.CheckFailure, match="half to even"):
        checks.check_quantize_linear(QLIN_WRONG[0])


def test_round_speedup_names_the_ratio_of_medians() -> None:
    with pytest.raises(checks.CheckFailure, match="ratio of the medians"):
        checks.check_round_speedup(SPEED_WRONG[0])


def test_meets_budget_names_the_limit_rule_and_in_place_sorting() -> None:
    with pytest.raises(checks.CheckFailure, match="<="):
        checks.check_meets_budget(BUDGET_WRONG[0])
    with pytest.raises(checks.CheckFailure, match="in place"):
        checks.check_meets_budget(_budget_sorts)
