"""Checkpoint order is never a guess (issue 13, case 2): it comes from ``steps=``, the step
each checkpoint stores, or an unambiguous key in the names; anything else keeps the given
order and says so. The library and the command line agree (the CLI no longer re-sorts)."""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from simtorch.checkpoint_result import CheckpointComparison
from simtorch.checkpoints import checkpoint_order, compare_checkpoints
from simtorch.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYERS = ["fc1", "fc2"]


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(6, 5), relu=nn.ReLU(), fc2=nn.Linear(5, 3)))


def data() -> DataLoader:
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x), batch_size=8)


def save_all(tmp_path, names, payload=lambda i, sd: sd):
    paths = []
    for i, name in enumerate(names):
        p = tmp_path / name
        torch.save(payload(i, mlp(i).state_dict()), p)
        paths.append(str(p))
    return paths


def no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


# ------------------------------------------------------------------ names
def test_lightning_names_sort_by_epoch_not_by_val_loss(tmp_path):
    # given shuffled; today's "last number" rule sorted these by val_loss (0.41 < 0.47 < 0.52)
    names = ["epoch=2-val_loss=0.41.ckpt", "epoch=3-val_loss=0.47.ckpt", "epoch=1-val_loss=0.52.ckpt"]
    paths = save_all(tmp_path, names, lambda i, sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}})
    labels, steps, sources, how = no_warnings(checkpoint_order, paths)
    assert labels == ["epoch=1-val_loss=0.52", "epoch=2-val_loss=0.41", "epoch=3-val_loss=0.47"]
    assert steps == [1, 2, 3] and "'epoch'" in how
    cmp = no_warnings(compare_checkpoints, mlp, paths, data(), layers=LAYERS, progress=False)
    assert cmp.reference == "epoch=3-val_loss=0.47" and cmp.steps == [1, 2, 3] and "epoch" in cmp.order
    np.testing.assert_allclose(cmp.values[-1], 1.0, atol=1e-12)


def test_step_token_is_read_before_other_numbers(tmp_path):
    paths = save_all(tmp_path, ["step300_fp16.pt", "step20_fp16.pt", "step1000_fp16.pt"])
    labels, steps, _, how = no_warnings(checkpoint_order, paths)
    assert steps == [20, 300, 1000] and labels == ["step20_fp16", "step300_fp16", "step1000_fp16"]
    assert "'step'" in how
    # step= beats epoch= when both are in every name
    names = ["epoch=0-step=900.ckpt", "epoch=0-step=100.ckpt", "epoch=1-step=1500.ckpt"]
    assert checkpoint_order(save_all(tmp_path, names))[1] == [100, 900, 1500]


def test_one_number_in_names_that_differ_only_in_it(tmp_path):
    paths = save_all(tmp_path, ["ckpt_10.pt", "ckpt_2.pt", "ckpt_1.pt"])
    labels, steps, _, how = no_warnings(checkpoint_order, sorted(paths))
    assert labels == ["ckpt_1", "ckpt_2", "ckpt_10"] and steps == [1, 2, 10] and "ckpt_#" in how


def test_ambiguous_names_keep_the_given_order_and_warn(tmp_path):
    # two numbers, no key: lr or step? never sorted by a guess
    names = ["run_lr3_b7.pt", "run_lr1_b9.pt", "run_lr2_b8.pt"]
    paths = save_all(tmp_path, names)
    with pytest.warns(UserWarning, match=r"kept the given order, so 'last' is 'run_lr2_b8'.*steps="):
        labels, steps, _, how = checkpoint_order(paths)
    assert labels == ["run_lr3_b7", "run_lr1_b9", "run_lr2_b8"] and steps == [0, 1, 2] and how == "the given order"
    with pytest.warns(UserWarning, match="kept the given order"):
        cmp = compare_checkpoints(mlp, paths, data(), layers=LAYERS, progress=False)
    assert cmp.reference == "run_lr2_b8" and cmp.order == "the given order"
    # the same epoch twice (top-k of one epoch): not distinct, so not an order
    dup = save_all(tmp_path, ["epoch=3-val_loss=0.41.ckpt", "epoch=3-val_loss=0.47.ckpt"])
    with pytest.warns(UserWarning, match="kept the given order"):
        assert checkpoint_order(dup)[1] == [0, 1]
    # names without any number: the given order, nothing to warn about
    plain = save_all(tmp_path, ["warmup.pt", "final.pt"])
    assert no_warnings(checkpoint_order, plain)[0] == ["warmup", "final"]


