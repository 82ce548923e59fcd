"""Run metrics over a loader and name their grids: the one place a
:class:`~simtorch.result.SimilarityResult` is built from a metric's tensors.

Every entry point (the classes, :func:`simtorch.compare`, checkpoint comparison, the CLI)
goes through :func:`run_metrics`, so they share one behaviour: results carry the models'
and layers' names, the metric's settings and the versions; warnings name the layers; and
an interrupted pass keeps the estimate of the batches that completed.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from torch import Tensor

from .batches import dataset_size
from .engine import RunOptions, stream
from .interrupts import resumable
from .metrics.accumulate import to_numpy
from .metrics.base import Binding, Computed, Metric, Needs
from .model import SimilarityModel
from .result import SimilarityResult

__all__ = ["build_result", "run_metrics", "partial_results", "run_loaders", "RoutedMetric", "LoaderChain", "POOLED"]


def build_result(metric: Metric, model_a: SimilarityModel, model_b: SimilarityModel, *,
                 warn: bool = True, **settings: Any) -> SimilarityResult:
    """The :class:`SimilarityResult` of a metric's sums so far, with names filled in.

    The metric's layer notes become warnings naming the model and layers (``warn=False``
    leaves them out, for partial results). ``settings`` are merged into the result's.
    """
    out = metric.compute()
    if warn:
        for message in out.messages:
            warnings.warn(message, UserWarning, stacklevel=3)
        if metric.error_bars == "batches" and out.stderr is not None and metric.n_used == 1:
            warnings.warn(
                f"{metric.name}: {model_a.model_name} vs {model_b.model_name}: the standard errors are NaN because "
                "the estimate came from a single batch: the jackknife needs at least 2 batches (groups), as does the "
                "spread over batches; use a smaller batch size or more data for error bars",
                UserWarning, stacklevel=3,
            )
        for note in out.notes:
            sm = model_a if note.side == "a" else model_b
            names = [n for n, bad in zip(sm.layer_names, note.mask) if bad]
            warnings.warn(note.message.format(model=sm.model_name, layers=names), UserWarning, stacklevel=3)
    return SimilarityResult(
        matrix=to_numpy(out.matrix),
        stderr=None if out.stderr is None else to_numpy(out.stderr),
        layers_a=list(model_a.layer_names), layers_b=list(model_b.layer_names),
        model_a=model_a.model_name, model_b=model_b.model_name,
        metric=metric.name, settings={**metric.settings(), **out.settings, **settings},
        n_samples=metric.n_samples, n_batches=metric.n_used,
        n_skipped=metric.skipped, skipped_samples=metric.skipped_samples,
        extras=dict(out.extras),
    )


def partial_results(metrics: Mapping[str, Metric], model_a: SimilarityModel,
                    model_b: SimilarityModel, exc: BaseException | None = None,
                    report: Mapping[str, Any] | None = None) -> dict[str, SimilarityResult]:
    """Results of the batches that completed before an interruption, marked
    ``settings["partial"] = True`` (with ``stopped_by``, the exception's type); metrics with
    nothing to show, and metrics whose sums the exception left torn (it came from inside
    their ``update``), are left out. Never raises: a partial result must not mask the real
    error."""
    torn = {id(m) for m in getattr(exc, "simtorch_torn", None) or []}
    extra: dict[str, Any] = {"partial": True}
    if exc is not None:
        extra["stopped_by"] = type(exc).__name__
    extra.update(report or {})
    out = {}
    for key, metric in metrics.items():
        try:
            if metric.n_used and id(metric) not in torn:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out[key] = build_result(metric, model_a, model_b, warn=False, **extra)
        except Exception:
            continue
    return out


def run_metrics(
    model_a: SimilarityModel,
    model_b: SimilarityModel,
    loader: Iterable,
    metrics: Mapping[str, Metric],
    options: RunOptions,
) -> dict[str, SimilarityResult]:
    """Stream ``loader`` once through both models, feeding every metric, and return one
    named result per metric key.

    On any exception (an error, Ctrl-C) the exception is re-raised with the results of
    the completed batches attached as ``exc.simtorch_partial`` (``{key: result}``, each
    marked ``settings["partial"] = True`` and ``settings["stopped_by"]``, with its
    ``n_samples`` and ``n_batches``). A NaN found late never stays in them (the engine
    rolls the sums back to the last verified batch), and a metric whose own ``update``
    raised is left out. With ``options.state_path`` the settings also say where the state
    went (``state_path``) and how many batches came from a saved run (``resumed_batches``).
    """
    report: dict[str, Any] = {}
    try:
        stream(model_a, model_b, loader, list(metrics.values()), options=options, report=report)
    except BaseException as exc:
        try:
            exc.simtorch_partial = partial_results(metrics, model_a, model_b, exc, report)  # type: ignore[attr-defined]
        except Exception:  # pragma: no cover - never mask the real error
            pass
        raise
    return {key: build_result(m, model_a, model_b, **report) for key, m in metrics.items()}


# ---------------------------------------------------------------------------- several loaders
#: the key of the pooled results of :func:`run_loaders` (no loader may be named so)
POOLED = "pooled"


class LoaderChain:
    """Several loaders as one iterable, for one pass: their batches in order (all of the
    first loader's, then the second's, …) with the loader of the batch being streamed in
    :attr:`tag` (and its index within that loader in :attr:`local_index`).

    The engine pulls a batch, runs the models and updates every metric before it pulls the
    next one, so while a metric updates, :attr:`tag` names the loader of that batch. The
    batches themselves are yielded untouched: ``input_key``/``input_fn`` see what they would
    see from each loader alone, and the models run once per batch.
    """

    def __init__(self, loaders: Mapping[str, Iterable]) -> None:
        self.loaders = dict(loaders)
        self.tag: str | None = None
        self.local_index = -1
        #: batches yielded per loader in the current pass
        self.yielded = {tag: 0 for tag in self.loaders}

    def __iter__(self) -> Iterator[Any]:
        self.yielded = {tag: 0 for tag in self.loaders}
        for tag, loader in self.loaders.items():
            for i, batch in enumerate(loader):
                self.tag, self.local_index = tag, i
                self.yielded[tag] = i + 1
                yield batch
        self.tag, self.local_index = None, -1

    def __len__(self) -> int:
        # a TypeError (a loader without a length) is what len() of an unsized iterable raises
        return sum(len(loader) for loader in self.loaders.values())  # type: ignore[arg-type]

    def sizes(self) -> dict[str, int | None]:
        """Samples each loader will yield, where knowable (``Binding.expected_samples``)."""
        return {tag: dataset_size(loader) for tag, loader in self.loaders.items()}

    def lengths(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for tag, loader in self.loaders.items():
            try:
                out[tag] = len(loader)  # type: ignore[arg-type]
            except TypeError:
                out[tag] = None
        return out


class RoutedMetric(Metric):
    """One metric per loader plus a pooled one, fed from a single pass over a
    :class:`LoaderChain`: ``update(batch)`` goes to the pooled metric and to the metric of
    the batch's loader (``chain.tag``). The engine sees one metric and knows nothing of the
    routing.

    Each child is bound as it would be in a pass over its loader alone (its own
    ``expected_samples``; the pooled one the sum of the loaders'), sees only its batches,
    numbered as its loader numbers them, and so keeps exactly the sums of that pass; the
    pooled child keeps those of a pass over the loaders' concatenation. Kernels and centred
    stacks of a batch are shared between the children (the batch's cache).

    The pooled result is not the mean of the per-loader ones for sum-then-ratio estimators
    (CKA, dCKA): the pooled child sums the HSIC terms of every batch and takes the ratio
    once, so its ``hsic_*`` sums are the sums of the loaders' but its grid is no average.

    The declared states of every child are this metric's states (``state_dict`` entries
    ``route<k>.<entry>``, children in loader order, pooled last), so the engine's
    all-reduce, NaN roll-back and resumable ``state_path`` work unchanged; the metric is
    resumable when every child is.
    """

    def __init__(self, template: Metric, chain: LoaderChain, saving: bool = False) -> None:
        self.template = template
        self.chain = chain
        #: the pass saves a state file (``state_path``): buffering children are refused at bind
        self.saving = saving
        self.tags = list(chain.loaders)
        # the template is the pooled child; the per-loader ones are fresh copies of it
        self.children: dict[str, Metric] = {tag: copy.deepcopy(template) for tag in self.tags}
        self.children[POOLED] = template
        self.key = template.key  # type: ignore[misc]
        self.name = template.name  # type: ignore[misc]
        self.symmetric = template.symmetric  # type: ignore[misc]
        self.direction = template.direction  # type: ignore[misc]
        self.value_range = template.value_range  # type: ignore[misc]
        self.invariances = template.invariances  # type: ignore[misc]

    @property
    def pooled(self) -> Metric:
        return self.children[POOLED]

    # the counters the runner reads (partial results) are the pooled child's
    n_samples = property(lambda self: self.pooled.n_samples)
    n_used = property(lambda self: self.pooled.n_used)
    skipped = property(lambda self: self.pooled.skipped)
    skipped_samples = property(lambda self: self.pooled.skipped_samples)

    @property
    def resumable(self) -> bool:
        return all(resumable(child) for child in self.children.values())

    def _routes(self) -> list[tuple[str, Metric]]:
        return [(f"route{k}", child) for k, child in enumerate(self.children.values())]

    # ------------------------------------------------------------------ declaration
    def needs(self) -> Needs:
        needs = Needs()
        for child in self.children.values():
            needs = needs.merge(child.needs())
        # one feature transform feeds every child: the pooled one's (the copies' are equal)
        return dataclasses.replace(needs, features=self.pooled.needs().features)

    def settings(self) -> dict[str, Any]:
        # what a state file's fingerprint must tell apart: the loaders and the metric
        return {"routed": f"{type(self.template).__module__}.{type(self.template).__qualname__}",
                "metric_settings": self.template.settings(), "loaders": self.tags,
                "loader_batches": list(self.chain.lengths().values()),
                "dataset_sizes": list(self.chain.sizes().values())}

    def bind(self, binding: Binding) -> None:
        self.binding = binding
        sizes = self.chain.sizes()
        known = list(sizes.values())
        total = None if any(s is None for s in known) else sum(known)  # type: ignore[arg-type]
        for tag, child in self.children.items():
            child.bind(dataclasses.replace(binding, expected_samples=total if tag == POOLED else sizes[tag]))
        if self.saving and not self.resumable:
            raise ValueError(
                f"state_path: {type(self.template).__name__} buffers features across batches, which are not declared "
                f"states, so its pass over loaders {self.tags} cannot be saved and resumed; drop state_path, or use "
                "its per-batch form (e.g. Information Imbalance without subset_size/exact)"
            )

    # ------------------------------------------------------------------ states
    def reduce_tensors(self) -> list[Tensor]:
        return [t for child in self.children.values() for t in child.reduce_tensors()]

    def counters(self) -> dict[str, int]:
        return {f"{prefix}.{k}": v for prefix, child in self._routes() for k, v in child.counters().items()}

    def set_counters(self, values: Mapping[str, int]) -> None:
        self._split(values, lambda child, sub: child.set_counters(sub))

    def state_dict(self) -> dict[str, Any]:
        return {f"{prefix}.{k}": v for prefix, child in self._routes() for k, v in child.state_dict().items()}

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        self._split(sd, lambda child, sub: child.load_state_dict(sub))

    def _split(self, values: Mapping[str, Any], apply: Callable[[Metric, dict[str, Any]], None]) -> None:
        routes = dict(self._routes())
        parts: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            prefix, _, rest = key.partition(".")
            if prefix not in routes:
                raise KeyError(f"unknown state entry {key!r} of a metric routed over loaders {self.tags}")
            parts.setdefault(prefix, {})[rest] = value
        for prefix, sub in parts.items():
            apply(routes[prefix], sub)

    # ------------------------------------------------------------------ work
    def update(self, batch: Any) -> None:
        tag = self.chain.tag
        if tag not in self.children or tag == POOLED:
            raise RuntimeError("a routed metric was fed a batch outside its LoaderChain's pass")
        self.pooled.update(batch)
        own = batch
        if dataclasses.is_dataclass(batch) and hasattr(batch, "index"):
            # numbered as the loader alone numbers it; the cache of shared kernels goes along
            own = dataclasses.replace(batch, index=self.chain.local_index)
        self.children[tag].update(own)

    def finish(self) -> None:
        for child in self.children.values():
            child.finish()

    def compute(self) -> Computed:
        """The pooled child's (the runner builds one result per child)."""
        return self.pooled.compute()


def _loader_result(metric: Metric, tag: str, tags: Sequence[str], model_a: SimilarityModel,
                   model_b: SimilarityModel, warn: bool = True, **settings: Any) -> SimilarityResult:
    """One child's result, its warnings naming the loader."""
    where = {"loader": tag} if tag != POOLED else {"loader": POOLED, "loaders": list(tags)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = build_result(metric, model_a, model_b, warn=warn, **settings, **where)
    label = f"loaders[{tag!r}]" if tag != POOLED else f"pooled loaders {list(tags)}"
    for w in caught:
        warnings.warn(f"{label}: {w.message}", w.category, stacklevel=3)
    return res


def run_loaders(
    model_a: SimilarityModel,
    model_b: SimilarityModel,
    loaders: Mapping[str, Iterable],
    metrics: Mapping[str, Metric],
    options: RunOptions,
) -> dict[str, dict[str, SimilarityResult]]:
    """Stream several loaders once (one after another) through both models and return one
    result per loader and metric, plus the pooled ones: ``{loader: {metric key: result},
    ..., "pooled": {metric key: result}}``.

    Each metric is wrapped in a :class:`RoutedMetric`, so every per-loader result equals a
    pass over that loader alone and the pooled one a pass over the loaders' concatenation
    (sums of every batch of every loader). Each result's ``settings["loader"]`` names its
    loader (``"pooled"`` for the pooled ones, which also list ``settings["loaders"]``).
    On an exception the completed batches' results are attached as ``exc.simtorch_partial``
    in the same nested shape (a loader not reached yet is left out).
    """
    tags = list(loaders)
    chain = LoaderChain(loaders)
    routed = {key: RoutedMetric(m, chain, saving=options.state_path is not None) for key, m in metrics.items()}
    report: dict[str, Any] = {}
    try:
        stream(model_a, model_b, chain, list(routed.values()), options=options, report=report)
    except BaseException as exc:
        try:
            exc.simtorch_partial = _routed_partial(routed, tags, model_a, model_b, exc, report)  # type: ignore[attr-defined]
        except Exception:  # pragma: no cover - never mask the real error
            pass
        raise
    empty = [tag for tag in tags if chain.yielded.get(tag, 0) == 0]
    if empty:
        raise ValueError(f"loaders {empty} yielded no batches; nothing to compare for them")
    return {tag: {key: _loader_result(r.children[tag], tag, tags, model_a, model_b, **report)
                  for key, r in routed.items()}
            for tag in [*tags, POOLED]}


def _routed_partial(routed: Mapping[str, RoutedMetric], tags: Sequence[str], model_a: SimilarityModel,
                    model_b: SimilarityModel, exc: BaseException,
                    report: Mapping[str, Any]) -> dict[str, dict[str, SimilarityResult]]:
    torn = {id(m) for m in getattr(exc, "simtorch_torn", None) or []}
    out: dict[str, dict[str, SimilarityResult]] = {}
    for tag in [*tags, POOLED]:
        where = {"loader": tag} if tag != POOLED else {"loader": POOLED, "loaders": list(tags)}
        children = {key: r.children[tag] for key, r in routed.items() if id(r) not in torn}
        got = partial_results(children, model_a, model_b, exc, {**report, **where})
        if got:
            out[tag] = got
    return out
