"""Where models run during a pass, and the check that their activations stay finite.

:class:`Placement` moves each model onto its run device for the pass and back after it,
even on error; :class:`FiniteGuard` names the layer and batch of a NaN/inf activation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .model import SimilarityModel

__all__ = ["Placement", "FiniteGuard", "resolve_device", "check_available"]


def resolve_device(device: str | torch.device | None, model: torch.nn.Module | None = None) -> torch.device:
    """``device`` as a torch.device; default: where ``model``'s parameters live, else CPU.

    A device this machine does not have (``"cuda"`` without CUDA, ``"cuda:3"`` on a
    two-GPU node, ``"mps"`` off Apple silicon) is a ``ValueError`` naming it and the fix,
    not the driver's error in the middle of the first batch."""
    if device is not None:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"device={device!r} is not a device torch knows ({exc}); use e.g. 'cpu' or 'cuda'") from None
        check_available(dev)
        return dev
    if model is not None:
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def check_available(dev: torch.device, what: str = "device") -> None:
    """Raise a one-line ``ValueError`` when ``dev`` is not on this machine."""
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{what}={str(dev)!r}: CUDA is not available on this machine (torch {torch.__version__}"
                f"{', built without CUDA' if torch.version.cuda is None else ', no GPU visible'}); use device='cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"{what}={str(dev)!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0…cuda:{torch.cuda.device_count() - 1}); pick one of them"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"{what}={str(dev)!r}: the MPS backend is not available on this machine; use device='cpu'")


def _same_device(current: set[torch.device], where: torch.device) -> bool:
    # 'cuda' and 'cuda:0' name the same device when 0 is the current one
    if len(current) != 1:
        return False
    (d,) = current
    if d.type != where.type:
        return False
    if where.index is None or d.index is None:
        return True
    return d.index == where.index


class Placement:
    """Moves models onto their run device for the computation and back afterwards."""

    def __init__(self, models: Sequence["SimilarityModel"], run_device: dict[int, torch.device]) -> None:
        self.moves: list[tuple[torch.nn.Module, torch.device]] = []
        seen: set[int] = set()
        try:
            for sm in models:
                if id(sm.model) in seen:
                    continue
                seen.add(id(sm.model))
                where = run_device[id(sm)]
                current = {p.device for p in sm.model.parameters()} | {b.device for b in sm.model.buffers()}
                if current and current != {where} and not _same_device(current, where):
                    if len(current) > 1:
                        if sm.device is not None:
                            continue  # placed by the user: it stays put, its inputs go to sm.device
                        raise ValueError(
                            f"{sm.model_name} is spread over several devices {sorted(map(str, current))}; "
                            "simtorch does not move such a model: give it a single device or place it yourself "
                            "and pass SimilarityModel(..., device=<its input device>)"
                        )
                    if next(iter(current)).type == "meta":
                        raise ValueError(
                            f"{sm.model_name} has its parameters on the 'meta' device (no data); materialise "
                            "it first (e.g. model.to_empty(device=...) then load_state_dict, or "
                            "load_state_dict(..., assign=True))"
                        )
                    self.moves.append((sm.model, next(iter(current))))
                    sm.model.to(where)
        except BaseException:
            self.restore()  # a model moved before the failure goes back where it was
            raise

    def restore(self) -> None:
        for model, where in self.moves:
            model.to(where)


class FiniteGuard:
    """Raises, naming layer and batch, when an activation held NaN/inf.

    On CPU it checks each batch as it is added, before any metric sees it. On an
    accelerator it keeps device-side flags and looks every ``sync_every`` batches (64) and
    at the end, so the loop never waits on the device; the engine then keeps a copy of
    the metrics' states at the last verified batch, so a bad batch found late never stays
    in the sums (see :func:`simtorch.engine.stream`).
    """

    #: batches between two looks on an accelerator, and on the CPU
    ACCELERATOR_SYNC_EVERY = 64
    CPU_SYNC_EVERY = 1

    def __init__(self, device: torch.device, sync_every: int | None = None) -> None:
        if sync_every is None:
            sync_every = self.CPU_SYNC_EVERY if device.type == "cpu" else self.ACCELERATOR_SYNC_EVERY
        if sync_every < 1:
            raise ValueError(f"sync_every must be ≥ 1, got {sync_every}")
        self.sync_every = int(sync_every)
        self.pending: list[tuple[int, str, list[str], Tensor]] = []
        self._batches = 0  # distinct batches among the pending flags (two models add two each)

    @property
    def immediate(self) -> bool:
        """Each batch is checked when added (before the metrics' update)."""
        return self.sync_every == 1

    def add(self, index: int, sm: "SimilarityModel", energy: Tensor) -> None:
        if not self.pending or self.pending[-1][0] != index:
            self._batches += 1
        self.pending.append((index, sm.model_name, sm.layer_names, torch.isfinite(energy)))
        if self.immediate:
            self.flush()

    def due(self) -> bool:
        """``sync_every`` batches are waiting for a look."""
        return self._batches >= self.sync_every

    def flush(self) -> None:
        try:
            for index, name, layers, ok in self.pending:
                if not bool(ok.all()):
                    bad = [layer for layer, fine in zip(layers, ok.tolist()) if not fine]
                    raise FloatingPointError(
                        f"{name}: an activation in batch {index} holds NaN or inf (layers {bad}); check the "
                        "input data and the model (e.g. fp16 overflow), or drop those layers"
                    )
        finally:
            self.pending.clear()
            self._batches = 0
