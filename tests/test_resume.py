"""Resumable passes (issue 13, case 6): ``state_path=``/``save_every=`` save the metrics'
declared sums and the batch counter atomically; a later call with the same arguments skips
the counted batches and gives the grid of an uninterrupted run; a state from another run is
refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from simtorch import CKA, InformationImbalance, SimilarityModel, compare
from simtorch.engine import RunOptions
from simtorch.resume import parse_save_every, state_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["fc1", "act", "fc2"]


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(5, 7), act=nn.ReLU(), fc2=nn.Linear(7, 3)))


def batches(k: int = 10, n: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(k * n, 2, generator=g)
    x = z @ torch.randn(2, 5, generator=g) + 0.5 * torch.randn(k * n, 5, generator=g)
    return list(x.split(n))


def counted(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# ---------------------------------------------------------------- SIGKILL mid-way, in a subprocess

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, json
    from collections import OrderedDict
    import numpy as np, torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from simtorch import SimilarityModel, compare

    torch.set_num_threads(1)
    state, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def net(seed):
        torch.manual_seed(seed)
        return nn.Sequential(OrderedDict(fc1=nn.Linear(5, 7), act=nn.ReLU(), fc2=nn.Linear(7, 3)))

    g = torch.Generator().manual_seed(0)
    z = torch.randn(96, 2, generator=g)
    x = z @ torch.randn(2, 5, generator=g) + 0.5 * torch.randn(96, 5, generator=g)
    loader = DataLoader(TensorDataset(x, torch.zeros(96)), batch_size=8, shuffle=False)

    class Killing:
        def __init__(self, inner):
            self.inner = inner
            self.dataset = inner.dataset
        def __len__(self):
            return len(self.inner)
        def __iter__(self):
            for i, b in enumerate(self.inner):
                if i == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield b

    ma, mb = net(0), net(1)
    calls = [0]
    ma.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    a = SimilarityModel(ma, "A", ["fc1", "act", "fc2"])
    b = SimilarityModel(mb, "B", ["fc1", "act", "fc2"])
    kw = {} if state == "-" else {"state_path": state, "save_every": 1}
    res = compare(a, b, Killing(loader), ["cka", "dcka", "ii"], progress=False, **kw)
    np.savez(out, **{k + "_matrix": r.matrix for k, r in res.items()},
             **{k + "_stderr": r.stderr for k, r in res.items()})
    with open(out + ".json", "w") as f:
        json.dump({"calls": calls[0], "settings": {k: {s: v for s, v in r.settings.items()
                                                      if s in ("resumed_batches", "state_path")}
                                                  for k, r in res.items()},
                   "n": {k: [r.n_samples, r.n_batches] for k, r in res.items()}}, f)
    """
)


def run_script(tmp_path: Path, state: str, out: str, kill_at: int) -> subprocess.CompletedProcess:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, str(script), state, out, str(kill_at)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkill_mid_way_then_resume_gives_the_uninterrupted_grid(tmp_path):
    state = str(tmp_path / "run_state.npz")
    killed = run_script(tmp_path, state, str(tmp_path / "killed.npz"), kill_at=5)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert Path(state).exists() and not (tmp_path / "killed.npz").exists()
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write leaves no temp file behind
    with np.load(state, allow_pickle=False) as z:  # plain arrays, no pickle
        header = json.loads(bytes(z["__header__"]).decode())
    assert header["batches"] == 5 and header["format"] == "simtorch-run-state"

    resumed = run_script(tmp_path, state, str(tmp_path / "resumed.npz"), kill_at=-1)
    assert resumed.returncode == 0, resumed.stderr
    whole = run_script(tmp_path, "-", str(tmp_path / "whole.npz"), kill_at=-1)
    assert whole.returncode == 0, whole.stderr

    info = json.loads((tmp_path / "resumed.npz.json").read_text())
    assert info["calls"] == 12 - 5  # the 5 counted batches did not run the model again
    assert all(s["resumed_batches"] == 5 for s in info["settings"].values())
    assert info["n"] == json.loads((tmp_path / "whole.npz.json").read_text())["n"]
    with np.load(tmp_path / "resumed.npz") as got, np.load(tmp_path / "whole.npz") as want:
        assert set(got.files) == set(want.files) and len(got.files) == 6
        for key in want.files:
            np.testing.assert_allclose(got[key], want[key], atol=1e-12, rtol=0, err_msg=key)
            if key.endswith("_matrix"):
                assert np.isfinite(want[key]).all()


# ---------------------------------------------------------------- in-process


def pair():
    return SimilarityModel(net(0), "A", LAYERS), SimilarityModel(net(1), "B", LAYERS)


class Listed(list):
    """A list of batches (a loader with a length)."""


class interrupted:
    """The batches of ``xs`` (same length), with Ctrl-C when batch ``at`` is due."""

    def __init__(self, xs, at):
        self.xs, self.at = xs, at

    def __len__(self):
        return len(self.xs)

    def __iter__(self):
        for i, x in enumerate(self.xs):
            if i == self.at:
                raise KeyboardInterrupt
            yield x


def test_ctrl_c_saves_and_compute_resumes(tmp_path):
    xs = Listed(batches())
    a, b = pair()
    path = tmp_path / "cka.npz"
    whole = CKA(a, b, progress=False).compute(xs)
    calls = counted(a.model)
    sim = CKA(a, b, progress=False, state_path=path, save_every="1h")  # only the interruption saves
    with pytest.raises(KeyboardInterrupt):
        sim.compute(interrupted(xs, 4))
    assert sim.result.n_batches == 4 and sim.result.settings["state_path"] == str(path)
    calls[0] = 0
    again = CKA(a, b, progress=False, state_path=path)
    got = again.compute(xs)
    assert calls[0] == len(xs) - 4
    np.testing.assert_allclose(got, whole, atol=1e-12, rtol=0)
    ref = CKA(a, b, progress=False)
    ref.compute(xs)
    np.testing.assert_allclose(again.result.stderr, ref.result.stderr, atol=1e-12, rtol=0)
    assert again.result.settings["resumed_batches"] == 4
    # a finished run's state: the same result, without running the models
    calls[0] = 0
    np.testing.assert_allclose(CKA(a, b, progress=False, state_path=path).compute(xs), whole, atol=1e-12, rtol=0)
    assert calls[0] == 0


