"""Several similarity measures from one pass over the data: ``simtorch.compare``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

from torch import nn

from .engine import RunOptions
from .layers import LayerSpec
from .metrics import REGISTRY, Metric, canonical_names, metric_class
from .model import SimilarityModel
from .result import SimilarityResult
from .runner import POOLED, run_loaders, run_metrics

__all__ = ["compare", "METRICS", "build_metrics", "wrap_model"]

#: metric names accepted by :func:`compare`, with their aliases (the one registry)
METRICS = REGISTRY

ModelArg = Union[SimilarityModel, nn.Module]
Layers = Union[Sequence[LayerSpec], LayerSpec, None]
MetricSpec = Union[str, Metric]


def wrap_model(model: ModelArg, layers: Layers, name: str | None, side: str) -> SimilarityModel:
    """``model`` as a SimilarityModel (plain modules need ``layers``)."""
    if isinstance(model, SimilarityModel):
        if layers is not None:
            raise ValueError(
                f"layers_{side} was given but {side} is already a SimilarityModel with layers {model.layer_names}; "
                f"choose the layers in SimilarityModel(...) or pass the plain nn.Module"
            )
        return model
    if isinstance(model, nn.Module):
        if layers is None:
            raise ValueError(
                f"{side} is a plain nn.Module ({type(model).__name__}): pass layers_{side}=[...] (exact names, globs "
                "such as 'layer?.*', or module types), or wrap it in SimilarityModel"
            )
        return SimilarityModel(model, model_name=name, layers_to_include=layers)
    raise TypeError(f"{side} must be a SimilarityModel or a torch.nn.Module, got {type(model).__name__}")


def build_metrics(
    metrics: Sequence[MetricSpec] | Mapping[str, MetricSpec] | str,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Metric]:
    """Metric instances keyed as the caller will see them.

    ``metrics`` are registry names (or :class:`~simtorch.metrics.Metric` instances), or a
    mapping ``{key: name or Metric}``; ``options`` maps a registry key (``"cka"``) to the
    keyword options of that metric class, validated here.
    """
    options = dict(options or {})
    for key in options:
        metric_class(key)  # an options entry for an unknown metric is a typo, not a no-op
    items: list[tuple[str, MetricSpec]]
    if isinstance(metrics, str):
        metrics = (metrics,)
    if isinstance(metrics, Mapping):
        items = list(metrics.items())
    else:
        items = [(m if isinstance(m, str) else m.key or m.name, m) for m in metrics]
    if not items:
        raise ValueError(f"metrics is empty; ask for at least one of {canonical_names()}")
    built: dict[str, Metric] = {}
    for key, spec in items:
        if key in built:
            raise ValueError(f"metric {key!r} is asked for twice; give each one a distinct name with a dict "
                             "{'name': metric, ...}")
        if isinstance(spec, Metric):
            built[key] = spec
            continue
        if not isinstance(spec, str):
            raise ValueError(f"unknown metric {spec!r}; choose from {canonical_names()} or pass a Metric instance")
        cls = metric_class(spec)
        kwargs = dict(options.get(cls.key) or {})
        try:
            built[key] = cls(**kwargs)
        except TypeError as exc:
            raise TypeError(f"{cls.key}_kwargs={kwargs!r} does not fit {cls.__name__}: {exc}") from None
    return built


def _split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Run options, and ``<key>_kwargs`` metric options (``cka_kwargs={...}``)."""
    run, rest = RunOptions.split(kwargs)
    metric_opts: dict[str, dict[str, Any]] = {}
    for name, value in rest.items():
        if not name.endswith("_kwargs"):
            raise TypeError(f"compare() got an unexpected keyword argument {name!r}; run options are "
                            f"{list(RunOptions.names())}, metric options are <metric>_kwargs={{...}}")
        cls = metric_class(name[: -len("_kwargs")])
        if value:
            metric_opts.setdefault(cls.key, {}).update(value)
    return run, metric_opts


