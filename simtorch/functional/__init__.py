"""Pure tensor math behind every simtorch metric.

Everything here is a function of tensors, with no state and no hooks, so that the tests
can check it against formulas written independently (``tests/reference.py``). The streaming
classes in :mod:`simtorch.similarity` call these functions; they never carry copies of the
math. One file per measure: :mod:`.kernels` (Grams, centring, noise scales), :mod:`.hsic`
(HSIC, CKA), :mod:`.dcka` (deconfounded CKA), :mod:`.ii` (Information Imbalance); every
public name is re-exported here, so ``simtorch.functional.X`` is the import path.

Conventions
-----------
``n`` is the number of samples. A *stack* is a tensor of shape ``(L, n, n)`` holding one
Gram (kernel) matrix per layer. HSIC sums are done in float64 (DESIGN §4): Gram matrices
of column-centred features may be float32, but the centring of kernels and every inner
product that feeds an HSIC value is promoted to float64.

Estimator defaults follow one rule: **unbiased unless the function is the single-set
formula of a paper that is biased.** So :func:`hsic_cross` (the all-pairs grid estimator)
defaults to the unbiased HSIC₁, while :func:`hsic` (Gretton et al. 2005), :func:`cka`
(Kornblith et al. 2019) and :func:`dcka` / :func:`dcka_batch_terms` (Cui et al. 2022) keep
their papers' biased HSIC₀. Helpers that only apply an estimator (:func:`hsic_factor`,
:func:`centered_flat`) take ``unbiased`` without a default. Each docstring states its choice.

References
----------
- Gretton et al. (2005), *Measuring statistical dependence with Hilbert-Schmidt norms*
  (biased HSIC, HSIC₀).
- Song et al. (2012), *Feature selection via dependence maximization*, JMLR 13 (unbiased
  HSIC, HSIC₁).
- Székely & Rizzo (2014), *Partial distance correlation with methods for dissimilarities*,
  Ann. Statist. (U-centring).
- Kornblith et al. (2019), *Similarity of neural network representations revisited*, ICML
  (CKA, the RBF median heuristic).
- Nguyen, Raghu, Kornblith (2021), *Do wide and deep networks learn the same things?*, ICLR
  (minibatch CKA: sum HSIC terms over batches, take the ratio once).
- Cui, Kumar, Marttinen, Kaski (2022), *Deconfounded representation similarity for
  comparison of neural networks*, NeurIPS (dCKA).
- Glielmo, Zeni, Cheng, Csányi, Laio (2022), *Ranking the information content of distance
  measures*, PNAS Nexus 1(2) (Information Imbalance).
"""

from __future__ import annotations

from .cca import (
    PWCCA_TIE_ATOL,
    SvccaVariant,
    canonical_correlations,
    centred_basis,
    pwcca,
    pwcca_grid,
    svcca,
    svcca_grid,
    svcca_keep_count,
)
from .dcka import (
    DCKA_RESIDUAL_RTOL,
    dcka,
    dcka_batch_terms,
    dcka_from_terms,
    dcka_masks,
    dcka_pve,
    dcka_residual_self,
    psd_project,
)
from .grids import cka_grid, dcka_grid, ii_grid
from .hsic import cka, cka_from_hsic, hsic, hsic_cross, hsic_factor
from .ii import (
    COINCIDENT_ULPS,
    II_EXACT_DIM,
    coincident_rtol,
    ii_distance_rows,
    ii_distances,
    ii_exact_distances,
    ii_feature_sums,
    ii_row_block,
    ii_gram_rows,
    imbalance_sums,
    information_imbalance,
    information_imbalance_distances,
)
from .ii_ranks import NeighbourRows, average_ranks, ii_neighbour_rows, ii_rows_sums, nearest_neighbour_weights
from .kernels import (
    DATA_ULPS,
    DEGENERATE_RTOL,
    GRAM_KAPPA,
    GRAM_ULPS,
    Kernel,
    center_gram,
    centered_flat,
    degenerate_mask,
    flatten_samples,
    gram_dtype,
    kernel_scale,
    kernel_stack,
    median_sq_distance,
    memory_order,
    product_rows,
    rbf_gram,
    sq_distances,
    u_center_gram,
)
from .linear_grams import (
    RAW_MIN_ELEMENTS,
    SHIFT_ROWS,
    Unchecked,
    accept_product,
    capture_product,
    centred_gram,
    double_center_,
    finish_grams_,
    gram_product,
    gram_stats,
    head_shift,
    in_halves,
    large,
    linear_gram,
    product_into,
    quick_centred_gram,
)
from .moment_grids import GridMoments, procrustes_grid_from_moments, svcca_grid_from_moments
from .moments import PairMoments, cca_from_moments, procrustes_from_moments, svcca_from_moments
from .neighbours import (
    CKNNA_EPS,
    cknna,
    cknna_grid,
    cosine_gram,
    knn_indices,
    knn_mask,
    mutual_knn,
    mutual_knn_grid,
    neighbour_scores,
    raw_gram,
)
from .permutation import (PERMUTATION_CHUNK_BYTES, batch_permutations, permutation_pvalue, permuted_conf,
                          permuted_cross)
