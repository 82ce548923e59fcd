"""Checkpoint loading (weights-only, nested, prefixed, strict) and compare_checkpoints.

The central check: checkpoints that differ by a known orthogonal rotation of a layer's
weights give linear CKA 1 exactly where theory says so (CKA is invariant to orthogonal
transformations, not to general invertible ones, and not through a ReLU).
"""

from __future__ import annotations

import argparse
import copy
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from simtorch import CKA, SimilarityModel, SimilarityResult, compare, compare_checkpoints
from simtorch import checkpoints
from simtorch.checkpoint_io import load_checkpoint, load_state_dict
from simtorch.checkpoint_result import CheckpointComparison

LAYERS = ["fc1", "fc2", "relu", "fc3"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(fc1=nn.Linear(20, 16), fc2=nn.Linear(16, 12), relu=nn.ReLU(), fc3=nn.Linear(12, 5))
    )


def data(n: int = 96, batch_size: int = 16, seed: int = 0) -> DataLoader:
    x = torch.randn(n, 20, generator=torch.Generator().manual_seed(seed))
    return DataLoader(TensorDataset(x), batch_size=batch_size, shuffle=False)


def orthogonal(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def rotated_checkpoints() -> dict[str, dict[str, torch.Tensor]]:
    """base; fc1 rotated by Q with fc2 compensating (fc2 unchanged as a function); fc2's
    output rotated (so fc2 rotates, but ReLU and fc3 then change); fc1 mixed by a random
    invertible, non-orthogonal matrix."""
    base = mlp(0).state_dict()
    q16, q12 = orthogonal(16, 1), orthogonal(12, 2)
    rot1 = copy.deepcopy(base)
    rot1["fc1.weight"], rot1["fc1.bias"] = q16 @ base["fc1.weight"], q16 @ base["fc1.bias"]
    rot1["fc2.weight"] = base["fc2.weight"] @ q16.T
    rot2 = copy.deepcopy(base)
    rot2["fc2.weight"], rot2["fc2.bias"] = q12 @ base["fc2.weight"], q12 @ base["fc2.bias"]
    mixed = copy.deepcopy(base)
    a = torch.eye(16) + 0.8 * torch.randn(16, 16, generator=torch.Generator().manual_seed(3))
    mixed["fc1.weight"], mixed["fc1.bias"] = a @ base["fc1.weight"], a @ base["fc1.bias"]
    return {"base": base, "rot_fc1": rot1, "rot_fc2": rot2, "mixed_fc1": mixed}


# ------------------------------------------------------------------ theory: orthogonal invariance


def test_orthogonal_rotation_gives_cka_one_where_theory_says(tmp_path):
    paths = {}
    for name, sd in rotated_checkpoints().items():
        paths[name] = tmp_path / f"{name}.pt"
        torch.save(sd, paths[name])
    cmp = compare_checkpoints(mlp, {k: str(v) for k, v in paths.items()}, data(), layers=LAYERS,
                              reference="base", progress=False)
    v = {label: dict(zip(cmp.layers, row)) for label, row in zip(cmp.labels, cmp.values)}
    one = dict(rel=0, abs=1e-6)
    # fc1 rotated by Q, fc2 sees Qᵀ Q = I: every layer is a rotation of (or equal to) the base
    for layer in LAYERS:
        assert v["rot_fc1"][layer] == pytest.approx(1.0, **one)
        assert v["base"][layer] == pytest.approx(1.0, **one)
    # fc2's output rotated: fc1, fc2 give 1; the ReLU of a rotated vector is not a rotation
    assert v["rot_fc2"]["fc1"] == pytest.approx(1.0, **one)
    assert v["rot_fc2"]["fc2"] == pytest.approx(1.0, **one)
    assert v["rot_fc2"]["relu"] < 0.98 and v["rot_fc2"]["fc3"] < 0.98
    # a general invertible map is not an invariance of linear CKA
    assert v["mixed_fc1"]["fc1"] < 0.98
    # the same values from the plain two-model CKA
    ref_model = mlp()
    ref_model.load_state_dict(rotated_checkpoints()["base"])
    other = mlp()
    other.load_state_dict(rotated_checkpoints()["rot_fc2"])
    sim = CKA(SimilarityModel(ref_model, "a", LAYERS), SimilarityModel(other, "b", LAYERS), progress=False)
    grid = sim.compute(data())
    k = cmp.labels.index("rot_fc2")
    np.testing.assert_allclose(cmp.grids[k], grid, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cmp.grids_stderr[k], sim.result.stderr, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ one pass, shared reference


class CountingMLP(nn.Sequential):
    calls = 0

    def forward(self, x):
        CountingMLP.calls += 1
        return super().forward(x)


def counting_mlp() -> CountingMLP:
    torch.manual_seed(0)
    return CountingMLP(OrderedDict(fc1=nn.Linear(20, 16), fc2=nn.Linear(16, 12), relu=nn.ReLU(), fc3=nn.Linear(12, 5)))


def trained_like(n: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for s in range(n):
        torch.manual_seed(100 + s)
        out.append(CountingMLP(OrderedDict(fc1=nn.Linear(20, 16), fc2=nn.Linear(16, 12), relu=nn.ReLU(),
                                           fc3=nn.Linear(12, 5))).state_dict())
    return out


def test_one_forward_per_checkpoint_per_batch_and_same_values_in_groups():
    sds = {10 * s: sd for s, sd in enumerate(trained_like(4))}
    loader = data(n=64, batch_size=16)  # 4 batches
    CountingMLP.calls = 0
    one_pass = compare_checkpoints(counting_mlp, sds, loader, layers=LAYERS, progress=False)
    # the reference (last) is one of the 4 checkpoints: 4 forwards per batch, not 5 or 8
    assert CountingMLP.calls == 4 * 4
    CountingMLP.calls = 0
    grouped = compare_checkpoints(counting_mlp, sds, loader, layers=LAYERS, progress=False, checkpoints_per_pass=2)
    # 3 non-reference checkpoints in groups of 2: two passes, each with the reference
    assert CountingMLP.calls == (1 + 2) * 4 + (1 + 1) * 4
    np.testing.assert_allclose(grouped.grids, one_pass.grids, rtol=0, atol=1e-12)
    np.testing.assert_allclose(grouped.grids_stderr, one_pass.grids_stderr, rtol=0, atol=1e-12)
    # every grid equals a separate two-model CKA run
    ref = counting_mlp()
    ref.load_state_dict(sds[30])
    for k, step in enumerate(sorted(sds)):
        m = counting_mlp()
        m.load_state_dict(sds[step])
        sim = CKA(SimilarityModel(ref, "r", LAYERS), SimilarityModel(m, "m", LAYERS), progress=False)
        np.testing.assert_allclose(one_pass.grids[k], sim.compute(loader), rtol=0, atol=1e-12)
        np.testing.assert_allclose(one_pass.grids_stderr[k], sim.result.stderr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(one_pass.values[-1], 1.0, atol=1e-12)
    assert np.all(one_pass.values[:-1] < 0.99)


def test_model_instance_is_copied_not_modified():
    model = mlp(7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    sds = [mlp(s).state_dict() for s in range(2)]
    compare_checkpoints(model, sds, data(), layers=["fc1", "fc3"], progress=False)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_external_reference_and_reference_by_step(tmp_path):
    sds = [mlp(s).state_dict() for s in range(3)]
    ext = tmp_path / "final.pt"
    torch.save(mlp(9).state_dict(), ext)
    cmp = compare_checkpoints(mlp, sds, data(), layers=LAYERS, reference=str(ext), progress=False)
    assert cmp.reference == "final" and cmp.labels == ["checkpoint 0", "checkpoint 1", "checkpoint 2"]
    assert np.all(cmp.values < 0.99)
    by_step = compare_checkpoints(mlp, {0: sds[0], 5: sds[1], 9: sds[2]}, data(), layers=LAYERS, reference=5,
                                  progress=False)
    assert by_step.reference == "5" and by_step.steps == [0, 5, 9]
    np.testing.assert_allclose(by_step.values[1], 1.0, atol=1e-12)
    first = compare_checkpoints(mlp, sds, data(), layers=LAYERS, reference="first", progress=False)
    np.testing.assert_allclose(first.values[0], 1.0, atol=1e-12)


def test_checkpoints_are_ordered_by_the_number_in_their_names(tmp_path):
    paths = []
    for step in (10, 2, 1):  # lexicographic order would put ckpt_10 before ckpt_2
        p = tmp_path / f"ckpt_{step}.pt"
        torch.save(mlp(step).state_dict(), p)
        paths.append(str(p))
    cmp = compare_checkpoints(mlp, sorted(paths), data(), layers=["fc1", "fc3"], progress=False)
    assert cmp.labels == ["ckpt_1", "ckpt_2", "ckpt_10"] and cmp.steps == [1, 2, 10]
    assert cmp.reference == "ckpt_10"  # "last" is the latest step
    np.testing.assert_allclose(cmp.values[-1], 1.0, atol=1e-12)


def test_compare_checkpoints_errors(tmp_path):
    sds = [mlp(s).state_dict() for s in range(2)]
    with pytest.raises(ValueError, match="reference 'final'"):
        compare_checkpoints(mlp, sds, data(), layers=LAYERS, reference="final", progress=False)
    with pytest.raises(ValueError, match="reference step 7"):
        compare_checkpoints(mlp, {0: sds[0], 1: sds[1]}, data(), layers=LAYERS, reference=7, progress=False)
    with pytest.raises(ValueError, match="empty"):
        compare_checkpoints(mlp, [], data(), layers=LAYERS, progress=False)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        compare_checkpoints(mlp, [sds[0], str(tmp_path / "nope.pt")], data(), layers=LAYERS, progress=False)
    with pytest.raises(ValueError, match="fc9"):
        compare_checkpoints(mlp, sds, data(), layers=["fc9"], progress=False)
    with pytest.raises(ValueError, match="unknown metric"):
        compare_checkpoints(mlp, sds, data(), metric="pearson", layers=LAYERS, progress=False)
    with pytest.raises(TypeError, match="list of checkpoints"):
        compare_checkpoints(mlp, sds[0], data(), layers=LAYERS, progress=False)


def test_metric_settings_pass_through():
    sds = [mlp(s).state_dict() for s in range(2)]
    cmp = compare_checkpoints(mlp, sds, data(), layers=["fc1"], kernel="rbf", unbiased=False, progress=False)
    assert cmp.settings["kernel"] == "rbf" and cmp.settings["unbiased"] is False
    with pytest.raises(ValueError, match="kernel"):
        compare_checkpoints(mlp, sds, data(), layers=["fc1"], kernel="poly", progress=False)


def deep_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 16), *[nn.Linear(16, 16) for _ in range(11)])


def test_layers_by_type_are_selected_exactly_and_quietly():
    """Layers picked by module type in a model whose names are prefixes of one another
    ('1' of '10' and '11', as in ViT's 'blocks.1'): the internal per-checkpoint names
    ('m0.1', 'm0.10', …) are exact names, so no 0.2.1-substring warning about names the user
    never wrote, and each grid is that checkpoint's two-model CKA."""
    sds = [deep_mlp(s).state_dict() for s in range(2)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cmp = compare_checkpoints(deep_mlp, sds, data(), layers=[nn.Linear], progress=False)
    assert not [str(w.message) for w in caught if "0.2.1" in str(w.message)]
    assert cmp.layers == [str(i) for i in range(12)]
    ref = deep_mlp()
    ref.load_state_dict(sds[-1])
    for k, sd in enumerate(sds):
        m = deep_mlp()
        m.load_state_dict(sd)
        want = CKA(SimilarityModel(ref, "r", [nn.Linear]), SimilarityModel(m, "m", [nn.Linear]),
                   progress=False).compute(data())
        np.testing.assert_allclose(cmp.grids[k], want, rtol=0, atol=1e-12)


def test_output_fn_receives_the_models_own_layer_names():
    seen = set()

    def output_fn(name, out):
        seen.add(name)
        return out

    sds = [mlp(s).state_dict() for s in range(2)]
    compare_checkpoints(mlp, sds, data(), layers=["fc1", "fc3"], output_fn=output_fn, progress=False)
    assert seen == {"fc1", "fc3"}


# ------------------------------------------------------------------ the result object


@pytest.fixture(scope="module")
def comparison() -> CheckpointComparison:
    sds = {s: mlp(s).state_dict() for s in (0, 100, 1000, 3000)}
    return compare_checkpoints(mlp, sds, data(), layers=LAYERS, progress=False)


def test_comparison_save_load_csv(tmp_path, comparison):
    back = CheckpointComparison.load(comparison.save(tmp_path / "c.npz"))
    assert back == comparison and back.steps == [0, 100, 1000, 3000]
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:
        assert z["grids"].shape == (4, 4, 4)
    rows = (tmp_path / "c.csv")
    comparison.to_csv(rows)
    lines = rows.read_text().splitlines()
    assert lines[0] == "checkpoint,step,layer,value,stderr" and len(lines) == 1 + 4 * 4
    assert float(lines[1].split(",")[3]) == comparison.values[0, 0]
    comparison.to_csv(rows, full=True)
    assert len(rows.read_text().splitlines()) == 1 + 4 * 4 * 4
    res = comparison.result("100")
    assert res.matrix.shape == (4, 4) and np.array_equal(res.matrix, comparison.grids[1])
    with pytest.raises(ValueError, match="checkpoints"):
        SimilarityResult.load(tmp_path / "c.npz")


def test_comparison_plots(tmp_path, comparison):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = comparison.plot(save_path=tmp_path / "trend.png")
    assert ax.get_xscale() == "symlog"  # steps spanning 100 … 3000 and a 0
    assert len(ax.get_legend().get_texts()) == len(LAYERS)
    assert len(ax.containers) == len(LAYERS)  # one errorbar container per layer
    ax = comparison.plot_heatmap(save_path=tmp_path / "heat.png")
    assert [t.get_text() for t in ax.get_yticklabels()] == LAYERS
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "100", "1000", "3000"]
    for name in ("trend.png", "heat.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    plt.close("all")


# ------------------------------------------------------------------ loading


def test_checkpoints_module_reexports_loading_and_result():
    # the 0.3.0 import paths: everything simtorch.checkpoints exported still comes from there
    assert checkpoints.load_checkpoint is load_checkpoint and checkpoints.load_state_dict is load_state_dict
    assert checkpoints.CheckpointComparison is CheckpointComparison
    assert set(checkpoints.__all__) >= {"CheckpointComparison", "compare_checkpoints", "load_checkpoint",
                                        "load_state_dict"}


def test_nested_and_prefixed_state_dicts_load(tmp_path):
    sd = mlp(3).state_dict()
    layouts = {
        "plain": sd,
        "training": {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 3},
        "lightning": {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "global_step": 10},
        "ddp": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        "compiled": {f"_orig_mod.{k}": v for k, v in sd.items()},
        "tutorial": {"model_state_dict": sd, "loss": 0.5},
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        model = load_checkpoint(mlp(0), tmp_path / f"{name}.pt")
        assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items()), name
    # a module, and a DataParallel-wrapped target
    wrapped = nn.DataParallel(mlp(0))
    load_checkpoint(wrapped, mlp(3))
    assert torch.equal(wrapped.module.fc1.weight, sd["fc1.weight"])
    assert set(load_state_dict(tmp_path / "ddp.pt")) == set(sd)


def test_strict_key_check_names_the_keys(tmp_path):
    sd = mlp(0).state_dict()
    missing = {k: v for k, v in sd.items() if k != "fc2.bias"}
    with pytest.raises(ValueError, match=r"missing keys \[fc2.bias\]"):
        load_checkpoint(mlp(0), missing)
    extra = {**sd, "fc4.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"unexpected keys \[fc4.weight\]"):
        load_checkpoint(mlp(0), extra)
    wrong = {**sd, "fc3.weight": torch.zeros(10, 12)}
    with pytest.raises(ValueError, match=r"fc3.weight: checkpoint \(10, 12\) vs model \(5, 12\)"):
        load_checkpoint(mlp(0), wrong)
    model = mlp(0)
    before = model.fc1.weight.clone()
    with pytest.raises(ValueError):
        load_checkpoint(model, {**mlp(5).state_dict(), "fc4.weight": torch.zeros(3)})
    assert torch.equal(model.fc1.weight, before)  # never half-loaded


def test_weights_only_refuses_pickled_objects(tmp_path):
    sd = mlp(2).state_dict()
    path = tmp_path / "with_object.pt"
    torch.save({"model": sd, "args": argparse.Namespace(lr=0.1)}, path)  # a typical pickled extra
    with pytest.raises(ValueError, match=r"trust_checkpoint=True") as info:
        load_checkpoint(mlp(0), path)
    assert "argparse.Namespace" in str(info.value)
    model = load_checkpoint(mlp(0), path, trust_checkpoint=True)
    assert torch.equal(model.fc1.weight, sd["fc1.weight"])
    with pytest.raises(ValueError, match="trust_checkpoint"):
        compare_checkpoints(mlp, [sd, str(path)], data(), layers=LAYERS, progress=False)


def test_unreadable_checkpoints(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_state_dict(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_state_dict(tmp_path / "missing.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(TypeError, match="not a state dict"):
        load_state_dict(tmp_path / "list.pt")


@pytest.mark.parametrize("metric", ["dcka", "ii"])
def test_other_metrics_match_simtorch_compare(metric):
    sds = {s: mlp(s).state_dict() for s in (0, 1, 2)}
    cmp = compare_checkpoints(mlp, sds, data(), metric=metric, layers=LAYERS, progress=False)
    ref = mlp()
    ref.load_state_dict(sds[2])
    for k, step in enumerate(cmp.steps):
        other = mlp()
        other.load_state_dict(sds[step])
        want = compare(ref, other, data(), metrics=[metric], layers_a=LAYERS, layers_b=LAYERS, progress=False)[metric]
        assert cmp.metric == want.metric and cmp.settings == want.settings
        np.testing.assert_allclose(cmp.grids[k], want.matrix, rtol=0, atol=1e-10)
        np.testing.assert_allclose(cmp.grids_stderr[k], want.stderr, rtol=0, atol=1e-10)


# ------------------------------------------------------------------ interrupted (Ctrl-C)
class Interrupting:
    """Iterates ``loader``; in pass ``at_pass`` (counting from 0) raises KeyboardInterrupt
    before batch ``at_batch``, as Ctrl-C would."""

    def __init__(self, loader, at_pass: int, at_batch: int) -> None:
        self.loader, self.at_pass, self.at_batch, self.passes = loader, at_pass, at_batch, 0

    def __iter__(self):
        this, self.passes = self.passes, self.passes + 1
        for i, batch in enumerate(self.loader):
            if this == self.at_pass and i == self.at_batch:
                raise KeyboardInterrupt
            yield batch


def test_interrupted_comparison_keeps_the_checkpoints_finished_so_far(tmp_path):
    sds = {10 * s: sd for s, sd in enumerate(trained_like(4))}  # steps 0, 10, 20, 30; reference 30
    loader = data(n=64, batch_size=16)  # 4 batches
    full = compare_checkpoints(counting_mlp, sds, loader, layers=LAYERS, progress=False, checkpoints_per_pass=2)

    # one pass, Ctrl-C after 2 of 4 batches: every checkpoint, over the 2 completed batches
    with pytest.raises(KeyboardInterrupt) as info:
        compare_checkpoints(counting_mlp, sds, Interrupting(loader, 0, 2), layers=LAYERS, progress=False)
    part = info.value.simtorch_partial
    assert isinstance(part, CheckpointComparison) and part.partial and "PARTIAL" in repr(part)
    assert part.layers == LAYERS  # the user's layer names, not the container's m1.fc1
    assert part.labels == ["0", "10", "20", "30"] and part.steps == [0, 10, 20, 30] and part.reference == "30"
    assert part.n_batches == 2 and part.n_samples == 32
    assert part.settings["partial"] is True and part.settings["stopped_by"] == "KeyboardInterrupt"
    assert part.settings["missing_checkpoints"] == [] and part.settings["unbiased"] is True
    first_two = compare_checkpoints(counting_mlp, sds, data(n=32, batch_size=16), layers=LAYERS, progress=False)
    np.testing.assert_allclose(part.grids, first_two.grids, rtol=0, atol=1e-12)
    np.testing.assert_allclose(part.grids_stderr, first_two.grids_stderr, rtol=0, atol=1e-12)

    # two passes, Ctrl-C in the second: the first pass's checkpoints (and the reference),
    # over the whole loader; the interrupted pass's checkpoint is left out and named
    with pytest.raises(KeyboardInterrupt) as info:
        compare_checkpoints(counting_mlp, sds, Interrupting(loader, 1, 2), layers=LAYERS, progress=False,
                            checkpoints_per_pass=2)
    part = info.value.simtorch_partial
    assert part.partial and part.labels == ["0", "10", "30"] and part.steps == [0, 10, 30]
    assert part.settings["missing_checkpoints"] == ["20"] and part.n_batches == 4
    assert part.settings["passes_completed"] == 1 and part.settings["passes"] == 2
    np.testing.assert_allclose(part.grids, full.grids[[0, 1, 3]], rtol=0, atol=1e-12)
    np.testing.assert_allclose(part.values, full.values[[0, 1, 3]], rtol=0, atol=1e-12)
    # saved and loaded, it stays marked partial
    assert CheckpointComparison.load(part.save(tmp_path / "p.npz")).partial

    # Ctrl-C before the first batch: nothing to keep
    with pytest.raises(KeyboardInterrupt) as info:
        compare_checkpoints(counting_mlp, sds, Interrupting(loader, 0, 0), layers=LAYERS, progress=False)
    assert info.value.simtorch_partial is None


def test_cli_interrupted_checkpoints_writes_the_partial_comparison(tmp_path, capsys, monkeypatch):
    import simtorch.cli.commands as commands
    from simtorch.cli import main

    paths = []
    for step in (10, 20, 30):
        paths.append(str(tmp_path / f"step={step}.pt"))
        torch.save(mlp(step).state_dict(), paths[-1])
    x = torch.randn(32, 20, generator=torch.Generator().manual_seed(0))

    def interrupted(args, tokenizer=None):
        def batches():
            for i in range(4):
                if i == 2:
                    raise KeyboardInterrupt  # Ctrl-C after 2 of 4 batches
                yield x[8 * i:8 * (i + 1)]

        return batches()

    monkeypatch.setattr(commands, "make_loader", interrupted)
    out = {k: str(tmp_path / f"c.{k}") for k in ("npz", "csv", "png")}
    argv = ["checkpoints", *paths, "--arch", f"{__name__}:mlp", "--layers", "fc1,fc2,fc3", "--quiet", "--device",
            "cpu", "--save", out["npz"], "--csv", out["csv"], "--out", out["png"]]
    assert main(argv) == 130
    captured = capsys.readouterr()
    assert "interrupted: writing the partial comparison of 3 checkpoints (2 batches; 0 not compared)" in captured.err
    assert "simtorch: interrupted" in captured.err and captured.out.count("PARTIAL") == 3
    cmp = CheckpointComparison.load(out["npz"])
    assert cmp.partial and cmp.n_batches == 2 and cmp.n_samples == 16
    assert cmp.labels == ["step=10", "step=20", "step=30"] and cmp.layers == ["fc1", "fc2", "fc3"]
    assert len(Path(out["csv"]).read_text().splitlines()) == 1 + 3 * 3
    assert Path(out["png"]).read_bytes()[:4] == b"\x89PNG"
    # interrupted before any batch: nothing written, still 130
    monkeypatch.setattr(commands, "make_loader", lambda args, tokenizer=None: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main([*argv[:-6], "--save", str(tmp_path / "none.npz")]) == 130
    assert not (tmp_path / "none.npz").exists()
    assert "nothing to write" in capsys.readouterr().err
