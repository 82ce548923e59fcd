"""simtorch 0.2.1 import path: ``from simtorch.similarity.base_similarity import BaseSimilarity``."""

from .base import BaseSimilarity

__all__ = ["BaseSimilarity"]
