"""Smaller errors that used to leave the user guessing (issue 13): each one now names the
problem and the fix in one line."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from simtorch import CKA, SimilarityModel, compare
from simtorch.placement import resolve_device

LAYERS = ["fc1", "act", "fc2"]


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(5, 7), act=nn.ReLU(), fc2=nn.Linear(7, 3)))


def batches(k: int = 3, n: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, 5, generator=g) for _ in range(k)]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = net(0)

    def forward(self, pixel_values):
        return self.inner(pixel_values)


def test_dict_batch_with_keys_the_model_does_not_take():
    sm = SimilarityModel(Net(), "N", ["inner.fc1"])
    loader = [{"pixel_values": x, "labels": torch.zeros(8)} for x in batches()]
    with pytest.raises(TypeError, match=r"keys \['pixel_values', 'labels'\].*does not take \['labels'\].*"
                                        r"input_key=.*input_fn="):
        CKA(sm, sm, progress=False).compute(loader)
    # the fix it names works
    assert np.isfinite(CKA(sm, sm, progress=False, input_key="pixel_values").compute(loader)).all()


def test_a_type_error_inside_the_model_is_not_rewritten():
    class Buggy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 3)

        def forward(self, x, **kwargs):
            raise TypeError("the model's own bug")

    sm = SimilarityModel(Buggy(), "B", ["fc"])
    with pytest.raises(TypeError, match="^the model's own bug$"):
        CKA(sm, sm, progress=False).compute([{"x": x} for x in batches()])


def test_a_single_batch_says_why_the_standard_errors_are_nan():
    a, b = SimilarityModel(net(0), "A", LAYERS), SimilarityModel(net(1), "B", LAYERS)
    sim = CKA(a, b, progress=False)
    with pytest.warns(UserWarning, match=r"standard errors are NaN.*single batch.*jackknife needs at least 2"):
        sim.compute([torch.randn(16, 5, generator=torch.Generator().manual_seed(0))])
    assert np.isnan(sim.result.stderr).all()
    with pytest.warns(UserWarning, match="jackknife needs at least 2"):
        compare(a, b, batches(1), ["cka"], progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_asked_for_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match=r"device='cuda': CUDA is not available on this machine.*device='cpu'"):
        resolve_device("cuda")
    a = SimilarityModel(net(0), "A", LAYERS)
    with pytest.raises(ValueError, match="CUDA is not available"):
        CKA(a, a, device="cuda", progress=False).compute(batches())
    on_gpu = SimilarityModel(net(1), "B", LAYERS, device="cuda:0")
    with pytest.raises(ValueError, match=r"B: SimilarityModel\(device=...\)='cuda:0': CUDA is not available"):
        CKA(a, on_gpu, progress=False).compute(batches())
    with pytest.raises(ValueError, match="not a device torch knows"):
        resolve_device("gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_index_this_machine_lacks_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_plot_without_a_path_says_where_the_file_went(tmp_path, monkeypatch, capsys, plt):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    a, b = SimilarityModel(net(0), "A", LAYERS), SimilarityModel(net(1), "B", LAYERS)
    sim = CKA(a, b, progress=False)
    sim.compute(batches())
    sim.plot_similarity(title="A vs B", savefig=True)  # 0.2.1's default: ../output
    want = (tmp_path / "output" / "A_vs_B.png").resolve()
    assert want.exists()
    out = capsys.readouterr().out
    assert str(want) in out and "save_path" in out
    sim.plot_similarity(title="A vs B", savefig=True, save_path=tmp_path / "x.png")  # a path given: quiet
    assert capsys.readouterr().out == "" and (tmp_path / "x.png").exists()
