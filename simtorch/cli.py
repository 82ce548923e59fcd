"""The ``simtorch`` command line (also ``python -m simtorch``).

::

    simtorch compare resnet18 resnet34 --out grid.png
    simtorch checkpoints --arch resnet18 ckpt_*.pt --out trend.png
    simtorch plot result.npz --out grid.png
    simtorch layers resnet18

Models are torchvision names (``torchvision.models.get_model``) or ``package.module:function``
for your own architecture. Errors print one line (``simtorch: error: ...``) and exit with
status 1 (2 for bad arguments); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "build_model", "default_layers"]

_CHECKPOINT_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".tar", ".pkl"}
#: torchvision ResNet/ResNeXt/Wide ResNet: the stem, every residual block and the head
RESNET_LAYERS = ["conv1", "maxpool", "layer?.*", "avgpool", "fc"]
METRICS = ("cka", "dcka", "ii")


class CLIError(Exception):
    """A user error the command line reports in one line."""


# ----------------------------------------------------------------------------- models
def default_layers(model: Any) -> list[str]:
    """The layers ``simtorch compare``/``checkpoints`` use when none are given.

    * ResNet-like models (children ``layer1``, ``layer2``, … and ``fc``, as torchvision's
      ResNet, ResNeXt and Wide ResNet): ``conv1``, ``maxpool``, every residual block
      (``layer?.*``), ``avgpool`` and ``fc``.
    * Models with a ``features`` ``Sequential`` (VGG, MobileNet, EfficientNet, ConvNeXt,
      DenseNet, Swin, SqueezeNet…): each of its children (``features.*``), then the other
      top-level children.
    * Vision Transformers (``encoder.layers``): ``conv_proj``, every encoder block, ``heads``.
    * Anything else: the top-level children.

    Auxiliary classifiers that run only in training mode (``aux*``, ``AuxLogits``) are left
    out. Returns patterns for ``SimilarityModel(layers_to_include=...)``.
    """
    from torch import nn

    from .model import glob_to_regex, unwrap_model

    base = unwrap_model(model)
    children = {n: m for n, m in base.named_children() if not n.lower().startswith("aux")}
    names = [n for n, _ in base.named_modules() if n]

    def exists(pattern: str) -> bool:
        rx = glob_to_regex(pattern)
        return any(rx.fullmatch(n) for n in names)

    if {"layer1", "layer2", "fc"} <= set(children):
        return [p for p in RESNET_LAYERS if exists(p)]
    features = children.get("features")
    if isinstance(features, nn.Sequential) and len(features) > 1:
        return ["features.*"] + [n for n in children if n != "features"]
    encoder = children.get("encoder")
    if encoder is not None and isinstance(getattr(encoder, "layers", None), nn.Module) and exists("encoder.layers.*"):
        return [n for n in children if n != "encoder"][:1] + ["encoder.layers.*"] + [
            n for n in list(children)[1:] if n != "encoder"
        ]
    if not children:
        raise CLIError(f"{type(base).__name__} has no sub-modules to compare; name the layers with --layers")
    return list(children)


def _is_path(text: str) -> bool:
    return os.sep in text or "/" in text or Path(text).suffix.lower() in _CHECKPOINT_SUFFIXES or Path(text).exists()


def _construct(arch: str, **config: Any) -> Any:
    import torchvision

    if ":" in arch and arch not in torchvision.models.list_models():
        module, _, attr = arch.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise CLIError(f"cannot import the model function {arch!r}: {exc}") from None
        return factory(**config)
    _check_arch(arch)
    return torchvision.models.get_model(arch, **config)


def _check_arch(arch: str) -> None:
    import torchvision

    known = torchvision.models.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=4, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise CLIError(
            f"unknown model {arch!r}: not a torchvision model name nor 'package.module:function'.{hint} "
            "(python -c 'import torchvision; print(torchvision.models.list_models())' lists them)"
        )


def build_model(
    arch: str,
    weights: str | None = None,
    *,
    num_classes: int | None = None,
    seed: int = 0,
    trust_checkpoint: bool = False,
) -> Any:
    """Build a model for the command line.

    Parameters
    ----------
    arch : str
        A torchvision model name (``"resnet18"``) or ``"package.module:function"`` (called
        with no arguments, or ``num_classes=`` when given).
    weights : str, optional
        ``None``: random initialisation under ``seed``. A path: a checkpoint loaded with
        :func:`simtorch.checkpoints.load_checkpoint` (weights-only, strict key check). Else a
        torchvision weight name: ``"DEFAULT"``, ``"IMAGENET1K_V1"`` or
        ``"ResNet18_Weights.IMAGENET1K_V1"`` (downloaded by torchvision, or found in its cache).
    num_classes : int, optional
        Passed to the constructor (for checkpoints trained on another number of classes).
    seed : int
        ``torch.manual_seed`` before a random initialisation, so runs repeat exactly.
    trust_checkpoint : bool
        Allow checkpoint files that hold pickled objects (only for files you trust).
    """
    import torch

    config: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    torch.manual_seed(seed)
    if weights is None or weights.lower() == "none":
        return _construct(arch, weights=None, **config) if ":" not in arch else _construct(arch, **config)
    if _is_path(weights):
        from .checkpoints import load_checkpoint

        if not Path(weights).is_file():
            raise CLIError(f"checkpoint {weights!r} does not exist or is not a file")
        model = _construct(arch, weights=None, **config) if ":" not in arch else _construct(arch, **config)
        return load_checkpoint(model, weights, trust_checkpoint=trust_checkpoint)
    if ":" in arch:
        raise CLIError(f"--weights {weights!r}: a custom model function takes a checkpoint path, not a weight name")
    import torchvision

    _check_arch(arch)
    enum = torchvision.models.get_model_weights(arch)
    short = weights.split(".", 1)[1] if "." in weights else weights
    if "." in weights and weights.split(".", 1)[0] != enum.__name__:
        raise CLIError(f"weights {weights!r} are not {arch}'s; its weights are {enum.__name__}.{{{', '.join(enum.__members__)}}}")
    if short not in enum.__members__:
        raise CLIError(
            f"unknown weights {weights!r} for {arch}: use one of {list(enum.__members__)} "
            "or the path of a checkpoint file"
        )
    chosen = enum[short]  # DEFAULT is an alias: chosen.name is the real weights' name
    try:
        return torchvision.models.get_model(arch, weights=chosen, **config)
    except Exception as exc:  # urllib/HTTP/OS errors: the weights are not cached and the download failed
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CLIError(
            f"cannot get the torchvision weights {enum.__name__}.{chosen.name} for {arch} ({reason[:160]}); without "
            f"network access put the file into {torch.hub.get_dir()}/checkpoints or pass a checkpoint path"
        ) from None


# ----------------------------------------------------------------------------- data
def _loader(args: argparse.Namespace) -> Any:
    from torch.utils.data import DataLoader

    from .data import digits_dataset, make_dataset, synthetic_images

    if args.n is not None and args.n < 1:
        raise CLIError(f"--n must be ≥ 1, got {args.n}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    channels = getattr(args, "channels", 3)
    if channels != 3:
        if args.data == "synthetic":
            data = synthetic_images(args.n or 512, args.image_size, channels, seed=args.seed)
        elif args.data == "digits":
            data = digits_dataset(args.image_size, args.n, channels)
        else:
            raise CLIError(f"--channels {channels} works with --data synthetic or digits, not {args.data!r}")
    else:
        data = make_dataset(args.data, n=args.n, image_size=args.image_size, seed=args.seed)
    return DataLoader(data, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)


def _device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return name


def _metrics(values: Sequence[str] | str) -> list[str]:
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for v in values:
        for m in v.split(","):
            m = m.strip().lower()
            if m and m not in METRICS:
                raise CLIError(f"unknown metric {m!r}: use {', '.join(METRICS)}")
            if m and m not in out:
                out.append(m)
    return out or ["cka"]


def _metric_kwargs(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Options of one metric from the command line; unset options keep the class defaults
    (CKA: unbiased HSIC₁; dCKA: biased HSIC₀, as in its paper; II has neither)."""
    kwargs: dict[str, Any] = {}
    if name == "cka":
        kwargs["kernel"] = args.kernel
    if name in ("cka", "dcka") and args.estimator is not None:
        kwargs["unbiased"] = args.estimator == "unbiased"
    return kwargs


