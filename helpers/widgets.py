"""ipywidgets explorers used in the lectures.

Each explorer returns a widget to display in JupyterLab; its drawing function is also exposed
(``draw_*``) so that it can be called and tested without a browser.
"""

from __future__ import annotations

from collections.abc import Mapping

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn


def draw_predictions(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, index: int) -> Figure:
    """The test image ``x[index]`` (shape (N, 1, 28, 28)) and each model's softmax probabilities for it."""
    if not models:
        raise ValueError("models is empty")
    if not 0 <= index < len(x):
        raise ValueError(f"index must be in [0, {len(x) - 1}], got {index}")
    fig, axes = plt.subplots(1, 1 + len(models), figsize=(3.2 * (1 + len(models)), 2.8))
    axes[0].imshow(x[index, 0].numpy(), cmap="gray_r")
    axes[0].set_title(f"test image {index}, label {int(y[index])}")
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    for ax, (name, model) in zip(axes[1:], models.items()):
        model.eval()
        with torch.no_grad():
            probs = torch.softmax(model(x[index : index + 1]), dim=1)[0]
        colors = ["tab:green" if d == int(y[index]) else "tab:blue" for d in range(10)]
        ax.bar(range(10), probs.numpy(), color=colors)
        ax.set_xticks(range(10))
        ax.set_ylim(0, 1)
        ax.set_xlabel("digit (green: true label)")
        ax.set_ylabel("probability")
        ax.set_title(f"{name}: predicts {int(probs.argmax())}")
    fig.tight_layout()
    return fig


def prediction_explorer(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor) -> widgets.Widget:
    """A slider over the test images that shows each model's predicted probabilities.

    The slider's value is the image index shown in the figure's title; ticking the box restricts the
    slider to the images that at least one model gets wrong.
    """
    with torch.no_grad():
        wrong = torch.zeros(len(x), dtype=torch.bool)
        for model in models.values():
            wrong |= model.eval()(x).argmax(1) != y
    all_indices = list(range(len(x)))
    wrong_indices = torch.nonzero(wrong).flatten().tolist()
    slider = widgets.SelectionSlider(options=all_indices, value=0, description="test image", continuous_update=False,
                                     style={"description_width": "initial"})
    wrong_only = widgets.Checkbox(value=False, description=f"only misclassified ({len(wrong_indices)})", indent=False,
                                  style={"description_width": "initial"}, layout=widgets.Layout(width="auto"))

    def restrict(change: dict) -> None:
        options = wrong_indices if change["new"] and wrong_indices else all_indices
        current = slider.value
        slider.options = options
        slider.value = current if current in options else options[0]

    wrong_only.observe(restrict, names="value")

    def show(index: int) -> None:
        draw_predictions(models, x, y, index)
        plt.show()

    output = widgets.interactive_output(show, {"index": slider})
    return widgets.VBox([widgets.HBox([slider, wrong_only]), output])


def draw_pruning(
    model: nn.Module,
    layer: str,
    sparsity: float,
    data: tuple[torch.Tensor, torch.Tensor],
    corner: int = 20,
    split: str = "validation",
) -> Figure:
    """One-shot magnitude pruning of ``layer`` at ``sparsity``: the kept weights' histogram, the mask on the
    ``corner`` outputs x ``corner`` inputs with the largest total |w| (the block that matters, not a blank
    border), for a layer fed by 28 x 28 pixels the kept fraction of each pixel's weights as an image, and the
    accuracy on ``data`` (named ``split`` in the title) of the pruned copy, without fine-tuning."""
    import copy

    from .plotting import matrix_heatmap, weight_histogram
    from .pruning import apply_masks, magnitude_mask, prunable_weights
    from .train import evaluate

    weights = prunable_weights(model)
    if layer not in weights:
        raise ValueError(f"layer must be one of {sorted(weights)}, got {layer!r}")
    pruned = copy.deepcopy(model)
    mask = magnitude_mask(prunable_weights(pruned)[layer].detach(), sparsity)
    apply_masks(pruned, {layer: mask})
    accuracy = evaluate(pruned, data)
    weight = prunable_weights(pruned)[layer].detach().flatten(1)
    dense = weights[layer].detach().abs().flatten(1)  # (outputs, inputs) of the unpruned layer
    rows = torch.sort(torch.topk(dense.sum(1), min(corner, dense.shape[0])).indices).values
    cols = torch.sort(torch.topk(dense.sum(0), min(corner, dense.shape[1])).indices).values
    pixels = dense.shape[1] == 28 * 28
    fig, axes = plt.subplots(1, 3 if pixels else 2, figsize=(14 if pixels else 10, 3.8))
    weight_histogram(weight, ax=axes[0], drop_zeros=True, title=f"{layer}: kept weights at sparsity {sparsity:.0%}")
    matrix_heatmap(
        mask.flatten(1)[rows][:, cols],
        ax=axes[1],
        annotate=False,
        title=f"mask of the {len(rows)} x {len(cols)} block with the largest |w|\n(dark = kept)",
        xlabel=f"the {len(cols)} inputs with the largest total |w|",
        ylabel=f"the {len(rows)} outputs with the largest total |w|",
    )
    if pixels:
        kept = mask.flatten(1).float().mean(0).reshape(28, 28).numpy()
        image = axes[2].imshow(kept, cmap="Greys", vmin=0, vmax=max(float(kept.max()), 1e-6))
        axes[2].set_title("kept fraction of each input pixel's weights\n(colour scale up to the largest)")
        axes[2].set_xticks([])
        axes[2].set_yticks([])
        fig.colorbar(image, ax=axes[2], fraction=0.046)
    fig.suptitle(f"{split} accuracy after pruning {layer} alone, no fine-tuning: {accuracy:.2%}")
    fig.tight_layout()
    return fig


