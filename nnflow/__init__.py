"""nnflow: a NumPy/CuPy neural-network framework on its own tape-based autodiff."""

from . import ad, data, functional, init, layers, losses, optim, train
from .layers import Model
from .train import Trainer, load, save

__version__ = "0.1.0"
__all__ = [
    "ad",
    "__version__",
    "Model",
    "layers",
    "functional",
    "losses",
    "init",
    "optim",
    "data",
    "train",
    "Trainer",
    "save",
    "load",
]
