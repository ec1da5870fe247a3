"""Elementwise rules: unary and binary ufuncs, selection (where, clip, maximum), casts.

``rule(dy, y, *inputs) -> d input``. Binary rules return output-shaped cotangents; the engine
sums broadcast axes back to each input's shape. These Jacobians are diagonal, so forward mode
reuses the same rules (``elementwise=True``).
"""

from __future__ import annotations

import math

import numpy as np

from ..backward import UNIT_RULES
from ..registry import primitive, register, register_decomposition, register_nondifferentiable
from .cases import Case, positive, sample

LN2, LN10 = math.log(2.0), math.log(10.0)

UNARY = {
    np.exp: lambda dy, y, x: dy * y,  # reuse the output, don't recompute exp
    np.exp2: lambda dy, y, x: dy * y * LN2,
    np.expm1: lambda dy, y, x: dy * (y + 1),
    np.log: lambda dy, y, x: dy / x,
    np.log2: lambda dy, y, x: dy / (x * LN2),
    np.log10: lambda dy, y, x: dy / (x * LN10),
    np.log1p: lambda dy, y, x: dy / (x + 1),
    np.sqrt: lambda dy, y, x: dy * 0.5 / y,
    np.cbrt: lambda dy, y, x: dy / (3 * y * y),
    np.square: lambda dy, y, x: dy * 2 * x,
    np.absolute: lambda dy, y, x: dy * np.sign(x),
    np.fabs: lambda dy, y, x: dy * np.sign(x),
    np.sin: lambda dy, y, x: dy * np.cos(x),
    np.cos: lambda dy, y, x: -dy * np.sin(x),
    np.tan: lambda dy, y, x: dy * (1 + y * y),
    np.arcsin: lambda dy, y, x: dy / np.sqrt(1 - x * x),
    np.arccos: lambda dy, y, x: -dy / np.sqrt(1 - x * x),
    np.arctan: lambda dy, y, x: dy / (1 + x * x),
    np.sinh: lambda dy, y, x: dy * np.cosh(x),
    np.cosh: lambda dy, y, x: dy * np.sinh(x),
    np.tanh: lambda dy, y, x: dy * (1 - y * y),
    np.arcsinh: lambda dy, y, x: dy / np.sqrt(x * x + 1),
    np.arccosh: lambda dy, y, x: dy / np.sqrt(x * x - 1),
    np.arctanh: lambda dy, y, x: dy / (1 - x * x),
    np.reciprocal: lambda dy, y, x: -dy * y * y,
    np.negative: lambda dy, y, x: -dy,
    np.positive: lambda dy, y, x: dy,
    np.deg2rad: lambda dy, y, x: dy * (math.pi / 180),
    np.rad2deg: lambda dy, y, x: dy * (180 / math.pi),
}


def _power_base(dy, y, a, b):
    return dy * b * np.power(a, b - 1)


def _power_exponent(dy, y, a, b):
    # d/db a**b = a**b log a, defined for a > 0; elsewhere the exponent gets no gradient
    safe = np.where(a > 0, a, 1)
    return dy * y * np.log(safe)


def _float_power_base(dy, y, a, b):
    return dy * b * np.float_power(a, b - 1)


def _max_share(a, b):
    """1 where ``a`` wins, 0.5 on ties (the gradient is split, as PyTorch does), else 0."""
    return np.where(a == b, 0.5, 1.0) * (a >= b)


