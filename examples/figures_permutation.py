"""README figure: a permutation null from the same pass, non-significant cells greyed out.

Two ResNet-18s (random initialisation, seeds 0 and 1), the eight residual blocks of each,
256 of scikit-learn's digits at 32×32 in batches of 32, unbiased linear CKA with
``permutations=100`` (100 within-batch shuffles of model B's samples, summed like the
observed HSIC terms; ``result.pvalue`` per cell). Two panels of
``assets/figure_permutation.png``:

* left: both models see the same images: every cell is far above its null (p = 1/101);
* right: model B sees other digits (sample i of A's batch is paired with an unrelated,
  randomly drawn digit for B: no correspondence): the CKA values are above 0 (CKA of
  unrelated samples is not 0 on finite batches), but the null says they are chance, and
  ``plot_result(..., significance=0.05)`` greys them out.

It also prints the cost of the null: the same pass with ``permutations=0`` and ``=100``.

    python examples/figures_permutation.py          # about 40 s on 2 CPU cores (three passes)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models.resnet import BasicBlock

from simtorch import CKA, SimilarityModel
from simtorch.data import digits_dataset
from simtorch.plotting import plot_result, pyplot


class Channels(nn.Module):
    """A ResNet on channels ``lo:hi`` of the input: the batches hold two images per sample,
    A's digit in channels 0–2 and an unrelated digit for B in channels 3–5."""

    def __init__(self, net: nn.Module, lo: int, hi: int) -> None:
        super().__init__()
        self.net, self.lo, self.hi = net, lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[:, self.lo:self.hi])


def resnet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18().eval()


def short(name: str) -> str:
    return name.replace("net.", "")


def run(a: SimilarityModel, b: SimilarityModel, loader: DataLoader, k: int) -> tuple[object, float]:
    start = time.perf_counter()
    sim = CKA(a, b, permutations=k, seed=0, progress=False)
    sim.compute(loader)
    return sim.result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=256, help="number of digits")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--permutations", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--out-dir", default="assets")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    digits = digits_dataset(image_size=32, n=2 * args.n).tensors[0]
    other_digits = digits[args.n:][torch.randperm(args.n, generator=torch.Generator().manual_seed(0))]
    loader = DataLoader(digits[: args.n], batch_size=args.batch_size)
    pairs = DataLoader(torch.cat([digits[: args.n], other_digits], 1), batch_size=args.batch_size)

    a = SimilarityModel(resnet(0), "ResNet-18 (seed 0)", [BasicBlock])
    b = SimilarityModel(resnet(1), "ResNet-18 (seed 1)", [BasicBlock])
    a_pair = SimilarityModel(Channels(resnet(0), 0, 3), "ResNet-18 (seed 0)", [BasicBlock])
    b_other = SimilarityModel(Channels(resnet(1), 3, 6), "ResNet-18 (seed 1), other digits", [BasicBlock])

    same, t_null = run(a, b, loader, args.permutations)
    _, t_plain = run(a, b, loader, 0)
    other, _ = run(a_pair, b_other, pairs, args.permutations)
    print(f"same images: {same}; CKA {np.nanmin(same.matrix):.2f}…{np.nanmax(same.matrix):.2f}, "
          f"p {same.pvalue.min():.3f}…{same.pvalue.max():.3f}")
    print(f"unrelated images: CKA {np.nanmin(other.matrix):.2f}…{np.nanmax(other.matrix):.2f}, "
          f"{int((other.pvalue <= args.alpha).sum())} of {other.pvalue.size} cells with p ≤ {args.alpha}")
    print(f"cost: permutations=0 {t_plain:.2f} s, permutations={args.permutations} {t_null:.2f} s "
          f"({t_null / t_plain:.2f}×)")

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 5.6), dpi=100)
    plot_result(same, ax=axes[0], significance=args.alpha, label_fn=short, layout=False,
                title=f"Same images: CKA, {args.permutations}-permutation null")
    plot_result(other, ax=axes[1], significance=args.alpha, label_fn=short, layout=False,
                title="B sees other digits: no correspondence")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "figure_permutation.png", dpi=130)
    print(f"wrote {out / 'figure_permutation.png'}")


if __name__ == "__main__":
    main()
