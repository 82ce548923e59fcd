"""Layer-by-layer CKA between two small Transformer encoders, and the options that
sequence models need.

Two ``nn.TransformerEncoder`` classifiers (4 layers, ``batch_first=True``) that differ only
in their random seed are trained for a few epochs on scikit-learn's handwritten digits,
read as sequences: each 8×8 image is 8 tokens (its rows) of 8 pixels. Then every layer of
one is compared with every layer of the other on held-out digits:

* token pooling: a block outputs ``(batch, tokens, features)``. ``sequence="mean"``
  averages the tokens (with an ``attention_mask`` in a dict batch, padding is left out);
  ``sequence="flatten"`` keeps every token's features (position by position);
  ``"first"`` would keep the first (CLS) token.
* tuple outputs: ``nn.MultiheadAttention`` returns ``(output, attention weights)``.
  ``output_fn`` says which tensor to compare; the default takes the first tensor of a
  tuple (never ``output[0]`` of a tensor, which would be one sample).

    python examples/transformer_layers.py          # about 10-20 s on a laptop CPU

Writes ``assets/transformer_layers.png`` (mean-pooled and flattened grids side by side).
Needs scikit-learn.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from simtorch import CKA, SimilarityModel, SimilarityResult
from simtorch.data import digits_dataset
from simtorch.plotting import plot_result, pyplot

D_MODEL, N_LAYERS = 64, 4


class DigitTransformer(nn.Module):
    """Rows of a digit as tokens → linear embedding + learned positions → encoder → mean
    over tokens → classes."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(8, D_MODEL)
        self.pos = nn.Parameter(0.02 * torch.randn(1, 8, D_MODEL))
        layer = nn.TransformerEncoderLayer(D_MODEL, nhead=4, dim_feedforward=128, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, N_LAYERS, enable_nested_tensor=False)
        self.head = nn.Linear(D_MODEL, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(x) + self.pos)
        return self.head(h.mean(1))


def digit_sequences(n_eval: int = 600, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """(train, held-out) digits as ``(n, 8 tokens, 8 features)`` with pixel values in [0, 1]."""
    x, y = digits_dataset(image_size=8, channels=1).tensors
    x = x.squeeze(1)  # (n, 8, 8): row i is token i
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return TensorDataset(x[n_eval:], y[n_eval:]), TensorDataset(x[:n_eval], y[:n_eval])


def train(seed: int, epochs: int) -> DigitTransformer:
    model = DigitTransformer(seed)
    train_set, eval_set = digit_sequences()
    loader = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        x, y = eval_set.tensors
        acc = float((model(x).argmax(1) == y).float().mean())
    print(f"  seed {seed}: held-out accuracy {acc:.3f}")
    return model


def attention_output(name: str, output: Any) -> torch.Tensor:
    """``nn.MultiheadAttention`` returns ``(attn_output, attn_weights)``: compare the first."""
    return output[0] if isinstance(output, tuple) else output


def for_display(res: SimilarityResult) -> SimilarityResult:
    """The grid in the order the layers run (``named_modules`` lists a block before the
    attention inside it) with short labels, for the figure. Both sides hold the same layers."""

    def run_order(name: str) -> tuple:
        stage = 0 if name == "embed" else 2 if name == "head" else 1
        return stage, name.replace(".self_attn", ""), not name.endswith("self_attn")

    order = sorted(range(len(res.layers_a)), key=lambda i: run_order(res.layers_a[i]))
    labels = [res.layers_a[i].replace("encoder.layers.", "block ").replace(".self_attn", " attention") for i in order]
    grid = np.ix_(order, order)
    return dataclasses.replace(res, matrix=res.matrix[grid], stderr=res.stderr[grid], layers_a=labels, layers_b=labels)


# the embedding, each encoder block, the first block's self-attention (a tuple output) and
# the classifier; exact names and a glob
LAYERS = ["embed", "encoder.layers.0.self_attn", "encoder.layers.*", "head"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=6, help="training epochs per model")
    p.add_argument("--out", default="assets/transformer_layers.png", help="figure file")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; the tensors here are tiny, so more threads mostly add overhead")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    print(f"training two DigitTransformers ({N_LAYERS} layers, d={D_MODEL}) for {args.epochs} epochs")
    model_a, model_b = train(0, args.epochs), train(1, args.epochs)
    trained = time.perf_counter()
    _, eval_set = digit_sequences()
    loader = DataLoader(eval_set, batch_size=50, shuffle=False)  # 12 batches for the error bars

    results = {}
    for sequence in ("mean", "flatten"):
        a = SimilarityModel(model_a, "seed 0", LAYERS, sequence=sequence, output_fn=attention_output)
        b = SimilarityModel(model_b, "seed 1", LAYERS, sequence=sequence, output_fn=attention_output)
        sim = CKA(a, b, device="cpu", progress=False)
        with warnings.catch_warnings():
            # PyTorch notes that hooks on the attention module turn off its fused fast path
            warnings.filterwarnings("ignore", message=".*fast path.*")
            sim.compute(loader)
        results[sequence] = sim.result
        print(sim.result)
        for name, v, e in zip(a.layer_names, sim.result.matrix.diagonal(), sim.result.stderr.diagonal()):
            print(f"  {name:<28} {v:.3f} ± {e:.3f}")
    compared = time.perf_counter()

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12.0, 5.0), dpi=100)
    titles = {"mean": 'sequence="mean": tokens averaged', "flatten": 'sequence="flatten": every token kept'}
    for ax, (sequence, res) in zip(axes, results.items()):
        plot_result(for_display(res), ax=ax, title=titles[sequence], vmin=0.0, vmax=1.0, cmap="magma")
    fig.suptitle("Linear CKA between two Transformer encoders trained from different seeds (digits as row tokens)")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=200, bbox_inches="tight")
    print(f"training {trained - start:.1f} s, comparing {compared - trained:.1f} s; figure {out}")


if __name__ == "__main__":
    main()
