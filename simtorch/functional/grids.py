"""Grids from features you already have, one function per measure: thin forms of
:func:`simtorch.features.grid` (which takes any registered measure by name).

Each takes, per side, a dict ``{layer name: (n, ...) tensor}``, a list of ``(n, ...)``
tensors or an ``(L, n, ...)`` stack (or an iterable of such per-batch sets, streamed), and
returns a :class:`~simtorch.result.SimilarityResult`; ``feats_b=None`` compares
``feats_a`` with itself. Unlike the rest of :mod:`simtorch.functional` these run the
streaming metrics (sum states, jackknife errors), so they import lazily.
"""

from __future__ import annotations

from typing import Any

__all__ = ["cka_grid", "dcka_grid", "ii_grid"]


def cka_grid(feats_a: Any, feats_b: Any = None, **options: Any) -> Any:
    """CKA of every layer pair (options of :class:`simtorch.CKA`: ``kernel``, ``unbiased``
    (default True), ``sigma_frac``; and :func:`simtorch.features.grid`'s ``batch_size``,
    ``names_a``, …). Like pytorch-cka's ``cka_from_features``, with names and errors."""
    from ..features import grid

    return grid("cka", feats_a, feats_b, **options)


def dcka_grid(feats_a: Any, feats_b: Any = None, *, z: Any, **options: Any) -> Any:
    """Deconfounded CKA of every layer pair against the confounder ``z`` (``(n, p)``, e.g.
    the inputs; per-batch tensors for batched features). Options of :class:`simtorch.DeltaCKA`
    (``unbiased`` default False, ``remove_negative_eig``) and :func:`simtorch.features.grid`."""
    from ..features import grid

    return grid("dcka", feats_a, feats_b, z=z, **options)


def ii_grid(feats_a: Any, feats_b: Any = None, **options: Any) -> Any:
    """Information Imbalance Δ(A → B) of every layer pair (``extras["reverse"]``: Δ(B → A));
    options of :class:`simtorch.InformationImbalance` (``subset_size``, ``exact``,
    ``projection_dim``) and :func:`simtorch.features.grid`."""
    from ..features import grid

    return grid("ii", feats_a, feats_b, **options)
