"""Similarity measures as plug-ins on one contract (:mod:`simtorch.metrics.base`).

Each module here is one measure: it declares its sum states and needs, updates them from
a batch's Grams (or features), and computes its grid as tensors. Importing this package
registers every measure in :data:`REGISTRY` (``compare``, checkpoints and the CLI read it).
A new measure is one file here (``@register`` on the class), one file in
:mod:`simtorch.functional` for its math, and one thin user class in
:mod:`simtorch.similarity`.
"""

from .base import Binding, Computed, LayerNote, Metric, Needs
from .registry import REGISTRY, canonical_names, metric_class, register
from .cka import CKAMetric, HSICMetric  # noqa: E402  (registers)
from .dcka import DeltaCKAMetric  # noqa: E402
from .ii import InformationImbalanceMetric  # noqa: E402
from .neighbours import CKNNAMetric, MutualKNNMetric, SetMetric  # noqa: E402
from .rsa import RSAMetric  # noqa: E402
from .shape import AllSamplesMetric, ProcrustesCosineMetric, ProcrustesEuclideanMetric, ProcrustesMetric  # noqa: E402
from .cca import PWCCAMetric, SVCCAMetric  # noqa: E402

__all__ = ["Binding", "Computed", "LayerNote", "Metric", "Needs", "REGISTRY", "canonical_names", "metric_class",
           "register", "CKAMetric", "HSICMetric", "DeltaCKAMetric", "InformationImbalanceMetric",
           "SetMetric", "MutualKNNMetric", "CKNNAMetric", "RSAMetric",
           "AllSamplesMetric", "ProcrustesMetric", "ProcrustesEuclideanMetric", "ProcrustesCosineMetric",
           "SVCCAMetric", "PWCCAMetric"]
