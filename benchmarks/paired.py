"""Statistics of paired rounds: phases timed in turn, round after round (``peers.py``,
``compare3.py``), so that the drifts of a shared machine cancel within a round."""

from __future__ import annotations

import random
import statistics


def median_interval(ratios: list[float], resamples: int = 4000, seed: int = 0) -> list[float]:
    """A 95 % bootstrap interval of the median of paired ratios (percentile method, fixed
    seed): how far the median could move on a rerun of the same machine, i.e. whether a
    ratio above or below a target is more than the noise of a shared machine."""
    rng = random.Random(seed)
    k = len(ratios)
    meds = sorted(statistics.median(rng.choices(ratios, k=k)) for _ in range(resamples))
    return [meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]]


def wall(rd: dict, phase: str) -> float:
    """A phase's wall time in one round."""
    return rd[phase]["wall_s"]


def completed(runs: list[dict]) -> tuple[list[dict], list[dict], dict | None]:
    """``(the process sets that ran, all their rounds, None)``, or an error record when none did."""
    ok = [r for r in runs if "error" not in r]
    error = None if ok else {"error": runs[0]["error"] if runs else "no runs"}
    return ok, [rd for r in ok for rd in r["rounds"]], error
