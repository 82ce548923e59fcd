"""Where simtorch's time inside W1's real forward pass goes, piece by piece (issue 12).

    python benchmarks/prototypes/pass_pieces.py [W1|W1-many|W1-wide] [rounds]   # default W1, 3

Two runs over the workload (N = 1024, 2 threads, CPU), each repeated ``rounds`` times
(medians): ``simtorch.CKA`` with ``perf_counter`` around the engine's pieces (the products
by activation width, the head statistics, the general capture path (less its products:
the small layers, and every layer on the first batch), the deferred check,
the double centring, the metric's update), and the floor's hooks (one bare
``torch.mm(x, x.T)`` per hooked layer, ``common.grams_only``) timed the same way. Inside the
pass every operation costs several times what it costs on warm data outside it, so only
timings taken in the pass say where a batch's time goes. The wrappers add about a
microsecond per call; nothing in simtorch is changed on disk.
"""

from __future__ import annotations

import collections
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common as C  # noqa: E402
import simtorch  # noqa: E402
from simtorch import capture, engine  # noqa: E402
from simtorch import functional as F  # noqa: E402
from simtorch.functional import linear_grams as LG  # noqa: E402
from simtorch.metrics import cka as MC  # noqa: E402

Totals = collections.defaultdict


def timing(spent: dict, key: Callable[..., Any] | str, f: Callable[..., Any]) -> Callable[..., Any]:
    """``f`` with its time added to ``spent[key]`` (``key`` a name, or a function of the arguments)."""
    def timed(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        r = f(*a, **k)
        spent[key(*a) if callable(key) else key] += time.perf_counter() - t0
        return r
    return timed


def simtorch_pieces(sa: Any, sb: Any, loader: Any) -> dict:
    spent: dict = Totals(float)
    # the package's names (the lean hook's) and linear_grams' own (the general path's)
    saved = [(F, "product_into"), (LG, "product_into"), (F, "head_shift"), (LG, "head_shift"),
             (capture.LayerCapture, "_capture"),
             (capture.LayerCapture, "verify"), (capture.LayerCapture, "finish"), (engine, "_stack"),
             (MC.CKAMetric, "update")]
    originals = [getattr(o, n) for o, n in saved]
    try:
        general = [False]  # inside the general path: its products are subtracted from its time

        def product_key(x: Any, out: Any, halves: bool) -> str:
            if general[0]:
                return "products in the general path"
            return f"product d={x.shape[1]}{' (halves)' if halves else ''}"

        F.product_into = LG.product_into = timing(spent, product_key, LG.product_into)
        F.head_shift = LG.head_shift = timing(spent, "head statistics (head_shift)", LG.head_shift)
        in_general = timing(spent, "general path (_capture)", capture.LayerCapture._capture)

        def general_path(*a: Any) -> None:
            general[0] = True
            try:
                in_general(*a)
            finally:
                general[0] = False

        capture.LayerCapture._capture = general_path
        capture.LayerCapture.verify = timing(spent, "deferred check (verify)", capture.LayerCapture.verify)
        capture.LayerCapture.finish = timing(spent, "double centring, energies (finish)", capture.LayerCapture.finish)
        engine._stack = timing(spent, "stacking and moving, finish included (_stack)", engine._stack)
        MC.CKAMetric.update = timing(spent, "CKA metric update", MC.CKAMetric.update)
        t0 = time.perf_counter()
        simtorch.CKA(sa, sb, device="cpu", progress=False).compute(loader)
        spent["whole call"] = time.perf_counter() - t0
        spent["general path (_capture)"] -= spent["products in the general path"]
    finally:
        for (o, n), f in zip(saved, originals):
            setattr(o, n, f)
    return spent


def floor_pieces(sa: Any, sb: Any, loader: Any) -> dict:
    spent: dict = Totals(float)

    def hook(module: Any, args: Any, out: Any) -> None:
        x = out.reshape(out.shape[0], -1)
        t0 = time.perf_counter()
        torch.mm(x, x.T)
        spent[f"product d={x.shape[1]}"] += time.perf_counter() - t0

    handles = [sm.module(name).register_forward_hook(hook) for sm in (sa, sb) for name in sm.layer_names]
    try:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for batch in loader:
                sa.model(batch[0])
                sb.model(batch[0])
        spent["whole call"] = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
    return spent


def main() -> None:
    torch.set_num_threads(2)
    w, rounds, ma, mb, sa, sb, loader = C.prototype_setup("W1", 3)
    ma.eval(), mb.eval()
    batches = len(loader)
    runs: dict[str, list[dict]] = {"simtorch": [], "floor": []}
    for r in range(rounds + 1):  # the first round warms up
        for kind in (["simtorch", "floor"] if r % 2 else ["floor", "simtorch"]):
            got = simtorch_pieces(sa, sb, loader) if kind == "simtorch" else floor_pieces(sa, sb, loader)
            if r:
                runs[kind].append(got)
    print(f"{w.name}: {len(sa.layer_names)}×{len(sb.layer_names)} layers, {batches} batches of {w.batch}, "
          f"{rounds} rounds, ms per batch (median)")
    for kind, rs in runs.items():
        keys = sorted({k for r in rs for k in r}, key=lambda k: (not k.startswith("product"), k))
        print(f"  {kind}")
        total = 0.0
        for k in keys:
            ms = statistics.median(r.get(k, 0.0) for r in rs) * 1e3 / batches
            if k.startswith("product"):
                total += ms
            print(f"    {k:48s} {ms:8.2f}")
        print(f"    {'all products':48s} {total:8.2f}")


if __name__ == "__main__":
    main()
