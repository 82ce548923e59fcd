"""Whole forward passes with different Gram hooks, paired and interleaved (issue 12).

    python benchmarks/prototypes/capture_variants.py [W1|W1-many|W1-wide] [rounds] [kinds] [threads]

``kinds``: comma list (default ``none,floor,capture,nocheck``; also ``nocheck_trace``,
``nocheck_sum``, ``nocheck_both``: the check's reads put back one at a time). With
``threads`` = 1 the process CPU time is timed (less disturbed by a busy machine).

``hook_in_situ.py`` times the hook bodies; this times what the user waits for, the whole
pass over N = 1024 of both models, so the hooks' effect on the convolutions around them
(evicted caches) is counted too. Variants, each a hook on every layer of the workload:

- ``none``: no hook (forward only);
- ``floor``: ``torch.mm(x, x.T)`` into the layer's slot of a reused stack;
- ``capture``: :func:`simtorch.functional.capture_product` with the check in the hook;
- ``nocheck``: ``capture_product(..., defer=True)``, the same decision and product without
  the check (its reads done for the whole stack after the pass, as the engine does them);
- ``hold``: pytorch-cka's way: the hook keeps the output, the same bare GEMMs run after each
  model's call (does deferring the products help the convolutions?).

Ratios are paired within a round (order rotated), medians over rounds.
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


def nocheck(x: torch.Tensor, scratch: torch.Tensor, out: torch.Tensor, read: str = "") -> None:
    g, _, _ = F.capture_product(x, scratch, out, defer=True)  # as the engine's hooks make it
    if read == "trace":
        torch.trace(g).item()
    elif read == "sum":
        g.sum().item()
    elif read == "both":
        torch.stack((g.diagonal().sum(), g.sum())).tolist()


def main() -> None:
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    torch.set_num_threads(threads)
    clock = time.process_time if threads == 1 else time.perf_counter
    w, rounds, ma, mb, sa, sb, loader = C.prototype_setup(rounds=5)
    n_layers = len(sa.layer_names) + len(sb.layer_names)
    stack = torch.empty(n_layers, w.batch, w.batch)
    scratch = torch.empty(1 << 24)

    def run(kind: str) -> float:
        handles, idx, held = [], [0], []

        def hook(mod, args, out):
            i = idx[0] % n_layers
            idx[0] += 1
            x = out.detach().reshape(out.shape[0], -1)
            if kind == "hold":
                held.append((x, stack[i]))
            elif kind == "floor":
                torch.mm(x, x.T, out=stack[i])
            elif kind == "capture":
                F.capture_product(x, scratch, stack[i])
            else:
                nocheck(x, scratch, stack[i], kind[8:])

        if kind != "none":
            for sm in (sa, sb):
                for name in sm.layer_names:
                    handles.append(sm.base_model.get_submodule(name).register_forward_hook(hook))
        try:
            t = clock()
            with torch.inference_mode():
                for b in loader:
                    for model in (sa.model, sb.model):
                        model(b[0])
                        for x, slot in held:
                            torch.mm(x, x.T, out=slot)
                        held.clear()
                    if kind.startswith("nocheck"):
                        stack.diagonal(dim1=-2, dim2=-1).sum(-1).tolist(), stack.sum((-2, -1)).tolist()
            return clock() - t
        finally:
            for h in handles:
                h.remove()

    kinds = sys.argv[3].split(",") if len(sys.argv) > 3 else ["none", "floor", "capture", "nocheck"]
    for k in kinds:
        run(k)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(rounds):
        order = kinds[r % len(kinds):] + kinds[: r % len(kinds)]
        for k in order:
            times[k].append(run(k))
    print(f"{w.name}: {n_layers} layers, N=1024, {rounds} rounds; median s, and paired ratios to floor")
    for k in kinds:
        ratio = statistics.median(a / b for a, b in zip(times[k], times["floor"]))
        print(f"  {k:8s} {statistics.median(times[k]):.3f} s   ÷ floor {ratio:.3f}")


if __name__ == "__main__":
    main()
