"""Checkpoints as researchers have them (issue 14): .safetensors, Hugging Face
save_pretrained directories (single and sharded, safetensors and .bin), Lightning .ckpt with
any prefix, several state dicts in one file; and the small errors of issue 13 (an HF
directory is a checkpoint, a corrupt .npz is "not a simtorch result")."""

from __future__ import annotations

import json
import sys
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from simtorch import SimilarityResult
from simtorch.checkpoint_io import apply_key_map, load_checkpoint, load_state_dict, require_file, suggest_key_fix
from simtorch.checkpoints import compare_checkpoints
from simtorch.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(6, 5), relu=nn.ReLU(), fc2=nn.Linear(5, 3)))


def same_weights(model: nn.Module, sd: dict) -> bool:
    own = model.state_dict()
    return set(own) == set(sd) and all(torch.equal(own[k], sd[k]) for k in sd)


def data() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(24, 6, generator=torch.Generator().manual_seed(0))), batch_size=8)


# ------------------------------------------------------------------ safetensors
def test_safetensors_file(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    sd = mlp(3).state_dict()
    st.save_file(sd, tmp_path / "w.safetensors", metadata={"step": "40"})
    assert same_weights(load_checkpoint(mlp(0), tmp_path / "w.safetensors"), sd)
    assert set(load_state_dict(str(tmp_path / "w.safetensors"))) == set(sd)
    st.save_file(mlp(1).state_dict(), tmp_path / "v.safetensors", metadata={"step": "20"})
    cmp = compare_checkpoints(mlp, [str(tmp_path / "w.safetensors"), str(tmp_path / "v.safetensors")], data(),
                              layers=["fc1", "fc2"], progress=False)
    assert cmp.labels == ["v", "w"] and cmp.steps == [20, 40] and "stored" in cmp.order  # header metadata
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{junk!!}")
    with pytest.raises(ValueError, match="not a valid .safetensors file"):
        load_state_dict(tmp_path / "bad.safetensors")


def test_missing_safetensors_package_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "w.safetensors").write_bytes(b"whatever")
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match=r"^reading .safetensors files needs the safetensors package: "
                                          r"pip install safetensors$"):
        load_state_dict(tmp_path / "w.safetensors")


# ------------------------------------------------------------------ HF directories
def _shard(sd: dict, n: int) -> list[dict]:
    keys = list(sd)
    return [{k: sd[k] for k in keys[i::n]} for i in range(n)]


def _save_sharded(directory: Path, sd: dict, n: int, name: str, save: Callable, index: str, **meta: Any) -> None:
    """``sd`` in ``n`` shards ``name.format(i, n)`` (``save(part, path)``) and their HF index file."""
    directory.mkdir()
    weight_map = {}
    for i, part in enumerate(_shard(sd, n)):
        shard = name.format(i + 1, n)
        save(part, directory / shard)
        weight_map.update({k: shard for k in part})
    (directory / index).write_text(json.dumps({**meta, "weight_map": weight_map}))


def test_hf_directories_bin_and_sharded_bin(tmp_path):
    sd = mlp(4).state_dict()
    single = tmp_path / "single"
    single.mkdir()
    torch.save(sd, single / "pytorch_model.bin")
    (single / "config.json").write_text("{}")
    assert same_weights(load_checkpoint(mlp(0), single), sd)
    sharded = tmp_path / "sharded"
    _save_sharded(sharded, sd, 2, "pytorch_model-{:05d}-of-{:05d}.bin", torch.save, "pytorch_model.bin.index.json",
                  metadata={})
    assert same_weights(load_checkpoint(mlp(0), str(sharded)), sd)
    # a shard the index names but the directory lacks
    (sharded / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(FileNotFoundError, match="names the shard 'pytorch_model-00002-of-00002.bin'"):
        load_state_dict(sharded)
    # a directory is a checkpoint (issue 13: it used to "not exist"); one without weights says what it lacks
    require_file(single)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="directory without model weights.*model.safetensors"):
        require_file(tmp_path / "empty")
    cmp = compare_checkpoints(mlp, [str(single), str(tmp_path / "single")], data(), layers=["fc1"],
                              steps=[1, 2], progress=False)
    np.testing.assert_allclose(cmp.values, 1.0, atol=1e-12)


