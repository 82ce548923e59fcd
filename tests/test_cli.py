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
from simtorch.checkpoint_result import CheckpointComparison
from simtorch.result import load_results
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


# ------------------------------------------------------------------ options that cannot eat positionals
def test_list_options_do_not_swallow_the_model_names(tmp_path, capsys):
    # issue 14: `--layers-a X resnet18 resnet34` took the model names as layers
    assert main(["compare", "--layers-a", "conv1", TINY_ARCH, TINY_ARCH, *TINY, "--save", str(tmp_path / "a.npz")]) == 0
    res = SimilarityResult.load(tmp_path / "a.npz")
    assert res.layers_a == res.layers_b == ["conv1"]  # same architecture: A's layers for B too
    # several patterns: repeat the flag or separate them with commas
    assert main(["compare", "--layers-a", "conv1,relu", "--layers-a", "fc", "--layers-b", "fc", TINY_ARCH, TINY_ARCH,
                 *TINY, "--save", str(tmp_path / "b.npz")]) == 0
    res = SimilarityResult.load(tmp_path / "b.npz")
    assert res.layers_a == ["conv1", "relu", "fc"] and res.layers_b == ["fc"]
    # --metric before the models takes only metric names
    assert main(["compare", "--metric", "cka", "dcka", TINY_ARCH, TINY_ARCH, *TINY,
                 "--save", str(tmp_path / "m.npz")]) == 0
    assert [r.metric for r in load_results(tmp_path / "m.npz").values()] == ["CKA", "dCKA"]
    assert main(["layers", "--select", "layer1.0.conv?", "resnet18"]) == 0
    assert capsys.readouterr().out.split()[-2:] == ["layer1.0.conv1", "layer1.0.conv2"]
    # the old multi-value form is a usage error that says how to write it
    with pytest.raises(SystemExit) as info:
        main(["compare", "--layers-a", "conv1", "relu", TINY_ARCH, TINY_ARCH, *TINY])
    assert info.value.code == 2
    assert "take one value per flag" in capsys.readouterr().err


# ------------------------------------------------------------------ --save with several metrics
def test_save_then_plot_chain_of_the_readme(tmp_path, capsys):
    # README: `simtorch compare ... --metric cka dcka ii --save result.npz` then `simtorch plot result.npz`
    assert main(["compare", TINY_ARCH, TINY_ARCH, "--metric", "cka", "dcka", "ii", *TINY,
                 "--save", str(tmp_path / "result.npz")]) == 0
    results = load_results(tmp_path / "result.npz")
    assert list(results) == ["cka", "dcka", "ii"] and [r.metric for r in results.values()] == ["CKA", "dCKA", "II"]
    for key in results:  # and each metric alone, loadable as before
        alone = SimilarityResult.load(tmp_path / f"result_{key}.npz")
        assert alone == results[key]
    assert SimilarityResult.load(tmp_path / "result.npz", metric="dcka") == results["dcka"]
    with pytest.raises(ValueError, match="holds 3 results"):
        SimilarityResult.load(tmp_path / "result.npz")
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "result.npz"), "--out", str(tmp_path / "all.png")]) == 0
    assert (tmp_path / "all.png").read_bytes()[:8] == PNG
    assert main(["plot", str(tmp_path / "result.npz"), "--metric", "ii", "--out", str(tmp_path / "ii.png")]) == 0
    assert main(["plot", str(tmp_path / "result.npz"), "--metric", "cka,dcka", "--out", str(tmp_path / "2.png")]) == 0
    assert (tmp_path / "ii.png").read_bytes()[:8] == PNG and (tmp_path / "2.png").read_bytes()[:8] == PNG
    assert main(["plot", str(tmp_path / "result.npz"), "--metric", "rsa"]) == 1
    assert "has no 'rsa' result; it holds cka, dcka, ii" in one_line_error(capsys)
    # a single-metric file still plots as before
    assert main(["plot", str(tmp_path / "result_cka.npz"), "--out", str(tmp_path / "one.png")]) == 0


