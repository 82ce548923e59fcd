"""CUDA: device placement, autocast float16, CUDA grid == CPU grid. Skipped without CUDA
(run with ``pytest -m cuda`` on a GPU machine)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from models import conv, images
from simtorch import CKA, SimilarityModel, compare
from simtorch.engine import GramBatch, stream
from simtorch.metrics import Computed, Metric

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

LAYERS = ["conv1", "relu", "conv2", "pool", "fc"]


@pytest.fixture(autouse=True)
def no_tf32():
    """TF32 convolutions/matmuls (cuDNN's default for convs) would differ from the CPU by
    ~1e-3 before simtorch does anything; compare like with like."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def devices_of(model: nn.Module) -> set[str]:
    return {str(p.device) for p in model.parameters()} | {str(b.device) for b in model.buffers()}


class Recorder(Metric):
    """Records what the engine hands a metric: the Gram stacks' dtypes (and device)."""

    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def update(self, batch: GramBatch) -> None:
        self.seen.append((batch.grams_a.dtype, batch.grams_a.device.type, batch.grams_b.dtype))

    def compute(self) -> Computed:
        return Computed(torch.zeros(self.binding.layers_a, self.binding.layers_b))


def test_cpu_model_computed_on_cuda_and_moved_back():
    ma, mb = conv(0), conv(1)
    seen: list[str] = []
    h = ma.conv2.register_forward_hook(lambda m, i, o: seen.append(o.device.type))
    try:
        a = SimilarityModel(ma, layers_to_include=LAYERS)
        b = SimilarityModel(mb, layers_to_include=LAYERS)
        g_cuda = CKA(a, b, device="cuda", progress=False).compute(images())
    finally:
        h.remove()
    assert seen == ["cuda"] * 4
    assert devices_of(ma) == {"cpu"} and devices_of(mb) == {"cpu"}
    g_cpu = CKA(a, b, device="cpu", progress=False).compute(images())
    np.testing.assert_allclose(g_cuda, g_cpu, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel,unbiased", [("linear", True), ("linear", False), ("rbf", True), ("rbf", False)])
def test_cuda_grid_equals_cpu_grid(kernel, unbiased):
    a = SimilarityModel(conv(0), layers_to_include=LAYERS)
    b = SimilarityModel(conv(1), layers_to_include=LAYERS)
    g_cpu = CKA(a, b, device="cpu", progress=False, kernel=kernel, unbiased=unbiased).compute(images())
    g_cuda = CKA(a, b, device="cuda", progress=False, kernel=kernel, unbiased=unbiased).compute(images())
    assert np.isfinite(g_cpu).all()
    np.testing.assert_allclose(g_cuda, g_cpu, atol=1e-5, rtol=0)


def test_compare_on_cuda_equals_cpu():
    ma, mb = conv(0), conv(1)
    kw = dict(layers_a=LAYERS, layers_b=LAYERS, progress=False)
    cpu = compare(ma, mb, images(), device="cpu", **kw)
    cuda = compare(ma, mb, images(), device="cuda", **kw)
    for key in cpu:
        np.testing.assert_allclose(cuda[key].matrix, cpu[key].matrix, atol=1e-5, rtol=0, err_msg=key)
    assert devices_of(ma) == {"cpu"} and devices_of(mb) == {"cpu"}


def test_model_already_on_cuda_stays_there():
    ma = conv(0).cuda()
    a = SimilarityModel(ma, layers_to_include=LAYERS)
    g = CKA(a, a, progress=False).compute(images())  # device=None: where model 1 lives
    np.testing.assert_allclose(np.diag(g), 1.0, atol=1e-6)
    assert devices_of(ma) == {"cuda:0"}


def test_per_model_devices():
    ma, mb = conv(0), conv(1)
    a = SimilarityModel(ma, layers_to_include=LAYERS, device="cuda")
    b = SimilarityModel(mb, layers_to_include=LAYERS, device="cpu")
    g = CKA(a, b, device="cpu", progress=False).compute(images())
    g_cpu = CKA(SimilarityModel(ma, layers_to_include=LAYERS), SimilarityModel(mb, layers_to_include=LAYERS),
                device="cpu", progress=False).compute(images())
    np.testing.assert_allclose(g, g_cpu, atol=1e-5, rtol=0)
    assert devices_of(ma) == {"cpu"} and devices_of(mb) == {"cpu"}


def test_failed_placement_moves_the_first_model_back():
    ma = conv(0)
    with torch.device("meta"):
        mb = conv(1)
    a = SimilarityModel(ma, layers_to_include=LAYERS)
    b = SimilarityModel(mb, layers_to_include=LAYERS)
    with pytest.raises(ValueError, match="meta"):
        CKA(a, b, device="cuda", progress=False).compute(images())
    assert devices_of(ma) == {"cpu"}


# Measured bound as in test_autocast.py (bf16 on CPU: 1.5e-3); float16 has 3 more mantissa
# bits than bfloat16, so the same 5e-3 leaves ample margin.
FP16_TOL = 5e-3


def test_autocast_float16_on_cuda():
    ma, mb = conv(0), conv(1)
    a = SimilarityModel(ma, layers_to_include=LAYERS)
    b = SimilarityModel(mb, layers_to_include=LAYERS)
    g32 = CKA(a, b, device="cuda", progress=False).compute(images())
    g16 = CKA(a, b, device="cuda", progress=False, autocast=torch.float16).compute(images())
    diff = np.abs(g32 - g16).max()
    assert 0 < diff < FP16_TOL, diff
    dtypes: list[torch.dtype] = []
    h = ma.conv2.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    try:
        rec = Recorder()
        stream(a, b, images(), [rec], "cuda", progress=False, autocast=torch.float16)
    finally:
        h.remove()
    assert dtypes == [torch.float16] * 4
    assert rec.seen == [(torch.float32, "cuda", torch.float32)] * 4
    assert devices_of(ma) == {"cpu"}


def test_nan_detected_on_cuda_names_layer_and_batch():
    class Poison(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            h = self.fc(x)
            if self.calls == 3:
                h = h.clone()
                h[0, 0] = float("nan")
            return h

    model = nn.Sequential(OrderedDict(poison=Poison(), out=nn.Linear(6, 3)))
    sm = SimilarityModel(model, model_name="P", layers_to_include=["poison.fc", "poison"])
    x = torch.randn(80, 6, generator=torch.Generator().manual_seed(0))
    # checked on the device every 64 batches and at the end; still names batch and layer
    with pytest.raises(FloatingPointError, match=r"batch 2 .*\['poison'\]"):
        CKA(sm, sm, device="cuda", progress=False).compute(list(x.split(8)))
    assert devices_of(model) == {"cpu"}