def test_hf_directories_safetensors_single_and_sharded(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    sd = mlp(5).state_dict()
    one = tmp_path / "one"
    one.mkdir()
    st.save_file(sd, one / "model.safetensors")
    assert same_weights(load_checkpoint(mlp(0), one), sd)
    many = tmp_path / "many"
    _save_sharded(many, sd, 3, "model-{:05d}-of-{:05d}.safetensors", st.save_file, "model.safetensors.index.json")
    assert same_weights(load_checkpoint(mlp(0), many), sd)


def test_transformers_save_pretrained_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    cfg = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg)
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="2KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    for d in ("one", "sharded"):
        fresh = transformers.BertModel(cfg)
        load_checkpoint(fresh, tmp_path / d)
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items()), d


# ------------------------------------------------------------------ prefixes
def test_lightning_ckpt_prefixes_and_the_fix_in_the_error(tmp_path):
    sd = mlp(6).state_dict()
    # Lightning: every key under "model." → stripped without being asked
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "global_step": 3, "epoch": 0},
               tmp_path / "plain.ckpt")
    assert same_weights(load_checkpoint(mlp(0), tmp_path / "plain.ckpt"), sd)
    # a LightningModule with a loss module next to the model: the prefix must be named
    mixed = {**{f"model.{k}": v for k, v in sd.items()}, "criterion.pos_weight": torch.ones(3)}
    torch.save({"state_dict": mixed, "global_step": 3}, tmp_path / "mixed.ckpt")
    with pytest.raises(ValueError, match=r"strip_prefix='model\.' would make them match \(the keys without it are "
                                         r"dropped\).*--strip-prefix"):
        load_checkpoint(mlp(0), tmp_path / "mixed.ckpt")
    assert same_weights(load_checkpoint(mlp(0), tmp_path / "mixed.ckpt", strip_prefix="model."), sd)
    # any other prefix
    torch.save({"state_dict": {f"net.{k}": v for k, v in sd.items()}}, tmp_path / "net.ckpt")
    with pytest.raises(ValueError, match=r"strip_prefix='net\.' would make them match"):
        load_checkpoint(mlp(0), tmp_path / "net.ckpt")
    assert same_weights(load_checkpoint(mlp(0), tmp_path / "net.ckpt", strip_prefix="net."), sd)
    assert same_weights(load_checkpoint(mlp(0), tmp_path / "net.ckpt", key_map={"net.": ""}), sd)
    assert same_weights(load_checkpoint(mlp(0), tmp_path / "net.ckpt", key_map=lambda k: k[4:]), sd)
    # the model has a prefix the checkpoint lacks (a task head around a backbone)
    wrapped = nn.Sequential(OrderedDict(backbone=mlp(0)))
    with pytest.raises(ValueError, match=r"key_map=\{'': 'backbone\.'\} would make them match"):
        load_checkpoint(wrapped, sd)
    load_checkpoint(wrapped, sd, key_map={"": "backbone."})
    assert torch.equal(wrapped.backbone.fc1.weight, sd["fc1.weight"])
    # a rename
    assert suggest_key_fix([f"enc.{k}" for k in sd], [f"backbone.{k}" for k in sd]) == \
        "key_map={'enc.': 'backbone.'} would make them match"
    with pytest.raises(ValueError, match="no key of .* starts with strip_prefix='zzz.'"):
        apply_key_map(sd, strip_prefix="zzz.")
    # a real architecture mismatch keeps the old advice
    with pytest.raises(ValueError, match="Check that the architecture"):
        load_checkpoint(mlp(0), {**sd, "fc2.weight": torch.zeros(4, 5)})


