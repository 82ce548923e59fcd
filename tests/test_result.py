"""SimilarityResult: save/load round trip (no pickle), CSV long form, redraw without models,
and the jackknife standard error against a direct leave-one-batch-out computation."""

from __future__ import annotations

import csv
import dataclasses
import math
import warnings
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from simtorch import CKA, SimilarityModel, SimilarityResult

LAYERS_A = ["fc1", "relu1", "fc2"]
LAYERS_B = ["fc1", "fc2"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def net(seed: int, d_in: int = 12, h: int = 10) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(fc1=nn.Linear(d_in, h), relu1=nn.ReLU(), fc2=nn.Linear(h, 6), tanh=nn.Tanh())
    )


def batches(n_batches: int, batch_size: int, seed: int = 0, d_in: int = 12) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # a shared low-rank signal plus noise, so the two nets' CKA is neither 0 nor 1
    z = torch.randn(n_batches * batch_size, 3, generator=g)
    x = z @ torch.randn(3, d_in, generator=g) + 0.7 * torch.randn(n_batches * batch_size, d_in, generator=g)
    return list(x.split(batch_size))


def cka(data: list[torch.Tensor], unbiased: bool = True, kernel: str = "linear") -> SimilarityResult:
    a = SimilarityModel(net(0), "A", LAYERS_A)
    b = SimilarityModel(net(1), "B", LAYERS_B)
    sim = CKA(a, b, device="cpu", kernel=kernel, unbiased=unbiased, progress=False)
    sim.compute(data)
    assert sim.result is not None
    return sim.result


@pytest.fixture(scope="module")
def result() -> SimilarityResult:
    return cka(batches(5, 16))


# ------------------------------------------------------------------ save / load


def test_save_load_round_trip_is_exact(tmp_path, result):
    res = dataclasses.replace(
        result,
        settings={**result.settings, "shape": (3, 3), "nested": {"eps": 1e-12, "names": ["a", "b"]},
                  "none": None, "third": 1 / 3, "np": np.float64(0.1)},
        extras={**result.extras, "ints": np.arange(6, dtype=np.int32).reshape(2, 3),
                "f32": np.float32([1.5, np.nan])},
    )
    assert {"hsic_cross", "hsic_self_a"} <= set(res.extras)  # the summed HSIC terms of CKA
    path = res.save(tmp_path / "sub" / "r.npz")
    assert path == tmp_path / "sub" / "r.npz" and path.is_file()
    back = SimilarityResult.load(path)
    assert back == res
    # bit-exact arrays and dtypes, Python types in the header
    assert back.matrix.tobytes() == res.matrix.tobytes()
    assert back.stderr.tobytes() == res.stderr.tobytes()
    assert back.extras["ints"].dtype == np.int32 and back.extras["f32"].dtype == np.float32
    assert back.settings["shape"] == (3, 3) and isinstance(back.settings["shape"], tuple)
    assert back.settings["third"] == 1 / 3 and back.settings["nested"]["eps"] == 1e-12
    assert list(back.extras) == list(res.extras)
    assert back.versions == res.versions and back.n_samples == 80 and back.n_batches == 5
    assert back.layers_a == LAYERS_A and back.metric == "CKA"


def test_saved_file_needs_no_pickle(tmp_path, result):
    path = result.save(tmp_path / "r.npz")
    with np.load(path, allow_pickle=False) as z:  # would raise on an object array
        assert {"matrix", "stderr", "__header__"} <= set(z.files)
        assert all(z[k].dtype != object for k in z.files)
    with zipfile.ZipFile(path) as zf:  # nothing but .npy members
        assert all(n.endswith(".npy") for n in zf.namelist())


def test_save_keeps_name_without_npz_suffix(tmp_path, result):
    path = result.save(tmp_path / "result.simtorch")
    assert path.name == "result.simtorch" and path.is_file()
    assert SimilarityResult.load(path) == result


def test_round_trip_with_nan_cells(tmp_path):
    m = np.array([[np.nan, 0.25], [1.0, -0.0625]])
    res = SimilarityResult(m, ["a", "b"], ["c", "d"], "A", "B", "CKA", settings={"x": float("nan")})
    back = SimilarityResult.load(res.save(tmp_path / "n.npz"))
    assert np.array_equal(back.matrix, m, equal_nan=True)
    assert math.isnan(back.settings["x"])
    assert np.isnan(back.stderr).all()


