"""Similarity metrics (import path of simtorch 0.2.1: ``from simtorch.similarity import CKA``)."""

from .base import BaseSimilarity
from .cka import CKA

__all__ = ["BaseSimilarity", "CKA"]
