"""nnflow: a NumPy/CuPy neural-network framework on its own tape-based autodiff."""

from . import ad, functional, init, layers, losses
from .layers import Model

__version__ = "0.1.0"
__all__ = ["ad", "__version__", "Model", "layers", "functional", "losses", "init"]
