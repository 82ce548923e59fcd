"""What the head statistics cost in whole passes: reused from the first batch or not (issue 12).

    python benchmarks/prototypes/head_verdict.py [W1|W1-many|W1-wide] [rounds]   # default W1, 9

``simtorch.CKA`` on the workload (N = 1024, 2 threads, CPU) in two variants, paired round
by round in one process: ``shipped`` (each large layer's first rows decide, on every batch,
whether it is multiplied as it is or shifted, :func:`simtorch.functional.head_shift`) and
``reused`` (the verdict and shift of each hook call of the first batch reused on every later
batch, so the hooks read no head statistics after it). ``reused`` is what dropping the head
statistics could gain at most; it is not shippable as it stands, since a batch's Grams would
then depend on the batches before it, and a resumed pass would no longer make the same bits
as the uninterrupted one (``simtorch/pass_state.py``).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common as C  # noqa: E402
import simtorch  # noqa: E402
from simtorch import capture  # noqa: E402
from simtorch import functional as F  # noqa: E402


def main() -> None:
    C.set_threads(2)
    w, rounds, ma, mb, sa, sb, loader = C.prototype_setup("W1", 9)
    shipped = F.head_shift
    first: dict[int, Any] = {}
    calls = [0]

    def reused(x: Any) -> Any:
        k = calls[0]
        calls[0] += 1
        if k not in first:
            first[k] = shipped(x)
        return first[k]

    reset = capture.LayerCapture.reset

    def counting_reset(self: Any, n: int, inputs: Any = None) -> None:
        calls[0] = 0 if self.sm is sa else 1 << 20  # the call order restarts with each forward pass
        reset(self, n, inputs)

    variants = {"shipped": shipped, "reused": reused}
    times: dict[str, list[float]] = {v: [] for v in variants}
    capture.LayerCapture.reset = counting_reset  # type: ignore[method-assign]
    try:
        for r in range(rounds + 1):  # the first round warms up
            for v in (list(variants) if r % 2 else list(variants)[::-1]):
                F.head_shift = variants[v]
                t = C.timed(lambda: simtorch.CKA(sa, sb, progress=False).compute(loader), torch.device("cpu"))
                if r:
                    times[v].append(t["wall_s"])
    finally:
        F.head_shift = shipped
        capture.LayerCapture.reset = reset  # type: ignore[method-assign]
    rel = [u / s - 1 for s, u in zip(times["shipped"], times["reused"])]
    print(f"{w.name}: {rounds} paired rounds, wall s per pass: shipped {statistics.median(times['shipped']):.3f}, "
          f"reused {statistics.median(times['reused']):.3f}; reused ÷ shipped − 1: median {statistics.median(rel):+.2%} "
          f"({min(rel):+.2%} to {max(rel):+.2%})")


if __name__ == "__main__":
    main()
