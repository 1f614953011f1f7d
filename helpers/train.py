"""Training and evaluation loops, and the cached baselines every chapter starts from."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .models import MODELS, build

Batch = tuple[torch.Tensor, torch.Tensor]

# The fixed recipes of the baselines. Changing one changes its cache key, so stale weights are
# never loaded by mistake.
RECIPES: dict[str, dict] = {
    "lenet300": {"epochs": 20, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "seed": 0},
    "lenet5": {"epochs": 12, "batch_size": 64, "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4, "seed": 0},
    # chapter 07's teacher: dropout in the model plus input jitter (random shifts of up to 2 pixels)
    "teacher": {"epochs": 12, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "seed": 0, "jitter": 2},
    # chapter 09's compact nets (helpers.architectures, default widths; ShuffleNet with 2 groups); lr 0.1 chosen on validation
    "mobilenet": {
        "epochs": 10,
        "batch_size": 64,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "seed": 0,
        "arch": "MobileNetMNIST(width=1.0)",
    },
    "shufflenet": {
        "epochs": 10,
        "batch_size": 64,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "seed": 0,
        "arch": "ShuffleNetMNIST(groups=2)",
    },
}


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def train(
    model: nn.Module,
    loader: Iterable[Batch],
    epochs: int,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 0.05,
    on_step: Callable[[nn.Module, int], None] | None = None,
    progress: bool = True,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` in place with mini-batch gradient descent.

    Args:
        model: trained on the device its parameters live on; batches are moved there.
        loader: yields ``(x, y)`` batches, e.g. from :func:`helpers.data.make_loaders`.
        epochs: number of passes over ``loader`` (>= 0).
        optimizer: defaults to SGD with momentum 0.9 and learning rate ``lr``.
        lr: learning rate of the default optimizer (> 0); ignored when ``optimizer`` is given.
        on_step: called as ``on_step(model, step)`` after every optimizer step (e.g. to re-apply
            a pruning mask); ``step`` counts from 1.
        progress: show a tqdm progress bar per epoch.
        loss_fn: ``loss_fn(logits, y)``; defaults to cross-entropy.
        scheduler: stepped once per epoch when given.
        transform: applied to each training batch ``x`` (e.g. input jitter).

    Returns:
        ``{"loss": [...], "accuracy": [...]}``: mean training loss and accuracy of each epoch.
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if optimizer is None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = loss_fn or F.cross_entropy
    device = _model_device(model)
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    step = 0
    for epoch in range(epochs):
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=not progress)
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            if transform is not None:
                x = transform(x)
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            loss = loss_fn(logits, y)
            loss.backward()
            optimizer.step()
            step += 1
            if on_step is not None:
                on_step(model, step)
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        if scheduler is not None:
            scheduler.step()
        history["loss"].append(total_loss / max(seen, 1))
        history["accuracy"].append(correct / max(seen, 1))
    model.eval()
    return history


@torch.no_grad()
def predict(model: nn.Module, data: DataLoader | Batch | torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) for a loader, an ``(x, y)`` pair or a tensor ``x``; on the CPU."""
    was_training = model.training
    model.eval()
    device = _model_device(model)
    if isinstance(data, torch.Tensor):
        batches: Iterable = ((data[i : i + batch_size],) for i in range(0, len(data), batch_size))
    elif isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x = data[0]
        batches = ((x[i : i + batch_size],) for i in range(0, len(x), batch_size))
    else:
        batches = data
    outputs = [model(batch[0].to(device)).cpu() for batch in batches]
    model.train(was_training)
    if not outputs:
        raise ValueError("data is empty")
    return torch.cat(outputs)


def evaluate(model: nn.Module, data: DataLoader | Batch) -> float:
    """Top-1 accuracy of ``model`` as a fraction in [0, 1].

    ``data`` is a loader of ``(x, y)`` batches or a pair of tensors ``(x, y)``.
    """
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        if len(x) == 0:
            raise ValueError("data is empty")
        return (predict(model, x).argmax(1) == y.cpu()).double().mean().item()
    correct, seen = 0, 0
    was_training = model.training
    model.eval()
    device = _model_device(model)
    with torch.no_grad():
        for x, y in data:
            correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
            seen += len(y)
    model.train(was_training)
    if seen == 0:
        raise ValueError("data is empty")
    return correct / seen


def recipe_key(name: str) -> str:
    """A short hash of the recipe, model code version and torch version that names the cache file."""
    from .data import TRAIN_PER_CLASS, VALIDATION_PER_CLASS

    split = f"subset-{TRAIN_PER_CLASS - VALIDATION_PER_CLASS}-per-class"  # the data it trains on is part of the key
    blob = json.dumps({"name": name, "recipe": RECIPES[name], "split": split, "torch": torch.__version__.split("+")[0]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def pretrained(name: str, cache: Path | None = None, progress: bool = True, verbose: bool = True) -> nn.Module:
    """The baseline ``name`` (a key of ``RECIPES``: 'lenet300', 'lenet5', 'teacher', 'mobilenet', 'shufflenet') trained with
    its fixed recipe, in eval mode on the CPU.

    The first call trains it on the training split of the shipped MNIST subset (10 s to 40 s on a
    laptop CPU; it says so and prints a line per epoch unless ``progress=False``) and caches the
    state_dict in the cache folder; later calls load it with ``torch.load(..., weights_only=True)``.
    Training runs inside a forked RNG, so calling this does not change the caller's random state.
    """
    if name not in RECIPES:
        raise ValueError(f"name must be one of {sorted(RECIPES)}, got {name!r}")
    from . import cache_dir
    from .data import make_loaders

    folder = Path(cache) if cache is not None else cache_dir() / "pretrained"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{recipe_key(name)}.pt"
    recipe = RECIPES[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        model = build(name)
        if path.exists():
            try:
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                model.eval()
                return model
            except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:  # truncated or foreign file
                if verbose:
                    print(f"cached {path.name} is unreadable ({type(error).__name__}); retraining")
        if verbose:
            print(f"first use of {name!r}: training it with its fixed recipe ({recipe['epochs']} epochs), then caching it")
        train_loader, _ = make_loaders(batch_size=recipe["batch_size"], seed=recipe["seed"])
        optimizer = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"], weight_decay=recipe["weight_decay"])
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe["epochs"])
        transform = None
        if recipe.get("jitter"):
            from .data import random_shift

            jitter_generator = torch.Generator().manual_seed(recipe["seed"])
            transform = lambda x: random_shift(x, recipe["jitter"], jitter_generator)  # noqa: E731
        # One line per epoch (not a per-batch bar): a notebook shows steady progress, and a test
        # runner reading the kernel's messages is not flooded.
        for epoch in range(recipe["epochs"]):
            history = train(model, train_loader, 1, optimizer=optimizer, scheduler=scheduler, progress=False, transform=transform)
            if progress:
                loss, accuracy = history["loss"][0], history["accuracy"][0]
                print(f"  {name} epoch {epoch + 1}/{recipe['epochs']}: loss {loss:.3f}, train accuracy {accuracy:.1%}")
    tmp = path.with_suffix(f".{os.getpid()}.part")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    if verbose:
        print(f"trained {name} with its fixed recipe and cached it at {path}")
    model.eval()
    return model


__all__ = ["MODELS", "RECIPES", "evaluate", "predict", "pretrained", "recipe_key", "train"]
