"""README figure: every convolution of DenseNet-121 against every convolution of ResNet-50.

120 × 53 layers (``layers_to_include=[torch.nn.Conv2d]``), random initialisation with
fixed seeds, 128 of scikit-learn's digits at 32×32 in batches of 64, unbiased linear CKA.
Two figures:

* ``assets/figure_many_layers.png``: the grid on the fixed [0, 1] scale, labelled by
  stage (``denseblock1`` … / ``layer1`` …, one tick per stage, a minor tick per layer,
  thin lines between stages); ``--ticks layers`` labels every k-th layer instead, at 6 pt;
* ``assets/figure_many_layers_best.png``: for each DenseNet convolution, its best match
  among ResNet-50's convolutions across depth (:func:`simtorch.plotting.plot_diagonal`,
  ``mode="best"``), ± jackknife standard error.

    python examples/figures_many_layers.py          # about 30 s on 2 CPU cores
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader

from simtorch import CKA, SimilarityModel
from simtorch.data import digits_dataset
from simtorch.plotting import plot_diagonal, plot_result, pyplot


def short(name: str) -> str:
    """``features.denseblock3.denselayer12.conv1`` → ``block3.12.conv1``."""
    return name.replace("features.", "").replace("denseblock", "block").replace(".denselayer", ".")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=128, help="number of digits")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ticks", default="stages", choices=["stages", "layers"])
    p.add_argument("--out-dir", default="assets")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)

    torch.manual_seed(0)
    a = SimilarityModel(torchvision.models.densenet121(), "DenseNet-121", [torch.nn.Conv2d])
    torch.manual_seed(1)
    b = SimilarityModel(torchvision.models.resnet50(), "ResNet-50", [torch.nn.Conv2d])
    print(f"{len(a.layer_names)} × {len(b.layer_names)} convolutions")
    loader = DataLoader(digits_dataset(image_size=32, n=args.n), batch_size=args.batch_size)
    start = time.perf_counter()
    sim = CKA(a, b, progress=False)
    sim.compute(loader)
    res = sim.result
    print(f"{res} in {time.perf_counter() - start:.1f} s")

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 7.5) if args.ticks == "stages" else (14, 12), dpi=100)
    plot_result(res, ax=ax, ticks=args.ticks, label_fn=short, save_path=out / "figure_many_layers.png", dpi=150)
    print(f"wrote {out / 'figure_many_layers.png'}")
    fig, ax = plt.subplots(figsize=(9, 3.8), dpi=100)
    plot_diagonal(res, mode="best", ax=ax, ticks="stages", save_path=out / "figure_many_layers_best.png", dpi=150,
                  title="Each DenseNet-121 convolution and its best match among ResNet-50's (CKA, unbiased)")
    print(f"wrote {out / 'figure_many_layers_best.png'}")


if __name__ == "__main__":
    main()
