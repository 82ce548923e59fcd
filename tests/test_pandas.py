"""SimilarityResult.to_pandas / from_pandas (issue 14): the long form of to_csv as a
DataFrame, round-tripped; pandas stays optional."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from simtorch import SimilarityResult
from simtorch.checkpoint_result import CheckpointComparison


def result(extras: bool = False) -> SimilarityResult:
    return SimilarityResult(
        np.array([[1.0, 0.5, -0.125], [0.25, np.nan, 0.1 + 0.2]]), ["conv1", "layer1.0"], ["a", "b", "c"],
        "resnet18", "resnet34", "CKA", np.array([[0.0, 0.01, 0.02], [0.03, np.nan, 1e-17]]),
        settings={"kernel": "linear", "unbiased": True, "shape": (3, 3)}, n_samples=64, n_batches=4,
        extras={"hsic_cross": np.ones((2, 3))} if extras else {},
    )


def test_round_trip_is_exact():
    pd = pytest.importorskip("pandas")
    res = result()
    df = res.to_pandas()
    assert isinstance(df, pd.DataFrame) and list(df.columns) == ["layer_a", "layer_b", "value", "stderr"]
    assert len(df) == 6 and list(df["layer_a"]) == ["conv1"] * 3 + ["layer1.0"] * 3
    assert df["value"].tolist()[:3] == [1.0, 0.5, -0.125] and np.isnan(df["value"].iloc[4])
    back = SimilarityResult.from_pandas(df)
    assert back == res  # every field: arrays bit for bit, names, settings (tuples too), counts, versions
    # extras are not part of the long form; everything else survives
    with_extras = result(extras=True)
    again = SimilarityResult.from_pandas(with_extras.to_pandas())
    assert again.extras == {} and np.array_equal(again.matrix, with_extras.matrix, equal_nan=True)


def test_from_a_csv_or_any_long_frame(tmp_path):
    pd = pytest.importorskip("pandas")
    res = result()
    res.to_csv(tmp_path / "r.csv")
    df = pd.read_csv(tmp_path / "r.csv")
    back = SimilarityResult.from_pandas(df, model_a="resnet18", model_b="resnet34", metric="CKA")
    np.testing.assert_array_equal(back.matrix, res.matrix)
    np.testing.assert_array_equal(back.stderr, res.stderr)
    assert back.layers_a == res.layers_a and back.layers_b == res.layers_b and back.model_b == "resnet34"
    # meta overrides the frame's own attrs; no stderr column gives NaN errors
    other = SimilarityResult.from_pandas(res.to_pandas()[["layer_a", "layer_b", "value"]], metric="dCKA",
                                         n_samples=7)
    assert other.metric == "dCKA" and other.n_samples == 7 and np.all(np.isnan(other.stderr))
    plain = SimilarityResult.from_pandas(pd.DataFrame({"layer_a": ["x", "x"], "layer_b": ["p", "q"],
                                                       "value": [0.5, 0.25]}))
    assert plain.shape == (1, 2) and (plain.model_a, plain.model_b, plain.metric) == ("A", "B", "CKA")


def test_bad_frames_say_what_is_wrong():
    pd = pytest.importorskip("pandas")
    df = result().to_pandas()
    with pytest.raises(ValueError, match="twice"):
        SimilarityResult.from_pandas(pd.concat([df, df.iloc[:1]]))
    with pytest.raises(ValueError, match="lacks 1 of the 6 cells"):
        SimilarityResult.from_pandas(df.iloc[1:])
    with pytest.raises(ValueError, match="lacks the columns \\['value'\\]"):
        SimilarityResult.from_pandas(df.drop(columns="value"))


def test_checkpoint_comparison_to_pandas():
    pytest.importorskip("pandas")
    grids = np.arange(2 * 3 * 3, dtype=float).reshape(2, 3, 3)
    cmp = CheckpointComparison(["s1", "s2"], [1, 2], ["l1", "l2", "l3"], "s2", grids, grids / 10)
    df = cmp.to_pandas()
    assert list(df.columns) == ["checkpoint", "step", "layer", "value", "stderr"] and len(df) == 6
    assert df["value"].tolist() == [0.0, 4.0, 8.0, 9.0, 13.0, 17.0]
    assert len(cmp.to_pandas(full=True)) == 18 and df.attrs["simtorch"]["reference"] == "s2"


def test_missing_pandas_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"^SimilarityResult.to_pandas needs pandas: pip install pandas$"):
        result().to_pandas()
    with pytest.raises(ImportError, match="pip install pandas"):
        SimilarityResult.from_pandas(object())
