"""The command line's argument parser (:func:`build_parser`): every command, option and
help text."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .._version import __version__
from ..metrics import canonical_names, metric_class
from .commands import cmd_checkpoints, cmd_compare, cmd_layers, cmd_plot

__all__ = ["build_parser", "spread_metric_values"]

#: options that take one value per flag (repeatable, values may be comma separated), so
#: that they can never eat the positional arguments that follow them
_ONE_PER_FLAG = ("--layers-a", "--layers-b", "--layers", "--select", "--steps")


def _is_metric_list(token: str) -> bool:
    if not token or token.startswith("-"):
        return False
    try:
        for part in token.split(","):
            if part.strip():
                metric_class(part.strip())
    except (KeyError, ValueError):
        return False
    return True


def spread_metric_values(argv: Sequence[str]) -> list[str]:
    """``--metric cka dcka ii`` as ``--metric=cka,dcka,ii``: the values
    after ``--metric`` are taken while they are metric names (the registry's, a closed set),
    so ``--metric cka resnet18 resnet34`` leaves the model names to the positionals."""
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            out.extend(args[i:])
            break
        if a == "--metric" and i + 1 < len(args):
            values = [args[i + 1]]
            i += 2
            while i < len(args) and _is_metric_list(args[i]):
                values.append(args[i])
                i += 1
            out.append(f"--metric={','.join(values)}")  # one flag: a later --metric replaces it, as before
            continue
        out.append(a)
        i += 1
    return out


class _Parser(argparse.ArgumentParser):
    """argparse with multi-value options that cannot swallow positionals (see
    :func:`spread_metric_values` and :data:`_ONE_PER_FLAG`), and a hint when they were
    used the old way."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        import sys

        self._last_args = spread_metric_values(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self._last_args, namespace)

    def error(self, message: str) -> Any:  # type: ignore[override]
        used = any(str(a).split("=", 1)[0] in _ONE_PER_FLAG for a in getattr(self, "_last_args", []))
        if used and (message.startswith("unrecognized arguments") or "arguments are required" in message):
            message += (" (--layers-a, --layers-b, --layers, --select and --steps take one value per flag: repeat "
                        "the flag or separate values with commas, e.g. --layers-a layer1,layer2)")
        super().error(message)


class _Extend(argparse.Action):
    """One value per flag, repeatable, comma-separated values split: ``--layers-a a,b
    --layers-a c`` → ``["a", "b", "c"]``; the default is replaced, not extended."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        items = getattr(namespace, self.dest, None)
        if items is None or items is self.default:
            items = []
        items = list(items) + [v.strip() for v in str(values).split(",") if v.strip()]
        setattr(namespace, self.dest, items)


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
                   help="data to run through the models: 'synthetic' (seeded, natural-image-like noise), "
                        "'digits' (scikit-learn's handwritten digits, needs scikit-learn), "
                        "'imagefolder:PATH' (one sub-folder per class) or 'text:FILE' (one text per line, "
                        "tokenised by the hf: model's tokenizer)")
    g.add_argument("--max-length", type=int, default=128, metavar="T",
                   help="text data: at most T tokens per line (padded to the longest line)")
    g.add_argument("--n", type=int, default=n_default, help="number of images (digits/imagefolder: at most that many)")
    g.add_argument("--batch-size", type=int, default=64,
                   help="images per batch; the jackknife error bars need at least 2 batches")
    g.add_argument("--image-size", type=int, default=64, help="images are resized to SIZE×SIZE")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic data and of random initialisations (model B uses SEED+1)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")


def _metric_choices() -> str:
    return ", ".join(f"{key} ({metric_class(key).name})" for key in canonical_names())


def _add_metric_options(p: argparse.ArgumentParser, several: bool) -> None:
    g = p.add_argument_group("metric")
    g.add_argument("--metric", default="cka", metavar="NAME",
                   help=f"similarity measure: {_metric_choices()} (the registry of simtorch.metrics)"
                        + ("; several (space or comma separated) are computed in one pass" if several else ""))
    # which of these reaches which metric is declared once, in simtorch.cli.options.METRIC_FLAGS
    g.add_argument("--kernel", choices=["linear", "rbf"], default=None,
                   help="CKA's kernel: linear (default) or rbf (median-distance bandwidth); only CKA takes it "
                        "(dCKA is linear, CKNNA's kernel is --cknna-kernel)")
    g.add_argument("--sigma-frac", type=float, default=None, metavar="F",
                   help="CKA with --kernel rbf: the bandwidth is F times the median distance (default 1)")
    g.add_argument("--cknna-kernel", choices=["cosine", "linear"], default=None,
                   help="CKNNA's neighbourhood kernel: cosine (default) or linear")
    g.add_argument("--estimator", choices=["unbiased", "biased"], default=None,
                   help="HSIC estimator of CKA, dCKA and CKNNA: unbiased HSIC1 (Song et al. 2012) or biased HSIC0; "
                        "default: each metric's own (CKA and CKNNA unbiased, dCKA biased as in its paper)")
    g.add_argument("--biased", dest="estimator", action="store_const", const="biased",
                   help="same as --estimator biased")
    g.add_argument("--permutations", type=int, default=None, metavar="K",
                   help="CKA/dCKA: a permutation null from the same pass, K within-batch shuffles of model B's "
                        "samples; the result gets a p-value per cell (result.pvalue, kept by --save; "
                        "plot_result(res, significance=0.05) greys out the others); costs K matrix products per batch")
    g.add_argument("--permutation-seed", type=int, default=None, metavar="S",
                   help="seed of the permutations of --permutations (default: --seed)")
    g.add_argument("--sequence", choices=["flatten", "mean", "first"], default=None,
                   help="how (batch, tokens, features) outputs become vectors; default: mean (over the tokens the "
                        "attention mask keeps) for text data, else flatten")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps…; default: cuda when available")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="allow checkpoint files holding pickled Python objects (these can run code: only for "
                        "files you trust); by default files are read with torch.load(weights_only=True)")
    g.add_argument("--state-key", default=None, metavar="KEY",
                   help="checkpoints holding several state dicts ({'model': ..., 'ema': ...}): the one to load; "
                        "without it the first of state_dict, model_state_dict, model is loaded, with a warning")
    g.add_argument("--strip-prefix", default=None, metavar="PREFIX",
                   help="remove PREFIX (e.g. 'net.') from the checkpoints' keys; keys without it are dropped "
                        "(module., _orig_mod. and Lightning's model. are removed without it)")
    g.add_argument("--channels-last", action="store_true",
                   help="give the models their images in the channels_last memory format (faster convolutions "
                        "on CPU and CUDA; a model whose forward calls .view on a spatial activation fails with it)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``simtorch`` command."""
    parser = _Parser(
        prog="simtorch", formatter_class=_Formatter,
        description="Layer-by-layer similarity of neural network representations (CKA, dCKA, "
                    "Information Imbalance), streamed over a data set.",
        epilog="Examples:\n"
               "  simtorch compare resnet18 resnet34 --out grid.png\n"
               "  simtorch compare resnet18 resnet18 --weights-a DEFAULT --weights-b run2.pt --data digits\n"
               "  simtorch checkpoints --arch resnet18 --num-classes 10 ckpt_*.pt --out trend.png\n"
               "  simtorch plot result.npz --out grid.png\n"
               "  simtorch layers resnet18\n"
               "  simtorch compare timm:resnet18 timm:resnet34\n"
               "  simtorch compare hf:./bert_a hf:./bert_b --data text:sentences.txt\n"
               "Models: a torchvision name (see torchvision.models.list_models()), timm:NAME (pip install timm), "
               "hf:DIR (a local save_pretrained directory; pip install transformers) or package.module:function.",
    )
    parser.add_argument("--version", action="version", version=f"simtorch {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("compare", formatter_class=_Formatter, help="compare two models layer by layer",
                       description="Compare every chosen layer of model A with every chosen layer of model B and "
                                   "print, plot and save the grid with jackknife standard errors.")
    p.add_argument("model_a", help="model A: torchvision name, timm:NAME, hf:DIR or package.module:function")
    p.add_argument("model_b", help="model B (may be the same architecture)")
    g = p.add_argument_group("models")
    for side in ("a", "b"):
        up = side.upper()
        g.add_argument(f"--weights-{side}", default=None, metavar="W",
                       help=f"model {up}'s weights: a torchvision weight name (DEFAULT, IMAGENET1K_V1; downloaded "
                            f"or from the torch hub cache) or a checkpoint (.pt, .ckpt, .safetensors, .bin, or a "
                            f"save_pretrained directory); default: random initialisation (hf: models: the "
                            f"directory's own weights)")
        g.add_argument(f"--layers-{side}", action=_Extend, default=None, metavar="PATTERN",
                       help=f"model {up}'s layers, one pattern per flag (repeat it, or separate patterns with "
                            "commas): exact names, globs ('layer?.*': * stays within one dotted "
                            "name) or substrings; default: the residual blocks of a ResNet, the stages of "
                            "'features' models, the blocks of hf: transformers, else the top-level children (see "
                            "'simtorch layers'); for the same architecture on both sides, --layers-a also sets B's")
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
                   help="save the result (.npz, no pickle; 'simtorch plot NPZ' redraws it); with several metrics "
                        "NPZ holds all of them (plot draws one panel each, --metric chooses) and NPZ_<metric>.npz "
                        "each one alone")
    o.add_argument("--csv", default=None, metavar="CSV",
                   help="write layer_a, layer_b, value, stderr rows (several metrics: CSV_<metric>.csv each)")
    _add_run_options(p)
    r = p.add_argument_group("resumable runs")
    r.add_argument("--resume", default=None, metavar="PATH",
                   help="save the metrics' sums to PATH (.npz, no pickle, written atomically) as the pass goes and "
                        "when it is interrupted; the same command run again skips the batches already counted and "
                        "continues (a state from other models, layers, metrics or data is refused). A finished "
                        "run's file stays: delete it to start over")
    r.add_argument("--save-every", default=None, metavar="N|30s",
                   help="with --resume: save the state every N batches, or every interval (30s, 5m, 1h); "
                        "default 60s")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("checkpoints", formatter_class=_Formatter, help="compare the checkpoints of a training run",
                       description="Compare each checkpoint's layers with the same layers of a reference checkpoint "
                                   "(default: the last) and plot how every layer converges over training. "
                                   "The order is never guessed: --steps, else the step each checkpoint stores "
                                   "(Lightning's global_step), else a step= / epoch= / stepN key in the names, else "
                                   "the one number of names that differ only in it (ckpt_9, ckpt_10), else the "
                                   "order given (with a warning); the rule used is printed.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="checkpoints: torch.save files, Lightning .ckpt, .safetensors or save_pretrained directories")
    g = p.add_argument_group("model")
    g.add_argument("--arch", required=True,
                   help="the architecture: torchvision name, timm:NAME, hf:DIR or package.module:function")
    g.add_argument("--num-classes", type=int, default=None, metavar="K", help="build the model with K classes")
    g.add_argument("--layers", action=_Extend, default=None, metavar="PATTERN",
                   help="layers to compare, one pattern per flag (repeat it, or separate patterns with commas); "
                        "default: those marked in 'simtorch layers ARCH'")
    g.add_argument("--reference", default="last",
                   help="the checkpoint compared with: last, first, a file name stem, a step number or another file")
    g.add_argument("--name", default=None, help="the model's name in plots")
    g.add_argument("--steps", action=_Extend, default=None, metavar="S",
                   help="the step of each checkpoint, in the order given (comma separated or one per flag): "
                        "sets the order and the x axis")
    g.add_argument("--order", choices=["auto", "given"], default="auto",
                   help="given: keep the checkpoints in the order given (no sorting by stored or named steps)")
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
    p.set_defaults(func=cmd_checkpoints)

    p = sub.add_parser("plot", formatter_class=_Formatter, help="redraw a saved result",
                       description="Draw a result saved with --save (or result.save()) without the models.")
    p.add_argument("result", help="a .npz file written by simtorch (one result, or an archive of several metrics)")
    p.add_argument("--metric", default=None, metavar="NAME",
                   help="for an archive of several metrics: the ones to draw (default: all, one panel each)")
    p.add_argument("--out", default=None, metavar="PNG", help="figure file (default: RESULT with .png)")
    p.add_argument("--title", default=None, help="plot title")
    p.add_argument("--cmap", default=None, help="matplotlib colormap")
    p.add_argument("--vmin", type=float, default=None, help="colour scale minimum")
    p.add_argument("--vmax", type=float, default=None, help="colour scale maximum")
    p.add_argument("--stderr", action="store_true", help="write value ± standard error into the cells")
    p.add_argument("--kind", choices=["lines", "heatmap"], default=None,
                   help="for checkpoint comparisons: lines over training (default) or a layers × checkpoints heatmap")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("layers", formatter_class=_Formatter, help="list a model's selectable layer names",
                       description="List the qualified module names that --layers patterns select from, with "
                                   "their types; * marks the default selection.")
    p.add_argument("model", help="torchvision name, timm:NAME, hf:DIR or package.module:function")
    p.add_argument("--num-classes", type=int, default=None, metavar="K", help="build the model with K classes")
    p.add_argument("--default", action="store_true", help="print only the default selection, one name per line")
    p.add_argument("--select", action=_Extend, default=None, metavar="PATTERN",
                   help="print the layers these patterns select, one per line (one pattern per flag, or comma "
                        "separated)")
    p.set_defaults(func=cmd_layers)
    return parser
