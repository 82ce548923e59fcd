"""Procrustes, SVCCA and PWCCA: the user classes over :mod:`simtorch.metrics.shape` and
:mod:`simtorch.metrics.cca`, computed once over all N samples.

Shared by the three (each docstring repeats what applies):

- **All N samples.** Unlike CKA these measures do not decompose into per-batch sums (and
  CCA on one batch with ``n < d`` is degenerate), so they are computed once on every sample
  the loader yields; there is no per-batch estimate and ``result.stderr`` is NaN.
- **Memory, stated before it is used.** The metric learns each layer's width ``d`` from the
  first batch's features, before any second forward pass; there it chooses how to keep the
  samples, states the memory (``result.settings["memory_bytes"]``, ``["path"]``) and refuses
  a run that would not fit ``memory_limit`` with a message suggesting ``projection_dim`` or
  fewer layers. ``method="buffer"`` keeps every layer's features,
  ``N · Σ_layers min(d, projection_dim) · 4`` bytes for float32 activations (both models;
  once for a model against itself), and computes the grid at the end in float64 (about
  twice the buffer more, plus the SVD factors). ``method="moments"`` (Procrustes, SVCCA)
  keeps exact float64 sums instead, ``Σx`` and ``Σxᵀx`` per layer and ``Σx_aᵀx_b`` per layer
  pair, ``8 · (D_a·D_b + Σ d_i² + Σ d_j² + D_a + D_b)`` bytes with ``D = Σ d`` whatever N
  (Procrustes with ``alpha = 1``: ``Σ d`` for ``Σ d²``); these are declared states, so they
  are all-reduced under ``torch.distributed`` and saved by ``metric.state_dict()``: a
  resumable pass (``state_path=``) needs ``method="moments"``.
  ``method="auto"`` (default) takes the moments when they need fewer bytes than the buffer
  of the loader's N samples; when N is unknown, when they fit ``memory_limit``; under
  ``torch.distributed``, always. Both routes give the same value to float64 rounding.
- **Random projection.** ``projection_dim`` projects each layer wider than it with a
  fixed-seed Gaussian matrix (:class:`simtorch.metrics.buffer.Projector`, shared with
  Information Imbalance's ``exact`` mode when the settings agree); narrower layers are kept
  as they are, so a ``projection_dim`` above every width changes nothing. A projection
  changes the value (it is another representation), the CCA measures far more than
  Procrustes: compare values at one ``projection_dim``.
"""

from __future__ import annotations

from ..metrics.cca import PWCCAMetric, SVCCAMetric
from ..metrics.shape import ProcrustesMetric
from .base import BaseSimilarity

__all__ = ["Procrustes", "SVCCA", "PWCCA"]


class Procrustes(BaseSimilarity):
    """Procrustes shape metric between every layer pair (Williams, Kunz, Kornblith,
    Linderman, *Generalized Shape Metrics on Neural Representations*, NeurIPS 2021).

    As netrep's ``LinearMetric(alpha, center_columns=True, zero_pad=True)`` fitted and scored
    on all N samples: centre the columns, zero-pad the narrower layer, partially whiten
    (``alpha < 1``), align with the best orthogonal map.

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
    device : str or torch.device, optional
    score : ``"angular"``, ``"euclidean"`` or ``"cosine"``
        ``arccos(‖X_cᵀY_c‖_* / (‖X_c‖_F ‖Y_c‖_F))``, a metric distance in [0, π/2]
        (default); ``‖X_c U − Y_c V‖_F``, not squared and not normalised; or the cosine of
        the angle, a similarity in [0, 1] that reads like CKA (anatome's
        ``orthogonal_procrustes_distance`` is 1 − it). The grid holds that quantity; the
        metric's class (``ProcrustesMetric``, ``ProcrustesEuclideanMetric``,
        ``ProcrustesCosineMetric``) declares its direction and range for the plots.
    alpha : float in [0, 1]
        netrep's partial whitening: 1 rotations only (default), 0 full whitening (the cosine
        is then ``Σρ / sqrt(d_a d_b)``, ``ρ`` the canonical correlations).
    projection_dim : int, optional
        Randomly project layers wider than this (module docstring). Measured against no
        projection, ``projection_dim=64`` moved the angular distance by up to 0.40 (median
        0.20) and the cosine by up to 0.19 on the README example (ResNet-18 vs ResNet-34,
        512 digits images, layers up to 16 384 wide), and by up to 0.03 and 0.02 on a small
        one (N = 2 000, 256-wide layers projected to 64).
    seed : int
        Seed of the projection.
    memory_limit : int, optional
        Bytes the metric may use (default: half of the memory available on the device).
    method : ``"auto"``, ``"buffer"`` or ``"moments"``
        How the N samples are kept (module docstring); all give the same value.
    **kwargs
        ``progress``, ``input_key``, ``input_fn``, ``autocast`` (see :class:`BaseSimilarity`).

    Notes
    -----
    Over all N samples: ``result.stderr`` is NaN. With ``alpha = 1`` the angular and cosine
    scores are invariant to orthogonal maps, translations and isotropic scaling of either
    side; the euclidean score is not scale-invariant. A constant layer makes its angular and
    cosine cells NaN, with a warning naming it. For identical inputs the angular distance
    carries an absolute error of about 1e-8 (the arccos of a cosine rounded near 1).
    """

    similarity_name = "Procrustes"
    metric_class = ProcrustesMetric


