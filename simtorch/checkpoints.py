"""Comparing the checkpoints of one training run: :func:`compare_checkpoints`.

It answers "when does each layer settle?": every checkpoint's chosen layers against the
same layers of a reference checkpoint (by default the last), with a jackknife standard
error per value, plus the full layer × layer grid of each checkpoint against the reference.

How it streams: the reference and a group of checkpoints are held as sub-modules of one
container module that runs them all on each batch; the reference's layers are side A of
the engine, every checkpoint's layers side B. So each batch costs one forward pass per
model, the reference's Gram matrices and self-terms are computed once per batch and reused
for every checkpoint of the group, and all cross terms come from one matrix product. When
the checkpoints do not fit in memory together they are split into groups
(``checkpoints_per_pass``), one pass over the data per group.

Interrupted (Ctrl-C, or an error), it re-raises with the checkpoints finished so far as
``exc.simtorch_partial``: a :class:`CheckpointComparison` marked partial (see
:func:`compare_checkpoints`), or None when no batch completed.

Loading is :mod:`simtorch.checkpoint_io`'s, the order :mod:`simtorch.checkpoint_order`'s,
the result type :mod:`simtorch.checkpoint_result`'s; their main names are re-exported here.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint_io import (CheckpointSource, KeyMap, StateKey, load_checkpoint, load_state_dict,
                            looks_like_state_dict, require_file)
from .checkpoint_io import checkpoint_metadata, is_hf_directory  # noqa: F401  (importable here, as before)
from .checkpoint_order import checkpoint_order, resolve_reference
from .checkpoint_result import CheckpointComparison
from .compare import build_metrics
from .engine import RunOptions
from .layers import Exact, LayerSpec, default_layers, unwrap_model
from .metrics import Metric, metric_class
from .model import SimilarityModel
from .runner import run_metrics

__all__ = [
    "CheckpointComparison",
    "CheckpointSource",
    "checkpoint_order",
    "compare_checkpoints",
    "load_checkpoint",
    "load_state_dict",
]


# ----------------------------------------------------------------------------- comparing
class _Stack(nn.Module):
    """Runs several models on the same input; their outputs are discarded (only the
    hooks on their layers matter)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        for i, m in enumerate(members):
            self.add_module(f"m{i}", m)

    def forward(self, *args: Any, **kwargs: Any) -> None:
        for m in self.children():
            m(*args, **kwargs)


def _metric_factory(metric: str | Callable[[], Metric], kwargs: dict[str, Any]) -> Callable[[], Metric]:
    """A function returning a fresh metric per pass; a name is looked up in the registry."""
    if callable(metric) and not isinstance(metric, str):
        if kwargs:
            raise TypeError(f"metric keyword arguments {sorted(kwargs)} only apply to a metric given by name")
        return metric
    key = metric_class(metric).key

    def make() -> Metric:
        return build_metrics([key], {key: kwargs})[key]

    make()  # argument errors now, before any checkpoint is loaded
    return make


