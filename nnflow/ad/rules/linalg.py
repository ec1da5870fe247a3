"""Derivative rules of the linear-algebra functions: products, contractions, decompositions.

Products (``dot``, ``matmul``, ``tensordot``, ``einsum``, ``outer``, ``inner``, ``vdot``) and the
selections ``trace`` and ``diag`` are (multi)linear, so forward mode needs no table of its own;
``inv``, ``det``, the private ``logabsdet`` behind ``slogdet``, ``solve`` and ``norm`` carry
explicit forward rules. Every rule is written with registered NumPy calls, so it is traced too.
"""

from __future__ import annotations

import functools
import string

import numpy as np

from ...backend import get_array_module
from ..registry import primitive, register, register_decomposition
from .cases import Case, positive, sample, well_conditioned

__all__ = ["CASES", "logabsdet"]


def _tr(x):  # batched transpose
    return np.swapaxes(x, -1, -2)


def _mat(v):  # a scalar per matrix, broadcast over the matrix axes
    return np.expand_dims(v, (-2, -1))


def _eye(like, n, m, k=0):  # a constant on the device of ``like``
    return get_array_module(like).eye(n, m, k=k, dtype=like.dtype)


def _inverse(perm):
    return tuple(sorted(range(len(perm)), key=list(perm).__getitem__))


# -- matmul: 1-D operands are promoted to matrices, as NumPy does --------------------------------
def _matmul(wrt_x2):
    def rule(dy, y, x1, x2, **kw):
        a = x1 if np.ndim(x1) > 1 else np.expand_dims(x1, 0)
        b = x2 if np.ndim(x2) > 1 else np.expand_dims(x2, -1)
        g = dy if np.ndim(x2) > 1 else np.expand_dims(dy, -1)
        g = g if np.ndim(x1) > 1 else np.expand_dims(g, -2)
        if wrt_x2:
            return np.matmul(_tr(a), g) if np.ndim(x2) > 1 else np.squeeze(_tr(a) @ g, -1)
        return np.matmul(g, _tr(b)) if np.ndim(x1) > 1 else np.squeeze(g @ _tr(b), -2)

    return rule


# -- tensordot and the products that are tensordots (dot, inner) ---------------------------------
def _td_axes(a, b, axes=2):
    na, nb = np.ndim(a), np.ndim(b)
    if isinstance(axes, (int, np.integer)):
        return list(range(na - axes, na)), list(range(axes))
    ax_a, ax_b = ([x] if isinstance(x, (int, np.integer)) else list(x) for x in axes)
    return [x % na for x in ax_a], [x % nb for x in ax_b]


def _product(axes_of):
    """(d a, d b) of a product that is a scalar product for 0-d operands, else a tensordot."""

    def rule(wrt_b):
        def grad(dy, y, a, b, *rest, **kw):
            if np.ndim(a) == 0 or np.ndim(b) == 0:
                return dy * (a if wrt_b else b)
            ax_a, ax_b = axes_of(a, b, *rest, **kw)
            free_a = [i for i in range(np.ndim(a)) if i not in ax_a]
            free_b = [i for i in range(np.ndim(b)) if i not in ax_b]
            if wrt_b:  # tensordot orders the contracted axes of the other operand ascending
                g = np.tensordot(a, dy, (free_a, list(range(len(free_a)))))
                return np.transpose(g, _inverse([ax_b[k] for k in _inverse(ax_a)] + free_b))
            g = np.tensordot(dy, b, (list(range(len(free_a), np.ndim(dy))), free_b))
            return np.transpose(g, _inverse(free_a + [ax_a[k] for k in _inverse(ax_b)]))

        return grad

    return {"a": rule(False), "b": rule(True)}


# -- einsum: the cotangent of an operand is the einsum of the others with dy ---------------------
def _einsum_spec(subscripts, shapes):
    """Explicit per-operand and output subscripts, with '...' expanded into letters."""
    if not isinstance(subscripts, str):
        raise NotImplementedError("nnflow.ad: einsum is differentiable in 'ij,jk->ik' form only")
    spec = subscripts.replace(" ", "")
    ins, out = spec.split("->") if "->" in spec else (spec, None)
    ins = ins.split(",")
    unused = [c for c in string.ascii_letters if c not in spec]
    n_ell = max(
        [len(s) - len(t) + 3 for t, s in zip(ins, shapes, strict=True) if "..." in t], default=0
    )
    ell = "".join(unused[:n_ell])
    expanded = []
    for term, shape in zip(ins, shapes, strict=True):
        if "..." in term:
            term = term.replace("...", ell[n_ell - (len(shape) - len(term) + 3) :])
        if len(set(term)) != len(term):
            raise NotImplementedError(
                f"nnflow.ad: no einsum rule for a repeated index: {subscripts!r}"
            )
        expanded.append(term)
    if out is None:
        letters = "".join(ins).replace(".", "")
        out = ell + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return expanded, out.replace("...", ell)


