"""The engine's side of a resumable pass (``RunOptions(state_path=...)``): opening the state
file and loading a saved state into the metrics, the capture hooks' per-layer state that a
resumed pass needs to make its Grams as the uninterrupted one would, and the last save of
an interrupted pass. The file format and fingerprint are :mod:`simtorch.resume`'s."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from .capture import LayerCapture
from .interrupts import resumable
from .metrics.base import Metric
from .resume import RunState

if TYPE_CHECKING:
    from .model import SimilarityModel
    from .options import RunOptions

__all__ = ["CaptureStates", "open_state", "capture_states", "restore_captures", "save_on_exit"]

#: per side ("a", "b"), each layer's ``(mode, tensor or None)`` as the state file keeps it
CaptureStates = dict[str, list[tuple[str, Tensor | None]]]


def open_state(model_a: "SimilarityModel", model_b: "SimilarityModel", loader: Iterable, metrics: Sequence[Metric],
               options: "RunOptions", rank: int, world: int,
               report: dict[str, Any]) -> tuple[RunState | None, int, CaptureStates]:
    """The pass's :class:`RunState` (None without ``state_path``), with a saved state of
    the same run loaded into ``metrics``; also the number of loader batches the saved
    state already counts and the capture states it kept. ``report`` receives
    ``state_path`` and ``resumed_batches``."""
    if options.state_path is None:
        return None, 0, {}
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
    saved_captures: CaptureStates = {}
    if saved is not None:
        for metric, sd in zip(metrics, saved["metrics"]):
            metric.load_state_dict(sd)
        resume_from = saved["batches"]
        saved_captures = saved.get("captures") or {}
    report["state_path"] = str(state.path)
    if resume_from:
        report["resumed_batches"] = resume_from
    return state, resume_from, saved_captures


def capture_state(cap: LayerCapture) -> list[tuple[str, Tensor | None]] | None:
    """How each layer's hook makes its Gram from batch to batch, for a state file: a
    resumed pass must round its Grams as the uninterrupted one would. None when the
    capture keeps nothing across batches (no ``state_dict``)."""
    if hasattr(cap, "state_dict"):
        return cap.state_dict()  # type: ignore[no-any-return]
    return None


def load_capture_state(cap: LayerCapture, saved: list[tuple[str, Tensor | None]]) -> None:
    """Give a capture back the per-layer state :func:`capture_state` saved."""
    if hasattr(cap, "load_state_dict"):
        cap.load_state_dict(saved)


def capture_states(captures: Mapping[int, LayerCapture], model_a: "SimilarityModel",
                   model_b: "SimilarityModel") -> CaptureStates:
    """The capture states of both sides (one side when both are the same model)."""
    same = model_a is model_b
    out = {}
    for side, sm in (("a", model_a), ("b", model_b)):
        if id(sm) in captures and side not in out and not (side == "b" and same):
            got = capture_state(captures[id(sm)])
            if got is not None:
                out[side] = got
    return out


def restore_captures(captures: Mapping[int, LayerCapture], saved: CaptureStates, model_a: "SimilarityModel",
                     model_b: "SimilarityModel") -> None:
    """Load the capture states of a saved state into this pass's captures."""
    for side, sm in (("a", model_a), ("b", model_b)):
        if side in saved and id(sm) in captures:
            load_capture_state(captures[id(sm)], saved[side])


def save_on_exit(state: RunState, metrics: Sequence[Metric], done: int,
                 captures: Callable[[], CaptureStates] | None) -> None:
    """Keep the verified batches of an interrupted pass in the state file (never masks
    the real error)."""
    try:
        if done > state.saved_batches:
            state.save(metrics, done, captures=captures() if captures is not None else None)
    except BaseException:  # pragma: no cover - a full disk must not hide the real error
        pass
