"""BaseSimilarity: the simtorch 0.2.1 class interface, generic over one metric class."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..engine import RunOptions
from ..metrics.base import Metric
from ..model import SimilarityModel
from ..result import SimilarityResult
from ..runner import run_metrics

if TYPE_CHECKING:
    import torch
    from matplotlib.axes import Axes

__all__ = ["BaseSimilarity"]


class BaseSimilarity:
    """Compare every chosen layer of one model with every chosen layer of another.

    A subclass only names its metric class (``metric_class``) and which of the metric's
    options may be given positionally after ``device`` (``positional``, for 0.2.1 call
    forms). Every other keyword is either a run option (:class:`~simtorch.engine.RunOptions`:
    ``progress``, ``input_key``, ``input_fn``, ``autocast``) or an option of the metric;
    both are validated here, once, when the object is built.

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
        The two wrapped models (rows and columns of the grid). Passing the same object
        twice compares a model with itself in one forward pass per batch.
    device : str or torch.device, optional
        Where the similarity sums are computed, and where models without their own
        ``SimilarityModel(device=...)`` run. Default: the device of model 1's parameters.
    progress, input_key, input_fn, autocast, state_path, save_every
        Run options, see :class:`~simtorch.engine.RunOptions` (``state_path`` makes
        :meth:`compute` resumable).
    """

    similarity_name: ClassVar[str] = "base"
    metric_class: ClassVar[type[Metric] | None] = None
    positional: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        sim_model1: SimilarityModel,
        sim_model2: SimilarityModel,
        device: "str | torch.device | None" = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        for i, sm in enumerate((sim_model1, sim_model2), 1):
            if not isinstance(sm, SimilarityModel):
                raise TypeError(
                    f"sim_model{i} must be a SimilarityModel, got {type(sm).__name__}; wrap it with "
                    "SimilarityModel(model, layers_to_include=[...])"
                )
        if self.metric_class is None:
            raise TypeError(f"{type(self).__name__} names no metric_class")
        name = type(self).__name__
        if len(args) > len(self.positional):
            raise TypeError(f"{name} takes at most {3 + len(self.positional)} positional arguments "
                            f"(sim_model1, sim_model2, device{''.join(', ' + p for p in self.positional)})")
        for key, value in zip(self.positional, args):
            if key in kwargs:
                raise TypeError(f"{name} got {key!r} both positionally and as a keyword")
            kwargs[key] = value
        run, options = RunOptions.split(kwargs)
        self.sim_model1 = sim_model1
        self.sim_model2 = sim_model2
        self.options = RunOptions(device=device, **run)
        self.metric_options = options
        try:
            self.metric = self.metric_class(**options)
        except TypeError as exc:
            raise TypeError(f"{name}: {exc}; run options are {list(RunOptions.names())}") from None
        self.sim_matrix: np.ndarray | None = None
        self.result: SimilarityResult | None = None

    @property
    def device(self) -> Any:
        return self.options.device

    @property
    def progress(self) -> bool:
        return self.options.progress

    def __getattr__(self, name: str) -> Any:
        # the metric's options read as attributes, as in 0.2.1 (``sim.unbiased``)
        options = self.__dict__.get("metric_options")
        metric = self.__dict__.get("metric")
        if metric is not None and not name.startswith("_") and hasattr(metric, name):
            return getattr(metric, name)
        if options is not None and name in options:
            return options[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def compute(self, dataloader: Iterable) -> np.ndarray:
        """Stream ``dataloader`` once through both models and return the ``(L1, L2)`` grid.

        The full :class:`~simtorch.result.SimilarityResult` (standard errors, sample counts,
        settings) is kept as :attr:`result`, the grid also as :attr:`sim_matrix`. If the
        loop is interrupted (an error, Ctrl-C), :attr:`result` holds the estimate from the
        batches that completed (marked ``settings["partial"] = True``) before the exception
        is re-raised; ``settings["stopped_by"]`` names the exception. A NaN/inf batch found
        late on an accelerator is rolled out of the sums before that.

        With ``state_path=...`` (a run option of the constructor, with ``save_every``; see
        :class:`~simtorch.engine.RunOptions`) the pass saves its sums as it goes, and a
        later ``compute`` with the same models, options and loader resumes after the
        batches already counted.
        """
        self.result = None
        options = self.options if self.options.desc else RunOptions(**{**vars(self.options), "desc": self.metric.name})
        try:
            res = run_metrics(self.sim_model1, self.sim_model2, dataloader, {"m": self.metric}, options)
        except BaseException as exc:
            partial = getattr(exc, "simtorch_partial", {}).get("m")
            if partial is not None:
                self.result = partial
                self.sim_matrix = partial.matrix
            raise
        self.result = res["m"]
        self.sim_matrix = self.result.matrix
        return self.sim_matrix

    def plot_similarity(
        self,
        title: str | None = None,
        xlabel: str | None = None,
        ylabel: str | None = None,
        savefig: bool = False,
        save_path: str | os.PathLike | None = None,
        plot_cmap: str = "magma",
        **kwargs: Any,
    ) -> "Axes":
        """Heatmap of the last computed grid, layer names on both axes, with a colorbar.

        Arguments as in simtorch 0.2.1: with ``savefig=True`` the figure is written to
        ``save_path``, a file path (its suffix, ``.png`` or ``.pdf``, picks the format) or a
        directory (the file is then named after the title). Without ``save_path`` it goes
        to ``../output`` (0.2.1's default, relative to the working directory), and the
        path of the file written is printed. Extra keyword arguments go to
        :func:`simtorch.plotting.plot_heatmap` (``annotate``, ``vmin``, ``vmax``, ``ax``…).
        Returns the matplotlib Axes.
        """
        if self.result is None:
            raise RuntimeError("nothing to plot yet: call .compute(dataloader) first")
        path = None
        if savefig:
            from ..plotting import resolve_save_path

            if title is None:
                title = f"{self.result.metric}: {self.result.model_a} vs {self.result.model_b}"
            path = resolve_save_path("../output" if save_path is None else save_path, title)
        ax = self.result.plot(
            title=title, xlabel=xlabel, ylabel=ylabel, cmap=plot_cmap, save_path=path, **kwargs,
        )
        if savefig and save_path is None:
            print(f"simtorch: figure saved to {path.resolve()} (save_path defaults to '../output', as in "  # type: ignore[union-attr]
                  "simtorch 0.2.1; pass save_path=... to choose)")
        return ax
