"""Smoke runs of the examples on their smallest settings (one training epoch each)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

pytest.importorskip("sklearn")  # the examples use scikit-learn's digits

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PNG = b"\x89PNG\r\n\x1a\n"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()  # the examples set their own thread count
    yield
    torch.set_num_threads(n)


def test_training_checkpoints_example(tmp_path, capsys):
    ex = load("training_checkpoints")
    ex.main(["--epochs", "1", "--out-dir", str(tmp_path), "--ckpt-dir", str(tmp_path / "ckpt"),
             "--save", str(tmp_path / "c.npz")])
    for name in ("checkpoint_convergence.png", "checkpoint_heatmap.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    # steps 0, 4, 8, 16, 32 and the end of the epoch (38), saved as nested training checkpoints
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.pt"))[:2] == ["step_00000.pt", "step_00004.pt"]
    from simtorch.checkpoints import CheckpointComparison

    cmp = CheckpointComparison.load(tmp_path / "c.npz")
    assert cmp.steps == [0, 4, 8, 16, 32, 38] and cmp.layers == ex.LAYERS
    assert cmp.values[-1] == pytest.approx(1.0, abs=1e-6)
    assert (cmp.stderr[:-1] > 0).all()  # 12 held-out batches: real error bars
    assert "held-out accuracy" in capsys.readouterr().out


def test_transformer_layers_example(tmp_path, capsys):
    ex = load("transformer_layers")
    ex.main(["--epochs", "1", "--out", str(tmp_path / "t.png")])
    assert (tmp_path / "t.png").read_bytes()[:8] == PNG
    out = capsys.readouterr().out
    assert out.count("SimilarityResult(CKA: seed 0 [7 layers] vs seed 1 [7 layers]") == 2
    assert "encoder.layers.0.self_attn" in out
