"""MutualKNN, CKNNA and RSA: the user classes over
:class:`~simtorch.metrics.neighbours.MutualKNNMetric`,
:class:`~simtorch.metrics.neighbours.CKNNAMetric` (Huh, Cheung, Wang, Isola, ICML 2024) and
:class:`~simtorch.metrics.rsa.RSAMetric` (Kriegeskorte, Mur, Bandettini 2008)."""

from __future__ import annotations

from ..metrics.neighbours import CKNNAMetric, MutualKNNMetric
from ..metrics.rsa import RSAMetric
from .base import BaseSimilarity

__all__ = ["MutualKNN", "CKNNA", "RSA", "MutualKNNMetric", "CKNNAMetric", "RSAMetric"]



class MutualKNN(BaseSimilarity):
    """Mutual k-nearest-neighbour alignment between every layer pair of two models.

    Huh, Cheung, Wang, Isola, *The Platonic Representation Hypothesis*, ICML 2024
    (platonic-rep's ``mutual_knn``): with ``N_A(i)`` the k nearest neighbours of sample i
    among the other samples of its set in layer A (self excluded by index, so a duplicate of
    i is a neighbour),

        mKNN(A, B) = (1/n) Σ_i |N_A(i) ∩ N_B(i)| / k    ∈ [0, 1]

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
    device : str or torch.device, optional
    k : int
        Neighbours per sample, ``k < batch size`` (``k < N`` with ``exact=True``).
    neighbours : {"cosine", "linear", "euclidean"}
        "cosine" (default, as platonic-rep's pipeline, which L2-normalises its features):
        inner products of L2-normalised rows; "linear": raw inner products ``X Xᵀ``;
        "euclidean": the k smallest ``‖x_i − x_j‖²``. The raw inner products are rebuilt
        exactly from the centred Gram, ``X_c μ`` and ``‖μ‖²``.
    exact, projection_dim, seed, memory_limit
        See the streaming notes. ``exact=True`` needs about ``40·N²`` bytes of working
        memory (one layer's N×N scores at a time) besides the buffered features.
    **kwargs
        ``progress``, ``input_key``, ``input_fn``, ``autocast`` (see :class:`BaseSimilarity`).

    Notes
    -----
    Ties on the k-th score go to the lower sample index (deterministic; platonic-rep leaves
    them to ``topk``). Per-batch values rank the engine's Grams (float32 for float32
    models), so near-ties within float32 resolution may differ from a float64 ranking. Values depend on
    the number of samples the neighbours are drawn from, so compare values computed with
    the same batch size (a warning says when batches of different sizes, other than the
    last, were averaged). Declared invariances (``MutualKNNMetric.invariances``):
    orthogonal maps and isotropic scaling; "euclidean" adds translation.

    Streaming (all three measures). A value is a function of one *set* of samples. By
    default each batch is one set: its grid is computed from the engine's Grams (no
    activation is kept) and the grids are averaged over batches weighted by batch size;
    ``result.stderr`` is the standard error over batches. ``exact=True`` buffers each
    layer's features (``projection_dim`` bounds them with the fixed-seed random projection
    Information Imbalance uses) and computes the grid once on all N samples; the features
    and the N×N working memory are stated and checked against ``memory_limit`` (default:
    half of the free memory on the device) before the first batch is buffered (with the
    dataset size, before any forward pass), and refused with the fixes when they would not
    fit. A set smaller than the measure needs is refused if it is the first batch (before
    the second forward pass), skipped with a warning if it is a later one (a short last
    batch).
    """

    similarity_name = "mutual kNN"
    metric_class = MutualKNNMetric


