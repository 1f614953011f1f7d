"""The small models the chapters share.

- :class:`LeNet300`: LeNet-300-100, the 784-300-100-10 MLP (266,610 parameters).
- :class:`LeNet5`: the Caffe variant of LeNet-5 used by Han et al. 2015 ("Learning both weights
  and connections") and Deep Compression 2016: conv 20@5x5, maxpool 2, conv 50@5x5, maxpool 2,
  fc 500, ReLU, fc 10 (431,080 parameters). As in Caffe's prototxt the convolutions have no ReLU.

Both take images of shape (N, 1, 28, 28) and return logits of shape (N, 10).
"""

from __future__ import annotations

import torch
from torch import nn


class LeNet300(nn.Module):
    """LeNet-300-100: flatten -> fc1 784x300 -> ReLU -> fc2 300x100 -> ReLU -> fc3 100x10."""

    def __init__(self, hidden: tuple[int, int] = (300, 100), num_classes: int = 10) -> None:
        super().__init__()
        h1, h2 = hidden
        self.fc1 = nn.Linear(28 * 28, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) or (N, 784) -> logits (N, num_classes)."""
        x = x.flatten(1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe LeNet-5: conv1 20@5x5 -> pool -> conv2 50@5x5 -> pool -> fc1 800x500 -> ReLU -> fc2 500x10."""

    def __init__(self, channels: tuple[int, int] = (20, 50), hidden: int = 500, num_classes: int = 10) -> None:
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, kernel_size=5)  # 28 -> 24
        self.pool1 = nn.MaxPool2d(2)  # 24 -> 12
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5)  # 12 -> 8
        self.pool2 = nn.MaxPool2d(2)  # 8 -> 4
        self.fc1 = nn.Linear(c2 * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The conv2 feature map (N, c2, 8, 8), before pooling: the hint / attention layer of chapter 07."""
        return self.conv2(self.pool1(self.conv1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) -> logits (N, num_classes)."""
        x = self.pool2(self.features(x))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class MLP(nn.Module):
    """A ReLU multilayer perceptron 784 -> hidden... -> 10 with optional dropout (chapter 07's teacher and students)."""

    def __init__(self, hidden: tuple[int, ...] = (800, 800), dropout: float = 0.0, num_classes: int = 10) -> None:
        super().__init__()
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty tuple of positive widths, got {hidden!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = 28 * 28
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) -> logits (N, num_classes)."""
        return self.net(x)


class Teacher(MLP):
    """Chapter 07's teacher: a large regularised MLP, 784-800-800-10 with dropout 0.5 (after Hinton et al. 2015's 2x1200)."""

    def __init__(self) -> None:
        super().__init__(hidden=(800, 800), dropout=0.5)


from .architectures import MobileNetMNIST, ShuffleNetMNIST  # noqa: E402 - chapter 09's compact nets (no import cycle)

MODELS: dict[str, type[nn.Module]] = {
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "teacher": Teacher,
    "mobilenet": MobileNetMNIST,
    "shufflenet": ShuffleNetMNIST,
}


def build(name: str) -> nn.Module:
    """A freshly initialised model by name: one of ``MODELS`` ('lenet300', 'lenet5', 'teacher', 'mobilenet', 'shufflenet')."""
    if name not in MODELS:
        raise ValueError(f"name must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name]()
