"""simtorch.batches: the model input of a loader batch (tensors, (x, y) tuples, dicts,
``input_key``, ``input_fn``), its size, moving it, calling a model on it, and the size of a
loader's data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, TensorDataset

from models import batches, counted, data, mlp
from simtorch import CKA, SimilarityModel
from simtorch.batches import batch_size, call_model, dataset_size, first_tensor, move, to_device, unpack_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: see conftest.py

X = torch.arange(12.0).reshape(4, 3)
Y = torch.zeros(4)


# ---------------------------------------------------------------- unpack_batch


def test_unpack_tensor_tuple_list():
    assert unpack_batch(X) is X
    assert unpack_batch((X, Y)) is X  # (x, y) datasets: the first item is the input
    assert unpack_batch([X, Y]) is X
    with pytest.raises(ValueError, match="empty tuple/list.*input_fn"):
        unpack_batch(())


def test_unpack_mapping_whole_or_by_key():
    batch = {"input_ids": X, "attention_mask": Y}
    got = unpack_batch(batch)
    assert got == batch and got is not batch  # every key kept: the mask must reach the model
    assert unpack_batch(batch, input_key="attention_mask") is Y
    with pytest.raises(KeyError, match=r"'pixels' is not in the batch.*\['input_ids', 'attention_mask'\]"):
        unpack_batch(batch, input_key="pixels")


def test_input_fn_overrides_everything():
    assert unpack_batch((Y, X), input_fn=lambda b: b[1]) is X
    assert unpack_batch({"a": X}, input_key="missing", input_fn=lambda b: b["a"]) is X


@pytest.mark.parametrize("bad", [object(), 3.5, "text", None])
def test_unpack_unsupported_type_names_it(bad):
    with pytest.raises(TypeError, match=type(bad).__name__ + ".*input_fn"):
        unpack_batch(bad)


# ---------------------------------------------------------------- first_tensor and batch_size


@dataclasses.dataclass
class Output:
    meta: str
    hidden: torch.Tensor


def test_first_tensor_finds_the_documented_one():
    assert first_tensor(X) is X  # a tensor is never indexed (X[0] would be one sample)
    assert first_tensor((None, "meta", [X, Y])) is X
    assert first_tensor({"logits": Y, "hidden": X}) is Y  # first value in order
    assert first_tensor(Output("m", X)) is X
    assert first_tensor({"n": 3, "note": "none"}) is None
    assert first_tensor(Output) is None  # the dataclass type itself is not an instance


def test_batch_size_is_the_leading_size_of_the_first_tensor():
    assert batch_size(X) == 4
    assert batch_size({"ids": torch.zeros(7, 5), "mask": torch.zeros(7, 5)}) == 7
    assert batch_size((torch.zeros(2, 9), torch.zeros(5))) == 2
    with pytest.raises(TypeError, match="no batched tensor"):
        batch_size({"n": 3})
    with pytest.raises(TypeError, match="no batched tensor"):
        batch_size(torch.tensor(1.0))


# ---------------------------------------------------------------- moving and calling


def test_to_device_keeps_the_structure():
    obj = {"a": X, "b": (Y, [X, "text"]), "c": 3}
    out = to_device(obj, torch.device("cpu"))
    assert isinstance(out["b"], tuple) and isinstance(out["b"][1], list)
    assert out["b"][1][1] == "text" and out["c"] == 3
    assert torch.equal(out["a"], X) and torch.equal(out["b"][0], Y)
    assert move(X, torch.device("cpu")) is X
    if torch.cuda.is_available():
        on = to_device(obj, torch.device("cuda"))
        assert on["a"].is_cuda and on["b"][1][0].is_cuda and on["c"] == 3


class Probe(nn.Module):
    def forward(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        return torch.zeros(1)


def test_call_model_spreads_mappings_and_tuples():
    p = Probe()
    call_model(p, {"input_ids": X, "attention_mask": Y})
    assert p.args == () and set(p.kwargs) == {"input_ids", "attention_mask"} and p.kwargs["input_ids"] is X
    call_model(p, (X, Y))
    assert len(p.args) == 2 and p.args[0] is X and p.args[1] is Y and p.kwargs == {}
    call_model(p, [X, Y])  # a list is one argument
    assert len(p.args) == 1 and isinstance(p.args[0], list)
    call_model(p, X)
    assert len(p.args) == 1 and p.args[0] is X


# ---------------------------------------------------------------- dataset_size


class Stream(IterableDataset):
    def __iter__(self):
        yield from X


def test_dataset_size_when_knowable():
    ds = TensorDataset(torch.zeros(10, 2))
    assert dataset_size(DataLoader(ds, batch_size=3)) == 10
    # a sampler's share wins over the whole dataset (each rank sees its shard)
    shard = DataLoader(ds, batch_size=3, sampler=DistributedSampler(ds, num_replicas=4, rank=1, shuffle=False))
    assert dataset_size(shard) == 3
    assert dataset_size(DataLoader(Stream(), batch_size=2)) is None
    assert dataset_size([X, X]) is None
    assert dataset_size(iter([X])) is None


# ---------------------------------------------------------------- through a computation


def test_input_key_and_input_fn():
    model = counted()
    x = data()
    sm = SimilarityModel(model, layers_to_include=["fc1", "fc2"])
    plain = CKA(sm, sm, progress=False).compute(batches(x, 8))
    dict_loader = [{"pixels": b, "label": torch.zeros(len(b))} for b in batches(x, 8)]
    g1 = CKA(sm, sm, progress=False, input_key="pixels").compute(dict_loader)
    np.testing.assert_allclose(g1, plain, atol=1e-12)
    swapped = [(torch.zeros(len(b)), b) for b in batches(x, 8)]
    g2 = CKA(sm, sm, progress=False, input_fn=lambda batch: batch[1]).compute(swapped)
    np.testing.assert_allclose(g2, plain, atol=1e-12)
    tuples = [(b, torch.zeros(len(b))) for b in batches(x, 8)]  # (x, y): the first item is the input
    np.testing.assert_allclose(CKA(sm, sm, progress=False).compute(tuples), plain, atol=1e-12)
    with pytest.raises(KeyError, match="pixel"):
        CKA(sm, sm, progress=False, input_key="pixel").compute(dict_loader)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(0)
        self.calls = 0

    def forward(self, x, scale):
        self.calls += 1
        return self.net(x * scale)


def test_tuple_model_input_is_spread_over_the_arguments():
    x = data()
    two = TwoInputs()
    sm = SimilarityModel(two, layers_to_include=["net.fc1", "net.fc2"])
    loader = [(b, torch.full((len(b), 1), 2.0)) for b in batches(x, 8)]
    g = CKA(sm, sm, progress=False, input_fn=lambda batch: (batch[0], batch[1])).compute(loader)
    assert two.calls == 6
    one = SimilarityModel(two.net, layers_to_include=["fc1", "fc2"])
    want = CKA(one, one, progress=False).compute([2.0 * b for b in batches(x, 8)])
    np.testing.assert_allclose(g, want, atol=1e-12)
    # the second argument mattered: without the scale the off-diagonal is another number
    unscaled = CKA(one, one, progress=False).compute(batches(x, 8))
    assert abs(unscaled[0, 1] - g[0, 1]) > 1e-2
