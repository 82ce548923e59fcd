"""Deconfounded CKA (Cui, Kumar, Marttinen, Kaski, NeurIPS 2022) as a streaming metric.

Two networks' representations look alike partly because the inputs themselves are alike.
dCKA regresses every layer's centred Gram ``K`` on the confounder's centred Gram ``K⁰``
(the inputs by default) and compares the residuals with CKA. Streamed, the confounder is
one more "layer": its HSIC terms with every layer are one more row of the same products
CKA computes, summed over batches, and the closed form is applied once at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from .accumulate import to_numpy
from .base import LayerNote, Needs
from .cka import HSICMetric
from .permutation import PermutationNull, null_extras, null_settings, null_update
from .registry import register

__all__ = ["DeltaCKAMetric", "default_confounder"]

ConfounderFn = Callable[[Any], Tensor]

_NEED_CONFOUNDER = ("dCKA's default confounder is the input tensor; pass confounder_fn=lambda inputs: ... "
                    "returning an (n, p) tensor (e.g. lambda batch: embed(batch['input_ids']).mean(1)), "
                    "or input_key=... to pick the input tensor out of a dict batch")


def default_confounder(inputs: Any) -> Tensor:
    """The default confounder: the model input tensor itself (flattened later to ``(n, p)``).

    Mappings and tuples have no canonical tensor to use (token ids are not a meaningful
    Euclidean space), so they need an explicit ``confounder_fn``.
    """
    if isinstance(inputs, Tensor):
        return inputs
    raise TypeError(f"dCKA: the model input is a {type(inputs).__name__}, not a tensor. {_NEED_CONFOUNDER}")


@register
class DeltaCKAMetric(HSICMetric):
    """Streaming dCKA accumulator (grouped float64 HSIC sums, closed form at the end).

    Per batch it sums, each with the batch's HSIC normaliser: ``HSIC(K_i, L_j)`` for every
    pair, the self-terms, and the confounder terms ``HSIC(K_i, K⁰)``, ``HSIC(L_j, K⁰)``,
    ``HSIC(K⁰, K⁰)``. With ``remove_negative_eig`` it also sums the HSIC terms of each
    batch's PSD-projected residuals. Options as :class:`simtorch.DeltaCKA`.
    """

    key = "dcka"
    aliases = ("deltacka", "delta_cka")
    name = "dCKA"
    symmetric = True
    value_range = (0.0, 1.0)
    invariances = frozenset({"orthogonal", "isotropic_scaling", "translation"})

    def __init__(
        self,
        unbiased: bool = False,
        remove_negative_eig: bool = False,
        confounder_fn: ConfounderFn | None = None,
        max_groups: int = 64,
        permutations: int = 0,
        seed: int = 0,
    ) -> None:
        if confounder_fn is not None and not callable(confounder_fn):
            raise TypeError(
                f"confounder_fn must be a callable inputs -> (n, p) tensor, got {type(confounder_fn).__name__}"
            )
        super().__init__(unbiased, max_groups)
        self.remove_negative_eig = bool(remove_negative_eig)
        self.confounder_fn = confounder_fn
        self.null = PermutationNull(permutations, seed, remove_negative_eig=self.remove_negative_eig)

    def needs(self) -> Needs:
        return Needs(inputs=True, tensor_inputs=self.confounder_fn is None, tensor_inputs_hint=_NEED_CONFOUNDER)

    def settings(self) -> dict[str, Any]:
        fn = self.confounder_fn
        return {
            "unbiased": self.unbiased,
            "remove_negative_eig": self.remove_negative_eig,
            "confounder": "inputs" if fn is None else getattr(fn, "__qualname__", repr(fn)),
            **null_settings(self),
        }

    def sum_shapes(self, la: int, lb: int) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {
            "cross": (la, lb), "self_a": (la,), "self_b": (lb,), "conf_a": (la,), "conf_b": (lb,),
            "conf_self": (), "scale_a": (la,), "scale_b": (lb,), "scale_0": (),
        }
        if self.remove_negative_eig:
            shapes.update(res_a=(la,), res_b=(lb,))
        return shapes

    def _confounder_gram(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Centred Gram and energy of the confounder, cached on the batch so several dCKA
        metrics of one pass share it."""

        def make() -> tuple[Tensor, Tensor]:
            fn = self.confounder_fn or default_confounder
            z = fn(batch.inputs)
            if not isinstance(z, Tensor):
                raise TypeError(f"confounder_fn must return a tensor (n, p), got {type(z).__name__}")
            if z.dim() == 0 or z.shape[0] != batch.n:
                raise ValueError(
                    f"the confounder has shape {tuple(z.shape)} but the batch has {batch.n} samples; "
                    "confounder_fn must return one row per sample, batch dimension first"
                )
            z = z.detach().to(self.binding.device)
            if z.device.type == "cpu":  # as the engine does for layers: no mean pass
                return F.quick_centred_gram(z)
            return F.linear_gram(z)

        return batch.cached(("confounder", id(self.confounder_fn)), make)

    def update(self, batch: Any) -> None:
        if self.too_small(batch.n):
            return
        g0, e0 = self._confounder_gram(batch)
        f0 = batch.cached(
            ("confounder_flat", id(self.confounder_fn), self.unbiased),
            lambda: F.centered_flat(g0.to(torch.float64), self.unbiased),
        )
        # the float32 Grams, not float64 copies: the centred stacks below are what the terms
        # use, and only the PSD projection reads these (it casts them itself)
        ka = batch.grams("a")
        kb = ka if batch.same else batch.grams("b")
        if self.unbiased:  # U-centred stacks, shared with a CKA metric of the same estimator
            fa = batch.centered("a", "linear", 1.0, True)
            fb = fa if batch.same else batch.centered("b", "linear", 1.0, True)
        else:
            # HKH in float64, shared with a biased CKA metric of the pass: the engine's Grams
            # are double-centred in float32, so they are HKH only to float32 rounding of
            # entries that a large offset makes large
            fa = batch.centered("a", "linear", 1.0, False)
            fb = fa if batch.same else batch.centered("b", "linear", 1.0, False)
        terms = F.dcka_batch_terms(
            ka, kb, g0,
            F.kernel_scale(batch.grams("a"), batch.energy("a"), "linear"),
            F.kernel_scale(batch.grams("b"), batch.energy("b"), "linear"),
            F.kernel_scale(g0, e0, "linear"),
            self.unbiased, self.remove_negative_eig, fa=fa, fb=fb, f0=f0, same=batch.same,
        )
        null_update(self, batch, fa, fb, f0)
        self.add(batch.n, **terms)

    def estimate(self, t: Mapping[str, Tensor]) -> Tensor:
        return F.dcka_from_terms(dict(t), self.remove_negative_eig)

    def notes(self, t: dict[str, Tensor]) -> list[LayerNote]:
        notes = super().notes(t)
        _, _, expl_a, expl_b = F.dcka_masks(t, self.remove_negative_eig)
        for side, expl in (("a", expl_a),) if self.binding.same else (("a", expl_a), ("b", expl_b)):
            if bool(expl.any()):
                notes.append(LayerNote(side, expl.tolist(),
                                       "dCKA: {model} layers {layers} are entirely explained by the confounder "
                                       "(residual Gram 0: the layer is the input up to rotation and scale); their "
                                       "dCKA is NaN, not a made-up number"))
        return notes

    def compute(self) -> Any:
        out = super().compute()
        t = self.sums.totals()
        if bool(F.degenerate_mask(t["conf_self"], t["scale_0"])):
            out.messages.insert(0, "dCKA: the confounder has no variance (constant inputs or confounder_fn output); "
                                   "there is nothing to regress on, so dCKA equals CKA here")
        return out

    def extras(self, t: dict[str, Tensor]) -> dict[str, Any]:
        pve_a, pve_b = F.dcka_pve(t)
        return {**self.sums.extras(), "pve_a": to_numpy(pve_a), "pve_b": to_numpy(pve_b), **null_extras(self, t)}
