"""simtorch against its fastest peer, pytorch-cka, side by side (issue 12).

    python benchmarks/peers.py                          # W1, W1-wide, W1-many; 3 repeats; 2 threads
    python benchmarks/peers.py --workloads W1 --repeats 5 --n 512

Needs the optional ``bench`` extra (``pip install -e .[bench]``, i.e. ``pytorch-cka`` from
PyPI, import name ``cka``); without it the script says so and stops.

Every repeat of every workload is **seven fresh processes, one per phase**, built side by
side: each builds the models and loader and warms its phase up on two batches; then, in
``--rounds`` rounds (default 3) whose order rotates from round to round and from repeat to
repeat, the driver tells one process at a time to run its phase once: ``forward`` (both
models under ``torch.inference_mode``, nothing else), ``floor`` (the same plus one bare
float32 GEMM ``X Xᵀ`` per hooked layer: the cost of any exact Gram, ``common.grams_only``),
``pytorch-cka``
(``cka.compute_cka(m1, m2, loader, layers=..., model2_layers=..., device=..., progress=False)``,
its uncentred float32 Grams and float32 HSIC), ``simtorch`` (``simtorch.CKA``, linear
unbiased, the default), and the same floor and simtorch with the images in the
``channels_last`` memory format: ``floor-cl`` (each activation multiplied in its memory
order) and ``simtorch-cl`` (``RunOptions(channels_last=True)``), and ``pytorch-cka-cl``: pytorch-cka
has no such option, so its loader gives it the same images (its hooks' ``flatten(1)`` then
copies every channels_last activation). One process per phase because phases in one process share a heap:
after pytorch-cka's phase, which holds every activation of a batch, the others paid tens of
thousands of minor page faults per pass (``--shared`` runs all phases of a repeat in one
process, the method before 2026-12-02 evening; the table reports each phase's page faults).
Ratios are paired within a round (the phases ran seconds apart, so
drifts of a shared machine cancel); the table gives their median over all rounds of all
repeats, a 95 % bootstrap interval of that median (so a ratio on either side of a
target can be told from the noise of a shared machine), and the ratio of the fastest runs
(min/min). Both grids are compared with the
float64 reference of ``reference64.reference_grid`` (the same unbiased minibatch estimator,
models run in float64; cached under ``benchmarks/results/cache``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from paired import TAG, PhaseProcess, completed, median_interval, orders, thread_env, wall  # noqa: E402

PEER_WORKLOADS = ["W1", "W1-wide", "W1-many"]
PHASES = ["forward", "floor", "pytorch-cka", "simtorch", "floor-cl", "pytorch-cka-cl", "simtorch-cl"]
#: the phases that get a grid error against the float64 reference
GRIDS = ("simtorch", "pytorch-cka", "simtorch-cl", "pytorch-cka-cl")


def have_peer() -> str | None:
    """pytorch-cka's version, or None when it is not installed."""
    try:
        import cka  # noqa: F401
    except ImportError:
        return None
    return getattr(sys.modules["cka"], "__version__", "?")


# ----------------------------------------------------------------------------- worker


