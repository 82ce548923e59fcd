"""Small seeded models, data and helpers shared by several test modules.

Everything here is plain (no pytest): call it with the seed or size a test needs.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import reference as ref

# ---------------------------------------------------------------- models


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


def conv_net(seed: int = 0) -> nn.Sequential:
    """A tiny conv net for 3×8×8 inputs: conv1, relu1, conv2 (6×3×3), flat, fc."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 4, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(4, 6, 3, stride=2),
            flat=nn.Flatten(),
            fc=nn.Linear(54, 10),
        )
    )


def image_mlp(seed: int = 1) -> nn.Sequential:
    """An MLP over flattened 3×8×8 inputs: flat, fc1, relu1, fc2, tanh, fc3."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            flat=nn.Flatten(),
            fc1=nn.Linear(192, 32),
            relu1=nn.ReLU(),
            fc2=nn.Linear(32, 16),
            tanh=nn.Tanh(),
            fc3=nn.Linear(16, 8),
        )
    )


def mlp(seed: int = 0, d_in: int = 6, h: int = 8) -> nn.Sequential:
    """fc1 → act (ReLU) → fc2 (4 outputs)."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(d_in, h), act=nn.ReLU(), fc2=nn.Linear(h, 4)))


def deep_mlp(seed: int, d_in: int = 12, h: int = 10) -> nn.Sequential:
    """fc1 → relu1 → fc2 (6 outputs) → tanh."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(fc1=nn.Linear(d_in, h), relu1=nn.ReLU(), fc2=nn.Linear(h, 6), tanh=nn.Tanh())
    )


class Tiny(nn.Module):
    """Modules: stem, block1{fc, act}, block2{fc, act, inner{fc}}, head (6 → 3)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Linear(6, 8)
        self.block1 = nn.Sequential(OrderedDict(fc=nn.Linear(8, 8), act=nn.ReLU()))
        self.block2 = nn.Sequential(
            OrderedDict(fc=nn.Linear(8, 8), act=nn.Tanh(), inner=nn.Sequential(OrderedDict(fc=nn.Linear(8, 8))))
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.block2(self.block1(self.stem(x))))


class Counter(nn.Module):
    """Identity that counts its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def forward(self, x):
        self.n += 1
        return x


def counted() -> nn.Sequential:
    """count (a Counter) → fc1 → act → fc2, for 6-feature inputs."""
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(count=Counter(), fc1=nn.Linear(6, 8), act=nn.ReLU(), fc2=nn.Linear(8, 4)))


# ---------------------------------------------------------------- data


def images() -> list[torch.Tensor]:
    """Four seeded batches of 16 images, 3×16×16."""
    return list(torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(0)).split(16))


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` seeded 3×8×8 images of independent noise."""
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def structured_pixels(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` seeded 3×8×8 images: a rank-4 signal plus noise, so grids are far from 0."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 4, generator=g) @ torch.randn(4, 192, generator=g)
    return (base + torch.randn(n, 192, generator=g)).reshape(n, 3, 8, 8)


def data(n: int = 48, d: int = 6, seed: int = 0) -> torch.Tensor:
    """``n`` seeded samples of ``d`` standard normal features."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def lowrank_batches(n_batches: int, batch_size: int, seed: int = 0, d_in: int = 12) -> list[torch.Tensor]:
    """Batches of a shared rank-3 signal plus noise, so two nets' CKA is neither 0 nor 1."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_batches * batch_size, 3, generator=g)
    x = z @ torch.randn(3, d_in, generator=g) + 0.7 * torch.randn(n_batches * batch_size, d_in, generator=g)
    return list(x.split(batch_size))


def batches(x: torch.Tensor, bs: int) -> list[torch.Tensor]:
    """``x`` in consecutive batches of ``bs`` (the last one may be smaller)."""
    return [x[i : i + bs] for i in range(0, len(x), bs)]


def loader(x: torch.Tensor, batch_size: int) -> DataLoader:
    """An unshuffled DataLoader of ``(x, 0)`` pairs."""
    y = torch.zeros(x.shape[0], dtype=torch.long)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


# ---------------------------------------------------------------- runs

#: the layers :func:`deep_cka` compares (of two :func:`deep_mlp`)
DEEP_LAYERS_A = ["fc1", "relu1", "fc2"]
DEEP_LAYERS_B = ["fc1", "fc2"]


def deep_cka(data: list[torch.Tensor], unbiased: bool = True, kernel: str = "linear"):
    """The CKA :class:`~simtorch.SimilarityResult` of ``deep_mlp(0)`` vs ``deep_mlp(1)`` over ``data``."""
    from simtorch import CKA, SimilarityModel

    a = SimilarityModel(deep_mlp(0), "A", DEEP_LAYERS_A)
    b = SimilarityModel(deep_mlp(1), "B", DEEP_LAYERS_B)
    sim = CKA(a, b, device="cpu", kernel=kernel, unbiased=unbiased, progress=False)
    sim.compute(data)
    assert sim.result is not None
    return sim.result


class CountForward:
    """Counts the forward calls of ``model`` (a forward pre-hook)."""

    def __init__(self, model: nn.Module) -> None:
        self.calls = 0
        model.register_forward_pre_hook(self)

    def __call__(self, *args) -> None:
        self.calls += 1


# ---------------------------------------------------------------- checks


def hook_counts(model: nn.Module) -> int:
    """Forward hooks and pre-hooks left on any module of ``model``."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def ref_grid(acts_a: list[dict], acts_b: list[dict], la: list[str], lb: list[str], unbiased: bool = True) -> np.ndarray:
    """Streaming CKA grid from per-batch activation dicts (tests/reference.py formulas)."""
    return np.array(
        [[ref.streaming_cka([a[i] for a in acts_a], [b[j] for b in acts_b], unbiased=unbiased) for j in lb] for i in la]
    )
