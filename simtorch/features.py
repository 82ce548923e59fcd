"""Grids from features you already have: no model, no hooks.

``grid("cka", feats_a, feats_b)`` is the :class:`~simtorch.result.SimilarityResult` of any
registered measure (:func:`simtorch.metrics.canonical_names`) between two sets of layers'
features, as pytorch-cka's ``cka_from_features`` gives; :func:`simtorch.functional.cka_grid`,
``dcka_grid`` and ``ii_grid`` are its thin forms. A set of features is

- a dict ``{layer name: (n, ...) tensor}`` (rows: the names),
- a list or tuple of ``(n, ...)`` tensors, one per layer (names ``"0"``, ``"1"``, …), or
- a stacked tensor ``(L, n, ...)``;

each tensor is flattened to ``(n, d)`` (one row per sample, the same samples in every layer
and on both sides). Or, for features too large to hold at once, an **iterable of batches**
of such sets (e.g. a generator of per-batch dicts ``{name: (b, d)}``), which streams
through the same metrics, sum states and jackknife errors as a loader does.

How it works: for each batch the features of each layer become the centred Gram
(:func:`simtorch.functional.linear_gram`), stacked per side into a
:class:`~simtorch.engine.GramBatch` with what the metrics' :class:`~simtorch.metrics.Needs`
ask for (transformed features, raw-product parts, the confounder as the batch's inputs),
then every metric is updated exactly as :func:`simtorch.engine.stream` would after the
forward passes, and :func:`simtorch.runner.build_result` names the grid. The value for
features equals the value over a model that produces them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor

from . import functional as F
from .engine import GramBatch
from .metrics.base import Binding, Metric, Needs
from .result import SimilarityResult

__all__ = ["FeatureSet", "compare_features", "grid"]

#: the features of several layers for the same samples
FeatureSet = Union[Mapping[str, Tensor], Sequence[Tensor], Tensor]


@dataclass
class _Named:
    """What :func:`simtorch.runner.build_result` reads of a SimilarityModel: the names."""

    layer_names: list[str]
    model_name: str


def _is_set(obj: Any) -> bool:
    """One batch of layers (not an iterable of batches)."""
    if isinstance(obj, Tensor) or isinstance(obj, Mapping):
        return True
    return isinstance(obj, (list, tuple)) and len(obj) > 0 and all(isinstance(t, Tensor) for t in obj)


def _layers(feats: FeatureSet, side: str, names: Sequence[str] | None) -> tuple[list[str], list[Tensor]]:
    if isinstance(feats, Mapping):
        got_names = [str(k) for k in feats]
        tensors = list(feats.values())
    elif isinstance(feats, Tensor):
        if feats.dim() < 2:
            raise ValueError(f"features_{side}: a stacked tensor must be (layers, n, ...), got shape {tuple(feats.shape)}")
        tensors = list(feats.unbind(0))
        got_names = [str(i) for i in range(len(tensors))]
    elif isinstance(feats, (list, tuple)):
        tensors = list(feats)
        got_names = [str(i) for i in range(len(tensors))]
    else:
        raise TypeError(f"features_{side} must be a dict name → tensor, a list of tensors or a (layers, n, d) "
                        f"tensor (or an iterable of per-batch ones), got {type(feats).__name__}")
    if not tensors:
        raise ValueError(f"features_{side} holds no layer")
    for name, t in zip(got_names, tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"features_{side}[{name!r}] is a {type(t).__name__}, not a tensor")
        if t.dim() == 0:
            raise ValueError(f"features_{side}[{name!r}] is a scalar; each layer needs (n, ...) features")
    n = tensors[0].shape[0]
    bad = [f"{name}: {t.shape[0]}" for name, t in zip(got_names, tensors) if t.shape[0] != n]
    if bad:
        raise ValueError(f"features_{side}: every layer must hold the same samples (first dimension n); "
                         f"{got_names[0]!r} has {n}, but {', '.join(bad)}")
    if names is not None:
        names = [str(x) for x in names]
        if len(names) != len(tensors):
            raise ValueError(f"names_{side} has {len(names)} names for {len(tensors)} layers")
        got_names = names
    if len(set(got_names)) != len(got_names):
        raise ValueError(f"features_{side}: layer names repeat: {got_names}")
    return got_names, tensors


def _stack_side(tensors: list[Tensor], needs: Needs, device: torch.device) -> tuple[Tensor, Tensor, Any, Any]:
    """Grams, energies, features and raw parts of one side, as the capture hooks make them."""
    grams, energies, feats, raw_mu, raw_sq = [], [], [], [], []
    for t in tensors:
        x = F.flatten_samples(t.detach().to(device))
        g, e = F.linear_gram(x)
        grams.append(g)
        energies.append(e)
        if needs.features is not None:
            feats.append(needs.features(x))
        if needs.raw_products:
            xr = x.to(g.dtype)
            mu = xr.mean(dim=0)
            mu_sq = (mu.to(torch.float64) ** 2).sum()
            raw_mu.append((xr @ mu).to(torch.float64) - mu_sq)  # X_c μ = X μ − ‖μ‖² 1
            raw_sq.append(mu_sq)
    dtype = grams[0].dtype
    for g in grams[1:]:
        dtype = torch.promote_types(dtype, g.dtype)
    stack = torch.stack([g.to(dtype) for g in grams])
    energy = torch.stack([e.to(dtype) for e in energies])
    raw = (torch.stack(raw_mu), torch.stack(raw_sq)) if needs.raw_products else None
    return stack, energy, (feats if needs.features is not None else None), raw


def _batches(feats_a: Any, feats_b: Any, z: Any, batch_size: int | None) -> Iterator[tuple[Any, Any, Any]]:
    """``(set_a, set_b or None, z or None)`` per batch."""
    if _is_set(feats_a):
        if feats_b is not None and not _is_set(feats_b):
            raise TypeError("features_a is one set of layers but features_b is an iterable of batches; give both "
                            "in the same form")
        if batch_size is None:
            yield feats_a, feats_b, z
            return
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        names_a, tensors_a = _layers(feats_a, "a", None)
        n = tensors_a[0].shape[0]
        tensors_b = names_b = None
        if feats_b is not None:
            names_b, tensors_b = _layers(feats_b, "b", None)
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            a = dict(zip(names_a, (t[sl] for t in tensors_a)))
            b = None if tensors_b is None else dict(zip(names_b, (t[sl] for t in tensors_b)))  # type: ignore[arg-type]
            yield a, b, (None if z is None else z[sl])
        return
    if batch_size is not None:
        raise ValueError("batch_size= splits features held at once; batched features are already in batches")
    it_b = None if feats_b is None else iter(feats_b)
    it_z = None if z is None else iter(z)
    for index, a in enumerate(feats_a):
        b = zb = None
        if it_b is not None:
            try:
                b = next(it_b)
            except StopIteration:
                raise ValueError(f"features_b ran out after {index} batches; features_a has more") from None
        if it_z is not None:
            try:
                zb = next(it_z)
            except StopIteration:
                raise ValueError(f"z ran out after {index} batches; features_a has more") from None
        yield a, b, zb
    if it_b is not None and next(it_b, None) is not None:
        raise ValueError("features_b has more batches than features_a; give both the same batches")


def _run(metrics: Mapping[str, Metric], feats_a: Any, feats_b: Any, z: Any, batch_size: int | None,
         names_a: Sequence[str] | None, names_b: Sequence[str] | None, model_a: str, model_b: str,
         device: str | torch.device | None) -> dict[str, SimilarityResult]:
    from .runner import build_result, partial_results

    same = feats_b is None or feats_b is feats_a
    if same:
        feats_b = None
        if names_b is not None and names_a is None:
            names_a = names_b
        model_b = model_a if model_b == "B" else model_b
    needs = Needs()
    side_a = side_b = None
    n_seen = 0
    try:
        for index, (set_a, set_b, zb) in enumerate(_batches(feats_a, feats_b, z, batch_size)):
            la, ta = _layers(set_a, "a", names_a)
            lb, tb = (la, ta) if set_b is None else _layers(set_b, "b", names_b)
            n = ta[0].shape[0]
            if tb[0].shape[0] != n:
                raise ValueError(f"batch {index}: features_a has {n} samples, features_b {tb[0].shape[0]}; both "
                                 "sides need the same samples")
            if index == 0:
                dev = torch.device(device) if device is not None else ta[0].device
                side_a, side_b = _Named(la, model_a), _Named(lb, model_b)
                expected = n if _is_set(feats_a) and batch_size is None else None
                if _is_set(feats_a) and batch_size is not None:
                    expected = _layers(feats_a, "a", None)[1][0].shape[0]
                for m in metrics.values():
                    m.bind(Binding(len(la), len(lb), same, dev, expected))
                needs = Needs()
                for m in metrics.values():
                    needs = needs.merge(m.needs())
            elif la != side_a.layer_names or lb != side_b.layer_names:  # type: ignore[union-attr]
                raise ValueError(f"batch {index} has other layers than batch 0: {la} / {lb} vs "
                                 f"{side_a.layer_names} / {side_b.layer_names}")  # type: ignore[union-attr]
            inputs = None
            if needs.inputs:
                if zb is None:
                    raise ValueError("a metric of this call needs the batch's inputs (dCKA: its confounder); pass "
                                     "z=(n, p) tensor (for batched features: an iterable of per-batch tensors)")
                if needs.tensor_inputs and not isinstance(zb, Tensor):
                    raise TypeError(f"z must be a tensor (n, p), got {type(zb).__name__}")
                if isinstance(zb, Tensor) and (zb.dim() == 0 or zb.shape[0] != n):
                    raise ValueError(f"batch {index}: z has shape {tuple(zb.shape)} for {n} samples; one row per "
                                     "sample")
                inputs = zb.to(dev) if isinstance(zb, Tensor) else zb
            ga, ea, fa, ra = _stack_side(ta, needs, dev)
            gb, eb, fb, rb = (ga, ea, fa, ra) if same else _stack_side(tb, needs, dev)
            for side, names, energy in (("a", la, ea), ("b", lb, eb)):
                finite = torch.isfinite(energy)
                if not bool(finite.all()):
                    bad = [nm for nm, ok in zip(names, finite.tolist()) if not ok]
                    raise ValueError(f"batch {index}: the features of {bad} (side {side}) hold NaN or inf")
            batch = GramBatch(index=index, n=n, grams_a=ga, energy_a=ea, grams_b=gb, energy_b=eb, same=same,
                              inputs=inputs, features_a=fa, features_b=fb, raw_a=ra, raw_b=rb)
            for m in metrics.values():
                m.update(batch)
            n_seen += 1
        if n_seen == 0:
            raise ValueError("the features yielded no batches; nothing to compare")
        for m in metrics.values():
            m.finish()
    except BaseException as exc:
        if n_seen and side_a is not None:
            try:
                exc.simtorch_partial = partial_results(metrics, side_a, side_b)  # type: ignore[attr-defined, arg-type]
            except Exception:  # pragma: no cover - never mask the real error
                pass
        raise
    with warnings.catch_warnings():
        if n_seen == 1:  # all samples as one batch, as asked: the NaN standard errors are expected
            warnings.filterwarnings("ignore", message=r".*single batch.*")
        return {key: build_result(m, side_a, side_b) for key, m in metrics.items()}  # type: ignore[arg-type]


def compare_features(
    feats_a: FeatureSet | Iterable[FeatureSet],
    feats_b: FeatureSet | Iterable[FeatureSet] | None = None,
    metrics: Sequence[str | Metric] | Mapping[str, str | Metric] = ("cka",),
    *,
    z: Tensor | Iterable[Tensor] | None = None,
    batch_size: int | None = None,
    names_a: Sequence[str] | None = None,
    names_b: Sequence[str] | None = None,
    model_a: str = "A",
    model_b: str = "B",
    device: str | torch.device | None = None,
    **metric_kwargs: Any,
) -> dict[str, SimilarityResult]:
    """Several measures of the same features in one pass, as :func:`simtorch.compare` does
    for models: ``{key: SimilarityResult}``. Options of metrics built from names are
    ``<key>_kwargs={...}`` (``cka_kwargs={"kernel": "rbf"}``); see :func:`grid` for the
    rest."""
    from .compare import build_metrics
    from .metrics import metric_class

    options: dict[str, dict[str, Any]] = {}
    for name, value in metric_kwargs.items():
        if not name.endswith("_kwargs"):
            raise TypeError(f"compare_features() got an unexpected keyword argument {name!r}; metric options are "
                            "<metric>_kwargs={...}")
        if value:
            options.setdefault(metric_class(name[: -len("_kwargs")]).key, {}).update(value)
    built = build_metrics(metrics, options)
    return _run(built, feats_a, feats_b, z, batch_size, names_a, names_b, model_a, model_b, device)


def grid(
    metric: str | Metric,
    feats_a: FeatureSet | Iterable[FeatureSet],
    feats_b: FeatureSet | Iterable[FeatureSet] | None = None,
    *,
    z: Tensor | Iterable[Tensor] | None = None,
    batch_size: int | None = None,
    names_a: Sequence[str] | None = None,
    names_b: Sequence[str] | None = None,
    model_a: str = "A",
    model_b: str = "B",
    device: str | torch.device | None = None,
    **options: Any,
) -> SimilarityResult:
    """The layer × layer grid of one measure between two sets of features.

    Parameters
    ----------
    metric : str or Metric
        A registry name or alias (``"cka"``, ``"dcka"``, ``"ii"``, …) or a
        :class:`~simtorch.metrics.Metric` instance.
    feats_a, feats_b : features, or an iterable of per-batch features
        A dict ``{name: (n, ...)}``, a list of ``(n, ...)`` tensors or an ``(L, n, ...)``
        stack (see the module docstring); ``feats_b=None`` compares ``feats_a`` with
        itself. Iterables of batches (e.g. per-batch dicts) are streamed: give both sides
        as parallel iterables.
    z : tensor or iterable of tensors, optional
        What the metric sees as the batch's inputs: dCKA's confounder (``(n, p)``, e.g. the
        inputs the features came from; per-batch tensors for batched features).
    batch_size : int, optional
        Split features held at once into batches of this size: the minibatch estimator,
        with a jackknife standard error. Default: all samples as one batch (the full-data
        estimate; its standard error is NaN).
    names_a, names_b : list of str, optional
        Layer names (default: the dict keys, or ``"0"``, ``"1"``, …).
    model_a, model_b : str
        Names shown in the result and its plots.
    device : str or torch.device, optional
        Where the Grams and sums are computed (default: where the features are).
    **options
        The metric's options, e.g. ``kernel="rbf"``, ``unbiased=False`` for CKA.

    Returns
    -------
    SimilarityResult
        Rows: ``feats_a``'s layers, columns: ``feats_b``'s.
    """
    from .compare import build_metrics

    if isinstance(metric, Metric):
        if options:
            raise TypeError(f"options {sorted(options)} were given with a Metric instance; set them on the instance")
        built = {metric.key or metric.name: metric}
    elif isinstance(metric, str):
        from .metrics import metric_class

        key = metric_class(metric).key
        built = build_metrics([key], {key: options} if options else None)
    else:
        raise TypeError(f"metric must be a registry name or a Metric, got {type(metric).__name__}")
    return next(iter(_run(built, feats_a, feats_b, z, batch_size, names_a, names_b, model_a, model_b,
                          device).values()))
