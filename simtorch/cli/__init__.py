"""The ``simtorch`` command line (also ``python -m simtorch``).

::

    simtorch compare resnet18 resnet34 --out grid.png
    simtorch checkpoints --arch resnet18 ckpt_*.pt --out trend.png
    simtorch plot result.npz --out grid.png
    simtorch layers resnet18

Models are torchvision names (``torchvision.models.get_model``), ``timm:NAME`` (``pip install
timm``), ``hf:DIR`` (a local ``save_pretrained`` directory, with ``--data text:FILE``; ``pip
install transformers``) or ``package.module:function`` for your own architecture. Errors print
one line (``simtorch: error: ...``) and exit with status 1 (2 for bad arguments, 130 when
interrupted, after writing the partial results of ``compare`` and ``checkpoints``);
``--debug`` shows the traceback instead. ``simtorch compare ... --resume state.npz`` makes
a long run resumable: run the same command again after an interruption.

Modules: :mod:`~simtorch.cli.parser` (options and help), :mod:`~simtorch.cli.commands`
(what each command does), :mod:`~simtorch.cli.options` (options as library arguments:
which option reaches which metric, ``--resume``), :mod:`~simtorch.cli.output` (printed
tables, written files and figures), :mod:`~simtorch.cli.zoo` (models and weights),
:mod:`~simtorch.cli.data` (the loader), :mod:`~simtorch.cli.errors` (the one-line error
type); this one runs a command and turns errors into one line.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from ..layers import RESNET_LAYERS, default_layers
from ..metrics import canonical_names
from .errors import CLIError
from .parser import build_parser
from .zoo import build_model

__all__ = ["CLIError", "build_model", "build_parser", "default_layers", "main"]

#: the 0.3.0 names of this module: the ResNet default layers (:mod:`simtorch.layers`) and
#: the metric names ``--metric`` takes (the registry's keys)
__all__ += ["RESNET_LAYERS", "METRICS"]
METRICS = tuple(canonical_names())


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