BINARY = {  # (d first, d second)
    np.add: (lambda dy, y, a, b: dy, lambda dy, y, a, b: dy),
    np.subtract: (lambda dy, y, a, b: dy, lambda dy, y, a, b: -dy),
    np.multiply: (lambda dy, y, a, b: dy * b, lambda dy, y, a, b: dy * a),
    np.divide: (lambda dy, y, a, b: dy / b, lambda dy, y, a, b: -dy * y / b),
    np.power: (_power_base, _power_exponent),
    np.float_power: (_float_power_base, _power_exponent),
    np.maximum: (
        lambda dy, y, a, b: dy * _max_share(a, b),
        lambda dy, y, a, b: dy * _max_share(b, a),
    ),
    np.minimum: (
        lambda dy, y, a, b: dy * _max_share(b, a),
        lambda dy, y, a, b: dy * _max_share(a, b),
    ),
    np.fmax: (lambda dy, y, a, b: dy * _max_share(a, b), lambda dy, y, a, b: dy * _max_share(b, a)),
    np.fmin: (lambda dy, y, a, b: dy * _max_share(b, a), lambda dy, y, a, b: dy * _max_share(a, b)),
    np.hypot: (lambda dy, y, a, b: dy * a / y, lambda dy, y, a, b: dy * b / y),
    np.logaddexp: (lambda dy, y, a, b: dy * np.exp(a - y), lambda dy, y, a, b: dy * np.exp(b - y)),
    np.logaddexp2: (
        lambda dy, y, a, b: dy * np.exp2(a - y),
        lambda dy, y, a, b: dy * np.exp2(b - y),
    ),
    np.arctan2: (
        lambda dy, y, a, b: dy * b / (a * a + b * b),
        lambda dy, y, a, b: -dy * a / (a * a + b * b),
    ),
    np.remainder: (lambda dy, y, a, b: dy, lambda dy, y, a, b: -dy * np.floor_divide(a, b)),
    np.fmod: (lambda dy, y, a, b: dy, lambda dy, y, a, b: -dy * np.trunc(a / b)),
}

NO_GRADIENT = [
    np.sign, np.floor, np.ceil, np.rint, np.trunc, np.round, np.fix, np.floor_divide,
    np.isnan, np.isinf, np.isfinite, np.signbit, np.heaviside, np.isclose,
    np.equal, np.not_equal, np.less, np.less_equal, np.greater, np.greater_equal,
    np.logical_and, np.logical_or, np.logical_xor, np.logical_not,
    np.bitwise_and, np.bitwise_or, np.bitwise_xor, np.invert,
    np.argmax, np.argmin, np.argsort, np.searchsorted, np.count_nonzero, np.all, np.any,
    np.nonzero, np.flatnonzero, np.unique, np.bincount, np.digitize,
]  # fmt: skip


# -- selection --------------------------------------------------------------------------------
def _where(condition, x=None, y=None):
    from ..tracer import record

    if x is None and y is None:
        return np.nonzero(condition)
    return record(np.where, (condition, x, y), None)


def _clip_bounds(a_min, a_max, kwargs):
    lo = kwargs.get("min", a_min)
    hi = kwargs.get("max", a_max)
    none = np._NoValue
    return (None if lo is none else lo), (None if hi is none else hi)


def _clip_a(dy, y, a, a_min=None, a_max=None, out=None, **kwargs):
    lo, hi = _clip_bounds(a_min, a_max, kwargs)
    inside = True
    if lo is not None:
        inside = inside & (a >= lo)
    if hi is not None:
        inside = inside & (a <= hi)
    return dy * inside


def _clip_min(dy, y, a, a_min=None, a_max=None, out=None, **kwargs):
    lo, hi = _clip_bounds(a_min, a_max, kwargs)
    below = a < lo
    return dy * (below if hi is None else below & (lo <= hi))


def _clip_max(dy, y, a, a_min=None, a_max=None, out=None, **kwargs):
    lo, hi = _clip_bounds(a_min, a_max, kwargs)
    return dy * ((a > hi) | (hi < lo) if lo is not None else a > hi)


@primitive
def astype(x, dtype):
    """``x.astype(dtype)`` as a recorded operation (casting back on the way down).

    >>> astype(np.ones(2), np.float32).dtype
    dtype('float32')
    """
    return x.astype(dtype)


# -- registration -----------------------------------------------------------------------------
for _fn, _rule in UNARY.items():
    register(_fn, {"x": _rule}, elementwise=True)
for _fn, (_d1, _d2) in BINARY.items():
    register(_fn, {"x1": _d1, "x2": _d2}, elementwise=True)
