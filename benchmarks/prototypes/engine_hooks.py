"""The engine's own capture hooks, timed inside the real forward pass (issue 12).

    python benchmarks/prototypes/engine_hooks.py [W1|W1-many|W1-wide] [rounds]
    python benchmarks/prototypes/engine_hooks.py W1 7 compare3   # compare(cka, dcka, ii): lean vs general

Runs ``simtorch.CKA`` on the workload (N = 1024) with every hook that
:class:`simtorch.capture.LayerCapture` registers wrapped in ``perf_counter``, in two
variants, interleaved: ``lean`` (as shipped: after the first batch, a layer whose output
needs no reduction is captured by ``LayerCapture._lean``) and ``general`` (the per-layer
plans disabled, every call through ``SimilarityModel.reduce`` and
:func:`~simtorch.functional.capture_product`). Both make the same products; the difference
is the Python and attribute reads around them, which inside the pass cost several times
what they cost outside it. Prints the hooks' total per batch (median over rounds) and the
paired difference. Nothing in simtorch is changed on disk. With ``compare3`` the pass is
``simtorch.compare(..., metrics=("cka", "dcka", "ii"))`` and ``general`` is how it ran before
2026-12-03 afternoon: II's feature transform asked for on every layer, so no layer took the
lean path (``LayerCapture._fixed_feature`` disabled); ``lean`` is as shipped.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common as C  # noqa: E402
import simtorch  # noqa: E402
from simtorch import capture  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    w, rounds, ma, mb, sa, sb, loader = C.prototype_setup(rounds=5)
    batches = len(loader)
    spent = [0.0]
    make_hook, make_plan = capture.LayerCapture._hook, capture.LayerCapture._plan

    def timed_hook(self, i, name):
        hook = make_hook(self, i, name)

        def run(module, args, output):
            t = time.perf_counter()
            hook(module, args, output)
            spent[0] += time.perf_counter() - t

        return run

    def no_plan(self, i, output, t, plain):
        return None

    three = len(sys.argv) > 3 and sys.argv[3] == "compare3"
    fixed = capture.LayerCapture._fixed_feature
    capture.LayerCapture._hook = timed_hook

    def once(kind: str) -> float:
        spent[0] = 0.0
        if three:
            capture.LayerCapture._fixed_feature = fixed if kind == "lean" else (lambda self, n, d, device: None)
            simtorch.compare(sa, sb, loader, metrics=("cka", "dcka", "ii"), device="cpu", progress=False)
        else:
            capture.LayerCapture._plan = make_plan if kind == "lean" else no_plan
            simtorch.CKA(sa, sb, device="cpu", progress=False).compute(loader)
        return spent[0] / batches

    kinds = ["lean", "general"]
    try:
        for k in kinds:
            once(k)
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for r in range(rounds):
            for k in kinds[r % 2:] + kinds[: r % 2]:
                times[k].append(once(k))
    finally:
        capture.LayerCapture._hook, capture.LayerCapture._plan = make_hook, make_plan
        capture.LayerCapture._fixed_feature = fixed
    n_layers = len(sa.layer_names) + len(sb.layer_names)
    print(f"{w.name}{' compare3' if three else ''}: {n_layers} hooked layers, batch {w.batch}, {rounds} rounds (hooks' time inside the pass)")
    for k in kinds:
        print(f"  {k:8s} {statistics.median(times[k]) * 1e3:6.2f} ms per batch")
    diff = [(g - lean) * 1e3 for lean, g in zip(times["lean"], times["general"])]
    print(f"  general − lean: {statistics.median(diff):.2f} ms per batch (paired median; "
          f"{min(diff):.2f} to {max(diff):.2f}), {statistics.median(diff) / n_layers * 1e3:.0f} µs per layer")


if __name__ == "__main__":
    main()
