"""SimilarityModel: hook lifetime and modes (restoring), one forward pass per model per
batch, output reduction (reduce, activations), sequences, repeated calls (call_index), the
0.2.1 import paths and a real torchvision model.

Layer selection is tested in test_layers.py, batch unpacking in test_batches.py, plots in
test_plotting.py. Values are checked against tests/reference.py (float64 numpy formulas,
independent of simtorch) fed with activations the tests compute themselves.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from models import Tiny, batches, counted, data, hook_counts, ref_grid
from simtorch import CKA, SimilarityModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: see conftest.py


def tiny_steps(model: Tiny, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The activations of Tiny computed by hand (no hooks)."""
    with torch.no_grad():
        s = model.stem(x)
        b1 = model.block1.act(model.block1.fc(s))
        f2 = model.block2.fc(b1)
        a2 = model.block2.act(f2)
        b2 = model.block2.inner.fc(a2)
        return {"stem": s, "block1": b1, "block2.fc": f2, "block2.act": a2, "block2": b2, "head": model.head(b2)}


# ---------------------------------------------------------------- hooks, modes, requires_grad


class ModeProbe(nn.Module):
    """Records the training flag seen during each forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


def probed() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(6, 8), drop=nn.Dropout(0.5), probe=ModeProbe(), bn=nn.BatchNorm1d(8), fc2=nn.Linear(8, 4)
        )
    )


def mixed_state(model: nn.Module) -> None:
    model.train()
    model.drop.eval()  # a per-module mode that must survive
    model.fc1.weight.requires_grad_(False)


def snapshot(model: nn.Module):
    return (
        {n: m.training for n, m in model.named_modules()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        {n: b.clone() for n, b in model.named_buffers()},
        hook_counts(model),
    )


def test_hooks_removed_and_modes_restored_after_compute():
    model = probed()
    mixed_state(model)
    before = snapshot(model)
    sm = SimilarityModel(model, layers_to_include=["fc1", "fc2"])
    assert hook_counts(model) == 0  # no hooks before compute either
    CKA(sm, SimilarityModel(Tiny(), layers_to_include=["head"]), progress=False).compute(batches(data(), 8))
    after = snapshot(model)
    assert after[0] == before[0] and after[1] == before[1] and after[3] == before[3] == 0
    for k in before[2]:  # eval mode during compute: batch-norm running stats untouched
        assert torch.equal(before[2][k], after[2][k]), k
    assert model.probe.seen and not any(model.probe.seen)  # ran in eval mode
    assert all(p.grad is None for p in model.parameters())


def test_eval_mode_false_keeps_the_users_modes_during_compute():
    model = probed()
    mixed_state(model)
    before = snapshot(model)
    sm = SimilarityModel(model, layers_to_include=["fc1", "fc2"], eval_mode=False)
    CKA(sm, sm, progress=False).compute(batches(data(), 8))
    assert all(model.probe.seen)
    assert snapshot(model)[0] == before[0] and snapshot(model)[1] == before[1]


def raising_loader(x: torch.Tensor, bs: int, at: int, exc: BaseException):
    for i, b in enumerate(batches(x, bs)):
        if i == at:
            raise exc
        yield b


@pytest.mark.parametrize("exc", [RuntimeError("loader broke"), KeyboardInterrupt()])
def test_hooks_and_modes_restored_after_interruption(exc):
    model = probed()
    mixed_state(model)
    before = snapshot(model)
    other = Tiny()
    other.train()
    sm = SimilarityModel(model, layers_to_include=["fc1", "fc2"])
    so = SimilarityModel(other, layers_to_include=["stem", "head"])
    with pytest.raises(type(exc)):
        CKA(sm, so, progress=False).compute(raising_loader(data(), 8, 3, exc))
    after = snapshot(model)
    assert after[0] == before[0] and after[1] == before[1] and after[3] == 0
    assert all(m.training for m in other.modules()) and hook_counts(other) == 0
    assert len(model.probe.seen) == 3


def test_hooks_and_modes_restored_after_error_inside_forward():
    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 3:
                raise ValueError("boom in forward")
            return self.fc(x)

    model = Flaky().train()
    sm = SimilarityModel(model, layers_to_include=["fc"])
    with pytest.raises(ValueError, match="boom"):
        CKA(sm, sm, progress=False).compute(batches(data(), 8))
    assert model.training and model.fc.training and hook_counts(model) == 0


def test_wrapping_twice_does_not_double_hooks():
    model = Tiny()
    a = SimilarityModel(model, layers_to_include=["stem"])
    b = SimilarityModel(model, layers_to_include=["stem"])
    g = CKA(a, b, progress=False).compute(batches(data(), 8))
    np.testing.assert_allclose(g, [[1.0]], atol=1e-9)
    assert hook_counts(model) == 0


def test_restoring_sets_eval_and_restores_every_flag_even_on_error():
    model = probed()
    mixed_state(model)
    before = snapshot(model)
    sm = SimilarityModel(model, layers_to_include=["fc1"])
    with pytest.raises(RuntimeError, match="inside"):
        with sm.restoring():
            assert not any(m.training for m in model.modules())
            raise RuntimeError("inside the block")
    assert snapshot(model)[0] == before[0]
    keep = SimilarityModel(model, layers_to_include=["fc1"], eval_mode=False)
    with keep.restoring():
        assert {n: m.training for n, m in model.named_modules()} == before[0]
    assert snapshot(model)[0] == before[0]


def test_activations_match_hand_computed_and_leave_nothing_behind():
    model = Tiny()
    model.train()
    sm = SimilarityModel(model, layers_to_include=["stem", "block1", "block2.fc", "block2.act", "block2", "head"])
    x = data()
    got = sm.activations(x)
    want = tiny_steps(model, x)
    assert sorted(got) == sorted(sm.layer_names)
    for name in sm.layer_names:
        torch.testing.assert_close(got[name], want[name])
        assert not got[name].requires_grad
    assert hook_counts(model) == 0 and all(m.training for m in model.modules())


# ---------------------------------------------------------------- one forward per batch


def test_same_similarity_model_on_both_sides_runs_one_forward_per_batch():
    model = counted()
    sm = SimilarityModel(model, layers_to_include=["fc1", "act", "fc2"])
    g = CKA(sm, sm, progress=False).compute(batches(data(), 8))  # 6 batches
    assert model.count.n == 6
    np.testing.assert_allclose(np.diag(g), 1.0, atol=1e-9)
    np.testing.assert_allclose(g, g.T, atol=1e-12)


def test_two_wrappers_of_one_model_share_the_forward():
    model = counted()
    a = SimilarityModel(model, layers_to_include=["fc1"])
    b = SimilarityModel(model, layers_to_include=["act", "fc2"])
    x = data()
    g = CKA(a, b, progress=False).compute(batches(x, 8))
    assert model.count.n == 6
    with torch.no_grad():
        acts = [{"fc1": model.fc1(xb), "act": model.act(model.fc1(xb)), "fc2": model.fc2(model.act(model.fc1(xb)))}
                for xb in batches(x, 8)]
    np.testing.assert_allclose(g, ref_grid(acts, acts, ["fc1"], ["act", "fc2"]), atol=1e-6)


def test_different_models_each_run_once_per_batch():
    ma, mb = counted(), counted()
    CKA(SimilarityModel(ma, layers_to_include=["fc1"]), SimilarityModel(mb, layers_to_include=["fc2"]),
        progress=False).compute(batches(data(), 8))
    assert ma.count.n == 6 and mb.count.n == 6


# ---------------------------------------------------------------- output reduction


@dataclasses.dataclass
class Out:
    hidden: torch.Tensor
    extra: torch.Tensor


class Wrapping(nn.Module):
    """A block whose output is wrapped in a container of the given kind."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        h = self.fc(x)
        junk = torch.full_like(h, 3.0) + torch.arange(h.shape[0]).unsqueeze(1).float() ** 2
        if self.kind == "tuple":
            return (h, junk)
        if self.kind == "list":
            return [h, junk]
        if self.kind == "dict":
            return {"hidden": h, "extra": junk}
        if self.kind == "nested":
            return (None, "meta", [h, junk])
        if self.kind == "dataclass":
            return Out(h, junk)
        return h


