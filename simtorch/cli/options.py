"""The command line's options as library arguments: the device, the metrics and which
option reaches which metric's parameter (:data:`METRIC_FLAGS`, declared once), and the run
options of a resumable pass (``--resume``, ``--save-every``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..metrics import metric_class
from ..resume import parse_save_every
from .errors import CLIError

__all__ = ["METRIC_FLAGS", "MetricFlag", "check_metric_flags", "metric_keys", "metric_options", "resolve_device",
           "run_options"]


def resolve_device(name: str | None) -> str:
    """``--device``, defaulting to CUDA when available; CUDA asked for but absent is an error."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return name


def metric_keys(values: Sequence[str] | str) -> list[str]:
    """``--metric`` values (space or comma separated names or aliases of the metric
    registry) as registry keys, in order, without repeats; ``["cka"]`` when empty."""
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for v in values:
        for m in v.split(","):
            key = metric_class(m.strip()).key if m.strip() else ""
            if key and key not in out:
                out.append(key)
    return out or ["cka"]


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class MetricFlag:
    """One command-line option that sets a metric parameter: ``params`` maps the registry
    keys of the metrics it applies to onto their parameter's name. A parameter of the same
    name in another metric is *not* set by it: CKNNA's ``kernel`` (its neighbourhood
    kernel, cosine or linear) is not CKA's ``--kernel``."""

    flag: str
    dest: str
    params: Mapping[str, str]
    convert: Callable[[Any], Any] = field(default=_same)


#: which option sets which parameter of which metric; an option left unset keeps every
#: metric's own default (CKA: linear, unbiased HSIC₁; dCKA: biased HSIC₀, as in its paper;
#: CKNNA: cosine, unbiased)
METRIC_FLAGS: tuple[MetricFlag, ...] = (
    MetricFlag("--kernel", "kernel", {"cka": "kernel"}),
    MetricFlag("--sigma-frac", "sigma_frac", {"cka": "sigma_frac"}),
    MetricFlag("--cknna-kernel", "cknna_kernel", {"cknna": "kernel"}),
    MetricFlag("--estimator", "estimator", {"cka": "unbiased", "dcka": "unbiased", "cknna": "unbiased"},
               convert=lambda v: v == "unbiased"),
    MetricFlag("--permutations", "permutations", {"cka": "permutations", "dcka": "permutations"}),
    MetricFlag("--permutation-seed", "permutation_seed", {"cka": "seed", "dcka": "seed"}),
)


def metric_options(key: str, args: argparse.Namespace) -> dict[str, Any]:
    """The parameters of metric ``key`` that the given options set (:data:`METRIC_FLAGS`)."""
    kwargs: dict[str, Any] = {}
    for flag in METRIC_FLAGS:
        value = getattr(args, flag.dest, None)
        if value is not None and key in flag.params:
            kwargs[flag.params[key]] = flag.convert(value)
    if kwargs.get("permutations") and "seed" not in kwargs and isinstance(getattr(args, "seed", None), int):
        kwargs["seed"] = args.seed  # the permutation null follows the run's --seed unless told otherwise
    return kwargs


def check_metric_flags(keys: Sequence[str], args: argparse.Namespace) -> None:
    """An option given for metrics none of which is chosen is an error, not a no-op."""
    for flag in METRIC_FLAGS:
        if getattr(args, flag.dest, None) is not None and not any(k in flag.params for k in keys):
            takers = ", ".join(flag.params)
            hint = " (CKNNA's neighbourhood kernel is --cknna-kernel)" if flag.dest == "kernel" and "cknna" in keys \
                else ""
            raise CLIError(f"{flag.flag} applies to --metric {takers}, not to {', '.join(keys)}{hint}")


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--resume PATH`` and ``--save-every N|30s`` as the run options ``state_path`` and
    ``save_every`` (:class:`simtorch.engine.RunOptions`); ``--save-every`` needs ``--resume``."""
    path, every = getattr(args, "resume", None), getattr(args, "save_every", None)
    if every is not None:
        if path is None:
            raise CLIError(f"--save-every {every}: it says how often the run's state is saved, which needs "
                           "--resume PATH (the file it is saved to)")
        try:
            parse_save_every(every)
        except (TypeError, ValueError):
            raise CLIError(f"--save-every {every!r}: give a number of batches (100) or an interval "
                           "(30s, 5m, 1h)") from None
    if path is None:
        return {}
    return {"state_path": path, **({"save_every": every} if every is not None else {})}
