"""What the command line prints and writes: the result tables, ``--save``/``--csv`` files
and figures of ``compare`` and ``checkpoints``, complete or marked partial after an
interruption."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..checkpoint_result import CheckpointComparison
from ..result import SimilarityResult, save_results

__all__ = ["PARTIAL_MARK", "plot_results", "plot_title", "print_comparison", "print_result", "suffixed",
           "write_comparison", "write_outputs"]

#: appended to every "saved/wrote/plotted" line of a partial result
PARTIAL_MARK = " (PARTIAL: the batches completed before the interruption)"


def suffixed(path: str, metric: str, several: bool) -> str:
    """``PATH_<metric>.ext`` when several metrics share one ``--save``/``--csv`` path."""
    if not several:
        return path
    p = Path(path)
    return str(p.with_name(f"{p.stem}_{metric}{p.suffix}"))


def plot_title(res: SimilarityResult) -> str:
    """A grid's default title: its estimator, kernel, metric and models, and PARTIAL."""
    s = res.settings
    parts = []
    if "unbiased" in s:
        parts.append("unbiased" if s["unbiased"] else "biased")
    if "kernel" in s:
        parts.append(str(s["kernel"]))
    title = " ".join(parts + [f"{res.metric}: {res.model_a} vs {res.model_b}"])
    if s.get("partial"):
        title += f" (PARTIAL: {res.n_samples} samples, {res.n_batches} batches)"
    return title


def print_result(res: SimilarityResult) -> None:
    """The result's repr and its grid as a table (a note instead for wide grids)."""
    import numpy as np

    print(res)
    la, lb = res.shape
    if lb > 12:
        print(f"  ({la} × {lb} grid; --out draws it, --csv writes it)")
        return
    width = max(len(n) for n in res.layers_a)
    cols = [n[-9:] for n in res.layers_b]
    print(" " * (width + 2) + " ".join(f"{c:>9}" for c in cols))
    for i, name in enumerate(res.layers_a):
        row = " ".join(f"{v:9.4f}" if np.isfinite(v) else f"{'nan':>9}" for v in res.matrix[i])
        print(f"  {name:<{width}}{row}")


def plot_results(results: list[SimilarityResult], out: str, title: str | None, show_stderr: bool = False) -> None:
    """One heatmap, or one panel per result in one figure."""
    from ..plotting import plot_result, pyplot, resolve_save_path

    if len(results) == 1:
        plot_result(results[0], title=title or plot_title(results[0]), save_path=out, show_stderr=show_stderr)
        return
    plt = pyplot()
    la, lb = results[0].shape
    w = min(max(4.5, 0.32 * lb + 3.0), 14)
    h = min(max(4.0, 0.3 * la + 2.5), 14)
    fig, axes = plt.subplots(1, len(results), figsize=(w * len(results), h), dpi=100)
    for ax, res in zip(axes, results):
        plot_result(res, title=plot_title(res), ax=ax, show_stderr=show_stderr)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(resolve_save_path(out, title or "similarity"), dpi=200, bbox_inches="tight")


def write_outputs(args: argparse.Namespace, keys: Sequence[str], out: Mapping[str, SimilarityResult],
                  partial: bool = False) -> None:
    """``compare``'s ``--save`` (one archive of every metric, and each alone), ``--csv``
    and ``--out``."""
    present = [k for k in keys if k in out]
    results = [out[k] for k in present]
    if not results:
        return
    several = len(keys) > 1
    mark = PARTIAL_MARK if partial else ""
    if args.save:
        if several:
            # one archive that `simtorch plot NPZ` draws in full, and each metric alone
            print(f"saved {save_results({k: out[k] for k in present}, args.save)}{mark}")
        for key, res in zip(present, results):
            print(f"saved {res.save(suffixed(args.save, key, several))}{mark}")
    if args.csv:
        for key, res in zip(present, results):
            print(f"wrote {res.to_csv(suffixed(args.csv, key, several))}{mark}")
    if args.out:
        plot_results(results, args.out, args.title, show_stderr=args.stderr)
        print(f"plotted {args.out}{mark}")


def print_comparison(cmp: CheckpointComparison) -> None:
    """The comparison's repr, its order and reference, and each layer's values over training."""
    print(cmp)
    ref_step = cmp.steps[cmp.labels.index(cmp.reference)] if cmp.reference in cmp.labels else None
    print(f"order: {cmp.order}; reference: {cmp.reference}"
          + (f" (step {ref_step})" if ref_step is not None else " (a checkpoint outside the list)"))
    width = max(len(n) for n in cmp.layers)
    print(f"  {'layer':<{width}}  " + " ".join(f"{str(s)[-8:]:>8}" for s in cmp.steps))
    for i, layer in enumerate(cmp.layers):
        print(f"  {layer:<{width}}  " + " ".join(f"{v:8.4f}" for v in cmp.values[:, i]))


def write_comparison(args: argparse.Namespace, cmp: CheckpointComparison) -> None:
    """``checkpoints``' ``--save``, ``--csv``, ``--out`` and ``--heatmap``; a partial
    comparison is marked in every line and title."""
    mark = PARTIAL_MARK if cmp.partial else ""
    lines_title = heat_title = args.title
    if cmp.partial:
        missing = cmp.settings.get("missing_checkpoints") or []
        note = f"(PARTIAL: {len(cmp.labels)} checkpoints, {len(missing)} missing, {cmp.n_batches} batches)"
        head = args.title or f"Layer {cmp.metric} with the checkpoint at {cmp.reference}"
        lines_title = f"{head}{'' if args.title else ' over training'} {note}"
        heat_title = f"{head} {note}"
    if args.save:
        print(f"saved {cmp.save(args.save)}{mark}")
    if args.csv:
        print(f"wrote {cmp.to_csv(args.csv, full=args.full_csv)}{mark}")
    if args.out:
        cmp.plot(save_path=args.out, title=lines_title, xlabel=args.xlabel)
        print(f"plotted {args.out}{mark}")
    if args.heatmap:
        cmp.plot_heatmap(save_path=args.heatmap, title=heat_title)
        print(f"plotted {args.heatmap}{mark}")
