"""The figures as a reader sees them: colour scales per metric, reversed maps for
distances, tick labels that fit, cell text that never reads ±0.00, legends and panels,
file types that match their suffix. Every result here is built by hand (no models), so the
whole file runs in seconds."""

from __future__ import annotations

import numpy as np
import pytest

from simtorch import SimilarityResult
from simtorch import plotting
from simtorch.metrics import CKAMetric, DeltaCKAMetric, InformationImbalanceMetric
from simtorch.plotting import (
    color_limits,
    describe_estimator,
    diagonal_values,
    format_stderr,
    metric_class_of,
    plot_checkpoint_heatmap,
    plot_checkpoint_trend,
    plot_diagonal,
    plot_heatmap,
    plot_information_plane,
    plot_result,
    plot_results,
    plot_trend_with_range,
    resolve_save_path,
    shorten_labels,
)

MAGIC = {
    ".png": b"\x89PNG\r\n\x1a\n",
    ".pdf": b"%PDF",
    ".jpg": b"\xff\xd8\xff",
    ".jpeg": b"\xff\xd8\xff",
}


def result(la=4, lb=5, metric="CKA", settings=None, seed=0, low=0.2, high=1.0, stderr=0.01, names=None,
           reverse=False, models=("A", "B")) -> SimilarityResult:
    rng = np.random.default_rng(seed)
    m = rng.uniform(low, high, (la, lb))
    names_a, names_b = names if names is not None else ([f"a{i}" for i in range(la)], [f"b{j}" for j in range(lb)])
    extras = {"reverse": rng.uniform(low, high, (la, lb))} if reverse else {}
    return SimilarityResult(m, names_a, names_b, models[0], models[1], metric,
                            stderr=np.full((la, lb), stderr), settings=dict(settings or {}), extras=extras)


def cka(**kw) -> SimilarityResult:
    return result(metric="CKA", settings={"kernel": "linear", "unbiased": True, "sigma_frac": 1.0}, **kw)


def dcka(**kw) -> SimilarityResult:
    return result(metric="dCKA", settings={"unbiased": False, "remove_negative_eig": False, "confounder": "inputs"},
                  **kw)


def ii(**kw) -> SimilarityResult:
    kw.setdefault("low", 0.02)
    kw.setdefault("high", 0.3)
    return result(metric="II", settings={"subset_size": None, "exact": False, "subset_sizes": [64]}, reverse=True,
                  **kw)


def image(ax):
    return ax.images[0]


def visible_texts(fig):
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def deep_names(prefix: str, stages: int, per_stage: int) -> list[str]:
    return [f"{prefix}.stage{s}.block{b}.conv" for s in range(1, stages + 1) for b in range(per_stage)]


# ------------------------------------------------------------------ metric properties
def test_metric_class_of_reads_the_registry():
    assert metric_class_of("CKA") is CKAMetric
    assert metric_class_of("dCKA") is DeltaCKAMetric
    assert metric_class_of("II") is InformationImbalanceMetric
    assert metric_class_of("II (reverse)") is InformationImbalanceMetric
    assert metric_class_of("information_imbalance") is InformationImbalanceMetric
    assert metric_class_of(cka()) is CKAMetric
    assert metric_class_of(CKAMetric) is CKAMetric
    assert metric_class_of("my score") is None


def test_estimator_titles():
    assert describe_estimator(cka()) == "CKA (linear, unbiased)"
    assert describe_estimator(dcka()) == "dCKA (biased)"
    assert describe_estimator(ii()) == "Information imbalance (batches of 64)"
    rbf = result(metric="CKA", settings={"kernel": "rbf", "unbiased": False, "sigma_frac": 0.5})
    assert describe_estimator(rbf) == "CKA (RBF σ=0.5·median, biased)"
    assert describe_estimator(result(metric="II", settings={"exact": True})) == "Information imbalance (all samples)"
    assert describe_estimator(result(metric="my score")) == "my score"


@pytest.mark.parametrize("err, text", [(0.0, "±0"), (3e-5, "±<0.0001"), (0.000345, "±0.00034"), (0.0041, "±0.0041"),
                                       (0.0123, "±0.012"), (0.0995, "±0.10"), (0.25, "±0.25"), (1.23, "±1.2")])
def test_stderr_text_has_two_significant_digits(err, text):
    assert format_stderr(err) == text
    assert format_stderr(err) != "±0.00"


# ------------------------------------------------------------------ colour scales
def test_cka_family_defaults_to_the_fixed_unit_scale(plt):
    for res in (cka(low=0.58, high=0.99), dcka(low=0.01, high=0.16)):
        ax = plot_result(res)
        assert image(ax).get_clim() == (0.0, 1.0)  # the same scale in both figures
        assert ax.images[0].colorbar.extend == "neither"


