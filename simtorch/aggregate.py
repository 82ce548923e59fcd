"""Averages of similarity grids over runs: :func:`average_results`.

Seeds, checkpoints or data splits each give a :class:`~simtorch.result.SimilarityResult`
of the same metric over the same layers; their cell-wise mean, with the spread across
runs as its ``stderr``, is a result like any other (it plots, saves, and goes into
:func:`~simtorch.plotting.plot_diagonal` with its band).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .record import versions as current_versions
from .result import SimilarityResult

__all__ = ["average_results", "SPREADS"]

#: the spreads :func:`average_results` can put in ``stderr``
SPREADS = ("std", "sem")
#: extras that hold one run's sums (the HSIC terms behind CKA/dCKA): never averaged
_RUN_SUMS = "hsic_"
_COUNT_FIELDS = ("n_samples", "n_batches", "n_skipped", "skipped_samples")


def average_results(
    results: Sequence[SimilarityResult] | Mapping[str, SimilarityResult],
    spread: str = "std",
) -> SimilarityResult:
    """The cell-wise mean of several results of one metric over the same layers (seeds,
    checkpoints, data splits), with the spread across them.

    Parameters
    ----------
    results : sequence of SimilarityResult, or dict label → SimilarityResult
        At least two results of the same ``metric`` with the same ``layers_a`` and
        ``layers_b`` (same names, same order); anything else is a ``ValueError`` naming
        the result and what differs. A dict's keys label the runs (``{"seed0": r0, ...}``).
    spread : ``"std"`` or ``"sem"``
        What goes into the average's ``stderr``: the sample standard deviation across the
        ``k`` results (``ddof=1``), or the standard error of their mean, ``std / sqrt(k)``.

    Returns
    -------
    SimilarityResult
        ``matrix``: the mean of the ``matrix`` of every result (a cell NaN in any result is
        NaN). ``stderr``: the chosen spread across results, not the per-run (jackknife)
        errors, which are kept in ``extras["runs_stderr"]`` ``(k, La, Lb)`` next to every
        run's grid, ``extras["runs_matrix"]``. Other extras present in every result with
        one shape are averaged likewise (e.g. Information Imbalance's ``"reverse"``, whose
        ``"reverse_stderr"`` becomes its spread; boolean flags such as ``"tied"`` are
        or-ed); the sums behind one run's estimate (``hsic_*``) are not, as their mean is
        not what the mean grid was computed from.

        ``settings``: every setting equal in all results (so the estimator is still named
        in plots), plus ``settings["average"]``: ``n_results``, ``spread`` and ``ddof``,
        the run ``labels`` (dict keys, or None), ``models_a``/``models_b`` and the
        per-result counts (``n_samples``, ``n_batches``, …), and ``varied``: the settings
        that differ between results, each with its value per result (None where absent).

        ``model_a``/``model_b``: the common name, or ``"mean of k models"`` when the runs'
        names differ (each is listed in ``settings["average"]``). ``n_samples``,
        ``n_batches``, ``n_skipped``, ``skipped_samples``: sums over the results (every
        sample behind the average); ``versions``: the results' when equal, else the
        current ones.

    Examples
    --------
    >>> runs = {f"seed{s}": simtorch.compare(nets[s], ref, loader, metrics=("cka",))["cka"] for s in range(5)}
    >>> avg = simtorch.average_results(runs, spread="sem")
    >>> avg.matrix, avg.stderr, avg.settings["average"]["spread"]
    >>> avg.plot(show_stderr=True)
    """
    if spread not in SPREADS:
        raise ValueError(f"spread must be one of {SPREADS} (standard deviation across results, or the standard "
                         f"error of their mean), got {spread!r}")
    labels: list[str] | None
    if isinstance(results, Mapping):
        labels = [str(k) for k in results]
        items = list(results.values())
    elif isinstance(results, SimilarityResult):
        raise TypeError("average_results needs several results (a list or a dict label → result), got one "
                        "SimilarityResult")
    else:
        labels = None
        items = list(results)
    for i, res in enumerate(items):
        if not isinstance(res, SimilarityResult):
            raise TypeError(f"{_name(i, labels)} is a {type(res).__name__}, not a SimilarityResult")
    k = len(items)
    if k < 2:
        raise ValueError(f"average_results needs at least 2 results to average (and to measure their spread), "
                         f"got {k}")
    _check_alike(items, labels)

    first = items[0]
    runs = np.stack([r.matrix for r in items])
    runs_se = np.stack([np.asarray(r.stderr, dtype=np.float64) for r in items])
    mean, err = _mean_spread(runs, spread)

    extras: dict[str, np.ndarray] = {"runs_matrix": runs, "runs_stderr": runs_se}
    common_extras = [key for key in first.extras if all(key in r.extras for r in items)]
    for key in common_extras:
        if key.startswith(_RUN_SUMS) or key in extras:
            continue
        arrays = [np.asarray(r.extras[key]) for r in items]
        if len({a.shape for a in arrays}) != 1:
            continue
        if arrays[0].dtype == np.bool_ and all(a.dtype == np.bool_ for a in arrays):
            extras[key] = np.logical_or.reduce(np.stack(arrays))
        elif all(np.issubdtype(a.dtype, np.number) and not np.issubdtype(a.dtype, np.bool_) for a in arrays):
            m, s = _mean_spread(np.stack([a.astype(np.float64) for a in arrays]), spread)
            extras[key] = m
            if key + "_stderr" in common_extras:
                extras[key + "_stderr"] = s
    for key in common_extras:  # a "_stderr" whose base was not averaged has no meaning left
        if key.endswith("_stderr") and key not in extras:
            extras.pop(key, None)

    settings, varied = _merge_settings([r.settings for r in items])
    models_a, models_b = [r.model_a for r in items], [r.model_b for r in items]
    settings["average"] = {
        "n_results": k, "spread": spread, "ddof": 1, "labels": labels,
        "models_a": models_a, "models_b": models_b,
        **{f: [int(getattr(r, f)) for r in items] for f in _COUNT_FIELDS},
        "varied": varied,
    }
    versions = [dict(r.versions) for r in items]
    same_versions = all(v == versions[0] for v in versions)
    return SimilarityResult(
        matrix=mean, stderr=err, layers_a=list(first.layers_a), layers_b=list(first.layers_b),
        model_a=_common_name(models_a), model_b=_common_name(models_b), metric=first.metric,
        settings=settings, extras=extras,
        **{f: sum(int(getattr(r, f)) for r in items) for f in _COUNT_FIELDS},
        versions=versions[0] if same_versions else current_versions(),
    )


def _name(i: int, labels: list[str] | None) -> str:
    return f"results[{labels[i]!r}]" if labels is not None else f"results[{i}]"


def _check_alike(items: list[SimilarityResult], labels: list[str] | None) -> None:
    """Same metric and layers (names and order) in every result, else a ValueError saying
    which result differs from the first and how."""
    first = items[0]
    ref = _name(0, labels)
    for i, res in enumerate(items[1:], start=1):
        who = _name(i, labels)
        if res.metric != first.metric:
            raise ValueError(f"{who} is a {res.metric} result but {ref} is a {first.metric} result; average results "
                             "of one metric")
        for side in ("a", "b"):
            got, want = getattr(res, f"layers_{side}"), getattr(first, f"layers_{side}")
            if got == want:
                continue
            missing = [n for n in want if n not in got]
            extra = [n for n in got if n not in want]
            if missing or extra:
                detail = (f"{who} lacks {missing} of {ref}'s" if missing else "") + \
                         ("; " if missing and extra else "") + (f"{who} has {extra} that {ref} lacks" if extra else "")
            elif len(got) != len(want):
                detail = f"{who} has {len(got)} layers (some repeated), {ref} has {len(want)}"
            else:
                detail = f"the same layers in another order: {got} vs {want}"
            raise ValueError(f"layers_{side} differ: {detail} (model {side.upper()}: {getattr(res, f'model_{side}')!r} "
                             f"vs {getattr(first, f'model_{side}')!r}); average results over the same layers, in "
                             "the same order")


def _mean_spread(stack: np.ndarray, spread: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean over axis 0 and the spread (sample std, ddof=1, or its ``/ sqrt(k)``)."""
    k = stack.shape[0]
    mean = stack.mean(axis=0)
    std = np.sqrt(((stack - mean) ** 2).sum(axis=0) / (k - 1))
    return mean, std if spread == "std" else std / math.sqrt(k)


def _jsonish(value: Any) -> Any:
    """A comparable form of a setting value (settings are JSON: lists and tuples alike)."""
    try:
        return json.dumps(value, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def _merge_settings(all_settings: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Settings equal in every result, and the others with their value per result."""
    keys = list(dict.fromkeys(key for s in all_settings for key in s))
    common: dict[str, Any] = {}
    varied: dict[str, list[Any]] = {}
    for key in keys:
        values = [s.get(key) for s in all_settings]
        present = all(key in s for s in all_settings)
        if present and len({_jsonish(v) for v in values}) == 1:
            common[key] = values[0]
        else:
            varied[key] = values
    return common, varied


def _common_name(names: list[str]) -> str:
    unique = list(dict.fromkeys(names))
    return unique[0] if len(unique) == 1 else f"mean of {len(names)} models"
