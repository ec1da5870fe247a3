"""Convolution layers: ``Conv1d``, ``Conv2d``, ``ConvTranspose2d`` (NCHW, PyTorch's names).

They call the ``conv2d`` / ``conv_transpose2d`` primitives of ``nnflow.layers.convolution``,
whose derivative rules are registered with ``ad.diffrule``; ``Conv1d`` runs them on a height
of 1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import init as initializers
from ..functional import get_activation
from .convolution import conv2d, conv2d_columns, conv_output_size, conv_transpose2d, use_columns
from .model import Model, ShapeError, check_rank, describe

__all__ = ["Conv1d", "Conv2d", "ConvTranspose2d"]


def _pair(value: Any, name: str, layer: str, n: int = 2, minimum: int = 1) -> tuple[int, ...]:
    values = (value,) * n if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != n or any(not isinstance(v, (int, np.integer)) for v in values):
        raise ValueError(f"{layer}: {name} must be an int or {n} ints, got {value!r}")
    if any(v < minimum for v in values):
        raise ValueError(f"{layer}: {name} must be >= {minimum}, got {value!r}")
    return tuple(int(v) for v in values)


def _padding(padding, kernel, dilation, stride, layer: str, n: int = 2):
    """``((before, after), ...)`` per spatial axis from an int, ints, ``"same"`` or ``"valid"``."""
    if padding == "valid":
        return ((0, 0),) * n
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ValueError(f"{layer}: padding='same' needs stride 1, got stride {stride}")
        total = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        return tuple((t // 2, t - t // 2) for t in total)  # the extra one after, as PyTorch
    return tuple((p, p) for p in _pair(padding, "padding", layer, n, minimum=0))


def _check_channels(in_channels, out_channels, groups, layer):
    if in_channels <= 0 or out_channels <= 0:
        raise ValueError(
            f"{layer}: in_channels and out_channels must be positive, got {in_channels} and "
            f"{out_channels}"
        )
    if groups <= 0 or in_channels % groups or out_channels % groups:
        raise ValueError(
            f"{layer}: groups={groups} must divide in_channels={in_channels} and "
            f"out_channels={out_channels}"
        )


class _ConvBase(Model):
    """Shared construction, checks and repr of the convolutions."""

    transposed = False

    def _build(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
               bias, activation, rng, dtype, n):  # fmt: skip
        name = type(self).__name__
        _check_channels(in_channels, out_channels, groups, name)
        self.kernel_size = _pair(kernel_size, "kernel_size", name, n)
        self.stride = _pair(stride, "stride", name, n)
        self.dilation = _pair(dilation, "dilation", name, n)
        self.padding = _padding(padding, self.kernel_size, self.dilation, self.stride, name, n)
        self.padding_mode = padding if isinstance(padding, str) else None  # for the repr
        self.groups = groups
        self.in_channels, self.out_channels = in_channels, out_channels
        if self.transposed:
            shape = (in_channels, out_channels // groups) + self.kernel_size
        else:
            shape = (out_channels, in_channels // groups) + self.kernel_size
        # PyTorch's default: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)); bias the same
        fan_in = shape[1] * math.prod(self.kernel_size)
        bound = 1.0 / math.sqrt(fan_in)
        rng = initializers.as_generator(rng)
        self.weight = initializers.uniform(shape, -bound, bound, rng, dtype)
        self.bias = initializers.uniform(out_channels, -bound, bound, rng, dtype) if bias else None
        self.activation = get_activation(activation)

    def _check_input(self, x, rank: int, layout: str):
        check_rank(self, x, (rank,), layout)
        if x.shape[1] != self.in_channels:
            raise ShapeError(
                self, f"expected {self.in_channels} input channels (axis 1), got {describe(x)}"
            )

    def _activate(self, y):
        return y if self.activation is None else self.activation(y)

    def extra_repr(self) -> str:
        k = "x".join(map(str, self.kernel_size))
        parts = [f"{self.in_channels} => {self.out_channels}", k]
        if any(s != 1 for s in self.stride):
            parts.append(f"stride={_short(self.stride)}")
        if self.padding_mode == "same":
            parts.append('padding="same"')
        elif any(p != (0, 0) for p in self.padding):
            parts.append(f"padding={_short(tuple(p[0] for p in self.padding))}")
        if any(d != 1 for d in self.dilation):
            parts.append(f"dilation={_short(self.dilation)}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.bias is None:
            parts.append("bias=False")
        if self.activation is not None:
            parts.append(getattr(self.activation, "__name__", repr(self.activation)))
        return ", ".join(parts)


def _short(values: tuple) -> Any:
    return values[0] if len(set(values)) == 1 else values


class Conv2d(_ConvBase):
    """2-D convolution (cross-correlation) over ``x (N, C, H, W) -> (N, O, Ho, Wo)``.

    ``weight`` is ``(out_channels, in_channels / groups, kh, kw)``, ``bias`` ``(out_channels,)``.
    ``padding`` is an int, a pair, ``"valid"`` or ``"same"`` (stride 1; the extra row/column of
    an even kernel goes after, as in PyTorch).

    >>> conv = Conv2d(1, 16, 3, padding="same", activation="relu", rng=0)
    >>> conv
    Conv2d(1 => 16, 3x3, padding="same", relu)  # 160 parameters
    >>> conv(np.zeros((8, 1, 28, 28), np.float32)).shape
    (8, 16, 28, 28)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True,
                 activation: Any = None, *, rng: Any = None, dtype: Any = np.float32):  # fmt: skip
        self._build(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                    bias, activation, rng, dtype, 2)  # fmt: skip

    def forward(self, x: Any) -> Any:
        self._check_input(x, 4, "(N, C, H, W)")
        if any(s < 1 for s in self._out_size(x.shape)):
            raise ShapeError(self, f"input {describe(x)} is smaller than the kernel")
        cols = None
        if use_columns(x, self.weight, self.bias, self.groups):
            # the im2col matrix as its own node: the filter gradient reuses it
            cols = conv2d_columns(x, self.kernel_size, self.stride, self.padding,
                                  self.dilation, self.bias is not None)  # fmt: skip
        y = conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                   self.groups, cols)  # fmt: skip
        return self._activate(y)

    def _out_size(self, shape):
        return tuple(
            conv_output_size(
                shape[2 + a], self.kernel_size[a], self.stride[a], self.padding[a], self.dilation[a]
            )  # fmt: skip
            for a in range(len(self.kernel_size))
        )