class CKNNA(BaseSimilarity):
    """Centered Kernel Nearest-Neighbour Alignment between every layer pair of two models.

    Huh, Cheung, Wang, Isola, ICML 2024, exactly as platonic-rep's ``cknna``: with
    ``K = X Xᵀ``, ``L = Y Yᵀ`` (cosine: of L2-normalised rows), ``M_K[i, j] = 1`` iff j is
    among the top k of ``K[i]`` and ``M = M_K ∘ M_L``,

        CKNNA = HSIC(M∘K, M∘L) / (sqrt(HSIC(M_K∘K, M_K∘K) · HSIC(M_L∘L, M_L∘L)) + 1e-6)

    with platonic-rep's HSIC (a transpose inside, so the unbiased ``cknna(A, B) ≠
    cknna(B, A)``: cell ``[i, j]`` is cknna(A_i, B_j)). The reference's ``+1e-6`` is kept
    so values match published CKNNA numbers; hence ``cknna(X, X)`` is slightly below 1.

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
    device : str or torch.device, optional
    k : int
        Neighbours per sample, ``2 ≤ k``; ``k < batch size`` (``unbiased=True``, which also
        needs batches of at least 4) or ``k ≤ batch size`` (``unbiased=False``).
    kernel : {"cosine", "linear"}
        "cosine" (default) or the raw inner products.
    unbiased : bool
        True (default): self never counts as a neighbour and HSIC is unbiased; False: self
        competes for a slot and HSIC is ``tr(KHLH)`` (no 1/(n−1)² factor).
    exact, projection_dim, seed, memory_limit
        See the streaming notes. ``exact=True`` needs about ``64·(La + Lb)·N²`` bytes of working memory
        (every layer's N×N kernel, masks and masked copies) besides the features.
    **kwargs
        ``progress``, ``input_key``, ``input_fn``, ``autocast``.

    Notes
    -----
    Ties on the k-th kernel value go to the lower sample index. Values depend on the
    number of samples the neighbours are drawn from (see :class:`MutualKNN`). Declared
    invariances: orthogonal maps and isotropic scaling (cosine kernel); the linear kernel
    keeps orthogonal maps only. Streaming, ``exact``, ``projection_dim``, ``seed`` and
    ``memory_limit``: as :class:`MutualKNN`.
    """

    similarity_name = "CKNNA"
    metric_class = CKNNAMetric


class RSA(BaseSimilarity):
    """Representational similarity analysis between every layer pair of two models.

    Kriegeskorte, Mur, Bandettini, *Representational similarity analysis — connecting the
    branches of systems neuroscience*, Front. Syst. Neurosci. 2008, as rsatoolbox computes
    it: each layer's representational dissimilarity matrix over the samples of a set, then
    ``RSA(A, B) = compare(triu(RDM_A), triu(RDM_B))`` over the upper triangle (diagonal
    excluded). RSA(X, X) = 1.

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
    device : str or torch.device, optional
    rdm : {"euclidean", "correlation"}
        "euclidean" (default): ``‖x_i − x_j‖² / d``, from the centred Gram (so invariant to
        translation and orthogonal maps); "correlation": ``1 − Pearson(x_i, x_j)`` with each
        sample centred across its features, from the raw Gram and the raw row sums (from
        float32 Grams, precise to about 1e-7 of the features' energy).
    compare : {"spearman", "pearson", "cosine"}
        Spearman (default; average ranks for ties, then Pearson), Pearson (rsatoolbox's
        "corr", also accepted) or the uncentred cosine.
    exact, projection_dim, seed, memory_limit
        See the streaming notes. ``exact=True`` holds every layer's N(N−1)/2 RDM entries (float64) and
        ranks one side at a time, about ``4·(La + Lb)·N² + 30·max(La, Lb)·N²`` bytes.
    **kwargs
        ``progress``, ``input_key``, ``input_fn``, ``autocast``.

    Notes
    -----
    Batches need at least 3 samples. Unlike the kNN measures, a subset's RSA estimates the
    full-data value without a strong dependence on its size, so batches of different sizes
    give no warning. Declared invariances: orthogonal maps, isotropic scaling and
    translation ("euclidean"); isotropic scaling only ("correlation"). Streaming, ``exact``,
    ``projection_dim``, ``seed`` and ``memory_limit``: as :class:`MutualKNN`.
    """

    similarity_name = "RSA"
    metric_class = RSAMetric
