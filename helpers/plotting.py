"""The shared figure styles: weight histograms, matrix heatmaps and the accuracy-vs-bytes Pareto plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes

COURSE_STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 100,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.frameon": False,
}


def use_course_style() -> None:
    """Apply the course's matplotlib defaults (called by :func:`helpers.setup`)."""
    matplotlib.rcParams.update(COURSE_STYLE)


def _as_numpy(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _axes(ax: Axes | None) -> Axes:
    return ax if ax is not None else plt.subplots()[1]


def weight_histogram(
    weights: np.ndarray | torch.Tensor,
    ax: Axes | None = None,
    bins: int = 100,
    title: str = "Weight distribution",
    drop_zeros: bool = False,
    log: bool = False,
    label: str | None = None,
) -> Axes:
    """Histogram of the values of a weight tensor (any shape).

    ``drop_zeros`` hides exact zeros (pruned weights would otherwise dwarf the rest); ``log``
    uses a log count axis.
    """
    values = _as_numpy(weights).ravel()
    if values.size == 0:
        raise ValueError("weights is empty")
    if drop_zeros:
        values = values[values != 0]
    ax = _axes(ax)
    ax.hist(values, bins=bins, log=log, alpha=0.8, label=label)
    ax.set_xlabel("weight value")
    ax.set_ylabel("count (log)" if log else "count")
    ax.set_title(title)
    if label is not None:
        ax.legend()
    return ax


def matrix_heatmap(
    matrix: np.ndarray | torch.Tensor,
    ax: Axes | None = None,
    title: str = "Matrix",
    annotate: bool | None = None,
    fmt: str = "{:.2f}",
    cmap: str = "RdBu_r",
    xlabel: str = "input (column)",
    ylabel: str = "output (row)",
) -> Axes:
    """A 2-d array (e.g. a weight matrix or a mask) as a heatmap, with values written in the cells.

    Values are written when ``annotate`` is True, or by default when the matrix has at most
    16x16 entries. A boolean mask is drawn in grey levels (kept = dark).
    """
    data = _as_numpy(matrix)
    if data.ndim != 2:
        raise ValueError(f"matrix must be 2-d, got shape {data.shape}")
    if data.size == 0:
        raise ValueError("matrix is empty")
    ax = _axes(ax)
    if data.dtype == bool:
        image = ax.imshow(data.astype(float), cmap="Greys", vmin=0, vmax=1)
    else:
        bound = float(np.abs(data).max()) or 1.0
        image = ax.imshow(data, cmap=cmap, vmin=-bound, vmax=bound)
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if annotate is None:
        annotate = data.shape[0] <= 16 and data.shape[1] <= 16
    if annotate:
        for (row, col), value in np.ndenumerate(data):
            text = str(int(value)) if data.dtype == bool else fmt.format(value)
            ax.text(col, row, text, ha="center", va="center", fontsize=7, color="tab:orange" if data.dtype == bool else "black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(False)
    return ax


def pareto_front(rows: Sequence[Mapping]) -> list[Mapping]:
    """The rows no other row beats on both axes (higher ``accuracy`` and fewer ``bytes``), sorted by bytes."""
    ordered = sorted(rows, key=lambda r: (r["bytes"], -r["accuracy"]))
    front: list[Mapping] = []
    best = -np.inf
    for row in ordered:
        if row["accuracy"] > best:
            front.append(row)
            best = row["accuracy"]
    return front


def pareto_plot(
    rows: Sequence[Mapping],
    ax: Axes | None = None,
    title: str = "Accuracy vs size on disk",
    front: bool = True,
    others: Sequence[Mapping] = (),
    others_label: str | None = None,
) -> Axes:
    """Accuracy (%) against bytes on disk (log x) for rows with ``name``, ``accuracy`` (0..1), ``bytes``.

    Rows may be the dicts of :func:`helpers.metrics.scorecard`. Each chapter adds its points; the
    dashed line joins the Pareto front (the best accuracy reachable at each size).
    ``others``: more rows (``accuracy``, ``bytes``) drawn as small grey points without labels (e.g. everything
    not on a front); the labels of ``rows`` keep clear of them, and the y range includes them. ``others_label``
    names them in the legend.
    """
    if not rows:
        raise ValueError("rows is empty")
    for row in rows:
        missing = {"name", "accuracy", "bytes"} - set(row)
        if missing:
            raise ValueError(f"each row needs name, accuracy and bytes; {row!r} lacks {sorted(missing)}")
    for row in others:
        if not isinstance(row, Mapping) or {"accuracy", "bytes"} - set(row):
            raise ValueError(f"each row of others needs accuracy and bytes; got {row!r}")
    ax = _axes(ax)
    if others:
        grey = ([r["bytes"] for r in others], [100 * r["accuracy"] for r in others])
        ax.scatter(*grey, color="lightgrey", s=30, zorder=2, label=others_label)
    for row in rows:
        ax.scatter(row["bytes"], 100 * row["accuracy"], s=40, zorder=3)
    best = pareto_front(rows) if front else []
    if len(best) > 1:  # one point alone dominates the rest: no line to draw, so no legend entry for one
        ax.plot([r["bytes"] for r in best], [100 * r["accuracy"] for r in best], "k--", alpha=0.5, label="Pareto front")
    if len(best) > 1 or (others and others_label):
        ax.legend(loc="lower right")
    ax.set_xscale("log")
    accuracies = [100 * row["accuracy"] for row in [*rows, *others]]
    low, high = min(accuracies), max(accuracies)
    if high - low < 4.0:  # do not magnify differences of a few tenths of a point into a cliff
        middle = (high + low) / 2
        ax.set_ylim(middle - 2.5, middle + 2.5)
    ax.set_xlabel("bytes on disk (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.margins(x=0.08)
    _byte_ticks(ax)
    segments = [((a["bytes"], 100 * a["accuracy"]), (b["bytes"], 100 * b["accuracy"])) for a, b in zip(best, best[1:])]
    obstacles = [(row["bytes"], 100 * row["accuracy"]) for row in others]
    _place_labels(ax, [(row["bytes"], 100 * row["accuracy"], str(row["name"])) for row in rows], segments, obstacles)
    return ax


def format_bytes(value: float) -> str:
    """A byte count as a short tick label: ``1.5 MB``, ``200 kB``, ``950 B`` (decimal units)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{float(f'{value / size:.3g}'):g} {unit}"
    return f"{float(f'{value:.3g}'):g} B"


def _byte_ticks(ax: Axes, fewest: int = 3) -> None:
    """Label the log x-axis with plain byte sizes, choosing the coarsest of 1-2-5 / 1..9 / 0.1-step ticks giving ``fewest`` labels.

    Matplotlib's default labels every minor tick as ``1.4x10^6`` when the range is under a decade, and those run into each
    other; here the minor ticks stay unlabelled and the labelled ones are spaced on a readable grid.
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    lo, hi = ax.get_xlim()
    if lo <= 0 or hi <= lo:  # nothing sensible to place (a single point of size 0 cannot be on a log axis anyway)
        return
    decades = range(int(np.floor(np.log10(lo))) - 1, int(np.ceil(np.log10(hi))) + 1)
    grids = ([1.0], [1.0, 2.0, 5.0], [float(m) for m in range(1, 10)], [m / 10 for m in range(10, 100)])
    ticks: list[float] = []
    for mantissas in grids:
        ticks = sorted({float(f"{m * 10.0**d:.3g}") for d in decades for m in mantissas if lo <= m * 10.0**d <= hi})
        if len(ticks) >= fewest:
            break
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: format_bytes(value)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo, hi)


def _segment_hits_box(p: np.ndarray, q: np.ndarray, box) -> bool:  # noqa: ANN001 - a matplotlib Bbox
    """Whether the display-space segment p-q passes through ``box`` (Liang-Barsky clipping)."""
    t0, t1 = 0.0, 1.0
    d = q - p
    for delta, start, low, high in ((d[0], p[0], box.x0, box.x1), (d[1], p[1], box.y0, box.y1)):
        if delta == 0:
            if start < low or start > high:
                return False
            continue
        ta, tb = sorted(((low - start) / delta, (high - start) / delta))
        t0, t1 = max(t0, ta), min(t1, tb)
        if t0 > t1:
            return False
    return True


def _place_labels(
    ax: Axes,
    points: Sequence[tuple[float, float, str]],
    segments: Sequence[tuple[tuple[float, float], tuple[float, float]]] = (),
    obstacles: Sequence[tuple[float, float]] = (),
) -> None:
    """Annotate each (x, y, text) point beside its marker.

    Each label tries the positions around its marker (right, left, above, below, the diagonals, then the same a little
    further out) and takes the first that overlaps no marker (of ``points`` or of the unlabelled ``obstacles``), no
    earlier label and no segment of the front line, and stays inside the axes; when none is free it takes the one with
    the fewest collisions, so it never drifts away from its point.
    """
    figure = ax.figure
    renderer = figure.canvas.get_renderer() if hasattr(figure.canvas, "get_renderer") else figure._get_renderer()
    inside = ax.get_window_extent(renderer)
    from matplotlib.transforms import Bbox

    placed: list = []  # the markers first, so that labels avoid them too
    for x, y in [(x, y) for x, y, _ in points] + list(obstacles):
        px, py = ax.transData.transform((x, y))
        placed.append(Bbox.from_extents(px - 5, py - 5, px + 5, py + 5))
    lines = [(ax.transData.transform(a), ax.transData.transform(b)) for a, b in segments]
    # (dx, dy) in points, horizontal and vertical alignment of the text against that offset
    ring = [
        ((6, -3), "left", "baseline"),
        ((-6, -3), "right", "baseline"),
        ((0, 6), "center", "bottom"),
        ((0, -7), "center", "top"),
        ((5, 5), "left", "bottom"),
        ((-5, 5), "right", "bottom"),
        ((5, -6), "left", "top"),
        ((-5, -6), "right", "top"),
    ]
    flush = [((4, 6), "right", "bottom"), ((-4, 6), "left", "bottom"), ((4, -7), "right", "top"), ((-4, -7), "left", "top")]
    candidates = ring + flush + [((2 * dx, 2 * dy), ha, va) for (dx, dy), ha, va in ring[2:] + flush]
    for x, y, text in sorted(points, key=lambda p: (p[0], p[1])):
        label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(0, 0), fontsize=9)
        width = label.get_window_extent(renderer).width * 72 / figure.dpi  # in points
        # above and below, also slid sideways (the label still spans the marker's x)
        slid = [((shift * width, dy), "center", va) for dy, va in ((6, "bottom"), (-7, "top")) for shift in (0.3, -0.3, 0.42, -0.42)]
        best_cost, best_choice, best_box = None, candidates[0], None
        for choice in candidates[:12] + slid + candidates[12:]:
            offset, ha, va = choice
            label.set_position(offset)
            label.set_ha(ha)
            label.set_va(va)
            box = label.get_window_extent(renderer).padded(3.0)
            outside = not (inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1)
            cost = 10 * outside + 3 * sum(box.overlaps(other) for other in placed) + sum(_segment_hits_box(p, q, box) for p, q in lines)
            if best_cost is None or cost < best_cost:
                best_cost, best_choice, best_box = cost, choice, box
            if cost == 0:
                break
        offset, ha, va = best_choice
        label.set_position(offset)
        label.set_ha(ha)
        label.set_va(va)
        placed.append(best_box)
