"""Small seeded models and data shared by several test modules."""

from collections import OrderedDict

import torch
from torch import nn


def conv(seed: int) -> nn.Sequential:
    """A tiny conv net (3×16×16 inputs) with named layers conv1, relu, conv2, pool, flat, fc."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 8, 3, padding=1),
            relu=nn.ReLU(),
            conv2=nn.Conv2d(8, 16, 3, stride=2),
            pool=nn.AdaptiveAvgPool2d(2),
            flat=nn.Flatten(),
            fc=nn.Linear(64, 10),
        )
    )


def images() -> list[torch.Tensor]:
    """Four seeded batches of 16 images, 3×16×16."""
    return list(torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(0)).split(16))
