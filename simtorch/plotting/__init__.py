"""Every figure simtorch draws (matplotlib only, headless-safe).

* :mod:`.heatmap`: :func:`plot_heatmap` (a matrix), :func:`plot_result` (one result),
  :func:`plot_results` (several results in one figure, one colour scale per metric family);
* :mod:`.trends`: over training, :func:`plot_checkpoint_trend`, :func:`plot_checkpoint_heatmap`;
* :mod:`.diagonal`: across depth, :func:`plot_diagonal` (corresponding / best-matching
  layers), :func:`diagonal_values`, :func:`plot_trend_with_range` (seeds or checkpoints as
  mean ± spread);
* :mod:`.plane`: :func:`plot_information_plane`, :func:`reverse_result`;
* :mod:`.lines`: what the line plots share (:func:`line_styles`, legend, y range);
* :mod:`.layer_ticks`: layer names as tick labels (:func:`shorten_labels`);
* :mod:`._base`: save paths (:func:`resolve_save_path`, :func:`save_figure`), the metric
  behind a result (:func:`metric_class_of`, :func:`describe_estimator`), colour limits.

Colour scales come from the metric classes' declared ``value_range`` and ``direction``
(``simtorch.metrics``), never from a list of metric names: a CKA-family grid is drawn on
``[0, 1]`` by default, and a distance (Information Imbalance) with the reversed map, so
brighter means "more alike" in every figure.
"""

from ._base import (
    MIN_FONT,
    color_limits,
    describe_estimator,
    format_stderr,
    metric_class_of,
    metric_label,
    pyplot,
    resolve_save_path,
    save_figure,
    supported_suffixes,
)
from .diagonal import diagonal_values, plot_diagonal, plot_trend_with_range
from .heatmap import plot_heatmap
from .results_figures import plot_result, plot_results
from .layer_ticks import shorten_labels
from .lines import line_styles
from .plane import plot_information_plane, repel_labels, reverse_result
from .trends import plot_checkpoint_heatmap, plot_checkpoint_trend

_pyplot = pyplot  # the name examples written against 0.3.0 import

__all__ = [
    "plot_heatmap",
    "plot_result",
    "plot_results",
    "plot_checkpoint_trend",
    "plot_checkpoint_heatmap",
    "plot_diagonal",
    "plot_trend_with_range",
    "diagonal_values",
    "resolve_save_path",
    "save_figure",
    "supported_suffixes",
    "plot_information_plane",
    "reverse_result",
    "repel_labels",
    "metric_class_of",
    "describe_estimator",
    "metric_label",
    "color_limits",
    "shorten_labels",
    "format_stderr",
    "line_styles",
    "MIN_FONT",
    "pyplot",
]