# ------------------------------------------------------------------ several state dicts
def test_several_state_dicts_are_never_chosen_silently(tmp_path):
    sd, ema = mlp(7).state_dict(), mlp(8).state_dict()
    torch.save({"model": sd, "ema": ema, "step": 10}, tmp_path / "two.pt")
    with pytest.warns(UserWarning, match=r"several state dicts \(model, ema\); loaded 'model' by the rule "
                                         r"state_dict > model_state_dict > model\. Pass state_key='ema'"):
        assert same_weights(load_checkpoint(mlp(0), tmp_path / "two.pt"), sd)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert same_weights(load_checkpoint(mlp(0), tmp_path / "two.pt", state_key="ema"), ema)
        assert same_weights(load_checkpoint(mlp(0), tmp_path / "two.pt", state_key="model"), sd)
        # one state dict next to an optimizer is no choice: no warning
        torch.save({"model": sd, "optimizer": torch.optim.SGD(mlp(0).parameters(), lr=0.1).state_dict()},
                   tmp_path / "train.pt")
        assert same_weights(load_checkpoint(mlp(0), tmp_path / "train.pt"), sd)
    torch.save({"ema": ema, "teacher": sd}, tmp_path / "none.pt")
    with pytest.raises(ValueError, match=r"several state dicts \(ema, teacher\) and none is named.*state_key='ema'"):
        load_checkpoint(mlp(0), tmp_path / "none.pt")
    with pytest.raises(ValueError, match=r"has no entry 'student'.*holding a state dict are \['ema', 'teacher'\]"):
        load_checkpoint(mlp(0), tmp_path / "none.pt", state_key="student")
    # nested: keys one per level
    torch.save({"callbacks": {"EMA": {"weights": ema}}, "state_dict": sd}, tmp_path / "deep.pt")
    assert same_weights(load_checkpoint(mlp(0), tmp_path / "deep.pt", state_key=["callbacks", "EMA", "weights"]), ema)
    # compare_checkpoints passes state_key through
    torch.save({"ema": ema, "model": mlp(9).state_dict()}, tmp_path / "again.pt")
    cmp = compare_checkpoints(mlp, [str(tmp_path / "two.pt"), str(tmp_path / "again.pt")], data(), layers=["fc1"],
                              state_key="ema", steps=[1, 2], progress=False)
    np.testing.assert_allclose(cmp.values, 1.0, atol=1e-12)


# ------------------------------------------------------------------ command line and small errors
def tiny(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(),
                                     fc=nn.Linear(4, num_classes)))


def test_cli_reads_directories_and_renames_keys(tmp_path, capsys):
    arch = f"{__name__}:tiny"
    sd = tiny().state_dict()
    hf = tmp_path / "hfdir"
    hf.mkdir()
    torch.save(sd, hf / "pytorch_model.bin")
    torch.save({"state_dict": {f"net.{k}": v for k, v in sd.items()}, "ema": {"x": torch.ones(1)}},
               tmp_path / "net.ckpt")
    common = ["--n", "8", "--batch-size", "4", "--image-size", "8", "--quiet", "--device", "cpu",
              "--layers-a", "conv,fc"]
    assert main(["compare", arch, arch, "--weights-b", str(hf), *common, "--save", str(tmp_path / "r.npz")]) == 0
    np.testing.assert_allclose(np.diag(SimilarityResult.load(tmp_path / "r.npz").matrix), 1.0, atol=1e-6)
    capsys.readouterr()
    assert main(["compare", arch, arch, "--weights-b", str(tmp_path / "net.ckpt"), *common]) == 1
    err = capsys.readouterr().err
    assert "several state dicts" in err and "--state-key" in err
    assert main(["compare", arch, arch, "--weights-b", str(tmp_path / "net.ckpt"), "--state-key", "state_dict",
                 *common]) == 1
    assert "strip_prefix='net.' would make them match" in capsys.readouterr().err
    assert main(["compare", arch, arch, "--weights-b", str(tmp_path / "net.ckpt"), "--state-key", "state_dict",
                 "--strip-prefix", "net.", *common, "--save", str(tmp_path / "n.npz")]) == 0
    np.testing.assert_allclose(np.diag(SimilarityResult.load(tmp_path / "n.npz").matrix), 1.0, atol=1e-6)


def test_corrupt_npz_is_not_a_simtorch_result(tmp_path, capsys):
    for name, payload in (("junk.npz", b"not an archive at all"), ("trunc.npz", b"PK\x03\x04trunc")):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ValueError, match="is not a simtorch result file") as info:
            SimilarityResult.load(tmp_path / name)
        assert "allow_pickle" not in str(info.value) and "pickle" not in str(info.value)
        assert main(["plot", str(tmp_path / name)]) == 1
        err = capsys.readouterr().err
        assert "not a simtorch result file" in err and "pickle" not in err
    np.save(tmp_path / "bare.npy", np.zeros(3))
    (tmp_path / "bare.npz").write_bytes((tmp_path / "bare.npy").read_bytes())
    with pytest.raises(ValueError, match="is not a simtorch result file"):
        SimilarityResult.load(tmp_path / "bare.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not a simtorch result \\(no header\\)"):
        SimilarityResult.load(tmp_path / "other.npz")
