"""CKA: the user class over :class:`~simtorch.metrics.cka.CKAMetric` (Kornblith et al. 2019,
streamed with the minibatch estimator of Nguyen et al. 2021)."""

from __future__ import annotations

from ..metrics.cka import CKAMetric, HSICMetric
from .base import BaseSimilarity

__all__ = ["CKA", "CKAMetric", "HSICMetric"]


class CKA(BaseSimilarity):
    """Centered Kernel Alignment between every layer pair of two models.

    ``CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))`` (Kornblith, Norouzi, Lee,
    Hinton, *Similarity of Neural Network Representations Revisited*, ICML 2019), streamed
    with the minibatch estimator of Nguyen, Raghu, Kornblith (ICLR 2021): the three HSIC
    terms are summed over batches and the ratio is taken once at the end.

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
    device : str or torch.device, optional
    kernel : ``"linear"`` or ``"rbf"``
        RBF uses ``σ = sigma_frac · sqrt(median squared distance)`` per batch and layer.
    unbiased : bool
        HSIC₁ of Song et al. (2012) (default): the estimate does not drift with batch size.
        ``False`` gives HSIC₀ (biased; it inflates CKA for small batches). Batches with
        fewer than 4 (HSIC₁) or 2 (HSIC₀) samples are skipped with a warning.
    sigma_frac : float
        RBF bandwidth as a fraction of the median distance.
    **kwargs
        ``progress``, ``input_key``, ``input_fn`` (see :class:`BaseSimilarity`).

    Notes
    -----
    ``compute`` returns the numpy grid, also kept as ``sim_matrix``; ``result`` holds the
    :class:`~simtorch.result.SimilarityResult` with a jackknife standard error per cell.
    Unlike simtorch 0.2.1, values are not averages of per-batch CKA (which depend on the
    batch size) and the default estimator is unbiased.
    """

    similarity_name = "CKA"
    metric_class = CKAMetric
    positional = ("kernel", "unbiased", "sigma_frac")