def compare(
    a: ModelArg,
    b: ModelArg,
    loader: Iterable | None = None,
    metrics: Sequence[MetricSpec] | Mapping[str, MetricSpec] = ("cka", "dcka", "ii"),
    *,
    loaders: Mapping[str, Iterable] | None = None,
    layers_a: Layers = None,
    layers_b: Layers = None,
    name_a: str | None = None,
    name_b: str | None = None,
    **kwargs: Any,
) -> dict[str, SimilarityResult] | dict[str, dict[str, SimilarityResult]]:
    """Compute several similarity grids between two models in one pass over ``loader``
    (or over several ``loaders``, with one result per loader and the pooled ones).

    Each batch runs through each model once, each chosen layer's Gram is computed once, and
    every metric is fed from the same Grams (derived float64 kernels and centred stacks are
    shared between metrics that use the same estimator). The result for each metric equals
    running that metric alone (:class:`~simtorch.CKA`, :class:`~simtorch.DeltaCKA`,
    :class:`~simtorch.InformationImbalance`) with the same options.

    Parameters
    ----------
    a, b : SimilarityModel or nn.Module
        The two models (rows and columns of every grid). Plain modules need
        ``layers_a``/``layers_b``; passing the same object twice (with the same layers)
        compares a model with itself in one forward pass per batch.
    loader : iterable of batches
        Any ``DataLoader`` (or iterable) of tensors, ``(input, ...)`` tuples or dicts.
        Give either ``loader`` or ``loaders``.
    metrics : sequence or mapping
        Names from the registry (``simtorch.metrics.canonical_names()``: ``"cka"``,
        ``"dcka"``, ``"ii"``, …, with aliases such as ``"deltacka"``,
        ``"information_imbalance"``), or :class:`~simtorch.metrics.Metric` instances; a
        mapping ``{key: name or Metric}`` chooses the keys of the returned dict (e.g. two
        CKA variants: ``{"cka": CKAMetric(), "cka_rbf": CKAMetric(kernel="rbf")}``).
    loaders : dict of str → iterable of batches, optional
        Several loaders in one pass (one per class, domain, …): ``{"cats": dl1, "dogs":
        dl2}``. Their batches stream once, one loader after the other, through both models
        (each batch runs once per model), and every metric keeps one set of sums per loader
        plus a pooled one. The result is then nested (see Returns). No loader may be named
        ``"pooled"``.
    layers_a, layers_b : list, optional
        Layer selection for plain modules (as ``SimilarityModel(layers_to_include=...)``).
    name_a, name_b : str, optional
        Model names shown in the results, for plain modules.
    **kwargs
        Run options (``device``, ``progress``, ``input_key``, ``input_fn``, ``autocast``,
        ``state_path``, ``save_every``: :class:`~simtorch.engine.RunOptions`; with
        ``state_path`` the pass saves every metric's sums as it goes and a later call with
        the same arguments resumes it) and the options of metrics built from
        names, as ``<metric>_kwargs``: ``cka_kwargs={"kernel": "rbf", "unbiased": True}``,
        ``dcka_kwargs={"unbiased": False, "remove_negative_eig": False, "confounder_fn":
        fn}``, ``ii_kwargs={"subset_size": 1024, "projection_dim": 256, "exact": False}``.
        Defaults are those of the classes: CKA unbiased (HSIC₁), dCKA biased (HSIC₀, as
        the paper), II per batch.

    Returns
    -------
    dict of str → SimilarityResult
        Keyed by the names given in ``metrics``; each result's grid is ``.matrix``. If the
        pass is interrupted (an error, Ctrl-C), the exception carries the results of the
        completed batches as ``exc.simtorch_partial`` (``{key: SimilarityResult}``), each
        marked ``settings["partial"] = True`` and ``settings["stopped_by"]`` (the
        exception's type), with its ``n_samples`` and ``n_batches``::

            try:
                res = simtorch.compare(a, b, loader)
            except KeyboardInterrupt as exc:
                res = exc.simtorch_partial          # save or inspect, then stop

    dict of str → dict of str → SimilarityResult
        With ``loaders``: ``{loader name: {metric key: result}, ..., "pooled": {metric key:
        result}}``, the loaders in the given order, ``"pooled"`` last.
        ``res["cats"]["cka"]`` equals ``compare(a, b, dl1)["cka"]``, and
        ``res["pooled"]["cka"]`` equals one pass over the concatenation of every loader's
        batches. Each result's ``settings["loader"]`` names its loader (``"pooled"``, with
        ``settings["loaders"]`` listing them); its warnings name the loader too.

        The pooled result is *not* the mean of the per-loader ones for the sum-then-ratio
        estimators (CKA, dCKA): their HSIC sums are pooled and the ratio is taken once
        (``res["pooled"]["cka"].extras["hsic_cross"]`` is the sum of the loaders'). For
        per-batch Information Imbalance (a size-weighted mean over batches) the pooled grid
        is the mean of the loaders' weighted by their sample counts.

        An interrupted pass attaches the same nested shape as ``exc.simtorch_partial`` (a
        loader not reached yet is left out). With ``state_path`` every loader's sums are
        saved and resumed; pass the same loaders, in the same order, again.

    Examples
    --------
    >>> res = simtorch.compare(resnet18, resnet34, loader, layers_a=["layer?.*"], layers_b=["layer?.*"])
    >>> res["cka"].matrix, res["dcka"].extras["pve_a"], res["ii"].extras["reverse"]
    >>> per = simtorch.compare(a, b, loaders={"cats": cats, "dogs": dogs}, metrics=("cka",))
    >>> per["cats"]["cka"].matrix, per["dogs"]["cka"].matrix, per["pooled"]["cka"].matrix
    """
    run, metric_opts = _split_options(kwargs)
    options = RunOptions(**{"desc": "compare", **run})
    sm_a = wrap_model(a, layers_a, name_a, "a")
    if b is a and (layers_b is None or layers_b == layers_a):
        sm_b = sm_a  # one forward pass per batch
    else:
        sm_b = wrap_model(b, layers_b, name_b, "b")
    built = build_metrics(metrics, metric_opts)
    if loaders is None:
        if loader is None:
            raise TypeError("compare() needs the data: a loader (compare(a, b, loader)) or several, "
                            "loaders={'name': loader, ...}")
        if isinstance(loader, Mapping):
            raise TypeError(f"loader is a {type(loader).__name__} (keys {list(loader)[:5]}); for several loaders "
                            "in one pass use loaders={'name': loader, ...}")
        return run_metrics(sm_a, sm_b, loader, built, options)
    if loader is not None:
        raise TypeError("compare() got both loader and loaders; pass exactly one (loaders={'name': loader, ...} "
                        "for several in one pass)")
    return run_loaders(sm_a, sm_b, _check_loaders(loaders), built, options)


def _check_loaders(loaders: Any) -> dict[str, Iterable]:
    """``loaders`` as a non-empty ``{str: loader}`` dict, or a clear error."""
    if not isinstance(loaders, Mapping):
        raise TypeError(f"loaders must be a dict {{name: loader}}, got {type(loaders).__name__}; for one loader "
                        "pass it as compare(a, b, loader)")
    if not loaders:
        raise ValueError("loaders is empty; give at least one {name: loader}")
    out: dict[str, Iterable] = {}
    for name, dl in loaders.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"loaders: every name must be a non-empty str, got {name!r}")
        if name == POOLED:
            raise ValueError(f"loaders: the name {POOLED!r} is taken by the pooled results; rename that loader")
        if dl is None or not hasattr(dl, "__iter__"):
            raise TypeError(f"loaders[{name!r}] is a {type(dl).__name__}, not an iterable of batches")
        if isinstance(dl, Mapping):
            raise TypeError(f"loaders[{name!r}] is a {type(dl).__name__}, not an iterable of batches")
        out[name] = dl
    return out