class SVCCA(BaseSimilarity):
    """SVCCA similarity between every layer pair (Raghu, Gilmer, Yosinski, Sohl-Dickstein,
    NeurIPS 2017), as anatome's ``svcca_distance`` computes it, returned as a similarity.

    Each side gets an SVD of its **uncentred** features and keeps
    ``k = #{i : cumsum(s)_i / Σs < keep}`` directions (singular values, strict ``<``); then
    CCA of the kept projections (centred); the similarity is ``Σρ / min(k_a, k_b)``.

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
    device : str or torch.device, optional
    keep : float in (0, 1]
        Kept fraction (anatome's ``accept_rate``).
    variant : ``"anatome"`` or ``"google"``
        ``"google"`` follows google/svcca's tutorial: centre first, then keep the fewest
        directions holding ``keep`` of the variance (squared singular values).
    projection_dim : int, optional
        Randomly project layers wider than this (module docstring). Measured against no
        projection, ``projection_dim=64`` moved the values by up to 0.38 (median 0.25; 0.18
        with 128) on a small example (N = 2 000, 256-wide layers), and by up to 0.45 on the
        README example, whose unprojected layers are wider than its 512 samples. CCA weighs
        every direction alike, low-variance ones too, so it reacts to a projection far more
        than Procrustes does.
    seed : int
        Seed of the projection.
    memory_limit : int, optional
        Bytes the metric may use (default: half of the memory available on the device).
    method : ``"auto"``, ``"buffer"`` or ``"moments"``
        How the N samples are kept (module docstring); all give the same value.
    **kwargs
        ``progress``, ``input_key``, ``input_fn``, ``autocast`` (see :class:`BaseSimilarity`).

    Notes
    -----
    Over all N samples: ``result.stderr`` is NaN. anatome's form is invariant to orthogonal
    maps and isotropic scaling only: the uncentred, truncated SVD breaks invariance to
    translations and general invertible maps (``variant="google"`` adds translations). A
    layer with ``d ≥ N`` gets a warning (the CCA of the kept directions is then partly
    degenerate: correlations of 1 by construction); a layer that keeps no direction is NaN.
    """

    similarity_name = "SVCCA"
    metric_class = SVCCAMetric
    positional = ("keep",)


class PWCCA(BaseSimilarity):
    """Projection-weighted CCA between every layer pair (Morcos, Raghu, Bengio, NeurIPS
    2018), as anatome's ``pwcca_distance`` computes it, returned as a similarity.

    CCA of the full layers (needs ``N ≥ d``); ``Q`` = QR of model 1's canonical
    coefficients; weights ``α_j = Σ_i |(x Q)_ij|`` with model 1's **uncentred** features,
    normalised to sum 1; similarity ``α·ρ``. Asymmetric: cell ``[i, j]`` is
    ``pwcca(A_i, B_j)``, weighted by model 1's layer, and ``result.extras["reverse"][i, j]``
    is ``pwcca(B_j, A_i)``, as for Information Imbalance. google/svcca's ``pwcca.py``
    weights differently (QR of the canonical variates, on the narrower side).

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
    device : str or torch.device, optional
    projection_dim : int, optional
        Randomly project layers wider than this (module docstring); ``projection_dim ≤ N``
        makes every layer defined. Measured against no projection, ``projection_dim=64``
        moved the values by up to 0.36 (median 0.23; 0.16 with 128) on a small example
        (N = 2 000, 256-wide layers).
    seed : int
        Seed of the projection.
    memory_limit : int, optional
        Bytes the metric may use (default: half of the memory available on the device).
    method : ``"auto"`` or ``"buffer"``
        PWCCA always buffers the features (module docstring): its weights take an absolute
        value per sample, which no finite set of moments determines.
    **kwargs
        ``progress``, ``input_key``, ``input_fn``, ``autocast`` (see :class:`BaseSimilarity`).

    Notes
    -----
    Over all N samples: ``result.stderr`` is NaN. NaN, with a warning naming the layer: a
    layer with more features than samples (``d > N``), a constant layer, or tied canonical
    correlations (``result.extras["tied"]``; e.g. two linear maps of the same input, whose
    correlations are 1 up to float32 noise). Invariant to orthogonal maps and isotropic
    scaling of either side, and to any invertible map or translation of model 2's layer.
    """

    similarity_name = "PWCCA"
    metric_class = PWCCAMetric
