"""The ``simtorch`` command line: end to end in a subprocess on tiny settings, the other
commands in-process through ``main(argv)``, and one-line errors with a non-zero status."""

from __future__ import annotations

import os
import subprocess
from collections import OrderedDict
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from simtorch import SimilarityResult
from simtorch.checkpoints import CheckpointComparison
from simtorch.cli import build_model, build_parser, default_layers, main

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--n", "16", "--batch-size", "8", "--image-size", "16", "--quiet", "--device", "cpu"]
RESNET18_DEFAULT = ["conv1", "maxpool"] + [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)] + ["avgpool", "fc"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cnn(num_classes: int = 10) -> torch.nn.Module:
    """A small architecture for the CLI's ``package.module:function`` route (fast to build)."""
    return torch.nn.Sequential(OrderedDict(
        conv1=torch.nn.Conv2d(3, 4, 3, padding=1), relu=torch.nn.ReLU(), pool=torch.nn.AdaptiveAvgPool2d(2),
        flat=torch.nn.Flatten(), fc=torch.nn.Linear(16, num_classes),
    ))


TINY_ARCH = f"{__name__}:tiny_cnn"


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "simtorch", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def resnet18_seed0(tmp_path_factory) -> Path:
    """resnet18 as the CLI initialises model A (seed 0), saved the way training scripts do."""
    path = tmp_path_factory.mktemp("ckpt") / "resnet18_seed0.pt"
    torch.manual_seed(0)
    torch.save({"state_dict": {f"module.{k}": v for k, v in torchvision.models.resnet18().state_dict().items()}},
               path)
    return path


# ------------------------------------------------------------------ subprocess, end to end


def test_compare_end_to_end_writes_png_npz_csv(tmp_path, resnet18_seed0):
    # model B loads model A's weights from a (DDP-style, nested) checkpoint: the diagonal
    # must be 1, which only happens if the path route really loaded them
    proc = run_cli("compare", "resnet18", "resnet18", "--weights-b", str(resnet18_seed0), *TINY,
                   "--out", "grid.png", "--save", "res.npz", "--csv", "res.csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "grid.png").read_bytes()[:8] == PNG
    res = SimilarityResult.load(tmp_path / "res.npz")
    assert res.layers_a == RESNET18_DEFAULT and res.shape == (12, 12) and res.n_samples == 16
    np.testing.assert_allclose(np.diag(res.matrix), 1.0, atol=1e-6)
    assert np.all(np.isfinite(res.stderr))  # two batches: a jackknife error per cell
    lines = (tmp_path / "res.csv").read_text().splitlines()
    assert lines[0] == "layer_a,layer_b,value,stderr" and len(lines) == 1 + 144
    assert "SimilarityResult(CKA: resnet18 [12 layers] vs resnet18 [12 layers]" in proc.stdout


def test_bad_input_exits_nonzero_with_one_line(tmp_path):
    (tmp_path / "fake.npz").write_bytes(b"PK\x03\x04 not really a zip")
    proc = run_cli("plot", "fake.npz", cwd=tmp_path)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("simtorch: error: 'fake.npz' is not a simtorch result")
    assert "Traceback" not in proc.stderr and proc.stdout == ""


# ------------------------------------------------------------------ in-process commands


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("simtorch: error: ")
    return err[0]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["compare", "resnet18", "resnet18", "--layers-a", "layer5", *TINY], "layer 'layer5' matches no module"),
        (["compare", "resnet18", "resnet18", "--weights-b", "missing/ckpt.pt", *TINY], "'missing/ckpt.pt' does not exist"),
        (["compare", "resnet18", "resnet18", "--weights-a", "IMAGENET9K", *TINY], "unknown weights 'IMAGENET9K'"),
        (["compare", "resnet18", "resnet18", "--data", "imagefolder:/no/such/dir", *TINY], "does not exist"),
        (["compare", "resnet18", "resnet18", "--data", "mnist", *TINY], "unknown data 'mnist'"),
        (["compare", "resnet18", "resnet18", "--metric", "pearson", *TINY], "unknown metric 'pearson'"),
        (["plot", "nothing.npz"], "no such result file"),
        (["layers", "not_a_model"], "unknown model 'not_a_model'"),
        (["compare", "resnet81", "resnet18", *TINY], "unknown model 'resnet81': not a torchvision model name"),
        (["compare", "no_such_module:f", "resnet18", *TINY], "cannot import the model function"),
        (["checkpoints", "--arch", "resnet18", "nope.pt", *TINY], "'nope.pt' does not exist"),
    ],
)
def test_user_errors_are_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    assert needle in one_line_error(capsys)


