"""Procrustes, SVCCA and PWCCA as streaming metrics (simtorch.metrics.shape / .cca) and user
classes: streamed over several batches they equal the functional value on all N samples
(buffer and moment routes), share one pass with CKA, refuse early when memory is short, and
name the layers whose cells are undefined."""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import models as M
import reference as ref
import simtorch.functional as F
from simtorch import CKA, PWCCA, SVCCA, Procrustes, SimilarityModel, compare
from simtorch.metrics import (
    REGISTRY,
    ProcrustesCosineMetric,
    ProcrustesEuclideanMetric,
    ProcrustesMetric,
    PWCCAMetric,
    SVCCAMetric,
    metric_class,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LA = ["conv1", "relu1", "conv2", "fc"]  # widths 256, 256, 54, 10
LB = ["fc1", "relu1", "fc2", "fc3"]  # widths 32, 32, 16, 8
N, BATCH = 300, 64  # five batches, the last one of 44


def _models():
    return SimilarityModel(M.conv_net(0), "A", LA), SimilarityModel(M.image_mlp(1), "B", LB)


def _data(n: int = N) -> torch.Tensor:
    return M.structured_pixels(n, seed=3)


def _acts(sm: SimilarityModel, x: torch.Tensor, bs: int = BATCH) -> list[torch.Tensor]:
    """Each layer's flattened float32 activations over all of ``x``, batch by batch as the
    engine runs them, concatenated."""
    out: dict[str, list[torch.Tensor]] = {name: [] for name in sm.layer_names}
    mods = dict(sm.model.named_modules())
    hs = [mods[name].register_forward_hook(lambda m, i, o, name=name: out[name].append(o.detach().flatten(1)))
          for name in sm.layer_names]
    try:
        with torch.inference_mode():
            for xb in M.batches(x, bs):
                sm.model(xb)
    finally:
        for h in hs:
            h.remove()
    return [torch.cat(out[name]) for name in sm.layer_names]


def _run(metric, a=None, b=None, x=None, bs: int = BATCH):
    a, b = (a, b) if a is not None else _models()
    res = compare(a, b, M.loader(_data() if x is None else x, bs), {"m": metric}, progress=False)
    return res["m"]


PROCRUSTES = [("angular", 1.0), ("euclidean", 1.0), ("cosine", 1.0), ("angular", 0.5), ("euclidean", 0.0)]


@pytest.mark.parametrize("method", ["buffer", "moments"])
@pytest.mark.parametrize("score,alpha", PROCRUSTES)
def test_procrustes_streamed_equals_functional_on_all_samples(method, score, alpha):
    a, b = _models()
    res = _run(ProcrustesMetric(score=score, alpha=alpha, method=method), a, b)
    want = F.procrustes_grid(_acts(a, _data()), _acts(b, _data()), score=score, alpha=alpha).values.numpy()
    assert res.settings["path"] == method and res.n_samples == N and res.n_batches == 5
    assert np.isfinite(want).all() and np.ptp(want) > 1e-2
    scale = 1.0 if score != "euclidean" else np.abs(want).max()
    # alpha < 1, euclidean, moments: netrep's eigenvalue floor (1e-7) meets float64 noise in
    # the null directions of conv1 (256 features of a 192-dim input), ~1e-7 relative
    tol = 1e-6 if (method, score) == ("moments", "euclidean") and alpha < 1 else 1e-8
    np.testing.assert_allclose(res.matrix, want, rtol=0, atol=tol * scale)
    assert np.isnan(res.stderr).all()  # no per-batch estimate
    assert res.metric == {"angular": "Procrustes", "euclidean": "Procrustes euclidean",
                          "cosine": "Procrustes cosine"}[score]


def test_procrustes_cells_match_the_independent_reference():
    a, b = _models()
    res = _run(ProcrustesMetric(), a, b)
    xa, xb = _acts(a, _data()), _acts(b, _data())
    for i, j in [(0, 0), (2, 3), (3, 1)]:
        assert res.matrix[i, j] == pytest.approx(ref.procrustes(xa[i], xb[j]), abs=1e-7)


@pytest.mark.parametrize("method", ["buffer", "moments"])
@pytest.mark.parametrize("variant,keep", [("anatome", 0.99), ("anatome", 0.8), ("google", 0.99)])
def test_svcca_streamed_equals_functional_on_all_samples(method, variant, keep):
    a, b = _models()
    res = _run(SVCCAMetric(keep=keep, variant=variant, method=method), a, b)
    want = F.svcca_grid(_acts(a, _data()), _acts(b, _data()), keep=keep, variant=variant).values.numpy()
    assert res.settings["path"] == method
    assert np.isfinite(want).all() and np.ptp(want) > 1e-2
    np.testing.assert_allclose(res.matrix, want, rtol=0, atol=1e-8)
    xa, xb = _acts(a, _data()), _acts(b, _data())
    if variant == "anatome":
        assert res.matrix[2, 1] == pytest.approx(ref.svcca_anatome(xa[2], xb[1], keep), abs=1e-7)


def test_pwcca_streamed_equals_functional_with_the_reverse_in_extras():
    a, b = _models()
    res = _run(PWCCAMetric(), a, b)
    xa, xb = _acts(a, _data()), _acts(b, _data())
    g = F.pwcca_grid(xa, xb)
    assert res.settings["path"] == "buffer"
    np.testing.assert_allclose(res.matrix, g.values.numpy(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(res.extras["reverse"], g.reverse.numpy(), rtol=0, atol=1e-9)
    assert res.matrix[2, 3] == pytest.approx(ref.pwcca_anatome(xa[2], xb[3]), abs=1e-7)
    assert res.extras["reverse"][2, 3] == pytest.approx(ref.pwcca_anatome(xb[3], xa[2]), abs=1e-7)
    assert np.abs(res.matrix - res.extras["reverse"]).max() > 1e-3  # asymmetric, really
    with pytest.raises(ValueError, match="no exact moment form"):
        PWCCAMetric(method="moments")


@pytest.mark.parametrize("metric", [lambda m: ProcrustesMetric(alpha=0.5, method=m),
                                    lambda m: SVCCAMetric(method=m)])
def test_a_model_against_itself_agrees_on_both_routes(metric):
    a = SimilarityModel(M.conv_net(0), "A", LA)
    res = {m: _run(metric(m), a, a) for m in ("buffer", "moments")}
    np.testing.assert_allclose(res["buffer"].matrix, res["moments"].matrix, rtol=0, atol=1e-7)
    np.testing.assert_allclose(res["buffer"].matrix, res["buffer"].matrix.T, rtol=0, atol=1e-7)  # symmetric
    assert res["moments"].settings["memory_bytes"] == 8 * (576 ** 2 + 576)  # Σxᵀx of one stack + Σx


def test_auto_route_follows_the_memory_rule():
    a, b = _models()
    da, db = 256 + 256 + 54 + 10, 32 + 32 + 16 + 8
    buffer_bytes = N * 4 * (da + db)
    # Procrustes (alpha=1): D_a·D_b + 2(D_a + D_b) float64 < the buffer here
    res = _run(ProcrustesMetric(), a, b)
    assert res.settings["path"] == "moments" and res.settings["memory_bytes"] == 8 * (da * db + 2 * (da + db))
    assert res.settings["memory_bytes"] < buffer_bytes
    # SVCCA needs Σ d² per layer too: larger than the buffer of 300 samples, so it buffers
    res = _run(SVCCAMetric(), a, b)
    mom = 8 * (da * db + da + db + sum(d * d for d in (256, 256, 54, 10, 32, 32, 16, 8)))
    assert mom > buffer_bytes
    assert res.settings["path"] == "buffer" and res.settings["memory_bytes"] == buffer_bytes
    # a loader without a known length (a list of batches): the moments, whose size is known
    res = compare(a, b, [x for x in M.batches(_data(), BATCH)], {"m": SVCCAMetric()}, progress=False)["m"]
    assert res.settings["path"] == "moments"


def test_projection_wider_than_every_layer_changes_nothing_and_narrower_does():
    a, b = _models()
    plain = _run(SVCCAMetric(method="buffer"), a, b)
    wide = _run(SVCCAMetric(method="buffer", projection_dim=1000), a, b)
    np.testing.assert_array_equal(wide.matrix, plain.matrix)
    narrow = _run(SVCCAMetric(method="buffer", projection_dim=40), a, b)
    assert narrow.settings["widths_a"] == [40, 40, 40, 10] and narrow.settings["widths_b"] == [32, 32, 16, 8]
    np.testing.assert_array_equal(narrow.matrix[3], plain.matrix[3])  # fc (10 wide) is not projected
    assert np.abs(narrow.matrix[:2] - plain.matrix[:2]).max() > 1e-4


def test_compare_runs_with_cka_in_one_pass_and_equals_each_alone():
    a, b = _models()
    calls = {"a": 0, "b": 0}
    ha = a.model.register_forward_hook(lambda *_: calls.__setitem__("a", calls["a"] + 1))
    hb = b.model.register_forward_hook(lambda *_: calls.__setitem__("b", calls["b"] + 1))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SVCCA's note on the 256-wide layers (N=300 > d, but close)
            res = compare(a, b, M.loader(_data(), BATCH), ("cka", "procrustes", "svcca", "pwcca"), progress=False)
    finally:
        ha.remove()
        hb.remove()
    assert calls == {"a": 5, "b": 5}  # one forward pass per batch and model
    alone = {
        "cka": CKA(*_models(), progress=False),
        "procrustes": Procrustes(*_models(), progress=False),
        "svcca": SVCCA(*_models(), progress=False),
        "pwcca": PWCCA(*_models(), progress=False),
    }
    for key, sim in alone.items():
        np.testing.assert_allclose(res[key].matrix, sim.compute(M.loader(_data(), BATCH)), rtol=0, atol=1e-12,
                                   err_msg=key)
    np.testing.assert_allclose(res["pwcca"].extras["reverse"], alone["pwcca"].result.extras["reverse"], atol=1e-12)


class Twin(nn.Module):
    """``base`` (fc1 → act) and ``map``, a fixed linear map of act's output: layers
    ``act`` and ``map`` of one pass hold a representation and its transform."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act = nn.Linear(6, 8), nn.Tanh()
        self.map = nn.Linear(8, 8)
        with torch.no_grad():
            self.map.weight.copy_(weight)
            self.map.bias.copy_(bias)

    def forward(self, x):
        return self.map(self.act(self.fc1(x)))


def _transform_grid(sim_cls, weight, bias, **kw) -> np.ndarray:
    """``(2, 2)`` grid of [act, map] against [act, map] through the class API."""
    sm = SimilarityModel(Twin(weight, bias), "T", ["act", "map"])
    x = M.data(200, 6, seed=1)
    return sim_cls(sm, sm, progress=False, **kw).compute(M.loader(x, 64))


def test_invariances_through_the_class_api():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    shift = torch.randn(8, generator=g)
    general = torch.randn(8, 8, generator=g) + 3 * torch.eye(8)
    rot_scale = (2.5 * q, torch.zeros(8))
    cases = {
        # class, options, {transform: whether the value must be unchanged}
        "procrustes": (Procrustes, {}, {"orth+scale+shift": True, "general": False}),
        "cosine": (Procrustes, {"score": "cosine"}, {"orth+scale+shift": True, "general": False}),
        # anatome's uncentred SVD keeps another subspace once the features are shifted
        "svcca": (SVCCA, {"keep": 0.9}, {"orth+scale": True, "shift": False}),
        "pwcca": (PWCCA, {}, {"orth+scale": True, "general": True}),
    }
    transforms = {"orth+scale+shift": (2.5 * q, shift), "orth+scale": rot_scale, "shift": (torch.eye(8), 3 * shift),
                  "general": (general, shift)}
    for key, (cls, kw, checks) in cases.items():
        for name, invariant in checks.items():
            grid = _transform_grid(cls, *transforms[name], **kw)
            same = grid[0, 0]  # act against itself
            assert same == pytest.approx(0.0 if key == "procrustes" else 1.0, abs=1e-6), key
            moved = grid[0, 1]  # act against its transform
            if invariant:
                assert moved == pytest.approx(same, abs=1e-5), (key, name)
            else:
                assert abs(moved - same) > 1e-3, (key, name)
    assert ProcrustesMetric.invariances >= {"orthogonal", "isotropic_scaling", "translation"}
    assert "translation" not in SVCCAMetric.invariances
    assert "translation" in SVCCAMetric(variant="google").invariances


def test_properties_are_class_attributes_per_score():
    assert isinstance(ProcrustesMetric(score="cosine"), ProcrustesCosineMetric)
    assert isinstance(ProcrustesMetric(score="euclidean"), ProcrustesEuclideanMetric)
    assert type(ProcrustesMetric()) is ProcrustesMetric
    assert (ProcrustesMetric.direction, ProcrustesMetric.value_range) == ("distance", (0.0, math.pi / 2))
    assert (ProcrustesEuclideanMetric.direction, ProcrustesEuclideanMetric.value_range) == ("distance", None)
    assert (ProcrustesCosineMetric.direction, ProcrustesCosineMetric.value_range) == ("similarity", (0.0, 1.0))
    for cls in (SVCCAMetric, PWCCAMetric):
        assert (cls.direction, cls.value_range) == ("similarity", (0.0, 1.0))
    assert ProcrustesMetric.symmetric and SVCCAMetric.symmetric and not PWCCAMetric.symmetric
    assert {"procrustes", "svcca", "pwcca"} <= set(REGISTRY) and metric_class("PWCCA") is PWCCAMetric
    with pytest.raises(ValueError, match="score must be"):
        ProcrustesMetric(score="chordal")
    with pytest.raises(ValueError, match="alpha must be in"):
        Procrustes(*_models(), alpha=2.0)


@pytest.mark.parametrize("make", [lambda: ProcrustesMetric(method="buffer", memory_limit=10_000),
                                  lambda: SVCCAMetric(method="moments", memory_limit=10_000),
                                  lambda: PWCCAMetric(memory_limit=10_000)])
def test_memory_refusal_comes_before_the_second_batch(make):
    a, b = _models()
    calls = []
    h = a.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ValueError, match="more than the 0.00 GiB allowed") as err:
            compare(a, b, M.loader(_data(), BATCH), {"m": make()}, progress=False)
    finally:
        h.remove()
    assert len(calls) == 1  # refused at the first batch's features, before the second forward pass
    msg = str(err.value)
    assert "projection_dim=256" in msg and "fewer layers" in msg and "memory_limit" in msg


def test_pwcca_layer_wider_than_the_samples_is_nan_with_a_warning_naming_it():
    a, b = _models()
    wide = r"PWCCA: A layers \['conv1', 'relu1'\] have more features than samples"
    with pytest.warns(UserWarning, match=wide) as rec:
        res = _run(PWCCAMetric(), a, b, x=_data(200))
    assert any("d > N=200" in str(w.message) for w in rec)
    assert np.isnan(res.matrix[:2]).all() and np.isnan(res.extras["reverse"][:2]).all()
    assert np.isfinite(res.matrix[2:]).all() and np.isfinite(res.extras["reverse"][2:]).all()
    # the same layers projected to ≤ N are defined
    res = _run(PWCCAMetric(projection_dim=64), a, b, x=_data(200))
    assert np.isfinite(res.matrix).all()


def test_constant_layer_is_nan_with_a_note_naming_it():
    model = M.mlp(0)
    with torch.no_grad():
        model.fc2.weight.zero_()  # fc2 outputs its bias for every sample
    a = SimilarityModel(model, "A", ["act", "fc2"])
    b = SimilarityModel(M.mlp(1), "B", ["act", "fc2"])
    x = M.data(120, 6, seed=2)
    for cls in (Procrustes, SVCCA, PWCCA):
        with pytest.warns(UserWarning, match=r"A layers \['fc2'\]"):
            grid = cls(a, b, progress=False).compute(M.loader(x, 32))
        assert np.isnan(grid[1]).all() and np.isfinite(grid[0]).all(), cls.__name__
    grid = Procrustes(a, b, score="euclidean", progress=False).compute(M.loader(x, 32))
    assert np.isfinite(grid).all()  # ‖X_c U − Y_c V‖ stays defined for a constant layer


def test_moment_states_all_reduce_and_resume():
    a, b = _models()
    x = _data()
    full = _run(SVCCAMetric(method="moments"), a, b, x=x)
    # two "ranks", each with half the data, summed as the engine's all-reduce does
    halves = [SVCCAMetric(method="moments") for _ in range(2)]
    for m, part in zip(halves, (x[:128], x[128:])):
        with pytest.warns(UserWarning, match=r"layers \['conv1', 'relu1'\] have at least as many features"):
            compare(a, b, M.loader(part, BATCH), {"m": m}, progress=False)  # 256 features, 128 or 172 samples
    for t0, t1 in zip(halves[0].reduce_tensors(), halves[1].reduce_tensors()):
        t0.add_(t1)
    halves[0].set_counters({k: v + halves[1].counters()[k] for k, v in halves[0].counters().items()})
    np.testing.assert_allclose(halves[0].compute().matrix.numpy(), full.matrix, rtol=0, atol=1e-10)
    # save / resume: a fresh metric bound to the same facts restores the sums and the layout
    fresh = SVCCAMetric(method="moments")
    fresh.bind(halves[0].binding)
    fresh.load_state_dict(halves[0].state_dict())
    np.testing.assert_array_equal(fresh.compute().matrix.numpy(), halves[0].compute().matrix.numpy())
    # rolled back to a state saved before the first batch: no route, no sums left behind
    empty = SVCCAMetric(method="moments")
    empty.bind(halves[0].binding)
    fresh.load_state_dict(empty.state_dict())
    assert fresh.path is None and not any(k.startswith("state.mom_") for k in fresh.state_dict())
    assert any(k.startswith("state.mom_") for k in halves[0].state_dict())
    assert all(isinstance(v, (int, torch.Tensor)) for v in halves[0].state_dict().values())  # a state file's types
    buffered = ProcrustesMetric(method="buffer")
    compare(a, b, M.loader(x, BATCH), {"m": buffered}, progress=False)
    again = ProcrustesMetric(method="buffer")
    again.bind(buffered.binding)
    with pytest.raises(ValueError, match="cannot be resumed"):
        again.load_state_dict(buffered.state_dict())


def test_shares_features_with_information_imbalance_exact():
    a, b = _models()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # II's note: one set, so no standard error
        res = compare(a, b, M.loader(_data(), BATCH), ("ii", "procrustes"), progress=False,
                      ii_kwargs={"exact": True, "projection_dim": 40}, procrustes_kwargs={"projection_dim": 40})
    alone = Procrustes(*_models(), projection_dim=40, progress=False).compute(M.loader(_data(), BATCH))
    np.testing.assert_allclose(res["procrustes"].matrix, alone, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="differently transformed features"):
        compare(a, b, M.loader(_data(), BATCH), ("ii", "procrustes"), progress=False,
                ii_kwargs={"exact": True, "projection_dim": 40})


class _Stop:
    """A loader that raises KeyboardInterrupt before its ``at``-th batch."""

    def __init__(self, loader, at: int) -> None:
        self.loader, self.at = loader, at
        self.dataset, self.sampler = loader.dataset, loader.sampler  # the same run: same N

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.at:
                raise KeyboardInterrupt
            yield batch


def test_interrupted_pass_resumes_from_the_state_file_on_the_moment_route(tmp_path):
    a, b = _models()
    loader = M.loader(_data(), BATCH)
    metrics = {"p": ProcrustesMetric(method="moments"), "s": SVCCAMetric(method="moments")}
    whole = compare(a, b, loader, metrics, progress=False)
    state = tmp_path / "run.npz"
    with pytest.raises(KeyboardInterrupt):
        compare(a, b, _Stop(loader, 3), {"p": ProcrustesMetric(method="moments"), "s": SVCCAMetric(method="moments")},
                progress=False, state_path=state, save_every=1)
    res = compare(a, b, loader, {"p": ProcrustesMetric(method="moments"), "s": SVCCAMetric(method="moments")},
                  progress=False, state_path=state)
    for key in metrics:
        assert res[key].settings["resumed_batches"] == 3 and res[key].n_samples == N
        np.testing.assert_allclose(res[key].matrix, whole[key].matrix, rtol=0, atol=1e-12)
    # the buffer route keeps features, not declared states: refused up front
    assert not ProcrustesMetric(method="buffer").resumable and ProcrustesMetric(method="moments").resumable
    with pytest.raises(ValueError, match="state_path"):
        compare(a, b, loader, {"p": PWCCAMetric()}, progress=False, state_path=tmp_path / "other.npz")