def _einsum_grads(dy, y, *operands, out=None, optimize=False, **kw):
    subscripts, *ops = operands
    ins, out_term = _einsum_spec(subscripts, [np.shape(o) for o in ops])
    grads = [None]
    for i, (term, op) in enumerate(zip(ins, ops, strict=True)):
        terms = [t for j, t in enumerate(ins) if j != i] + [out_term]
        arrays = [o for j, o in enumerate(ops) if j != i] + [dy]
        sizes: dict = {}
        for t, a in zip(terms, arrays, strict=True):
            for c, n in zip(t, np.shape(a), strict=True):
                sizes[c] = max(sizes.get(c, 1), n)
        # letters summed in this operand alone (or broadcast elsewhere) come from a ones array
        extra = [(c, n) for c, n in zip(term, np.shape(op), strict=True) if sizes.get(c, 0) < n]
        if extra:
            terms.append("".join(c for c, _ in extra))
            arrays.append(get_array_module(dy).ones([n for _, n in extra], dtype=dy.dtype))
        grads.append(np.einsum(",".join(terms) + "->" + term, *arrays, optimize=bool(optimize)))
    return grads


# -- outer, vdot, trace, diag -------------------------------------------------------------------
def _trace_da(dy, y, a, offset=0, axis1=0, axis2=1, dtype=None, out=None):
    eye = _eye(dy, np.shape(a)[axis1], np.shape(a)[axis2], offset)
    return np.moveaxis(_mat(dy) * eye, (-2, -1), (axis1 % np.ndim(a), axis2 % np.ndim(a)))


def _diag_dv(dy, y, v, k=0):
    if np.ndim(v) == 1:
        return np.diag(dy, k)
    n, m = np.shape(v)
    g = _eye(dy, n if k >= 0 else m, np.shape(dy)[0]) @ dy  # dy padded to n or m entries
    return _eye(dy, n, m, k) * (np.expand_dims(g, -1) if k >= 0 else g)


# -- norm -----------------------------------------------------------------------------------------
def _norm_axes(x, ord, axis):
    nd = np.ndim(x)
    if axis is None:
        if ord is None:
            return tuple(range(nd)), "fro"
        axis = tuple(range(nd))
    axes = (axis % nd,) if isinstance(axis, (int, np.integer)) else tuple(a % nd for a in axis)
    if len(axes) == 2 and (ord in (2, -2) or ord == "nuc"):
        raise NotImplementedError(
            f"nnflow.ad: np.linalg.norm(ord={ord!r}) of a matrix (a function of "
            "its singular values) has no derivative rule yet"
        )
    return axes, ("fro" if ord is None or ord == 2 else ord)


def _norm_weights(y, x, ord=None, axis=None, keepdims=False):
    """d norm / d x, with ``y`` broadcast back over the reduced axes."""
    axes, ord = _norm_axes(x, ord, axis)
    yk = y if keepdims else np.expand_dims(y, axes)
    if ord == "fro":
        return x / yk
    if ord == 0:
        return np.zeros_like(x)
    if len(axes) == 2:  # matrix 1 / inf norms: the largest (smallest) column / row abs sum
        inner, outer = axes if ord in (1, -1) else axes[::-1]
        mask = np.sum(np.abs(x), axis=inner, keepdims=True) == yk
        return np.sign(x) * mask / np.sum(mask, axis=outer, keepdims=True)
    if ord in (np.inf, -np.inf):
        mask = np.abs(x) == yk
        return np.sign(x) * mask / np.sum(mask, axis=axes, keepdims=True)
    if ord == 1:
        return np.sign(x)
    return np.sign(x) * (np.abs(x) / yk) ** (ord - 1)


def _norm_dx(dy, y, x, ord=None, axis=None, keepdims=False):
    axes, _ = _norm_axes(x, ord, axis)
    return (dy if keepdims else np.expand_dims(dy, axes)) * _norm_weights(y, x, ord, axis, keepdims)


