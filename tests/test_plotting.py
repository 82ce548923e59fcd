"""simtorch.plotting: what the figures show (cell values, orientation, tick labels, colour
limits, annotations, points of the information plane, lines over training) and that a
saved file is of the type its suffix names. Results are built by hand, so no model runs
except where a test says so."""

from __future__ import annotations

import re

import matplotlib.colors as mcolors
import numpy as np
import pytest

from models import Tiny, batches, data, deep_mlp, lowrank_batches
from simtorch import CKA, SimilarityModel, SimilarityResult
from simtorch.plotting import (
    plot_checkpoint_heatmap,
    plot_checkpoint_trend,
    plot_heatmap,
    plot_information_plane,
    plot_result,
    pyplot,
    resolve_save_path,
    reverse_result,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: see conftest.py

MAGIC = {
    ".png": b"\x89PNG\r\n\x1a\n",
    ".pdf": b"%PDF-",
    ".jpg": b"\xff\xd8\xff",
    ".eps": b"%!PS-Adobe",
}
LA = ["conv1", "layer1", "fc"]
LB = ["stem", "head"]
GRID = np.array([[0.9, 0.1], [0.4, np.nan], [0.25, 0.75]])


def result(**kw) -> SimilarityResult:
    args = dict(matrix=GRID, layers_a=LA, layers_b=LB, model_a="A", model_b="B", metric="CKA",
                stderr=np.array([[0.01, 0.02], [0.03, np.nan], [0.05, 0.06]]))
    args.update(kw)
    return SimilarityResult(**args)


def ii_result() -> SimilarityResult:
    fwd = np.array([[0.1, 0.8], [0.5, 0.3], [0.9, 0.2]])
    rev = np.array([[0.6, 0.35], [0.45, 0.15], [0.05, 0.7]])
    return result(matrix=fwd, metric="II", stderr=None,
                  extras={"reverse": rev, "reverse_stderr": np.full((3, 2), 0.01)})


def ticks(labels) -> list[str]:
    return [t.get_text() for t in labels]


def cell_texts(ax) -> dict[tuple[int, int], str]:
    """The annotation of each cell, by (column, row) position."""
    return {tuple(int(c) for c in t.get_position()): t.get_text() for t in ax.texts}


def check_value_and_error(text: str, value: float, error: float) -> None:
    """``text`` reads ``value`` (2 decimals) over ``±error`` (rounded to 2 significant digits)."""
    v, e = text.split("\n")
    assert v == f"{value:.2f}", text
    assert e.startswith("±") and float(e[1:]) == pytest.approx(error, rel=0.05), text


# ---------------------------------------------------------------- plot_heatmap


def test_heatmap_cells_ticks_and_orientation(plt):
    ax = plot_heatmap(GRID, LA, LB, title="T", xlabel="model B", ylabel="model A")
    assert ticks(ax.get_yticklabels()) == LA  # rows: model A, row 0 at the bottom
    assert ticks(ax.get_xticklabels()) == LB
    assert list(ax.get_yticks()) == [0, 1, 2] and list(ax.get_xticks()) == [0, 1]
    im = ax.images[0]
    assert im.origin == "lower"
    shown = im.get_array()
    np.testing.assert_array_equal(shown.filled(-1), np.where(np.isnan(GRID), -1, GRID))
    assert shown.mask.tolist() == np.isnan(GRID).tolist()  # NaN cells masked ...
    assert im.get_cmap().get_bad() == pytest.approx(mcolors.to_rgba("lightgrey"))  # ... and drawn grey
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("T", "model B", "model A")


def test_heatmap_colour_limits(plt):
    im = plot_heatmap(GRID, LA, LB, vmin=0.0, vmax=1.0).images[0]
    assert im.get_clim() == (0.0, 1.0)
    im = plot_heatmap(GRID, LA, LB, vmin=-0.5).images[0]
    assert im.get_clim() == (-0.5, 0.9)
    im = plot_heatmap(GRID, LA, LB).images[0]  # default: the finite data range
    assert im.get_clim() == (pytest.approx(0.1), pytest.approx(0.9))


def test_heatmap_annotations(plt):
    ax = plot_heatmap(GRID, LA, LB)
    # one text per finite cell at its (column, row), the NaN cell left blank
    got = {(t.get_position(), t.get_text()) for t in ax.texts}
    want = {((j, i), f"{GRID[i, j]:.2f}") for i in range(3) for j in range(2) if np.isfinite(GRID[i, j])}
    assert got == want
    errors = np.array([[0.01, 0.02], [0.03, 0.04], [np.nan, 0.06]])
    texts = cell_texts(plot_heatmap(GRID, LA, LB, errors=errors))
    check_value_and_error(texts[(0, 0)], 0.9, 0.01)
    check_value_and_error(texts[(1, 2)], 0.75, 0.06)
    assert texts[(0, 2)] == "0.25" and (1, 1) not in texts  # no error: the value alone; NaN: blank
    assert not plot_heatmap(GRID, LA, LB, annotate=False).texts
    big = np.random.default_rng(0).random((13, 13))
    assert not plot_heatmap(big, [str(i) for i in range(13)], [str(i) for i in range(13)]).texts  # > 12: off
    with pytest.raises(ValueError, match=r"errors has shape \(2, 2\)"):
        plot_heatmap(GRID, LA, LB, errors=np.zeros((2, 2)))


def test_heatmap_draws_into_a_given_axes(plt):
    fig, (left, right) = plt.subplots(1, 2)
    ax = plot_heatmap(GRID, LA, LB, ax=right)
    assert ax is right and not left.images and len(right.images) == 1


@pytest.mark.parametrize("suffix", sorted(MAGIC) + [".svg"])
def test_saved_file_type_matches_its_suffix(plt, tmp_path, suffix):
    path = tmp_path / f"grid{suffix}"
    plot_heatmap(GRID, LA, LB, save_path=path, dpi=40)
    head = path.read_bytes()[:400]
    if suffix == ".svg":
        assert b"<svg" in head
    else:
        assert head.startswith(MAGIC[suffix]), head[:16]


# ---------------------------------------------------------------- plot_result and save paths


def test_plot_result_names_everything_from_the_result(plt):
    ax = plot_result(result())
    assert ax.get_title().startswith("CKA") and ax.get_title().endswith("A vs B")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("B", "A")
    assert ticks(ax.get_yticklabels()) == LA and ticks(ax.get_xticklabels()) == LB
    assert "CKA" in ax.images[0].colorbar.ax.get_ylabel()
    assert ax.images[0].get_clim() == (0, 1)  # CKA's value range, not the data's
    np.testing.assert_array_equal(ax.images[0].get_array().filled(-1), np.where(np.isnan(GRID), -1, GRID))
    ax = plot_result(result(), title="mine", xlabel="x", ylabel="y", vmin=0, vmax=1, cmap="viridis")
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("mine", "x", "y")
    assert ax.images[0].get_clim() == (0, 1) and ax.images[0].get_cmap().name.startswith("viridis")


def test_plot_result_show_stderr_writes_value_and_error(plt):
    texts = cell_texts(plot_result(result(), show_stderr=True))
    check_value_and_error(texts[(0, 0)], 0.9, 0.01)
    check_value_and_error(texts[(1, 2)], 0.75, 0.06)
    assert len(texts) == 5  # the NaN cell is blank


def test_resolve_save_path(tmp_path):
    with pytest.raises(ValueError, match="unknown file suffix"):
        resolve_save_path(tmp_path / "grid.jpgg", "t")
    assert not (tmp_path / "grid.jpgg").exists()
    f = resolve_save_path(tmp_path / "a" / "b" / "fig.PDF", "ignored")
    assert f == tmp_path / "a" / "b" / "fig.PDF" and f.parent.is_dir() and not f.exists()
    d = resolve_save_path(tmp_path / "dir", "CKA: A vs B (seed 1)")
    assert d == tmp_path / "dir" / "CKA_A_vs_B_seed_1.png" and d.parent.is_dir()
    assert resolve_save_path(tmp_path / "dir2", "???").name == "similarity.png"


def test_loaded_result_plots_without_models(plt, tmp_path):
    a = SimilarityModel(deep_mlp(0), "A", ["fc1", "relu1", "fc2"])
    b = SimilarityModel(deep_mlp(1), "B", ["fc1", "fc2"])
    sim = CKA(a, b, device="cpu", progress=False)
    sim.compute(lowrank_batches(5, 16))
    back = SimilarityResult.load(sim.result.save(tmp_path / "r.npz"))
    del a, b, sim
    ax = back.plot(save_path=tmp_path / "grid.png", show_stderr=True)
    assert (tmp_path / "grid.png").read_bytes()[:8] == MAGIC[".png"]
    assert ticks(ax.get_yticklabels()) == ["fc1", "relu1", "fc2"]
    assert ticks(ax.get_xticklabels()) == ["fc1", "fc2"]
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 6 and all("±" in t for t in texts)
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), back.matrix)
    plt.close("all")
    ax = back.plot(save_path=tmp_path / "dir")  # a directory: the file is named after the title
    named = resolve_save_path(tmp_path / "dir", ax.get_title())
    assert ax.get_title() and list((tmp_path / "dir").glob("*.png")) == [named]
    assert named.read_bytes()[:8] == MAGIC[".png"]


