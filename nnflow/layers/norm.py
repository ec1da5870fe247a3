"""Normalisation layers: ``BatchNorm`` (1-d and 2-d inputs) and ``LayerNorm``."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import ad
from .. import init as initializers
from .model import Model, ShapeError, check_features, check_rank, describe

__all__ = ["BatchNorm", "BatchNorm1d", "BatchNorm2d", "LayerNorm"]


class BatchNorm(Model):
    """Batch normalisation over axis 1 of ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)`` inputs.

    Training: ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the batch's statistics
    over every axis but 1, and the buffers ``running_mean`` / ``running_var`` (unbiased
    variance) updated as ``(1 - momentum) * running + momentum * batch`` (``momentum=None``:
    a cumulative average). Evaluation: the running statistics are used instead. The buffers are
    saved with the model, never trained, and do not appear in gradients.

    >>> bn = BatchNorm(3)
    >>> y = bn(np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32))
    >>> bool(abs(y.mean(axis=0)).max() < 1e-5), bn.running_mean.shape
    (True, (3,))
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        dtype: Any = np.float32,
    ):
        if num_features <= 0:
            raise ValueError(f"BatchNorm: num_features must be positive, got {num_features}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNorm: momentum must be in [0, 1] or None, got {momentum}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = initializers.ones(num_features, dtype) if affine else None
        self.bias = initializers.zeros(num_features, dtype) if affine else None
        self.track_running_stats = track_running_stats
        if track_running_stats:
            self.register_buffer("running_mean", initializers.zeros(num_features, dtype))
            self.register_buffer("running_var", initializers.ones(num_features, dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    def forward(self, x: Any) -> Any:
        check_rank(self, x, (2, 3, 4), "(N, C), (N, C, L) or (N, C, H, W)")
        check_features(self, x, self.num_features, axis=1)
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, self.num_features) + (1,) * (x.ndim - 2)
        if self.training or not self.track_running_stats:
            count = x.size // self.num_features
            if count < 2:
                raise ShapeError(
                    self, f"needs more than one value per channel in training, got {describe(x)}"
                )
            mean = np.mean(x, axis=axes, keepdims=True)
            centered = x - mean
            var = np.mean(centered * centered, axis=axes, keepdims=True)
            if self.track_running_stats:
                self._update(np.reshape(mean, -1), np.reshape(var, -1) * (count / (count - 1)))
            scale = 1.0 / np.sqrt(var + self.eps)
        else:
            centered = x - np.reshape(self.running_mean, shape)
            scale = np.reshape(1.0 / np.sqrt(self.running_var + self.eps), shape)
        if self.weight is not None:
            scale = scale * np.reshape(self.weight, shape)
        y = centered * scale
        return y if self.bias is None else y + np.reshape(self.bias, shape)

    def _update(self, mean, var):
        mean, var = ad.stop_gradient(mean), ad.stop_gradient(var)
        self.num_batches_tracked = self.num_batches_tracked + 1
        m = self.momentum
        if m is None:  # cumulative moving average, in the buffers' dtype
            m = (1.0 / self.num_batches_tracked).astype(self.running_mean.dtype)
        self.running_mean = (1 - m) * self.running_mean + m * mean
        self.running_var = (1 - m) * self.running_var + m * var

    def extra_repr(self) -> str:
        text = str(self.num_features)
        if self.eps != 1e-5:
            text += f", eps={self.eps}"
        if self.momentum != 0.1:
            text += f", momentum={self.momentum}"
        return text + ("" if self.weight is not None else ", affine=False")


BatchNorm1d = BatchNorm
BatchNorm2d = BatchNorm


class LayerNorm(Model):
    """Layer normalisation over the trailing ``normalized_shape`` axes:
    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, the same in training and evaluation.

    >>> ln = LayerNorm(4)
    >>> y = ln(np.arange(8.0, dtype=np.float32).reshape(2, 4))
    >>> bool(abs(y.mean(axis=-1)).max() < 1e-6), ln.weight.shape
    (True, (4,))
    """

    def __init__(
        self,
        normalized_shape: Any,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        dtype: Any = np.float32,
    ):
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
        self.normalized_shape = tuple(int(n) for n in shape)
        if not self.normalized_shape or min(self.normalized_shape) <= 0:
            raise ValueError(f"LayerNorm: normalized_shape must be positive, got {shape}")
        self.eps = eps
        affine = elementwise_affine
        self.weight = initializers.ones(self.normalized_shape, dtype) if affine else None
        self.bias = initializers.zeros(self.normalized_shape, dtype) if affine and bias else None

    def forward(self, x: Any) -> Any:
        k = len(self.normalized_shape)
        if tuple(np.shape(x)[-k:]) != self.normalized_shape or np.ndim(x) < k:
            raise ShapeError(
                self,
                f"expected input (..., {', '.join(map(str, self.normalized_shape))}), "
                f"got {describe(x)}",
            )
        axes = tuple(range(-k, 0))
        mean = np.mean(x, axis=axes, keepdims=True)
        centered = x - mean
        var = np.mean(centered * centered, axis=axes, keepdims=True)
        y = centered * (1.0 / np.sqrt(var + self.eps))
        if self.weight is not None:
            y = y * self.weight
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return ", ".join(map(str, self.normalized_shape))