def _norm_jvp(t, y, x, ord=None, axis=None, keepdims=False):
    axes, _ = _norm_axes(x, ord, axis)
    return np.sum(_norm_weights(y, x, ord, axis, keepdims) * t, axis=axes, keepdims=keepdims)


# -- inv, det, slogdet, solve ---------------------------------------------------------------------
@primitive
def logabsdet(a):
    """``log |det a|`` (the second result of ``np.linalg.slogdet``), as one differentiable op."""
    return np.linalg.slogdet(a)[1]


_SlogdetResult = type(np.linalg.slogdet(np.eye(1)))


def _slogdet(a):
    return _SlogdetResult(np.sign(np.linalg.det(a)), logabsdet(a))


def _as_columns(x, vector):  # solve treats a 1-D b as one column
    return np.expand_dims(x, -1) if vector else x


def _solve_db(dy, y, a, b):
    vector = np.ndim(b) == 1
    g = np.linalg.solve(_tr(a), _as_columns(dy, vector))
    return np.squeeze(g, -1) if vector else g


def _solve_da(dy, y, a, b):
    vector = np.ndim(b) == 1
    g = _as_columns(_solve_db(dy, y, a, b), vector)
    return -np.matmul(g, _tr(_as_columns(y, vector)))


def _solve_jvp(rhs):
    def jvp(t, y, a, b):
        vector = np.ndim(b) == 1
        g = np.linalg.solve(a, rhs(t, _as_columns(y, vector)) if rhs else _as_columns(t, vector))
        return np.squeeze(g, -1) if vector else g

    return jvp


# -- the tables -----------------------------------------------------------------------------------
LINEAR = {  # (multi)linear in each argument: forward mode calls fn with a tangent in its place
    np.matmul: {"x1": _matmul(False), "x2": _matmul(True)},
    np.dot: _product(lambda a, b, out=None: ([np.ndim(a) - 1], [max(np.ndim(b) - 2, 0)])),
    np.inner: _product(lambda a, b: ([np.ndim(a) - 1], [np.ndim(b) - 1])),
    np.tensordot: _product(_td_axes),
    np.einsum: {"operands": _einsum_grads},
    np.outer: {
        "a": lambda dy, y, a, b, out=None: np.reshape(dy @ np.ravel(b), np.shape(a)),
        "b": lambda dy, y, a, b, out=None: np.reshape(np.ravel(a) @ dy, np.shape(b)),
    },
    np.vdot: {
        "a": lambda dy, y, a, b: np.reshape(dy * b, np.shape(a)),
        "b": lambda dy, y, a, b: np.reshape(dy * a, np.shape(b)),
    },
    np.trace: {"a": _trace_da},
    np.diag: {"v": _diag_dv},
}
NONLINEAR = {  # fn: ({argument: reverse rule}, {argument: forward rule})
    np.linalg.inv: (
        {"a": lambda dy, y, a: -_tr(y) @ dy @ _tr(y)},
        {"a": lambda t, y, a: -y @ t @ y},
    ),
    np.linalg.det: (
        {"a": lambda dy, y, a: _mat(dy * y) * _tr(np.linalg.inv(a))},
        {"a": lambda t, y, a: y * np.sum(_tr(np.linalg.inv(a)) * t, axis=(-2, -1))},
    ),
    logabsdet: (
        {"a": lambda dy, y, a: _mat(dy) * _tr(np.linalg.inv(a))},
        {"a": lambda t, y, a: np.sum(_tr(np.linalg.inv(a)) * t, axis=(-2, -1))},
    ),
    np.linalg.solve: (
        {"a": _solve_da, "b": _solve_db},
        {"a": _solve_jvp(lambda t, x: -t @ x), "b": _solve_jvp(None)},
    ),
    np.linalg.norm: ({"x": _norm_dx}, {"x": _norm_jvp}),
}
for _fn, _rules in LINEAR.items():
    register(_fn, _rules, linear=tuple(_rules))
for _fn, (_rules, _jvps) in NONLINEAR.items():
    register(_fn, _rules, jvps=_jvps)
register_decomposition(np.linalg.slogdet, _slogdet)

# -- sample inputs --------------------------------------------------------------------------------
_s = sample
_FLIP = np.diag([-1.0, 1.0, 1.0])  # makes a determinant negative
_SQ, _SQ1, _SQ2 = well_conditioned(3), well_conditioned(3, (2,), 1), well_conditioned(2, (3,), 2)