def test_plot_similarity_into_a_directory(plt, tmp_path):
    sm = SimilarityModel(Tiny(), layers_to_include=["stem", "head"])
    sim = CKA(sm, sm, progress=False)
    with pytest.raises(RuntimeError, match="compute"):
        sim.plot_similarity()
    sim.compute(batches(data(), 12))
    out = tmp_path / "plots"
    ax = sim.plot_similarity(title="self similarity", savefig=True, save_path=out)
    pngs = list(out.glob("*.png"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 1000
    assert pngs[0].name == "self_similarity.png"
    with open(pngs[0], "rb") as f:
        assert f.read(8) == MAGIC[".png"]
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), sim.result.matrix)
    assert ticks(ax.get_xticklabels()) == ["stem", "head"] and ax.images[0].get_cmap().name.startswith("magma")


# ---------------------------------------------------------------- information plane


def test_information_plane_points_are_forward_and_reverse(plt):
    res = ii_result()
    ax = plot_information_plane(res)  # default: the diagonal pairs (0, 0), (1, 1)
    pts = ax.collections[0].get_offsets()
    np.testing.assert_array_equal(np.asarray(pts), [[0.1, 0.6], [0.3, 0.15]])
    notes = ax.texts
    assert len(notes) == 2
    assert re.fullmatch(r"conv1\s*\|\s*stem", notes[0].get_text())
    assert re.fullmatch(r"layer1\s*\|\s*head", notes[1].get_text())
    assert [tuple(t.xy) for t in notes] == [(0.1, 0.6), (0.3, 0.15)]  # each label tied to its point
    assert ax.get_xlabel() == "Δ(A → B)" and ax.get_ylabel() == "Δ(B → A)"
    assert ax.get_xlim() == (0, 1.05) and ax.get_ylim() == (0, 1.05)


