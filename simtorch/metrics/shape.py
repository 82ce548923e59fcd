"""Measures computed once over all N samples: the shared skeleton, and Procrustes shape
metrics (Williams, Kunz, Kornblith, Linderman, NeurIPS 2021; netrep's ``LinearMetric``).

They are no per-batch Gram sums, so the whole loader is used, by one of two exact routes
chosen at the first batch (where each layer's width ``d`` is first seen, before any second
forward pass): **buffer** each layer's (optionally projected) features, ``N · Σ min(d, p) ·
4`` bytes, and compute the grid at the end with the batched grid functions of
:mod:`simtorch.functional`; or, not for PWCCA, **moments**: float64 ``Σx``, ``Σxᵀx`` per layer
and ``Σx_aᵀx_b`` per pair (:class:`~simtorch.functional.GridMoments`), declared states
(all-reduced, saved, resumed), ``8 · (D_a·D_b + Σ d_i² + Σ d_j² + D_a + D_b)`` bytes whatever
N. ``method="auto"`` takes the moments when smaller than the buffer of the loader's N (N
unknown: when they fit; distributed: always); the route is checked against ``memory_limit``
at that first batch. No per-batch estimate: stderr is NaN. User docs: :mod:`simtorch.similarity.shape`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import functional as F
from .base import Computed, LayerNote, Metric, Needs
from .buffer import FeatureBuffer, Projector, available_bytes, gib
from .registry import register

__all__ = ["AllSamplesMetric", "ProcrustesMetric", "ProcrustesEuclideanMetric", "ProcrustesCosineMetric"]

METHODS = ("auto", "buffer", "moments")
_PATHS = (None, "buffer", "moments")  # the route, as a state_dict code


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _own_storage(f: Tensor) -> Tensor:
    """``f``, or a compact copy of a view into a larger tensor (the buffer keeps only ``f``)."""
    return f.clone() if f.untyped_storage().nbytes() > f.numel() * f.element_size() else f


class AllSamplesMetric(Metric):
    """Skeleton of a measure computed once on all N samples (routes and rule: module docstring).
    Subclasses give :meth:`feature_grid` (a :class:`~simtorch.functional.ShapeGrid` from float64
    features) and, when :attr:`supports_moments`, :meth:`moment_grid`."""

    supports_moments: ClassVar[bool] = True
    error_bars = None  # one whole-data value: no error over batches to estimate
    #: the moment route keeps only the diagonal of each ``Σxᵀx`` (Procrustes, alpha = 1)
    diagonal_moments: bool = False
    #: float64 ``(N, r)`` factors per layer the end computation keeps (for its memory check)
    factors_per_layer: ClassVar[int] = 1

    def __init__(self, projection_dim: int | None = None, seed: int = 0, memory_limit: int | None = None,
                 method: str = "auto") -> None:
        if projection_dim is not None and (isinstance(projection_dim, bool) or not isinstance(projection_dim, int)
                                           or projection_dim < 1):
            raise ValueError(f"projection_dim must be a positive int or None, got {projection_dim!r}")
        if memory_limit is not None and memory_limit <= 0:
            raise ValueError(f"memory_limit must be a positive number of bytes or None, got {memory_limit!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if method == "moments" and not self.supports_moments:
            raise ValueError(f"{self.name} has no exact moment form (its weights take |·| per sample); "
                             "use method='buffer' or 'auto'")
        self.projection_dim = projection_dim
        self.seed = int(seed)
        self.memory_limit = memory_limit
        self.method = method
        # the same Projector as Information Imbalance's exact mode: equal settings share features
        self._projector = Projector(projection_dim, self.seed)

    def needs(self) -> Needs:
        return Needs(features=self._projector)

    def settings(self) -> dict[str, Any]:
        return {"projection_dim": self.projection_dim, "seed": self.seed, "method": self.method}

    def setup(self) -> None:
        b = self.binding
        self.path: str | None = None
        self.widths_a: tuple[int, ...] | None = None
        self.widths_b: tuple[int, ...] | None = None
        self.memory_bytes = 0
        self.buffer: FeatureBuffer | None = None
        self._grid: F.ShapeGrid | None = None
        if b.expected_samples is not None and b.expected_samples < 2:
            raise ValueError(f"{self.name} needs at least 2 samples over the whole loader, which holds "
                             f"{b.expected_samples}")
        if _distributed() and (self.method == "buffer" or not self.supports_moments):
            raise ValueError(f"{self.name} with buffered features cannot be all-reduced across processes; run it on "
                             "one process" + (" or use method='moments'" if self.supports_moments else ""))

    # ------------------------------------------------------------------ memory and route
    def _limit(self) -> tuple[float, str]:
        given = self.memory_limit is not None
        return ((float(self.memory_limit), "memory_limit") if given  # type: ignore[arg-type]
                else (available_bytes(self.binding.device) / 2, "half of the available memory"))

    def _moment_bytes(self) -> int:
        return 8 * F.GridMoments.floats(self.widths_a, self.widths_b, self.diagonal_moments, self.binding.same)

    def work_bytes(self, n: int) -> float:
        """Bytes of the end computation beyond the buffer, for ``n`` samples: float64 layers,
        their SVD factors, and one layer's SVD (centred copy, ``Vᵀ``, LAPACK's copy, ``U``)."""
        widths = list(self.widths_a) + ([] if self.binding.same else list(self.widths_b))
        big = max(widths)
        return 8.0 * (n * sum(widths) + self.factors_per_layer * n * sum(min(n, d) for d in widths)
                      + 3 * n * big + 5 * min(n, big) ** 2)

    def _refuse(self, what: str, need: float) -> None:
        limit, where = self._limit()
        if need <= limit:
            return
        fixes = ["fewer layers", "a larger memory_limit"]
        if self.projection_dim is None:
            fixes.insert(0, "projection_dim=256 (a fixed-seed random projection of each layer's features)")
        raise ValueError(f"{self.name}: {what}, more than the {gib(limit)} allowed on {self.binding.device} ({where}). "
                         f"Pass {', or '.join(fixes)}.")

    def _check_buffer(self, planned: int) -> None:
        per = self.buffer.bytes_per_sample or 0  # type: ignore[union-attr]
        work = self.work_bytes(planned)
        self._refuse(f"buffering all N={planned} samples takes {gib(planned * per)} ({per} bytes per sample: "
                     f"N · Σ_layers min(d, projection_dim) · 4) plus about {gib(work)} for the float64 computation "
                     "at the end", planned * per + work)

    def _choose(self, feats_a: list[Tensor], feats_b: list[Tensor] | None) -> None:
        """At the first batch: the layer widths, the route, and the memory check."""
        b = self.binding
        self.widths_a = tuple(int(f.shape[1]) for f in feats_a)
        self.widths_b = self.widths_a if b.same else tuple(int(f.shape[1]) for f in feats_b)  # type: ignore[union-attr]
        self.buffer = FeatureBuffer(b.layers_a, b.layers_b, b.same, b.device, self.name, self.projection_dim,
                                    self.memory_limit)
        per = self.buffer.measure(feats_a, feats_b)
        mom = self._moment_bytes() if self.supports_moments else math.inf
        n_all = b.expected_samples
        if self.method != "auto":
            path = self.method
        elif not self.supports_moments:
            path = "buffer"
        elif _distributed():
            path = "moments"
        elif n_all is not None:
            path = "moments" if mom < n_all * per else "buffer"
        else:
            path = "moments" if mom <= self._limit()[0] else "buffer"
        if path == "moments":
            self.buffer = None
            self._refuse(f"the exact moment sums take {gib(mom)} (Σx_aᵀx_b of every layer pair) and about "
                         f"{gib(3 * mom)} while computing the grid", 3 * mom)
            self._declare_moments()
            self.memory_bytes = int(mom)
        else:
            if n_all is not None:
                self._check_buffer(n_all)
            self.memory_bytes = int((n_all or 0) * per)
        self.path = path

    # ------------------------------------------------------------------ moment states
    def _declare_moments(self) -> None:
        wa, wb = self.widths_a, self.widths_b
        sq = (lambda w: sum(w)) if self.diagonal_moments else (lambda w: sum(d * d for d in w))
        shapes = ({"mom_sum_a": (sum(wa),), "mom_cross": (sum(wa), sum(wa))} if self.binding.same else
                  {"mom_sum_a": (sum(wa),), "mom_sum_b": (sum(wb),), "mom_sq_a": (sq(wa),), "mom_sq_b": (sq(wb),),
                   "mom_cross": (sum(wa), sum(wb))})
        # declared at the first batch, inside the engine's inference mode: as normal tensors,
        # so the all-reduce and load_state_dict can update them in place
        with torch.inference_mode(False):
            for name, shape in shapes.items():
                self.add_state(name, shape)

    def _add_sq(self, name: str, feats: list[Tensor]) -> None:
        sizes = [x.shape[1] if self.diagonal_moments else x.shape[1] ** 2 for x in feats]
        for part, x in zip(self.state(name).split(sizes), feats):
            if self.diagonal_moments:
                part.add_((x * x).sum(0))
            else:
                part.view(x.shape[1], x.shape[1]).addmm_(x.T, x)

    def _add_moments(self, feats_a: list[Tensor], feats_b: list[Tensor] | None) -> None:
        xa = [f.to(torch.float64) for f in feats_a]
        ca = torch.cat(xa, dim=1)
        self.state("mom_sum_a").add_(ca.sum(0))
        if self.binding.same:
            self.state("mom_cross").addmm_(ca.T, ca)
            return
        xb = [f.to(torch.float64) for f in feats_b]  # type: ignore[union-attr]
        cb = torch.cat(xb, dim=1)
        self.state("mom_sum_b").add_(cb.sum(0))
        self._add_sq("mom_sq_a", xa)
        self._add_sq("mom_sq_b", xb)
        self.state("mom_cross").addmm_(ca.T, cb)

    def grid_moments(self) -> F.GridMoments:
        """The moments summed so far as a :class:`~simtorch.functional.GridMoments`."""
        n, wa, wb = int(self.n_samples), self.widths_a, self.widths_b
        if self.binding.same:
            return F.GridMoments.from_self(n, wa, self.state("mom_sum_a"), self.state("mom_cross"),
                                           self.diagonal_moments)

        def split(name: str, widths: tuple[int, ...]) -> tuple[Tensor, ...]:
            shapes = [(d,) if self.diagonal_moments else (d, d) for d in widths]
            parts = self.state(name).split([math.prod(sh) for sh in shapes])
            return tuple(p.view(sh) for p, sh in zip(parts, shapes))

        return F.GridMoments(n, wa, wb, self.state("mom_sum_a"), self.state("mom_sum_b"), split("mom_sq_a", wa),
                             split("mom_sq_b", wb), self.state("mom_cross"))

    @property
    def resumable(self) -> bool:
        """Whether the declared states are all it keeps (the engine's save/resume and its
        NaN roll-back ask): the moment route; ``method="auto"`` decides at the first batch."""
        return getattr(self, "path", None) == "moments" or self.method == "moments"

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()  # + the layout, as tensors (a state file keeps tensors and ints)
        sd["layout.path"] = torch.tensor(_PATHS.index(self.path))
        sd["layout.widths_a"] = torch.tensor(self.widths_a or (), dtype=torch.int64)
        sd["layout.widths_b"] = torch.tensor(self.widths_b or (), dtype=torch.int64)
        return sd

    def load_state_dict(self, sd: Any) -> None:
        sd = dict(sd)
        path = _PATHS[int(sd.pop("layout.path", 0))]
        wa, wb = (tuple(int(w) for w in sd.pop(f"layout.widths_{s}", ())) for s in "ab")
        if path == "buffer" and int(sd.get("counter.n_samples", 0)):
            raise ValueError(f"{self.name}: a run on buffered features cannot be resumed (the features are not part "
                             "of the saved state); use method='moments'")
        if path is None:  # saved before the first batch: back to no route at all
            self._states = {k: v for k, v in self._states.items() if not k.startswith("mom_")}
            self.path, self.widths_a, self.widths_b, self.buffer = None, None, None, None
        elif path == "moments" and self.path != "moments":
            self.path, self.widths_a, self.widths_b = path, wa, wb
            self._declare_moments()
            self.memory_bytes = self._moment_bytes()
        super().load_state_dict(sd)

    # ------------------------------------------------------------------ per batch
    def update(self, batch: Any) -> None:
        feats_a = batch.features("a")
        feats_b = None if batch.same else batch.features("b")
        if feats_a is None:
            raise RuntimeError(f"{self.name} got no features from the engine")
        if self.path is None:
            self._choose(feats_a, feats_b)
        if self.path == "moments":
            self._add_moments(feats_a, feats_b)
        else:
            buf = self.buffer
            assert buf is not None
            if self.binding.expected_samples is None:  # N unknown: checked as the buffer grows
                self._check_buffer(buf.count + batch.n)
            buf.append([_own_storage(f) for f in feats_a],
                       None if feats_b is None else [_own_storage(f) for f in feats_b], batch.n)
        self.count(batch.n)

    def _buffered(self, pop: bool) -> tuple[list[Tensor], list[Tensor]]:
        """Every buffered layer as float64 ``(N, d)``, one layer at a time (``pop``: emptying
        the buffer as it goes, so the peak is the float64 copies plus one float32 layer)."""
        buf = self.buffer
        assert buf is not None

        def side(chunks_list: list[list[Tensor]]) -> list[Tensor]:
            out = []
            for i in range(len(chunks_list)):
                chunks = chunks_list[i]
                x = torch.empty(sum(c.shape[0] for c in chunks), chunks[0].shape[1], dtype=torch.float64,
                                device=chunks[0].device)
                for part, c in zip(x.split([c.shape[0] for c in chunks]), chunks):
                    part.copy_(c)  # no float32 concatenation in between
                out.append(x)
                if pop:
                    chunks_list[i] = chunks = []
            return out

        xa = side(buf.a)
        xb = xa if buf.same else side(buf.b)
        if pop:
            buf.clear()
        return xa, xb

    def finish(self) -> None:
        if self.path == "buffer" and self._grid is None and self.n_samples >= 2:
            self._grid = self.feature_grid(*self._buffered(pop=True))

    # ------------------------------------------------------------------ result
    def feature_grid(self, xa: list[Tensor], xb: list[Tensor]) -> F.ShapeGrid:
        raise NotImplementedError

    def moment_grid(self, gm: F.GridMoments) -> F.ShapeGrid:
        raise NotImplementedError

    def layer_notes(self, grid: F.ShapeGrid) -> list[LayerNote]:
        """Notes naming the layers whose cells are NaN (default: constant features)."""
        sides = (("a", grid.bad_a), ("b", grid.bad_b))[: 1 if self.binding.same else 2]
        return [LayerNote(side, bad.tolist(), self.bad_message()) for side, bad in sides
                if bool(bad.any()) and bool(grid.invalid.any())]

    def bad_message(self) -> str:
        """The note for layers flagged in ``bad_a``/``bad_b`` (``{model}``, ``{layers}`` kept)."""
        return (f"{self.name}: {{model}} layers {{layers}} have constant features (no variance after centring over "
                "all samples); their cells are NaN (0/0), not a made-up number")

    def extras(self, grid: F.ShapeGrid) -> dict[str, Any]:  # noqa: ARG002
        return {}

    def compute(self) -> Computed:
        if self.n_samples < 2:
            raise ValueError(f"{self.name}: needs at least 2 samples in all, got {self.n_samples}; nothing computed")
        if self.path == "moments":
            grid = self.moment_grid(self.grid_moments())
        elif self._grid is not None:
            grid = self._grid
        else:  # a partial result (interrupted before finish): the samples buffered so far
            grid = self.feature_grid(*self._buffered(pop=False))
        if self.path == "buffer" and self.buffer is not None:
            self.memory_bytes = int(self.n_samples * (self.buffer.bytes_per_sample or 0))
        settings: dict[str, Any] = {"path": self.path, "memory_bytes": self.memory_bytes,
                                    "widths_a": list(self.widths_a or ()), "widths_b": list(self.widths_b or ())}
        return Computed(grid.values, torch.full_like(grid.values, float("nan")), self.extras(grid),
                        settings=settings, notes=self.layer_notes(grid))


# ====================================================================== Procrustes
class ProcrustesMetric(AllSamplesMetric):
    """Procrustes shape metric over all N samples, as netrep's ``LinearMetric(alpha,
    center_columns=True, zero_pad=True)`` fitted and scored on the same data. Options as
    :class:`simtorch.Procrustes`; ``ProcrustesMetric(score=...)`` is an instance of the
    score's class (:class:`ProcrustesEuclideanMetric`, :class:`ProcrustesCosineMetric`), so
    that each class declares its direction and range."""

    key = "procrustes"
    name = "Procrustes"
    score: ClassVar[str] = "angular"
    symmetric = True
    direction = "distance"
    value_range = (0.0, math.pi / 2)
    invariances = frozenset({"orthogonal", "isotropic_scaling", "translation"})

    def __new__(cls, score: str | None = None, alpha: float = 1.0, projection_dim: int | None = None,
                seed: int = 0, memory_limit: int | None = None, method: str = "auto") -> "ProcrustesMetric":
        target = _PROCRUSTES.get(score if score is not None else cls.score)
        if target is None:
            raise ValueError(f"score must be 'angular', 'euclidean' or 'cosine', got {score!r}")
        if not issubclass(target, cls):
            raise ValueError(f"{cls.__name__} has score={cls.score!r}; use ProcrustesMetric(score={score!r})")
        return super().__new__(target)

    def __init__(self, score: str | None = None, alpha: float = 1.0, projection_dim: int | None = None,
                 seed: int = 0, memory_limit: int | None = None, method: str = "auto") -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (1: rotations only, 0: CCA), got {alpha!r}")
        super().__init__(projection_dim, seed, memory_limit, method)
        self.alpha = float(alpha)
        self.diagonal_moments = self.alpha > 1.0 - F.NETREP_EIGVAL_TOL
        if self.alpha < 1.0:  # partial whitening is not scale-equivariant; full whitening maps any A to I
            full = self.alpha == 0.0 and self.score != "euclidean"
            self.invariances = frozenset({"orthogonal", "translation"} | ({"isotropic_scaling", "invertible_linear"}
                                                                           if full else set()))

    def settings(self) -> dict[str, Any]:
        return {"score": self.score, "alpha": self.alpha, **super().settings()}

    def feature_grid(self, xa: list[Tensor], xb: list[Tensor]) -> F.ShapeGrid:
        return F.procrustes_grid(xa, xb, score=self.score, alpha=self.alpha)  # type: ignore[arg-type]

    def moment_grid(self, gm: F.GridMoments) -> F.ShapeGrid:
        return F.procrustes_grid_from_moments(gm, score=self.score, alpha=self.alpha)  # type: ignore[arg-type]


class ProcrustesEuclideanMetric(ProcrustesMetric):
    """Procrustes with ``score="euclidean"``: ``‖X_c U − Y_c V‖_F``, a distance in feature units."""

    key = "procrustes_euclidean"
    name = "Procrustes euclidean"
    score = "euclidean"
    value_range = None
    invariances = frozenset({"orthogonal", "translation"})


class ProcrustesCosineMetric(ProcrustesMetric):
    """Procrustes with ``score="cosine"``: ``‖X_cᵀY_c‖_* / (‖X_c‖_F ‖Y_c‖_F)``, a similarity
    in [0, 1] that reads like CKA (anatome's ``orthogonal_procrustes_distance`` is 1 − it)."""

    key = "procrustes_cosine"
    name = "Procrustes cosine"
    score = "cosine"
    direction = "similarity"
    value_range = (0.0, 1.0)


_PROCRUSTES: dict[str, type[ProcrustesMetric]] = {
    "angular": ProcrustesMetric, "euclidean": ProcrustesEuclideanMetric, "cosine": ProcrustesCosineMetric}
for _cls in _PROCRUSTES.values():
    register(_cls)
