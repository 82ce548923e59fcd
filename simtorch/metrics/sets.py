"""How a per-set measure accumulates: :class:`SetMetric`, the skeleton that mutual k-NN,
CKNNA (:mod:`.neighbours`) and RSA (:mod:`.rsa`) share.

These are per-set measures, like Information Imbalance: a value is a function of one set of
samples, not a sum over samples. By default each batch is one set: the subclass computes
the batch's grid from the engine's Grams, and the grids are averaged over batches weighted
by batch size, with the standard error over batches. ``exact=True`` buffers every layer's
(optionally projected) features and computes the grid once on all N samples, after a memory
check that refuses early.

Per-set values can depend on the size of the set (kNN values do: the k nearest of 127
others are not the k nearest of 9 999 others), so a ``size_dependent`` measure warns when
batches of different sizes (other than the last) were averaged.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import Computed, Metric, Needs
from .buffer import FeatureBuffer, Projector, available_bytes, gib
from .cka import skipped_note

__all__ = ["SetMetric", "check_int"]


def check_int(name: str, value: Any, low: int) -> int:
    """``value``, checked to be an int (not a bool) of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int ≥ {low}, got {value!r}")
    return value


class SetMetric(Metric):
    """Skeleton of a measure computed on a whole set of samples (a batch, or all N).

    Subclasses give :attr:`min_n` (the smallest set the measure is defined on),
    :meth:`batch_grid` (the ``(La, Lb)`` grid of one batch, from the engine's stacks),
    :meth:`feature_grid` (the grid of all N from buffered features, for ``exact=True``),
    :meth:`work_bytes` (the memory of that computation) and, if they need them,
    :attr:`raw_products`.

    Sums kept (all-reducible): ``Σ n·s``, ``Σ n²·s``, ``Σ n²·s²`` per cell, ``Σ n``, ``Σ n²``.
    The value is ``m = Σ n·s / Σ n`` and its standard error
    ``sqrt(B/(B−1) · Σ n²(s − m)²) / Σ n`` over ``B`` sets (``std/sqrt(B)`` for equal sizes),
    as for Information Imbalance.
    """

    #: per-batch values depend on the batch size (warn when sizes differ)
    size_dependent: ClassVar[bool] = True
    #: why a set smaller than :attr:`min_n` cannot be used (for the messages)
    min_reason: ClassVar[str] = ""

    def __init__(self, exact: bool = False, projection_dim: int | None = None, seed: int = 0,
                 memory_limit: int | None = None) -> None:
        if projection_dim is not None:
            check_int("projection_dim", projection_dim, 1)
            if not exact:
                raise ValueError(
                    f"projection_dim={projection_dim} only applies with exact=True (buffered features); the "
                    "per-batch default works from the Grams and needs no projection")
        if memory_limit is not None and memory_limit <= 0:
            raise ValueError(f"memory_limit must be a positive number of bytes or None, got {memory_limit!r}")
        self.exact = bool(exact)
        if self.exact:
            self.error_bars = None  # one subset of all N: no spread over subsets to report
        self.projection_dim = projection_dim
        self.seed = int(seed)
        self.memory_limit = memory_limit
        # the same Projector as Information Imbalance's: equal settings share one set of features
        self._projector = Projector(projection_dim, self.seed) if self.exact else None

    # ------------------------------------------------------------------ declaration
    @property
    def min_n(self) -> int:
        raise NotImplementedError

    @property
    def raw_products(self) -> bool:
        return False

    def needs(self) -> Needs:
        return Needs(features=self._projector, raw_products=self.raw_products and not self.exact,
                     min_batch=self.min_n)

    def settings(self) -> dict[str, Any]:
        return {"exact": self.exact, "projection_dim": self.projection_dim, "seed": self.seed}

    def too_small(self, n: int) -> str:
        """The error for a set of ``n`` samples (what the measure needs, and the fixes)."""
        return (f"{self.name}: {self.min_reason}, so every set needs at least {self.min_n} samples; got {n}")

    def setup(self) -> None:
        b = self.binding
        la, lb = b.layers_a, b.layers_b
        for term in ("wx", "w2x", "w2x2"):
            self.add_state(term, (la, lb))
        self.add_counter("sum_n2")
        self.sizes = self.add_batch_sizes()
        self.buffer: FeatureBuffer | None = None
        exp = b.expected_samples
        if exp is not None and exp < self.min_n:
            # the loader cannot yield a single usable set: refuse before any forward pass
            raise ValueError(self.too_small(exp) + f" (the loader holds {exp} samples in all)")
        if self.exact:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                raise ValueError(f"{self.name} with exact=True buffers features per process and cannot be "
                                 "all-reduced; run it on one process or use the per-batch default")
            self.buffer = FeatureBuffer(la, lb, b.same, b.device, self.name, self.projection_dim,
                                        self.memory_limit)
            if exp is not None:
                self._check_memory(exp, 0)  # the N² part is known before any forward pass

    # ------------------------------------------------------------------ per batch
    def update(self, batch: Any) -> None:
        # the first batch of the run, not of a resumed one (a state saved before batch sizes
        # were part of it has counters but no sizes)
        first = self.sizes.first is None and self.n_used == 0 and self.skipped == 0
        if self.buffer is not None:
            self._update_features(batch)
            return
        if batch.n < self.min_n:
            if first:
                # validated on the first batch, before any state changes and before the
                # second forward pass (the engine does not know batch sizes up front)
                raise ValueError(self.too_small(batch.n) + " in the first batch. Use a larger batch_size"
                                 + self.fixes(batch.n))
            self.sizes.track(batch.n)
            self.skip(batch.n)
            return
        self.sizes.track(batch.n)
        self._accumulate(self.batch_grid(batch), batch.n)

    def fixes(self, n: int) -> str:
        """Further fixes for a first batch of ``n`` samples that is too small."""
        return ", or exact=True (one set of all samples)"

    def _accumulate(self, grid: Tensor, n: int) -> None:
        w, w2 = float(n), float(n * n)
        grid = grid.to(torch.float64)
        self.state("wx").add_(w * grid)
        self.state("w2x").add_(w2 * grid)
        self.state("w2x2").add_(w2 * grid * grid)
        self.count(n)
        self.sum_n2 += n * n
        self.sizes.used.add(n)

    def batch_grid(self, batch: Any) -> Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ exact=True
    def work_bytes(self, n: int) -> float:
        """Bytes of working memory :meth:`feature_grid` needs for ``n`` samples."""
        raise NotImplementedError

    def feature_grid(self, xa: list[Tensor], xb: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def _check_memory(self, planned: int, per_sample: int) -> None:
        """Refuse, before buffering, a computation on ``planned`` samples that would not fit."""
        feats = planned * per_sample
        work = self.work_bytes(planned)
        limit = self.memory_limit if self.memory_limit is not None else available_bytes(self.binding.device) / 2
        if feats + work > limit:
            where = "memory_limit" if self.memory_limit is not None else "half of the available memory"
            fixes = ["the per-batch default (exact=False)", "fewer samples or layers", "a larger memory_limit"]
            if self.projection_dim is None and per_sample:
                fixes.insert(1, "projection_dim=256 (a fixed-seed random projection of each layer's features)")
            held = (f"{gib(feats)} of buffered features ({per_sample} bytes per sample) + " if per_sample
                    else "the buffered features + ")
            raise ValueError(
                f"{self.name}: exact=True computes on all N={planned} samples at once: {held}about {gib(work)} of "
                f"working memory for the N×N matrices, more than the {gib(limit)} allowed on "
                f"{self.binding.device} ({where}). Use {', or '.join(fixes)}.")

    def _update_features(self, batch: Any) -> None:
        buf = self.buffer
        assert buf is not None
        if batch.features_a is None:
            raise RuntimeError(f"{self.name} with exact=True got no features from the engine")
        feats_a = batch.features_a
        feats_b = None if batch.same else batch.features_b
        first = buf.bytes_per_sample is None
        per = buf.measure(feats_a, feats_b)
        exp = self.binding.expected_samples
        planned = exp if exp is not None else buf.count + batch.n
        if first or exp is None:
            self._check_memory(planned, per)
        self.sizes.track(batch.n)
        buf.append(feats_a, feats_b, batch.n)

    def finish(self) -> None:
        buf = self.buffer
        if buf is None or buf.count == 0:
            return
        n = buf.count
        if n < self.min_n:
            buf.clear()
            raise ValueError(self.too_small(n) + " (all the samples the loader yielded)")
        xa, xb = buf.take(n)
        buf.clear()
        self._accumulate(self.feature_grid(xa, xa if xb is None else xb), n)
        self.sizes.irregular = False  # one set: batch sizes do not matter

    # ------------------------------------------------------------------ result
    def _mean_se(self) -> tuple[Tensor, Tensor]:
        total = float(self.n_samples)
        mean = self.state("wx") / total
        if self.n_used < 2:
            return mean, torch.full_like(mean, float("nan"))
        b = self.n_used
        ss = self.state("w2x2") - 2 * mean * self.state("w2x") + mean * mean * self.sum_n2
        return mean, torch.sqrt(ss.clamp_min(0) * b / (b - 1)) / total

    def compute(self) -> Computed:
        if self.n_used == 0:
            raise ValueError(f"{self.name}: no set had at least {self.min_n} samples; nothing was computed")
        messages = [m for m in [skipped_note(self.name, self.skipped, self.skipped_samples, self.min_n,
                                             self.min_reason, "use a batch size that divides the dataset or "
                                             "drop_last=True")] if m]
        if self.sizes.irregular and self.size_dependent:
            messages.append(
                f"{self.name}: batches of different sizes {sorted(self.sizes.used)} were averaged; kNN values depend on "
                "the number of samples the neighbours are drawn from, so use one batch size (drop_last=True) or "
                "exact=True")
        mean, se = self._mean_se()
        if self.exact:
            se = None  # one set of all N: no spread over sets to report (the result holds NaN)
        settings: dict[str, Any] = {"subset_sizes": sorted(self.sizes.used)}
        if self.buffer is not None:
            settings["buffer_bytes_per_sample"] = self.buffer.bytes_per_sample
        return Computed(mean, se, settings=settings, messages=messages)
