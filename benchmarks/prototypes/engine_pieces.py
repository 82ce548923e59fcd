"""What the engine costs per batch and per call, with no model to hide it (issue 12).

    python benchmarks/prototypes/engine_pieces.py [width] [rounds]     # default 1024, 15

Two chains of 12 and 20 ``ReLU`` layers (W1's grid) over batches of 128 rows of ``width``
features, so the forward pass costs next to nothing and the rest is what is timed, in
phases interleaved in one process (order shuffled every round, medians): ``forward``,
``floor`` (one bare ``X Xᵀ`` per layer, as ``common.grams_only``), ``engine`` (the streaming
engine with a metric that does nothing, ``common.engine_only``) and ``cka``
(``simtorch.CKA``). ``engine − floor`` is the hooks' and the engine's own work besides the
products; ``cka − engine`` the CKA metric. Each is measured at 1 and at 24 batches, which
splits it into a cost per batch and a cost per call (set-up, result, buffers).
"""

from __future__ import annotations

import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common as C  # noqa: E402
import simtorch  # noqa: E402

N_ROWS = 128


class Chain(nn.Module):
    def __init__(self, depth: int) -> None:
        super().__init__()
        self.l = nn.ModuleList([nn.ReLU() for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.l:
            x = m(x)
        return x


def phases(width: int, batches: int) -> dict:
    a, b = Chain(12), Chain(20)
    sa = simtorch.SimilarityModel(a, "a", [f"l.{i}" for i in range(12)], match="exact")
    sb = simtorch.SimilarityModel(b, "b", [f"l.{i}" for i in range(20)], match="exact")
    x = torch.randn(N_ROWS * batches, width, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=N_ROWS)
    cpu = torch.device("cpu")
    return {"forward": C.forward_only((a, b), loader, cpu), "floor": C.grams_only(sa, sb, loader, cpu),
            "engine": C.engine_only(sa, sb, loader, cpu),
            "cka": lambda: simtorch.CKA(sa, sb, progress=False).compute(loader)}


def medians(ph: dict, rounds: int) -> dict[str, float]:
    for f in ph.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in ph}
    rng = random.Random(0)
    for _ in range(rounds):
        order = list(ph)
        rng.shuffle(order)
        for k in order:
            t = time.perf_counter()
            ph[k]()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    width = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    few, many = 1, 24
    m1, m24 = medians(phases(width, few), rounds), medians(phases(width, many), rounds)
    print(f"12 + 20 ReLU layers, batches of {N_ROWS} × {width}, 2 threads, {rounds} rounds (ms)")
    for label, hi, lo in (("engine − floor", "engine", "floor"), ("cka − engine", "cka", "engine")):
        d1, d24 = m1[hi] - m1[lo], m24[hi] - m24[lo]
        per_batch = (d24 - d1) / (many - few)
        print(f"  {label:15s} {per_batch:6.2f} per batch, {d1 - per_batch:6.2f} per call")
    print("  per batch at 24 batches: " + ", ".join(f"{k} {v / many:.2f}" for k, v in m24.items()))


if __name__ == "__main__":
    main()