def test_unbiased_negatives_extend_the_colourbar_below_zero(plt):
    res = cka(low=0.1, high=0.9)
    res.matrix[0, 0] = -0.03
    ax = plot_result(res)
    assert image(ax).get_clim() == (0.0, 1.0)
    assert image(ax).colorbar.extend == "min"
    assert color_limits(np.array([-0.1, 1.2]), "CKA") == (0.0, 1.0, "both")


def test_vmin_vmax_override(plt):
    ax = plot_result(cka(low=0.5, high=0.9), vmin=0.5, vmax=0.9)
    assert image(ax).get_clim() == (0.5, 0.9)
    ax = plot_result(cka(low=0.5, high=0.9), vmin=0.6)
    assert image(ax).get_clim() == (0.6, 1.0) and image(ax).colorbar.extend == "min"


def test_metric_without_a_range_auto_ranges(plt):
    res = result(metric="my score", low=3.0, high=7.0)
    ax = plot_result(res)
    assert image(ax).get_clim() == (res.matrix.min(), res.matrix.max())
    assert image(ax).colorbar.extend == "neither"


def test_information_imbalance_gets_a_reversed_map_and_a_written_out_label(plt):
    import matplotlib

    ax_cka = plot_result(cka())
    ax = plot_result(ii())
    im = image(ax)
    magma = matplotlib.colormaps["magma"]
    assert im.get_cmap().name == "magma_r"
    assert np.allclose(im.cmap(0.0), magma(1.0)) and np.allclose(im.cmap(1.0), magma(0.0))
    assert image(ax_cka).get_cmap().name == "magma"
    assert im.get_clim() == (0.0, 1.0)
    cbar = im.colorbar
    label = cbar.ax.get_ylabel()
    assert label.startswith("Information imbalance") and "Δ(A → B)" in label
    assert "low = more alike" in label
    assert cbar.ax.yaxis_inverted()  # 0 (most alike) at the top, where CKA's 1 is
    assert not image(ax_cka).colorbar.ax.yaxis_inverted()
    # the reverse direction names its models the other way round
    rev = plotting.reverse_result(ii())
    assert "Δ(B → A)" in image(plot_result(rev)).colorbar.ax.get_ylabel()


def test_scale_and_map_come_from_the_metric_class_properties(plt):
    from simtorch.metrics import Metric

    class Spread(Metric):  # not registered: only its declared properties tell the figure what to do
        key, name, direction, value_range = "spread_test", "Spread", "distance", (0.0, 2.0)

    ax = plot_heatmap(np.array([[0.5, 2.5], [1.0, 1.5]]), ["a", "b"], ["c", "d"], metric=Spread,
                      colorbar_label="Spread")
    assert image(ax).get_clim() == (0.0, 2.0) and image(ax).colorbar.extend == "max"
    assert image(ax).get_cmap().name == "magma_r" and image(ax).colorbar.ax.yaxis_inverted()


def test_log_scale_for_small_distances(plt):
    from matplotlib.colors import LogNorm

    ax = plot_result(ii(low=0.03, high=0.09), norm="log")
    im = image(ax)
    assert isinstance(im.norm, LogNorm)
    assert im.get_clim() == pytest.approx((0.01, 1.0))
    with pytest.raises(ValueError, match="norm"):
        plot_result(ii(), norm="sqrt")


# ------------------------------------------------------------------ many layers
def test_small_grids_label_every_layer(plt):
    res = cka(la=3, lb=4)
    ax = plot_result(res)
    assert [t.get_text() for t in ax.get_yticklabels()] == res.layers_a
    assert [t.get_text() for t in ax.get_xticklabels()] == res.layers_b


