"""simtorch: layer-by-layer similarity of neural network representations (the public API).

>>> from simtorch import SimilarityModel, CKA
>>> a = SimilarityModel(model_a, model_name="A", layers_to_include=["layer1", "layer2"])
>>> b = SimilarityModel(model_b, model_name="B", layers_to_include=["layer?.*"])
>>> grid = CKA(a, b, device="cpu").compute(loader)      # numpy (La, Lb)
"""

from ._version import __version__
from . import functional
from .model import SimilarityModel
from .result import SimilarityResult, load_results, save_results
from .similarity import CKA, BaseSimilarity, DeltaCKA, InformationImbalance
from .similarity import CKNNA, RSA, MutualKNN
from .similarity import PWCCA, SVCCA, Procrustes
from .compare import compare
from .checkpoints import compare_checkpoints
from . import features
from .aggregate import average_results

__all__ = ["SimilarityModel", "SimilarityResult", "BaseSimilarity", "CKA", "DeltaCKA", "InformationImbalance",
           "compare", "functional", "__version__", "compare_checkpoints", "MutualKNN", "CKNNA", "RSA",
           "Procrustes", "SVCCA", "PWCCA", "load_results", "save_results", "features"]
__all__ += ["average_results"]