def _param_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def _prefixed_output_fn(fn: Callable[..., Tensor] | None) -> Callable[..., Tensor] | None:
    """Give a two-argument ``output_fn(name, output)`` the user's layer names, not the
    container's ``m3.layer1``."""
    if fn is None:
        return None
    try:
        params = [
            p for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
    except (TypeError, ValueError):
        return fn
    if len(params) < 2 and not any(p.kind == p.VAR_POSITIONAL for p in params):
        return fn

    def wrapped(name: str, output: Any) -> Tensor:
        return fn(name.split(".", 1)[1], output)

    return wrapped


def _prefixed(call_index: int | Mapping[str, int] | None, names: list[str]) -> int | dict[str, int] | None:
    """A per-layer ``call_index`` keyed by the container's names ``m3.layer1``."""
    if not isinstance(call_index, Mapping):
        return call_index
    return {n: call_index[n.split(".", 1)[1]] for n in names if n.split(".", 1)[1] in call_index}


def _fill(grids: np.ndarray, grids_se: np.ndarray, res: Any, columns: Sequence[int], n_layers: int) -> None:
    """Copy a group's combined grid (reference layers × every member's layers) into the
    checkpoints' own grids."""
    for j, k in enumerate(columns):
        grids[k] = res.matrix[:, j * n_layers : (j + 1) * n_layers]
        grids_se[k] = res.stderr[:, j * n_layers : (j + 1) * n_layers]


def compare_checkpoints(
    model: nn.Module | Callable[[], nn.Module],
    checkpoints: Sequence[CheckpointSource] | Mapping[Any, CheckpointSource],
    loader: Iterable,
    metric: str | Callable[[], Metric] = "cka",
    layers: Sequence[LayerSpec] | LayerSpec | None = None,
    reference: str | int | CheckpointSource = "last",
    *,
    steps: Sequence[float] | None = None,
    order: str = "auto",
    device: str | torch.device | None = None,
    map_location: str | torch.device | None = "cpu",
    trust_checkpoint: bool = False,
    state_key: StateKey = None,
    strip_prefix: str | Sequence[str] | None = None,
    key_map: KeyMap = None,
    checkpoints_per_pass: int | None = None,
    model_name: str | None = None,
    output_fn: Callable[..., Tensor] | None = None,
    sequence: str = "flatten",
    call_index: int | Mapping[str, int] | None = None,
    progress: bool = True,
    input_key: str | None = None,
    input_fn: Callable[[Any], Any] | None = None,
    autocast: torch.dtype | None = None,
    channels_last: bool = False,
    **metric_kwargs: Any,
) -> CheckpointComparison:
    """Compare every checkpoint's layers with the same layers of a reference checkpoint.

    For checkpoint ``k`` and layers ``i, j`` the result holds the similarity (CKA by
    default, the minibatch estimator of Nguyen et al. 2021) of the reference's layer ``i``
    and checkpoint ``k``'s layer ``j`` over the whole loader, with a delete-one-batch
    jackknife standard error; ``values[k, i]`` (``i = j``) is how close layer ``i`` is to
    its reference state (Kornblith et al. 2019, Fig. 7 style "convergence over training").

    Parameters
    ----------
    model : nn.Module or callable
        The architecture: a module (deep-copied for each checkpoint; the original is never
        modified) or a function returning a fresh module.
    checkpoints : sequence or mapping
        Checkpoint files (``torch.save``, Lightning ``.ckpt``, ``.safetensors``), Hugging
        Face ``save_pretrained`` directories, state dicts or modules; or a mapping from a
        name or step to each. The order is never guessed (:func:`checkpoint_order`):
        ``steps=`` or numeric mapping keys, else the step each checkpoint stores
        (Lightning's ``global_step``), else an unambiguous step in the names (``step=``,
        ``epoch=``, ``step300``, or the one number of names that differ only in it:
        ``ckpt_9``, ``ckpt_10``), else the given order with a warning. The rule used is
        kept in the result's ``order``.
    loader : iterable
        The data (a ``DataLoader``). Use one without shuffling, so that every pass sees
        the same batches.
    metric : str or callable
        ``"cka"`` (default), ``"dcka"`` or ``"ii"`` (any name or alias of the metric
        registry, :func:`simtorch.metrics.canonical_names`), or a function returning a
        fresh :class:`~simtorch.metrics.Metric` (one per pass).
    layers : list of patterns, optional
        Layers to compare, as in ``SimilarityModel(layers_to_include=...)``. Default:
        :func:`simtorch.layers.default_layers` for the architecture (ResNet blocks, the
        stages of ``features`` models, or the top-level children).
    reference : ``"last"``, ``"first"``, name, step, path or state dict
        The checkpoint everything is compared with: one of ``checkpoints`` (by name or
        step; ``"last"`` is the one with the largest step) or another checkpoint.
    steps : sequence of float, optional
        The step of each checkpoint (overrides the stored and parsed ones), in the given order.
    order : ``"auto"`` or ``"given"``
        ``"given"`` keeps the given order whatever the names or stored steps say.
    device : str or torch.device, optional
        Where the models run and the sums are computed (default: where the model is).
    map_location, trust_checkpoint, state_key, strip_prefix, key_map
        How checkpoints are read; see :func:`load_state_dict`. Files are read with
        ``weights_only=True`` unless ``trust_checkpoint=True``; ``state_key`` picks the
        state dict of checkpoints holding several (``"ema"``), ``strip_prefix="net."`` /
        ``key_map`` rename keys.
    checkpoints_per_pass : int, optional
        How many checkpoints are held in memory and streamed together (the reference's
        Grams are computed once per batch and shared by them). Default: all of them, as
        long as their weights stay under 2 GiB and their layers under 1024.
    model_name : str, optional
        Shown in plots and results (default: the model's class name).
    output_fn, sequence, call_index
        As in :class:`~simtorch.model.SimilarityModel`, applied to every checkpoint
        (``output_fn(name, output)`` receives the model's own layer names).
    progress, input_key, input_fn, autocast, channels_last
        How each pass runs, as everywhere in simtorch: :class:`~simtorch.engine.RunOptions`
        (validated before any checkpoint is loaded).
    **metric_kwargs
        The metric's settings, e.g. ``kernel="rbf"``, ``unbiased=False`` for CKA.

    Returns
    -------
    CheckpointComparison
        ``values``/``stderr`` ``(K, L)``, full ``grids``/``grids_stderr`` ``(K, L, L)``,
        ``plot()`` (lines over training), ``plot_heatmap()``, ``save``, ``to_csv``.

    Raises
    ------
    KeyboardInterrupt, Exception
        Interrupted (Ctrl-C) or failed mid-way, the exception is re-raised with
        ``exc.simtorch_partial``: a :class:`CheckpointComparison` of the checkpoints finished
        so far (in step order, against the same reference), marked partial:
        ``settings["partial"] = True``, ``settings["stopped_by"]`` (the exception's type),
        ``settings["missing_checkpoints"]`` (the labels left out) and
        ``settings["passes_completed"]`` of ``settings["passes"]``. Checkpoints of an
        interrupted pass are included only when no pass had completed (every value then
        comes from the same completed batches, ``n_batches`` of them); otherwise they are
        left out, so all values of the partial comparison come from the whole loader.
        ``exc.simtorch_partial`` is None when no batch completed.

    Notes
    -----
    Cost: one forward pass per checkpoint per batch, plus one of the reference when it is
    not among the checkpoints (and one more per extra pass when ``checkpoints_per_pass``
    splits them); the full grids come from the same matrix product as the diagonals, so
    they cost nothing extra.
    """
    options = RunOptions(device=device, progress=progress, input_key=input_key, input_fn=input_fn,
                         autocast=autocast, channels_last=channels_last)
    make_metric = _metric_factory(metric, metric_kwargs)
    given = list(checkpoints.values()) if isinstance(checkpoints, Mapping) and not looks_like_state_dict(checkpoints) \
        else ([] if isinstance(checkpoints, (str, os.PathLike, nn.Module, Mapping)) else list(checkpoints))
    for s in given:  # a typo fails before the order is read from the files
        require_file(s)
    labels, step_list, sources, how = checkpoint_order(checkpoints, steps, order, trust_checkpoint=trust_checkpoint)
    ref_pos, ref_label, ref_external = resolve_reference(reference, labels, step_list)

    if isinstance(model, nn.Module):
        template = unwrap_model(model)

        def build() -> nn.Module:
            return copy.deepcopy(template)
    elif callable(model):
        template = None

        def build() -> nn.Module:
            m = model()
            if not isinstance(m, nn.Module):
                raise TypeError(f"the model function returned {type(m).__name__}, not an nn.Module")
            return unwrap_model(m)
    else:
        raise TypeError(f"model must be an nn.Module or a function returning one, got {type(model).__name__}")

    first = template if template is not None else build()
    if layers is None:
        layers = default_layers(first)
    name = model_name or type(first).__name__
    # pattern (and call_index) errors are raised here, naming the user's model and layers
    layer_names = SimilarityModel(first, name, layers, call_index=call_index).layer_names
    n_layers = len(layer_names)

    def load(source: CheckpointSource) -> nn.Module:
        return load_checkpoint(build(), source, map_location=map_location, trust_checkpoint=trust_checkpoint,
                               state_key=state_key, strip_prefix=strip_prefix, key_map=key_map)

    # check every file before the first (possibly long) pass, so a typo fails fast
    for s in sources + ([ref_external] if ref_external is not None else []):
        require_file(s)

    ref_model = load(ref_external if ref_external is not None else sources[ref_pos])  # type: ignore[index]
    others = [k for k in range(len(sources)) if k != ref_pos]
    if checkpoints_per_pass is None:
        by_memory = max(1, (2 << 30) // max(1, _param_bytes(ref_model)))
        checkpoints_per_pass = max(1, min(by_memory, 1024 // max(1, n_layers)))
    if checkpoints_per_pass < 1:
        raise ValueError(f"checkpoints_per_pass must be ≥ 1, got {checkpoints_per_pass}")
    chunks = [others[i : i + checkpoints_per_pass] for i in range(0, len(others), checkpoints_per_pass)] or [[]]

    k_total = len(sources)
    grids = np.full((k_total, n_layers, n_layers), np.nan)
    grids_se = np.full_like(grids, np.nan)
    wrapped_fn = _prefixed_output_fn(output_fn)
    counts: dict[str, int] = {}
    done: list[int] = []  # checkpoints whose grids are final
    res = None
    c = 0
    try:
        for c, chunk in enumerate(chunks):
            # the reference against itself (when it is one of the checkpoints) rides along in
            # the first pass: its hooks are on the same module, so it costs no forward pass
            with_self = c == 0 and ref_pos is not None
            columns = ([ref_pos] if with_self else []) + chunk
            members = [ref_model] + [load(sources[k]) for k in chunk]
            stack = _Stack(members)
            b_members = ([0] if with_self else []) + list(range(1, len(members)))
            # the names are resolved already: exact, so no glob or 0.2.1-substring reading of
            # e.g. 'm0.blocks.1' (inside 'm0.blocks.10') warns about names the user never wrote
            a_names = [Exact(f"m0.{n}") for n in layer_names]
            b_names = [Exact(f"m{i}.{n}") for i in b_members for n in layer_names]
            common = dict(output_fn=wrapped_fn, sequence=sequence)
            sm_a = SimilarityModel(stack, f"{name} @ {ref_label}", a_names, call_index=_prefixed(call_index, a_names),
                                   **common)
            sm_b = SimilarityModel(stack, f"{name} checkpoints", b_names, call_index=_prefixed(call_index, b_names),
                                   **common)
            if sm_b.layer_names != b_names:  # the container keeps member order; guard the column mapping
                raise RuntimeError("internal error: checkpoint layers came out of order")
            m = make_metric()
            desc = f"{m.name} checkpoints {c + 1}/{len(chunks)}"
            try:
                res = run_metrics(sm_a, sm_b, loader, {"metric": m}, dataclasses.replace(options, desc=desc))["metric"]
            except BaseException as exc:
                if c == 0:  # no pass completed: the interrupted one's batches are all there is
                    first = (getattr(exc, "simtorch_partial", None) or {}).get("metric")
                    if first is not None:
                        _fill(grids, grids_se, first, columns, n_layers)
                        res, counts = first, first.counts()
                        done.extend(columns)
                raise
            this = res.counts()
            if counts and counts != this:
                warnings.warn(
                    f"compare_checkpoints: the passes over the loader saw different data ({counts} vs {this}); "
                    "use a deterministic loader (no shuffling) so every checkpoint sees the same batches",
                    UserWarning, stacklevel=2,
                )
            counts = counts or this
            _fill(grids, grids_se, res, columns, n_layers)
            done.extend(columns)
            del members, stack, sm_a, sm_b  # free this group's models before loading the next
    except BaseException as exc:
        try:  # the checkpoints finished so far, not the internal grid of one group (m1.fc1, …)
            exc.simtorch_partial = None  # type: ignore[attr-defined]
            if res is not None and done:
                keep = sorted(done)
                settings = {**res.settings, "partial": True, "stopped_by": type(exc).__name__,
                            "passes_completed": c, "passes": len(chunks),
                            "missing_checkpoints": [labels[k] for k in range(k_total) if k not in done]}
                exc.simtorch_partial = CheckpointComparison(  # type: ignore[attr-defined]
                    labels=[labels[k] for k in keep], steps=[step_list[k] for k in keep], layers=list(layer_names),
                    reference=ref_label, grids=grids[keep], grids_stderr=grids_se[keep], metric=res.metric,
                    settings=settings, model_name=name, order=how, **counts)
        except Exception:  # pragma: no cover - never mask the real error
            pass
        raise

    return CheckpointComparison(
        labels=labels, steps=step_list, layers=list(layer_names), reference=ref_label, grids=grids,
        grids_stderr=grids_se, metric=res.metric, settings=dict(res.settings), model_name=name, order=how, **counts,
    )