def test_information_plane_pairs_by_name_or_index(plt, tmp_path):
    res = ii_result()
    ax = plot_information_plane(res, [("fc", "stem"), (0, 1), ("layer1", 0)], annotate=False,
                                save_path=tmp_path / "sub" / "plane.png")
    np.testing.assert_array_equal(np.asarray(ax.collections[0].get_offsets()),
                                  [[0.9, 0.05], [0.8, 0.35], [0.5, 0.45]])
    assert not ax.texts
    assert (tmp_path / "sub" / "plane.png").read_bytes()[:8] == MAGIC[".png"]
    with pytest.raises(ValueError, match=r"unknown layer 'fc9'"):
        plot_information_plane(res, [("fc9", "stem")])
    with pytest.raises(ValueError, match="Information Imbalance result"):
        plot_information_plane(result())


def test_reverse_result_is_the_reverse_grid():
    res = ii_result()
    rev = reverse_result(res)
    np.testing.assert_array_equal(rev.matrix, res.extras["reverse"])
    np.testing.assert_array_equal(rev.stderr, res.extras["reverse_stderr"])
    assert rev.metric == "II (reverse)" and rev.layers_a == LA and rev.layers_b == LB


# ---------------------------------------------------------------- checkpoints over training


def test_checkpoint_trend_one_line_per_layer_in_step_order(plt, tmp_path):
    steps = [1000, 0, 10]  # drawn in step order
    values = np.array([[0.9, 0.8], [0.2, 0.1], [0.5, 0.4]])
    ax = plot_checkpoint_trend(steps, values, ["fc1", "fc2"], reference="1000", save_path=tmp_path / "t.png")
    assert len(ax.lines) == 2
    for i, line in enumerate(ax.lines):
        np.testing.assert_array_equal(line.get_xdata(), [0, 10, 1000])
        np.testing.assert_array_equal(line.get_ydata(), values[[1, 2, 0], i])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["fc1", "fc2"]
    assert ax.get_xscale() == "symlog"  # steps over orders of magnitude, step 0 kept on the axis
    assert ax.get_ylabel() == "CKA with step 1000"
    lin = plot_checkpoint_trend([0, 10, 100], values, ["fc1", "fc2"])  # 10 … 100: only 10×
    assert lin.get_xscale() == "linear"
    assert (tmp_path / "t.png").read_bytes()[:8] == MAGIC[".png"]


def test_checkpoint_trend_labels_and_checks(plt):
    values = np.array([[0.2, 0.1], [0.5, 0.4]])
    ax = plot_checkpoint_trend([0, 1], values, ["fc1", "fc2"], labels=["init", "final"], xscale="linear")
    assert ticks(ax.get_xticklabels()) == ["init", "final"] and ax.get_xscale() == "linear"
    with pytest.raises(ValueError, match="values must have shape"):
        plot_checkpoint_trend([0, 1, 2], values, ["fc1", "fc2"])
    with pytest.raises(ValueError, match="stderr has shape"):
        plot_checkpoint_trend([0, 1], values, ["fc1", "fc2"], stderr=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="errorbars"):
        plot_checkpoint_trend([0, 1], values, ["fc1", "fc2"], errorbars="whiskers")


def test_checkpoint_heatmap_layers_by_checkpoints(plt):
    values = np.array([[0.9, 0.8], [0.2, 0.1], [0.5, 0.4]])  # (checkpoints, layers)
    ax = plot_checkpoint_heatmap(values, ["fc1", "fc2"], ["late", "init", "mid"], steps=[100, 0, 10],
                                 vmin=0, vmax=1)
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), values[[1, 2, 0]].T)
    assert ticks(ax.get_xticklabels()) == ["init", "mid", "late"]
    assert ticks(ax.get_yticklabels()) == ["fc1", "fc2"]
    assert ax.images[0].get_clim() == (0, 1)
    with pytest.raises(ValueError, match="values must have shape"):
        plot_checkpoint_heatmap(values, ["fc1"], ["a", "b", "c"])


def test_pyplot_is_matplotlibs():
    import matplotlib.pyplot

    assert pyplot() is matplotlib.pyplot
