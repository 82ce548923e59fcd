"""What each pass around the Gram GEMM costs on real activations (issue 12).

    python benchmarks/prototypes/layer_passes.py [W1|W1-many|W1-wide]

Takes one batch's activations of every hooked layer of the workload and times, over all of
them, the bare GEMM ``X Xᵀ``, the GEMM plus the column-mean pass, plus the subtraction pass,
plus both, and :func:`simtorch.functional.capture_product` (as the engine's hooks call it,
and with ``exact=True``); min and median of 25 rounds in alternating order, 2 threads.
Nothing in simtorch is changed.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common as C  # noqa: E402
from simtorch import functional as F  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    w = C.WORKLOADS[sys.argv[1] if len(sys.argv) > 1 else "W1-many"]
    ma, mb = C.build_models(w)
    sa, sb = C.wrap(w, ma, mb)
    x = next(iter(C.make_loader(w.batch, w.image_size, w.batch, torch.device("cpu"))))[0]
    acts = [t.reshape(t.shape[0], -1).contiguous() for sm in (sa, sb) for t in sm.activations(x).values()]
    mus = [a.mean(0, keepdim=True) for a in acts]
    scratch = torch.empty(max(a.numel() for a in acts))
    n = acts[0].shape[0]
    stack = torch.empty(len(acts), n, n)

    def gemm(a: torch.Tensor, i: int) -> None:
        torch.mm(a, a.T, out=stack[i])

    def sub(a: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        return torch.sub(a, mu, out=scratch[: a.numel()].view(a.shape))

    variants = {
        "GEMM": lambda: [gemm(a, i) for i, a in enumerate(acts)],
        "mean + GEMM": lambda: [(a.mean(0, keepdim=True), gemm(a, i)) for i, a in enumerate(acts)],
        "subtract + GEMM": lambda: [gemm(sub(a, mus[i]), i) for i, a in enumerate(acts)],
        "mean + subtract + GEMM": lambda: [gemm(sub(a, a.mean(0, keepdim=True)), i) for i, a in enumerate(acts)],
        "capture_product": lambda: [F.capture_product(a, scratch, stack[i]) for i, a in enumerate(acts)],
        "capture_product(exact)": lambda: [F.capture_product(a, scratch, stack[i], exact=True)
                                           for i, a in enumerate(acts)],
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(25):
        for k, f in (variants.items() if r % 2 else reversed(list(variants.items()))):
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    print(f"{w.name}: {len(acts)} layers, {sum(a.numel() for a in acts) * 4 / 2**20:.0f} MiB of activations per batch")
    for k, v in times.items():
        print(f"  {k:24s} min {min(v) * 1e3:7.2f} ms  median {statistics.median(v) * 1e3:7.2f} ms")


if __name__ == "__main__":
    main()