# ------------------------------------------------------------------ Ctrl-C keeps the completed batches
def test_interrupted_compare_writes_partial_results(tmp_path, capsys, monkeypatch):
    import simtorch.cli.commands as commands

    def interrupted(args, tokenizer=None):
        x = torch.randn(40, 3, 16, 16, generator=torch.Generator().manual_seed(0))

        def batches():
            for i in range(0, 40, 8):
                if i == 3 * 8:
                    raise KeyboardInterrupt  # Ctrl-C after 3 of 5 batches
                yield x[i:i + 8]

        return batches()

    monkeypatch.setattr(commands, "make_loader", interrupted)
    argv = ["compare", TINY_ARCH, TINY_ARCH, "--metric", "cka,ii", *TINY, "--save", str(tmp_path / "r.npz"),
            "--csv", str(tmp_path / "r.csv"), "--out", str(tmp_path / "r.png")]
    assert main(argv) == 130
    captured = capsys.readouterr()
    assert "interrupted after 3 batches (24 samples): writing the partial results" in captured.err
    assert "PARTIAL" in captured.out and "simtorch: interrupted" in captured.err
    results = load_results(tmp_path / "r.npz")
    assert list(results) == ["cka", "ii"]
    for key, res in results.items():
        assert res.settings["partial"] is True and res.n_batches == 3 and res.n_samples == 24
        assert SimilarityResult.load(tmp_path / f"r_{key}.npz").settings["partial"] is True
        assert len((tmp_path / f"r_{key}.csv").read_text().splitlines()) == 1 + 25
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG
    # interrupted before any batch: nothing to write, still 130
    monkeypatch.setattr(commands, "make_loader", lambda args, tokenizer=None: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["compare", TINY_ARCH, TINY_ARCH, *TINY, "--save", str(tmp_path / "none.npz")]) == 130
    assert not (tmp_path / "none.npz").exists()


# ------------------------------------------------------------------ timm and Hugging Face models
def test_timm_models(tmp_path, capsys):
    timm = pytest.importorskip("timm")
    torch.manual_seed(5)
    weights = tmp_path / "t.pt"
    torch.save(timm.create_model("test_resnet", num_classes=4).state_dict(), weights)
    argv = ["compare", "timm:test_resnet", "timm:test_resnet", "--num-classes-a", "4", "--num-classes-b", "4",
            "--weights-b", str(weights), "--weights-a", str(weights), *TINY, "--save", str(tmp_path / "t.npz")]
    assert main(argv) == 0
    res = SimilarityResult.load(tmp_path / "t.npz")
    np.testing.assert_allclose(np.diag(res.matrix), 1.0, atol=1e-5)  # both load the same file
    assert main(["compare", "timm:test_resnet", "timm:test_resnet", *TINY]) == 0  # random init, seeds 0 and 1
    assert main(["compare", "timm:no_such_net", "resnet18", *TINY]) == 1
    assert "unknown timm model 'no_such_net'" in one_line_error(capsys)


def test_missing_extras_are_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert main(["compare", "timm:resnet18", "resnet18", *TINY]) == 1
    assert "timm: models need the timm package: pip install timm" in one_line_error(capsys)
    assert main(["layers", "hf:/nowhere"]) == 1
    assert "hf: models need the transformers package: pip install transformers" in one_line_error(capsys)


