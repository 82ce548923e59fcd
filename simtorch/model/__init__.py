"""SimilarityModel (import paths of simtorch 0.2.1: ``simtorch.model`` and
``simtorch.model.sim_model``)."""

from .sim_model import (
    LayerSpec,
    SimilarityModel,
    call_model,
    first_tensor,
    glob_to_regex,
    unwrap_model,
)

__all__ = ["SimilarityModel", "LayerSpec", "first_tensor", "glob_to_regex", "unwrap_model", "call_model"]
