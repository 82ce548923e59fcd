"""Mixed precision on CPU: forward passes under torch.autocast(bfloat16), Grams in float32,
sums in float64; the grid stays close to the float32 one."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from models import conv, images
from simtorch import CKA, SimilarityModel
from simtorch.engine import GramBatch, stream
from simtorch.metrics import Computed, Metric

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: see conftest.py

LAYERS = ["conv1", "relu", "conv2", "pool", "fc"]

# Measured (torch 2.14, CPU, these models and data, three seed pairs): the largest
# |CKA_bf16 − CKA_fp32| over the 5×5 grid was 1.5e-3 for unbiased and 7e-4 for biased
# CKA. The tolerance leaves about 3× margin; bf16 Grams (no float32 product) or a
# forward without autocast would be caught by the dtype checks below, not by this bound.
BF16_TOL = 5e-3


@pytest.mark.parametrize("seeds", [(0, 1), (2, 3)])
@pytest.mark.parametrize("unbiased", [True, False])
def test_bf16_grid_close_to_float32(seeds, unbiased):
    a = SimilarityModel(conv(seeds[0]), layers_to_include=LAYERS)
    b = SimilarityModel(conv(seeds[1]), layers_to_include=LAYERS)
    g32 = CKA(a, b, progress=False, unbiased=unbiased).compute(images())
    sim = CKA(a, b, progress=False, unbiased=unbiased, autocast=torch.bfloat16)
    g16 = sim.compute(images())
    diff = np.abs(g32 - g16).max()
    assert diff < BF16_TOL, diff
    assert diff > 0  # autocast really changed the forward pass
    assert sim.result.n_samples == 64


def test_bf16_self_similarity_is_one():
    a = SimilarityModel(conv(0), layers_to_include=LAYERS)
    g = CKA(a, a, progress=False, autocast=torch.bfloat16).compute(images())
    np.testing.assert_allclose(np.diag(g), 1.0, atol=1e-9)


class Recorder(Metric):
    """Records what the engine hands a metric: the Gram stacks' dtypes (and device)."""

    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[tuple[torch.dtype, torch.dtype, torch.dtype]] = []

    def update(self, batch: GramBatch) -> None:
        self.seen.append((batch.grams_a.dtype, batch.grams_b.dtype, batch.energy_a.dtype))

    def compute(self) -> Computed:
        return Computed(torch.zeros(self.binding.layers_a, self.binding.layers_b))


def test_grams_are_float32_while_activations_are_bf16():
    ma, mb = conv(0), conv(1)
    out_dtypes: list[torch.dtype] = []
    handle = ma.conv2.register_forward_hook(lambda m, i, o: out_dtypes.append(o.dtype))
    try:
        rec = Recorder()
        stream(SimilarityModel(ma, layers_to_include=LAYERS), SimilarityModel(mb, layers_to_include=LAYERS),
               images(), [rec], "cpu", progress=False, autocast=torch.bfloat16)
    finally:
        handle.remove()
    assert out_dtypes == [torch.bfloat16] * 4  # the forward ran under autocast
    assert rec.seen == [(torch.float32, torch.float32, torch.float32)] * 4


def test_autocast_is_off_after_compute_and_bad_dtype_refused():
    a = SimilarityModel(conv(0), layers_to_include=["fc"])
    CKA(a, a, progress=False, autocast=torch.bfloat16).compute(images())
    assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="autocast"):
        CKA(a, a, autocast=torch.float64)
