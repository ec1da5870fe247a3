"""nnflow.layers: ``Model`` and the Flux-style layer stack (batch first, NCHW, PyTorch names).

>>> import numpy as np
>>> from nnflow.layers import Chain, Conv2d, Flatten, Linear, MaxPool2d
>>> model = Chain(Conv2d(1, 4, 3, activation="relu", rng=0), MaxPool2d(2), Flatten(),
...               Linear(4 * 13 * 13, 10, rng=1))
>>> model(np.zeros((2, 1, 28, 28), np.float32)).shape
(2, 10)
"""

from .chain import Chain, Flatten
from .conv import Conv1d, Conv2d, ConvTranspose2d
from .convolution import conv2d, conv2d_weight, conv_transpose2d
from .dropout import Dropout
from .embedding import Embedding
from .linear import Linear, linear
from .model import LayerError, Model, ShapeError
from .norm import BatchNorm, BatchNorm1d, BatchNorm2d, LayerNorm
from .pooling import AdaptiveAvgPool2d, AvgPool2d, GlobalAvgPool2d, MaxPool2d
from .pooling_ops import avg_pool2d, max_pool2d
from .recurrent import GRU, LSTM, RNN, GRUCell, LSTMCell, Recur, RNNCell

__all__ = [
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "Chain",
    "Conv1d",
    "Conv2d",
    "ConvTranspose2d",
    "Dropout",
    "Embedding",
    "Flatten",
    "GRU",
    "GRUCell",
    "GlobalAvgPool2d",
    "LSTM",
    "LSTMCell",
    "LayerError",
    "LayerNorm",
    "Linear",
    "MaxPool2d",
    "Model",
    "RNN",
    "RNNCell",
    "Recur",
    "ShapeError",
    "avg_pool2d",
    "conv2d",
    "conv2d_weight",
    "conv_transpose2d",
    "linear",
    "max_pool2d",
]
