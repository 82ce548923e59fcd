"""simtorch benchmark suite (issue 5, DESIGN §5).

    python benchmarks/run.py                       # every workload, ~10 min on 2 CPU cores
    python benchmarks/run.py --quick               # smoke run, ~2 min
    python benchmarks/run.py --workloads W1,W1-many --repeats 7
    python benchmarks/run.py --device cuda         # same workloads on a GPU

Each workload runs in its own subprocess (so peak-memory figures do not leak between
workloads). Inside it, `forward-only` (both models over the same loader under
inference mode), optionally `grams-only` (forward + one Gram per hooked layer) and the
similarity computation are timed in interleaved order (ABBA…) after a warm-up; ratios are
taken per repeat (paired) and the median is reported. The N-scaling workload starts one
fresh process per (mode, N) so each peak RSS is independent. See benchmarks/README.md.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ALL = ["W1", "W1-wide", "W1-many", "grid100", "compare3", "nscale"]
NSCALE_NS = [1024, 4096, 16384]
QUICK_N = 256


# ----------------------------------------------------------------------------- workers


def worker_timing(cfg: dict) -> dict:
    import torch

    import common as C
    import reference64 as R

    C.set_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    w = C.WORKLOADS[cfg["workload"]]
    n = cfg.get("n") or w.n
    rec: dict = {"workload": w.name, "description": w.description, "n": n, "batch": w.batch,
                 "image_size": w.image_size, "threads": torch.get_num_threads(), "device": str(device)}
    if w.metric == "compare3" and not hasattr(C.simtorch, "compare"):
        return {**rec, "skipped": "simtorch.compare does not exist yet"}

    ma, mb = C.build_models(w)
    ma.to(device), mb.to(device)
    loader = C.make_loader(n, w.image_size, w.batch, device)
    sa, sb = C.wrap(w, ma, mb)
    rec["grid"] = [len(sa.layer_names), len(sb.layer_names)]
    out: dict = {}
    phases = {"forward": C.forward_only((ma, mb), loader, device)}
    if w.breakdown:
        phases["grams"] = C.grams_only(sa, sb, loader, device)
        eng = C.engine_only(sa, sb, loader, device)
        if eng is not None:
            phases["engine"] = eng
    phases["sim"] = C.similarity(w, sa, sb, loader, device, out)
    if w.metric == "compare3":  # CKA alone, paired in the same process (issue 12: compare3 ≤ CKA + 0.05)
        phases["cka"] = C.similarity(w, sa, sb, loader, device, {}, metric="cka")

    # warm-up on two batches: oneDNN primitives, allocator pools, lazy imports
    warm = C.make_loader(2 * w.batch, w.image_size, w.batch, device)
    for fn in (C.forward_only((ma, mb), warm, device), C.grams_only(sa, sb, warm, device),
               C.engine_only(sa, sb, warm, device) or (lambda: None), C.similarity(w, sa, sb, warm, device, {}),
               C.similarity(w, sa, sb, warm, device, {}, metric="cka")):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - report, do not crash the suite
            if w.metric == "compare3":
                return {**rec, "skipped": f"simtorch.compare failed: {type(exc).__name__}: {exc}"}
            raise

    names = list(phases)
    runs: dict[str, list[dict]] = {k: [] for k in names}
    for r in range(cfg["repeats"]):
        for k in (names if r % 2 == 0 else names[::-1]):
            runs[k].append(C.timed(phases[k], device))
    rec["runs"] = runs

    def med(k: str, f: str) -> float:
        return statistics.median(x[f] for x in runs[k])

    def paired(k: str, base: str, f: str = "wall_s") -> float:
        return statistics.median(a[f] / b[f] for a, b in zip(runs[k], runs[base]))

    rec["forward_s"], rec["sim_s"] = med("forward", "wall_s"), med("sim", "wall_s")
    rec["ratio"] = paired("sim", "forward")
    rec["ratio_cpu"] = paired("sim", "forward", "cpu_s")
    rec["ratio_min"] = min(x["wall_s"] for x in runs["sim"]) / min(x["wall_s"] for x in runs["forward"])
    rec["ratios_per_repeat"] = [a["wall_s"] / b["wall_s"] for a, b in zip(runs["sim"], runs["forward"])]
    for k in names:
        rec[f"peak_rss_{k}_mib"] = med(k, "peak_rss_mib")
        rec[f"rss_growth_{k}_mib"] = med(k, "rss_growth_mib")
        if device.type == "cuda":
            rec[f"cuda_max_{k}_mib"] = med(k, "cuda_max_allocated_mib")
    if "cka" in runs:
        rec["ratio_cka"] = paired("cka", "forward")
        rec["compare3_minus_cka"] = statistics.median(
            (s["wall_s"] - c["wall_s"]) / f["wall_s"] for s, c, f in zip(runs["sim"], runs["cka"], runs["forward"]))
    if w.breakdown:
        rec["ratio_sim_over_grams"] = paired("sim", "grams")
        rec["ratio_sim_over_grams_min"] = min(x["wall_s"] for x in runs["sim"]) / min(x["wall_s"] for x in runs["grams"])
        # Gram part = grams-only − forward; pairwise/engine part = sim − grams-only (per repeat)
        gram = [g["wall_s"] - f["wall_s"] for g, f in zip(runs["grams"], runs["forward"])]
        pair = [s["wall_s"] - g["wall_s"] for s, g in zip(runs["sim"], runs["grams"])]
        rec["grams_s"] = med("grams", "wall_s")
        rec["ratio_grams"] = paired("grams", "forward")
        rec["gram_part_s"], rec["pairwise_part_s"] = statistics.median(gram), statistics.median(pair)
        rec["pairwise_over_gram"] = rec["pairwise_part_s"] / rec["gram_part_s"] if rec["gram_part_s"] > 0 else float("nan")
        rec["pairwise_over_gram_cpu"] = statistics.median(
            (s["cpu_s"] - g["cpu_s"]) / max(g["cpu_s"] - f["cpu_s"], 1e-9)
            for s, g, f in zip(runs["sim"], runs["grams"], runs["forward"]))
        if "engine" in runs:
            # engine part = engine-only − grams-only (hooks, capture, stacking); metric part = sim − engine-only
            rec["engine_part_s"] = statistics.median(e["wall_s"] - g["wall_s"] for e, g in zip(runs["engine"], runs["grams"]))
            rec["metric_part_s"] = statistics.median(s["wall_s"] - e["wall_s"] for s, e in zip(runs["sim"], runs["engine"]))
            rec["ratio_engine"] = paired("engine", "forward")
    if "extra_shapes" in out:
        rec["metrics"] = out["extra_shapes"]

    # accuracy: the grid of the last run against float64 references of the same estimator
    grid = out["grid"]
    t0 = time.perf_counter()
    ref64, hit = R.workload_reference(w, n, ma, mb, sa.layer_names, sb.layer_names, loader, device,
                                      use_cache=cfg["ref_cache"])
    ref32 = R.reference_grid(ma, mb, sa.layer_names, sb.layer_names, loader, device, torch.float32)
    rec["max_err_f64"] = R.max_abs_err(grid, ref64)  # models run in float64 (.double() copies)
    rec["max_err_f32act"] = R.max_abs_err(grid, ref32)  # same float32 activations, float64 math
    rec["ref_cached"], rec["ref_s"] = hit, time.perf_counter() - t0
    rec["grid_minmax"] = [float(grid.min()), float(grid.max())]
    return rec


def worker_nscale(cfg: dict) -> dict:
    """One fresh process: build W1 at N samples, then one run of `mode`; its peak RSS."""
    import torch

    import common as C

    C.set_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    w = C.WORKLOADS["W1"]
    ma, mb = C.build_models(w)
    ma.to(device), mb.to(device)
    loader = C.make_loader(cfg["n"], w.image_size, w.batch, device)
    sa, sb = C.wrap(w, ma, mb)
    fn = C.forward_only((ma, mb), loader, device) if cfg["mode"] == "forward" else C.similarity(w, sa, sb, loader, device, {})
    if cfg.get("warm"):  # one forward batch first, so the forward working set is already resident
        C.forward_only((ma, mb), C.make_loader(w.batch, w.image_size, w.batch, device), device)()
    rec = C.timed(fn, device)
    rec.update(mode=cfg["mode"], n=cfg["n"], warm=bool(cfg.get("warm")), maxrss_lifetime_mib=C.maxrss_mib(),
               data_mib=loader.dataset.tensors[0].numel() * 4 / C.MiB)
    return rec


# ----------------------------------------------------------------------------- driver


def spawn(cfg: dict, timeout: float | None = None) -> dict:
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        path = f.name
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]), MKL_NUM_THREADS=str(cfg["threads"]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", json.dumps(cfg), "--_out", path]
    try:
        p = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
        if p.returncode != 0:
            return {"error": (p.stderr or p.stdout)[-2000:]}
        return json.loads(Path(path).read_text())
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    finally:
        Path(path).unlink(missing_ok=True)


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "—" if x is None or x != x else format(x, spec)


def table(results: dict) -> str:
    lines = ["| workload | grid | forward-only s | simtorch s | ratio (median paired) | min/min | CPU-time ratio | target | "
             "peak RSS sim / fwd MiB | RSS growth sim / fwd MiB | max err vs f64 models | max err vs f64 math |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    import common as C

    for name, r in results.items():
        if name == "nscale":
            continue
        if "error" in r or "skipped" in r:
            lines.append(f"| {name} | {r.get('skipped') or 'ERROR: ' + r['error'].splitlines()[-1]} |" + " |" * 10)
            continue
        w = C.WORKLOADS[name]
        tgt = f"≤ {w.target:.2f}" if w.target else w.target_note
        if w.target:
            tgt += " ✓" if r["ratio"] <= w.target else " ✗"
        lines.append(
            f"| {name} | {r['grid'][0]}×{r['grid'][1]} | {fmt(r['forward_s'], '.2f')} | {fmt(r['sim_s'], '.2f')} | "
            f"**{fmt(r['ratio'])}** | {fmt(r['ratio_min'])} | {fmt(r['ratio_cpu'])} | {tgt} | "
            f"{r['peak_rss_sim_mib']:.0f} / {r['peak_rss_forward_mib']:.0f} | "
            f"{r['rss_growth_sim_mib']:.0f} / {r['rss_growth_forward_mib']:.0f} | "
            f"{fmt(r['max_err_f64'], '.1e')} | {fmt(r['max_err_f32act'], '.1e')} |")
    out = "\n".join(lines)
    br = [(k, r) for k, r in results.items() if isinstance(r, dict) and "gram_part_s" in r]
    if br:
        out += ("\n\n| workload | grams-only (bare GEMM) / forward | simtorch / grams-only (median, min/min) | "
                "engine-only / forward | Gram part s | above-Gram part s "
                "(= engine + metric) | engine part s | metric part s | above-Gram / Gram (wall) | (CPU) |"
                "\n|---|---|---|---|---|---|---|---|---|---|\n")
        out += "\n".join(
            f"| {k} | {fmt(r['ratio_grams'])} | {fmt(r.get('ratio_sim_over_grams'))} / "
            f"{fmt(r.get('ratio_sim_over_grams_min'))} | {fmt(r.get('ratio_engine'))} | {fmt(r['gram_part_s'], '.3f')} | "
            f"{fmt(r['pairwise_part_s'], '.3f')} | {fmt(r.get('engine_part_s'), '.3f')} | {fmt(r.get('metric_part_s'), '.3f')} | "
            f"**{fmt(r['pairwise_over_gram'], '.2f')}**{' ✓' if k == 'grid100' and r['pairwise_over_gram'] <= 0.5 else (' ✗' if k == 'grid100' else '')} | "
            f"{fmt(r['pairwise_over_gram_cpu'], '.2f')} |" for k, r in br)
    ns = results.get("nscale")
    if ns and ns.get("runs"):
        out += ("\n\n| N-scaling (W1, fresh process each) | N | wall s | peak RSS MiB | × N=1024 | RSS before MiB | "
                "RSS growth MiB |\n|---|---|---|---|---|---|---|\n")
        rows = []
        for mode in ("sim", "forward"):
            base = next((x for x in ns["runs"] if x.get("mode") == mode and x.get("n") == min(ns["ns"])
                         and not x.get("warm")), None)
            for x in ns["runs"]:
                if x.get("mode") != mode:
                    continue
                label = ("simtorch CKA" if mode == "sim" else "forward-only") + (" (after 1 warm-up batch)" if x.get("warm") else "")
                if "error" in x:
                    rows.append(f"| {label} | {x.get('n')} | error | | | | |")
                    continue
                rel = x["peak_rss_mib"] / base["peak_rss_mib"] if base and "peak_rss_mib" in base else float("nan")
                rows.append(f"| {label} | {x['n']} | {x['wall_s']:.1f} | {x['peak_rss_mib']:.0f} | "
                            f"{'—' if x.get('warm') else format(rel, '.3f')} | {x['rss_before_mib']:.0f} | {x['rss_growth_mib']:.0f} |")
        out += "\n".join(rows)
    return out + "\n\n" + "\n".join(targets(results))


def targets(results: dict) -> list[str]:
    """DESIGN §5 / issue 5 targets, each with the measured figure and ✓/✗."""
    out = ["Targets (DESIGN §5, issue 12):"]

    def line(ok: bool | None, text: str) -> None:
        out.append(f"  {'—' if ok is None else ('✓' if ok else '✗')} {text}")

    for name, lim in (("W1", 1.05), ("W1-wide", 1.03), ("W1-many", 1.15), ("compare3", 1.15)):
        r = results.get(name)
        if r is None:
            continue
        if "ratio" not in r:
            line(None, f"{name} ≤ {lim} × forward-only: not measured ({r.get('skipped') or r.get('error', '?')[-120:]})")
            continue
        line(r["ratio"] <= lim, f"{name} ≤ {lim} × forward-only: {r['ratio']:.3f} (min/min {r['ratio_min']:.3f})")
        if name != "compare3":
            line(r["max_err_f64"] <= 1e-6, f"{name} grid within 1e-6 of float64: {r['max_err_f64']:.1e}")
        if "ratio_sim_over_grams" in r:
            line(r["ratio_sim_over_grams"] <= 1.03, f"{name} ≤ 1.03 × forward + bare GEMM Grams: "
                 f"{r['ratio_sim_over_grams']:.3f} (min/min {r['ratio_sim_over_grams_min']:.3f})")
        if "compare3_minus_cka" in r:
            line(r["compare3_minus_cka"] <= 0.05, f"compare3 ≤ CKA alone + 0.05 × forward: {r['compare3_minus_cka']:+.3f} "
                 f"(CKA alone {r['ratio_cka']:.3f}, compare3 {r['ratio']:.3f}, same process)")
    r = results.get("grid100")
    if r and "pairwise_over_gram" in r:
        line(r["pairwise_over_gram"] <= 0.5, f"100×100 grid: pairwise part ≤ 50 % of the Gram part: "
             f"{r['pairwise_over_gram']:.0%} ({r['pairwise_part_s']:.2f} s vs {r['gram_part_s']:.2f} s)")
    ns = results.get("nscale")
    if ns and ns.get("runs"):
        sims = {x["n"]: x for x in ns["runs"] if x.get("mode") == "sim" and not x.get("warm") and "peak_rss_mib" in x}
        if 1024 in sims and 4096 in sims:
            rel = sims[4096]["peak_rss_mib"] / sims[1024]["peak_rss_mib"]
            line(rel <= 1.06, f"peak RSS N=4096 ≤ 1.06 × N=1024: {rel:.3f}")
        if 1024 in sims:
            g = sims[1024]["rss_growth_mib"]
            line(g <= 64, f"RSS growth during W1 ≤ 64 MiB: {g:.0f} MiB (fresh process)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=",".join(ALL), help=f"comma-separated subset of {ALL}")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per phase (≥3; default per workload)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="where to write the JSON (default benchmarks/results/<time>.json)")
    ap.add_argument("--quick", action="store_true", help=f"N={QUICK_N} and 3 repeats; N-scaling at 1024 and 4096 only")
    ap.add_argument("--no-ref-cache", action="store_true", help="recompute the float64 references")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker:
        cfg = json.loads(args._worker)
        rec = worker_nscale(cfg) if cfg.get("mode") else worker_timing(cfg)
        Path(args._out).write_text(json.dumps(rec))
        return 0

    if args.repeats is not None and args.repeats < 3:
        ap.error("--repeats must be at least 3 (the median of ≥3 is reported)")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            ap.error("--device cuda: no CUDA device is visible")
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in ALL]
    if unknown:
        ap.error(f"unknown workloads {unknown}; choose from {ALL}")

    import common as C
    import torch

    meta = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv[1:],
            "command": "python benchmarks/run.py " + " ".join(sys.argv[1:]), "python": platform.python_version(),
            "torch": torch.__version__, "simtorch": getattr(C.simtorch, "__version__", "?"),
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "threads": args.threads,
            "device": args.device, "quick": args.quick}
    if args.device == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(0)
    results: dict = {}
    t_start = time.perf_counter()
    for name in chosen:
        t0 = time.perf_counter()
        if name == "nscale":
            ns = [1024, 4096] if args.quick else NSCALE_NS
            runs = []
            for n, warm in [(n, False) for n in ns] + [(ns[0], True)]:
                for mode in ("sim", "forward"):
                    r = spawn({"mode": mode, "n": n, "threads": args.threads, "device": args.device, "warm": warm})
                    r.setdefault("mode", mode), r.setdefault("n", n), r.setdefault("warm", warm)
                    runs.append(r)
                    print(f"  nscale {mode:7s} N={n:6d}{' warm' if warm else ''}: " + (f"peak {r['peak_rss_mib']:.0f} MiB, growth "
                          f"{r['rss_growth_mib']:.0f} MiB, {r['wall_s']:.1f} s" if "error" not in r else r["error"][-300:]),
                          flush=True)
            results[name] = {"ns": ns, "runs": runs}
        else:
            w = C.WORKLOADS[name]
            cfg = {"workload": name, "threads": args.threads, "device": args.device,
                   "repeats": args.repeats or (3 if args.quick else w.repeats),
                   "n": QUICK_N if args.quick else None, "ref_cache": not args.no_ref_cache}
            r = spawn(cfg)
            results[name] = r
            if "error" in r or "skipped" in r:
                print(f"  {name}: {r.get('skipped') or r['error'][-1500:]}", flush=True)
            else:
                print(f"  {name}: ratio {r['ratio']:.3f} (per repeat {[round(x, 3) for x in r['ratios_per_repeat']]}), "
                      f"forward {r['forward_s']:.2f} s, sim {r['sim_s']:.2f} s, err {r['max_err_f64']:.1e}", flush=True)
        print(f"  [{name} took {time.perf_counter() - t0:.0f} s]", flush=True)
    meta["total_s"] = time.perf_counter() - t_start
    text = table(results)
    print()
    print(f"{meta['date']}  {meta['command']}  (torch {meta['torch']}, {args.threads} threads, {args.device})")
    print(text)

    C.save_json(args.json, "bench", {"meta": meta, "results": results, "table": text})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
