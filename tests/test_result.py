"""SimilarityResult: save/load round trip (no pickle), equality, CSV long form.

Redrawing a loaded result is tested in test_plotting.py, the jackknife standard error in
test_accumulate.py."""

from __future__ import annotations

import csv
import dataclasses
import math
import zipfile

import numpy as np
import pytest

from models import DEEP_LAYERS_A, DEEP_LAYERS_B, deep_cka, lowrank_batches
from simtorch import SimilarityResult

LAYERS_A, LAYERS_B = DEEP_LAYERS_A, DEEP_LAYERS_B


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def result() -> SimilarityResult:
    return deep_cka(lowrank_batches(5, 16))


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


# ------------------------------------------------------------------ CSV


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


# ------------------------------------------------------------------ construction


def test_construction_checks_shapes_and_fills_stderr():
    res = SimilarityResult([[1, 0.5]], ["a"], ["b", "c"], "A", "B", "CKA", n_samples=8, n_batches=2, n_skipped=1)
    assert res.matrix.dtype == np.float64 and res.shape == (1, 2)
    assert res.stderr.shape == (1, 2) and np.isnan(res.stderr).all()
    assert repr(res) == "SimilarityResult(CKA: A [1 layers] vs B [2 layers], n_samples=8, n_batches=2, skipped=1)"
    with pytest.raises(ValueError, match=r"matrix shape \(1, 2\) does not match the layer lists \(2, 2\)"):
        SimilarityResult([[1, 0.5]], ["a", "d"], ["b", "c"], "A", "B", "CKA")
    with pytest.raises(ValueError, match="stderr shape"):
        SimilarityResult([[1, 0.5]], ["a"], ["b", "c"], "A", "B", "CKA", stderr=np.zeros((2, 1)))


def test_result_of_a_computation_carries_names_settings_and_counts(result):
    assert result.layers_a == LAYERS_A and result.layers_b == LAYERS_B
    assert (result.model_a, result.model_b, result.metric) == ("A", "B", "CKA")
    assert result.settings == {"kernel": "linear", "unbiased": True, "sigma_frac": 1.0}
    assert (result.n_samples, result.n_batches, result.n_skipped, result.skipped_samples) == (80, 5, 0, 0)
    assert {"simtorch", "torch", "numpy"} <= set(result.versions)
    assert np.isfinite(result.matrix).all() and (result.stderr > 0).all()