def _compare_function() -> Any:
    """``simtorch.compare`` (several metrics from one pass) when this installation has it."""
    try:
        from .compare import compare
    except ImportError:
        return None
    return compare


def _suffixed(path: str, metric: str, several: bool) -> str:
    if not several:
        return path
    p = Path(path)
    return str(p.with_name(f"{p.stem}_{metric}{p.suffix}"))


def _title(metric_result: Any) -> str:
    s = metric_result.settings
    parts = []
    if "unbiased" in s:
        parts.append("unbiased" if s["unbiased"] else "biased")
    if "kernel" in s:
        parts.append(str(s["kernel"]))
    return " ".join(parts + [f"{metric_result.metric}: {metric_result.model_a} vs {metric_result.model_b}"])


# ----------------------------------------------------------------------------- commands
def _cmd_compare(args: argparse.Namespace) -> int:
    from .engine import stream
    from .model import SimilarityModel

    metrics = _metrics(args.metric)
    device = _device(args.device)
    model_a = build_model(args.model_a, args.weights_a, num_classes=args.num_classes_a, seed=args.seed,
                          trust_checkpoint=args.trust_checkpoint)
    model_b = build_model(args.model_b, args.weights_b, num_classes=args.num_classes_b, seed=args.seed + 1,
                          trust_checkpoint=args.trust_checkpoint)
    sm_a = SimilarityModel(model_a, args.name_a or args.model_a, args.layers_a or default_layers(model_a),
                           sequence=args.sequence)
    # the same architecture on both sides: --layers-a also chooses B's layers unless --layers-b is given
    layers_b = args.layers_b or (args.layers_a if args.model_b == args.model_a else None) or default_layers(model_b)
    sm_b = SimilarityModel(model_b, args.name_b or args.model_b, layers_b, sequence=args.sequence)
    compare = _compare_function()
    if compare is None and metrics != ["cka"]:
        missing = [m for m in metrics if m != "cka"]
        raise CLIError(f"metric(s) {', '.join(missing)} are not available in this simtorch installation; use --metric cka")
    loader = _loader(args)
    if compare is not None:
        # every metric is fed from the same Grams: one forward pass per model per batch
        out = compare(sm_a, sm_b, loader, metrics=metrics, device=device, progress=not args.quiet,
                      cka_kwargs=_metric_kwargs("cka", args), dcka_kwargs=_metric_kwargs("dcka", args),
                      ii_kwargs=_metric_kwargs("ii", args))
        results = [out[m] for m in metrics]
    else:
        from .similarity.cka import CKAMetric

        metric = CKAMetric(**_metric_kwargs("cka", args))
        stream(sm_a, sm_b, loader, [metric], device, progress=not args.quiet, desc="simtorch")
        results = [metric.result()]
    several = len(results) > 1
    for name, res in zip(metrics, results):
        _print_result(res)
        if args.save:
            print(f"saved {res.save(_suffixed(args.save, name, several))}")
        if args.csv:
            print(f"wrote {res.to_csv(_suffixed(args.csv, name, several))}")
    if args.out:
        _plot_results(results, args.out, args.title, show_stderr=args.stderr)
        print(f"plotted {args.out}")
    return 0


