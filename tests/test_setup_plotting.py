"""helpers.setup, the cache folder and the shared plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.transforms import Bbox

import helpers
from helpers import plotting


def test_setup_seeds_threads_and_returns_device(capsys: pytest.CaptureFixture) -> None:
    before = torch.get_num_threads()
    try:
        device = helpers.setup(seed=5, threads=1)
        assert device.type in {"cpu", "cuda"} and torch.get_num_threads() == 1
        a = (np.random.rand(), torch.rand(1).item())
        helpers.setup(seed=5, threads=1, verbose=False)
        assert (np.random.rand(), torch.rand(1).item()) == a
        out = capsys.readouterr().out
        assert "torch 2.13.0" in out and "threads: 1" in out
        assert matplotlib.rcParams["axes.grid"] is True
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"seed": 1.5}, {"threads": 0}, {"threads": "2"}])
def test_setup_validates(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        helpers.setup(verbose=False, **kwargs)


def test_cache_dir_honours_the_environment(tmp_cache: Path) -> None:
    assert helpers.cache_dir() == tmp_cache and tmp_cache.is_dir()


def test_weight_histogram_and_heatmap_label_their_axes() -> None:
    ax = plotting.weight_histogram(torch.randn(50, 20), drop_zeros=True, log=True)
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    ax = plotting.matrix_heatmap(np.arange(12.0).reshape(3, 4) - 6)
    assert len(ax.texts) == 12 and ax.get_xlabel() and ax.get_ylabel()
    ax = plotting.matrix_heatmap(np.eye(3, dtype=bool))
    assert [t.get_text() for t in ax.texts][:3] == ["1", "0", "0"]
    assert len(plotting.matrix_heatmap(np.zeros((40, 40))).texts) == 0  # too big to annotate by default
    plt.close("all")
    with pytest.raises(ValueError, match="2-d"):
        plotting.matrix_heatmap(np.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        plotting.weight_histogram(np.array([]))


def test_pareto_front_and_plot() -> None:
    rows = [
        {"name": "big", "accuracy": 0.97, "bytes": 1_000_000},
        {"name": "dominated", "accuracy": 0.90, "bytes": 2_000_000},
        {"name": "small", "accuracy": 0.95, "bytes": 100_000},
        {"name": "tiny", "accuracy": 0.80, "bytes": 10_000},
    ]
    assert [r["name"] for r in plotting.pareto_front(rows)] == ["tiny", "small", "big"]
    ax = plotting.pareto_plot(rows)
    assert ax.get_xscale() == "log" and "bytes" in ax.get_xlabel() and "accuracy" in ax.get_ylabel()
    close = plotting.pareto_plot([{"name": "a", "accuracy": 0.931, "bytes": 10}, {"name": "b", "accuracy": 0.932, "bytes": 100}])
    assert close.get_ylim()[1] - close.get_ylim()[0] >= 4.9  # small differences are not magnified
    plt.close("all")
    with pytest.raises(ValueError, match="lacks"):
        plotting.pareto_plot([{"name": "x", "accuracy": 0.5}])
    with pytest.raises(ValueError, match="empty"):
        plotting.pareto_plot([])


def test_pareto_plot_others_are_grey_unlabelled_in_range_and_avoided_by_labels() -> None:
    front = [{"name": "small int8", "accuracy": 0.960, "bytes": 13_000}, {"name": "compact int8", "accuracy": 0.976, "bytes": 26_000}]
    others = [{"accuracy": 0.976, "bytes": b} for b in (28_000, 38_000, 43_000)] + [{"accuracy": 0.940, "bytes": 165_000}]
    ax = plotting.pareto_plot(front, others=others, others_label="not on the front")
    assert ax.get_ylim()[0] < 94.0 < 97.6 < ax.get_ylim()[1]  # the lowest grey point is inside the axes
    assert len(ax.texts) == len(front)  # only the rows are labelled
    assert "not on the front" in [t.get_text() for t in ax.get_legend().get_texts()]
    renderer = ax.figure.canvas.get_renderer()
    for text in ax.texts:
        box = text.get_window_extent(renderer)
        for r in others:
            px, py = ax.transData.transform((r["bytes"], 100 * r["accuracy"]))
            assert not box.overlaps(Bbox.from_extents(px - 4, py - 4, px + 4, py + 4)), f"label {text.get_text()!r} covers a grey point"
    plt.close("all")
    with pytest.raises(ValueError, match="others"):
        plotting.pareto_plot(front, others=[{"bytes": 10}])


def test_prediction_explorer_draws_and_builds() -> None:
    import ipywidgets

    from helpers import widgets
    from helpers.models import LeNet300

    x, y = torch.rand(5, 1, 28, 28), torch.arange(5)
    fig = widgets.draw_predictions({"a": LeNet300(), "b": LeNet300()}, x, y, 3)
    assert len(fig.axes) == 3 and all(ax.get_title() for ax in fig.axes)
    assert fig.axes[1].get_ylabel() == "probability"
    plt.close("all")
    assert fig.axes[0].get_title().startswith("test image 3,")
    plt.close("all")
    torch.manual_seed(0)
    model = LeNet300()
    explorer = widgets.prediction_explorer({"a": model}, x, y)
    assert isinstance(explorer, ipywidgets.Widget)
    slider, only_wrong = explorer.children[0].children
    wrong = [i for i in range(5) if int(model(x[i : i + 1]).argmax()) != i]
    assert list(slider.options) == list(range(5)) and "misclassified" in only_wrong.description
    assert only_wrong.style.description_width == "initial"  # the label is not cut off
    only_wrong.value = True  # the slider now steps through the misclassified images, and shows their real index
    assert list(slider.options) == wrong and slider.value in wrong
    only_wrong.value = False
    assert list(slider.options) == list(range(5))
    plt.close("all")
    with pytest.raises(ValueError, match="index"):
        widgets.draw_predictions({"a": LeNet300()}, x, y, 5)


def test_pruning_explorer_draws_and_builds() -> None:
    import ipywidgets

    from helpers import widgets
    from helpers.models import LeNet300

    torch.manual_seed(0)
    model = LeNet300()
    x, y = torch.rand(20, 1, 28, 28), torch.randint(0, 10, (20,))
    fig = widgets.draw_pruning(model, "fc2", 0.8, (x, y))
    assert "accuracy" in fig._suptitle.get_text() and all(ax.get_title() for ax in fig.axes[:2])
    assert float((model.fc2.weight == 0).float().mean()) == 0.0  # the model itself is untouched
    plt.close("all")
    assert isinstance(widgets.pruning_explorer(model, (x, y)), ipywidgets.Widget)
    plt.close("all")
    with pytest.raises(ValueError, match="layer must be one of"):
        widgets.draw_pruning(model, "fc9", 0.5, (x, y))


def test_quantization_explorer_draws_and_builds() -> None:
    import ipywidgets

    from helpers import widgets

    values = np.random.default_rng(0).standard_normal(1000)
    fig = widgets.draw_quantization(values, 3, 0.5)
    assert "SQNR" in fig.axes[0].get_title() and fig.axes[0].get_xlabel() == "value"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["values", "grid levels", "clipping range"]
    plt.close("all")
    assert isinstance(widgets.quantization_explorer(values), ipywidgets.Widget)
    plt.close("all")
    with pytest.raises(ValueError, match="clip"):
        widgets.draw_quantization(values, 4, 0.0)


def test_low_rank_explorer_draws_and_builds() -> None:
    import ipywidgets

    from helpers import widgets

    image = np.random.default_rng(0).random((20, 30))
    fig = widgets.draw_low_rank(image, 5)
    assert "rank 5" in fig.axes[1].get_title() and fig.axes[0].get_xlabel() == "column"
    plt.close("all")
    assert isinstance(widgets.low_rank_explorer(image), ipywidgets.Widget)
    plt.close("all")
    with pytest.raises(ValueError, match="2-d"):
        widgets.draw_low_rank(np.zeros(5), 1)


def test_choose_threads_honours_argument_environment_and_quota(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert helpers.choose_threads(3) == (3, "asked for")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert helpers.choose_threads() == (1, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(helpers, "available_cores", lambda: 16)
    monkeypatch.setattr(helpers, "cpu_quota", lambda: 2.5)  # a JupyterHub kernel capped at 2.5 cores
    threads, reason = helpers.choose_threads()
    assert threads == 1 and "quota" in reason
    monkeypatch.setattr(helpers, "cpu_quota", lambda: None)
    assert helpers.choose_threads()[0] == 16
    monkeypatch.setattr(helpers, "available_cores", lambda: 2)
    assert helpers.choose_threads()[0] == 1  # a 2-core laptop keeps one core for everything else
    monkeypatch.setattr(helpers, "available_cores", lambda: 1)
    assert helpers.choose_threads()[0] == 1
    for bad in (0, -2, 1.5, "2", True):
        with pytest.raises(ValueError, match="threads"):
            helpers.choose_threads(bad)  # type: ignore[arg-type]


def test_cpu_quota_reads_cgroup_v2_and_v1(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert helpers.cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert helpers.cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert helpers.cpu_quota(tmp_path) == 2.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert helpers.cpu_quota(tmp_path) is None
    assert helpers.cpu_quota(tmp_path / "missing") is None


@pytest.mark.parametrize(
    "rows",
    [
        [("LeNet-300-100", 0.934, 1_069_205), ("LeNet-5", 0.958, 1_727_693)],  # chapter 00: under a decade of bytes
        [
            ("dense", 0.958, 1_727_693),
            ("unstructured ~12x (timed dense; file CSR)", 0.957, 224_000),
            ("structured (smaller dense)", 0.9575, 288_000),
            ("2:4 (timed dense; file packed)", 0.959, 905_000),
        ],  # chapter 02: long labels along a nearly flat front
        [("CNN teacher", 0.958, 1_727_693), ("student", 0.941, 24_717), ("MLP teacher", 0.959, 5_110_037), ("int8 student", 0.939, 7_081)],
    ],
)
def test_pareto_labels_stay_beside_their_points_clear_of_each_other_and_the_front(rows: list) -> None:
    ax = plotting.pareto_plot([{"name": n, "accuracy": a, "bytes": b} for n, a, b in rows])
    renderer = ax.figure.canvas.get_renderer()
    ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert len(ticks) >= 3 and all("B" in t and "times" not in t and "^" not in t for t in ticks), ticks
    assert not any(t.get_text() for t in ax.xaxis.get_minorticklabels())  # minor ticks unlabelled: no 1.4x10^6 pile-up
    boxes = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}
    assert len(boxes) == len(rows)
    line = ax.transData.transform(ax.get_lines()[0].get_xydata())
    for name, accuracy, size in rows:
        box = boxes[name]
        px, py = ax.transData.transform((size, 100 * accuracy))
        gap = max(box.x0 - px, px - box.x1, 0) ** 2 + max(box.y0 - py, py - box.y1, 0) ** 2
        assert gap**0.5 < 30, f"label {name!r} sits {gap**0.5:.0f} px from its point"
        assert all(not box.overlaps(other) for other_name, other in boxes.items() if other_name != name), name
        for a, b in zip(line, line[1:]):
            assert not plotting._segment_hits_box(a, b, box), f"label {name!r} lies on the Pareto line"
        inside = ax.get_window_extent(renderer)
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1, name
    plt.close("all")
