"""Deconfounded CKA (Cui, Kumar, Marttinen, Kaski, NeurIPS 2022) on the streaming engine.

Two networks' representations look alike partly because the inputs themselves are alike.
dCKA regresses every layer's centred Gram ``K`` on the confounder's centred Gram ``K⁰``
(the inputs by default) and compares the residuals with CKA. Streamed, the confounder is
one more "layer": its HSIC terms with every layer are one more row of the same products
CKA computes, summed over batches, and the closed form is applied once at the end.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from ..engine import GramBatch
from ..model import SimilarityModel
from .accumulate import to_numpy
from .base import BaseSimilarity
from .cka import HSICMetric

__all__ = ["DeltaCKA", "DeltaCKAMetric", "default_confounder"]

ConfounderFn = Callable[[Any], Tensor]


def default_confounder(inputs: Any) -> Tensor:
    """The default confounder: the model input tensor itself (flattened later to ``(n, p)``).

    Mappings and tuples have no canonical tensor to use (token ids are not a meaningful
    Euclidean space), so they need an explicit ``confounder_fn``.
    """
    if isinstance(inputs, Tensor):
        return inputs
    raise TypeError(
        f"dCKA: the model input is a {type(inputs).__name__}, not a tensor, so there is no default "
        "confounder. Pass confounder_fn=lambda inputs: ... returning an (n, p) tensor, e.g. "
        "confounder_fn=lambda batch: embed(batch['input_ids']).mean(1)"
    )


class DeltaCKAMetric(HSICMetric):
    """Streaming dCKA accumulator (grouped float64 HSIC sums, closed form at the end).

    Per batch it sums, each with the batch's HSIC normaliser: ``HSIC(K_i, L_j)`` for every
    pair, the self-terms, and the confounder terms ``HSIC(K_i, K⁰)``, ``HSIC(L_j, K⁰)``,
    ``HSIC(K⁰, K⁰)``. With ``remove_negative_eig`` it also sums the HSIC terms of each
    batch's PSD-projected residuals. See :class:`DeltaCKA`.
    """

    name = "dCKA"
    #: the engine must hand the model input to ``update`` (``GramBatch.inputs``)
    needs_inputs = True

    def __init__(
        self,
        unbiased: bool = False,
        remove_negative_eig: bool = False,
        confounder_fn: ConfounderFn | None = None,
        max_groups: int = 64,
    ) -> None:
        if confounder_fn is not None and not callable(confounder_fn):
            raise TypeError(
                f"confounder_fn must be a callable inputs -> (n, p) tensor, got {type(confounder_fn).__name__}"
            )
        super().__init__(unbiased, max_groups)
        self.remove_negative_eig = bool(remove_negative_eig)
        self.confounder_fn = confounder_fn

    def settings(self) -> dict[str, Any]:
        fn = self.confounder_fn
        return {
            "unbiased": self.unbiased,
            "remove_negative_eig": self.remove_negative_eig,
            "confounder": "inputs" if fn is None else getattr(fn, "__qualname__", repr(fn)),
        }

    def sum_shapes(self, la: int, lb: int) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {
            "cross": (la, lb), "self_a": (la,), "self_b": (lb,), "conf_a": (la,), "conf_b": (lb,),
            "conf_self": (), "scale_a": (la,), "scale_b": (lb,), "scale_0": (),
        }
        if self.remove_negative_eig:
            shapes.update(res_a=(la,), res_b=(lb,))
        return shapes

    # ------------------------------------------------------------------ confounder
    def _confounder_gram(self, batch: GramBatch) -> tuple[Tensor, Tensor]:
        """Centred Gram and energy of the confounder, cached on the batch so several dCKA
        metrics of one pass share it."""

        def make() -> tuple[Tensor, Tensor]:
            if batch.inputs is None:
                raise RuntimeError(
                    "dCKA needs the model inputs: run engine.stream(..., keep_inputs=True) "
                    "(BaseSimilarity and simtorch.compare do this for metrics with needs_inputs)"
                )
            fn = self.confounder_fn or default_confounder
            z = fn(batch.inputs)
            if not isinstance(z, Tensor):
                raise TypeError(f"confounder_fn must return a tensor (n, p), got {type(z).__name__}")
            if z.dim() == 0 or z.shape[0] != batch.n:
                raise ValueError(
                    f"the confounder has shape {tuple(z.shape)} but the batch has {batch.n} samples; "
                    "confounder_fn must return one row per sample, batch dimension first"
                )
            return F.linear_gram(z.detach().to(self.device))

        return batch.cached(("confounder", id(self.confounder_fn)), make)  # type: ignore[return-value]

    def update(self, batch: GramBatch) -> None:
        if self.skip(batch):
            return
        g0, e0 = self._confounder_gram(batch)
        f0 = batch.cached(
            ("confounder_flat", id(self.confounder_fn), self.unbiased),
            lambda: F.centered_flat(g0.to(torch.float64), True) if self.unbiased else g0.to(torch.float64).reshape(-1),
        )
        ka = batch.kernel("a", "linear")
        kb = ka if batch.same else batch.kernel("b", "linear")
        if self.unbiased:  # U-centred stacks, shared with a CKA metric of the same estimator
            fa = batch.centered("a", "linear", 1.0, True)
            fb = fa if batch.same else batch.centered("b", "linear", 1.0, True)
        else:
            # Grams of column-centred features are already double-centred (HKH = K up to the
            # float32 rounding of the column means, ~1e-7 relative), so HSIC₀ needs no second
            # centring: the flattened kernels are views, no copy per batch
            fa = ka.reshape(ka.shape[0], -1)
            fb = fa if batch.same else kb.reshape(kb.shape[0], -1)
        terms = F.dcka_batch_terms(
            ka, kb, g0,
            F.kernel_scale(batch.grams("a"), batch.energy("a"), "linear"),
            F.kernel_scale(batch.grams("b"), batch.energy("b"), "linear"),
            F.kernel_scale(g0, e0, "linear"),
            self.unbiased, self.remove_negative_eig, fa=fa, fb=fb, f0=f0, same=batch.same,
        )
        self.add(batch.n, **terms)

    # ------------------------------------------------------------------ result
    def estimate(self, t: Mapping[str, Tensor]) -> Tensor:
        return F.dcka_from_terms(dict(t), self.remove_negative_eig)

    def warn(self, t: dict[str, Tensor]) -> None:
        if bool(F.degenerate_mask(t["conf_self"], t["scale_0"])):
            warnings.warn(
                "dCKA: the confounder has no variance (constant inputs or confounder_fn output); there is "
                "nothing to regress on, so dCKA equals CKA here",
                UserWarning,
                stacklevel=3,
            )
        super().warn(t)
        _, _, expl_a, expl_b = F.dcka_masks(t, self.remove_negative_eig)
        sides = [(self.model_a, expl_a)] + ([] if self.model_b is self.model_a else [(self.model_b, expl_b)])
        for model, expl in sides:
            if bool(expl.any()):
                names = [n for n, b in zip(model.layer_names, expl.tolist()) if b]
                warnings.warn(
                    f"dCKA: {model.model_name} layers {names} are entirely explained by the confounder "
                    "(residual Gram 0: the layer is the input up to rotation and scale); their dCKA is NaN, "
                    "not a made-up number",
                    UserWarning,
                    stacklevel=3,
                )

    def extras(self, t: dict[str, Tensor]) -> dict[str, Any]:
        pve_a, pve_b = F.dcka_pve(t)
        return {**self.sums.extras(), "pve_a": to_numpy(pve_a), "pve_b": to_numpy(pve_b)}


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

    def __init__(
        self,
        sim_model1: SimilarityModel,
        sim_model2: SimilarityModel,
        device: str | torch.device | None = None,
        remove_negative_eig: bool = False,
        *,
        unbiased: bool = False,
        confounder_fn: ConfounderFn | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(sim_model1, sim_model2, device, **kwargs)
        DeltaCKAMetric(unbiased, remove_negative_eig, confounder_fn)  # validate now, not at compute()
        self.unbiased = unbiased
        self.remove_negative_eig = remove_negative_eig
        self.confounder_fn = confounder_fn

    def _make_metric(self) -> DeltaCKAMetric:
        return DeltaCKAMetric(self.unbiased, self.remove_negative_eig, self.confounder_fn)