def test_user_steps_and_given_order(tmp_path):
    paths = save_all(tmp_path, ["a.pt", "b.pt", "c.pt"])
    labels, steps, _, how = no_warnings(checkpoint_order, paths, steps=[30, 10, 20])
    assert labels == ["b", "c", "a"] and steps == [10, 20, 30] and how == "steps="
    lab2, st2, _, how2 = no_warnings(checkpoint_order, save_all(tmp_path, ["ckpt_9.pt", "ckpt_1.pt"]), order="given")
    assert lab2 == ["ckpt_9", "ckpt_1"] and st2 == [0, 1] and how2 == "the given order"
    with pytest.raises(ValueError, match="order must be"):
        checkpoint_order(paths, order="sorted")
    with pytest.raises(ValueError, match="2 steps for 3"):
        checkpoint_order(paths, steps=[1, 2])


# ------------------------------------------------------------------ stored steps
def test_stored_global_step_wins_and_disagreement_is_said(tmp_path):
    def lightning(i, sd):
        return {"state_dict": sd, "global_step": [500, 100, 300][i], "epoch": [5, 1, 3][i]}

    paths = save_all(tmp_path, ["x.ckpt", "y.ckpt", "z.ckpt"], lightning)
    labels, steps, _, how = no_warnings(checkpoint_order, paths)
    assert labels == ["y", "z", "x"] and steps == [100, 300, 500] and "'global_step' stored" in how
    # names that say otherwise: the stored step is used, with a warning
    named = save_all(tmp_path, ["step=1.ckpt", "step=2.ckpt", "step=3.ckpt"], lightning)
    with pytest.warns(UserWarning, match="different orders; used the stored one"):
        assert checkpoint_order(named)[0] == ["step=2", "step=3", "step=1"]
    # in-memory training checkpoints store steps too
    mem = [{"model": mlp(0).state_dict(), "step": 7}, {"model": mlp(1).state_dict(), "step": 3}]
    assert no_warnings(checkpoint_order, mem)[1] == [3, 7]


def test_hf_trainer_directories_store_their_step(tmp_path):
    dirs = []
    for i, step in enumerate([1500, 500, 1000]):
        d = tmp_path / f"run{i}" / "checkpoint"
        d.mkdir(parents=True)
        torch.save(mlp(i).state_dict(), d / "pytorch_model.bin")
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": i + 0.5}))
        dirs.append(str(d))
    labels, steps, sources, how = no_warnings(checkpoint_order, dirs)
    assert steps == [500, 1000, 1500] and sources == [dirs[1], dirs[2], dirs[0]] and "global_step" in how
    cmp = no_warnings(compare_checkpoints, mlp, dirs, data(), layers=LAYERS, progress=False)
    assert cmp.steps == [500, 1000, 1500]
    np.testing.assert_allclose(cmp.values[-1], 1.0, atol=1e-12)


# ------------------------------------------------------------------ command line
def test_cli_does_not_resort_and_prints_the_rule(tmp_path, capsys):
    names = ["epoch=2-val_loss=0.41.ckpt", "epoch=3-val_loss=0.47.ckpt", "epoch=1-val_loss=0.52.ckpt"]
    paths = save_all(tmp_path, names, lambda i, sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}})
    arch = f"{__name__}:mlp"
    common = ["--arch", arch, "--layers", "fc1,fc2", "--data", "synthetic", "--quiet", "--device", "cpu",
              "--n", "16", "--batch-size", "8"]
    # synthetic images do not fit an MLP on 6 features: feed it through a custom loader
    import simtorch.cli.commands as commands

    orig = commands.make_loader
    commands.make_loader = lambda args, tokenizer=None: data()
    try:
        assert main(["checkpoints", *paths, *common, "--save", str(tmp_path / "c.npz")]) == 0
        out = capsys.readouterr().out
        assert "order: the 'epoch' number in the names; reference: epoch=3-val_loss=0.47 (step 3)" in out
        cmp = CheckpointComparison.load(tmp_path / "c.npz")
        assert cmp.steps == [1, 2, 3] and cmp.reference == "epoch=3-val_loss=0.47" and "epoch" in cmp.order
        # --order given keeps the command line's order; --steps sets it
        assert main(["checkpoints", *paths, *common, "--order", "given", "--save", str(tmp_path / "g.npz")]) == 0
        assert CheckpointComparison.load(tmp_path / "g.npz").labels == [n[:-5] for n in names]
        assert main(["checkpoints", *paths, *common, "--steps", "20,30", "--steps", "10",
                     "--save", str(tmp_path / "s.npz")]) == 0
        got = CheckpointComparison.load(tmp_path / "s.npz")
        assert got.steps == [10, 20, 30] and got.labels[0] == "epoch=1-val_loss=0.52" and got.order == "steps="
        capsys.readouterr()
        ambiguous = save_all(tmp_path, ["run_lr3_b7.pt", "run_lr1_b9.pt"])
        assert main(["checkpoints", *ambiguous, *common]) == 0
        captured = capsys.readouterr()
        assert "simtorch: warning: compare_checkpoints: no step stored" in captured.err
        assert "order: the given order; reference: run_lr1_b9 (step 1)" in captured.out
    finally:
        commands.make_loader = orig
