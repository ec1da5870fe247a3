"""Activation functions, written with NumPy calls so ``nnflow.ad`` traces them.

Each works on NumPy and CuPy arrays (and on tracers) alike. Three are ``ad.primitive``s with
their own derivative rules, because they are hot and their derivative reuses the output:
``relu`` (``dy * (y > 0)``, zero at 0 as in PyTorch), ``sigmoid`` (``dy * y * (1 - y)``) and
``erf`` (for the exact GELU; NumPy has no ``erf``, so it is computed here with Cephes'
rational approximations, accurate to double precision). On NumPy arrays relu's derivative is
itself a primitive, ``relu_grad(dy, y)`` (its rule w.r.t. ``dy`` is ``relu_grad`` again), and
``relu``/``relu_grad`` run one Numba pass each (:mod:`nnflow.relu_kernels`, bitwise NumPy's
results) when Numba is there (``NNFLOW_NUMBA``, see :mod:`nnflow.jit`) and the arrays are laid
out alike, dense in any axis order or with gaps in memory (a convolution's cropped output);
on CuPy the rule stays ``dy * (y > 0)``, which a compiled GPU step fuses with its neighbours.
Everything else is a composition whose derivative the tracer derives, and is numerically
stable for extreme inputs (``softplus``, ``log_softmax``, ``sigmoid`` at +-1000 give finite,
exact results).

>>> import numpy as np
>>> relu(np.array([-1.0, 2.0])).tolist(), float(sigmoid(np.array(0.0)))
([0.0, 2.0], 0.5)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import ad
from .ad.rules import Case, register_cases
from .backend import get_array_module
from .jit import flat_views
from .relu_kernels import RELU_BACKWARD, RELU_FORWARD

__all__ = [
    "identity",
    "relu",
    "relu_grad",
    "leaky_relu",
    "elu",
    "selu",
    "gelu",
    "erf",
    "sigmoid",
    "logistic",
    "tanh",
    "softplus",
    "softsign",
    "swish",
    "silu",
    "softmax",
    "log_softmax",
    "get_activation",
]

Array = Any


def identity(x: Array) -> Array:
    """``x`` itself (the activation of a layer without one).

    >>> identity(3.0)
    3.0
    """
    return x


@ad.primitive
def relu(x: Array, out: Array | None = None) -> Array:
    """``max(x, 0)``; its derivative is 0 at 0 (as PyTorch's).

    ``out`` (like a ufunc's, and it may be ``x`` itself) is what a compiled tape passes so the
    result goes into a planned buffer instead of a new array.

    >>> relu(np.array([-2.0, 0.0, 3.0])).tolist()
    [0.0, 0.0, 3.0]
    """
    fused = RELU_FORWARD.get(x) if out is None or type(out) is np.ndarray else None
    rows = None
    alias = None if fused is None else _alias(out, x)
    if alias is not None:
        dest = np.empty_like(x) if out is None else out  # (empty_like: laid out as x is)
        rows = _dense_run(x, dest) or _rows(x, dest)
    if rows is None:
        return get_array_module(x).maximum(x, 0, out=out)
    bufs, shape, descs = rows
    fused(*bufs, *shape, *(v for d in descs for v in d), x.dtype.type(0), alias == 1)
    return dest


relu.__nnflow_out_kind__ = "elementwise"  # the memory planner may hand it a buffer (or x)


@ad.primitive
def relu_grad(dy: Array, y: Array, out: Array | None = None) -> Array:
    """``dy * (y > 0)``: the gradient of ``relu`` given its output ``y`` (one Numba pass on
    NumPy arrays when Numba is there; ``out`` as in :func:`relu`).

    >>> relu_grad(np.array([3.0, 3.0]), np.array([0.0, 2.0])).tolist()
    [0.0, 3.0]
    """
    fused = RELU_BACKWARD.get(dy, y) if out is None or type(out) is np.ndarray else None
    rows = None
    alias = None if fused is None else _alias(out, dy, y)
    if alias is not None and (out is not None or dy.strides == y.strides):
        dest = np.empty_like(dy) if out is None else out  # (laid out as dy and y are)
        rows = _dense_run(dy, y, dest) or _rows(dy, y, dest)
    if rows is None:
        xp = get_array_module(dy, y)
        return dy * (y > 0) if out is None else xp.multiply(dy, y > 0, out=out)
    bufs, shape, descs = rows
    one = dy.dtype.type(1)
    fused(*bufs, *shape, *(v for d in descs for v in d), one - one, one, alias)
    return dest


def _alias(out, *inputs) -> int | None:
    """For the kernels: 0 if ``out`` is ``None`` or shares no memory with ``inputs``, ``k``
    if it is the ``k``-th input (the same memory and strides: written in place), ``None`` if
    it overlaps an input otherwise (NumPy, which buffers overlaps, runs then)."""
    if out is None:
        return 0
    for k, a in enumerate(inputs, 1):
        if out is a:
            return k
        if np.may_share_memory(out, a):  # (bounds only: cheap)
            same = out.ctypes.data == a.ctypes.data and out.strides == a.strides
            return k if same and out.shape == a.shape else None
    return 0


relu_grad.__nnflow_out_kind__ = "elementwise"


def _dense_run(*arrays):
    """The arguments of the kernels of :mod:`nnflow.relu_kernels` for arrays that
    :func:`nnflow.jit.flat_views` takes (one layout, no gaps in memory): each array as one 1-d
    run in memory order, ``(1, 1, size)``; ``None`` otherwise (:func:`_rows` then tries, else
    NumPy runs). On such arrays the kernels run 2-4x faster than NumPy's ``maximum`` and
    ``dy * (y > 0)`` (float32, 4K to 1.2M entries, 2 cores)."""
    bufs = flat_views(*arrays)
    return None if bufs is None else (bufs, (1, 1, arrays[0].size), [(0, 0, 0)] * len(arrays))


def _rows(*arrays):
    """NumPy float arrays of one shape and dtype as the kernels of :mod:`nnflow.relu_kernels`
    take them: ``(buffers, (n0, n1, n2), ((offset, stride0, stride1) per array))``, the axes
    in the memory order of the last array (the destination), its innermost contiguous in every
    array and the others merged into two; ``None`` where they do not fit (NumPy runs then)."""
    last = arrays[-1]
    dtype, shape, size = last.dtype, last.shape, last.dtype.itemsize
    if last.size == 0:  # (float32/float64 only: Kernel.get has checked the dtypes)
        return None
    for a in arrays:  # (no broadcast or reversed axes: stride > 0 along every long axis)
        if a.dtype != dtype or a.shape != shape:
            return None
        if any(s % size or (s <= 0 and n > 1) for s, n in zip(a.strides, shape, strict=True)):
            return None
    axes = sorted((k for k in range(len(shape)) if shape[k] > 1), key=lambda k: -last.strides[k])
    dims = [(shape[k], [a.strides[k] // size for a in arrays]) for k in axes]
    if not dims or any(s != 1 for s in dims[-1][1]):  # the innermost: contiguous everywhere
        return None  # (runs of one entry: NumPy's strided loops are faster)
    merged = [dims[-1]]
    for n, strides in reversed(dims[:-1]):  # an axis merges into the next if uniform
        inner_n, inner = merged[0]
        if all(s == inner_n * t for s, t in zip(strides, inner, strict=True)):
            merged[0] = (n * inner_n, inner)
        else:
            merged.insert(0, (n, strides))
    if len(merged) > 3:
        return None
    while len(merged) < 3:
        merged.insert(0, (1, [0] * len(arrays)))
    bufs = []
    for i, a in enumerate(arrays):  # a 1-d view from a's first entry to its last
        span = 1 + sum((n - 1) * strides[i] for n, strides in merged)
        bufs.append(np.lib.stride_tricks.as_strided(a, (span,), (size,)))
    descs = [(0, merged[0][1][i], merged[1][1][i]) for i in range(len(arrays))]
    return bufs, tuple(n for n, _ in merged), descs


@ad.diffrule(relu, "x")
def _relu_dx(dy, y, x):
    if get_array_module(dy, y) is np:  # one primitive (a Numba pass when it can)
        return relu_grad(dy, y)
    return dy * (y > 0)  # on the GPU: two ufuncs, which the compiled step fuses


@ad.diffrule(relu_grad, "dy")
def _relu_grad_ddy(g, z, dy, y, out=None):
    return relu_grad(g, y)


ad.nodiff(relu_grad, "y")  # a step function of y: zero almost everywhere


def leaky_relu(x: Array, negative_slope: float = 0.01) -> Array:
    """``x`` where ``x > 0``, else ``negative_slope * x``.

    >>> leaky_relu(np.array([-2.0, 3.0]), 0.1).tolist()
    [-0.2, 3.0]
    """
    return np.where(x > 0, x, x * negative_slope)


def elu(x: Array, alpha: float = 1.0) -> Array:
    """``x`` where ``x > 0``, else ``alpha * (exp(x) - 1)``.

    >>> round(float(elu(np.array(-1.0))), 6)
    -0.632121
    """
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def selu(x: Array) -> Array:
    """``scale * elu(x, alpha)`` with the self-normalising constants of Klambauer et al. 2017.

    >>> round(float(selu(np.array(1.0))), 6)
    1.050701
    """
    return _SELU_SCALE * elu(x, _SELU_ALPHA)


# Cephes (S. L. Moshier, public domain) rational approximations of erf and erfc.
_T = (9.60497373987051638749e0, 9.00260197203842689217e1, 2.23200534594684319226e3,
      7.00332514112805075473e3, 5.55923013010394962768e4)  # fmt: skip
_U = (1.0, 3.35617141647503099647e1, 5.21357949780152679795e2, 4.59432382970980127987e3,
      2.26290000613890934246e4, 4.92673942608635921086e4)  # fmt: skip
_P = (2.46196981473530512524e-10, 5.64189564831068821977e-1, 7.46321056442269912687e0,
      4.86371970985681366614e1, 1.96520832956077098242e2, 5.26445194995477358631e2,
      9.34528527171957607540e2, 1.02755188689515710272e3, 5.57535335369399327526e2)  # fmt: skip
_Q = (1.0, 1.32281951154744992508e1, 8.67072140885989742329e1, 3.54937778887819891062e2,
      9.75708501743205489753e2, 1.82390916687909736289e3, 2.24633760818710981792e3,
      1.65666309194161350182e3, 5.57535340817727675546e2)  # fmt: skip
_R = (5.64189583547755073984e-1, 1.27536670759978104416e0, 5.01905042251180477414e0,
      6.16021097993053585195e0, 7.40974269950448939160e0, 2.97886665372100240670e0)  # fmt: skip
_S = (1.0, 2.26052863220117276590e0, 9.39603524938001434673e0, 1.20489539808096656605e1,
      1.70814450747565897222e1, 9.60896809063285878198e0, 3.36907645100081516050e0)  # fmt: skip


def _poly(x, coefficients):
    out = np.full_like(x, coefficients[0])
    for c in coefficients[1:]:
        out = out * x + c
    return out


@ad.primitive
def erf(x: Array) -> Array:
    """The error function ``2/sqrt(pi) * integral_0^x exp(-t^2) dt``, to double precision.

    >>> round(float(erf(np.array(0.5))), 12)
    0.520499877813
    """
    xp = get_array_module(x)
    dtype = x.dtype if np.dtype(x.dtype).kind == "f" else np.float64
    a = xp.abs(xp.asarray(x, dtype=np.float64))
    z = a * a
    small = a * _poly(z, _T) / _poly(z, _U)
    big = xp.minimum(a, 30.0)  # erfc underflows to 0 long before; keeps exp finite
    mid = _poly(big, _P) / _poly(big, _Q)
    far = _poly(big, _R) / _poly(big, _S)
    erfc = xp.exp(-big * big) * xp.where(big < 8.0, mid, far)
    y = xp.where(a <= 1.0, small, 1.0 - erfc)
    return (xp.sign(x) * y).astype(dtype, copy=False)


_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


@ad.diffrule(erf, "x")
def _erf_dx(dy, y, x):
    return dy * (_TWO_OVER_SQRT_PI * np.exp(-x * x))


def gelu(x: Array, approximate: str = "none") -> Array:
    """Gaussian error linear unit ``x * Phi(x)``; ``approximate="tanh"`` uses
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (PyTorch's names).

    >>> round(float(gelu(np.array(1.0))), 6), round(float(gelu(np.array(1.0), "tanh")), 6)
    (0.841345, 0.841192)
    """
    if approximate == "none":
        return 0.5 * x * (1.0 + erf(x * (1.0 / math.sqrt(2.0))))
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


@ad.primitive
def sigmoid(x: Array) -> Array:
    """The logistic function ``1 / (1 + exp(-x))``, exact and finite for any ``x``.

    >>> sigmoid(np.array([-1000.0, 0.0, 1000.0])).tolist()
    [0.0, 0.5, 1.0]
    """
    xp = get_array_module(x)
    e = xp.asarray(xp.abs(x))  # a fresh array (0-d inputs give NumPy scalars)
    if e.dtype.kind == "f":
        xp.negative(e, out=e)
        xp.exp(e, out=e)  # exp(-|x|) in (0, 1]: never overflows
    else:
        e = xp.exp(-e)
    d = xp.add(e, 1)
    # 1 / (1 + e) for x >= 0, e / (1 + e) for x < 0: no cancellation on either side. 3.4-3.9x
    # faster than the former exp(-logaddexp(0, -x)) (one exp instead of exp + log1p + exp)
    y = xp.where(x >= 0, 1, e)
    return xp.divide(y, d, out=y)


@ad.diffrule(sigmoid, "x")
def _sigmoid_dx(dy, y, x):
    return dy * (y * (1 - y))


logistic = sigmoid


def tanh(x: Array) -> Array:
    """The hyperbolic tangent.

    >>> float(tanh(np.array(0.0)))
    0.0
    """
    return np.tanh(x)


def softplus(x: Array, beta: float = 1.0) -> Array:
    """``log(1 + exp(beta x)) / beta``, stable for large ``|x|``.

    >>> float(softplus(np.array(1000.0)))
    1000.0
    """
    if beta == 1.0:
        return np.logaddexp(0, x)
    return np.logaddexp(0, x * beta) / beta


def softsign(x: Array) -> Array:
    """``x / (1 + |x|)``.

    >>> float(softsign(np.array(1.0)))
    0.5
    """
    return x / (1 + np.abs(x))


def swish(x: Array) -> Array:
    """``x * sigmoid(x)`` (also called SiLU).

    >>> round(float(swish(np.array(1.0))), 6)
    0.731059
    """
    return x * sigmoid(x)


silu = swish


def log_softmax(x: Array, axis: int = -1) -> Array:
    """``x - logsumexp(x, axis)``, stable for any logits.

    >>> log_softmax(np.array([0.0, 1000.0])).tolist()
    [-1000.0, 0.0]
    """
    return x - ad.logsumexp(x, axis=axis, keepdims=True)


def softmax(x: Array, axis: int = -1) -> Array:
    """``exp(x) / sum(exp(x), axis)``, stable for any logits.

    >>> softmax(np.array([0.0, 1000.0])).tolist()
    [0.0, 1.0]
    """
    return np.exp(log_softmax(x, axis))


_BY_NAME = {
    "identity": identity, "linear": identity, "relu": relu, "leaky_relu": leaky_relu,
    "elu": elu, "selu": selu, "gelu": gelu, "sigmoid": sigmoid, "logistic": sigmoid,
    "tanh": tanh, "softplus": softplus, "softsign": softsign, "swish": swish, "silu": silu,
}  # fmt: skip


def get_activation(activation: Any):
    """An activation function from a callable, a name (``"relu"``) or ``None`` (no activation).

    >>> get_activation("relu") is relu, get_activation(None)
    (True, None)
    """
    if activation is None or callable(activation):
        return activation
    if isinstance(activation, str) and activation in _BY_NAME:
        return _BY_NAME[activation]
    raise ValueError(
        f"unknown activation {activation!r}; pass a function or one of {sorted(_BY_NAME)}"
    )


def _sample(*shape, seed=0):
    x = np.random.default_rng(seed).uniform(-2, 2, shape)
    return x + np.where(x >= 0, 0.05, -0.05)  # away from relu's kink


register_cases(
    [
        Case(relu, relu, (_sample(3, 4),), "matrix"),
        Case(relu_grad, lambda dy: relu_grad(dy, _sample(3, 4, seed=1)), (_sample(3, 4),), "dy"),
        Case(sigmoid, sigmoid, (_sample(2, 5),), "matrix"),
        Case(sigmoid, sigmoid, (_sample(),), "scalar"),
        Case(erf, erf, (np.array([-9.0, -2.5, -0.7, 0.0, 0.3, 0.999, 1.2, 4.0, 8.5]),), "ranges"),
    ]
)