class Host(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block = Wrapping(kind)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        out = self.block(x)
        h = self.block.fc(x) if not isinstance(out, torch.Tensor) else out
        return self.head(h)


@pytest.mark.parametrize("kind", ["tensor", "tuple", "list", "dict", "nested", "dataclass"])
def test_outputs_reduced_to_first_tensor(kind):
    model = Host(kind)
    x = data()
    sm = SimilarityModel(model, layers_to_include=["block"])
    got = sm.activations(x)["block"]
    with torch.no_grad():
        want = model.block.fc(x)
    assert got.shape == want.shape == (48, 5)  # a tensor output is never indexed with [0]
    torch.testing.assert_close(got, want)
    other = Tiny(3)
    g = CKA(sm, SimilarityModel(other, layers_to_include=["head"]), progress=False).compute(batches(x, 12))
    with torch.no_grad():
        acts_a = [{"block": model.block.fc(b)} for b in batches(x, 12)]
        acts_b = [{"head": tiny_steps(other, b)["head"]} for b in batches(x, 12)]
    np.testing.assert_allclose(g, ref_grid(acts_a, acts_b, ["block"], ["head"]), atol=1e-6)


def test_output_fn_one_and_two_arguments():
    model = Host("tuple")
    x = data()
    with torch.no_grad():
        junk = model.block(x)[1]
    one = SimilarityModel(model, layers_to_include=["block"], output_fn=lambda out: out[1])
    torch.testing.assert_close(one.activations(x)["block"], junk)
    seen = []

    def two(name, out):
        seen.append(name)
        return out[1]

    sm = SimilarityModel(model, layers_to_include=["block"], output_fn=two)
    torch.testing.assert_close(sm.activations(x)["block"], junk)
    assert seen == ["block"]


def test_output_fn_own_type_error_is_not_masked():
    def buggy(name, out):
        raise TypeError("the user's own bug")

    sm = SimilarityModel(Host("tuple"), layers_to_include=["block"], output_fn=buggy)
    with pytest.raises(TypeError, match="the user's own bug"):
        sm.activations(data())
    with pytest.raises(TypeError, match="the user's own bug"):
        CKA(sm, sm, progress=False).compute(batches(data(), 8))


def test_reduce_directly():
    sm = SimilarityModel(Tiny(), model_name="T", layers_to_include=["stem", "head"])
    h = torch.randn(4, 5)
    assert sm.reduce("stem", (None, h), 4) is h
    img = torch.randn(4, 2, 3, 3)
    assert sm.reduce("head", img, 4) is img  # kept whole: flattened with the Gram, not here
    with pytest.raises(ValueError, match=r"T: layer 'stem' produced shape \(4, 5\) but the batch has 3 samples"):
        sm.reduce("stem", h, 3)
    with pytest.raises(ValueError, match="produced shape"):
        sm.reduce("stem", torch.tensor(2.0), 4)
    with pytest.raises(TypeError, match=r"'stem' returned str holding no tensor.*output_fn"):
        sm.reduce("stem", "text", 4)


def test_reduce_sequences_with_and_without_a_mask():
    seq = torch.arange(24.0).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    mean = SimilarityModel(Tiny(), layers_to_include=["stem"], sequence="mean")
    torch.testing.assert_close(mean.reduce("stem", seq, 2, {"attention_mask": mask}),
                               torch.stack([seq[0, :2].mean(0), seq[1, 0]]))
    torch.testing.assert_close(mean.reduce("stem", seq, 2, seq), seq.mean(1))  # no mask: plain mean
    first = SimilarityModel(Tiny(), layers_to_include=["stem"], sequence="first")
    torch.testing.assert_close(first.reduce("stem", seq, 2), seq[:, 0])
    flat = SimilarityModel(Tiny(), layers_to_include=["stem"])
    assert flat.reduce("stem", seq, 2) is seq


# ---------------------------------------------------------------- sequences and dict batches


class SeqModel(nn.Module):
    """(b, t) token ids + attention_mask → (b, t, d) hidden states; records the mask it got."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 6)
        self.enc = nn.Linear(6, 6)
        self.masks: list = []

    def forward(self, input_ids, attention_mask=None):
        self.masks.append(attention_mask)
        h = self.enc(self.embed(input_ids))
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1)
        return h


def seq_batches(n_batches: int = 4, b: int = 8, t: int = 5):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(0, 20, (b, t), generator=g)
        lengths = torch.randint(1, t + 1, (b,), generator=g)
        mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).long()
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@pytest.mark.parametrize("mode", ["flatten", "mean", "first"])
def test_sequence_modes_against_manual_pooling(mode):
    model = SeqModel()
    other = SeqModel()
    torch.manual_seed(5)
    nn.init.normal_(other.enc.weight)
    bs = seq_batches()
    a = SimilarityModel(model, layers_to_include=["enc"], sequence=mode)
    b = SimilarityModel(other, layers_to_include=["embed"], sequence=mode)
    g = CKA(a, b, progress=False).compute(bs)
    # the dict batch went in as **kwargs: the mask reached the model
    assert len(model.masks) == 4 and all(torch.equal(m, bb["attention_mask"]) for m, bb in zip(model.masks, bs))

    def pool(h, mask):
        if mode == "flatten":
            return h.reshape(h.shape[0], -1)
        if mode == "first":
            return h[:, 0]
        w = mask.double().unsqueeze(-1)
        return (h.double() * w).sum(1) / w.sum(1)

    acts_a, acts_b = [], []
    with torch.no_grad():
        for bb in bs:
            m = bb["attention_mask"]
            acts_a.append({"enc": pool(model.enc(model.embed(bb["input_ids"])), m)})
            acts_b.append({"embed": pool(other.embed(bb["input_ids"]), m)})
    want = ref_grid(acts_a, acts_b, ["enc"], ["embed"])
    np.testing.assert_allclose(g, want, atol=1e-6)
    if mode == "mean":  # the unmasked mean is a different number: the test can tell
        acts_u = [{"enc": model.enc(model.embed(bb["input_ids"])).mean(1)} for bb in bs]
        acts_v = [{"embed": other.embed(bb["input_ids"]).mean(1)} for bb in bs]
        assert abs(ref_grid(acts_u, acts_v, ["enc"], ["embed"])[0, 0] - want[0, 0]) > 1e-3


def test_bad_sequence_mode():
    with pytest.raises(ValueError, match="sequence"):
        SimilarityModel(Tiny(), layers_to_include=["stem"], sequence="max")


# ---------------------------------------------------------------- repeated calls


class Shared(nn.Module):
    """``blk`` runs three times per forward pass."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blk = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h1 = self.blk(x)
        h2 = self.blk(torch.tanh(h1) * 3)
        h3 = self.blk(h2**2)
        return self.out(h3)

    def calls(self, x):
        with torch.no_grad():
            h1 = self.blk(x)
            h2 = self.blk(torch.tanh(h1) * 3)
            h3 = self.blk(h2**2)
            return [h1, h2, h3], self.out(h3)


def test_module_called_twice_is_a_clear_error():
    model = Shared()
    sm = SimilarityModel(model, layers_to_include=["blk"])
    with pytest.raises(RuntimeError, match=r"'blk' ran more than once.*call_index"):
        CKA(sm, sm, progress=False).compute(batches(data(), 8))
    assert hook_counts(model) == 0


@pytest.mark.parametrize("ci,which", [(0, 0), (1, 1), (2, 2), (-1, 2)])
def test_call_index_picks_the_right_call(ci, which):
    model = Shared()
    x = data()
    a = SimilarityModel(model, layers_to_include=["blk"], call_index=ci)
    b = SimilarityModel(model, layers_to_include=["out"])
    g = CKA(a, b, progress=False).compute(batches(x, 12))
    acts_a, acts_b = [], []
    for xb in batches(x, 12):
        hs, out = model.calls(xb)
        acts_a.append({"blk": hs[which]})
        acts_b.append({"out": out})
    np.testing.assert_allclose(g, ref_grid(acts_a, acts_b, ["blk"], ["out"]), atol=1e-6)
    # the three calls give clearly different numbers, so a wrong pick would fail
    vals = [ref_grid([{"blk": model.calls(xb)[0][k]} for xb in batches(x, 12)], acts_b, ["blk"], ["out"])[0, 0]
            for k in range(3)]
    assert min(abs(vals[i] - vals[j]) for i in range(3) for j in range(i)) > 1e-3


def test_call_index_as_dict_and_out_of_range():
    model = Shared()
    sm = SimilarityModel(model, layers_to_include=["blk", "out"], call_index={"blk": -1})
    CKA(sm, sm, progress=False).compute(batches(data(), 8))
    with pytest.raises(ValueError, match="not selected"):
        SimilarityModel(model, layers_to_include=["blk"], call_index={"nope": 0})
    too_far = SimilarityModel(model, layers_to_include=["blk"], call_index=3)
    with pytest.raises(RuntimeError, match="ran 3 time"):
        CKA(too_far, too_far, progress=False).compute(batches(data(), 8))
    with pytest.raises(ValueError, match="call_index"):  # -2 is not silently "the last"
        SimilarityModel(model, layers_to_include=["blk"], call_index=-2)


def test_call_index_per_layer():
    model = Shared()
    every = SimilarityModel(model, layers_to_include=["blk", "out"], call_index=1)
    assert every.call_index("blk") == 1 and every.call_index("out") == 1
    some = SimilarityModel(model, layers_to_include=["blk", "out"], call_index={"blk": -1})
    assert some.call_index("blk") == -1 and some.call_index("out") is None
    assert SimilarityModel(model, layers_to_include=["blk"]).call_index("blk") is None


# ---------------------------------------------------------------- 0.2.1 compatibility


def test_021_import_paths():
    from simtorch.model import SimilarityModel as A
    from simtorch.model.sim_model import SimilarityModel as B
    from simtorch.similarity import CKA as C
    from simtorch.similarity.base_similarity import BaseSimilarity
    from simtorch.similarity.cka import CKA as D

    assert A is B is SimilarityModel and C is D is CKA
    assert issubclass(CKA, BaseSimilarity)


def test_021_script_runs_unchanged(tmp_path):
    from simtorch.model import SimilarityModel as SM
    from simtorch.similarity import CKA as CKA021

    sm1 = SM(Tiny(0), model_name="A", layers_to_include=["stem", "block1"], device="cpu")
    sm2 = SM(Tiny(1), model_name="B", layers_to_include=["block2", "head"], device="cpu")
    sim = CKA021(sm1, sm2, device="cpu", progress=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data(), torch.zeros(48)), batch_size=16)
    m = sim.compute(loader)
    assert isinstance(m, np.ndarray) and m.shape == (2, 2) and m is sim.sim_matrix
    ax = sim.plot_similarity(title="A vs B", xlabel="B", ylabel="A", savefig=True,
                             save_path=tmp_path / "x.png", plot_cmap="viridis")
    assert (tmp_path / "x.png").stat().st_size > 1000
    from matplotlib.axes import Axes
    import matplotlib.pyplot as plt

    assert isinstance(ax, Axes)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["block2", "head"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["stem", "block1"]
    plt.close("all")


# ---------------------------------------------------------------- a real torchvision model


def test_resnet18_end_to_end_against_manual_hooks():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ra = torchvision.models.resnet18()
    torch.manual_seed(1)
    rb = torchvision.models.resnet18()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 32, 32, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(16)), batch_size=8)
    la = ["layer1", "layer2", "layer3", "layer4"]
    a = SimilarityModel(ra, model_name="A", layers_to_include=la)
    b = SimilarityModel(rb, model_name="B", layers_to_include=["layer?.*", "fc"])
    assert b.layer_names == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1",
                             "layer4.0", "layer4.1", "fc"]
    ra.train()
    grid = CKA(a, b, progress=False).compute(loader)
    assert grid.shape == (4, 9) and np.isfinite(grid).all()
    assert ra.training and hook_counts(ra) == 0 and hook_counts(rb) == 0

    def manual(model, names):  # the test's own hooks, eval mode, per batch
        model.eval()
        mods = dict(model.named_modules())
        out = []
        for xb in x.split(8):
            acts = {}
            hs = [mods[n].register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o.detach())) for n in names]
            with torch.no_grad():
                model(xb)
            for h in hs:
                h.remove()
            out.append(acts)
        return out

    want = ref_grid(manual(ra, la), manual(rb, b.layer_names), la, b.layer_names)
    np.testing.assert_allclose(grid, want, atol=1e-5)
    self_grid = CKA(a, a, progress=False).compute(loader)
    np.testing.assert_allclose(np.diag(self_grid), 1.0, atol=1e-6)
