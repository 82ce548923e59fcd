"""README figures over training and over seeds, from a 20-block residual MLP trained on digits.

Trains an MLP of 20 residual blocks (width 64, ReLU) on scikit-learn's 8×8 digits with Adam,
keeping its state dict at log-spaced steps, then:

* ``assets/figure_checkpoint_trend.png``: every block's CKA with the final model over
  training (:func:`simtorch.compare_checkpoints`, jackknife error bars): 20 lines that stay
  distinguishable (colour along depth, marker and dash alternating) with a legend that fits;
* ``assets/figure_seeds_range.png``: the CKA of corresponding blocks of seed 0 and seeds
  1-4 (each trained the same way), mean ± s.d. over the four pairs
  (:func:`simtorch.plotting.plot_trend_with_range`), next to the same at initialisation.

    python examples/figures_training.py            # about 30 s on one CPU core

Needs scikit-learn (the digits).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from simtorch import CKA, SimilarityModel, compare_checkpoints
from simtorch.data import digits_dataset
from simtorch.plotting import plot_trend_with_range, pyplot

DEPTH, WIDTH = 20, 64


class Block(nn.Module):
    """One residual layer of the MLP: ``x + ReLU(Linear(x))``; its output is compared."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.linear(x))


class MLP(nn.Module):
    """8×8 digit → Linear 64 → 20 residual blocks → Linear 10."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(64, WIDTH)
        self.body = nn.Sequential(*[Block() for _ in range(DEPTH)])
        self.head = nn.Linear(WIDTH, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x.flatten(1))))


LAYERS = [Block]  # every block, in model order: body.0 … body.19


def split(n_eval: int = 512) -> tuple[TensorDataset, TensorDataset]:
    x, y = digits_dataset(image_size=8, channels=1).tensors
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return TensorDataset(x[n_eval:], y[n_eval:]), TensorDataset(x[:n_eval], y[:n_eval])


def train(seed: int, epochs: int, keep: bool) -> tuple[nn.Module, nn.Module, dict[int, dict]]:
    """(initial model, trained model, {step: state dict} at steps 0, 2, 4, 8, … and the end)."""
    torch.manual_seed(seed)
    model = MLP()
    init = copy.deepcopy(model)
    train_set, _ = split()
    loader = DataLoader(train_set, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    total = epochs * len(loader)
    save_at = {0, total} | {2**k for k in range(1, 20) if 2**k < total}
    states: dict[int, dict] = {}
    step = 0
    if keep:
        states[0] = copy.deepcopy(model.state_dict())
    for _ in range(epochs):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if keep and step in save_at:
                states[step] = copy.deepcopy(model.state_dict())
    return init, model.eval(), states


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorDataset) -> float:
    x, y = data.tensors
    return float((model(x).argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=6, help="training epochs (40 steps each)")
    p.add_argument("--seeds", type=int, default=5, help="seed 0 and seeds 1 … N−1 for the range figure")
    p.add_argument("--out-dir", default="assets")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the tensors are tiny)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    start = time.perf_counter()

    _, eval_set = split()
    loader = DataLoader(eval_set, batch_size=64)  # 8 batches: jackknife error bars
    runs = [train(seed, args.epochs, keep=seed == 0) for seed in range(args.seeds)]
    print(f"trained {args.seeds} MLPs in {time.perf_counter() - start:.1f} s; held-out accuracy "
          + ", ".join(f"{accuracy(m, eval_set):.2f}" for _, m, _ in runs))

    # 1. every block of seed 0 over training, against its final state
    states = runs[0][2]
    cmp = compare_checkpoints(runs[0][0], states, loader, layers=LAYERS, reference="last",
                              model_name="MLP-20", progress=False)
    cmp.plot(title=f"Each block's CKA with the final model during training ({DEPTH}-block MLP, digits)",
             save_path=out / "figure_checkpoint_trend.png", dpi=150)
    print(f"wrote {out / 'figure_checkpoint_trend.png'}")

    # 2. corresponding blocks of seed 0 and the other seeds, trained and at initialisation
    def pair(m0: nn.Module, m: nn.Module, seed: int):
        a = SimilarityModel(m0, "seed 0", LAYERS)
        b = SimilarityModel(m, f"seed {seed}", LAYERS)
        sim = CKA(a, b, progress=False)
        sim.compute(loader)
        return sim.result

    trained = [pair(runs[0][1], runs[s][1], s) for s in range(1, args.seeds)]
    initial = [pair(runs[0][0], runs[s][0], s) for s in range(1, args.seeds)]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    plot_trend_with_range({"trained": trained, "initialisation": initial}, ax=ax, label_fn=lambda n: n.split(".")[1],
                          xlabel="residual block (depth →)",
                          title=f"CKA of corresponding layers, seed 0 vs seeds 1–{args.seeds - 1} "
                                f"({DEPTH}-block MLP)",
                          save_path=out / "figure_seeds_range.png", dpi=150)
    print(f"wrote {out / 'figure_seeds_range.png'}; total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
