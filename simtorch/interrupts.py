"""What a pass that stops early leaves in the metrics: sums of whole, verified batches only.

Two guards keep it so. :class:`DeferInterrupt` holds Ctrl-C back while the metrics update
(an interruption between two additions of one ``update`` would tear the sums), and
:class:`VerifiedStates` keeps a copy of the metrics' states at the last batch whose NaN/inf
check passed, to roll back to when a deferred check (on an accelerator, every 64 batches)
finds a bad batch later. :func:`resumable` says whether a metric's declared states are all
it keeps, which both the roll-back and a resumable pass rely on.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from torch import Tensor

from .metrics.base import Metric

if TYPE_CHECKING:
    from .placement import FiniteGuard

__all__ = ["DeferInterrupt", "VerifiedStates", "resumable"]


class DeferInterrupt:
    """Ctrl-C (SIGINT) held back while metrics update their sums, then raised: an
    interruption between two additions of one ``update`` would leave sums that belong to
    no set of batches, and the partial result computed from them would be wrong. Only in
    the main thread and only over a Python-level SIGINT handler; otherwise a no-op."""

    def __init__(self) -> None:
        self.active = False
        self.pending = False
        self.prev: Any = None
        self.installed = False

    def __enter__(self) -> "DeferInterrupt":
        if threading.current_thread() is threading.main_thread():
            try:
                prev = signal.getsignal(signal.SIGINT)
                if callable(prev):
                    self.prev = prev
                    signal.signal(signal.SIGINT, self._handler)
                    self.installed = True
            except (ValueError, OSError):  # pragma: no cover - embedded interpreters
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.installed:
            try:
                signal.signal(signal.SIGINT, self.prev)
            except (ValueError, OSError):  # pragma: no cover
                pass
            self.installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.active:
            self.pending = True
            return
        self.prev(signum, frame)

    @contextmanager
    def hold(self) -> Iterator[None]:
        self.active = True
        try:
            yield
        finally:
            self.active = False
        if self.pending:
            self.pending = False
            self.prev(signal.SIGINT, None)  # the default handler raises KeyboardInterrupt here


def resumable(metric: Metric) -> bool:
    """Whether a bound metric's declared states are all it keeps across batches (so a
    saved state resumes it): its ``resumable`` flag when it has one, else False while it
    holds a feature buffer (``metric.buffer``, as Information Imbalance with
    ``subset_size``/``exact`` and the neighbourhood measures with ``exact=True``)."""
    flag = getattr(metric, "resumable", None)
    if flag is not None:
        return bool(flag)
    return getattr(metric, "buffer", None) is None


class VerifiedStates:
    """The metrics' states at the last verified batch, when the NaN/inf check of
    ``guard`` is deferred (``guard.immediate`` False); nothing is copied when every batch
    is checked before it reaches the sums."""

    def __init__(self, guard: "FiniteGuard", metrics: Sequence[Metric]) -> None:
        self.guard = guard
        self.metrics = metrics
        self.deferred = not guard.immediate
        #: ``(batches, state dicts)`` at the last verified batch
        self.snapshot: tuple[int, list[dict[str, Any]]] | None = None

    def take(self, done: int) -> None:
        """Copy every metric's states as those of ``done`` verified batches."""
        if self.deferred:
            # cloned: state_dict() may hand out the live tensors (``.cpu()`` of a CPU tensor)
            self.snapshot = (done, [{k: v.clone() if isinstance(v, Tensor) else v for k, v in m.state_dict().items()}
                                    for m in self.metrics])

    def due(self) -> bool:
        """Whether the deferred check should look at its pending flags now."""
        return self.deferred and self.guard.due()

    def verify(self, done: int) -> int:
        """Look at the pending NaN flags; on a bad batch roll the metrics back to their copy
        at the last verified batch and re-raise, the exception saying how many batches the
        sums now hold (``simtorch_batches``). Returns ``done`` when all is well."""
        try:
            self.guard.flush()
        except FloatingPointError as exc:
            if self.snapshot is None:  # checked per batch: the bad batch never reached the sums
                exc.simtorch_batches = done  # type: ignore[attr-defined]
                raise
            back, states = self.snapshot
            torn = []
            for m, sd in zip(self.metrics, states):
                if resumable(m):
                    m.load_state_dict(sd)
                else:
                    torn.append(m)  # buffered features are not in the copy: no partial result from it
            exc.simtorch_torn = torn  # type: ignore[attr-defined]
            exc.simtorch_batches = back  # type: ignore[attr-defined]
            raise
        self.take(done)
        return done