def test_many_layers_thin_the_ticks_and_keep_fonts_at_6pt(plt):
    names_a, names_b = deep_names("features", 4, 30), deep_names("net", 4, 26)  # 120 × 104
    res = cka(la=120, lb=104, names=(names_a, names_b))
    fig, ax = plt.subplots(figsize=(6, 5))  # a paper-column figure: far too small for 120 labels
    plot_result(res, ax=ax)
    ylab = [t.get_text() for t in ax.get_yticklabels()]
    xlab = [t.get_text() for t in ax.get_xticklabels()]
    # every k-th label, k the smallest step whose labels fit the axis at 6 pt
    pos = ax.get_position()
    h_pt, w_pt = pos.height * fig.get_figheight() * 72, pos.width * fig.get_figwidth() * 72
    for labels, n, length, names in ((ylab, 120, h_pt, names_a), (xlab, 104, w_pt, names_b)):
        assert 1 < len(labels) < n
        step = names.index(labels[1]) - names.index(labels[0])
        want = [names[i] for i in range(0, n, step)]
        if labels[-1] == names[-1] != want[-1]:
            want.append(names[-1])  # the last layer, when there is room for it
        assert labels == want
        assert len(labels) * 6 * 1.45 <= length + 1e-6  # no overprinting at 6 pt
    for major, minor, n in ((ax.get_xticks(), ax.get_xticks(minor=True), 104),
                            (ax.get_yticks(), ax.get_yticks(minor=True), 120)):
        assert set(major) | set(minor) == set(range(n))  # each cell still has its tick
    assert all(t.get_fontsize() >= 6 for t in visible_texts(fig))
    assert not ax.texts  # no cell text on a 120 × 104 grid
    # stage lines between stage1 … stage4 on both axes
    assert len(ax.lines) == 3 + 3


def test_layer_name_depth_and_stage_ticks(plt):
    names_a = deep_names("features", 3, 2)
    res = cka(la=6, lb=6, names=(names_a, names_a))
    ax = plot_result(res, layer_name_depth=2)
    assert [t.get_text() for t in ax.get_yticklabels()] == [".".join(n.split(".")[-2:]) for n in names_a]
    assert shorten_labels(["encoder.block.layer1"], 1) == ["layer1"]
    ax = plot_result(res, ticks="stages")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["stage1", "stage2", "stage3"]
    assert list(ax.get_yticks()) == [0.5, 2.5, 4.5]


def test_show_stderr_never_prints_zero(plt):
    res = cka(la=3, lb=3, stderr=0.0)
    res.stderr[:] = [[0.00012, 0.004, 0.03], [2e-5, 0.0, 0.1], [0.0049, 0.0051, 0.2]]
    ax = plot_result(res, show_stderr=True)
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 9 and all("±" in t for t in texts)
    assert not any("±0.00\n" in t + "\n" for t in texts)
    assert "±0.00012" in texts[0] and "±<0.0001" in texts[3]
    assert all(t.get_fontsize() >= 6 for t in ax.texts)


def test_cell_text_is_left_out_when_it_cannot_fit(plt):
    fig, ax = plt.subplots(figsize=(4, 3))
    with pytest.warns(UserWarning, match="does not fit"):
        plot_result(cka(la=12, lb=12), ax=ax, show_stderr=True)
    assert not ax.texts
    # without an explicit request the small figure just draws no text, silently
    fig, ax = plt.subplots(figsize=(4, 3))
    plot_result(cka(la=12, lb=12), ax=ax)
    assert not ax.texts


def test_show_stderr_sizes_its_own_figure_to_fit(plt):
    ax = plot_result(cka(la=12, lb=20), show_stderr=True)
    assert len(ax.texts) == 240 and all(t.get_fontsize() >= 6 for t in ax.texts)


# ------------------------------------------------------------------ several panels
def test_plot_results_one_figure_shared_scale_per_family(plt, tmp_path):
    results = {"cka": cka(low=0.6, high=0.99), "dcka": dcka(low=0.0, high=0.2), "ii": ii()}
    fig = plot_results(results, save_path=tmp_path / "three.png", dpi=50)
    panels = fig.simtorch_panels
    assert len(panels) == 3 and all(len(ax.images) == 1 for ax in panels)
    assert [ax.get_title() for ax in panels] == ["CKA (linear, unbiased)", "dCKA (biased)",
                                                  "Information imbalance (batches of 64)"]
    assert fig._suptitle.get_text() == "A vs B"
    assert [image(ax).get_clim() for ax in panels[:2]] == [(0.0, 1.0), (0.0, 1.0)]
    assert image(panels[2]).get_cmap().name == "magma_r"
    assert (tmp_path / "three.png").read_bytes()[:8] == MAGIC[".png"]
    assert all(t.get_fontsize() >= 6 for t in visible_texts(fig))
    # only the first panel repeats the row labels
    assert [t.get_text() for t in panels[0].get_yticklabels()] == results["cka"].layers_a
    assert not any(t.get_visible() and t.get_text() for ax in panels[1:] for t in ax.get_yticklabels())


