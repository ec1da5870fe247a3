"""Loss functions. Each reduces with ``reduction="mean"`` (default), ``"sum"`` or ``"none"``.

All are compositions of traced NumPy calls (gradients come from the AD core), written to stay
finite for extreme inputs: cross-entropies work on logits through ``logsumexp`` /
``logaddexp``, never through ``log(softmax)`` or ``log(sigmoid)``.

>>> import numpy as np
>>> logits, labels = np.array([[1000.0, -1000.0]]), np.array([1])
>>> float(cross_entropy(logits, labels))
2000.0
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import ad
from .ad.rules import Case, register_cases
from .backend import get_array_module
from .functional import log_softmax
from .jit import flat_views
from .reduction_kernels import SUM_SQUARES

__all__ = [
    "mse",
    "sum_squares",
    "cross_entropy",
    "nll",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "gaussian_kl",
]

Array = Any
_REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: Array, reduction: str, name: str) -> Array:
    if reduction == "mean":
        return np.mean(loss)
    if reduction == "sum":
        return np.sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _same_shape(name: str, a: Array, b: Array, what=("input", "target")) -> None:
    if tuple(np.shape(a)) != tuple(np.shape(b)):
        raise ValueError(
            f"{name}: {what[0]} and {what[1]} must have the same shape, got "
            f"{tuple(np.shape(a))} and {tuple(np.shape(b))}"
        )


def mse(input: Array, target: Array, reduction: str = "mean") -> Array:  # noqa: A002
    """Mean squared error ``(input - target)^2``.

    >>> float(mse(np.array([1.0, 3.0]), np.array([0.0, 0.0])))
    5.0
    """
    _same_shape("mse", input, target)
    diff = input - target
    if reduction == "mean":
        return sum_squares(diff) / np.size(diff)  # (empty: NaN, as np.mean)
    if reduction == "sum":
        return sum_squares(diff)
    return _reduce(diff * diff, reduction, "mse")


@ad.primitive
def sum_squares(x: Array) -> Array:
    """``sum(x * x)`` as a 0-d array of ``x``'s dtype (the squared error's reduction): one
    Numba pass with a float64 accumulator on dense NumPy float arrays
    (:mod:`nnflow.reduction_kernels`), else ``sum(x * x)``. Its rule is ``2 x dy``.

    >>> float(sum_squares(np.array([3.0, 4.0])))
    25.0
    """
    fused = SUM_SQUARES.get(x)
    flat = None if fused is None else flat_views(x)
    if flat is None:
        return get_array_module(x).sum(x * x)
    return np.asarray(fused(flat[0]), dtype=x.dtype)


@ad.diffrule(sum_squares, "x")
def _sum_squares_dx(dy, y, x):
    return x * (2 * dy)


register_cases(
    [Case(sum_squares, sum_squares, (np.random.default_rng(0).normal(size=(3, 4)),), "matrix")]
)


def _kind(x: Array) -> str:
    """The dtype kind of an array, a tracer or a list (``"i"``, ``"f"``...)."""
    dtype = getattr(x, "dtype", None)
    return np.dtype(dtype if dtype is not None else np.asarray(x).dtype).kind


def _check_labels(name: str, scores: Array, labels: Array) -> None:
    kind = _kind(labels)
    if kind not in "iu":
        raise TypeError(f"{name}: labels must be integers (class indices), got dtype {kind!r}")
    expected = (np.shape(scores)[0],) + tuple(np.shape(scores)[2:])
    if np.ndim(scores) < 2 or tuple(np.shape(labels)) != expected:
        raise ValueError(
            f"{name}: scores of shape (N, C, ...) need labels of shape (N, ...); got scores "
            f"{tuple(np.shape(scores))} and labels {tuple(np.shape(labels))}"
        )


def _pick(logp: Array, labels: Array) -> Array:
    """``logp[n, labels[n], ...]`` along the class axis 1."""
    return np.squeeze(np.take_along_axis(logp, np.expand_dims(labels, 1), axis=1), 1)


def nll(log_probs: Array, labels: Array, reduction: str = "mean") -> Array:
    """Negative log-likelihood ``-log_probs[n, labels[n]]`` of log-probabilities ``(N, C, ...)``.

    >>> float(nll(np.log(np.array([[0.5, 0.5]])), np.array([0])))
    0.6931471805599453
    """
    _check_labels("nll", log_probs, labels)
    return _reduce(-_pick(log_probs, labels), reduction, "nll")


def cross_entropy(
    logits: Array, labels: Array, reduction: str = "mean", label_smoothing: float = 0.0
) -> Array:
    """Softmax cross-entropy of ``logits (N, C, ...)`` against integer ``labels (N, ...)``, or
    against class probabilities of the logits' shape.

    With ``label_smoothing = e`` the target is ``(1 - e) one_hot + e / C`` (PyTorch's
    definition). Stable for any logits (computed through ``log_softmax``).

    >>> round(float(cross_entropy(np.array([[0.0, 0.0]]), np.array([1]))), 6)
    0.693147
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    logp = log_softmax(logits, axis=1)
    classes = np.shape(logits)[1] if np.ndim(logits) > 1 else 1
    if _kind(labels) == "f":
        _same_shape("cross_entropy", logits, labels, ("logits", "probability targets"))
        target = labels
        if label_smoothing:
            target = target * (1.0 - label_smoothing) + label_smoothing / classes
        return _reduce(-np.sum(target * logp, axis=1), reduction, "cross_entropy")
    _check_labels("cross_entropy", logits, labels)
    loss = -_pick(logp, labels)
    if label_smoothing:
        smooth = -np.mean(logp, axis=1)
        loss = (1.0 - label_smoothing) * loss + label_smoothing * smooth
    return _reduce(loss, reduction, "cross_entropy")