from .procrustes import (
    NETREP_EIGVAL_TOL,
    ProcrustesScore,
    ShapeGrid,
    as_features,
    is_constant,
    pair_blocks,
    procrustes,
    procrustes_grid,
    whitening_scale,
)
from .rsa import rdm_from_gram, rdm_stack, rdm_vector, rsa, rsa_grid

__all__ = [
    # kernels
    "flatten_samples",
    "product_rows",
    "memory_order",
    "gram_dtype",
    "linear_gram",
    "centred_gram",
    "quick_centred_gram",
    "capture_product",
    "Unchecked",
    "accept_product",
    "gram_stats",
    "head_shift",
    "in_halves",
    "large",
    "product_into",
    "finish_grams_",
    "gram_product",
    "double_center_",
    "sq_distances",
    "median_sq_distance",
    "rbf_gram",
    "kernel_stack",
    "center_gram",
    "u_center_gram",
    "centered_flat",
    "kernel_scale",
    "degenerate_mask",
    "DEGENERATE_RTOL",
    "GRAM_KAPPA",
    "GRAM_ULPS",
    "DATA_ULPS",
    "SHIFT_ROWS",
    "RAW_MIN_ELEMENTS",
    # hsic
    "hsic_factor",
    "hsic_cross",
    "hsic",
    "cka_from_hsic",
    "cka",
    # dcka
    "DCKA_RESIDUAL_RTOL",
    "psd_project",
    "dcka_batch_terms",
    "dcka_residual_self",
    "dcka_masks",
    "dcka_from_terms",
    "dcka_pve",
    "dcka",
    # ii
    "COINCIDENT_ULPS",
    "II_EXACT_DIM",
    "coincident_rtol",
    "ii_distances",
    "ii_exact_distances",
    "ii_distance_rows",
    "nearest_neighbour_weights",
    "average_ranks",
    "imbalance_sums",
    "NeighbourRows",
    "ii_neighbour_rows",
    "ii_rows_sums",
    "ii_gram_rows",
    "ii_row_block",
    "information_imbalance_distances",
    "ii_feature_sums",
    "information_imbalance",
    # grids from features (lazy: they run the streaming metrics)
    "cka_grid",
    "dcka_grid",
    "ii_grid",
    # neighbours (mutual k-NN, CKNNA)
    "CKNNA_EPS",
    "knn_mask",
    "knn_indices",
    "mutual_knn_grid",
    "mutual_knn",
    "cknna_grid",
    "cknna",
    "raw_gram",
    "cosine_gram",
    "neighbour_scores",
    # rsa (its average_ranks is imported from simtorch.functional.rsa: the name here is II's)
    "rdm_vector",
    "rdm_stack",
    "rdm_from_gram",
    "rsa_grid",
    "rsa",
    # procrustes (Williams et al. 2021), CCA family (SVCCA, PWCCA), their moment forms
    "ProcrustesScore",
    "ShapeGrid",
    "NETREP_EIGVAL_TOL",
    "as_features",
    "is_constant",
    "pair_blocks",
    "whitening_scale",
    "procrustes",
    "procrustes_grid",
    "SvccaVariant",
    "PWCCA_TIE_ATOL",
    "centred_basis",
    "svcca_keep_count",
    "canonical_correlations",
    "svcca",
    "svcca_grid",
    "pwcca",
    "pwcca_grid",
    "PairMoments",
    "procrustes_from_moments",
    "cca_from_moments",
    "svcca_from_moments",
    "GridMoments",
    "procrustes_grid_from_moments",
    "svcca_grid_from_moments",
    "PERMUTATION_CHUNK_BYTES",
    "batch_permutations",
    "permuted_cross",
    "permuted_conf",
    "permutation_pvalue",
]
