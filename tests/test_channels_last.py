"""``channels_last``: activations in that memory format are multiplied without a copy and
give the grids of the default layout; ``RunOptions(channels_last=True)`` gives the models
such inputs without touching the caller's tensors or models; features summed over batches
keep one column order when the layout changes from batch to batch."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import reference as ref
import simtorch.functional as F
from models import conv
from simtorch import CKA, SimilarityModel, compare
from simtorch.engine import RunOptions
from simtorch.metrics import canonical_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYERS = ["conv1", "relu", "conv2", "pool", "fc"]


def images(k: int = 3, n: int = 64, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 16, 16, generator=g) for _ in range(k)]


def float64_activations(seed: int, xs: list[torch.Tensor]) -> dict[str, list[np.ndarray]]:
    """Each layer's float64 activations per batch, default layout, by plain hooks."""
    model = conv(seed).double().eval()
    out: dict[str, list[np.ndarray]] = {name: [] for name in LAYERS}
    handles = [getattr(model, name).register_forward_hook(
        lambda m, a, o, name=name: out[name].append(o.detach().reshape(o.shape[0], -1).numpy()))
        for name in LAYERS]
    with torch.no_grad():
        for x in xs:
            model(x.double())
    for h in handles:
        h.remove()
    return out


@pytest.mark.parametrize("shape, fmt", [((6, 5, 4, 3), torch.channels_last),
                                        ((6, 5, 2, 4, 3), torch.channels_last_3d)])
def test_product_rows_reads_channels_last_in_place_with_the_same_gram(shape, fmt):
    x = torch.randn(*shape, dtype=torch.float64).contiguous(memory_format=fmt)
    rows = F.product_rows(x)
    assert rows.data_ptr() == x.data_ptr() and rows.shape == (6, x[0].numel())
    flat = x.reshape(6, -1).numpy()
    assert not np.array_equal(rows.numpy(), flat)  # the columns really are in another order
    np.testing.assert_allclose((rows @ rows.T).numpy(), flat @ flat.T, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(np.sort(rows.numpy(), axis=1), np.sort(flat, axis=1))


def test_product_rows_of_other_layouts_is_flatten_samples():
    x = torch.randn(6, 5, 4, 4)
    assert F.product_rows(x).data_ptr() == x.data_ptr()
    strided = x[:, ::2]  # neither layout: copied, in the default order
    assert F.memory_order(strided) is None
    np.testing.assert_array_equal(F.product_rows(strided).numpy(), strided.reshape(6, -1).numpy())
    one = torch.randn(6, 5, 1, 1).contiguous(memory_format=torch.channels_last)  # both layouts at once
    assert F.memory_order(one) is None


@pytest.mark.parametrize("unbiased", [True, False])
def test_channels_last_run_matches_float64_reference_and_default_layout(unbiased):
    xs = images()
    a = SimilarityModel(conv(0), "A", LAYERS)
    b = SimilarityModel(conv(1), "B", LAYERS)
    default = CKA(a, b, unbiased=unbiased, progress=False).compute(xs)
    fast = CKA(a, b, unbiased=unbiased, progress=False, channels_last=True).compute(xs)
    acts_a, acts_b = float64_activations(0, xs), float64_activations(1, xs)
    want = np.array([[ref.streaming_cka(acts_a[i], acts_b[j], unbiased=unbiased) for j in LAYERS] for i in LAYERS])
    np.testing.assert_allclose(fast, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(fast, default, atol=1e-6, rtol=0)
    assert not np.allclose(want, want[0, 0])  # a grid with structure, not a constant


def test_channels_last_outputs_take_the_lean_product_path():
    """conv1's 64 × 2048 output is large enough for the lean path; in channels_last it is
    read in memory order, not copied by the general path."""
    from simtorch.capture import LayerCapture

    seen: list[bool] = []
    lean = LayerCapture._lean

    def spy(self, i, output, plan):
        seen.append(plan.perm is not None)
        return lean(self, i, output, plan)

    a = SimilarityModel(conv(0), "A", ["conv1"])
    LayerCapture._lean = spy  # type: ignore[method-assign]
    try:
        CKA(a, a, progress=False, channels_last=True).compute(images(4))
    finally:
        LayerCapture._lean = lean  # type: ignore[method-assign]
    assert seen and all(seen)


def test_caller_tensors_and_models_keep_their_layout():
    xs = images(2)
    before = [x.clone() for x in xs]
    model = conv(0)
    strides = {k: v.stride() for k, v in model.state_dict().items()}
    a = SimilarityModel(model, "A", LAYERS)
    CKA(a, a, progress=False, channels_last=True).compute(xs)
    for x, x0 in zip(xs, before):
        assert x.is_contiguous() and torch.equal(x, x0)
    assert {k: v.stride() for k, v in model.state_dict().items()} == strides


def test_a_layout_that_changes_between_batches_gives_every_metric_the_same_numbers():
    """Elementwise layers keep the input's layout and its exact values: batches alternating
    between layouts must give what all-default batches give. Cross moments ``XᵀY`` summed
    over batches (Procrustes, CCA) would be wrong if the columns' order followed the layout."""
    def elementwise(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(OrderedDict(id=nn.Identity(), act=nn.Tanh(), flat=nn.Flatten(),
                                         fc=nn.Linear(3 * 4 * 4, 6)))

    g = torch.Generator().manual_seed(5)
    plain = [torch.randn(32, 3, 4, 4, generator=g) for _ in range(4)]
    mixed = [x.contiguous(memory_format=torch.channels_last) if k % 2 == 0 else x for k, x in enumerate(plain)]
    assert F.memory_order(mixed[0]) is not None
    a = SimilarityModel(elementwise(0), "A", ["id", "act", "fc"])
    b = SimilarityModel(elementwise(1), "B", ["act", "fc"])
    for key in canonical_names():  # one pass each: some metrics transform the features their own way
        want = compare(a, b, plain, metrics=(key,), progress=False)[key].matrix
        got = compare(a, b, mixed, metrics=(key,), progress=False)[key].matrix
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0, err_msg=key)


def test_a_model_that_views_spatial_outputs_fails_with_a_hint():
    class ViewFlatten(nn.Module):
        def forward(self, x):
            return x.view(x.size(0), -1)

    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), flat=ViewFlatten(), fc=nn.Linear(4 * 14 * 14, 3)))
    a = SimilarityModel(model, "Viewer", ["conv", "fc"])
    CKA(a, a, progress=False).compute(images(1, n=8))  # fine in the default layout
    with pytest.raises(RuntimeError, match=r"Viewer ran on channels_last inputs.*x\.reshape\(n, -1\)"):
        CKA(a, a, progress=False, channels_last=True).compute(images(1, n=8))


