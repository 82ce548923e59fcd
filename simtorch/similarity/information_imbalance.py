"""InformationImbalance: the user class over
:class:`~simtorch.metrics.ii.InformationImbalanceMetric` (Glielmo, Zeni, Cheng, Csányi, Laio,
PNAS Nexus 2022), with its two plots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..metrics.ii import InformationImbalanceMetric
from ..plotting import plot_information_plane, reverse_result
from .base import BaseSimilarity

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["InformationImbalance", "InformationImbalanceMetric", "plot_information_plane"]


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
    metric_class = InformationImbalanceMetric

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
