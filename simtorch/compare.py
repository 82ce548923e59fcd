"""Several similarity metrics from one pass over the data: ``simtorch.compare``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn

from .engine import Metric, stream
from .model import LayerSpec, SimilarityModel
from .result import SimilarityResult
from .similarity.cka import CKAMetric
from .similarity.dcka import DeltaCKAMetric
from .similarity.information_imbalance import InformationImbalanceMetric

__all__ = ["compare", "METRICS"]

#: metric names accepted by :func:`compare`, with their aliases
METRICS: dict[str, type[Metric]] = {
    "cka": CKAMetric,
    "dcka": DeltaCKAMetric,
    "deltacka": DeltaCKAMetric,
    "delta_cka": DeltaCKAMetric,
    "ii": InformationImbalanceMetric,
    "information_imbalance": InformationImbalanceMetric,
}
_OPTION_ARG = {CKAMetric: "cka_kwargs", DeltaCKAMetric: "dcka_kwargs", InformationImbalanceMetric: "ii_kwargs"}

ModelArg = Union[SimilarityModel, nn.Module]
Layers = Union[Sequence[LayerSpec], LayerSpec, None]


def _wrap(model: ModelArg, layers: Layers, name: str | None, side: str) -> SimilarityModel:
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


def _build(
    metrics: Sequence[str | Metric] | Mapping[str, str | Metric],
    options: Mapping[type[Metric], Mapping[str, Any]],
) -> dict[str, Metric]:
    items: list[tuple[str, str | Metric]]
    if isinstance(metrics, str):
        metrics = (metrics,)
    if isinstance(metrics, Mapping):
        items = list(metrics.items())
    else:
        items = [(m if isinstance(m, str) else m.name, m) for m in metrics]
    if not items:
        raise ValueError("metrics is empty; ask for at least one of 'cka', 'dcka', 'ii'")
    built: dict[str, Metric] = {}
    for key, spec in items:
        if key in built:
            raise ValueError(f"metric {key!r} is asked for twice; give each one a distinct name with a dict "
                             "{'name': metric, ...}")
        if isinstance(spec, Metric):
            built[key] = spec
            continue
        if not isinstance(spec, str) or spec.lower() not in METRICS:
            raise ValueError(f"unknown metric {spec!r}; choose from {sorted(METRICS)} or pass a Metric instance")
        cls = METRICS[spec.lower()]
        kwargs = dict(options.get(cls) or {})
        try:
            built[key] = cls(**kwargs)
        except TypeError as exc:
            raise TypeError(f"{_OPTION_ARG[cls]}={kwargs!r} does not fit {cls.__name__}: {exc}") from None
    return built


def compare(
    a: ModelArg,
    b: ModelArg,
    loader: Iterable,
    metrics: Sequence[str | Metric] | Mapping[str, str | Metric] = ("cka", "dcka", "ii"),
    *,
    layers_a: Layers = None,
    layers_b: Layers = None,
    name_a: str | None = None,
    name_b: str | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    input_key: str | None = None,
    input_fn: Callable[[Any], Any] | None = None,
    autocast: torch.dtype | None = None,
    cka_kwargs: Mapping[str, Any] | None = None,
    dcka_kwargs: Mapping[str, Any] | None = None,
    ii_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, SimilarityResult]:
    """Compute several similarity grids between two models in one pass over ``loader``.

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
    metrics : sequence or mapping
        Names among ``"cka"``, ``"dcka"`` (``"deltacka"``), ``"ii"``
        (``"information_imbalance"``), or :class:`~simtorch.engine.Metric` instances; a
        mapping ``{key: name or Metric}`` chooses the keys of the returned dict (e.g. two
        CKA variants: ``{"cka": CKAMetric(), "cka_rbf": CKAMetric(kernel="rbf")}``).
    layers_a, layers_b : list, optional
        Layer selection for plain modules (as ``SimilarityModel(layers_to_include=...)``).
    name_a, name_b : str, optional
        Model names shown in the results, for plain modules.
    device, progress, input_key, input_fn, autocast
        As in :class:`~simtorch.similarity.BaseSimilarity`.
    cka_kwargs, dcka_kwargs, ii_kwargs : dict, optional
        Options of the metrics built from names: ``cka_kwargs={"kernel": "rbf",
        "unbiased": True}``, ``dcka_kwargs={"unbiased": False, "remove_negative_eig": False,
        "confounder_fn": fn}``, ``ii_kwargs={"subset_size": 1024, "projection_dim": 256,
        "exact": False}``. Defaults are those of the classes: CKA unbiased (HSIC₁), dCKA
        biased (HSIC₀, as the paper), II per batch.

    Returns
    -------
    dict of str → SimilarityResult
        Keyed by the names given in ``metrics``; each result's grid is ``.matrix``.

    Examples
    --------
    >>> res = simtorch.compare(resnet18, resnet34, loader, layers_a=["layer?.*"], layers_b=["layer?.*"])
    >>> res["cka"].matrix, res["dcka"].extras["pve_a"], res["ii"].extras["reverse"]
    """
    sm_a = _wrap(a, layers_a, name_a, "a")
    if b is a and (layers_b is None or layers_b == layers_a):
        sm_b = sm_a  # one forward pass per batch
    else:
        sm_b = _wrap(b, layers_b, name_b, "b")
    if autocast not in (None, torch.bfloat16, torch.float16):
        raise ValueError(f"autocast must be torch.bfloat16, torch.float16 or None, got {autocast!r}")
    built = _build(metrics, {CKAMetric: cka_kwargs or {}, DeltaCKAMetric: dcka_kwargs or {},
                             InformationImbalanceMetric: ii_kwargs or {}})
    stream(
        sm_a, sm_b, loader, list(built.values()), device,
        progress=progress, input_key=input_key, input_fn=input_fn,
        keep_inputs=any(getattr(m, "needs_inputs", False) for m in built.values()),
        desc="compare", autocast=autocast,
    )
    return {key: m.result() for key, m in built.items()}
