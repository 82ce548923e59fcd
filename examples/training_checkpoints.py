"""How each layer of a small CNN converges during training, with jackknife error bars.

Trains a small convolutional network on scikit-learn's handwritten digits (1,797 real 8×8
images, bundled with scikit-learn, no download) for a few epochs on the CPU, saving
training checkpoints (model + optimizer state, as a training script would) at roughly
log-spaced steps. Then :func:`simtorch.compare_checkpoints` compares every checkpoint's
layers with the same layers of the final checkpoint on held-out digits, in one pass over
the data, and plots one line per layer (CKA with the final model, ± jackknife standard
error over batches) and a layers × checkpoints heatmap.

    python examples/training_checkpoints.py                 # about 10-20 s on a laptop CPU
    python examples/training_checkpoints.py --epochs 12 --out-dir figures/

Writes ``assets/checkpoint_convergence.png`` and ``assets/checkpoint_heatmap.png`` (and
``--save``: the comparison as ``.npz``; ``simtorch plot`` redraws it). Needs scikit-learn.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from simtorch import compare_checkpoints
from simtorch.data import digits_dataset

LAYERS = ["conv1", "conv2", "fc1", "fc2"]


class SmallCNN(nn.Module):
    """Two conv blocks and two linear layers for 1×8×8 digits (about 40k parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU())
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(self.conv2(self.conv1(x))))


def split_digits(n_eval: int = 600, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Shuffled train/held-out split of the 1,797 digits (pixel values in [0, 1])."""
    x, y = digits_dataset(image_size=8, channels=1).tensors
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return TensorDataset(x[n_eval:], y[n_eval:]), TensorDataset(x[:n_eval], y[:n_eval])


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    model.train()
    return hits / len(loader.dataset)


def train(epochs: int, ckpt_dir: Path, seed: int = 0) -> dict[int, Path]:
    """Train with Adam and save ``step_XXXXX.pt`` checkpoints at steps 0, 4, 8, 16, … and
    at the end of training. Returns {step: checkpoint path}."""
    torch.manual_seed(seed)
    train_set, eval_set = split_digits(seed=seed)
    loader = DataLoader(train_set, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))
    eval_loader = DataLoader(eval_set, batch_size=200)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    total = epochs * len(loader)
    save_at = {0, total} | {2**k for k in range(2, 20) if 2**k < total}
    paths: dict[int, Path] = {}

    def save(step: int, epoch: int) -> None:
        path = ckpt_dir / f"step_{step:05d}.pt"
        # a real training checkpoint: the state dict nested under "model", plus optimizer
        # state; simtorch reads it with torch.load(weights_only=True)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "epoch": epoch}, path)
        paths[step] = path
        print(f"  step {step:4d} (epoch {epoch}): held-out accuracy {accuracy(model, eval_loader):.3f}")

    step = 0
    save(0, 0)
    for epoch in range(1, epochs + 1):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step in save_at:
                save(step, epoch)
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=8, help="training epochs (38 steps each)")
    p.add_argument("--out-dir", default="assets", help="where the figures go")
    p.add_argument("--ckpt-dir", default=None, help="keep the checkpoints here (default: a temporary folder)")
    p.add_argument("--save", default=None, help="also save the comparison (.npz)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; the tensors here are tiny, so more threads mostly add overhead")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        ckpt_dir = Path(args.ckpt_dir or tmp)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        print(f"training SmallCNN on digits for {args.epochs} epochs")
        paths = train(args.epochs, ckpt_dir)
        trained = time.perf_counter()

        _, eval_set = split_digits()
        # 600 held-out digits in 12 batches: the jackknife error bars leave out one batch at a time
        eval_loader = DataLoader(eval_set, batch_size=50, shuffle=False)
        # {step: path}: the steps become the x axis and the checkpoints' names
        cmp = compare_checkpoints(SmallCNN, {s: str(p) for s, p in paths.items()}, eval_loader, layers=LAYERS,
                                  reference="last", model_name="SmallCNN", progress=False)
        compared = time.perf_counter()

    print(cmp)
    print("  step  " + "  ".join(f"{name:>14}" for name in cmp.layers))
    for step, row, err in zip(cmp.steps, cmp.values, cmp.stderr):
        print(f"  {step:4d}  " + "  ".join(f"{v:7.3f} ± {e:.3f}" for v, e in zip(row, err)))
    out = Path(args.out_dir)
    cmp.plot(save_path=out / "checkpoint_convergence.png",
             title="Each layer's CKA with the final model during training (digits)")
    cmp.plot_heatmap(save_path=out / "checkpoint_heatmap.png", xlabel="training step",
                     title="Each layer's CKA with the final model (digits)", vmin=0.0, vmax=1.0)
    if args.save:
        cmp.save(args.save)
    print(f"training {trained - start:.1f} s, comparing {len(paths)} checkpoints {compared - trained:.1f} s; "
          f"figures in {out}/")


if __name__ == "__main__":
    main()
