"""torch.distributed (gloo, two CPU processes): one failing rank must not hang the others
(issue 13, case 7), and each rank keeps its own state file (case 6).

Each rank is a plain subprocess (``init_process_group`` with a timeout, as the README
recipe sets), so a rank that dies cannot take the test runner with it; every process must
finish within a bounded time, well under the process group's timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
from rendezvous import file_store

ROOT = Path(__file__).resolve().parents[1]
PG_TIMEOUT = 60  # seconds; a rank that waited for it would show in the elapsed time

SCRIPT = textwrap.dedent(
    """
    import datetime, json, os, sys, time
    from collections import OrderedDict
    import numpy as np, torch
    import torch.distributed as dist
    from torch import nn
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    from simtorch import CKA, SimilarityModel, compare

    rank, mode, out, state = int(os.environ["RANK"]), sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=os.environ["STORE"], rank=rank, world_size=int(os.environ["WORLD_SIZE"]),
                            timeout=datetime.timedelta(seconds=int(os.environ["PG_TIMEOUT"])))

    def net(seed):
        torch.manual_seed(seed)
        return nn.Sequential(OrderedDict(fc1=nn.Linear(5, 7), act=nn.ReLU(), fc2=nn.Linear(7, 3)))

    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(128, 5, generator=g) + 1, torch.zeros(128))
    loader = DataLoader(ds, batch_size=8, sampler=DistributedSampler(ds, shuffle=False))

    class FailingAt:
        def __init__(self, inner, at):
            self.inner, self.at = inner, at
        def __len__(self):
            return len(self.inner)
        def __iter__(self):
            for i, b in enumerate(self.inner):
                if i == self.at:
                    raise ValueError(f"bad batch {i} on rank {rank}")
                yield b

    ma = net(0)
    calls = [0]
    ma.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    a = SimilarityModel(ma, "A", ["fc1", "act", "fc2"])
    b = SimilarityModel(net(1), "B", ["fc1", "act", "fc2"])
    result = {"rank": rank}
    start = time.monotonic()
    try:
        if mode == "fail":
            data = FailingAt(loader, 3) if rank == 1 else loader
            compare(a, b, data, ["cka", "ii"], progress=False)
        else:  # interrupted on every rank at batch 5, then resumed; and a whole run to compare
            class Stop:
                sampler = loader.sampler
                def __len__(self):
                    return len(loader)
                def __iter__(self):
                    for i, b in enumerate(loader):
                        if i == 5:
                            raise KeyboardInterrupt
                        yield b
            try:
                CKA(a, b, progress=False, state_path=state, save_every="1h").compute(Stop())
            except KeyboardInterrupt:
                result["files"] = sorted(os.listdir(os.path.dirname(state)))
            calls[0] = 0
            sim = CKA(a, b, progress=False, state_path=state)
            result["grid"] = sim.compute(loader).tolist()
            result["resumed_calls"] = calls[0]
            result["n"] = sim.result.n_samples
            result["resumed"] = sim.result.settings.get("resumed_batches", 0)
            result["whole"] = CKA(a, b, progress=False).compute(loader).tolist()
        result["error"] = None
    except BaseException as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["elapsed"] = time.monotonic() - start
    result["calls"] = calls[0]
    with open(out, "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()
    """
)


def run_ranks(tmp_path: Path, mode: str, state: str = "-", tag: str = "") -> list[dict]:
    script = tmp_path / "rank.py"
    script.write_text(SCRIPT)
    store = file_store(tmp_path)
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "STORE": store, "PG_TIMEOUT": str(PG_TIMEOUT),
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        out = tmp_path / f"{mode}{tag}.rank{rank}.json"
        procs.append((subprocess.Popen([sys.executable, str(script), mode, str(out), state], env=env, cwd=tmp_path,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), out))
    deadline = time.monotonic() + PG_TIMEOUT + 120
    results = []
    for p, out in procs:
        try:
            log, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q, _ in procs:
                q.kill()
            pytest.fail(f"a rank hung: no exit within the bound ({mode})")
        assert out.exists(), f"rank wrote no result; exit {p.returncode}:\n{log}"
        results.append(json.loads(out.read_text()))
    return results


pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def test_one_failing_rank_makes_every_rank_fail_fast_naming_its_error(tmp_path):
    r0, r1 = run_ranks(tmp_path, "fail")
    assert r1["error"] == "ValueError: bad batch 3 on rank 1"
    assert r0["error"] is not None and r0["error"].startswith("RuntimeError")
    assert "rank 1 failed with ValueError: bad batch 3 on rank 1" in r0["error"]
    # bounded: the flag, not the process group's timeout, ended the wait
    assert r0["elapsed"] < PG_TIMEOUT / 2 and r1["elapsed"] < PG_TIMEOUT / 2


def test_each_rank_keeps_and_resumes_its_own_state(tmp_path):
    state = str(tmp_path / "run.npz")
    ranks = run_ranks(tmp_path, "state", state)
    for r in ranks:
        assert r["error"] is None, r
        assert {"run.rank0-of-2.npz", "run.rank1-of-2.npz"} <= set(r["files"]) and "run.npz" not in r["files"]
        assert r["resumed"] == 5 and r["resumed_calls"] == 8 - 5  # 8 batches per rank, 5 already counted
        assert r["n"] == 128  # the all-reduced whole-data count
        np.testing.assert_allclose(r["grid"], r["whole"], atol=1e-12, rtol=0)
    assert ranks[0]["grid"] == ranks[1]["grid"]
