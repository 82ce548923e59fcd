"""The CCA family over all N samples: SVCCA (Raghu, Gilmer, Yosinski, Sohl-Dickstein, NeurIPS
2017) and PWCCA (Morcos, Raghu, Bengio, NeurIPS 2018), as anatome computes them, returned as
similarities. Both run on the skeleton of :mod:`.shape` (buffered features or exact
moments; PWCCA buffers only)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import functional as F
from .accumulate import to_numpy
from .base import LayerNote
from .registry import register
from .shape import AllSamplesMetric

__all__ = ["SVCCAMetric", "PWCCAMetric"]


@register
class SVCCAMetric(AllSamplesMetric):
    """SVCCA over all N samples (``1 −`` anatome's ``svcca_distance``, or google/svcca's
    tutorial form with ``variant="google"``). Options as :class:`simtorch.SVCCA`."""

    key = "svcca"
    name = "SVCCA"
    symmetric = True
    direction = "similarity"
    value_range = (0.0, 1.0)
    invariances = frozenset({"orthogonal", "isotropic_scaling"})

    def __init__(self, keep: float = 0.99, variant: str = "anatome", projection_dim: int | None = None,
                 seed: int = 0, memory_limit: int | None = None, method: str = "auto") -> None:
        if variant not in ("anatome", "google"):
            raise ValueError(f"variant must be 'anatome' or 'google', got {variant!r}")
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < float(keep) <= 1.0:
            raise ValueError(f"keep must be in (0, 1] (the kept fraction, e.g. 0.99), got {keep!r}")
        super().__init__(projection_dim, seed, memory_limit, method)
        self.keep, self.variant = float(keep), variant
        if variant == "google":  # it centres before the SVD
            self.invariances = frozenset({"orthogonal", "isotropic_scaling", "translation"})

    def settings(self) -> dict[str, Any]:
        return {"keep": self.keep, "variant": self.variant, **super().settings()}

    def feature_grid(self, xa: list[Tensor], xb: list[Tensor]) -> F.ShapeGrid:
        return F.svcca_grid(xa, xb, keep=self.keep, variant=self.variant)  # type: ignore[arg-type]

    def moment_grid(self, gm: F.GridMoments) -> F.ShapeGrid:
        return F.svcca_grid_from_moments(gm, keep=self.keep, variant=self.variant)  # type: ignore[arg-type]

    def bad_message(self) -> str:
        return (f"{self.name}: {{model}} layers {{layers}} keep no direction (constant or rank-one features, or "
                f"keep={self.keep} too small); their cells are NaN, not a made-up number")

    def layer_notes(self, grid: F.ShapeGrid) -> list[LayerNote]:
        notes = super().layer_notes(grid)
        n = int(self.n_samples)
        for side, widths in (("a", self.widths_a), ("b", self.widths_b))[: 1 if self.binding.same else 2]:
            wide = [d >= n for d in widths or ()]
            if any(wide):
                notes.append(LayerNote(side, wide, (
                    f"{self.name}: {{model}} layers {{layers}} have at least as many features as samples (N={n}); "
                    "CCA of the kept directions is then partly degenerate (correlations of 1 by construction). Use "
                    f"more samples or projection_dim < {n}")))
        return notes


@register
class PWCCAMetric(AllSamplesMetric):
    """PWCCA over all N samples (``1 −`` anatome's ``pwcca_distance``): cell ``[i, j]`` is
    ``pwcca(A_i, B_j)``, weighted by model a's layer; ``extras["reverse"][i, j]`` is
    ``pwcca(B_j, A_i)``. Buffered features only. Options as :class:`simtorch.PWCCA`."""

    key = "pwcca"
    name = "PWCCA"
    symmetric = False
    direction = "similarity"
    value_range = (0.0, 1.0)
    invariances = frozenset({"orthogonal", "isotropic_scaling"})
    supports_moments: ClassVar[bool] = False
    factors_per_layer: ClassVar[int] = 2

    def __init__(self, projection_dim: int | None = None, seed: int = 0, memory_limit: int | None = None,
                 method: str = "auto") -> None:
        super().__init__(projection_dim, seed, memory_limit, method)

    def feature_grid(self, xa: list[Tensor], xb: list[Tensor]) -> F.ShapeGrid:
        """:func:`~simtorch.functional.pwcca_grid` of the layers with ``d ≤ N``; the cells
        of wider layers (PWCCA needs ``N ≥ d``) are NaN and the layers flagged."""
        n = xa[0].shape[0]
        ok_a = [x.shape[1] <= n for x in xa]
        ok_b = [x.shape[1] <= n for x in xb]
        dev = xa[0].device
        values = torch.full((len(xa), len(xb)), float("nan"), dtype=torch.float64, device=dev)
        reverse = values.clone()
        invalid = torch.ones(len(xa), len(xb), dtype=torch.bool, device=dev)
        bad_a, bad_b = ~torch.tensor(ok_a, device=dev), ~torch.tensor(ok_b, device=dev)
        ia = [i for i, ok in enumerate(ok_a) if ok]
        ib = [j for j, ok in enumerate(ok_b) if ok]
        if ia and ib:
            g = F.pwcca_grid([xa[i] for i in ia], [xb[j] for j in ib])
            ti, tj = torch.tensor(ia, device=dev)[:, None], torch.tensor(ib, device=dev)[None, :]
            values[ti, tj] = g.values
            reverse[ti, tj] = g.reverse  # type: ignore[assignment]
            invalid[ti, tj] = g.invalid
            bad_a[torch.tensor(ia, device=dev)] = g.bad_a
            bad_b[torch.tensor(ib, device=dev)] = g.bad_b
        return F.ShapeGrid(values, invalid, bad_a, bad_b, reverse)

    def layer_notes(self, grid: F.ShapeGrid) -> list[LayerNote]:
        n = int(self.n_samples)
        wide_a, wide_b = (torch.tensor([d > n for d in w], device=grid.bad_a.device)
                          for w in (self.widths_a, self.widths_b))
        sides = (("a", wide_a, grid.bad_a), ("b", wide_b, grid.bad_b))[: 1 if self.binding.same else 2]
        notes = []
        for side, wide, bad in sides:
            if bool(wide.any()):
                notes.append(LayerNote(side, wide.tolist(), (
                    f"{self.name}: {{model}} layers {{layers}} have more features than samples (d > N={n}); PWCCA "
                    f"needs N ≥ d, so their cells (both directions) are NaN. Use more samples or "
                    f"projection_dim ≤ {n}")))
            const = bad & ~wide
            if bool(const.any()):
                notes.append(LayerNote(side, const.tolist(), self.bad_message()))
        tied = grid.invalid & ~grid.bad_a[:, None] & ~grid.bad_b[None, :]
        if bool(tied.any()):
            notes.append(LayerNote("a", tied.any(1).tolist(), (
                f"{self.name}: canonical correlations tie for {{model}} layers {{layers}} against some layers of the "
                "other model (the weights inside a tie depend on an arbitrary basis); those cells are NaN "
                "(extras['tied'] marks them)")))
        return notes

    def extras(self, grid: F.ShapeGrid) -> dict[str, Any]:
        tied = grid.invalid & ~grid.bad_a[:, None] & ~grid.bad_b[None, :]
        rev = grid.reverse if grid.reverse is not None else torch.full_like(grid.values, float("nan"))
        return {"reverse": to_numpy(rev), "reverse_stderr": to_numpy(torch.full_like(rev, float("nan"))),
                "tied": tied.cpu().numpy()}
