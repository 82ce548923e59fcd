"""Information Imbalance (Glielmo, Zeni, Cheng, Csányi, Laio, PNAS Nexus 2022), streamed.

Δ(A→B) = (2/n²) Σ_{i, j : r^A_ij = 1} r^B_ij asks how well A's nearest neighbours predict
B's neighbourhoods: about 2/n when they agree, about 1 when A says nothing about B. The
distances come from the Gram matrices the engine already has, so by default each batch is
one subset and no activation is kept. ``subset_size`` and ``exact`` pool samples across
batches; for those, the features themselves are needed (a Gram of the union of batches is
not a function of the per-batch Grams), so the metric asks the engine for each layer's
(optionally randomly projected) features next to its Gram.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .. import functional as F
from ..engine import GramBatch, Metric, warn_skipped
from ..model import SimilarityModel
from ..result import SimilarityResult
from .accumulate import to_numpy
from .base import BaseSimilarity

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["InformationImbalance", "InformationImbalanceMetric", "plot_information_plane"]


class _Projector:
    """``x ↦ x P / sqrt(p)`` with a fixed-seed Gaussian ``P`` (d, p) per feature width d
    (Johnson–Lindenstrauss: distances kept within a factor 1 ± O(1/sqrt(p))). ``P`` is drawn
    on the CPU, so it is the same on every device; features no wider than p are kept as is.
    Non-float features become float32, half precision becomes float32."""

    def __init__(self, dim: int | None, seed: int) -> None:
        self.dim, self.seed = dim, seed
        self.cache: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}

    def __call__(self, x: Tensor) -> Tensor:
        if not x.dtype.is_floating_point or x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        d = x.shape[1]
        if self.dim is None or d <= self.dim:
            return x
        key = (d, x.dtype, x.device)
        if key not in self.cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + d)
            p = torch.randn(d, self.dim, generator=g, dtype=torch.float32) / math.sqrt(self.dim)
            self.cache[key] = p.to(device=x.device, dtype=x.dtype)
        return x @ self.cache[key]


def _available_bytes(device: torch.device) -> float:
    """Free memory on ``device`` (CUDA: free device memory; CPU: MemAvailable), or inf."""
    if device.type == "cuda":
        try:
            return float(torch.cuda.mem_get_info(device)[0])
        except Exception:  # pragma: no cover - depends on the driver
            return math.inf
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return math.inf


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


# ---------------------------------------------------------------------- metric


class InformationImbalanceMetric(Metric):
    """Streaming Information Imbalance: Δ per subset (a batch by default), averaged over
    subsets weighted by their size, with the standard error over subsets.

    Accumulated sums (all-reducible): ``Σ nΔ``, ``Σ n²Δ``, ``Σ n²Δ²`` per cell and direction,
    ``Σ n``, ``Σ n²``. The weighted mean is ``m = Σ nΔ / Σ n`` and its standard error
    ``sqrt(B/(B−1) · Σ n²(Δ − m)²) / Σ n`` over ``B`` subsets (the usual ``s/sqrt(B)`` for
    equal sizes). See :class:`InformationImbalance` for the options.
    """

    name = "II"
    needs_inputs = False
    counters = ("n_samples", "_n_used", "skipped", "skipped_samples", "_sum_n2")

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
        self.seed = int(seed)
        self.memory_limit = memory_limit
        self.needs_features = self.exact or subset_size is not None

    def settings(self) -> dict[str, Any]:
        return {"subset_size": self.subset_size, "projection_dim": self.projection_dim,
                "exact": self.exact, "seed": self.seed}

    def bind(self, model_a: SimilarityModel, model_b: SimilarityModel, device: torch.device) -> None:
        super().bind(model_a, model_b, device)
        la, lb = model_a.n_layers, model_b.n_layers
        z = lambda *s: torch.zeros(s, dtype=torch.float64, device=device)  # noqa: E731
        self.acc = {
            "fwd_wx": z(la, lb), "fwd_w2x": z(la, lb), "fwd_w2x2": z(la, lb),
            "rev_wx": z(la, lb), "rev_w2x": z(la, lb), "rev_w2x2": z(la, lb),
            "dup_a": z(la), "dup_b": z(lb),
        }
        self.n_samples = self._n_used = self.skipped = self.skipped_samples = self._sum_n2 = 0
        self._first_n: int | None = None
        self._prev_n: int | None = None
        self._sizes: set[int] = set()
        self._irregular = False
        self._buf_a: list[list[Tensor]] = [[] for _ in range(la)]
        self._buf_b: list[list[Tensor]] = [[] for _ in range(lb)]
        self._buffered = 0
        self._bytes_per_sample: int | None = None
        self.feature_transform = None
        if self.needs_features:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                raise ValueError(
                    "Information Imbalance with subset_size/exact buffers features per process and cannot be "
                    "all-reduced; run it on one process or use the per-batch default"
                )
            self.feature_transform = _Projector(self.projection_dim, self.seed)

    # ------------------------------------------------------------------ per batch
    def update(self, batch: GramBatch) -> None:
        if self.needs_features:
            self._update_features(batch)
            return
        if batch.n < 2:
            self.skipped += 1
            self.skipped_samples += batch.n
            return
        da = batch.cached(("ii_dist", "a"), lambda: F.ii_distances(batch.grams("a")))
        db = None if batch.same else batch.cached(("ii_dist", "b"), lambda: F.ii_distances(batch.grams("b")))
        fwd, rev = F.information_imbalance_distances(da, db)
        self._count_duplicates(da, db, batch.n)
        self._accumulate(fwd, rev, batch.n)

    def _count_duplicates(self, da: Tensor, db: Tensor | None, n_rows: int) -> None:
        # zeros beyond the n_rows self-distances mean coincident points; counted on the
        # device (no sync), reported once at the end
        dup_a = ((da == 0).sum((-2, -1)) > n_rows).to(torch.float64)
        self.acc["dup_a"] += dup_a
        self.acc["dup_b"] += dup_a if db is None else ((db == 0).sum((-2, -1)) > n_rows).to(torch.float64)

    def _accumulate(self, fwd: Tensor, rev: Tensor, n: int) -> None:
        w, w2 = float(n), float(n * n)
        for key, v in (("fwd", fwd), ("rev", rev)):
            self.acc[f"{key}_wx"] += w * v
            self.acc[f"{key}_w2x"] += w2 * v
            self.acc[f"{key}_w2x2"] += w2 * v * v
        self.n_samples += n
        self._sum_n2 += n * n
        self._n_used += 1
        if self._prev_n is not None and self._prev_n != self._first_n:
            self._irregular = True  # a subset of another size was not the last one
        if self._first_n is None:
            self._first_n = n
        self._prev_n = n
        self._sizes.add(n)

    # ------------------------------------------------------------------ buffered features
    def _update_features(self, batch: GramBatch) -> None:
        if batch.features_a is None:
            raise RuntimeError("Information Imbalance with subset_size/exact got no features from the engine")
        feats_a = batch.features_a
        feats_b = feats_a if batch.same else batch.features_b
        if self._bytes_per_sample is None:
            per = sum(f.shape[1] * f.element_size() for f in feats_a)
            if not batch.same:
                per += sum(f.shape[1] * f.element_size() for f in feats_b)
            self._bytes_per_sample = per
        self._check_memory(batch.n)
        for buf, f in zip(self._buf_a, feats_a):
            buf.append(f)
        if not batch.same:
            for buf, f in zip(self._buf_b, feats_b):
                buf.append(f)
        self._buffered += batch.n
        if self.subset_size is not None:
            while self._buffered >= self.subset_size:
                self._flush(self.subset_size)

    def _check_memory(self, n: int) -> None:
        """Refuse, before the buffer outgrows it, to hold more features than allowed."""
        per = self._bytes_per_sample or 0
        if self.exact:
            planned = self.expected_samples if self.expected_samples is not None else self._buffered + n
            what = f"exact=True buffers every sample's features: N={planned}"
        else:
            planned = self.subset_size + n  # type: ignore[operator]
            what = f"subset_size={self.subset_size} buffers up to {planned} samples' features"
        need = planned * per
        limit = self.memory_limit if self.memory_limit is not None else _available_bytes(self.device) / 2
        if need > limit:
            fixes = ["subset_size=... to pool fewer samples", "a larger memory_limit"]
            if self.projection_dim is None:
                fixes.insert(0, "projection_dim=256 (a fixed-seed random projection of each layer's features)")
            raise ValueError(
                f"Information Imbalance: {what} × {per} bytes per sample = {_gib(need)}, more than the "
                f"{_gib(limit)} allowed on {self.device} ("
                f"{'memory_limit' if self.memory_limit is not None else 'half of the available memory'}). "
                f"Pass {', or '.join(fixes)}."
            )

    def _take(self, buf: list[list[Tensor]], k: int) -> list[Tensor]:
        """Pop the first ``k`` buffered samples of every layer."""
        out = []
        for i, chunks in enumerate(buf):
            x = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
            out.append(x[:k])
            buf[i] = [x[k:]] if x.shape[0] > k else []
        return out

    def _flush(self, k: int) -> None:
        xa = self._take(self._buf_a, k)
        xb = None if self.model_b is self.model_a else self._take(self._buf_b, k)
        self._buffered -= k
        fwd, rev = self._ii_features(xa, xb)
        self._accumulate(fwd, rev, k)

    def _ii_features(self, xa: list[Tensor], xb: list[Tensor] | None) -> tuple[Tensor, Tensor]:
        """Δ grids of one subset from its features, in row blocks: memory O(L · m · N) for
        ``m`` rows at a time, never a full ``(L, N, N)`` stack for large N."""
        n = xa[0].shape[0]

        def prep(xs: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
            out = []
            for x in xs:
                xc = x - x.mean(dim=0, keepdim=True)
                out.append((xc, (xc.to(torch.float64) ** 2).sum(-1)))
            return out

        pa = prep(xa)
        pb = None if xb is None else prep(xb)
        block = F.ii_row_block(n, len(pa) + (0 if pb is None else len(pb)))
        fwd = rev = None
        for start in range(0, n, block):
            rows = torch.arange(start, min(n, start + block), device=xa[0].device)
            da = torch.stack([F.ii_distance_rows(xc, sq, rows) for xc, sq in pa])
            db = None if pb is None else torch.stack([F.ii_distance_rows(xc, sq, rows) for xc, sq in pb])
            f, r = F.imbalance_sums(da, db, rows)
            self._count_duplicates(da, db, rows.shape[0])
            fwd, rev = (f, r) if fwd is None else (fwd + f, rev + r)
        # one rounding (the sums are exact integers or halves when there are no ties): Δ(X, X) is
        # exactly the float nearest 2/n
        return fwd * 2.0 / (n * n), rev * 2.0 / (n * n)  # type: ignore[operator]

    # ------------------------------------------------------------------ result
    def _finish_buffer(self) -> None:
        if not self.needs_features or self._buffered == 0:
            return
        k = self._buffered
        if k >= 2:
            self._flush(k)
        else:
            self.skipped += 1
            self.skipped_samples += k
            self._buffered = 0
        self._buf_a = [[] for _ in self._buf_a]
        self._buf_b = [[] for _ in self._buf_b]

    def _mean_se(self, key: str) -> tuple[Tensor, Tensor]:
        total = float(self.n_samples)
        mean = self.acc[f"{key}_wx"] / total
        if self._n_used < 2:
            return mean, torch.full_like(mean, float("nan"))
        b = self._n_used
        ss = self.acc[f"{key}_w2x2"] - 2 * mean * self.acc[f"{key}_w2x"] + mean * mean * self._sum_n2
        return mean, torch.sqrt(ss.clamp_min(0) * b / (b - 1)) / total

    def _warn(self) -> None:
        if self._irregular:
            warnings.warn(
                f"II: subsets (batches) of different sizes {sorted(self._sizes)} were averaged; Δ of an informative "
                "pair shrinks as subsets grow, so use one batch size (drop_last=True, or subset_size=...)",
                UserWarning,
                stacklevel=3,
            )
        sides = [(self.model_a, self.acc["dup_a"])]
        if self.model_b is not self.model_a:
            sides.append((self.model_b, self.acc["dup_b"]))
        for model, dup in sides:
            bad = [name for name, c in zip(model.layer_names, dup.tolist()) if c > 0]
            if bad:
                warnings.warn(
                    f"II: {model.model_name} layers {bad} have coincident samples (zero distances); tied nearest "
                    "neighbours share the weight and tied distances get their average rank",
                    UserWarning,
                    stacklevel=3,
                )

    def result(self) -> SimilarityResult:
        self._finish_buffer()
        warn_skipped(self.name, self.skipped, self.skipped_samples, 2, "a single sample has no neighbour")
        if self._n_used == 0:
            raise ValueError(f"{self.name}: no batch had at least 2 samples; nothing was computed")
        self._warn()
        fwd, fwd_se = self._mean_se("fwd")
        rev, rev_se = self._mean_se("rev")
        settings = self.settings()
        settings["subset_sizes"] = sorted(self._sizes)
        if self.needs_features:
            settings["buffer_bytes_per_sample"] = self._bytes_per_sample
        return self.make_result(fwd, fwd_se, {"reverse": to_numpy(rev), "reverse_stderr": to_numpy(rev_se)},
                                settings=settings)

    def state_tensors(self) -> list[Tensor]:
        return [self.acc[k] for k in sorted(self.acc)]


# ---------------------------------------------------------------------- class API


class InformationImbalance(BaseSimilarity):
    """Information Imbalance Δ(A_i → B_j) between every layer pair of two models.

    Glielmo, Zeni, Cheng, Csányi, Laio, *Ranking the information content of distance
    measures*, PNAS Nexus 1(2), 2022. With ``r^B_ij`` the rank of sample ``j`` among sample
    ``i``'s neighbours by Euclidean distance in representation B (self excluded, nearest
    = 1)::

        Δ(A→B) = (2/n²) Σ_{i, j : r^A_ij = 1} r^B_ij

    Asymmetric: Δ(A→B) small means A's neighbourhoods predict B's (A carries B's
    information). The minimum is 2/n (A = B); independent representations give about 1.
    Distances come from each layer's Gram of centred features:
    ``D = diag(G) + diag(G)ᵀ − 2G`` (clamped at 0), so the default needs no second look at
    the activations.

    Ties (deterministic, independent of sort stability): when several neighbours are
    equally nearest in A they share the weight of ``i``'s term; tied distances in B get the
    average of the ranks they span (counted, not argsorted). Squared distances below the
    resolution of the Gram, about ``1e-6 · (‖xᵢ‖² + ‖xⱼ‖²)`` for the engine's float32
    Grams, are treated as 0 (coincident samples, which give a warning); other ties are
    exact equalities of the computed distances.

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
    device : str or torch.device, optional
    subset_size : int, optional
        Default: each batch is one subset (as DADApy's ``subset_size``), Δ per batch and the
        batch-size-weighted mean over batches. With ``subset_size``, consecutive batches are
        pooled into subsets of exactly this many samples (the remainder forms a last, smaller
        subset). Memory: the features of up to ``subset_size + batch_size`` samples,
        ``4 · Σ_layers min(d_l, projection_dim)`` bytes per sample (both models), plus row
        blocks of the ``subset_size``-wide distance matrices (a few × 32 MiB).
    projection_dim : int, optional
        With ``subset_size`` or ``exact``: project each layer's flattened features with a
        fixed-seed Gaussian matrix to this many dimensions before buffering
        (Johnson–Lindenstrauss; distances kept to a relative error of about
        ``1/sqrt(projection_dim)``, so near-ties may reorder). Layers no wider are kept as is.
    exact : bool
        Full-data Δ: every sample is one subset. All features are buffered
        (``4 · N · Σ_layers min(d_l, projection_dim)`` bytes), which is checked at the first
        batch against ``memory_limit`` (default: half of the memory available on the
        device) using the loader's dataset size; when it would not fit, a ``ValueError``
        suggests ``projection_dim`` or ``subset_size``. The value equals the definition
        above on all N samples to float precision.
    seed : int
        Seed of the random projection.
    memory_limit : int, optional
        Bytes the feature buffer may use.
    **kwargs
        ``progress``, ``input_key``, ``input_fn``, ``autocast`` (see :class:`BaseSimilarity`).

    Notes
    -----
    ``compute`` returns the ``(La, Lb)`` grid of Δ(A_i → B_j); ``result.extras["reverse"]``
    holds Δ(B_j → A_i) aligned the same way (with ``"reverse_stderr"``), and
    ``result.stderr`` the standard error over subsets. Δ of an informative pair shrinks as
    the subsets grow (more candidates between a point and its true neighbour), so compare
    values computed with the same batch or subset size; a warning says when subsets of
    different sizes (other than the last) were averaged. Single-sample batches are skipped.
    """

    similarity_name = "II"

    def __init__(
        self,
        sim_model1: SimilarityModel,
        sim_model2: SimilarityModel,
        device: str | torch.device | None = None,
        *,
        subset_size: int | None = None,
        projection_dim: int | None = None,
        exact: bool = False,
        seed: int = 0,
        memory_limit: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(sim_model1, sim_model2, device, **kwargs)
        self._options = dict(subset_size=subset_size, projection_dim=projection_dim, exact=exact, seed=seed,
                             memory_limit=memory_limit)
        InformationImbalanceMetric(**self._options)  # validate now, not at compute()

    def _make_metric(self) -> InformationImbalanceMetric:
        return InformationImbalanceMetric(**self._options)

    def plot_similarity(self, title: str | None = None, *args: Any, direction: str = "forward",
                        **kwargs: Any) -> "Axes":
        """Heatmap of Δ(A→B) (``direction="forward"``) or Δ(B→A) (``"reverse"``), rows
        model 1's layers and columns model 2's in both cases; other arguments as
        :meth:`BaseSimilarity.plot_similarity`."""
        if direction not in ("forward", "reverse"):
            raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
        if direction == "reverse" and self.result is not None:
            res = self.result
            kept = res
            self.result = reverse_result(res)
            try:
                if title is None:
                    title = f"II (reverse): {res.model_b} → {res.model_a}"
                return super().plot_similarity(title, *args, **kwargs)
            finally:
                self.result = kept
        return super().plot_similarity(title, *args, **kwargs)

    def plot_plane(self, pairs: Sequence[tuple[Any, Any]] | None = None, **kwargs: Any) -> "Axes":
        """The information imbalance plane of chosen layer pairs: see
        :func:`plot_information_plane`."""
        if self.result is None:
            raise RuntimeError("nothing to plot yet: call .compute(dataloader) first")
        return plot_information_plane(self.result, pairs, **kwargs)


def reverse_result(res: SimilarityResult) -> SimilarityResult:
    """The Δ(B_j → A_i) grid of an Information Imbalance result as its own result (same
    orientation: rows are model A's layers)."""
    return SimilarityResult(
        matrix=res.extras["reverse"], stderr=res.extras.get("reverse_stderr"),
        layers_a=res.layers_a, layers_b=res.layers_b, model_a=res.model_a, model_b=res.model_b,
        metric="II (reverse)", settings=dict(res.settings), n_samples=res.n_samples, n_batches=res.n_batches,
        n_skipped=res.n_skipped, skipped_samples=res.skipped_samples,
    )


def plot_information_plane(
    result: SimilarityResult,
    pairs: Sequence[tuple[Any, Any]] | None = None,
    *,
    ax: "Axes | None" = None,
    title: str | None = None,
    annotate: bool = True,
    save_path: str | os.PathLike | None = None,
) -> "Axes":
    """Scatter Δ(A→B) (x) against Δ(B→A) (y) for chosen layer pairs (Glielmo et al. 2022).

    Near (0, 0): equivalent information; low x, high y: A carries B's information and
    more; near (1, 1): unrelated. ``pairs`` are ``(layer_a, layer_b)`` by name or index;
    default: the diagonal pairs ``(i, i)`` of the grid (every pair if it is not square
    is too many to read, so the diagonal up to the shorter side).
    """
    from ..plotting import _pyplot

    if "reverse" not in result.extras:
        raise ValueError("plot_information_plane needs an Information Imbalance result (with extras['reverse'])")

    def index(names: list[str], key: Any) -> int:
        if isinstance(key, (int, np.integer)):
            return int(key)
        if key not in names:
            raise ValueError(f"unknown layer {key!r}; layers are {names}")
        return names.index(key)

    if pairs is None:
        pairs = [(i, i) for i in range(min(len(result.layers_a), len(result.layers_b)))]
    idx = [(index(result.layers_a, a), index(result.layers_b, b)) for a, b in pairs]
    x = np.array([result.matrix[i, j] for i, j in idx])
    y = np.array([result.extras["reverse"][i, j] for i, j in idx])
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1.05], [0, 1.05], color="0.7", lw=1, ls="--")
    ax.scatter(x, y, c=np.arange(len(idx)), cmap="viridis", zorder=3)
    if annotate:
        for (i, j), xi, yi in zip(idx, x, y):
            ax.annotate(f"{result.layers_a[i]}|{result.layers_b[j]}", (xi, yi), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, 1.05)
    ax.set_aspect("equal")
    ax.set_xlabel(f"Δ({result.model_a} → {result.model_b})")
    ax.set_ylabel(f"Δ({result.model_b} → {result.model_a})")
    ax.set_title(title or f"Information imbalance plane: {result.model_a} vs {result.model_b}")
    if save_path is not None:
        path = Path(save_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ax.figure.savefig(path, dpi=150, bbox_inches="tight")
    return ax
