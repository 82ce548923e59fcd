"""simtorch 0.2.1 import path: ``from simtorch.similarity.delta_cka import DeltaCKA``."""

from .dcka import DeltaCKA

__all__ = ["DeltaCKA"]