def binary_cross_entropy(input: Array, target: Array, reduction: str = "mean") -> Array:  # noqa: A002
    """``-(t log p + (1 - t) log(1 - p))`` of probabilities ``p``; the logs are clamped at
    ``-100`` as in PyTorch, so ``p`` of exactly 0 or 1 gives a finite loss. Prefer
    :func:`binary_cross_entropy_with_logits` when you have logits.

    >>> round(float(binary_cross_entropy(np.array([0.5]), np.array([1.0]))), 6)
    0.693147
    """
    _same_shape("binary_cross_entropy", input, target)
    with np.errstate(divide="ignore"):  # log(0) = -inf, clamped just below
        log_p = np.maximum(np.log(input), -100.0)
        log_q = np.maximum(np.log(1.0 - input), -100.0)
    return _reduce(-(target * log_p + (1.0 - target) * log_q), reduction, "binary_cross_entropy")


def binary_cross_entropy_with_logits(
    input: Array,  # noqa: A002
    target: Array,
    reduction: str = "mean",
    pos_weight: Array | None = None,
) -> Array:
    """Binary cross-entropy of ``sigmoid(input)``, computed stably as
    ``(1 - t) x + (1 + (w - 1) t) log(1 + exp(-x))`` (``w = pos_weight``, default 1).

    >>> float(binary_cross_entropy_with_logits(np.array([-1000.0]), np.array([1.0])))
    1000.0
    """
    _same_shape("binary_cross_entropy_with_logits", input, target)
    softplus_neg = np.logaddexp(0, -input)  # -log(sigmoid(x)), finite for any x
    if pos_weight is None:
        loss = (1.0 - target) * input + softplus_neg
    else:
        loss = (1.0 - target) * input + (1.0 + (pos_weight - 1.0) * target) * softplus_neg
    return _reduce(loss, reduction, "binary_cross_entropy_with_logits")


def gaussian_kl(mu: Array, logvar: Array, reduction: str = "mean") -> Array:
    """KL divergence ``KL(N(mu, exp(logvar)) || N(0, 1))`` of a VAE's posterior, summed over
    the last (latent) axis: ``-0.5 sum(1 + logvar - mu^2 - exp(logvar))``; the reduction then
    runs over the remaining (batch) axes.

    >>> float(gaussian_kl(np.zeros((4, 2)), np.zeros((4, 2))))
    0.0
    """
    _same_shape("gaussian_kl", mu, logvar, ("mu", "logvar"))
    kl = -0.5 * np.sum(1.0 + logvar - mu * mu - np.exp(logvar), axis=-1)
    return _reduce(kl, reduction, "gaussian_kl")
