"""The command line's four commands (``compare``, ``checkpoints``, ``plot``, ``layers``):
parsed arguments in, library calls, printed tables and written files out."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..checkpoint_io import require_file
from ..checkpoint_order import checkpoint_label
from ..checkpoint_result import CheckpointComparison
from ..checkpoints import compare_checkpoints
from ..compare import compare
from ..metrics import metric_class
from ..model import SimilarityModel
from ..record import SET_KIND, file_kind
from ..result import SimilarityResult, load_results, save_results  # noqa: F401  (save_results: as before)
from .data import is_text_data, make_loader
from .errors import CLIError
from .options import check_metric_flags, metric_keys, metric_options, resolve_device, run_options
from .output import plot_results, plot_title, print_comparison, print_result, write_comparison, write_outputs
from .zoo import build_model, hf_tokenizer, is_text_model, model_default_layers

__all__ = ["cmd_compare", "cmd_checkpoints", "cmd_plot", "cmd_layers", "metric_keys", "metric_options",
           "resolve_device"]


# ----------------------------------------------------------------------------- compare
def _text_setup(args: argparse.Namespace, archs: Sequence[str]) -> Any:
    """The tokenizer of ``--data text:FILE`` (from the first ``hf:`` model), after checking
    that data and models fit: hf: models take text, text needs a tokenizer, and two hf:
    models must tokenise the text alike (both get the same batch)."""
    text = is_text_data(args)
    hf = [a for a in archs if is_text_model(a)]
    if hf and not text:
        raise CLIError(f"{hf[0]!r} is a text model: pass --data text:FILE (one text per line, tokenised by its "
                       "tokenizer)")
    if not text:
        return None
    if not hf:
        raise CLIError(f"--data {args.data}: text data needs an hf:DIR model (its tokenizer reads the text)")
    tokenizer = hf_tokenizer(hf[0])
    for other in hf[1:]:
        if other != hf[0]:
            lines = ["The quick brown fox jumps over the lazy dog.", "simtorch compares layers 12345"]
            ids_a = tokenizer(lines)["input_ids"]
            ids_b = hf_tokenizer(other)(lines)["input_ids"]
            if ids_a != ids_b:
                raise CLIError(f"{hf[0]!r} and {other!r} tokenise text differently, but both models get the same "
                               "batch: compare models that share a tokenizer (e.g. two checkpoints of one model)")
    return tokenizer


def _loader_error(exc: BaseException, args: argparse.Namespace) -> CLIError | None:
    """A one-line explanation for a text model fed images (``too many values to unpack``)."""
    text = str(exc)
    if not is_text_data(args) and re.search(r"(too many|not enough) values to unpack", text):
        return CLIError(f"a model failed on the image batches ({' '.join(text.split())}): is it a text model? "
                        "Use hf:DIR with --data text:FILE")
    return None


@contextmanager
def _loader_hints(args: argparse.Namespace) -> Iterator[None]:
    """Turn a failure that :func:`_loader_error` recognises into its :class:`CLIError`."""
    try:
        yield
    except (ValueError, RuntimeError, TypeError) as exc:
        hint = _loader_error(exc, args)
        if hint is None:
            raise
        raise hint from exc


def cmd_compare(args: argparse.Namespace) -> int:
    """``simtorch compare``: every metric from one pass, printed, saved, written, plotted.

    Interrupted (Ctrl-C), it writes the results of the completed batches to ``--save``,
    ``--csv`` and ``--out``, marked partial (``settings["partial"]``, the figure's title),
    then exits with status 130. With ``--resume PATH`` the metrics' sums are saved to PATH
    as the pass goes (``--save-every``) and when it is interrupted, and the same command
    run again skips the batches already counted (:class:`simtorch.engine.RunOptions`).
    """
    keys = metric_keys(args.metric)
    check_metric_flags(keys, args)
    resume = run_options(args)
    device = resolve_device(args.device)
    tokenizer = _text_setup(args, [args.model_a, args.model_b])
    loading = dict(trust_checkpoint=args.trust_checkpoint, state_key=args.state_key, strip_prefix=args.strip_prefix)
    model_a = build_model(args.model_a, args.weights_a, num_classes=args.num_classes_a, seed=args.seed, **loading)
    model_b = build_model(args.model_b, args.weights_b, num_classes=args.num_classes_b, seed=args.seed + 1,
                          **loading)
    sequence = args.sequence or ("mean" if tokenizer is not None else "flatten")
    sm_a = SimilarityModel(model_a, args.name_a or args.model_a,
                           args.layers_a or model_default_layers(args.model_a, model_a), sequence=sequence)
    # the same architecture on both sides: --layers-a also chooses B's layers unless --layers-b is given
    layers_b = (args.layers_b or (args.layers_a if args.model_b == args.model_a else None)
                or model_default_layers(args.model_b, model_b))
    sm_b = SimilarityModel(model_b, args.name_b or args.model_b, layers_b, sequence=sequence)
    loader = make_loader(args, tokenizer=tokenizer)
    # every metric is fed from the same Grams: one forward pass per model per batch
    try:
        with _loader_hints(args):
            out = compare(sm_a, sm_b, loader, metrics=keys, device=device, progress=not args.quiet, **resume,
                          channels_last=args.channels_last,
                          **{f"{k}_kwargs": metric_options(k, args) for k in keys})
    except KeyboardInterrupt as exc:
        partial = getattr(exc, "simtorch_partial", None) or {}
        if partial and (args.save or args.csv or args.out):
            res = next(iter(partial.values()))
            print(f"simtorch: interrupted after {res.n_batches} batches ({res.n_samples} samples): writing the "
                  "partial results", file=sys.stderr)
            write_outputs(args, keys, partial, partial=True)
        elif args.save or args.csv or args.out:
            print("simtorch: interrupted before the first batch completed: nothing to write", file=sys.stderr)
        saved = next((r.settings.get("state_path") for r in partial.values()), None)
        if resume and saved:
            print(f"simtorch: the run's state is saved in {saved}: the same command continues it", file=sys.stderr)
        raise
    results = [out[k] for k in keys]
    resumed = max(int(r.settings.get("resumed_batches", 0) or 0) for r in results)
    if resumed:
        print(f"resumed from {args.resume}: {resumed} batches were already counted, the models ran on the others")
    for res in results:
        print_result(res)
    write_outputs(args, keys, out)
    return 0


# ----------------------------------------------------------------------------- checkpoints
def _number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise CLIError(f"--steps {text!r} is not a number") from None
    return int(v) if v.is_integer() else v


def cmd_checkpoints(args: argparse.Namespace) -> int:
    """``simtorch checkpoints``: one metric over a training run, printed, saved, plotted.

    The checkpoints are never re-sorted here: the library orders them
    (:func:`simtorch.checkpoints.checkpoint_order`) and the rule it used is printed.
    Interrupted (Ctrl-C), it writes the checkpoints finished so far to ``--save``, ``--csv``,
    ``--out`` and ``--heatmap``, marked partial, then exits with status 130."""
    keys = metric_keys(args.metric)
    if len(keys) > 1:
        raise CLIError("simtorch checkpoints takes one --metric at a time")
    check_metric_flags(keys, args)
    for p in args.checkpoints:
        try:
            require_file(p)
        except FileNotFoundError as exc:
            if not Path(p).suffix and args.layers:
                raise CLIError(f"{exc} (if it is a layer: --layers takes one pattern per flag, e.g. --layers a,b)"
                               ) from None
            raise
    steps = [_number(s) for s in args.steps] if args.steps else None
    device = resolve_device(args.device)
    tokenizer = _text_setup(args, [args.arch])
    template = build_model(args.arch, None, num_classes=args.num_classes, seed=args.seed)
    reference: Any = args.reference
    stems = [checkpoint_label(p) for p in args.checkpoints]
    if reference not in ("last", "first") and reference not in stems and re.fullmatch(r"-?\d+(\.\d+)?", reference):
        reference = _number(reference)  # a step number
    layers = args.layers or (None if not is_text_model(args.arch) else model_default_layers(args.arch, template))
    try:
        with _loader_hints(args):
            cmp = compare_checkpoints(
                template, list(args.checkpoints), make_loader(args, tokenizer=tokenizer), metric=keys[0], layers=layers,
                reference=reference, steps=steps, order=args.order, device=device,
                trust_checkpoint=args.trust_checkpoint, state_key=args.state_key, strip_prefix=args.strip_prefix,
                checkpoints_per_pass=args.per_pass, model_name=args.name or args.arch,
                sequence=args.sequence or ("mean" if tokenizer is not None else "flatten"), progress=not args.quiet,
                channels_last=args.channels_last, **metric_options(keys[0], args),
            )
    except KeyboardInterrupt as exc:
        partial = getattr(exc, "simtorch_partial", None)
        outputs = args.save or args.csv or args.out or args.heatmap
        if partial is not None and outputs:
            missing = partial.settings.get("missing_checkpoints") or []
            print(f"simtorch: interrupted: writing the partial comparison of {len(partial.labels)} checkpoints "
                  f"({partial.n_batches} batches; {len(missing)} not compared"
                  + (f": {', '.join(missing)}" if missing else "") + ")", file=sys.stderr)
            write_comparison(args, partial)
        elif outputs:
            print("simtorch: interrupted before the first batch completed: nothing to write", file=sys.stderr)
        raise
    print_comparison(cmp)
    write_comparison(args, cmp)
    return 0


# ----------------------------------------------------------------------------- plot, layers
def _chosen(results: Mapping[str, SimilarityResult], wanted: Sequence[str] | None, path: str) -> list[SimilarityResult]:
    if not wanted:
        return list(results.values())
    chosen = []
    for name in wanted:
        key = metric_class(name).key if name else name
        match = [r for k, r in results.items() if k.lower() in (name.lower(), key) or r.metric.lower() == name.lower()]
        if not match:
            raise CLIError(f"{path!r} has no {name!r} result; it holds {', '.join(results)}")
        chosen.extend(r for r in match if r not in chosen)
    return chosen


def cmd_plot(args: argparse.Namespace) -> int:
    """``simtorch plot``: redraw a saved result of any kind, without the models: one grid,
    every metric of an archive (one panel each; ``--metric`` chooses), or a checkpoint
    comparison."""
    kind = file_kind(args.result)
    out = args.out or str(Path(args.result).with_suffix(".png"))
    wanted = [m.strip() for m in (args.metric or "").split(",") if m.strip()]
    if kind == "checkpoints":
        if wanted:
            raise CLIError("--metric chooses among the results of an archive; this file holds a checkpoint comparison")
        cmp = CheckpointComparison.load(args.result)
        if args.kind == "heatmap":
            cmp.plot_heatmap(save_path=out, title=args.title, cmap=args.cmap or "magma", vmin=args.vmin,
                             vmax=args.vmax)
        else:
            cmp.plot(save_path=out, title=args.title, **({"cmap": args.cmap} if args.cmap else {}))
    elif kind in ("similarity", SET_KIND):
        if args.kind == "lines":
            raise CLIError("--kind lines is for checkpoint comparisons; this file holds similarity grids")
        results = _chosen(load_results(args.result), wanted, args.result)
        if len(results) == 1:
            res = results[0]
            res.plot(save_path=out, title=args.title or plot_title(res), cmap=args.cmap or "magma",
                     vmin=args.vmin, vmax=args.vmax, show_stderr=args.stderr)
        else:
            plot_results(results, out, args.title, show_stderr=args.stderr)
    else:
        raise CLIError(f"{args.result!r} holds a {kind!r} result, which simtorch plot does not draw")
    print(f"plotted {out}")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    """``simtorch layers``: a model's selectable names, the default selection marked."""
    model = build_model(args.model, None, num_classes=args.num_classes)
    if args.select:
        for name in SimilarityModel(model, args.model, args.select).layer_names:
            print(name)
        return 0
    chosen = model_default_layers(args.model, model)
    defaults = set(SimilarityModel(model, args.model, chosen).layer_names)
    if args.default:
        for name, _ in model.named_modules():
            if name in defaults:
                print(name)
        return 0
    named = [(n, type(m).__name__) for n, m in model.named_modules() if n]
    width = max(len(n) for n, _ in named)
    print(f"# {len(named)} selectable modules of {args.model}; * = the default selection "
          f"({', '.join(chosen)})")
    for name, kind in named:
        print(f"{'*' if name in defaults else ' '} {name:<{width}}  {kind}")
    return 0