def test_stderr_and_counts_match_after_resume(tmp_path):
    xs = Listed(batches(12))
    a, b = pair()
    whole = compare(a, b, xs, ["cka", "dcka", "ii"], progress=False)
    with pytest.raises(KeyboardInterrupt):
        compare(a, b, interrupted(xs, 7), ["cka", "dcka", "ii"], progress=False, state_path=tmp_path / "s.npz",
                save_every=3)
    got = compare(a, b, xs, ["cka", "dcka", "ii"], progress=False, state_path=tmp_path / "s.npz", save_every=3)
    for key in whole:
        np.testing.assert_allclose(got[key].matrix, whole[key].matrix, atol=1e-12, rtol=0)
        np.testing.assert_allclose(got[key].stderr, whole[key].stderr, atol=1e-12, rtol=0)
        assert (got[key].n_samples, got[key].n_batches) == (whole[key].n_samples, whole[key].n_batches)


def test_batch_sizes_of_the_whole_pass_survive_a_resume(tmp_path):
    """A batch of another size before the interruption (II, mutual kNN) is still reported
    after the resume: the batch sizes are part of the saved state, not of one process."""
    g = torch.Generator().manual_seed(3)
    xs = Listed(torch.randn(n, 5, generator=g) for n in (16, 16, 12, 16, 16, 16))
    a, b = pair()
    metrics = ["ii", "mknn"]
    with pytest.warns(UserWarning, match="different sizes"):
        whole = compare(a, b, xs, metrics, progress=False)
    with pytest.raises(KeyboardInterrupt):
        compare(a, b, interrupted(xs, 4), metrics, progress=False, state_path=tmp_path / "s.npz", save_every=1)
    with pytest.warns(UserWarning) as caught:
        got = compare(a, b, xs, metrics, progress=False, state_path=tmp_path / "s.npz")
    assert got["ii"].settings["resumed_batches"] == 4
    said = " ".join(str(w.message) for w in caught)
    assert "II: subsets (batches) of different sizes [12, 16]" in said
    assert "mutual kNN: batches of different sizes [12, 16]" in said
    for key in metrics:
        assert got[key].settings["subset_sizes"] == whole[key].settings["subset_sizes"] == [12, 16]
        np.testing.assert_allclose(got[key].matrix, whole[key].matrix, atol=1e-12, rtol=0)


@pytest.mark.parametrize("change", ["layers", "weights", "metric", "first_batch", "length"])
def test_a_state_of_another_run_is_refused(tmp_path, change):
    xs = Listed(batches())
    a, b = pair()
    path = tmp_path / "s.npz"
    with pytest.raises(KeyboardInterrupt):
        CKA(a, b, progress=False, state_path=path).compute(interrupted(xs, 3))
    kwargs, loader = {}, xs
    if change == "layers":
        b = SimilarityModel(net(1), "B", ["fc1", "fc2"])
    elif change == "weights":
        b = SimilarityModel(net(2), "B", LAYERS)
    elif change == "metric":
        kwargs = {"kernel": "rbf"}
    elif change == "first_batch":
        loader = Listed(batches(seed=1))  # e.g. a shuffled loader
    elif change == "length":
        loader = Listed(batches(11))
    want = {"layers": "layers_b", "weights": "weights_b", "metric": "metrics", "first_batch": "first batch differs",
            "length": "loader_batches"}[change]
    with pytest.raises(ValueError, match=f"holds the state of another run.*{want}.*Delete the file"):
        CKA(a, b, progress=False, state_path=path, **kwargs).compute(loader)


def test_a_file_that_is_not_a_state_is_named(tmp_path):
    path = tmp_path / "s.npz"
    path.write_bytes(b"not a zip")
    a, b = pair()
    with pytest.raises(ValueError, match="not a readable simtorch run state"):
        CKA(a, b, progress=False, state_path=path).compute(batches())


def test_buffering_metrics_refuse_state_path(tmp_path):
    a, b = pair()
    with pytest.raises(ValueError, match="state_path.*buffer features.*cannot be saved"):
        InformationImbalance(a, b, subset_size=16, progress=False, state_path=tmp_path / "s.npz").compute(batches())


def test_save_every_forms():
    assert parse_save_every(5) == ("batches", 5.0)
    assert parse_save_every("5") == ("batches", 5.0)
    assert parse_save_every(2.5) == ("seconds", 2.5)
    assert parse_save_every("30s") == ("seconds", 30.0)
    assert parse_save_every("5m") == ("seconds", 300.0)
    assert parse_save_every("1h") == ("seconds", 3600.0)
    assert parse_save_every(None) == ("seconds", 60.0)
    for bad in (0, -1, "soon", True, "0s"):
        with pytest.raises((ValueError, TypeError), match="save_every"):
            parse_save_every(bad)
    with pytest.raises(ValueError, match="needs state_path"):
        RunOptions(save_every=10)


def test_each_rank_has_its_own_state_file():
    assert state_file("run.npz") == Path("run.npz")
    assert state_file("out/run.npz", 1, 4) == Path("out/run.rank1-of-4.npz")
    assert state_file("out/run", 0, 2) == Path("out/run.rank0-of-2.npz")
