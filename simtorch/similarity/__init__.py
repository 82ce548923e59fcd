"""Similarity metrics (import path of simtorch 0.2.1: ``from simtorch.similarity import CKA``)."""

from .base import BaseSimilarity
from .cka import CKA
from .dcka import DeltaCKA
from .information_imbalance import InformationImbalance

__all__ = ["BaseSimilarity", "CKA", "DeltaCKA", "InformationImbalance"]
