"""``Linear``: ``y = activation(x W^T + b)``, with ``linear`` a primitive and its own rules.

Recording ``x @ W.T + b`` as one tape node (instead of transpose, matmul, add) keeps eager
overhead low, and its rules are one GEMM each: ``dx = dy W``, ``dW = dy^T x`` (batch axes
folded into one), ``db = sum(dy)``. They are written with NumPy calls, so the backward pass is
traced and second derivatives come from the rules of ``matmul`` and ``sum``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import ad
from .. import init as initializers
from ..ad.rules import Case, register_cases
from ..backend import get_array_module
from ..functional import get_activation
from .model import Model, check_features

__all__ = ["linear", "Linear"]


@ad.primitive
def linear(x: Any, weight: Any, bias: Any = None, *, out: Any = None) -> Any:
    """``x @ weight.T + bias`` for ``x`` of shape ``(..., in)`` and ``weight`` ``(out, in)``.

    ``out`` (an array of the result's shape and dtype, not overlapping the inputs) is what a
    compiled tape passes so the result goes into a planned buffer instead of a new array.

    >>> linear(np.ones((2, 3)), np.ones((4, 3)), np.zeros(4)).shape
    (2, 4)
    """
    if x.ndim > 2:  # one GEMM over all leading axes (matmul would loop over them)
        y = x.reshape(-1, x.shape[-1]) @ weight.T
        y = y.reshape(x.shape[:-1] + (weight.shape[0],))
        if out is not None:
            out[...] = y
            y = out
    elif out is not None:
        y = get_array_module(x).matmul(x, weight.T, out=out)
    else:
        y = x @ weight.T
    if bias is not None:
        y += bias
    return y


linear.__nnflow_out_kind__ = "out"  # the memory planner may hand it a buffer


def _linear_dx(dy, y, x, weight, bias=None):
    return dy @ weight


def _linear_dweight(dy, y, x, weight, bias=None):
    out_features, in_features = weight.shape
    return np.reshape(dy, (-1, out_features)).T @ np.reshape(x, (-1, in_features))


def _linear_dbias(dy, y, x, weight, bias=None):
    return np.sum(np.reshape(dy, (-1, weight.shape[0])), axis=0)


ad.diffrule(linear, "x")(_linear_dx)
ad.diffrule(linear, "weight")(_linear_dweight)
ad.diffrule(linear, "bias")(_linear_dbias)


class Linear(Model):
    """Fully connected layer ``y = activation(x W^T + b)``, ``x`` of shape ``(..., in)``.

    ``weight`` is ``(out_features, in_features)`` and ``bias`` ``(out_features,)``, both drawn
    from ``U(-1/sqrt(in), 1/sqrt(in))`` as in PyTorch.

    Args:
        in_features, out_features: sizes of the last axis of the input and the output.
        bias: whether to add a bias.
        activation: a function (``nnflow.functional.relu``), a name (``"relu"``) or ``None``.
        rng: generator or seed for the initial weights. dtype: parameter dtype.

    >>> layer = Linear(784, 128, activation="relu", rng=0)
    >>> layer
    Linear(784 => 128, relu)  # 100,480 parameters
    >>> layer(np.ones((32, 784), np.float32)).shape
    (32, 128)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: Any = None,
        *,
        rng: Any = None,
        dtype: Any = np.float32,
    ):
        if in_features <= 0 or out_features <= 0:
            raise ValueError(
                f"Linear: in_features and out_features must be positive, got "
                f"{in_features} and {out_features}"
            )
        rng = initializers.as_generator(rng)
        bound = 1.0 / math.sqrt(in_features)
        shape = (out_features, in_features)
        self.weight = initializers.uniform(shape, -bound, bound, rng, dtype)
        self.bias = initializers.uniform(out_features, -bound, bound, rng, dtype) if bias else None
        self.activation = get_activation(activation)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: Any) -> Any:
        check_features(self, x, self.weight.shape[1])
        y = linear(x, self.weight, self.bias)
        return y if self.activation is None else self.activation(y)

    def extra_repr(self) -> str:
        text = f"{self.in_features} => {self.out_features}"
        if self.bias is None:
            text += ", bias=False"
        if self.activation is not None:
            text += f", {getattr(self.activation, '__name__', repr(self.activation))}"
        return text


def _cases():
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(4, 3)), rng.normal(size=(2, 3)), rng.normal(size=2)
    x3 = rng.normal(size=(2, 3, 3))
    return [
        Case(linear, linear, (x, w, b), "matrix"),
        Case(linear, linear, (x3, w, b), "batched"),
        Case(linear, lambda x, w: linear(x, w), (rng.normal(size=3), w), "vector-no-bias"),
    ]


register_cases(_cases())
