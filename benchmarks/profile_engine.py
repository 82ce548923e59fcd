"""Where does simtorch's time above forward-only go?  (diagnosis helper for issues 5 and 12)

    python benchmarks/profile_engine.py --workload W1 --threads 1
    python benchmarks/profile_engine.py --workload W1-many --n 512 --table
    python benchmarks/profile_engine.py --workload W1 --baseline     # the Gram path before issue 12
    python benchmarks/profile_engine.py --workload W1 --peer         # also profile pytorch-cka

Runs `forward-only` and the similarity computation once each under torch.profiler, with
the engine's pieces wrapped in ``record_function`` ranges by monkeypatching *this process
only* (simtorch's files are not touched): the Gram in the hook, the output reduction, the
per-batch hook/mode set-up and tear-down (``capturing``), stacking the Grams, the finite
check, the float64 cast, the (U-)centring, the metric update (HSIC matmul + sums) and the
final ``result()``. Prints each range's CPU time per batch and as a % of forward-only, and
the FLOPs of the Grams against the FLOPs of the forward passes.

Use ``--threads 1`` for CPU-time figures that a busy machine disturbs least.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

RANGES = ["hook:gram", "engine:finish_grams", "hook:reduce", "capture:attach", "capture:detach", "engine:stack",
          "engine:finite_guard", "metric:to_float64", "metric:centre", "metric:ii_rows", "metric:ii_sums"]


def _wrap(obj: object, attr: str, label: str) -> None:
    fn = getattr(obj, attr)

    @functools.wraps(fn)
    def wrapped(*a, **k):
        with record_function(label):
            return fn(*a, **k)

    setattr(obj, attr, wrapped)


def instrument() -> None:
    import simtorch.capture as Cap
    import simtorch.engine as E
    import simtorch.placement as P
    from simtorch import functional as F
    from simtorch.metrics import Metric
    from simtorch.model import sim_model as M

    # the hooks call these through the functional package the capture imported
    _wrap(F, "capture_product", "hook:gram")
    _wrap(F, "finish_grams_", "engine:finish_grams")
    _wrap(F, "ii_gram_rows", "metric:ii_rows")
    _wrap(F, "ii_rows_sums", "metric:ii_sums")
    _wrap(M.SimilarityModel, "reduce", "hook:reduce")
    _wrap(E, "_stack", "engine:stack")
    _wrap(P.FiniteGuard, "add", "engine:finite_guard")
    _wrap(F, "kernel_stack", "metric:to_float64")
    _wrap(F, "centered_flat", "metric:centre")
    for cls in _subclasses(Metric):
        if "update" in cls.__dict__:
            _wrap(cls, "update", f"metric:update:{cls.__name__}")
        if "compute" in cls.__dict__:
            _wrap(cls, "compute", f"metric:compute:{cls.__name__}")
    orig = Cap.LayerCapture.attached

    @contextlib.contextmanager
    def attached(self):
        cm = orig(self)
        with record_function("capture:attach"):
            cm.__enter__()
        try:
            yield
        except BaseException:
            if not cm.__exit__(*sys.exc_info()):
                raise
        else:
            with record_function("capture:detach"):
                cm.__exit__(None, None, None)

    Cap.LayerCapture.attached = attached


def _subclasses(cls: type) -> list[type]:
    out, todo = [], [cls]
    while todo:
        c = todo.pop()
        for s in c.__subclasses__():
            out.append(s)
            todo.append(s)
    return out


def gram_flops(sa, sb, x: torch.Tensor) -> tuple[float, float]:
    """(FLOPs of one batch's Grams, FLOPs of one batch's forward passes of both models)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode():
        fc = FlopCounterMode(display=False)
        with fc:
            sa.model(x)
            sb.model(x)
        fwd = float(fc.get_total_flops())
        n = x.shape[0]
        d = sum(t.reshape(n, -1).shape[1] for sm in (sa, sb) for t in sm.activations(x).values())
    return 2.0 * n * n * d, fwd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default="W1", choices=[k for k in C.WORKLOADS])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--table", action="store_true", help="also print the top aten ops of both runs")
    ap.add_argument("--baseline", action="store_true",
                    help="hooks use the Gram path before issue 12 (prototypes/old_gram.py), for a before/after")
    ap.add_argument("--peer", action="store_true", help="also profile pytorch-cka (the bench extra) on the same loader")
    args = ap.parse_args()
    if args.baseline:
        sys.path.insert(0, str(Path(__file__).resolve().parent / "prototypes"))
        import old_gram

        old_gram.patch()
    C.set_threads(args.threads)
    dev = torch.device("cpu")
    w = C.WORKLOADS[args.workload]
    ma, mb = C.build_models(w)
    loader = C.make_loader(args.n, w.image_size, w.batch, dev)
    sa, sb = C.wrap(w, ma, mb)
    n_batches = len(loader)
    fwd = C.forward_only((ma, mb), loader, dev)
    sim = C.similarity(w, sa, sb, loader, dev, {})
    gflop, fflop = gram_flops(sa, sb, next(iter(loader))[0])
    todo = [("forward", fwd), ("sim", sim)]
    if args.peer:
        import cka

        todo.append(("pytorch-cka", lambda: cka.compute_cka(ma, mb, loader, layers=sa.layer_names,
                                                             model2_layers=sb.layer_names, device="cpu", progress=False)))
    for _, fn in todo:  # warm-up
        fn()
    instrument()
    res = {}
    for name, fn in todo:
        with profile(activities=[ProfilerActivity.CPU]) as p:
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            res[name] = (time.perf_counter() - t0, time.process_time() - c0, p)
    fw_wall, fw_cpu, pf = res["forward"]
    sw_wall, sw_cpu, ps = res["sim"]
    print(f"{w.name}: N={args.n}, batch {w.batch}, {n_batches} batches, {torch.get_num_threads()} threads, "
          f"grid {len(sa.layer_names)}x{len(sb.layer_names)}")
    print(f"Gram FLOPs / forward FLOPs per batch: {gflop / 1e9:.2f} / {fflop / 1e9:.2f} GFLOP = {gflop / fflop:.1%}")
    print(f"forward-only: wall {fw_wall:.3f} s, CPU {fw_cpu:.3f} s;  sim: wall {sw_wall:.3f} s, CPU {sw_cpu:.3f} s "
          f"(ratio wall {sw_wall / fw_wall:.3f}, CPU {sw_cpu / fw_cpu:.3f}; profiler overhead included)"
          + ("  [baseline: the Gram path before issue 12]" if args.baseline else ""))
    if "pytorch-cka" in res:
        pw, pc, _ = res["pytorch-cka"]
        print(f"pytorch-cka: wall {pw:.3f} s, CPU {pc:.3f} s (ratio wall {pw / fw_wall:.3f}, CPU {pc / fw_cpu:.3f}); "
              f"simtorch ÷ pytorch-cka: wall {sw_wall / pw:.3f}, CPU {sw_cpu / pc:.3f}")
    mm_f = sum(e.self_cpu_time_total for e in pf.key_averages() if e.key == "aten::mm") / 1e3
    for name, (_, _, p) in res.items():
        conv = sum(e.self_cpu_time_total for e in p.key_averages() if e.key == "aten::mkldnn_convolution") / 1e3
        mm = sum(e.self_cpu_time_total for e in p.key_averages() if e.key == "aten::mm") / 1e3
        print(f"  {name:12s} convolutions {conv / n_batches:8.1f} ms/batch, aten::mm {(mm - mm_f) / n_batches:7.1f} ms/batch")
    ka = {e.key: e for e in ps.key_averages()}
    print(f"\n{'range (inclusive CPU time)':28s} {'ms/batch':>9s} {'% of fwd':>9s} {'calls':>7s}")
    names = [r for r in RANGES if r in ka]
    names += sorted(k for k in ka if k.startswith("metric:update:") or k.startswith("metric:result:"))
    for r in names:
        e = ka[r]
        ms = e.cpu_time_total / 1e3
        print(f"{r:28s} {ms / n_batches:9.2f} {ms / 1e3 / fw_cpu:9.1%} {e.count:7d}")
    if args.table:
        for name, (_, _, p) in res.items():
            print(f"\n===== {name}: top ops by self CPU time")
            print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
