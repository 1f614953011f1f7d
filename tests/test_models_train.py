"""Models, training loops and the cached baselines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import models, train
from helpers.data import load_mnist, make_loaders
from helpers.metrics import count_parameters


def test_parameter_counts_match_the_papers() -> None:
    assert count_parameters(models.LeNet300()) == 266_610
    assert count_parameters(models.LeNet5()) == 431_080


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_models_map_images_to_ten_logits(name: str) -> None:
    model = models.build(name)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_lenet5_layers_are_the_caffe_ones() -> None:
    m = models.LeNet5()
    assert (m.conv1.out_channels, m.conv1.kernel_size, m.conv2.out_channels) == (20, (5, 5), 50)
    assert (m.fc1.in_features, m.fc1.out_features, m.fc2.out_features) == (800, 500, 10)


def test_build_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="lenet300"):
        models.build("resnet")


def _tiny_loader() -> torch.utils.data.DataLoader:
    x_train, y_train, _, _ = load_mnist()
    data = (x_train[:512], y_train[:512], x_train[:64], y_train[:64])
    return make_loaders(batch_size=64, data=data)[0]


def test_train_reduces_loss_and_calls_on_step() -> None:
    torch.manual_seed(0)
    model = models.LeNet300()
    steps = []
    history = train.train(model, _tiny_loader(), epochs=3, lr=0.05, on_step=lambda m, s: steps.append(s), progress=False)
    assert history["loss"][-1] < history["loss"][0]
    assert steps == list(range(1, 3 * 8 + 1))
    assert not model.training


def test_on_step_can_enforce_a_mask() -> None:
    torch.manual_seed(0)
    model = models.LeNet300()
    mask = torch.rand_like(model.fc1.weight) > 0.5

    def apply_mask(m: nn.Module, step: int) -> None:
        with torch.no_grad():
            m.fc1.weight.mul_(mask)

    train.train(model, _tiny_loader(), epochs=1, on_step=apply_mask, progress=False)
    assert torch.all(model.fc1.weight[~mask] == 0)


@pytest.mark.parametrize("epochs", [-1, 1.5])
def test_train_validates_epochs(epochs: object) -> None:
    with pytest.raises(ValueError, match="epochs"):
        train.train(models.LeNet300(), _tiny_loader(), epochs=epochs)  # type: ignore[arg-type]


def test_train_validates_lr() -> None:
    with pytest.raises(ValueError, match="lr"):
        train.train(models.LeNet300(), _tiny_loader(), epochs=1, lr=0)


def test_evaluate_accepts_loaders_and_tensors_and_agrees() -> None:
    torch.manual_seed(0)
    model = models.LeNet300()
    x, y, _, _ = load_mnist()
    x, y = x[:300], y[:300]
    loader = make_loaders(batch_size=7, test_batch_size=7, data=(x, y, x, y))[1]
    by_tensors = train.evaluate(model, (x, y))
    assert by_tensors == pytest.approx(train.evaluate(model, loader))
    manual = (model(x).argmax(1) == y).double().mean().item()
    assert by_tensors == pytest.approx(manual)
    assert train.evaluate(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), (x, y)) >= 0.0


def test_evaluate_rejects_empty_and_mismatched() -> None:
    model = models.LeNet300()
    with pytest.raises(ValueError, match="empty"):
        train.evaluate(model, (torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="length"):
        train.evaluate(model, (torch.zeros(3, 1, 28, 28), torch.zeros(2, dtype=torch.long)))


def test_pretrained_trains_once_caches_and_reloads_safely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(train.RECIPES, "lenet300", {**train.RECIPES["lenet300"], "epochs": 2})
    state = torch.random.get_rng_state()
    first = train.pretrained("lenet300", cache=tmp_path, verbose=False)
    assert torch.equal(state, torch.random.get_rng_state()), "pretrained must not change the caller's RNG"
    files = list(tmp_path.glob("lenet300-*.pt"))
    assert len(files) == 1
    loads = []
    real_load = torch.load

    def spy(*args: object, **kwargs: object) -> object:
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(train.torch, "load", spy)
    second = train.pretrained("lenet300", cache=tmp_path, verbose=False)
    assert loads == [True]
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    x, y, x_test, y_test = load_mnist()
    assert train.evaluate(second, (x_test, y_test)) > 0.85


def test_pretrained_retrains_over_a_corrupt_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(train.RECIPES, "lenet300", {**train.RECIPES["lenet300"], "epochs": 1})
    path = tmp_path / f"lenet300-{train.recipe_key('lenet300')}.pt"
    path.write_bytes(b"garbage")
    model = train.pretrained("lenet300", cache=tmp_path, verbose=False)
    assert isinstance(model, models.LeNet300) and path.stat().st_size > 1_000_000


def test_recipe_key_changes_with_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    before = train.recipe_key("lenet5")
    monkeypatch.setitem(train.RECIPES, "lenet5", {**train.RECIPES["lenet5"], "lr": 0.123})
    assert train.recipe_key("lenet5") != before


def test_pretrained_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="lenet5"):
        train.pretrained("alexnet")
