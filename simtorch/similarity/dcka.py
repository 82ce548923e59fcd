"""DeltaCKA: the user class over :class:`~simtorch.metrics.dcka.DeltaCKAMetric` (Cui, Kumar,
Marttinen, Kaski, NeurIPS 2022)."""

from __future__ import annotations

from ..metrics.dcka import DeltaCKAMetric, default_confounder
from .base import BaseSimilarity

__all__ = ["DeltaCKA", "DeltaCKAMetric", "default_confounder"]


class DeltaCKA(BaseSimilarity):
    """Deconfounded CKA between every layer pair of two models.

    Cui, Kumar, Marttinen, Kaski, *Deconfounded Representation Similarity for Comparison
    of Neural Networks*, NeurIPS 2022. With ``K`` a layer's centred Gram, ``K⁰`` the
    confounder's (the inputs flattened and column-centred, by default), each layer is
    regressed on the confounder, ``R = K − β K⁰`` with ``β = HSIC(K, K⁰)/HSIC(K⁰, K⁰)`` (for
    HSIC₀ exactly the least-squares slope of ``vec(K)`` on ``[1, vec(K⁰)]``), and
    ``dCKA = CKA(R_K, R_L)``. Without the PSD projection this is the partial correlation,
    with ``S_AB = HSIC(A, B)``::

        dCKA = (S_KL − S_K0·S_L0/S_00) / sqrt((S_KK − S_K0²/S_00)(S_LL − S_L0²/S_00))

    Streaming: the six kinds of HSIC terms are summed over batches (each with its own
    ``1/(n−1)²`` or ``1/(n(n−3))``, as in minibatch CKA) and the closed form is applied once,
    so β is pooled over all batches; this costs little beyond CKA.

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
    device : str or torch.device, optional
    remove_negative_eig : bool
        simtorch 0.2.1's option: per batch, β from that batch and the residual projected onto
        the PSD cone (negative eigenvalues set to 0, one batched ``eigh`` over the layer
        stack); the projected residuals then go into the sum-then-ratio HSIC accumulation.
        Unlike the default, this variant depends on the batch size (the projection is not
        linear, so it does not commute with pooling batches).
    unbiased : bool
        ``False`` (default): HSIC₀, as the paper and simtorch 0.2.1. HSIC₁ (``True``, Song et
        al. 2012) removes the small-batch bias, so the default-variant value does not drift
        with batch size; β is then taken in the HSIC₁ inner product. Note that :class:`CKA`
        defaults to ``unbiased=True``: compare dCKA with CKA of the same estimator.
    confounder_fn : callable, optional
        ``confounder_fn(inputs) -> (n, p)`` tensor, called on each batch's model input (on
        the similarity device) to build the confounder, e.g. another network's embedding.
        Default: the input tensor itself. Inputs that are not tensors (dicts of token ids)
        need one.
    **kwargs
        ``progress``, ``input_key``, ``input_fn``, ``autocast`` (see :class:`BaseSimilarity`).

    Notes
    -----
    ``result.extras`` holds ``pve_a``/``pve_b``: the fraction of each layer's Gram variance
    the confounder explains, ``S_K0²/(S_KK·S_00)`` (simtorch 0.2.1's ``pve``), and the
    summed HSIC terms behind the grid; ``result.stderr`` is a delete-one-group jackknife. A
    layer the confounder explains entirely (a layer that *is* the input up to rotation and
    scale) has no residual: its row/column is NaN with a warning, never a number made of
    float noise.

    simtorch 0.2.1's dCKA is wrong beyond a single-layer, single-batch run: it summed
    per-batch dCKA values and divided by the number of layers of model 1 instead of the
    number of batches, so its grid is scaled by ``n_batches / n_layers`` (a self-comparison
    does not give 1), and even rescaled it is a mean of per-batch values, which depends on
    the batch size. Its per-batch value is what this class gives for one batch with the
    defaults (HSIC₀, no projection); 0.2.1 also returned the grid transposed (model 2's
    layers as rows).
    """

    similarity_name = "dCKA"
    metric_class = DeltaCKAMetric
    positional = ("remove_negative_eig",)
