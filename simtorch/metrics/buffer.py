"""Feature buffering for the measures that need samples pooled across batches.

Information Imbalance over subsets, the neighbourhood measures with ``exact=True`` and the
shape/CCA measures keep each layer's (optionally randomly projected) features until a
subset or the whole dataset is complete. This module holds the fixed-seed projection, the
memory check that refuses early, and the buffer itself.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

__all__ = ["Projector", "FeatureBuffer", "available_bytes", "gib"]


class Projector:
    """``x ↦ x P / sqrt(p)`` with a fixed-seed Gaussian ``P`` (d, p) per feature width d
    (Johnson–Lindenstrauss: distances kept within a factor 1 ± O(1/sqrt(p))). ``P`` is drawn
    on the CPU, so it is the same on every device; features no wider than p are kept as is.
    Non-float features become float32, half precision becomes float32."""

    def __init__(self, dim: int | None, seed: int) -> None:
        self.dim, self.seed = dim, seed
        self.cache: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}

    def __call__(self, x: Tensor) -> Tensor:
        if not x.dtype.is_floating_point or x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        d = x.shape[1]
        if self.dim is None or d <= self.dim:
            return x
        key = (d, x.dtype, x.device)
        if key not in self.cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + d)
            p = torch.randn(d, self.dim, generator=g, dtype=torch.float32) / math.sqrt(self.dim)
            self.cache[key] = p.to(device=x.device, dtype=x.dtype)
        return x @ self.cache[key]

    def __eq__(self, other: object) -> bool:
        # two metrics of one pass with the same projection share one set of features
        return isinstance(other, Projector) and (self.dim, self.seed) == (other.dim, other.seed)

    def __hash__(self) -> int:
        return hash((self.dim, self.seed))


def available_bytes(device: torch.device) -> float:
    """Free memory on ``device`` (CUDA: free device memory; CPU: MemAvailable), or inf."""
    if device.type == "cuda":
        try:
            return float(torch.cuda.mem_get_info(device)[0])
        except Exception:  # pragma: no cover - depends on the driver
            return math.inf
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return math.inf


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


class FeatureBuffer:
    """Per-layer features of both sides, appended batch by batch and taken in subsets.

    ``check(planned, what)`` refuses with one line (the bytes needed, the limit, the fixes)
    before the buffer would hold more than ``memory_limit`` bytes (default: half of the
    memory available on the device).
    """

    def __init__(self, layers_a: int, layers_b: int, same: bool, device: torch.device,
                 metric: str, projection_dim: int | None, memory_limit: int | None) -> None:
        self.same = same
        self.device = device
        self.metric = metric
        self.projection_dim = projection_dim
        self.memory_limit = memory_limit
        self.a: list[list[Tensor]] = [[] for _ in range(layers_a)]
        self.b: list[list[Tensor]] = [[] for _ in range(0 if same else layers_b)]
        self.count = 0
        self.bytes_per_sample: int | None = None

    def check(self, planned: int, what: str, extra_fixes: tuple[str, ...] = ()) -> None:
        """Refuse, before the buffer outgrows it, to hold ``planned`` samples."""
        per = self.bytes_per_sample or 0
        need = planned * per
        limit = self.memory_limit if self.memory_limit is not None else available_bytes(self.device) / 2
        if need > limit:
            fixes = [*extra_fixes, "fewer layers", "a larger memory_limit"]
            if self.projection_dim is None:
                fixes.insert(0, "projection_dim=256 (a fixed-seed random projection of each layer's features)")
            raise ValueError(
                f"{self.metric}: {what} × {per} bytes per sample = {gib(need)}, more than the "
                f"{gib(limit)} allowed on {self.device} ("
                f"{'memory_limit' if self.memory_limit is not None else 'half of the available memory'}). "
                f"Pass {', or '.join(fixes)}."
            )

    def measure(self, feats_a: list[Tensor], feats_b: list[Tensor] | None) -> int:
        """Bytes per sample of one batch's features (set once)."""
        if self.bytes_per_sample is None:
            per = sum(f.shape[1] * f.element_size() for f in feats_a)
            if not self.same and feats_b is not None:
                per += sum(f.shape[1] * f.element_size() for f in feats_b)
            self.bytes_per_sample = per
        return self.bytes_per_sample

    def append(self, feats_a: list[Tensor], feats_b: list[Tensor] | None, n: int) -> None:
        for buf, f in zip(self.a, feats_a):
            buf.append(f)
        if not self.same:
            for buf, f in zip(self.b, feats_b or []):
                buf.append(f)
        self.count += n

    @staticmethod
    def _take_side(buf: list[list[Tensor]], k: int) -> list[Tensor]:
        out = []
        for i, chunks in enumerate(buf):
            x = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
            out.append(x[:k])
            buf[i] = [x[k:]] if x.shape[0] > k else []
        return out

    def take(self, k: int) -> tuple[list[Tensor], list[Tensor] | None]:
        """Pop the first ``k`` buffered samples of every layer (side b None when same)."""
        xa = self._take_side(self.a, k)
        xb = None if self.same else self._take_side(self.b, k)
        self.count -= k
        return xa, xb

    def clear(self) -> None:
        self.a = [[] for _ in self.a]
        self.b = [[] for _ in self.b]
        self.count = 0