def test_plot_results_family_without_declared_range_shares_the_data_range(plt):
    a, b = result(metric="score", low=0.0, high=0.5, seed=1), result(metric="score", low=0.4, high=2.0, seed=2)
    fig = plot_results([a, b], titles=["left", "right"], share="family")
    lims = [image(ax).get_clim() for ax in fig.simtorch_panels]
    assert lims[0] == lims[1]
    assert lims[0][0] == pytest.approx(min(a.matrix.min(), b.matrix.min()))
    assert lims[0][1] == pytest.approx(max(a.matrix.max(), b.matrix.max()))
    assert [ax.get_title() for ax in fig.simtorch_panels] == ["left", "right"]
    fig = plot_results([a, b], share="none")
    assert len({image(ax).get_clim() for ax in fig.simtorch_panels}) == 2


def test_plot_results_options(plt):
    fig = plot_results([cka(), dcka(), ii(), cka(seed=3)], ncols=2, vmin=0.1, vmax=0.9, norm={"ii": "log"})
    panels = fig.simtorch_panels
    assert len(panels) == 4
    assert image(panels[0]).get_clim() == (0.1, 0.9)
    assert type(image(panels[2]).norm).__name__ == "LogNorm"
    with pytest.raises(ValueError, match="titles"):
        plot_results([cka(), dcka()], titles=["one"])
    with pytest.raises(ValueError, match="share"):
        plot_results([cka()], share="rows")


# ------------------------------------------------------------------ trends and depth
def test_trend_with_20_layers_has_distinct_styles_and_a_legend_that_fits(plt, tmp_path):
    steps = [0, 4, 16, 64, 256]
    layers = [f"body.{i}" for i in range(20)]
    vals = np.linspace(0.2, 1.0, 5)[:, None] * np.ones((1, 20))
    ax = plot_checkpoint_trend(steps, vals, layers, np.full_like(vals, 0.01), reference="256",
                               save_path=tmp_path / "trend.png", dpi=50)
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == layers
    styles = {(tuple(np.round(c.lines[0].get_color(), 3)), c.lines[0].get_marker(), c.lines[0].get_linestyle())
              for c in ax.containers}
    assert len(styles) == 20
    markers = [c.lines[0].get_marker() for c in ax.containers]
    assert all(m1 != m2 for m1, m2 in zip(markers, markers[1:]))  # neighbours differ in marker
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box, axes_box = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert box.x0 >= axes_box.x1  # beside the plot, not over it
    assert box.y0 >= 0 and box.y1 <= fig.bbox.height  # and inside the figure's height
    assert all(t.get_fontsize() >= 6 for t in visible_texts(fig))
    assert ax.get_ylim()[0] < 0.0 < 1.0 < ax.get_ylim()[1] < 1.1  # CKA's fixed range


def test_checkpoint_heatmap_uses_the_metric_scale(plt):
    vals = np.linspace(0.5, 0.9, 12).reshape(3, 4)
    ax = plot_checkpoint_heatmap(vals, ["l0", "l1", "l2", "l3"], ["0", "10", "100"], steps=[0, 10, 100])
    assert image(ax).get_clim() == (0.0, 1.0)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "10", "100"]


def test_diagonal_values_corresponding_and_best():
    res = cka(la=4, lb=4)
    d = diagonal_values(res)
    assert np.array_equal(d["values"], np.diag(res.matrix)) and list(d["index_b"]) == [0, 1, 2, 3]
    best = diagonal_values(res, "best")
    assert np.array_equal(best["values"], res.matrix.max(axis=1))
    assert np.array_equal(best["stderr"], res.stderr[np.arange(4), res.matrix.argmax(axis=1)])
    # a distance's best match is its lowest value
    dist = ii(la=3, lb=5)
    assert np.array_equal(diagonal_values(dist, "best")["values"], dist.matrix.min(axis=1))
    # non-square: the layer at the same relative depth
    assert list(diagonal_values(cka(la=3, lb=5))["index_b"]) == [0, 2, 4]
    nan_row = cka(la=2, lb=3)
    nan_row.matrix[1] = np.nan
    assert np.isnan(diagonal_values(nan_row, "best")["values"][1])
    with pytest.raises(ValueError, match="mode"):
        diagonal_values(res, "max")


def test_plot_diagonal_overlays_results(plt, tmp_path):
    runs = {"seed 1": cka(la=6, lb=6, seed=1), "seed 2": cka(la=6, lb=6, seed=2)}
    ax = plot_diagonal(runs, save_path=tmp_path / "diag.pdf", dpi=50)
    assert [line.get_label() for line in ax.get_lines()] == ["seed 1", "seed 2"]
    assert np.allclose(ax.get_lines()[0].get_ydata(), np.diag(runs["seed 1"].matrix))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["seed 1", "seed 2"]
    assert [t.get_text() for t in ax.get_xticklabels()] == runs["seed 1"].layers_a
    assert (tmp_path / "diag.pdf").read_bytes()[:4] == MAGIC[".pdf"]
    # different depths overlay on relative depth; metrics of one pair are named by estimator
    ax = plot_diagonal([cka(la=4, lb=4), dcka(la=7, lb=7)], mode="best")
    assert ax.get_xlabel() == "relative depth"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["CKA (linear, unbiased)", "dCKA (biased)"]
    assert np.allclose(ax.get_lines()[1].get_xdata(), np.linspace(0, 1, 7))


