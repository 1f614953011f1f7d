"""The scorecard metrics: counts, bytes, MACs, latency."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import metrics
from helpers.models import LeNet5, LeNet300


def test_mac_counts_are_exact_for_the_reference_models() -> None:
    assert metrics.count_macs(LeNet300(), (1, 1, 28, 28)) == 266_200
    assert metrics.count_macs(LeNet5(), (1, 1, 28, 28)) == 2_293_000
    assert metrics.mac_table(LeNet5(), (1, 1, 28, 28)) == {"conv1": 288_000, "conv2": 1_600_000, "fc1": 400_000, "fc2": 5_000}


def test_macs_scale_with_batch_and_handle_groups_stride_padding() -> None:
    assert metrics.count_macs(LeNet300(), (8, 1, 28, 28)) == 8 * 266_200
    depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
    assert metrics.count_macs(depthwise, (1, 16, 10, 10)) == 16 * 10 * 10 * 9
    grouped = nn.Conv2d(8, 12, 3, stride=2, groups=4)
    out = (9 - 3) // 2 + 1
    assert metrics.count_macs(grouped, (1, 8, 9, 9)) == 12 * out * out * (8 // 4) * 9
    conv1d = nn.Conv1d(4, 6, 5)
    assert metrics.count_macs(conv1d, (2, 4, 20)) == 2 * 6 * 16 * 4 * 5


def test_macs_count_a_reused_layer_twice() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc(x))

    assert metrics.count_macs(Twice(), (1, 4)) == 32


@pytest.mark.parametrize("shape", [(784,), (1, 0, 28, 28), (1.0, 1, 28, 28), ()])
def test_macs_reject_bad_shapes(shape: tuple) -> None:
    with pytest.raises(ValueError, match="input_shape"):
        metrics.count_macs(LeNet300(), shape)


def test_macs_leave_no_hooks_and_keep_mode() -> None:
    model = LeNet5().train()
    metrics.count_macs(model, (1, 1, 28, 28))
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())


def test_counts_and_nonzeros() -> None:
    model = LeNet300()
    assert metrics.count_nonzero(model) == metrics.count_parameters(model)
    with torch.no_grad():
        model.fc1.weight[:10].zero_()
    assert metrics.count_nonzero(model) == 266_610 - 10 * 784
    model.fc3.requires_grad_(False)
    assert metrics.count_parameters(model, trainable_only=True) == 266_610 - 1010
    with pytest.raises(TypeError, match="Module"):
        metrics.count_parameters(torch.zeros(3))  # type: ignore[arg-type]


def test_serialized_size_is_the_real_torch_save_size(tmp_path: Path) -> None:
    model = LeNet300()
    # torch.save prefixes every entry of its zip archive with the file's stem; in memory it uses
    # "archive", so a file named archive.pt has exactly the in-memory size.
    path = tmp_path / "archive.pt"
    torch.save(model.state_dict(), path)
    assert metrics.serialized_size(model) == path.stat().st_size
    assert metrics.serialized_size(path) == path.stat().st_size
    assert metrics.serialized_size(str(path)) == path.stat().st_size
    assert 4 * 266_610 < metrics.serialized_size(model) < 4 * 266_610 + 16_384
    assert metrics.serialized_size(b"12345") == 5
    array = np.zeros(100, dtype=np.int8)
    buffer = io.BytesIO()
    np.save(buffer, array)
    assert metrics.serialized_size(array) == len(buffer.getvalue())
    with pytest.raises(FileNotFoundError):
        metrics.serialized_size(tmp_path / "missing.pt")


def test_compressed_size_sees_zeros() -> None:
    dense = LeNet300()
    sparse = LeNet300()
    with torch.no_grad():
        for p in sparse.parameters():
            p.mul_(torch.rand_like(p) < 0.1)
    assert metrics.serialized_size(sparse) == metrics.serialized_size(dense)
    assert metrics.serialized_size(sparse, compress=True) < 0.5 * metrics.serialized_size(dense, compress=True)


def test_compression_ratio() -> None:
    assert metrics.compression_ratio(100, 25) == 4.0
    for bad in [(0, 1), (1, 0), (-1, 2)]:
        with pytest.raises(ValueError, match="before and after"):
            metrics.compression_ratio(*bad)


def test_measure_latency_with_a_scripted_clock() -> None:
    now = [0.0]
    durations = iter([9.0, 9.0] + [0.001, 0.003, 0.002, 0.010, 0.002])

    def work(_x: object) -> None:
        now[0] += next(durations)

    result = metrics.measure_latency(work, None, repeats=5, warmup=2, timer=lambda: now[0])
    assert result.median_ms == pytest.approx(2.0)
    assert result.iqr_ms == pytest.approx(3.0 - 2.0)
    assert result.min_ms == pytest.approx(1.0)
    assert len(result.times_ms) == 5
    assert "ms" in str(result)


def test_measure_latency_restores_threads_and_mode() -> None:
    model = LeNet300().train()
    before = torch.get_num_threads()
    result = metrics.measure_latency(model, torch.zeros(4, 1, 28, 28), repeats=3, warmup=1, threads=1)
    assert result.threads == 1 and torch.get_num_threads() == before and model.training
    assert result.median_ms > 0


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}, {"threads": 0}, {"repeats": 2.5}])
def test_measure_latency_validates(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        metrics.measure_latency(LeNet300(), torch.zeros(1, 784), **kwargs)


def test_scorecard_rows_and_table() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    small = LeNet300()
    card = metrics.scorecard({"a": small, "b": LeNet5()}, (x, y), latency_batch=16, repeats=3, warmup=1, overrides={"b": {"bytes": 1000}})
    assert [row["name"] for row in card] == ["a", "b"]
    assert card[0]["params"] == 266_610 and card[1]["macs"] == 2_293_000
    assert card[1]["bytes"] == 1000 and card[1]["size_ratio"] == pytest.approx(card[0]["bytes"] / 1000)
    assert 0.0 <= card[0]["accuracy"] <= 1.0 and card[0]["latency_ms"] > 0
    table = str(card)
    assert "bytes on disk" in table and "266,610" in table and len(table.splitlines()) == 4
    assert card._repr_markdown_().count("\n") == 3
    assert " same" in table.splitlines()[2] and "x smaller" in table.splitlines()[3]
    assert [metrics.size_vs_first(r) for r in (6.0, 1.001, 0.62)] == ["6.00x smaller", "same", "1.61x larger"]
    with pytest.raises(ValueError, match="overrides"):
        metrics.scorecard({"a": small}, (x, y), overrides={"zzz": {}})
    with pytest.raises(ValueError, match="models"):
        metrics.scorecard({}, (x, y))
    untimed = metrics.scorecard({"a": small}, (x, y), latency=False)
    assert untimed[0]["latency_ms"] is None and "-" in str(untimed).splitlines()[-1]
    with pytest.raises(ValueError, match="repeats"):
        metrics.scorecard({"a": small}, (x, y), repeats=0)


def test_compare_latency_interleaves_rounds_and_cancels_a_load_burst() -> None:
    # A scripted clock: "fast" costs 1 ms and "slow" 4 ms, but rounds 3-5 run under a load that
    # doubles every cost. Per-round ratios stay 4x; the medians of each candidate alone do not.
    now = [0.0]
    calls = {"fast": 0, "slow": 0}
    order: list[str] = []

    def make(name: str, cost_ms: float):
        def run(x: object) -> None:
            calls[name] += 1
            order.append(name)
            round_index = (calls[name] - 4) // 2  # after 3 warm-up calls, 2 calls per round
            now[0] += cost_ms * 1e-3 * (2.0 if 3 <= round_index <= 5 else 1.0)

        return run

    result = metrics.compare_latency(
        {"slow": make("slow", 4.0), "fast": make("fast", 1.0)}, None, rounds=9, calls=2, warmup=3, timer=lambda: now[0]
    )
    assert calls == {"slow": 3 + 9 * 2, "fast": 3 + 9 * 2}
    assert np.allclose(result.ratios("slow", "fast"), 4.0) and result.speedup("slow", "fast") == pytest.approx(4.0)
    assert result.speedup_range("slow", "fast") == pytest.approx((4.0, 4.0))
    assert result.median_ms("fast") == pytest.approx(1.0) and result.spread_ms("fast")[1] == pytest.approx(2.0)
    assert order[6:10] == ["slow", "slow", "fast", "fast"] and order[10:14] == ["fast", "fast", "slow", "slow"]  # rotated
    assert "speedup" in result.table() and "9 rounds" in str(result)
    with pytest.raises(KeyError, match="candidates"):
        result.speedup("slow", "nope")


def test_compare_latency_takes_own_inputs_restores_threads_and_validates() -> None:
    model = LeNet300().train()
    before = torch.get_num_threads()
    result = metrics.compare_latency(
        {"a": model, "b": (lambda v: v.sum(), torch.ones(3))}, torch.zeros(2, 1, 28, 28), rounds=3, calls=1, warmup=0, threads=1
    )
    assert model.training and torch.get_num_threads() == before and result.threads == 1
    assert len(result.rounds_ms["a"]) == 3
    for kwargs in ({"rounds": 2}, {"calls": 0}, {"warmup": -1}, {"threads": 0}):
        with pytest.raises(ValueError):
            metrics.compare_latency({"a": model}, torch.zeros(1, 784), **kwargs)
    with pytest.raises(ValueError, match="empty"):
        metrics.compare_latency({}, None)
    with pytest.raises(TypeError, match="callable"):
        metrics.compare_latency({"a": 3}, None)  # type: ignore[dict-item]


def test_compare_latency_can_time_training_steps() -> None:
    model = LeNet300()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))

    def step(_: object) -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    result = metrics.compare_latency({"step": step}, None, rounds=3, calls=1, warmup=0, inference=False)
    assert len(result.rounds_ms["step"]) == 3 and model.fc1.weight.grad is not None