def _with(fn, *args, **kwargs):  # fn with constant arguments: (*args, x..., **kwargs)
    return lambda *x: fn(*args, *x, **kwargs)


_norm, _td, _es = (functools.partial(_with, f) for f in (np.linalg.norm, np.tensordot, np.einsum))

CASES = [
    Case(np.matmul, np.matmul, (_s(3, 4), _s(4, 2, seed=1)), "2d"),
    Case(np.matmul, np.matmul, (_s(4), _s(4, 3, seed=1)), "1d-2d"),
    Case(np.matmul, np.matmul, (_s(3, 4), _s(4, seed=1)), "2d-1d"),
    Case(np.matmul, np.matmul, (_s(4), _s(4, seed=1)), "1d-1d"),
    Case(np.matmul, np.matmul, (_s(2, 3, 4), _s(2, 4, 5, seed=1)), "batched"),
    Case(np.matmul, np.matmul, (_s(2, 1, 3, 4), _s(5, 4, 2, seed=1)), "broadcast"),
    Case(np.matmul, np.matmul, (_s(4), _s(2, 4, 3, seed=1)), "1d-batched"),
    Case(np.matmul, np.matmul, (_s(2, 3, 4), _s(4, seed=1)), "batched-1d"),
    Case(np.matmul, lambda a, b: a @ b, (_s(3, 4), _s(1, 4, 2, seed=1)), "operator"),
    Case(np.dot, np.dot, (_s(5), _s(5, seed=1)), "1d"),
    Case(np.dot, np.dot, (_s(3, 4), _s(4, 2, seed=1)), "2d"),
    Case(np.dot, np.dot, (_s(3, 4), _s(4, seed=1)), "2d-1d"),
    Case(np.dot, np.dot, (_s(4), _s(4, 3, seed=1)), "1d-2d"),
    Case(np.dot, np.dot, (_s(2, 3, 4), _s(5, 4, 2, seed=1)), "nd"),
    Case(np.dot, np.dot, (_s(), _s(3, 2, seed=1)), "scalar"),
    Case(np.tensordot, np.tensordot, (_s(2, 3, 4), _s(3, 4, 5, seed=1)), "default"),
    Case(np.tensordot, _td(axes=0), (_s(2, 3), _s(4, seed=1)), "outer"),
    Case(np.tensordot, _td(axes=1), (_s(2, 3), _s(3, 4, seed=1)), "int"),
    Case(np.tensordot, _td(axes=([0, 2], [2, 1])), (_s(3, 2, 4), _s(5, 4, 3, seed=1)), "pairs"),
    Case(np.tensordot, _td(axes=(1, 0)), (_s(2, 3, 4), _s(3, 5, seed=1)), "ints"),
    Case(np.einsum, _es("ij,jk->ik"), (_s(3, 4), _s(4, 2, seed=1)), "matmul"),
    Case(np.einsum, _es("ba,ac"), (_s(3, 4), _s(4, 2, seed=1)), "implicit"),
    Case(np.einsum, _es("ij->ji"), (_s(3, 4),), "transpose"),
    Case(np.einsum, _es("ijk->"), (_s(2, 3, 4),), "sum"),
    Case(np.einsum, _es("i,i"), (_s(4), _s(4, seed=1)), "dot"),
    Case(np.einsum, _es("i,j->ij"), (_s(3), _s(4, seed=1)), "outer"),
    Case(np.einsum, _es("ijk,j->i"), (_s(2, 3, 4), _s(3, seed=1)), "lone-index"),
    Case(np.einsum, _es("bij,bjk,bkl->bil"), (_s(2, 3, 4), _s(2, 4, 2), _s(2, 2, 3)), "three"),
    Case(np.einsum, _es("...ij,...jk->...ik"), (_s(2, 1, 3, 4), _s(5, 4, 2)), "ellipsis"),
    Case(np.einsum, _es("...j,j"), (_s(2, 3, 4), _s(4, seed=1)), "ellipsis-implicit"),
    Case(np.einsum, _es("...i,...i->..."), (_s(3, 4), _s(1, 4, seed=1)), "ellipsis-broadcast"),
    Case(np.outer, np.outer, (_s(3), _s(4, seed=1)), "1d"),
    Case(np.outer, np.outer, (_s(2, 2), _s(3, seed=1)), "nd"),
    Case(np.inner, np.inner, (_s(4), _s(4, seed=1)), "1d"),
    Case(np.inner, np.inner, (_s(2, 3, 4), _s(5, 4, seed=1)), "nd"),
    Case(np.inner, np.inner, (_s(), _s(2, 3, seed=1)), "scalar"),
    Case(np.vdot, np.vdot, (_s(4), _s(4, seed=1)), "1d"),
    Case(np.vdot, np.vdot, (_s(2, 3), _s(3, 2, seed=1)), "reshaped"),
    Case(np.trace, np.trace, (_s(3, 3),), "2d"),
    Case(np.trace, _with(np.trace, offset=1), (_s(3, 4),), "offset"),
    Case(np.trace, _with(np.trace, offset=-1), (_s(4, 3),), "negative-offset"),
    Case(np.trace, _with(np.trace, axis1=2, axis2=0), (_s(3, 2, 4),), "axes"),
    Case(np.diag, np.diag, (_s(3),), "vector"),
    Case(np.diag, _with(np.diag, k=-2), (_s(3),), "vector-k"),
    Case(np.diag, np.diag, (_s(3, 4),), "extract"),
    Case(np.diag, _with(np.diag, k=1), (_s(3, 5),), "extract-k"),
    Case(np.diag, _with(np.diag, k=-1), (_s(4, 3),), "extract-negative-k"),
    Case(np.linalg.norm, np.linalg.norm, (_s(2, 3, 4),), "flat"),
    Case(np.linalg.norm, _norm(ord=2), (_s(5),), "vector"),
    Case(np.linalg.norm, _norm(ord="fro"), (_s(3, 4),), "fro"),
    Case(np.linalg.norm, _norm(axis=1), (_s(3, 4),), "axis"),
    Case(np.linalg.norm, _norm(axis=-1, keepdims=True), (_s(2, 3, 4),), "keepdims"),
    Case(np.linalg.norm, _norm(keepdims=True), (_s(3, 4),), "flat-keepdims"),
    Case(np.linalg.norm, _norm(ord=1, axis=0), (_s(4, 3),), "l1"),
    Case(np.linalg.norm, _norm(ord=np.inf), (_s(5),), "inf"),
    Case(np.linalg.norm, _norm(ord=-np.inf, axis=1), (_s(3, 4),), "-inf"),
    Case(np.linalg.norm, _norm(ord=0), (_s(5),), "l0"),
    Case(np.linalg.norm, _norm(ord=3, axis=-1), (_s(2, 5),), "p3"),
    Case(np.linalg.norm, _norm(ord=1.5), (positive(4),), "p1.5"),
    Case(np.linalg.norm, _norm(ord=1, axis=(0, 1)), (_s(3, 4),), "matrix-1"),
    Case(np.linalg.norm, _norm(ord=np.inf), (_s(3, 4),), "matrix-inf"),
    Case(np.linalg.norm, _norm(ord="fro", axis=(2, 0)), (_s(3, 2, 4),), "matrix-fro-axes"),
    Case(np.linalg.inv, np.linalg.inv, (_SQ,), "2d"),
    Case(np.linalg.inv, np.linalg.inv, (_SQ1,), "batched"),
    Case(np.linalg.det, np.linalg.det, (_SQ,), "2d"),
    Case(np.linalg.det, np.linalg.det, (_FLIP @ _SQ,), "negative"),
    Case(np.linalg.det, np.linalg.det, (_SQ2,), "batched"),
    Case(logabsdet, lambda a: np.linalg.slogdet(a)[1], (_SQ,), "slogdet"),
    Case(logabsdet, lambda a: np.linalg.slogdet(a).logabsdet, (_FLIP @ _SQ,), "negative"),
    Case(logabsdet, lambda a: np.linalg.slogdet(a)[1], (_SQ1,), "batched"),
    Case(logabsdet, lambda a: np.linalg.slogdet(a).sign * logabsdet(a), (_FLIP @ _SQ,), "sign"),
    Case(np.linalg.solve, np.linalg.solve, (_SQ, _s(3, seed=1)), "vector"),
    Case(np.linalg.solve, np.linalg.solve, (_SQ, _s(3, 2, seed=1)), "matrix"),
    Case(np.linalg.solve, np.linalg.solve, (_SQ1, _s(2, 3, 2, seed=1)), "batched"),
    Case(np.linalg.solve, np.linalg.solve, (_SQ1, _s(3, seed=1)), "batched-vector"),
    Case(np.linalg.solve, np.linalg.solve, (_SQ, _s(2, 3, 4, seed=1)), "broadcast"),
]
