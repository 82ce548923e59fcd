"""The engine's side of ``torch.distributed``: whether a pass runs under it, the one
error-flag exchange that lets every rank learn which rank failed (instead of waiting forever
in an all-reduce), and the all-reduce of the metrics' declared states and batch counts."""

from __future__ import annotations

import torch

from .metrics.base import Metric

__all__ = ["Peers", "is_distributed", "rank_world", "announce_failure", "check_peers", "from_peer",
           "all_reduce_states", "global_count", "MESSAGE_BYTES"]

#: bytes of a failing rank's error message carried by the error flag
MESSAGE_BYTES = 480


class Peers:
    """Whether this pass runs under torch.distributed, and whether this rank has made its
    one error-flag exchange (a second one would not be matched by the other ranks)."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.exchanged = False


def is_distributed() -> bool:
    """Whether a process group with more than one process is initialised."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def flag_exchange(failed: BaseException | None, device: torch.device) -> list[tuple[int, str]]:
    """One all-reduce every rank makes exactly once per pass: rank r writes row r
    (``[failed, message bytes…]``), so every rank learns which ranks failed and why."""
    import torch.distributed as dist

    rank, world = rank_world()
    rows = torch.zeros((world, 1 + MESSAGE_BYTES), dtype=torch.int32)
    if failed is not None:
        text = f"{type(failed).__name__}: {failed}".encode("utf-8", "replace")[:MESSAGE_BYTES]
        rows[rank, 0] = 1
        rows[rank, 1 : 1 + len(text)] = torch.tensor(list(text), dtype=torch.int32)
    # NCCL reduces CUDA tensors only; every other backend (gloo, mpi) takes CPU tensors
    if dist.get_backend() == "nccl":
        rows = rows.to(device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(rows)
    rows = rows.cpu()
    out = []
    for r in range(world):
        if int(rows[r, 0]):
            raw = bytes(int(b) for b in rows[r, 1:].tolist() if b).decode("utf-8", "replace")
            out.append((r, raw))
    return out


def announce_failure(exc: BaseException, device: torch.device) -> None:
    """The failing rank's side of the error flag; never masks its own error."""
    try:
        flag_exchange(exc, device)
    except BaseException:
        pass


def check_peers(device: torch.device) -> None:
    """The healthy ranks' side: raise naming every rank that failed."""
    failed = flag_exchange(None, device)
    if failed:
        rank, _ = rank_world()
        who = "; ".join(f"rank {r} failed with {msg}" for r, msg in failed)
        err = RuntimeError(
            f"rank {rank}: stopped because another process of the group failed: {who}. Its error is the one to fix; "
            "this rank's sums were not combined (a partial result would cover this rank's shard only)."
        )
        err._simtorch_peer = True  # type: ignore[attr-defined]
        raise err


def from_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is :func:`check_peers`' error (another rank failed, not this one)."""
    return bool(getattr(exc, "_simtorch_peer", False))


def all_reduce_states(metric: Metric) -> None:
    """Sum a metric's declared states and counters over every process of the default
    group, so each rank holds the statistics of the whole dataset."""
    import torch.distributed as dist

    for t in metric.reduce_tensors():
        dist.all_reduce(t)
    counters = metric.counters()
    if counters:
        counts = torch.tensor(list(counters.values()), dtype=torch.float64, device=metric.binding.device)
        dist.all_reduce(counts)
        metric.set_counters({k: int(round(v)) for k, v in zip(counters, counts.tolist())})


def global_count(n: int, device: torch.device) -> int:
    """``n`` summed over every process of the default group."""
    import torch.distributed as dist

    t = torch.tensor([n], dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return int(t.item())
