"""The float64 reference grid of the benchmarks (``run.py``, ``peers.py``): unbiased linear
CKA written independently of simtorch, cached on disk, and the grid error against it."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from common import RESULTS


def reference_grid(ma: nn.Module, mb: nn.Module, names_a: list[str], names_b: list[str], loader: Any,
                   device: torch.device, model_dtype: torch.dtype) -> torch.Tensor:
    """Streaming unbiased linear CKA (DESIGN §4), written independently of simtorch's
    U-centring: per batch, each activation in float64, column-centred, K = X Xᵀ; HSIC₁ by
    Song et al.'s formula [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1]/(n(n−3))
    for every pair at once; the three HSIC terms summed over batches, ratio at the end.

    ``model_dtype=float64`` runs float64 copies of the models (the reference the targets
    use); ``float32`` runs the models as they are and does only the math in float64.
    """
    if model_dtype == torch.float64:
        ma, mb = copy.deepcopy(ma).double(), copy.deepcopy(mb).double()
    f64 = torch.float64

    def stats(model: nn.Module, names: list[str], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        grams: list[torch.Tensor | None] = [None] * len(names)
        handles = []
        for i, name in enumerate(names):
            def hook(mod: nn.Module, args: Any, out: Any, i: int = i) -> None:
                t = out.detach().reshape(out.shape[0], -1).to(f64)
                t = t - t.mean(0, keepdim=True)
                k = t @ t.T
                k.fill_diagonal_(0.0)
                grams[i] = k
            handles.append(model.get_submodule(name).register_forward_hook(hook))
        try:
            model(x.to(model_dtype))
        finally:
            for h in handles:
                h.remove()
        k = torch.stack(grams)  # (L, n, n) with zero diagonal
        return k.reshape(len(names), -1), k.sum(-1), k.sum((-2, -1))  # flat, row sums, totals

    cross = saa = sbb = None
    with torch.inference_mode():
        for batch in loader:
            x = batch[0].to(device)
            n = x.shape[0]
            if n < 4:
                continue
            fa, ra, ta = stats(ma, names_a, x)
            fb, rb, tb = stats(mb, names_b, x)

            def hsic1(f1, r1, t1, f2, r2, t2):
                return (f1 @ f2.T + torch.outer(t1, t2) / ((n - 1) * (n - 2)) - (2.0 / (n - 2)) * (r1 @ r2.T)) / (n * (n - 3))

            c = hsic1(fa, ra, ta, fb, rb, tb)
            sa = torch.diagonal(hsic1(fa, ra, ta, fa, ra, ta))
            sb = torch.diagonal(hsic1(fb, rb, tb, fb, rb, tb))
            cross, saa, sbb = (c, sa, sb) if cross is None else (cross + c, saa + sa, sbb + sb)
    assert cross is not None
    return (cross / torch.sqrt(saa[:, None] * sbb[None, :])).cpu()


def cached_reference(key: dict, compute: Callable[[], torch.Tensor], use_cache: bool = True) -> tuple[torch.Tensor, bool]:
    """Float64 references are slow (float64 convolutions) and deterministic: cache them
    under benchmarks/results/cache, keyed by the workload settings and the torch version."""
    key = {**key, "torch": torch.__version__, "v": 2}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = RESULTS / "cache" / f"ref-{digest}.pt"
    if use_cache and path.exists():
        return torch.load(path), True
    ref = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ref, path)
    return ref, False


def max_abs_err(grid: Any, ref: torch.Tensor) -> float:
    g = torch.as_tensor(grid, dtype=torch.float64)
    if g.shape != ref.shape:
        raise ValueError(f"grid shape {tuple(g.shape)} != reference {tuple(ref.shape)}")
    both_nan = torch.isnan(g) & torch.isnan(ref)
    d = (g - ref).abs().masked_fill(both_nan, 0.0)
    return float("nan") if torch.isnan(d).any() else float(d.max())


def workload_reference(w: Any, n: int, ma: nn.Module, mb: nn.Module, names_a: list[str], names_b: list[str],
                       loader: Any, device: torch.device, use_cache: bool = True) -> tuple[torch.Tensor, bool]:
    """The float64 reference (models run in float64) of workload ``w`` at ``n`` samples,
    from the cache where it is there: ``(grid, whether it was cached)``."""
    key = {"n": n, "size": w.image_size, "batch": w.batch, "layers": [str(x) for x in w.layers],
           "kind": w.kind, "device": device.type}
    return cached_reference(
        key, lambda: reference_grid(ma, mb, names_a, names_b, loader, device, torch.float64), use_cache=use_cache)