UNIT_RULES.update(UNARY.values())  # they only multiply, divide or negate dy: UNIT is fine
UNIT_RULES.update(r for pair in BINARY.values() for r in pair)
register_nondifferentiable(*NO_GRADIENT)
register(
    np.where,
    {
        "x": lambda dy, y, c, a, b: np.where(c, dy, 0),
        "y": lambda dy, y, c, a, b: np.where(c, 0, dy),
    },
    nodiff=("condition",),
    elementwise=True,
)
register_decomposition(np.where, _where)
register(np.clip, {"a": _clip_a, "a_min": _clip_min, "a_max": _clip_max}, elementwise=True)
register(astype, {"x": lambda dy, y, x, dtype: dy}, linear=("x",))


# -- sample inputs ------------------------------------------------------------------------------
_DOMAIN = {  # inputs inside each function's domain, away from kinks
    np.log: positive, np.log2: positive, np.log10: positive, np.sqrt: positive,
    np.log1p: positive, np.reciprocal: positive, np.arccosh: lambda *s: positive(*s) + 1.5,
    np.cbrt: positive, np.absolute: lambda *s: sample(*s) + np.where(sample(*s) > 0, 0.2, -0.2),
}  # fmt: skip
_DOMAIN[np.fabs] = _DOMAIN[np.absolute]
_BINARY_DOMAIN = {np.power: positive, np.float_power: positive, np.remainder: positive,
                  np.fmod: positive}  # fmt: skip


def _unary_cases():
    for fn in UNARY:
        make = _DOMAIN.get(fn, lambda *s: sample(*s) * 0.9)
        yield Case(fn, fn, (make(3, 4),), "matrix")
        yield Case(fn, fn, (make(5),), "vector")
        yield Case(fn, fn, (make(),), "scalar")


def _binary_cases():
    for fn in BINARY:
        make = _BINARY_DOMAIN.get(fn, sample)
        order2 = True
        call = lambda a, b, fn=fn: fn(a, b)  # noqa: E731
        yield Case(fn, call, (make(3, 4), make(3, 4, seed=1) + 0.25), "same", order2)
        yield Case(fn, call, (make(2, 3, 4), make(3, 1, seed=2) + 0.25), "broadcast", order2)
        yield Case(fn, call, (make(4, seed=3), make(2, 4, seed=4) + 0.25), "left-broadcast", order2)
        yield Case(fn, lambda a, fn=fn: fn(a, 1.5), (make(3),), "scalar-second", order2)
        yield Case(
            fn, lambda b, fn=fn: fn(1.5, b), (make(3, seed=5) + 0.25,), "scalar-first", order2
        )


CASES = [
    *_unary_cases(),
    *_binary_cases(),
    Case(
        np.maximum,
        lambda a: np.maximum(a, np.array([0.2, 0.2])),
        (np.array([0.2, 1.0]),),
        "tie-split",
        False,
    ),  # fmt: skip
    Case(
        np.where, lambda a, b: np.where(a > 0, a, b), (sample(3, 4), sample(3, 4, seed=9)), "both"
    ),
    Case(np.where, lambda a: np.where(a > 0, a * a, 0.0), (sample(2, 5),), "scalar-branch"),
    Case(
        np.where,
        lambda b: np.where(np.array([True, False, True]), 2.0, b),
        (sample(2, 3),),
        "broadcast-y",
    ),  # fmt: skip
    Case(np.clip, lambda a: np.clip(a, -0.5, 0.5), (sample(4, 5),), "constant-bounds"),
    Case(
        np.clip,
        lambda a, lo, hi: np.clip(a, lo, hi),
        (sample(3, 4), sample(3, 4, seed=1) - 0.5, sample(4, seed=2) + 0.5),
        "traced-bounds",
    ),
    Case(np.clip, lambda a: np.clip(a, None, 0.3), (sample(6),), "upper-only"),
    Case(
        astype,
        lambda x: astype(x * x, np.float32).astype(np.float64) * 2.0,
        (sample(3),),
        "roundtrip",
        False,
        eps=1e-3,
        atol=1e-2,
        rtol=1e-2,
    ),  # fmt: skip
]