def _print_result(res: Any) -> None:
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


def _plot_results(results: list[Any], out: str, title: str | None, show_stderr: bool = False) -> None:
    from .plotting import _pyplot, plot_result, resolve_save_path

    if len(results) == 1:
        plot_result(results[0], title=title or _title(results[0]), save_path=out, show_stderr=show_stderr)
        return
    plt = _pyplot()
    la, lb = results[0].shape
    w = min(max(4.5, 0.32 * lb + 3.0), 14)
    h = min(max(4.0, 0.3 * la + 2.5), 14)
    fig, axes = plt.subplots(1, len(results), figsize=(w * len(results), h), dpi=100)
    for ax, res in zip(axes, results):
        plot_result(res, title=_title(res), ax=ax, show_stderr=show_stderr)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(resolve_save_path(out, title or "similarity"), dpi=200, bbox_inches="tight")


def _natural_key(path: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", Path(path).name))


def _cmd_checkpoints(args: argparse.Namespace) -> int:
    from .checkpoints import compare_checkpoints

    metrics = _metrics(args.metric)
    if len(metrics) > 1:
        raise CLIError("simtorch checkpoints takes one --metric at a time")
    for p in args.checkpoints:
        if not Path(p).is_file():
            raise CLIError(f"checkpoint {p!r} does not exist or is not a file")
    device = _device(args.device)
    template = build_model(args.arch, None, num_classes=args.num_classes, seed=args.seed)
    reference: Any = args.reference
    stems = [Path(p).stem for p in args.checkpoints]
    if reference not in ("last", "first") and reference not in stems and re.fullmatch(r"-?\d+", reference):
        reference = int(reference)  # a step number
    loader = _loader(args)
    cmp = compare_checkpoints(
        template, sorted(args.checkpoints, key=_natural_key), loader, metric=metrics[0],
        layers=args.layers or None, reference=reference, device=device,
        trust_checkpoint=args.trust_checkpoint, checkpoints_per_pass=args.per_pass,
        model_name=args.name or args.arch, sequence=args.sequence, progress=not args.quiet,
        **_metric_kwargs(metrics[0], args),
    )
    print(cmp)
    width = max(len(n) for n in cmp.layers)
    print(f"  {'layer':<{width}}  " + " ".join(f"{str(s)[-8:]:>8}" for s in cmp.steps))
    for i, layer in enumerate(cmp.layers):
        print(f"  {layer:<{width}}  " + " ".join(f"{v:8.4f}" for v in cmp.values[:, i]))
    if args.save:
        print(f"saved {cmp.save(args.save)}")
    if args.csv:
        print(f"wrote {cmp.to_csv(args.csv, full=args.full_csv)}")
    if args.out:
        cmp.plot(save_path=args.out, title=args.title, xlabel=args.xlabel)
        print(f"plotted {args.out}")
    if args.heatmap:
        cmp.plot_heatmap(save_path=args.heatmap, title=args.title)
        print(f"plotted {args.heatmap}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointComparison
    from .result import SimilarityResult, file_kind

    kind = file_kind(args.result)
    out = args.out or str(Path(args.result).with_suffix(".png"))
    if kind == "checkpoints":
        cmp = CheckpointComparison.load(args.result)
        if args.kind == "heatmap":
            cmp.plot_heatmap(save_path=out, title=args.title, cmap=args.cmap or "magma", vmin=args.vmin,
                             vmax=args.vmax)
        else:
            cmp.plot(save_path=out, title=args.title, **({"cmap": args.cmap} if args.cmap else {}))
    elif kind == "similarity":
        if args.kind == "lines":
            raise CLIError("--kind lines is for checkpoint comparisons; this file holds one similarity grid")
        res = SimilarityResult.load(args.result)
        res.plot(save_path=out, title=args.title or _title(res), cmap=args.cmap or "magma",
                 vmin=args.vmin, vmax=args.vmax, show_stderr=args.stderr)
    else:
        raise CLIError(f"{args.result!r} holds a {kind!r} result, which simtorch plot does not draw")
    print(f"plotted {out}")
    return 0


def _cmd_layers(args: argparse.Namespace) -> int:
    from .model import SimilarityModel

    model = build_model(args.model, None, num_classes=args.num_classes)
    if args.select:
        for name in SimilarityModel(model, args.model, args.select).layer_names:
            print(name)
        return 0
    defaults = set(SimilarityModel(model, args.model, default_layers(model)).layer_names)
    if args.default:
        for name, _ in model.named_modules():
            if name in defaults:
                print(name)
        return 0
    named = [(n, type(m).__name__) for n, m in model.named_modules() if n]
    width = max(len(n) for n, _ in named)
    print(f"# {len(named)} selectable modules of {args.model}; * = the default selection "
          f"({', '.join(default_layers(model))})")
    for name, kind in named:
        print(f"{'*' if name in defaults else ' '} {name:<{width}}  {kind}")
    return 0


# ----------------------------------------------------------------------------- parser
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows a default only where there is one worth reading (not None/False, not already
    described in the help text)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default in (None, False, argparse.SUPPRESS) or "default" in text or action.option_strings == []:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list) else "%(default)s"
        return f"{text} (default: {shown})"


def _add_data_options(p: argparse.ArgumentParser, n_default: int | None = 512) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default="synthetic", metavar="SPEC",
                   help="images to run through the models: 'synthetic' (seeded, natural-image-like noise), "
                        "'digits' (scikit-learn's handwritten digits, needs scikit-learn) or "
                        "'imagefolder:PATH' (one sub-folder per class)")
    g.add_argument("--n", type=int, default=n_default, help="number of images (digits/imagefolder: at most that many)")
    g.add_argument("--batch-size", type=int, default=64,
                   help="images per batch; the jackknife error bars need at least 2 batches")
    g.add_argument("--image-size", type=int, default=64, help="images are resized to SIZE×SIZE")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic data and of random initialisations (model B uses SEED+1)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")


