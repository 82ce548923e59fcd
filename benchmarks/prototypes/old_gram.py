"""The Gram path before issue 12, for "before" measurements in today's tree.

``patch()`` makes this process's hooks use the old three-pass ``linear_gram`` (column
mean, subtraction into a scratch copy, GEMM, energy from the trace and ``n‖μ‖²``, no double
centring) instead of :func:`simtorch.functional.capture_product` and
:func:`simtorch.functional.finish_grams_`, and returns a function that undoes it.
Nothing in simtorch's files changes. Used by ``profile_engine.py --baseline``.

    python benchmarks/prototypes/old_gram.py      # per-layer cost, old vs new vs bare GEMM, W1

(the new path's batched double centring, once per stack, is not in the per-layer figure)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def old_linear_gram(x: Tensor, scratch: Tensor | None = None, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """simtorch's ``functional.linear_gram`` as issue 5 left it."""
    x = x.reshape(x.shape[0], -1)
    dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) or not x.dtype.is_floating_point else x.dtype
    x = x.to(dtype)
    mu = x.mean(dim=0, keepdim=True)
    if scratch is not None and scratch.dtype == dtype and scratch.numel() >= x.numel():
        xc = torch.sub(x, mu, out=scratch[: x.numel()].view(x.shape))
    else:
        xc = x - mu
    n = x.shape[0]
    if out is not None and out.dtype == dtype and out.shape == (n, n):
        gram = torch.mm(xc, xc.T, out=out)
    else:
        gram = xc @ xc.T
    energy = gram.diagonal().sum() + n * (mu * mu).sum()
    return gram, energy


def patch():
    """Route the engine's hooks through :func:`old_linear_gram`; returns the undo."""
    from simtorch import functional as F

    orig = F.capture_product, F.finish_grams_

    def product(x, scratch=None, out=None, exact=False):
        g, energy = old_linear_gram(x, scratch, out)
        mu = x.reshape(x.shape[0], -1).mean(dim=0, keepdim=True) if exact else None  # raw products only
        return g, energy - g.diagonal().sum(), mu

    # the engine's capture calls F.capture_product per layer, then F.finish_grams_ per stack
    F.capture_product = product
    F.finish_grams_ = lambda g, extra: g.diagonal(dim1=-2, dim2=-1).sum(-1) + extra

    def undo() -> None:
        F.capture_product, F.finish_grams_ = orig

    return undo


def main() -> None:
    import common as C
    from simtorch import functional as F

    torch.set_num_threads(1)
    w = C.WORKLOADS["W1"]
    ma, mb = C.build_models(w)
    sa, sb = C.wrap(w, ma, mb)
    x = next(iter(C.make_loader(128, w.image_size, w.batch, torch.device("cpu"))))[0]
    acts = [t.reshape(128, -1).contiguous() for sm in (sa, sb) for t in sm.activations(x).values()]
    scratch, out = torch.empty(max(a.numel() for a in acts)), torch.empty(128, 128)
    variants = {"bare GEMM": lambda a: torch.mm(a, a.T, out=out), "old linear_gram": lambda a: old_linear_gram(a, scratch, out),
                "capture_product": lambda a: F.capture_product(a, scratch, out)}
    best = {k: float("inf") for k in variants}
    for _ in range(30):
        for k, f in variants.items():
            t = time.thread_time()
            for a in acts:
                f(a)
            best[k] = min(best[k], time.thread_time() - t)
    for k, v in best.items():
        print(f"{k:20s} {v * 1e3:8.2f} ms per batch (32 layers, 1 thread)  {v / best['bare GEMM']:.3f} × bare GEMM")


if __name__ == "__main__":
    main()
