"""Models for MNIST from McMahan et al. 2017.

"Communication-Efficient Learning of Deep Networks from Decentralized Data" (AISTATS
2017), section 3: the "2NN" multilayer perceptron with two hidden layers of 200 ReLU
units (199,210 parameters) and the "CNN" with two 5x5 convolutions (32 and 64
channels, each followed by 2x2 max pooling), a 512-unit ReLU layer and a softmax
output (1,663,370 parameters). The softmax is folded into the cross-entropy loss.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class TwoNN(nn.Sequential):
    """784-200-200-10 ReLU perceptron ("2NN"), 199,210 parameters."""

    name: ClassVar[str] = "2nn"

    def __init__(self) -> None:
        super().__init__(
            nn.Flatten(),
            nn.Linear(784, 200),
            nn.ReLU(),
            nn.Linear(200, 200),
            nn.ReLU(),
            nn.Linear(200, 10),
        )


class CNN(nn.Sequential):
    """Two 5x5 convolutions with max pooling, a 512-unit layer ("CNN"), 1,663,370 parameters.

    Convolutions pad by 2 so each keeps the image size, which gives the paper's count.
    """

    name: ClassVar[str] = "cnn"

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(7 * 7 * 64, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )


def count_parameters(model: torch.nn.Module) -> int:
    """Return the number of trainable scalars in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
