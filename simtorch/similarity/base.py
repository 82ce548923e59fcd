"""BaseSimilarity: the simtorch 0.2.1 class interface on top of the streaming engine."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..engine import Metric, stream
from ..model import SimilarityModel
from ..result import SimilarityResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["BaseSimilarity"]


class BaseSimilarity:
    """Compare every chosen layer of one model with every chosen layer of another.

    Subclasses only say which streaming metric to build (:meth:`_make_metric`); the loop
    over the data, devices, no-grad, hooks and progress live in :func:`simtorch.engine.stream`.

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
        The two wrapped models (rows and columns of the grid). Passing the same object
        twice compares a model with itself in one forward pass per batch.
    device : str or torch.device, optional
        Where the similarity sums are computed, and where models without their own
        ``SimilarityModel(device=...)`` run. Default: the device of model 1's parameters.
    progress : bool
        Show a tqdm bar over batches.
    input_key : str, optional
        For loaders yielding dicts: the key of the model input. Without it the whole dict
        is passed as keyword arguments (``model(**batch)``).
    input_fn : callable, optional
        ``input_fn(batch) -> model input``, for any other batch layout.
    autocast : torch.dtype, optional
        Run the forward passes under ``torch.autocast`` with this dtype (``torch.bfloat16``
        or ``torch.float16``). Grams stay float32 and sums float64.
    """

    similarity_name = "base"

    def __init__(
        self,
        sim_model1: SimilarityModel,
        sim_model2: SimilarityModel,
        device: str | torch.device | None = None,
        *,
        progress: bool = True,
        input_key: str | None = None,
        input_fn: Callable[[Any], Any] | None = None,
        autocast: torch.dtype | None = None,
    ) -> None:
        if autocast not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast must be torch.bfloat16, torch.float16 or None, got {autocast!r}")
        for i, sm in enumerate((sim_model1, sim_model2), 1):
            if not isinstance(sm, SimilarityModel):
                raise TypeError(
                    f"sim_model{i} must be a SimilarityModel, got {type(sm).__name__}; wrap it with "
                    "SimilarityModel(model, layers_to_include=[...])"
                )
        self.sim_model1 = sim_model1
        self.sim_model2 = sim_model2
        self.device = device
        self.progress = progress
        self.input_key = input_key
        self.input_fn = input_fn
        self.autocast = autocast
        self.sim_matrix: np.ndarray | None = None
        self.result: SimilarityResult | None = None

    def _make_metric(self) -> Metric:
        raise NotImplementedError("subclasses build their streaming metric here")

    def compute(self, dataloader: Iterable) -> np.ndarray:
        """Stream ``dataloader`` once through both models and return the ``(L1, L2)`` grid.

        The full :class:`~simtorch.result.SimilarityResult` (standard errors, sample counts,
        settings) is kept as :attr:`result`, the grid also as :attr:`sim_matrix`. If the
        loop is interrupted (an error, Ctrl-C), :attr:`result` holds the estimate from the
        batches that completed before the exception is re-raised.
        """
        metric = self._make_metric()
        self.result = None
        try:
            stream(
                self.sim_model1, self.sim_model2, dataloader, [metric], self.device,
                progress=self.progress, input_key=self.input_key, input_fn=self.input_fn,
                keep_inputs=getattr(metric, "needs_inputs", False), desc=metric.name,
                autocast=self.autocast,
            )
        except BaseException:
            if metric.n_batches_used:
                try:
                    self.result = metric.result()
                    self.sim_matrix = self.result.matrix
                except Exception:  # the partial result must never mask the real error
                    pass
            raise
        self.result = metric.result()
        self.sim_matrix = self.result.matrix
        return self.sim_matrix

    def plot_similarity(
        self,
        title: str | None = None,
        xlabel: str | None = None,
        ylabel: str | None = None,
        savefig: bool = False,
        save_path: str | os.PathLike = "../output",
        plot_cmap: str = "magma",
        **kwargs: Any,
    ) -> "Axes":
        """Heatmap of the last computed grid, layer names on both axes, with a colorbar.

        Arguments as in simtorch 0.2.1: with ``savefig=True`` the figure is written to
        ``save_path``, a file path (its suffix, ``.png`` or ``.pdf``, picks the format) or a
        directory (the file is then named after the title). Extra keyword arguments go to
        :func:`simtorch.plotting.plot_heatmap` (``annotate``, ``vmin``, ``vmax``, ``ax``…).
        Returns the matplotlib Axes.
        """
        if self.result is None:
            raise RuntimeError("nothing to plot yet: call .compute(dataloader) first")
        return self.result.plot(
            title=title, xlabel=xlabel, ylabel=ylabel, cmap=plot_cmap,
            save_path=Path(save_path) if savefig else None, **kwargs,
        )
