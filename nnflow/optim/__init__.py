"""nnflow.optim: optimizers, learning-rate schedules and gradient clipping.

Optimizers follow torch.optim's names, hyper-parameters and formulas, step for step, and
update the model's arrays in place from the ``{path: array}`` gradients of ``ad.grad``:

>>> import numpy as np
>>> from nnflow import ad
>>> params = {"w": np.array([1.0, -2.0])}
>>> opt = Adam(params, lr=0.1)
>>> val, g = ad.grad(lambda p: np.sum(p["w"] ** 2), params)
>>> opt.step(g[0])
>>> params["w"].round(3).tolist()
[0.9, -1.9]
"""

from .adagrad import Adagrad
from .adam import Adam, AdamW
from .clip import clip_grad_norm, clip_grad_value, global_norm
from .optimizer import Optimizer
from .rmsprop import RMSProp, RMSprop
from .schedules import (
    CosineAnnealingLR,
    ExponentialLR,
    LinearLR,
    ReduceLROnPlateau,
    Schedule,
    SequentialLR,
    StepLR,
)
from .sgd import SGD

__all__ = [
    "Adagrad",
    "Adam",
    "AdamW",
    "CosineAnnealingLR",
    "ExponentialLR",
    "LinearLR",
    "Optimizer",
    "RMSProp",
    "RMSprop",
    "ReduceLROnPlateau",
    "SGD",
    "Schedule",
    "SequentialLR",
    "StepLR",
    "clip_grad_norm",
    "clip_grad_value",
    "global_norm",
]
