"""average_results: the mean grid over seeds or checkpoints and its spread, exact against
numpy, as a SimilarityResult that saves and plots like the others."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import simtorch
from models import conv_net, image_mlp, loader, structured_pixels
from simtorch import SimilarityModel, SimilarityResult, average_results

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: see conftest.py

LA, LB = ["l1", "l2", "l3"], ["m1", "m2"]


def made(seed: int, metric: str = "CKA", layers_a=LA, layers_b=LB, **kw) -> SimilarityResult:
    rng = np.random.default_rng(seed)
    shape = (len(layers_a), len(layers_b))
    args = dict(matrix=rng.uniform(0, 1, shape), stderr=rng.uniform(0, 0.05, shape), layers_a=layers_a,
                layers_b=layers_b, model_a=f"A{seed}", model_b="B", metric=metric,
                settings={"kernel": "linear", "unbiased": True, "seed": seed},
                n_samples=100 + seed, n_batches=4, n_skipped=seed % 2, skipped_samples=2 * (seed % 2),
                extras={"reverse": rng.uniform(0, 1, shape), "reverse_stderr": rng.uniform(0, 0.1, shape),
                        "tied": rng.uniform(0, 1, shape) > 0.7, "hsic_cross": rng.normal(size=shape),
                        "hsic_groups_cross": rng.normal(size=(seed + 2, *shape))})
    args.update(kw)
    return SimilarityResult(**args)


def test_mean_and_spread_equal_numpy():
    runs = [made(s) for s in range(4)]
    stack = np.stack([r.matrix for r in runs])
    for spread, want in (("std", stack.std(axis=0, ddof=1)), ("sem", stack.std(axis=0, ddof=1) / 2.0)):
        avg = average_results(runs, spread=spread)
        np.testing.assert_allclose(avg.matrix, stack.mean(axis=0), atol=1e-15, rtol=0)
        np.testing.assert_allclose(avg.stderr, want, atol=1e-15, rtol=0)
        assert avg.settings["average"]["spread"] == spread and avg.settings["average"]["ddof"] == 1
    # the runs' own grids and errors ride along
    np.testing.assert_array_equal(avg.extras["runs_matrix"], stack)
    np.testing.assert_array_equal(avg.extras["runs_stderr"], np.stack([r.stderr for r in runs]))


def test_extras_settings_counts_and_names():
    runs = {f"seed{s}": made(s) for s in range(3)}
    avg = average_results(runs)
    rs = list(runs.values())
    rev = np.stack([r.extras["reverse"] for r in rs])
    np.testing.assert_allclose(avg.extras["reverse"], rev.mean(0), atol=1e-15, rtol=0)
    np.testing.assert_allclose(avg.extras["reverse_stderr"], rev.std(0, ddof=1), atol=1e-15, rtol=0)
    np.testing.assert_array_equal(avg.extras["tied"], np.any([r.extras["tied"] for r in rs], axis=0))
    assert not any(k.startswith("hsic_") for k in avg.extras)  # one run's sums are not averaged
    # settings: the equal ones kept (the estimator stays named), the differing ones recorded
    assert avg.settings["kernel"] == "linear" and avg.settings["unbiased"] is True and "seed" not in avg.settings
    info = avg.settings["average"]
    assert info["varied"] == {"seed": [0, 1, 2]}
    assert info["n_results"] == 3 and info["labels"] == ["seed0", "seed1", "seed2"]
    assert info["models_a"] == ["A0", "A1", "A2"] and info["n_samples"] == [100, 101, 102]
    assert avg.n_samples == 303 and avg.n_batches == 12 and avg.n_skipped == 1 and avg.skipped_samples == 2
    assert avg.model_a == "mean of 3 models" and avg.model_b == "B"
    assert avg.metric == "CKA" and avg.layers_a == LA and avg.layers_b == LB


def test_nan_cells_stay_nan():
    runs = [made(s) for s in range(3)]
    runs[1].matrix[0, 1] = np.nan
    avg = average_results(runs)
    assert np.isnan(avg.matrix[0, 1]) and np.isnan(avg.stderr[0, 1])
    assert np.isfinite(np.delete(avg.matrix.ravel(), 1)).all()


@pytest.mark.parametrize(
    "other, match",
    [
        (dict(metric="dCKA"), r"results\[1\] is a dCKA result but results\[0\] is a CKA result"),
        (dict(layers_a=["l1", "l2"]), r"layers_a differ: results\[1\] lacks \['l3'\]"),
        (dict(layers_b=["m1", "m2", "m9"]), r"layers_b differ: results\[1\] has \['m9'\] that results\[0\] lacks"),
        (dict(layers_a=["l2", "l1", "l3"]), r"layers_a differ: the same layers in another order"),
    ],
)
def test_mismatches_name_what_differs(other, match):
    with pytest.raises(ValueError, match=match):
        average_results([made(0), made(1, **other)])


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 2 results"):
        average_results([made(0)])
    with pytest.raises(TypeError, match="got one SimilarityResult"):
        average_results(made(0))
    with pytest.raises(TypeError, match=r"results\['b'\] is a ndarray"):
        average_results({"a": made(0), "b": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="spread must be one of"):
        average_results([made(0), made(1)], spread="iqr")


def test_saves_loads_and_plots(tmp_path, plt):
    from simtorch.plotting import plot_diagonal

    avg = average_results([made(s) for s in range(3)], spread="sem")
    path = avg.save(tmp_path / "avg.npz")
    back = SimilarityResult.load(path)
    np.testing.assert_array_equal(back.matrix, avg.matrix)
    np.testing.assert_array_equal(back.stderr, avg.stderr)
    assert back.settings == avg.settings
    ax = back.plot(show_stderr=True, save_path=tmp_path / "avg.png")
    assert ax.images and (tmp_path / "avg.png").stat().st_size > 0
    assert "unbiased" in ax.get_title()  # the estimator is still named
    ax = plot_diagonal(back, save_path=tmp_path / "diag.png")
    assert ax.collections  # the ± spread band


def test_seeds_of_a_real_model_equal_numpy():
    """Three seeds of a tiny conv net against one MLP, CKA and Information Imbalance."""
    dl = loader(structured_pixels(48, seed=0), 16)
    b = SimilarityModel(image_mlp(1), "MLP", ["fc1", "fc2", "fc3"], device="cpu")
    runs = {}
    for seed in range(3):
        a = SimilarityModel(conv_net(seed), "Conv", ["conv1", "conv2", "fc"], device="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs[seed] = simtorch.compare(a, b, dl, metrics=("cka", "ii"), progress=False)
    for key in ("cka", "ii"):
        rs = [runs[s][key] for s in range(3)]
        stack = np.stack([r.matrix for r in rs])
        avg = average_results(rs, spread="sem")
        np.testing.assert_allclose(avg.matrix, stack.mean(0), atol=1e-12, rtol=0)
        np.testing.assert_allclose(avg.stderr, stack.std(0, ddof=1) / np.sqrt(3), atol=1e-12, rtol=0)
        assert avg.model_a == "Conv" and avg.n_samples == 3 * 48 and avg.metric == rs[0].metric
        assert avg.settings["average"]["varied"] == {}
        assert np.abs(stack[0] - stack[1]).max() > 1e-3  # the seeds differ: a real spread
    rev = np.stack([runs[s]["ii"].extras["reverse"] for s in range(3)])
    avg = average_results([runs[s]["ii"] for s in range(3)])
    np.testing.assert_allclose(avg.extras["reverse"], rev.mean(0), atol=1e-12, rtol=0)
    np.testing.assert_allclose(avg.extras["reverse_stderr"], rev.std(0, ddof=1), atol=1e-12, rtol=0)
    # the average of per-loader results over seeds keeps the loader in its settings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per = [simtorch.compare(SimilarityModel(conv_net(s), "Conv", ["conv1", "fc"], device="cpu"), b,
                                loaders={"x": dl}, metrics=("cka",), progress=False)["x"]["cka"] for s in range(2)]
    assert average_results(per).settings["loader"] == "x"
