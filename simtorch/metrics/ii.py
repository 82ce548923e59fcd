"""Information Imbalance (Glielmo, Zeni, Cheng, Csányi, Laio, PNAS Nexus 2022) as a
streaming metric.

Δ(A→B) = (2/n²) Σ_{i, j : r^A_ij = 1} r^B_ij asks how well A's nearest neighbours predict
B's neighbourhoods: about 2/n when they agree, about 1 when A says nothing about B. The
distances come from the Gram matrices the engine already has, so by default each batch is
one subset and no activation is kept, except the features of layers no wider than
:data:`~simtorch.functional.II_EXACT_DIM`, whose distances a float32 Gram cannot resolve
(they are taken in float64 from those features, for that batch only). ``subset_size``
and ``exact`` pool samples across batches; for those the metric asks the engine for each layer's (optionally randomly
projected) features next to its Gram, since a Gram of the union of batches is not a
function of the per-batch Grams.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from .accumulate import to_numpy
from .base import Computed, LayerNote, Metric, Needs
from .buffer import FeatureBuffer, Projector
from .cka import skipped_note
from .registry import register

__all__ = ["InformationImbalanceMetric", "NarrowFeatures"]


class NarrowFeatures:
    """Feature transform of per-batch Information Imbalance: a layer at most ``dim`` wide
    (:data:`~simtorch.functional.II_EXACT_DIM`) is handed over as a float64 copy of its
    features, whose distances the metric then takes in float64
    (:func:`~simtorch.functional.ii_exact_distances`); a wider layer as an empty ``(n, 0)``
    tensor (its distances come from the Gram, which resolves them). A copy, never a view:
    the activation may be modified in place later in the forward pass, and it must be
    freed."""

    def __init__(self, dim: int = F.II_EXACT_DIM) -> None:
        self.dim = dim

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[1] <= self.dim:
            return x.to(dtype=torch.float64, copy=True)
        return torch.empty((x.shape[0], 0), dtype=torch.float64, device=x.device)

    def fixed(self, n: int, d: int, device: torch.device) -> Tensor | None:
        """The features of every ``(n, d)`` input when they do not depend on its values
        (a layer wider than ``dim``: empty), else None; the engine's capture then needs
        no call per layer (:meth:`simtorch.capture.LayerCapture._fixed_feature`)."""
        return torch.empty((n, 0), dtype=torch.float64, device=device) if d > self.dim else None

    def __eq__(self, other: object) -> bool:
        # two per-batch II metrics of one pass share one set of features
        return isinstance(other, NarrowFeatures) and other.dim == self.dim

    def __hash__(self) -> int:
        return hash(("NarrowFeatures", self.dim))


def batch_distances(grams: Tensor, features: list[Tensor] | None) -> Tensor:
    """Squared distances ``(L, n, n)`` float64 of one side of a batch: from the Gram stack
    (:func:`~simtorch.functional.ii_distances`), except for the layers whose float64
    features came along (:class:`NarrowFeatures`), which get exact float64 distances."""
    d = F.ii_distances(grams)
    for i, f in enumerate(features or ()):
        if f.shape[1] > 0:
            d[i] = F.ii_exact_distances(f)
    return d


def batch_rows(grams: Tensor, features: list[Tensor] | None, energy: Tensor | None = None) -> F.NeighbourRows:
    """One side of a batch prepared for ranking (:func:`~simtorch.functional.ii_gram_rows`):
    the distances of :func:`batch_distances` in a few passes, the CPU path; ``energy`` sets
    the resolution of Grams the engine made from uncentred rows."""
    exact = {i: f for i, f in enumerate(features or ()) if f.shape[1] > 0}
    return F.ii_gram_rows(grams, exact, energy)


@register
class InformationImbalanceMetric(Metric):
    """Streaming Information Imbalance: Δ per subset (a batch by default), averaged over
    subsets weighted by their size, with the standard error over subsets.

    Accumulated sums (all-reducible): ``Σ nΔ``, ``Σ n²Δ``, ``Σ n²Δ²`` per cell and direction,
    ``Σ n``, ``Σ n²``. The weighted mean is ``m = Σ nΔ / Σ n`` and its standard error
    ``sqrt(B/(B−1) · Σ n²(Δ − m)²) / Σ n`` over ``B`` subsets (the usual ``s/sqrt(B)`` for
    equal sizes). Options as :class:`simtorch.InformationImbalance`.
    """

    key = "ii"
    aliases = ("information_imbalance",)
    name = "II"
    symmetric = False
    direction = "distance"
    value_range = (0.0, 1.0)
    invariances = frozenset({"orthogonal", "isotropic_scaling", "translation"})

    def __init__(
        self,
        subset_size: int | None = None,
        projection_dim: int | None = None,
        exact: bool = False,
        seed: int = 0,
        memory_limit: int | None = None,
    ) -> None:
        if subset_size is not None and (isinstance(subset_size, bool) or not isinstance(subset_size, int)
                                        or subset_size < 2):
            raise ValueError(f"subset_size must be an int ≥ 2 or None, got {subset_size!r}")
        if projection_dim is not None and (isinstance(projection_dim, bool) or not isinstance(projection_dim, int)
                                           or projection_dim < 1):
            raise ValueError(f"projection_dim must be a positive int or None, got {projection_dim!r}")
        if exact and subset_size is not None:
            raise ValueError(
                f"exact=True uses every sample as one subset; it cannot be combined with subset_size={subset_size}"
            )
        if projection_dim is not None and not exact and subset_size is None:
            raise ValueError(
                f"projection_dim={projection_dim} only applies when features are buffered (subset_size=... or "
                "exact=True); per-batch Information Imbalance works from the Grams and needs no projection"
            )
        if memory_limit is not None and memory_limit <= 0:
            raise ValueError(f"memory_limit must be a positive number of bytes or None, got {memory_limit!r}")
        self.subset_size = subset_size
        self.projection_dim = projection_dim
        self.exact = bool(exact)
        if self.exact:
            self.error_bars = None  # one subset of all N: no spread over subsets to report
        self.seed = int(seed)
        self.memory_limit = memory_limit
        self.needs_features = self.exact or subset_size is not None
        self._projector = Projector(projection_dim, self.seed) if self.needs_features else None

    def needs(self) -> Needs:
        # per batch: narrow layers' features, for distances a float32 Gram cannot resolve
        return Needs(features=self._projector if self.needs_features else NarrowFeatures(), min_batch=2)

    def settings(self) -> dict[str, Any]:
        return {"subset_size": self.subset_size, "projection_dim": self.projection_dim,
                "exact": self.exact, "seed": self.seed}

    def setup(self) -> None:
        b = self.binding
        la, lb = b.layers_a, b.layers_b
        for key in ("fwd", "rev"):
            for term in ("wx", "w2x", "w2x2"):
                self.add_state(f"{key}_{term}", (la, lb))
        self.add_state("dup_a", (la,))
        self.add_state("dup_b", (lb,))
        self.add_counter("sum_n2")
        self.sizes = self.add_batch_sizes()
        self.buffer: FeatureBuffer | None = None
        if self.needs_features:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                raise ValueError(
                    "Information Imbalance with subset_size/exact buffers features per process and cannot be "
                    "all-reduced; run it on one process or use the per-batch default"
                )
            self.buffer = FeatureBuffer(la, lb, b.same, b.device, "Information Imbalance", self.projection_dim,
                                        self.memory_limit)

    # ------------------------------------------------------------------ per batch
    def update(self, batch: Any) -> None:
        if self.buffer is not None:
            self._update_features(batch)
            return
        if batch.n < 2:
            self.skip(batch.n)
            return
        if batch.grams("a").device.type == "cpu":
            pa = batch.cached(("ii_rows", "a"),
                              lambda: batch_rows(batch.grams("a"), batch.features("a"), batch.energy("a")))
            pb = None if batch.same else batch.cached(
                ("ii_rows", "b"), lambda: batch_rows(batch.grams("b"), batch.features("b"), batch.energy("b")))
            fwd, rev = F.ii_rows_sums(pa, pb)
            n2 = batch.n * batch.n
            fwd, rev = fwd * 2.0 / n2, rev * 2.0 / n2
            # a zero nearest distance (self excluded) means coincident points
            dup_a = pa.coincident.to(torch.float64)
            dup_b = dup_a if pb is None else pb.coincident.to(torch.float64)
        else:
            da = batch.cached(("ii_dist", "a"), lambda: batch_distances(batch.grams("a"), batch.features("a")))
            db = None if batch.same else batch.cached(("ii_dist", "b"),
                                                      lambda: batch_distances(batch.grams("b"), batch.features("b")))
            fwd, rev = F.information_imbalance_distances(da, db)
            # zeros beyond the n self-distances mean coincident points; counted on the
            # device (no sync), reported once at the end
            dup_a = ((da == 0).sum((-2, -1)) > batch.n).to(torch.float64)
            dup_b = dup_a if db is None else ((db == 0).sum((-2, -1)) > batch.n).to(torch.float64)
        self._accumulate(fwd, rev, dup_a, dup_b, batch.n)

    def _accumulate(self, fwd: Tensor, rev: Tensor, dup_a: Tensor, dup_b: Tensor, n: int) -> None:
        w, w2 = float(n), float(n * n)
        for key, v in (("fwd", fwd), ("rev", rev)):
            self.state(f"{key}_wx").add_(w * v)
            self.state(f"{key}_w2x").add_(w2 * v)
            self.state(f"{key}_w2x2").add_(w2 * v * v)
        self.state("dup_a").add_(dup_a)
        self.state("dup_b").add_(dup_b)
        self.count(n)
        self.sum_n2 += n * n
        self.sizes.track(n)
        self.sizes.used.add(n)

    # ------------------------------------------------------------------ buffered features
    def _update_features(self, batch: Any) -> None:
        buf = self.buffer
        assert buf is not None
        if batch.features_a is None:
            raise RuntimeError("Information Imbalance with subset_size/exact got no features from the engine")
        feats_a = batch.features_a
        feats_b = None if batch.same else batch.features_b
        buf.measure(feats_a, feats_b)
        if self.exact:
            exp = self.binding.expected_samples
            planned = exp if exp is not None else buf.count + batch.n
            buf.check(planned, f"exact=True buffers every sample's features: N={planned}",
                      ("subset_size=... to pool fewer samples",))
        else:
            planned = self.subset_size + batch.n  # type: ignore[operator]
            buf.check(planned, f"subset_size={self.subset_size} buffers up to {planned} samples' features",
                      ("subset_size=... to pool fewer samples",))
        buf.append(feats_a, feats_b, batch.n)
        if self.subset_size is not None:
            while buf.count >= self.subset_size:
                self._flush(self.subset_size)

    def _flush(self, k: int) -> None:
        xa, xb = self.buffer.take(k)  # type: ignore[union-attr]
        fwd, rev, dup_a, dup_b = F.ii_feature_sums(xa, xb)
        self._accumulate(fwd, rev, dup_a, dup_a if dup_b is None else dup_b, k)

    def finish(self) -> None:
        buf = self.buffer
        if buf is None or buf.count == 0:
            return
        k = buf.count
        if k >= 2:
            self._flush(k)
        else:
            self.skip(k)
        buf.clear()

    # ------------------------------------------------------------------ result
    def _mean_se(self, key: str) -> tuple[Tensor, Tensor]:
        total = float(self.n_samples)
        mean = self.state(f"{key}_wx") / total
        if self.n_used < 2:
            return mean, torch.full_like(mean, float("nan"))
        b = self.n_used
        ss = self.state(f"{key}_w2x2") - 2 * mean * self.state(f"{key}_w2x") + mean * mean * self.sum_n2
        return mean, torch.sqrt(ss.clamp_min(0) * b / (b - 1)) / total

    def compute(self) -> Computed:
        if self.n_used == 0:
            raise ValueError(f"{self.name}: no batch had at least 2 samples; nothing was computed")
        messages = [m for m in [skipped_note(self.name, self.skipped, self.skipped_samples, 2,
                                             "a single sample has no neighbour",
                                             "use a batch size that divides the dataset or drop_last=True")] if m]
        if self.sizes.irregular:
            messages.append(
                f"II: subsets (batches) of different sizes {sorted(self.sizes.used)} were averaged; Δ of an informative "
                "pair shrinks as subsets grow, so use one batch size (drop_last=True, or subset_size=...)")
        notes = []
        for side in ("a",) if self.binding.same else ("a", "b"):
            dup = self.state(f"dup_{side}") > 0
            if bool(dup.any()):
                notes.append(LayerNote(side, dup.tolist(),
                                       "II: {model} layers {layers} have coincident samples (zero distances); tied "
                                       "nearest neighbours share the weight and tied distances get their average rank"))
        fwd, fwd_se = self._mean_se("fwd")
        rev, rev_se = self._mean_se("rev")
        settings: dict[str, Any] = {"subset_sizes": sorted(self.sizes.used)}
        if self.buffer is not None:
            settings["buffer_bytes_per_sample"] = self.buffer.bytes_per_sample
        return Computed(fwd, fwd_se, {"reverse": to_numpy(rev), "reverse_stderr": to_numpy(rev_se)},
                        settings=settings, notes=notes, messages=messages)