def _tiny_bert_dir(path: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    words = "the a cat dog sat on mat ran fast slow big small red blue green tree house".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    if tok("the cat")["input_ids"][1] == 1:  # older transformers read the file, not the dict
        tok = transformers.BertTokenizerFast(vocab_file=str(path / "vocab.txt"))
    assert tok("the cat")["input_ids"][1:3] == [5, 7]
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32,
                                  initializer_range=0.5)  # layers that differ visibly
    out = path / "bert"
    torch.manual_seed(0)
    transformers.BertModel(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_hf_text_models(tmp_path, capsys):
    bert = _tiny_bert_dir(tmp_path)
    rng = np.random.default_rng(0)
    words = "the a cat dog sat on mat ran fast slow big small red blue green tree house".split()
    lines = [" ".join(rng.choice(words, size=rng.integers(2, 9))) for _ in range(24)]
    (tmp_path / "text.txt").write_text("\n".join(lines) + "\n")
    argv = ["compare", f"hf:{bert}", f"hf:{bert}", "--data", f"text:{tmp_path / 'text.txt'}", "--n", "24",
            "--batch-size", "8", "--quiet", "--device", "cpu", "--save", str(tmp_path / "h.npz")]
    assert main(argv) == 0, capsys.readouterr().err
    res = SimilarityResult.load(tmp_path / "h.npz")
    assert res.layers_a == ["embeddings", "encoder.layer.0", "encoder.layer.1"] and res.n_samples == 24
    np.testing.assert_allclose(np.diag(res.matrix), 1.0, atol=1e-5)  # the same weights on both sides
    assert np.all(np.isfinite(res.matrix)) and res.matrix.min() < 0.99  # real, distinct layers
    # the same grid by hand: masked mean over the tokens, the directory's tokenizer
    import transformers

    from simtorch import CKA, SimilarityModel
    from simtorch.data import text_dataset

    model = transformers.AutoModel.from_pretrained(str(bert)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(bert))
    loader = torch.utils.data.DataLoader(text_dataset(tmp_path / "text.txt", tok), batch_size=8)
    sm = SimilarityModel(model, "bert", ["embeddings", "encoder.layer.*"], sequence="mean")
    cka = CKA(sm, sm)
    cka.compute(loader)
    np.testing.assert_allclose(res.matrix, cka.result.matrix, atol=1e-6)
    capsys.readouterr()
    # image data for a text model, text data for an image model: one line each
    assert main(["compare", f"hf:{bert}", f"hf:{bert}", *TINY]) == 1
    assert "is a text model: pass --data text:FILE" in one_line_error(capsys)
    assert main(["compare", TINY_ARCH, TINY_ARCH, "--data", f"text:{tmp_path / 'text.txt'}", *TINY]) == 1
    assert "text data needs an hf:DIR model" in one_line_error(capsys)
    assert main(["compare", f"hf:{tmp_path}", f"hf:{tmp_path}", "--data", f"text:{tmp_path / 'text.txt'}",
                 *TINY]) == 1
    assert "hf: takes a local save_pretrained directory (with config.json)" in one_line_error(capsys)
    # `simtorch layers` marks the transformer blocks
    assert main(["layers", f"hf:{bert}", "--default"]) == 0
    assert capsys.readouterr().out.split() == ["embeddings", "encoder.layer.0", "encoder.layer.1"]


def text_model() -> torch.nn.Module:
    """A model that unpacks (batch, tokens): given images it fails the way BERT does."""

    class Text(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            batch, tokens = ids.shape
            return self.emb(ids.long().clamp(0, 9))

    return Text()


def test_text_model_on_images_is_explained(capsys):
    arch = f"{__name__}:text_model"
    assert main(["compare", arch, arch, *TINY, "--layers-a", "emb"]) == 1
    err = one_line_error(capsys)
    assert "is it a text model? Use hf:DIR with --data text:FILE" in err and "too many values to unpack" in err


# ------------------------------------------------------------------ which option reaches which metric
def test_kernel_options_reach_only_the_metrics_they_belong_to(tmp_path, capsys):
    import inspect

    from simtorch.cli.options import METRIC_FLAGS
    from simtorch.metrics import metric_class

    # every declared mapping names a real parameter of its metric
    for flag in METRIC_FLAGS:
        for key, param in flag.params.items():
            assert param in inspect.signature(metric_class(key)).parameters, (flag.flag, key, param)
    few = [*TINY, "--n", "32", "--batch-size", "16"]  # CKNNA's k=10 neighbours need ≥ 11 samples a batch
    # --kernel (default linear) is CKA's kernel: CKNNA keeps its own cosine kernel
    assert main(["compare", TINY_ARCH, TINY_ARCH, "--metric", "cknna", *few, "--save", str(tmp_path / "k.npz")]) == 0
    assert SimilarityResult.load(tmp_path / "k.npz").settings["kernel"] == "cosine"
    # --kernel rbf --sigma-frac 0.5 with CKA and CKNNA: CKA is RBF, CKNNA still cosine
    assert main(["compare", TINY_ARCH, TINY_ARCH, "--metric", "cka,cknna", "--kernel", "rbf", "--sigma-frac", "0.5",
                 *few, "--save", str(tmp_path / "r.npz")]) == 0
    got = load_results(tmp_path / "r.npz")
    assert got["cka"].settings["kernel"] == "rbf" and got["cka"].settings["sigma_frac"] == 0.5
    assert got["cknna"].settings["kernel"] == "cosine"
    # CKNNA's own kernel has its own option; --estimator reaches CKNNA's unbiased
    assert main(["compare", TINY_ARCH, TINY_ARCH, "--metric", "cknna", "--cknna-kernel", "linear", "--estimator",
                 "biased", *few, "--save", str(tmp_path / "l.npz")]) == 0
    s = SimilarityResult.load(tmp_path / "l.npz").settings
    assert s["kernel"] == "linear" and s["unbiased"] is False
    # an option that reaches none of the chosen metrics is an error, not a silent no-op
    capsys.readouterr()
    assert main(["compare", TINY_ARCH, TINY_ARCH, "--metric", "cknna", "--kernel", "rbf", *few]) == 1
    err = one_line_error(capsys)
    assert "--kernel applies to --metric cka, not to cknna" in err and "--cknna-kernel" in err
    assert main(["compare", TINY_ARCH, TINY_ARCH, "--metric", "ii", "--estimator", "biased", *few]) == 1
    assert "--estimator applies to --metric cka, dcka, cknna, not to ii" in one_line_error(capsys)


# ------------------------------------------------------------------ resumable runs (--resume)
class CountingCNN(torch.nn.Sequential):
    calls = 0

    def forward(self, x):
        CountingCNN.calls += 1
        return super().forward(x)


def counting_cnn(num_classes: int = 10) -> torch.nn.Module:
    return CountingCNN(OrderedDict(tiny_cnn(num_classes).named_children()))


def test_resume_continues_an_interrupted_compare(tmp_path, capsys, monkeypatch):
    import simtorch.cli.commands as commands

    x = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    stop = {"at": 2}

    def loader(args, tokenizer=None):
        def batches():
            for i in range(4):
                if i == stop["at"]:
                    raise KeyboardInterrupt  # Ctrl-C after 2 of 4 batches
                yield x[8 * i:8 * (i + 1)]

        return batches()

    monkeypatch.setattr(commands, "make_loader", loader)
    arch = f"{__name__}:counting_cnn"
    state = tmp_path / "state.npz"
    base = ["compare", arch, arch, "--metric", "cka,ii", *TINY]
    argv = [*base, "--resume", str(state), "--save-every", "1", "--save", str(tmp_path / "r.npz")]

    CountingCNN.calls = 0
    assert main(argv) == 130
    captured = capsys.readouterr()
    assert CountingCNN.calls == 2 * 2  # two models, two batches
    assert f"the run's state is saved in {state}: the same command continues it" in captured.err
    assert state.is_file()
    partial = load_results(tmp_path / "r.npz")
    assert all(r.settings["partial"] is True and r.n_batches == 2 for r in partial.values())

    stop["at"] = None  # the same command again: it completes
    CountingCNN.calls = 0
    assert main(argv) == 0
    assert CountingCNN.calls == 2 * 2  # only on the 2 remaining batches
    assert "resumed from" in capsys.readouterr().out
    resumed = load_results(tmp_path / "r.npz")

    CountingCNN.calls = 0  # an uninterrupted run, without a state file
    assert main([*base, "--save", str(tmp_path / "u.npz")]) == 0
    assert CountingCNN.calls == 2 * 4
    whole = load_results(tmp_path / "u.npz")
    for key in ("cka", "ii"):
        r, w = resumed[key], whole[key]
        assert "partial" not in r.settings and r.settings["resumed_batches"] == 2
        assert r.n_batches == w.n_batches == 4 and r.n_samples == w.n_samples == 32
        np.testing.assert_allclose(r.matrix, w.matrix, rtol=0, atol=1e-12)
        np.testing.assert_allclose(r.stderr, w.stderr, rtol=0, atol=1e-12)

    # --save-every needs --resume; a bad interval is one line
    assert main([*base, "--save-every", "10"]) == 1
    assert "--save-every 10: it says how often the run's state is saved, which needs --resume PATH" in \
        one_line_error(capsys)
    assert main([*base, "--resume", str(tmp_path / "s2.npz"), "--save-every", "soon"]) == 1
    assert "--save-every 'soon': give a number of batches (100) or an interval (30s, 5m, 1h)" in one_line_error(capsys)
