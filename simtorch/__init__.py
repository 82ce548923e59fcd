"""simtorch: layer-by-layer similarity of neural network representations.

>>> from simtorch import SimilarityModel, CKA
>>> a = SimilarityModel(model_a, model_name="A", layers_to_include=["layer1", "layer2"])
>>> b = SimilarityModel(model_b, model_name="B", layers_to_include=["layer?.*"])
>>> grid = CKA(a, b, device="cpu").compute(loader)      # numpy (La, Lb)
"""

__version__ = "0.3.0"

from . import functional
from .model import SimilarityModel
from .result import SimilarityResult
from .similarity import CKA, BaseSimilarity, DeltaCKA, InformationImbalance
from .compare import compare

__all__ = ["SimilarityModel", "SimilarityResult", "BaseSimilarity", "CKA", "DeltaCKA", "InformationImbalance",
           "compare", "functional", "__version__"]

from .checkpoints import compare_checkpoints  # noqa: E402  (issue 4: research workflows)

__all__ += ["compare_checkpoints"]