def test_trend_with_range_mean_and_spread(plt):
    rng = np.random.default_rng(0)
    runs = [cka(la=5, lb=5, seed=s) for s in range(4)]
    ax = plot_trend_with_range({"trained": runs, "random": np.clip(rng.normal(0.3, 0.05, (3, 5)), 0, 1)},
                               spread="std")
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["trained: mean ± s.d. of 4 runs", "random: mean ± s.d. of 3 runs"]
    stack = np.stack([np.diag(r.matrix) for r in runs])
    mean_line = next(line for line in ax.get_lines() if line.get_label().startswith("trained"))
    assert np.allclose(mean_line.get_ydata(), stack.mean(axis=0))
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert np.isclose(band.max(), (stack.mean(0) + stack.std(0, ddof=1)).max())
    assert len(ax.get_lines()) == 2 + 4 + 3  # two means and every run, faint
    assert [t.get_text() for t in ax.get_xticklabels()] == runs[0].layers_a
    with pytest.raises(ValueError, match="spread"):
        plot_trend_with_range(runs, spread="iqr")
    with pytest.raises(ValueError, match="different numbers of layers"):
        plot_trend_with_range([cka(la=3, lb=3), cka(la=4, lb=4)])


def test_information_plane_labels_do_not_overprint(plt, tmp_path):
    res = ii(la=12, lb=12, low=0.03, high=0.06)  # a tight cluster, as for random networks
    ax = plot_information_plane(res, save_path=tmp_path / "plane.png", dpi=50)
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == 12
    for i in range(12):
        for j in range(i + 1, 12):
            assert not boxes[i].overlaps(boxes[j]), (ax.texts[i].get_text(), ax.texts[j].get_text())
    assert len(ax.get_legend().get_texts()) == 12  # numbered points, named in the legend
    assert ax.get_xlim()[1] < 0.2  # zoomed to the cluster (every Δ < 0.35)
    few = plot_information_plane(ii(la=3, lb=3), limits="full")
    assert [t.get_text() for t in few.texts] == ["a0 | b0", "a1 | b1", "a2 | b2"]
    assert few.get_xlim() == (0.0, 1.05)


# ------------------------------------------------------------------ saving
def test_file_type_matches_the_suffix(plt, tmp_path):
    from simtorch.plotting._base import save_figure

    ax = plot_result(cka(la=2, lb=2), save_path=tmp_path / "grid.png", dpi=50)
    for suffix in (".pdf", ".svg", ".jpg", ".jpeg"):
        save_figure(ax.figure, tmp_path / f"grid{suffix}", "t", dpi=50)  # what every plot_* saves with
    for suffix in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        head = (tmp_path / f"grid{suffix}").read_bytes()[:256]
        if suffix == ".svg":
            assert b"<svg" in head
        else:
            assert head.startswith(MAGIC[suffix]), suffix


def test_unknown_suffix_is_an_error_not_a_directory(plt, tmp_path):
    with pytest.raises(ValueError, match=r"\.jpgg.*\.png"):
        resolve_save_path(tmp_path / "grid.jpgg", "t")
    with pytest.raises(ValueError, match="unknown file suffix"):
        plot_result(cka(la=2, lb=2), save_path=tmp_path / "grid.jpgg")
    assert not (tmp_path / "grid.jpgg").exists()


def test_paths_without_a_suffix_are_directories(plt, tmp_path):
    path = resolve_save_path(tmp_path / "figs", "CKA: A vs B")
    assert path == tmp_path / "figs" / "CKA_A_vs_B.png" and (tmp_path / "figs").is_dir()
    dotted = tmp_path / "run.v2"
    dotted.mkdir()
    assert resolve_save_path(dotted, "x") == dotted / "x.png"  # an existing directory stays one
    assert resolve_save_path(tmp_path / "a" / "b.PDF", "x") == tmp_path / "a" / "b.PDF"


def test_old_import_names_still_work():
    from simtorch.plotting import _pyplot, pyplot, reverse_result  # noqa: F401

    assert _pyplot is pyplot
    assert plot_heatmap is plotting.heatmap.plot_heatmap