def test_a_state_without_channels_last_is_not_resumed_with_it(tmp_path):
    a = SimilarityModel(conv(0), "A", LAYERS)
    path = tmp_path / "s.npz"
    compare(a, a, images(2), metrics=("cka",), progress=False, state_path=path)
    again = compare(a, a, images(2), metrics=("cka",), progress=False, state_path=path)["cka"]
    assert again.settings["resumed_batches"] == 2  # the default run is still found
    with pytest.raises(ValueError, match="holds the state of another run.*run"):
        compare(a, a, images(2), metrics=("cka",), progress=False, state_path=path, channels_last=True)


def test_channels_last_must_be_a_bool():
    with pytest.raises(TypeError, match="channels_last must be True or False"):
        RunOptions(channels_last="yes")  # type: ignore[arg-type]


def test_cli_channels_last_gives_the_default_grid(tmp_path):
    from simtorch.cli import main
    from simtorch.result import load_results
    from test_cli import TINY, TINY_ARCH

    for flag, name in (([], "plain.npz"), (["--channels-last"], "cl.npz")):
        assert main(["compare", TINY_ARCH, TINY_ARCH, *flag, *TINY, "--save", str(tmp_path / name)]) == 0
    plain, fast = load_results(tmp_path / "plain.npz")["cka"], load_results(tmp_path / "cl.npz")["cka"]
    np.testing.assert_allclose(fast.matrix, plain.matrix, atol=1e-6, rtol=0)
    assert not np.allclose(plain.matrix, 1.0)