def _add_metric_options(p: argparse.ArgumentParser, several: bool) -> None:
    g = p.add_argument_group("metric")
    g.add_argument("--metric", nargs="+" if several else None, default=["cka"] if several else "cka", metavar="NAME",
                   help="similarity: cka (Kornblith et al. 2019), dcka (deconfounded CKA, Cui et al. 2022), "
                        "ii (Information Imbalance, Glielmo et al. 2022)"
                        + ("; several (space or comma separated) are computed in one pass" if several else ""))
    g.add_argument("--kernel", choices=["linear", "rbf"], default="linear",
                   help="CKA kernel (RBF: median-distance bandwidth); dCKA and II are linear")
    g.add_argument("--estimator", choices=["unbiased", "biased"], default=None,
                   help="HSIC estimator of CKA and dCKA: unbiased HSIC1 (Song et al. 2012) or biased HSIC0; "
                        "default: each metric's own (CKA unbiased, dCKA biased as in its paper)")
    g.add_argument("--biased", dest="estimator", action="store_const", const="biased",
                   help="same as --estimator biased")
    g.add_argument("--sequence", choices=["flatten", "mean", "first"], default="flatten",
                   help="how (batch, tokens, features) outputs become vectors")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps…; default: cuda when available")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="allow checkpoint files holding pickled Python objects (these can run code: only for "
                        "files you trust); by default files are read with torch.load(weights_only=True)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``simtorch`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="simtorch", formatter_class=_Formatter,
        description="Layer-by-layer similarity of neural network representations (CKA, dCKA, "
                    "Information Imbalance), streamed over a data set.",
        epilog="Examples:\n"
               "  simtorch compare resnet18 resnet34 --out grid.png\n"
               "  simtorch compare resnet18 resnet18 --weights-a DEFAULT --weights-b run2.pt --data digits\n"
               "  simtorch checkpoints --arch resnet18 --num-classes 10 ckpt_*.pt --out trend.png\n"
               "  simtorch plot result.npz --out grid.png\n"
               "  simtorch layers resnet18\n"
               "Models: a torchvision name (see torchvision.models.list_models()) or package.module:function.",
    )
    parser.add_argument("--version", action="version", version=f"simtorch {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("compare", formatter_class=_Formatter, help="compare two models layer by layer",
                       description="Compare every chosen layer of model A with every chosen layer of model B and "
                                   "print, plot and save the grid with jackknife standard errors.")
    p.add_argument("model_a", help="model A: torchvision name or package.module:function")
    p.add_argument("model_b", help="model B (may be the same architecture)")
    g = p.add_argument_group("models")
    for side in ("a", "b"):
        up = side.upper()
        g.add_argument(f"--weights-{side}", default=None, metavar="W",
                       help=f"model {up}'s weights: a torchvision weight name (DEFAULT, IMAGENET1K_V1; downloaded "
                            f"or from the torch hub cache) or a checkpoint path; default: random initialisation")
        g.add_argument(f"--layers-{side}", nargs="+", action="extend", default=None, metavar="PATTERN",
                       help=f"model {up}'s layers: exact names, globs ('layer?.*': * stays within one dotted "
                            "name) or substrings; default: the residual blocks of a ResNet, the stages of "
                            "'features' models, else the top-level children (see 'simtorch layers'); for the same "
                            "architecture on both sides, --layers-a also sets B's")
        g.add_argument(f"--num-classes-{side}", type=int, default=None, metavar="K",
                       help=f"build model {up} with K output classes (to fit its checkpoint)")
        g.add_argument(f"--name-{side}", default=None, help=f"model {up}'s name in plots (default: its architecture)")
    _add_metric_options(p, several=True)
    _add_data_options(p)
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, metavar="PNG", help="heatmap file (.png, .pdf, .svg)")
    o.add_argument("--title", default=None, help="plot title")
    o.add_argument("--stderr", action="store_true", help="write value ± standard error into the heatmap cells")
    o.add_argument("--save", default=None, metavar="NPZ",
                   help="save the result (.npz, no pickle; 'simtorch plot' redraws it); with several metrics "
                        "the metric is appended to the name")
    o.add_argument("--csv", default=None, metavar="CSV", help="write layer_a, layer_b, value, stderr rows")
    _add_run_options(p)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("checkpoints", formatter_class=_Formatter, help="compare the checkpoints of a training run",
                       description="Compare each checkpoint's layers with the same layers of a reference checkpoint "
                                   "(default: the last) and plot how every layer converges over training. "
                                   "Checkpoints are ordered by the last number in their file names.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoint files (torch.save)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", required=True, help="the architecture: torchvision name or package.module:function")
    g.add_argument("--num-classes", type=int, default=None, metavar="K", help="build the model with K classes")
    g.add_argument("--layers", nargs="+", action="extend", default=None, metavar="PATTERN",
                   help="layers to compare; default: those marked in 'simtorch layers ARCH'")
    g.add_argument("--reference", default="last",
                   help="the checkpoint compared with: last, first, a file name stem, a step number or another file")
    g.add_argument("--name", default=None, help="the model's name in plots")
    g.add_argument("--channels", type=int, default=3, help="input channels (synthetic and digits data)")
    g.add_argument("--per-pass", type=int, default=None, metavar="K",
                   help="checkpoints held in memory per pass over the data; default: all that fit in 2 GiB")
    _add_metric_options(p, several=False)
    _add_data_options(p)
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, metavar="PNG", help="lines plot: each layer's similarity over training")
    o.add_argument("--heatmap", default=None, metavar="PNG", help="layers × checkpoints heatmap")
    o.add_argument("--title", default=None, help="plot title")
    o.add_argument("--xlabel", default="training step", help="x axis label of the lines plot")
    o.add_argument("--save", default=None, metavar="NPZ", help="save the comparison (.npz, no pickle)")
    o.add_argument("--csv", default=None, metavar="CSV", help="write checkpoint, step, layer, value, stderr rows")
    o.add_argument("--full-csv", action="store_true", help="--csv writes every cell of every grid")
    _add_run_options(p)
    p.set_defaults(func=_cmd_checkpoints)

    p = sub.add_parser("plot", formatter_class=_Formatter, help="redraw a saved result",
                       description="Draw a result saved with --save (or result.save()) without the models.")
    p.add_argument("result", help="a .npz file written by simtorch")
    p.add_argument("--out", default=None, metavar="PNG", help="figure file (default: RESULT with .png)")
    p.add_argument("--title", default=None, help="plot title")
    p.add_argument("--cmap", default=None, help="matplotlib colormap")
    p.add_argument("--vmin", type=float, default=None, help="colour scale minimum")
    p.add_argument("--vmax", type=float, default=None, help="colour scale maximum")
    p.add_argument("--stderr", action="store_true", help="write value ± standard error into the cells")
    p.add_argument("--kind", choices=["lines", "heatmap"], default=None,
                   help="for checkpoint comparisons: lines over training (default) or a layers × checkpoints heatmap")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("layers", formatter_class=_Formatter, help="list a model's selectable layer names",
                       description="List the qualified module names that --layers patterns select from, with "
                                   "their types; * marks the default selection.")
    p.add_argument("model", help="torchvision name or package.module:function")
    p.add_argument("--num-classes", type=int, default=None, metavar="K", help="build the model with K classes")
    p.add_argument("--default", action="store_true", help="print only the default selection, one name per line")
    p.add_argument("--select", nargs="+", default=None, metavar="PATTERN",
                   help="print the layers these patterns select, one per line")
    p.set_defaults(func=_cmd_layers)
    return parser


# ----------------------------------------------------------------------------- entry point
def _one_line(exc: BaseException) -> str:
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    msg = " ".join(str(msg).split())
    return msg or type(exc).__name__


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    print(f"simtorch: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``simtorch`` command; returns the exit status (0 on success)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        warnings.showwarning = _show_warning  # one line per warning, no source location
    os.environ.setdefault("MPLBACKEND", "Agg")  # the command writes files; it never opens a window
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `simtorch layers resnet18 | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("simtorch: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line instead of a traceback (--debug shows it)
        if args.debug:
            raise
        print(f"simtorch: error: {_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