class Conv1d(_ConvBase):
    """1-D convolution over ``x (N, C, L) -> (N, O, Lo)``; ``weight`` ``(O, C / groups, k)``.

    >>> Conv1d(4, 8, 3, rng=0)(np.zeros((2, 4, 10), np.float32)).shape
    (2, 8, 8)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True,
                 activation: Any = None, *, rng: Any = None, dtype: Any = np.float32):  # fmt: skip
        self._build(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                    bias, activation, rng, dtype, 1)  # fmt: skip

    def forward(self, x: Any) -> Any:
        self._check_input(x, 3, "(N, C, L)")
        (k,), (s,), (p,), (d,) = self.kernel_size, self.stride, self.padding, self.dilation
        if conv_output_size(x.shape[2], k, s, p, d) < 1:
            raise ShapeError(self, f"input {describe(x)} is shorter than the kernel")
        w = np.expand_dims(self.weight, 2)  # (O, C/g, 1, k): a 2-D convolution of height 1
        y = conv2d(np.expand_dims(x, 2), w, self.bias, (1, s), ((0, 0), p), (1, d), self.groups)
        return self._activate(np.squeeze(y, 2))


class ConvTranspose2d(_ConvBase):
    """Transposed 2-D convolution (the gradient of ``Conv2d`` w.r.t. its input), upsampling
    ``x (N, C, H, W)`` to ``(N, O, (H - 1) s - 2 p + d (k - 1) + output_padding + 1, ...)``.

    ``weight`` is ``(in_channels, out_channels / groups, kh, kw)`` as in PyTorch.

    >>> up = ConvTranspose2d(8, 4, 4, stride=2, padding=1, rng=0)
    >>> up(np.zeros((2, 8, 7, 7), np.float32)).shape
    (2, 4, 14, 14)
    """

    transposed = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, output_padding: Any = 0, groups: int = 1, bias: bool = True,
                 dilation: Any = 1, activation: Any = None, *, rng: Any = None,
                 dtype: Any = np.float32):  # fmt: skip
        if isinstance(padding, str):
            raise ValueError(f"ConvTranspose2d: padding must be ints, got {padding!r}")
        self._build(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                    bias, activation, rng, dtype, 2)  # fmt: skip
        self.output_padding = _pair(output_padding, "output_padding", "ConvTranspose2d", 2, 0)
        for op, s, d in zip(self.output_padding, self.stride, self.dilation, strict=True):
            if op >= max(s, d):
                raise ValueError(
                    f"ConvTranspose2d: output_padding {self.output_padding} must be smaller "
                    f"than stride {self.stride} or dilation {self.dilation}"
                )

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """The spatial output size for an ``h x w`` input.

        >>> ConvTranspose2d(1, 1, 3, stride=2, rng=0).output_size(5, 5)
        (11, 11)
        """
        geometry = (self.stride, self.padding, self.dilation, self.kernel_size,
                    self.output_padding)  # fmt: skip
        return tuple(
            (n - 1) * s - p[0] - p[1] + d * (k - 1) + op + 1
            for n, s, p, d, k, op in zip((h, w), *geometry, strict=True)
        )

    def forward(self, x: Any) -> Any:
        self._check_input(x, 4, "(N, C, H, W)")
        size = self.output_size(*x.shape[2:])
        if any(n < 1 for n in size):
            raise ShapeError(self, f"input {describe(x)} gives an empty output {size}")
        y = conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                             self.dilation, self.groups, size)  # fmt: skip
        return self._activate(y)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if any(self.output_padding):
            text += f", output_padding={_short(self.output_padding)}"
        return text