def test_unavailable_weights_download_is_a_clear_error(capsys, tmp_path, monkeypatch):
    # an empty torch hub cache and a proxy that refuses connections: the download must fail
    # fast, whatever the machine's network
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert main(["compare", "resnet18", "resnet18", "--weights-a", "DEFAULT", *TINY]) == 1
    line = one_line_error(capsys)
    assert "cannot get the torchvision weights ResNet18_Weights.IMAGENET1K_V1" in line
    assert "checkpoint path" in line


def test_pickled_checkpoint_needs_trust_flag(capsys, tmp_path):
    import argparse

    path = tmp_path / "with_args.pt"
    torch.save({"model": tiny_cnn().state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    argv = ["compare", TINY_ARCH, TINY_ARCH, "--weights-b", str(path), *TINY]
    assert main(argv) == 1
    assert "--trust-checkpoint" in one_line_error(capsys)
    assert main(argv + ["--trust-checkpoint"]) == 0


def test_checkpoints_command(capsys, tmp_path):
    paths = []
    for step in (10, 2, 1):
        torch.manual_seed(step)
        p = tmp_path / f"ckpt_{step}.pt"
        torch.save({"model": tiny_cnn(num_classes=3).state_dict(), "step": step}, p)
        paths.append(str(p))
    argv = ["checkpoints", "--arch", TINY_ARCH, "--num-classes", "3", *sorted(paths), *TINY,
            "--out", str(tmp_path / "trend.png"), "--heatmap", str(tmp_path / "heat.png"),
            "--save", str(tmp_path / "c.npz"), "--csv", str(tmp_path / "c.csv")]
    assert main(argv) == 0, capsys.readouterr().err
    cmp = CheckpointComparison.load(tmp_path / "c.npz")
    assert cmp.labels == ["ckpt_1", "ckpt_2", "ckpt_10"] and cmp.reference == "ckpt_10"
    assert cmp.layers == ["conv1", "relu", "pool", "flat", "fc"]  # top-level children by default
    np.testing.assert_allclose(cmp.values[-1], 1.0, atol=1e-6)
    assert np.all(cmp.values[:-1] < 0.999)
    for name in ("trend.png", "heat.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert len((tmp_path / "c.csv").read_text().splitlines()) == 1 + 3 * 5
    # plot redraws both kinds of saved file without the models
    assert main(["plot", str(tmp_path / "c.npz"), "--out", str(tmp_path / "again.png")]) == 0
    assert main(["plot", str(tmp_path / "c.npz"), "--kind", "heatmap", "--out", str(tmp_path / "h2.png")]) == 0
    assert (tmp_path / "again.png").read_bytes()[:8] == PNG and (tmp_path / "h2.png").read_bytes()[:8] == PNG
    # the reference by step number
    assert main(["checkpoints", "--arch", TINY_ARCH, "--num-classes", "3", *paths, *TINY, "--layers", "fc",
                 "--reference", "2", "--save", str(tmp_path / "c2.npz")]) == 0
    assert CheckpointComparison.load(tmp_path / "c2.npz").reference == "ckpt_2"
    capsys.readouterr()
    # a wrong architecture names the mismatching keys
    assert main(["checkpoints", "--arch", TINY_ARCH, *paths, *TINY]) == 1  # 10 classes vs 3
    assert "fc.weight: checkpoint (3, 16) vs model (10, 16)" in one_line_error(capsys)


def test_plot_command_on_a_similarity_result(tmp_path, capsys):
    res = SimilarityResult(np.array([[1.0, 0.5], [0.25, np.nan]]), ["a", "b"], ["c", "d"], "A", "B", "CKA",
                           np.full((2, 2), 0.01))
    res.save(tmp_path / "r.npz")
    assert main(["plot", str(tmp_path / "r.npz"), "--stderr"]) == 0
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG  # default: next to the result
    assert main(["plot", str(tmp_path / "r.npz"), "--kind", "lines"]) == 1
    assert "checkpoint comparisons" in one_line_error(capsys)


def test_layers_command(capsys):
    assert main(["layers", "resnet18", "--default"]) == 0
    assert capsys.readouterr().out.split() == RESNET18_DEFAULT
    assert main(["layers", "resnet18"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# 67 selectable modules of resnet18")
    assert "* layer1.0" in "\n".join(out) and any(line.split()[:2] == ["bn1", "BatchNorm2d"] for line in out)
    assert main(["layers", "resnet18", "--select", "layer1.*.conv?"]) == 0
    assert capsys.readouterr().out.split() == ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"]


def test_default_layers_per_family():
    assert default_layers(torchvision.models.resnet18()) == ["conv1", "maxpool", "layer?.*", "avgpool", "fc"]
    assert default_layers(torchvision.models.squeezenet1_0()) == ["features.*", "classifier"]
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                               hidden_dim=8, mlp_dim=8)
    assert default_layers(vit) == ["conv_proj", "encoder.layers.*", "heads"]
    small = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    assert default_layers(small) == ["0", "1"]


def test_build_model_routes(tmp_path, resnet18_seed0):
    a = build_model("resnet18", None, seed=0)
    b = build_model("resnet18", str(resnet18_seed0))
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert not torch.equal(build_model("resnet18", None, seed=1).conv1.weight, a.conv1.weight)
    custom = build_model("torch.nn:Identity")
    assert isinstance(custom, torch.nn.Identity)


def test_help_explains_every_option():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"{name}: {action.dest} has no help"
    text = sub.choices["compare"].format_help()
    for opt in ("--weights-a", "--layers-b", "--metric", "--data", "--n", "--batch-size", "--image-size",
                "--device", "--save", "--csv", "--out"):
        assert opt in text
    with pytest.raises(SystemExit) as info:
        main(["compare"])  # missing models: argparse's usage error, status 2
    assert info.value.code == 2


def test_several_metrics_in_one_pass(tmp_path):
    pytest.importorskip("simtorch.compare")
    pytest.importorskip("simtorch.similarity.dcka")
    pytest.importorskip("simtorch.similarity.information_imbalance")
    argv = ["compare", TINY_ARCH, TINY_ARCH, "--metric", "cka,dcka", "ii", *TINY,
            "--save", str(tmp_path / "r.npz"), "--out", str(tmp_path / "g.png")]
    assert main(argv) == 0
    got = {m: SimilarityResult.load(tmp_path / f"r_{m}.npz") for m in ("cka", "dcka", "ii")}
    assert [got[m].metric for m in ("cka", "dcka", "ii")] == ["CKA", "dCKA", "II"]
    assert got["cka"].settings["unbiased"] is True and got["dcka"].settings["unbiased"] is False
    assert all(r.shape == (5, 5) and r.n_samples == 16 for r in got.values())
    # the same CKA as computed alone
    assert main(["compare", TINY_ARCH, TINY_ARCH, *TINY, "--save", str(tmp_path / "alone.npz")]) == 0
    np.testing.assert_allclose(SimilarityResult.load(tmp_path / "alone.npz").matrix, got["cka"].matrix, atol=1e-12)
    assert main(argv[:5] + ["--estimator", "unbiased", "--metric", "dcka", *TINY,
                            "--save", str(tmp_path / "u.npz")]) == 0
    assert SimilarityResult.load(tmp_path / "u.npz").settings["unbiased"] is True
    assert (tmp_path / "g.png").read_bytes()[:8] == PNG
