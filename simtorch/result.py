"""SimilarityResult: a computed grid with its provenance and uncertainty."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SimilarityResult"]


def _versions() -> dict[str, str]:
    import torch

    from . import __version__

    return {"simtorch": __version__, "torch": torch.__version__, "numpy": np.__version__}


@dataclass
class SimilarityResult:
    """The layer-by-layer grid of one metric, and what it was computed from.

    Attributes
    ----------
    matrix : ndarray ``(La, Lb)``
        ``matrix[i, j]`` = similarity of layer ``layers_a[i]`` of model A and layer
        ``layers_b[j]`` of model B. NaN where the value is undefined (constant features).
    stderr : ndarray ``(La, Lb)``
        Standard error of each cell: a delete-one-group jackknife over batches for
        CKA/dCKA, the standard error over batches for Information Imbalance.
    metric : str
        ``"CKA"``, ``"dCKA"`` or ``"II"``.
    settings : dict
        The estimator's settings (kernel, unbiased, ...).
    n_samples, n_batches, n_skipped, skipped_samples : int
        Samples and batches that entered the sums, and batches (samples) skipped.
    extras : dict of ndarray
        Metric-specific arrays (e.g. ``"reverse"`` for Information Imbalance, ``"pve_a"``
        for dCKA, the per-group HSIC sums behind the jackknife).
    """

    matrix: np.ndarray
    layers_a: list[str]
    layers_b: list[str]
    model_a: str
    model_b: str
    metric: str
    stderr: np.ndarray | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    n_samples: int = 0
    n_batches: int = 0
    n_skipped: int = 0
    skipped_samples: int = 0
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=_versions)

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=np.float64)
        if self.stderr is None:
            self.stderr = np.full_like(self.matrix, np.nan)
        expected = (len(self.layers_a), len(self.layers_b))
        if self.matrix.shape != expected:
            raise ValueError(f"matrix shape {self.matrix.shape} does not match the layer lists {expected}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"SimilarityResult({self.metric}: {self.model_a} [{len(self.layers_a)} layers] vs "
            f"{self.model_b} [{len(self.layers_b)} layers], n_samples={self.n_samples}, "
            f"n_batches={self.n_batches}, skipped={self.n_skipped})"
        )

    def plot(self, **kwargs: Any) -> Any:
        """Draw the grid as a heatmap; keyword arguments go to
        :func:`simtorch.plotting.plot_heatmap`. Returns the matplotlib Axes."""
        from .plotting import plot_result

        return plot_result(self, **kwargs)
