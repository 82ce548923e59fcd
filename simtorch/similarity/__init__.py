"""Similarity classes (import path of simtorch 0.2.1: ``from simtorch.similarity import CKA``):
thin user classes, each over one metric of :mod:`simtorch.metrics`."""

from .base import BaseSimilarity
from .cka import CKA
from .dcka import DeltaCKA
from .information_imbalance import InformationImbalance
from .neighbours import CKNNA, RSA, MutualKNN
from .shape import PWCCA, SVCCA, Procrustes

__all__ = ["BaseSimilarity", "CKA", "DeltaCKA", "InformationImbalance", "MutualKNN", "CKNNA", "RSA", "Procrustes", "SVCCA",
           "PWCCA"]
