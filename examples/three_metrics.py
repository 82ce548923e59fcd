"""CKA, deconfounded CKA and Information Imbalance of the README's two models in ONE pass.

ResNet-18 (seed 0) vs ResNet-34 (seed 1), random init, scikit-learn's digits at 32×32,
N = 1024, batch 128: `simtorch.compare` streams the data once and every metric shares each
batch's Grams. Prints a few cells of each grid with their standard errors and the wall time
of the one-pass run against both models' forward passes alone (median of 3, same process).

    python examples/three_metrics.py
"""

from __future__ import annotations

import statistics
import time

import torch
import torchvision
from torch.utils.data import DataLoader

from simtorch import SimilarityModel, compare
from simtorch.data import digits_dataset

LAYERS = ["conv1", "maxpool", "layer?.*", "avgpool", "fc"]
PAIRS = [("conv1", "conv1"), ("layer2.1", "layer2.3"), ("layer3.1", "layer3.5"), ("layer4.1", "layer4.2"), ("fc", "fc")]


def forward_only(models: list[torch.nn.Module], loader: DataLoader) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for x, _ in loader:
            for m in models:
                m.eval()(x)
    return time.perf_counter() - start


def main() -> None:
    torch.manual_seed(0)
    model_a = torchvision.models.resnet18()
    torch.manual_seed(1)
    model_b = torchvision.models.resnet34()
    a = SimilarityModel(model_a, "resnet18", LAYERS)
    b = SimilarityModel(model_b, "resnet34", LAYERS)
    loader = DataLoader(digits_dataset(32, n=1024), batch_size=128)

    forward_only([model_a, model_b], loader)  # warm-up
    ratios, results = [], {}
    for _ in range(3):
        base = forward_only([model_a, model_b], loader)
        start = time.perf_counter()
        results = compare(a, b, loader, metrics=("cka", "dcka", "ii"), progress=False)
        ratios.append((time.perf_counter() - start) / base)
    print(f"one pass of CKA + dCKA + II / forward passes alone: {statistics.median(ratios):.3f} (median of 3)")

    cka, dcka, ii = results["cka"], results["dcka"], results["ii"]
    for la, lb in PAIRS:
        i, j = a.layer_names.index(la), b.layer_names.index(lb)
        print(f"{la:>9} vs {lb:<9} CKA {cka.matrix[i, j]:.3f}±{cka.stderr[i, j]:.3f}  "
              f"dCKA {dcka.matrix[i, j]:.3f}±{dcka.stderr[i, j]:.3f}  "
              f"II A→B {ii.matrix[i, j]:.3f}±{ii.stderr[i, j]:.3f}  B→A {ii.extras['reverse'][i, j]:.3f}")
    print("share of each layer's Gram explained by the inputs (dCKA pve), resnet18:",
          {name: round(float(v), 3) for name, v in zip(a.layer_names, dcka.extras["pve_a"])})


if __name__ == "__main__":
    main()
