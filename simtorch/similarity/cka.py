"""Streaming CKA (Kornblith et al. 2019) with the minibatch estimator of Nguyen et al. 2021."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from ..engine import GramBatch, Metric, warn_skipped
from ..model import SimilarityModel
from ..result import SimilarityResult
from .accumulate import GroupedSums, jackknife
from .base import BaseSimilarity

__all__ = ["CKA", "CKAMetric", "HSICMetric", "warn_degenerate"]


def warn_degenerate(metric: str, model: SimilarityModel, self_terms: Tensor, scale: Tensor, unbiased: bool) -> None:
    """Warn, naming the layers, where a self-term makes a row/column of the grid NaN."""
    import warnings

    bad = F.degenerate_mask(self_terms, scale)
    if bool(bad.any()):
        names = [n for n, b in zip(model.layer_names, bad.tolist()) if b]
        why = (
            "constant activations or an unbiased self-HSIC ≤ 0 (too few samples for that layer)"
            if unbiased
            else "constant activations"
        )
        warnings.warn(
            f"{metric}: {model.model_name} layers {names} have no usable variance ({why}); their "
            "similarities are NaN (0/0), not a made-up number",
            UserWarning,
            stacklevel=4,
        )


class HSICMetric(Metric):
    """Shared skeleton of the metrics built from grouped HSIC sums (CKA, dCKA): batches too
    small for the estimator are skipped and counted, the estimate is a function of the
    totals, and its standard error the delete-one-group jackknife of that function."""

    def __init__(self, unbiased: bool, max_groups: int = 64) -> None:
        self.unbiased = bool(unbiased)
        self.max_groups = max_groups
        self.min_n = 4 if self.unbiased else 2

    def bind(self, model_a: SimilarityModel, model_b: SimilarityModel, device: torch.device) -> None:
        super().bind(model_a, model_b, device)
        self.sums = GroupedSums(self.sum_shapes(model_a.n_layers, model_b.n_layers), device, self.max_groups)
        self.n_samples = self.skipped = self.skipped_samples = self._n_used = 0

    def sum_shapes(self, la: int, lb: int) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def estimate(self, t: dict[str, Tensor]) -> Tensor:
        """The grid from (totals of) the sums; broadcasts over a leading group dimension."""
        raise NotImplementedError

    def skip(self, batch: GramBatch) -> bool:
        """Count and skip a batch too small for the estimator."""
        if batch.n >= self.min_n:
            return False
        self.skipped += 1
        self.skipped_samples += batch.n
        return True

    def add(self, n: int, **terms: Tensor) -> None:
        self.sums.add(**terms)
        self.n_samples += n
        self._n_used += 1

    def warn(self, t: dict[str, Tensor]) -> None:
        """Warn, naming the layers, about rows/columns that come out NaN."""
        warn_degenerate(self.name, self.model_a, t["self_a"], t["scale_a"], self.unbiased)
        if self.model_b is not self.model_a:
            warn_degenerate(self.name, self.model_b, t["self_b"], t["scale_b"], self.unbiased)

    def extras(self, t: dict[str, Tensor]) -> dict[str, Any]:
        return self.sums.extras()

    def result(self) -> SimilarityResult:
        warn_skipped(self.name, self.skipped, self.skipped_samples, self.min_n,
                     "unbiased HSIC needs n ≥ 4" if self.unbiased else "HSIC needs n ≥ 2")
        if self._n_used == 0:
            raise ValueError(f"{self.name}: no batch had at least {self.min_n} samples; nothing was computed")
        t = self.sums.totals()
        self.warn(t)
        return self.make_result(self.estimate(t), jackknife(self.estimate, self.sums), self.extras(t))

    def state_tensors(self) -> list[Tensor]:
        return self.sums.state_tensors()


class CKAMetric(HSICMetric):
    """Minibatch CKA accumulator: per-batch HSIC terms summed in float64, ratio at the end.

    Each batch contributes ``HSIC(K_i, L_j)`` for every layer pair (one matrix product of
    the flattened centred stacks), and the self-terms ``HSIC(K_i, K_i)``, ``HSIC(L_j, L_j)``,
    each with its own ``1/(n−1)²`` or ``1/(n(n−3))`` factor so every batch has equal weight.
    """

    name = "CKA"

    def __init__(self, kernel: str = "linear", unbiased: bool = True, sigma_frac: float = 1.0, max_groups: int = 64):
        if kernel not in ("linear", "rbf"):
            raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
        if sigma_frac <= 0:
            raise ValueError(f"sigma_frac must be > 0, got {sigma_frac}")
        super().__init__(unbiased, max_groups)
        self.kernel, self.sigma_frac = kernel, float(sigma_frac)

    def settings(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "unbiased": self.unbiased, "sigma_frac": self.sigma_frac}

    def sum_shapes(self, la: int, lb: int) -> dict[str, tuple[int, ...]]:
        return {"cross": (la, lb), "self_a": (la,), "self_b": (lb,), "scale_a": (la,), "scale_b": (lb,)}

    def _side(self, batch: GramBatch, side: str, factor: float) -> tuple[Tensor, Tensor, Tensor]:
        flat = batch.centered(side, self.kernel, self.sigma_frac, self.unbiased)
        k = batch.kernel(side, self.kernel, self.sigma_frac) if self.kernel == "rbf" else None
        scale = F.kernel_scale(batch.grams(side), batch.energy(side), self.kernel, k) * factor
        return flat, torch.linalg.vecdot(flat, flat) * factor, scale

    def update(self, batch: GramBatch) -> None:
        if self.skip(batch):
            return
        c = F.hsic_factor(batch.n, self.unbiased)
        fa, self_a, scale_a = self._side(batch, "a", c)
        fb, self_b, scale_b = (fa, self_a, scale_a) if batch.same else self._side(batch, "b", c)
        self.add(batch.n, cross=(fa @ fb.T) * c, self_a=self_a, self_b=self_b, scale_a=scale_a, scale_b=scale_b)

    def estimate(self, t: dict[str, Tensor]) -> Tensor:
        return F.cka_from_hsic(t["cross"], t["self_a"], t["self_b"], t["scale_a"], t["scale_b"])


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

    def __init__(
        self,
        sim_model1: SimilarityModel,
        sim_model2: SimilarityModel,
        device: str | torch.device | None = None,
        kernel: str = "linear",
        unbiased: bool = True,
        sigma_frac: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(sim_model1, sim_model2, device, **kwargs)
        CKAMetric(kernel, unbiased, sigma_frac)  # validate arguments now, not at compute()
        self.kernel, self.unbiased, self.sigma_frac = kernel, unbiased, sigma_frac

    def _make_metric(self) -> CKAMetric:
        return CKAMetric(self.kernel, self.unbiased, self.sigma_frac)
