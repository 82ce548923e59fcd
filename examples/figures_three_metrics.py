"""README figure: CKA, dCKA and Information Imbalance of two networks in one figure.

ResNet-18 (seed 0) vs ResNet-34 (seed 1), random initialisation, every residual block;
256 of scikit-learn's digits at 32×32 in batches of 64, streamed ONCE through both models
by :func:`simtorch.compare`, which feeds all three metrics from the same Grams. The three
grids are drawn by :func:`simtorch.plotting.plot_results`: a title per panel naming the
estimator, CKA and dCKA on the same fixed [0, 1] scale, Information Imbalance (a distance:
low = more shared information) with the reversed colour map and an upside-down colourbar,
so brighter means "more alike" in every panel, on a log scale (its values of informative
pairs sit near the floor 2/64).

    python examples/figures_three_metrics.py                 # writes assets/figure_three_metrics.png
    python examples/figures_three_metrics.py --plane assets/figure_ii_plane.png

Needs scikit-learn (the digits).
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision
from torch.utils.data import DataLoader

from simtorch import SimilarityModel, compare
from simtorch.data import digits_dataset
from simtorch.plotting import plot_information_plane, plot_results

LAYERS = ["conv1", "maxpool", "layer?.*", "avgpool", "fc"]  # every residual block


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=256, help="number of digits")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default="assets/figure_three_metrics.png")
    p.add_argument("--plane", default=None, help="also draw the information imbalance plane here")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    a = SimilarityModel(torchvision.models.resnet18(), "ResNet-18", LAYERS)
    torch.manual_seed(1)
    b = SimilarityModel(torchvision.models.resnet34(), "ResNet-34", LAYERS)
    loader = DataLoader(digits_dataset(image_size=32, n=args.n), batch_size=args.batch_size)
    start = time.perf_counter()
    results = compare(a, b, loader, metrics=("cka", "dcka", "ii"), progress=False)
    print(f"one pass, three metrics: {time.perf_counter() - start:.1f} s")
    for res in results.values():
        print(" ", res)
    fig = plot_results(results, norm={"ii": "log"}, save_path=args.out, dpi=150)
    print(f"wrote {args.out} ({len(fig.simtorch_panels)} panels)")
    if args.plane:
        plot_information_plane(results["ii"], save_path=args.plane)
        print(f"wrote {args.plane}")


if __name__ == "__main__":
    main()