def setup(cfg: dict, owned: list[str]) -> tuple[dict, Any]:
    """The workload's models, loader and phases, the ``owned`` ones warmed up on two batches;
    and a function that gives a phase's grid error against the float64 reference."""
    import torch

    import common as C
    import reference64 as R

    C.set_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    w = C.WORKLOADS[cfg["workload"]]
    n = cfg.get("n") or w.n
    ma, mb = C.build_models(w)
    ma.to(device), mb.to(device)
    loader = C.make_loader(n, w.image_size, w.batch, device)
    sa, sb = C.wrap(w, ma, mb)
    out: dict = {}
    out_cl: dict = {}

    def peer(dl: Any) -> Any:
        import cka

        return cka.compute_cka(ma, mb, dl, layers=sa.layer_names, model2_layers=sb.layer_names,
                               device=cfg["device"], progress=False)[0]

    def run_peer() -> None:
        out["pytorch-cka"] = peer(loader)

    def run_peer_cl() -> None:
        out["pytorch-cka-cl"] = peer(C.ChannelsLastLoader(loader))

    phases = {"forward": C.forward_only((ma, mb), loader, device), "floor": C.grams_only(sa, sb, loader, device),
              "pytorch-cka": run_peer, "simtorch": C.similarity(w, sa, sb, loader, device, out, metric="cka"),
              "compare3": C.similarity(w, sa, sb, loader, device, {}, metric="compare3"),  # compare3.py
              "floor-cl": C.grams_only(sa, sb, loader, device, channels_last=True), "pytorch-cka-cl": run_peer_cl,
              "simtorch-cl": C.similarity(w, sa, sb, loader, device, out_cl, metric="cka", channels_last=True)}
    warm = C.make_loader(2 * w.batch, w.image_size, w.batch, device)
    warmers = {"forward": C.forward_only((ma, mb), warm, device), "floor": C.grams_only(sa, sb, warm, device),
               "pytorch-cka": lambda: peer(warm),
               "simtorch": C.similarity(w, sa, sb, warm, device, {}, metric="cka"),
               "compare3": C.similarity(w, sa, sb, warm, device, {}, metric="compare3"),
               "floor-cl": C.grams_only(sa, sb, warm, device, channels_last=True),
               "pytorch-cka-cl": lambda: peer(C.ChannelsLastLoader(warm)),
               "simtorch-cl": C.similarity(w, sa, sb, warm, device, {}, metric="cka", channels_last=True)}
    for p in owned:
        warmers[p]()

    def error(phase: str) -> dict:
        t0 = time.perf_counter()
        ref64, hit = R.workload_reference(w, n, ma, mb, sa.layer_names, sb.layer_names, loader, device,
                                          use_cache=cfg.get("ref_cache", True))
        grid = {"simtorch": out.get("grid"), "simtorch-cl": out_cl.get("grid")}.get(phase)
        if grid is None:
            grid = out[phase].double().cpu()
        return {"err": R.max_abs_err(grid, ref64), "ref_cached": hit, "ref_s": time.perf_counter() - t0}

    info = {"workload": w.name, "n": n, "repeat": cfg["repeat"], "grid": [len(sa.layer_names), len(sb.layer_names)],
            "threads": torch.get_num_threads(),
            # which tree was timed (a worktree on PYTHONPATH for a "before" run)
            "simtorch": str(Path(C.simtorch.__file__).resolve().parent.parent),
            "timed": lambda p: C.timed(phases[p], device), "error": error}
    return info, device


def worker(cfg: dict) -> dict:
    """``--shared``: every phase in this one process, round after round."""
    info, _ = setup(cfg, PHASES)
    timed, error = info.pop("timed"), info.pop("error")
    rec = {**info, "isolated": False, "rounds": []}
    for order in orders(cfg["repeat"], cfg.get("rounds", 3), PHASES):
        rec["rounds"].append({"order": order, **{p: timed(p) for p in order}})
    if cfg.get("accuracy"):
        errs = {p: error(p) for p in GRIDS}
        rec.update({f"err_{p.replace('-', '_')}": e["err"] for p, e in errs.items()})
        rec["ref_cached"], rec["ref_s"] = errs["simtorch"]["ref_cached"], errs["simtorch"]["ref_s"]
    return rec


