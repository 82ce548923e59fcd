"""Why simtorch multiplies in the hook: a product deferred to after the forward pass reads
an output that a later in-place op may have changed (issue 12).

    python benchmarks/prototypes/inplace_hazard.py      # needs pytorch-cka (pip install -e '.[bench]')

Two small VGG-style nets, ``Conv2d → ReLU(inplace=True)``, compared on their conv layers
``0`` and ``2``. pytorch-cka keeps the hooked outputs and multiplies after the pass; by
then ``ReLU(inplace=True)`` has overwritten them, so its grid is the CKA of the ReLU
outputs (layers ``1`` and ``3``), not of the convolutions it was asked for. Under
``torch.inference_mode`` the tensors carry no version counter, so a deferred product cannot
even detect this. simtorch's hook multiplies before the next module runs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import simtorch


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3), nn.ReLU(inplace=True),
                         nn.Flatten(), nn.Linear(8 * 28 * 28, 10)).eval()


def grid(a: nn.Module, b: nn.Module, layers: list[str], loader: DataLoader) -> np.ndarray:
    return simtorch.CKA(simtorch.SimilarityModel(a, "a", layers), simtorch.SimilarityModel(b, "b", layers),
                        progress=False).compute(loader)


def main() -> None:
    import cka

    a, b = net(0), net(1)
    loader = DataLoader(TensorDataset(torch.randn(256, 3, 32, 32, generator=torch.Generator().manual_seed(0))),
                        batch_size=64)
    peer = cka.compute_cka(a, b, loader, layers=["0", "2"], model2_layers=["0", "2"], device="cpu", progress=False)
    peer = np.asarray((peer[0] if isinstance(peer, (tuple, list)) else peer).double())
    conv, relu = grid(a, b, ["0", "2"], loader), grid(a, b, ["1", "3"], loader)
    np.set_printoptions(precision=4, suppress=True)
    print("pytorch-cka, conv layers 0 and 2:\n", peer)
    print("simtorch, conv layers 0 and 2:\n", conv)
    print("simtorch, the ReLU outputs 1 and 3:\n", relu)
    print(f"pytorch-cka − simtorch(conv): max {np.abs(peer - conv).max():.3f};  "
          f"pytorch-cka − simtorch(ReLU): max {np.abs(peer - relu).max():.1e}")


if __name__ == "__main__":
    main()
