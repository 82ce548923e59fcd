"""A rendezvous for the torch.distributed tests that cannot race.

Picking a free TCP port (bind to port 0, read it, close) and handing it to the ranks leaves
a window in which another process on a busy machine can take that port before rank 0 binds
it; the group then fails to start and the test errors for a reason that has nothing to do
with simtorch. A file store has no port: every rank opens the same fresh file.
"""

from __future__ import annotations

import uuid
from pathlib import Path


def file_store(directory: str | Path) -> str:
    """``init_method`` for :func:`torch.distributed.init_process_group`: a ``file://`` URL
    of a file that does not exist yet, in ``directory`` (a test's tmp path)."""
    return (Path(directory).resolve() / f"store-{uuid.uuid4().hex}").as_uri()