def pruning_explorer(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], split: str = "validation") -> widgets.Widget:
    """A sparsity slider and a layer menu over :func:`draw_pruning`; ``split`` names ``data`` in the title."""
    from .pruning import prunable_weights

    layers = list(prunable_weights(model))
    sparsity = widgets.FloatSlider(value=0.9, min=0.0, max=0.99, step=0.01, description="sparsity", continuous_update=False)
    layer = widgets.Dropdown(options=layers, value=layers[0], description="layer")

    def show(layer: str, sparsity: float) -> None:
        draw_pruning(model, layer, sparsity, data, split=split)
        plt.show()

    output = widgets.interactive_output(show, {"layer": layer, "sparsity": sparsity})
    return widgets.VBox([widgets.HBox([layer, sparsity]), output])


def draw_quantization(values: np.ndarray | torch.Tensor, bits: int, clip: float) -> Figure:
    """Histogram of ``values`` with the ``bits``-bit symmetric grid clipped at ``clip`` x max|v|, and the
    error it makes (SQNR in dB)."""
    from . import quantization as Q

    v = values.detach().cpu().numpy().ravel() if isinstance(values, torch.Tensor) else np.asarray(values).ravel()
    if not 0 < clip <= 1:
        raise ValueError(f"clip must be in (0, 1], got {clip}")
    amax = float(np.abs(v).max()) * clip
    scale, zp = Q.qparams(-amax, amax, bits, symmetric=True)
    v_hat = Q.fake_quantize(v, scale, zp, bits)
    qmin, qmax = Q.qrange(bits)
    grid = (np.arange(qmin, qmax + 1) - zp) * scale
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.hist(v, bins=200, alpha=0.7, label="values")
    if len(grid) <= 64:
        for j, g in enumerate(grid):
            ax.axvline(g, color="tab:red", alpha=0.35, linewidth=0.8, label="grid levels" if j == 0 else None)
    ax.axvspan(-amax, amax, color="tab:green", alpha=0.08, label="clipping range")
    ax.set_xlabel("value")
    ax.set_ylabel("count")
    ax.set_title(f"{bits}-bit symmetric grid, clip at {clip:.0%} of max: SQNR {Q.sqnr_db(v, v_hat):.1f} dB, {len(grid)} levels")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def quantization_explorer(values: np.ndarray | torch.Tensor) -> widgets.Widget:
    """Bits and clipping-range sliders over a histogram with its quantization grid."""
    bits = widgets.IntSlider(value=4, min=2, max=8, description="bits", continuous_update=False)
    clip = widgets.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, description="clip", continuous_update=False)

    def show(bits: int, clip: float) -> None:
        draw_quantization(values, bits, clip)
        plt.show()

    output = widgets.interactive_output(show, {"bits": bits, "clip": clip})
    return widgets.VBox([widgets.HBox([bits, clip]), output])


def draw_low_rank(image: np.ndarray, rank: int) -> Figure:
    """An image (H, W) next to its rank-``rank`` SVD approximation, with the storage and the error."""
    from .lowrank import low_rank_approx

    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"image must be 2-d, got shape {a.shape}")
    approx = low_rank_approx(a, rank)
    error = np.linalg.norm(a - approx) / np.linalg.norm(a)
    stored = rank * (a.shape[0] + a.shape[1])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.4), layout="constrained")
    scale = {"cmap": "gray_r", "vmin": float(a.min()), "vmax": float(a.max())}  # one colour scale for both panels: the original's range
    left.imshow(a, **scale)
    left.set_title(f"original: {a.size:,} numbers")
    image = right.imshow(approx, **scale)
    right.set_title(f"rank {rank}: {stored:,} numbers ({a.size / stored:.1f}x fewer), error {error:.1%}")
    for ax in (left, right):
        ax.set_xlabel("column")
        ax.set_ylabel("row")
        ax.grid(False)
    fig.colorbar(image, ax=[left, right], shrink=0.8, label="pixel value (original's range)")  # values outside it are clipped
    return fig


def low_rank_explorer(image: np.ndarray) -> widgets.Widget:
    """A rank slider over :func:`draw_low_rank`."""
    rank = widgets.IntSlider(value=10, min=1, max=min(np.shape(image)), description="rank", continuous_update=False)

    def show(rank: int) -> None:
        draw_low_rank(image, rank)
        plt.show()

    output = widgets.interactive_output(show, {"rank": rank})
    return widgets.VBox([rank, output])
