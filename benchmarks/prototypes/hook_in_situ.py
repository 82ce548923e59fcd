"""What the Gram capture costs per layer *inside* the forward pass, against a bare GEMM hook.

    python benchmarks/prototypes/hook_in_situ.py [W1|W1-many|W1-wide] [rounds]

Runs the workload's forward passes with hooks that time (``perf_counter`` around the hook
body only) either :func:`simtorch.functional.capture_product` into a reused stack, as the
engine's hooks call it, or a bare ``torch.mm(x, x.T)``; medians over ``rounds`` runs of
N = 1024 each, grouped by the path each layer takes (``exact`` mean, ``raw``, ``shift``)
and its width. Timed this way the per-layer overheads are several times what
``layer_passes.py`` measures on the same activations outside the forward pass: between
two convolutions the interpreter's and the small operations' data are out of the caches,
so every Python line and every small tensor operation costs tens of microseconds.
Nothing in simtorch is changed (the path is read by wrapping ``gram_product`` here).
"""

from __future__ import annotations

import collections
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common as C  # noqa: E402
from simtorch import functional as F  # noqa: E402
from simtorch.functional import linear_grams as LG  # noqa: E402


#: as the engine's CPU hooks call it: the κ check left for after the pass (``--in-hook``: in the hook)
DEFER = "--in-hook" not in sys.argv


def main() -> None:
    sys.argv = [a for a in sys.argv if a != "--in-hook"]
    torch.set_num_threads(2)
    w, rounds, ma, mb, sa, sb, loader = C.prototype_setup(rounds=3)
    n_layers = len(sa.layer_names) + len(sb.layer_names)
    stack = torch.empty(n_layers, w.batch, w.batch)
    scratch = torch.empty(1 << 24)
    times: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
    path: dict[int, tuple[str, int]] = {}
    product = LG.gram_product
    last = {"path": "raw"}

    def spy(x, shift=None, scratch=None, out=None):
        last["path"] = "raw" if shift is None else "shift"
        return product(x, shift, scratch, out)

    LG.gram_product = spy

    def hooked(kind: str):
        def run() -> None:
            handles, idx = [], [0]

            def hook(mod, args, out):
                i = idx[0] % n_layers
                idx[0] += 1
                x = out.detach().reshape(out.shape[0], -1)
                t = time.perf_counter()
                if kind == "floor":
                    torch.mm(x, x.T)
                else:
                    F.capture_product(x, scratch, stack[i], defer=DEFER)
                    path[i] = (last["path"] if LG.large(*x.shape) else "exact", x.shape[1])
                times[(kind, i)].append(time.perf_counter() - t)

            for sm in (sa, sb):
                for name in sm.layer_names:
                    handles.append(sm.base_model.get_submodule(name).register_forward_hook(hook))
            try:
                with torch.inference_mode():
                    for b in loader:
                        sa.model(b[0])
                        sb.model(b[0])
            finally:
                for h in handles:
                    h.remove()

        return run

    try:
        capture, floor = hooked("capture"), hooked("floor")
        capture(), floor()
        times.clear()
        for _ in range(rounds):
            capture(), floor()
    finally:
        LG.gram_product = product
    groups: dict[tuple[str, int], list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for i in range(n_layers):
        g = groups[path[i]]
        g[0] += 1
        g[1] += statistics.median(times[("capture", i)])
        g[2] += statistics.median(times[("floor", i)])
    print(f"{w.name}: {n_layers} layers, per batch of {w.batch}, medians of {rounds} runs (inside the forward pass)")
    for (p, d), (k, c, f) in sorted(groups.items()):
        print(f"  {p:5s} d={d:6d} ×{k:2d}: capture_product {c / k * 1e6:6.0f} µs, bare GEMM {f / k * 1e6:6.0f} µs, "
              f"extra {(c - f) / k * 1e6:5.0f} µs per layer ({(c - f) * 1e3:5.2f} ms per batch)")
    tc, tf = sum(g[1] for g in groups.values()), sum(g[2] for g in groups.values())
    print(f"  all: capture_product {tc * 1e3:.2f} ms, bare GEMM {tf * 1e3:.2f} ms per batch")


if __name__ == "__main__":
    main()