def serve(cfg: dict) -> None:
    """One phase in its own process (the default): build and warm up, then run the phase
    once per ``run`` line on stdin (``error`` gives its grid's error), one tagged JSON line
    back each time."""
    phase = cfg["phase"]
    info, _ = setup(cfg, [phase])
    timed, error = info.pop("timed"), info.pop("error")
    print(TAG + json.dumps(info), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            print(TAG + json.dumps(timed(phase)), flush=True)
        elif cmd == "error":
            print(TAG + json.dumps(error(phase)), flush=True)
        else:
            return


# ----------------------------------------------------------------------------- driver


def spawn(cfg: dict) -> dict:
    """One repeat with ``--shared``: a fresh process runs every phase."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        path = f.name
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", json.dumps(cfg), "--_out", path]
    try:
        p = subprocess.run(cmd, env=thread_env(cfg), capture_output=True, text=True)
        if p.returncode != 0:
            return {"error": (p.stderr or p.stdout)[-2000:]}
        return json.loads(Path(path).read_text())
    finally:
        Path(path).unlink(missing_ok=True)


def lockstep(cfg: dict, phases: list[str] = PHASES) -> dict:
    """One repeat (the default): a fresh process for each phase, built side by side and
    then told in turn to run their phase once per round, so the rounds stay paired in time
    while no phase runs on a heap another phase shaped. In one shared process pytorch-cka's
    phase (it holds every activation of a batch) left the next phases tens of thousands of
    minor page faults per pass, which cost simtorch several percent (benchmarks/README.md)."""
    procs = {p: PhaseProcess(Path(__file__).resolve(), cfg, p) for p in phases}
    try:
        infos = {p: pp.reply() for p, pp in procs.items()}
        rec = {**infos["simtorch"], "isolated": True, "rounds": []}
        for order in orders(cfg["repeat"], cfg.get("rounds", 3), phases):
            rec["rounds"].append({"order": order, **{p: procs[p].ask("run") for p in order}})
        if cfg.get("accuracy"):
            # simtorch's process first: it computes (or loads) the reference the others read
            errs = {p: procs[p].ask("error") for p in GRIDS if p in procs}
            rec.update({f"err_{p.replace('-', '_')}": e["err"] for p, e in errs.items()})
            rec["ref_cached"], rec["ref_s"] = errs["simtorch"]["ref_cached"], errs["simtorch"]["ref_s"]
        return rec
    except RuntimeError as exc:
        return {"error": str(exc)}
    finally:
        for pp in procs.values():
            pp.close()


def summarise(runs: list[dict]) -> dict:
    """Paired ratios over every round of every process: the median of the per-round ratios
    (the two phases of a round ran seconds apart, so a shared machine's drifts cancel) and
    min/min (the fastest run of each)."""
    ok, rounds, error = completed(runs)
    if error:
        return error

    def paired(a: str, b: str) -> float:
        return statistics.median(wall(rd, a) / wall(rd, b) for rd in rounds)

    def minmin(a: str, b: str) -> float:
        return min(wall(rd, a) for rd in rounds) / min(wall(rd, b) for rd in rounds)

    def interval(a: str, b: str) -> list[float]:
        return median_interval([wall(rd, a) / wall(rd, b) for rd in rounds])

    def rss(k: str) -> float:
        return statistics.median(rd[k]["peak_rss_mib"] for rd in rounds)

    def faults(k: str) -> float | None:
        got = [rd[k]["minor_faults"] for rd in rounds if "minor_faults" in rd[k]]
        return statistics.median(got) if got else None

    acc = next((r for r in ok if "err_simtorch" in r), {})
    return {
        "processes": len(ok), "rounds": len(rounds), "grid": ok[0]["grid"], "n": ok[0]["n"],
        "forward_s": statistics.median(wall(rd, "forward") for rd in rounds),
        "floor_over_fwd": paired("floor", "forward"),
        "peer_over_fwd": paired("pytorch-cka", "forward"), "peer_over_fwd_min": minmin("pytorch-cka", "forward"),
        "sim_over_fwd": paired("simtorch", "forward"), "sim_over_fwd_min": minmin("simtorch", "forward"),
        "sim_over_floor": paired("simtorch", "floor"), "sim_over_floor_min": minmin("simtorch", "floor"),
        "sim_over_peer": paired("simtorch", "pytorch-cka"), "sim_over_peer_min": minmin("simtorch", "pytorch-cka"),
        "sim_over_peer_ci95": interval("simtorch", "pytorch-cka"), "sim_over_floor_ci95": interval("simtorch", "floor"),
        "sim_over_peer_per_process": [statistics.median(wall(rd, "simtorch") / wall(rd, "pytorch-cka")
                                                        for rd in r["rounds"]) for r in ok],
        "err_pytorch_cka": acc.get("err_pytorch_cka"), "err_simtorch": acc.get("err_simtorch"),
        "floorcl_over_fwd": paired("floor-cl", "forward"),
        "cl_over_fwd": paired("simtorch-cl", "forward"), "cl_over_fwd_min": minmin("simtorch-cl", "forward"),
        "cl_over_floorcl": paired("simtorch-cl", "floor-cl"), "cl_over_floorcl_min": minmin("simtorch-cl", "floor-cl"),
        "cl_over_peer": paired("simtorch-cl", "pytorch-cka"), "cl_over_peer_min": minmin("simtorch-cl", "pytorch-cka"),
        "cl_over_peer_ci95": interval("simtorch-cl", "pytorch-cka"), "err_simtorch_cl": acc.get("err_simtorch_cl"),
        "peercl_over_fwd": paired("pytorch-cka-cl", "forward"),
        "cl_over_peercl": paired("simtorch-cl", "pytorch-cka-cl"), "cl_over_peercl_min": minmin("simtorch-cl", "pytorch-cka-cl"),
        "cl_over_peercl_ci95": interval("simtorch-cl", "pytorch-cka-cl"), "err_pytorch_cka_cl": acc.get("err_pytorch_cka_cl"),
        "minor_faults": {p: faults(p) for p in PHASES},
        "peak_rss_sim_mib": rss("simtorch"), "peak_rss_peer_mib": rss("pytorch-cka"), "peak_rss_fwd_mib": rss("forward"),
    }


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "—" if x is None or x != x else format(x, spec)


def table(results: dict, peer_version: str) -> str:
    lines = [f"| workload | grid | forward s | floor ÷ forward | pytorch-cka {peer_version} ÷ forward (median / min) "
             "| simtorch ÷ forward (median / min) | simtorch ÷ floor (median / min) "
             "| **simtorch ÷ pytorch-cka** (median / min) | max\\|Δ\\| vs float64 (pytorch-cka / simtorch) "
             "| peak RSS fwd / peer / simtorch MiB | minor page faults per pass fwd / floor / peer / simtorch "
             "/ floor-cl / peer-cl / simtorch-cl |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in results.items():
        if "error" in s:
            lines.append(f"| {name} | ERROR: {s['error'].strip().splitlines()[-1][:120]} |" + " |" * 9)
            continue
        lines.append(
            f"| {name} | {s['grid'][0]}×{s['grid'][1]} | {fmt(s['forward_s'], '.2f')} | {fmt(s['floor_over_fwd'])} | "
            f"{fmt(s['peer_over_fwd'])} / {fmt(s['peer_over_fwd_min'])} | {fmt(s['sim_over_fwd'])} / "
            f"{fmt(s['sim_over_fwd_min'])} | {fmt(s['sim_over_floor'])} / {fmt(s['sim_over_floor_min'])} | "
            f"**{fmt(s['sim_over_peer'])}** / {fmt(s['sim_over_peer_min'])} | "
            f"{fmt(s['err_pytorch_cka'], '.1e')} / {fmt(s['err_simtorch'], '.1e')} | "
            f"{s['peak_rss_fwd_mib']:.0f} / {s['peak_rss_peer_mib']:.0f} / {s['peak_rss_sim_mib']:.0f} | "
            + " / ".join(fmt(s.get("minor_faults", {}).get(p), ".0f") for p in PHASES) + " |")
    lines += ["", "Images in channels_last: simtorch with RunOptions(channels_last=True); 'floor-cl' = the floor "
              "with the same inputs, each activation multiplied in its memory order; 'pytorch-cka-cl' = pytorch-cka "
              "given the same images by its loader:", "",
              "| workload | floor-cl ÷ forward | pytorch-cka-cl ÷ forward | simtorch-cl ÷ forward (median / min) "
              "| simtorch-cl ÷ floor-cl (median / min) | simtorch-cl ÷ pytorch-cka (median / min) "
              "| **simtorch-cl ÷ pytorch-cka-cl** (median / min; 95 % interval) "
              "| max\\|Δ\\| vs float64 (pytorch-cka-cl / simtorch-cl) |", "|---|---|---|---|---|---|---|---|"]
    for name, s in results.items():
        if "error" not in s:
            lo, hi = s["cl_over_peercl_ci95"]
            lines.append(f"| {name} | {fmt(s['floorcl_over_fwd'])} | {fmt(s['peercl_over_fwd'])} | "
                         f"{fmt(s['cl_over_fwd'])} / {fmt(s['cl_over_fwd_min'])} | {fmt(s['cl_over_floorcl'])} / "
                         f"{fmt(s['cl_over_floorcl_min'])} | {fmt(s['cl_over_peer'])} / {fmt(s['cl_over_peer_min'])} | "
                         f"**{fmt(s['cl_over_peercl'])}** / {fmt(s['cl_over_peercl_min'])}; {lo:.3f}–{hi:.3f} | "
                         f"{fmt(s['err_pytorch_cka_cl'], '.1e')} / {fmt(s['err_simtorch_cl'], '.1e')} |")
    out = ["", "Targets (issue 12; 'floor' = forward + one bare float32 GEMM X Xᵀ per hooked layer):"]
    for name, s in results.items():
        if "error" in s:
            continue
        ok = s["sim_over_peer"] <= 1.0 and s["sim_over_peer_min"] <= 1.0
        lo, hi = s["sim_over_peer_ci95"]
        out.append(f"  {'✓' if ok else '✗'} {name}: simtorch ÷ pytorch-cka ≤ 1.00 (median and min): "
                   f"{s['sim_over_peer']:.3f} / {s['sim_over_peer_min']:.3f}  (median's 95 % interval "
                   f"{lo:.3f}–{hi:.3f} over {s['rounds']} paired rounds)")
        ok = s["sim_over_floor"] <= 1.03
        lo, hi = s["sim_over_floor_ci95"]
        out.append(f"  {'✓' if ok else '✗'} {name}: simtorch ÷ floor ≤ 1.03 (median): {s['sim_over_floor']:.3f} "
                   f"(min/min {s['sim_over_floor_min']:.3f}; median's 95 % interval {lo:.3f}–{hi:.3f})")
        for key, peer in (("cl_over_peer", "pytorch-cka"), ("cl_over_peercl", "pytorch-cka-cl")):
            ok = s[key] <= 1.0 and s[f"{key}_min"] <= 1.0
            out.append(f"  {'✓' if ok else '✗'} {name}: simtorch-cl ÷ {peer} ≤ 1.00 (median and min): "
                       f"{s[key]:.3f} / {s[f'{key}_min']:.3f}")
        if s["err_simtorch"] is not None:
            out.append(f"  {'✓' if s['err_simtorch'] <= 1e-6 else '✗'} {name}: simtorch max|Δ| vs float64 ≤ 1e-6: "
                       f"{s['err_simtorch']:.1e} (channels_last {fmt(s['err_simtorch_cl'], '.1e')}; "
                       f"pytorch-cka {s['err_pytorch_cka']:.1e})")
    return "\n".join(lines + out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=",".join(PEER_WORKLOADS), help=f"comma-separated subset of {PEER_WORKLOADS}")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per workload (≥ 3)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every phase within each process")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=None, help="samples (default: the workload's, 1024)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json", default=None, help="where to write the JSON (default benchmarks/results/peers-<time>.json)")
    ap.add_argument("--no-ref-cache", action="store_true", help="recompute the float64 references")
    ap.add_argument("--shared", action="store_true",
                    help="run every phase of a repeat in one process (the method before 2026-12-02, 21:00; "
                         "phases then share one heap)")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_serve", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._serve:
        serve(json.loads(args._serve))
        return 0
    if args._worker:
        Path(args._out).write_text(json.dumps(worker(json.loads(args._worker))))
        return 0
    if args.repeats < 3:
        ap.error("--repeats must be at least 3")
    version = have_peer()
    if version is None:
        print("pytorch-cka is not installed: pip install -e '.[bench]' (PyPI: pytorch-cka, import name cka)")
        return 2
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = [w for w in chosen if w not in PEER_WORKLOADS]
    if bad:
        ap.error(f"unknown workloads {bad}; choose from {PEER_WORKLOADS}")
    import torch

    t_start = time.perf_counter()
    results, raw = {}, {}
    for name in chosen:
        runs = []
        for r in range(args.repeats):
            cfg = {"workload": name, "repeat": r, "rounds": args.rounds, "threads": args.threads, "device": args.device,
                   "n": args.n,
                   "accuracy": r == args.repeats - 1, "ref_cache": not args.no_ref_cache}
            rec = spawn(cfg) if args.shared else lockstep(cfg)
            runs.append(rec)
            if "error" in rec:
                print(f"  {name} repeat {r}: {rec['error'][-1500:]}", flush=True)
            else:
                last = rec["rounds"][-1]
                print(f"  {name} process {r}, last round ({'/'.join(last['order'])}): "
                      + ", ".join(f"{p} {last[p]['wall_s']:.2f} s" for p in PHASES), flush=True)
        raw[name] = runs
        results[name] = summarise(runs)
    meta = {"date": _dt.datetime.now().isoformat(timespec="seconds"),
            "command": "python benchmarks/peers.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "python": platform.python_version(), "torch": torch.__version__, "pytorch_cka": version,
            "threads": args.threads, "device": args.device, "cpu_count": os.cpu_count(),
            "isolated": not args.shared,
            "total_s": time.perf_counter() - t_start}
    trees = sorted({r.get("simtorch", "?") for runs in raw.values() for r in runs if "error" not in r})
    meta["simtorch"] = trees
    text = table(results, version)
    print()
    print(f"{meta['date']}  {meta['command']}  (torch {meta['torch']}, {args.threads} threads, {args.device}; "
          f"{'one process for all phases' if args.shared else 'one process per phase'}; "
          f"simtorch from {', '.join(trees)})")
    print(text)
    import common as C

    C.save_json(args.json, "peers", {"meta": meta, "results": results, "runs": raw, "table": text})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
