"""The engine's side of a resumable pass (``RunOptions(state_path=...)``): opening the state
file and loading a saved state into the metrics, and the last save of an interrupted pass.
The file format and fingerprint are :mod:`simtorch.resume`'s. Nothing of the capture hooks
is saved: each batch's Grams depend on that batch alone (:func:`~simtorch.functional.capture_product`),
so a resumed pass makes the same ones as the uninterrupted pass (to the bit, unless a layer
failed the deferred precision check before the resume point: that layer is then centred
exactly on later batches of the uninterrupted pass only, the same values to float32
rounding, :class:`~simtorch.capture.LayerCapture`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .interrupts import resumable
from .metrics.base import Metric
from .resume import RunState

if TYPE_CHECKING:
    from .model import SimilarityModel
    from .options import RunOptions

__all__ = ["open_state", "save_on_exit"]


def open_state(model_a: "SimilarityModel", model_b: "SimilarityModel", loader: Iterable, metrics: Sequence[Metric],
               options: "RunOptions", rank: int, world: int,
               report: dict[str, Any]) -> tuple[RunState | None, int]:
    """The pass's :class:`RunState` (None without ``state_path``), with a saved state of
    the same run loaded into ``metrics``, and the number of loader batches the saved
    state already counts. ``report`` receives ``state_path`` and ``resumed_batches``."""
    if options.state_path is None:
        return None, 0
    stuck = [type(m).__name__ for m in metrics if not resumable(m)]
    if stuck:
        raise ValueError(
            f"state_path: {stuck} buffer features across batches, which are not declared states, so their pass "
            "cannot be saved and resumed; drop state_path, or use their per-batch form (e.g. Information "
            "Imbalance without subset_size/exact)"
        )
    state = RunState(options.state_path, options.save_every, rank, world)
    state.make_fingerprint(model_a, model_b, loader, metrics, options, rank, world)
    saved = state.load()
    resume_from = 0
    if saved is not None:
        for metric, sd in zip(metrics, saved["metrics"]):
            metric.load_state_dict(sd)
        resume_from = saved["batches"]
    report["state_path"] = str(state.path)
    if resume_from:
        report["resumed_batches"] = resume_from
    return state, resume_from


def save_on_exit(state: RunState, metrics: Sequence[Metric], done: int) -> None:
    """Keep the verified batches of an interrupted pass in the state file (never masks
    the real error)."""
    try:
        if done > state.saved_batches:
            state.save(metrics, done)
    except BaseException:  # pragma: no cover - a full disk must not hide the real error
        pass
