"""nnflow.data: batching (``DataLoader``, ``BPTTLoader``), shipped data (the digits, a text)
and MNIST-format downloads.

>>> from nnflow.data import DataLoader, digits
>>> train = DataLoader(digits("train"), batch_size=64, seed=0)
>>> x, y = next(iter(train))
>>> x.shape, y.shape
((64, 1, 8, 8), (64,))
"""

from .bptt import BPTTLoader
from .datasets import cache_dir, digits, fashion_mnist, mnist
from .idx import IDXError, read_idx, write_idx
from .loader import DataLoader
from .text import CharVocab, nettle_manual

__all__ = [
    "BPTTLoader",
    "CharVocab",
    "DataLoader",
    "IDXError",
    "cache_dir",
    "digits",
    "fashion_mnist",
    "mnist",
    "nettle_manual",
    "read_idx",
    "write_idx",
]