def test_save_refuses_what_json_or_npy_cannot_hold_without_pickle(tmp_path, result):
    bad = SimilarityResult(result.matrix, result.layers_a, result.layers_b, "A", "B", "CKA",
                           extras={"objs": np.array([object()], dtype=object)})
    with pytest.raises(TypeError, match="objs"):
        bad.save(tmp_path / "bad.npz")
    bad = SimilarityResult(result.matrix, result.layers_a, result.layers_b, "A", "B", "CKA", settings={"f": print})
    with pytest.raises(TypeError, match="settings"):
        bad.save(tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()  # nothing half-written


def test_load_rejects_foreign_files(tmp_path):
    np.savez(tmp_path / "plain.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not a simtorch result"):
        SimilarityResult.load(tmp_path / "plain.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a simtorch result"):
        SimilarityResult.load(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError):
        SimilarityResult.load(tmp_path / "missing.npz")


def test_equality_sees_differences(result):
    other = SimilarityResult(result.matrix.copy(), result.layers_a, result.layers_b, result.model_a,
                             result.model_b, result.metric, result.stderr.copy(), dict(result.settings),
                             result.n_samples, result.n_batches, result.n_skipped, result.skipped_samples,
                             dict(result.extras), dict(result.versions))
    assert other == result
    other.matrix[0, 0] += 1e-15
    assert other != result


# ------------------------------------------------------------------ CSV and plotting


def test_to_csv_long_form(tmp_path, result):
    res = SimilarityResult(result.matrix.copy(), result.layers_a, result.layers_b, "A", "B", "CKA",
                           result.stderr.copy())
    res.matrix[1, 0] = np.nan
    path = res.to_csv(tmp_path / "out" / "r.csv")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["layer_a", "layer_b", "value", "stderr"]
    body = rows[1:]
    assert len(body) == len(LAYERS_A) * len(LAYERS_B)
    assert [(r[0], r[1]) for r in body] == [(a, b) for a in LAYERS_A for b in LAYERS_B]
    values = np.array([float(r[2]) for r in body]).reshape(res.shape)
    errors = np.array([float(r[3]) for r in body]).reshape(res.shape)
    assert np.array_equal(values, res.matrix, equal_nan=True)  # full precision: exact
    assert np.array_equal(errors, res.stderr, equal_nan=True)
    assert body[len(LAYERS_B)][2] == "NaN"  # what pandas and R read as missing


def test_loaded_result_plots_without_models(tmp_path, result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    back = SimilarityResult.load(result.save(tmp_path / "r.npz"))
    ax = back.plot(save_path=tmp_path / "grid.png", show_stderr=True)
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [t.get_text() for t in ax.get_yticklabels()] == LAYERS_A
    assert [t.get_text() for t in ax.get_xticklabels()] == LAYERS_B
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 6 and all("±" in t for t in texts)
    plt.close("all")
    back.plot(save_path=tmp_path / "dir")  # a directory: named after the title
    assert list((tmp_path / "dir").glob("*.png"))
    plt.close("all")


# ------------------------------------------------------------------ jackknife


def jackknife_se(thetas: np.ndarray) -> np.ndarray:
    """se = sqrt((G−1)/G · Σ_g (θ₋g − θ̄)²), written out here independently of simtorch."""
    g = thetas.shape[0]
    mean = thetas.mean(axis=0)
    return np.sqrt((g - 1) / g * ((thetas - mean) ** 2).sum(axis=0))


@pytest.mark.parametrize("unbiased", [True, False])
def test_jackknife_matches_leave_one_batch_out(unbiased):
    data = batches(6, 12, seed=3)
    full = cka(data, unbiased=unbiased)
    loo = np.stack([cka(data[:g] + data[g + 1 :], unbiased=unbiased).matrix for g in range(len(data))])
    want = jackknife_se(loo)
    assert np.all(want > 1e-4)  # a real spread, so the comparison means something
    np.testing.assert_allclose(full.stderr, want, rtol=1e-9, atol=1e-12)
    # and it is not some other spread, e.g. the naive std of the leave-one-out values
    assert not np.allclose(full.stderr, loo.std(axis=0), rtol=1e-3)


def test_jackknife_rbf_kernel():
    data = batches(5, 10, seed=4)
    full = cka(data, kernel="rbf")
    loo = np.stack([cka(data[:g] + data[g + 1 :], kernel="rbf").matrix for g in range(len(data))])
    np.testing.assert_allclose(full.stderr, jackknife_se(loo), rtol=1e-9, atol=1e-12)


def test_jackknife_over_more_batches_than_groups_deletes_contiguous_groups():
    # the default keeps ≤ 64 groups; with max_groups=4 the same merging shows on 10 batches:
    # after 4 batches pairs merge, after 8 again, leaving groups [0-3], [4-7], [8-9]
    from simtorch.engine import stream
    from simtorch.similarity.cka import CKAMetric

    data = batches(10, 6, seed=5)
    metric = CKAMetric(max_groups=4)
    stream(SimilarityModel(net(0), "A", LAYERS_A), SimilarityModel(net(1), "B", LAYERS_B), data, [metric],
           "cpu", progress=False)
    full = metric.result()
    groups = [range(0, 4), range(4, 8), range(8, 10)]
    loo = np.stack([cka([b for i, b in enumerate(data) if i not in g]).matrix for g in groups])
    np.testing.assert_allclose(full.matrix, cka(data).matrix, rtol=0, atol=1e-12)
    np.testing.assert_allclose(full.stderr, jackknife_se(loo), rtol=1e-9, atol=1e-12)


def test_single_batch_has_no_standard_error():
    res = cka(batches(1, 20))
    assert np.isnan(res.stderr).all() and np.isfinite(res.matrix).all()


def test_skipped_batch_does_not_count_as_a_group():
    data = batches(4, 10, seed=6) + [torch.randn(3, 12)]  # a last batch of 3: skipped (n < 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        full = cka(data)
    assert full.n_skipped == 1 and full.n_batches == 4
    loo = np.stack([cka(data[:g] + data[g + 1 : 4]).matrix for g in range(4)])
    np.testing.assert_allclose(full.stderr, jackknife_se(loo), rtol=1e-9, atol=1e-12)
