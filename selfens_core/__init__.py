"""selfens: self-ensembles in PyTorch — several member networks in one model, trained together, combined at
inference.

>>> model = selfens_core.create(name, num_classes=10, in_chans=1)   # a name from list_models()
>>> probs = model.predict(images, members=4)   # (B, 10) from the first four members
"""
from .combiners import Combiner
from .ensemble import SelfEnsemble
from .factory import create, list_models
from .hookspecs import hookimpl
from .objectives import Distiller
from .samplers import Pass, Sampler

__all__ = ["Combiner", "Distiller", "Pass", "Sampler", "SelfEnsemble", "create", "hookimpl", "list_models"]
__version__ = "0.1.0"
