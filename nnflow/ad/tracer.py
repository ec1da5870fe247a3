"""Tracer: wraps one array and records every NumPy call made on it onto the active tape.

NumPy hands calls on a ``Tracer`` to ``__array_ufunc__`` (ufuncs: ``np.exp``, ``+``) and
``__array_function__`` (everything else: ``np.sum``, ``np.concatenate``), so unmodified NumPy
code is traced. Each call is computed at once on the underlying arrays (which may be tracers of
an enclosing tape: that is how gradients of gradients work) and appended to the tape of the
innermost tracer among its arguments.
"""

from __future__ import annotations

import dis
import operator
import sys

import numpy as np

from .errors import NoRuleError, TracerError
from .registry import _REGISTRY, decomposition, lookup
from .tape import Node

_NDARRAY = np.ndarray

__all__ = ["Tracer", "record", "record_source", "is_floating"]

_FLOAT_KINDS = "fc"


def is_floating(value) -> bool:
    """True when ``value`` has a floating-point (or complex) dtype.

    >>> is_floating(np.ones(2)), is_floating(np.arange(2))
    (True, False)
    """
    dtype = getattr(value, "dtype", None)
    return dtype is not None and dtype.kind in _FLOAT_KINDS


def _scan(args, found, tape, prefix):
    """Collect ``(location, tracer)`` for tracers in ``args`` (lists/tuples searched too)."""
    for i, a in enumerate(args):
        cls = type(a)
        if cls is Tracer:
            found.append((prefix + (i,), a))
            if tape is None or a.tape.level > tape.level:
                tape = a.tape
        elif (cls is list or cls is tuple) and a:
            tape = _scan(a, found, tape, prefix + (i,))
    return tape


def _unwrap(structure, tape):
    cls = type(structure)
    if cls is Tracer:
        return structure.value if structure.tape is tape else structure
    if cls is list or cls is tuple:
        return cls(_unwrap(a, tape) for a in structure)
    return structure


_NO_KWARGS: dict = {}  # shared, never mutated


_LOCATIONS = tuple((i,) for i in range(64))


def record(fn, args, kwargs):
    """Call ``fn`` on the concrete values of ``args`` and record the call on a tape.

    The tape is that of the innermost (most recently created) tracer among the arguments;
    tracers of enclosing tapes stay in the call as they are and record themselves there.
    """
    if not kwargs and len(args) < 64:
        tape, nested = None, False
        for a in args:
            cls = type(a)
            if cls is Tracer:
                if tape is None or a.tape.level > tape.level:
                    tape = a.tape
            elif (cls is list or cls is tuple) and a:
                nested = True
        if not nested and tape is not None:
            return _record_flat(fn, args, tape)
    return _record_general(fn, args, kwargs)


def record_unary(fn, a):
    """``record(fn, (a,), None)`` for a tracer ``a``, without the generic scan."""
    tape = a.tape
    if not tape.active:
        raise _escaped()
    value = a.value
    out = fn(value)
    diff = a.diff and _output_diff(fn, out, ((_LOCATIONS[0], a.node),))
    return _finish(fn, (value,), [(_LOCATIONS[0], a.node)], out, diff, tape)


def record_binary(fn, a, b):
    """``record(fn, (a, b), None)`` when ``a`` or ``b`` is a tracer."""
    ta, tb = type(a) is Tracer, type(b) is Tracer
    if ta and tb and a.tape is not b.tape:
        return _record_flat(fn, (a, b), a.tape if a.tape.level > b.tape.level else b.tape)
    if ta and tb:
        tape, raw, any_diff = a.tape, (a.value, b.value), a.diff or b.diff
        parents = [(_LOCATIONS[0], a.node), (_LOCATIONS[1], b.node)]
    elif ta:
        tape, raw, any_diff = a.tape, (a.value, b), a.diff
        parents = [(_LOCATIONS[0], a.node)]
    else:
        tape, raw, any_diff = b.tape, (a, b.value), b.diff
        parents = [(_LOCATIONS[1], b.node)]
    if not tape.active:
        raise _escaped()
    out = fn(*raw)
    diff = any_diff and _output_diff(fn, out, parents)
    return _finish(fn, raw, parents, out, diff, tape)


def _output_diff(fn, out, parents) -> bool:
    info = _REGISTRY.get(fn)
    if info is not None and info.plain and type(out) is _NDARRAY and out.dtype.kind == "f":
        return True
    return _differentiable(fn, out, parents)


def _finish(fn, raw, parents, out, diff, tape):
    if tape.forward:
        node = tape.add(fn, raw, _NO_KWARGS, parents, out, diff)
    else:
        nodes = tape.nodes
        node = Node(len(nodes) + 1, fn, raw, _NO_KWARGS, parents, out, diff)
        nodes.append(node)
    return Tracer(out, tape, node, diff)


def record_source(fn, args: tuple, kwargs: dict | None = None):
    """Call ``fn`` (which takes no traced input, e.g. a random draw) and record the call.

    The call becomes a node on every active tape, outermost first, each node's value being
    the tracer of the enclosing tape, so that replaying or compiling any of those tapes calls
    ``fn`` again instead of reusing the recorded result. Outside tracing it just calls ``fn``.

    >>> record_source(np.zeros, ((2,),)).tolist()
    [0.0, 0.0]
    """
    from .tape import active_tapes

    kwargs = kwargs or _NO_KWARGS
    value = fn(*args, **kwargs)
    for tape in active_tapes():
        value = Tracer(value, tape, tape.add(fn, tuple(args), kwargs, [], value, False), False)
    return value


def _escaped():
    return TracerError(
        "a traced value escaped the function that was being differentiated (it was stored "
        "somewhere and used after ad.grad/ad.trace returned); use its concrete value instead"
    )


def _record_flat(fn, args, tape):
    """The common case: positional arguments only, no lists of arrays."""
    if not tape.active:
        raise _escaped()
    raw = list(args)
    parents = []
    any_diff = False
    for i, a in enumerate(args):
        if type(a) is Tracer and a.tape is tape:
            raw[i] = a.value
            parents.append((_LOCATIONS[i], a.node))
            if a.diff:
                any_diff = True
    out = fn(*raw)
    diff = any_diff and _output_diff(fn, out, parents)
    return _finish(fn, tuple(raw), parents, out, diff, tape)


def _differentiable(fn, out, parents) -> bool:
    """Whether ``out`` carries a gradient, given that some parent does."""
    if type(out) in (tuple, list):
        raise TracerError(
            f"{getattr(fn, '__name__', fn)} returned several arrays; nnflow records functions "
            "with one array result (register a decomposition for this function)"
        )
    dtype = getattr(out, "dtype", None)
    if dtype is None or dtype.kind not in _FLOAT_KINDS:
        return False
    info = lookup(fn)
    if info is None:
        loc = next(loc for loc, node in parents if node.diff)
        raise NoRuleError(fn, _argname(fn, loc))
    if not info.differentiable:
        return False
    if not info.nodiff:
        return True
    return any(node.diff and _location_name(info, loc) not in info.nodiff for loc, node in parents)


def _record_general(fn, args, kwargs):
    found: list = []
    tape = _scan(args, found, None, ())
    kw_found = []
    if kwargs:
        for k, a in kwargs.items():
            if type(a) is Tracer:
                kw_found.append((("kw", k), a))
                if tape is None or a.tape.level > tape.level:
                    tape = a.tape
    if not tape.active:
        raise _escaped()
    parents = []
    raw_args = list(args)
    for loc, t in found:
        if t.tape is tape:
            parents.append((loc, t.node))
            if len(loc) == 1:
                raw_args[loc[0]] = t.value
    if any(len(loc) > 1 for loc, _ in parents):
        for i, a in enumerate(raw_args):
            if type(a) in (list, tuple):
                raw_args[i] = _unwrap(a, tape)
    raw_kwargs = kwargs or _NO_KWARGS
    for loc, t in kw_found:
        if t.tape is tape:
            if raw_kwargs is kwargs:
                raw_kwargs = dict(kwargs)
            raw_kwargs[loc[1]] = t.value
            parents.append((loc, t.node))
    out = fn(*raw_args, **raw_kwargs)
    diff = any(node.diff for _, node in parents) and _differentiable(fn, out, parents)
    node = tape.add(fn, tuple(raw_args), raw_kwargs, parents, out, diff)
    return Tracer(out, tape, node, diff)


def _location_name(info, loc) -> str:
    if loc[0] == "kw":
        return loc[1]
    return info.argname(loc[0])[0]


def _argname(fn, loc) -> str:
    from .registry import _signature_names

    if loc[0] == "kw":
        return loc[1]
    names, _ = _signature_names(fn)
    return names[loc[0]] if loc[0] < len(names) else f"#{loc[0]}"


def _ufunc_method(ufunc, method, inputs, kwargs):
    """Rewrite ``np.add.reduce`` and friends into the functions that have rules."""
    reductions = {np.add: np.sum, np.multiply: np.prod, np.maximum: np.max, np.minimum: np.min}
    accumulations = {np.add: np.cumsum, np.multiply: np.cumprod}
    if method == "reduce" and ufunc in reductions:
        return reductions[ufunc](*inputs, **kwargs)
    if method == "accumulate" and ufunc in accumulations:
        return accumulations[ufunc](*inputs, **kwargs)
    if method == "outer" and not kwargs:
        a, b = inputs
        return ufunc(np.reshape(a, np.shape(a) + (1,) * np.ndim(b)), b)
    raise TracerError(
        f"numpy.{ufunc.__name__}.{method} is not supported on traced arrays; "
        "write it with functions that return new arrays (np.sum, np.cumsum, np.where)"
    )


_STATIC = {np.shape, np.ndim, np.size, np.result_type, np.iscomplexobj, np.isrealobj}
_LIKE = {np.zeros_like, np.ones_like, np.empty_like, np.full_like}


def _concrete(x):
    while type(x) is Tracer:
        x = x.value
    return x


_STORE_MESSAGE = (
    "a traced {what} array cannot be converted to a plain NumPy array (np.asarray, np.array, "
    "or writing it into a NumPy array with buf[i] = t): the gradient would be lost. Build new "
    "arrays from traced values instead: np.stack / np.concatenate to assemble, np.where to "
    "select, t[i] = v on a traced array to update"
)
_STORE_SUBSCR = dis.opmap.get("STORE_SUBSCR")


def _storing_into_array() -> bool:
    """Whether NumPy asks for ``float(t)`` to store ``t`` into a plain array (``buf[i] = t``).

    NumPy converts a scalar assigned to an element with ``__float__`` and never consults
    ``__array__``, so the only way to tell ``buf[0] = t`` from ``float(t)`` is the caller's
    current bytecode instruction.
    """
    frame = sys._getframe(2)
    code = frame.f_code.co_code
    return 0 <= frame.f_lasti < len(code) and code[frame.f_lasti] == _STORE_SUBSCR


class Tracer:
    """A traced array: behaves like the NumPy (or CuPy) array it wraps, and records.

    >>> import nnflow.ad as ad
    >>> def f(x):
    ...     assert isinstance(x, Tracer)
    ...     return (x * x).sum()
    >>> float(ad.grad(f, np.array([3.0]))[1][0][0])
    6.0
    """

    __slots__ = ("value", "tape", "node", "diff")
    __array_priority__ = 1000
    __hash__ = None

    def __init__(self, value, tape, node, diff):
        self.value = value
        self.tape = tape
        self.node = node
        self.diff = diff

    # -- NumPy dispatch ---------------------------------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if not kwargs and method == "__call__":
            if len(inputs) == 1:
                return record_unary(ufunc, self)
            if len(inputs) == 2:
                return record_binary(ufunc, *inputs)
            return record(ufunc, inputs, None)
        out = kwargs.pop("out", None)
        if out is not None and any(o is not None for o in out):
            raise TracerError(
                f"numpy.{ufunc.__name__}(..., out=...) writes in place, which cannot be traced; "
                f"write y = np.{ufunc.__name__}(...) instead"
            )
        if method != "__call__":
            return _ufunc_method(ufunc, method, inputs, kwargs)
        return record(ufunc, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        impl = decomposition(func)
        if impl is not None:
            return impl(*args, **kwargs)
        if func in _STATIC:
            return func(*[_concrete(a) for a in args], **kwargs)
        if func in _LIKE:
            return func(_concrete(args[0]), *args[1:], **kwargs)
        return record(func, args, kwargs)

    def __array__(self, dtype=None, copy=None):
        if self.diff:
            raise TracerError(_STORE_MESSAGE.format(what=_describe(self)))
        value = self.value
        self.tape.add_guard(self.node, "array", value)
        value = np.asarray(value)
        return value.astype(dtype) if dtype is not None else value

    def __array_namespace__(self, api_version=None):
        """``numpy`` or ``cupy``, from the wrapped data (how ``get_array_module`` sees it)."""
        from ..backend import get_array_module

        return get_array_module(self.value)

    # -- properties ---------------------------------------------------------------------------
    shape = property(lambda self: np.shape(self.value))
    ndim = property(lambda self: np.ndim(self.value))
    size = property(lambda self: np.size(self.value))
    dtype = property(lambda self: self.value.dtype)
    T = property(lambda self: np.transpose(self))
    mT = property(lambda self: np.swapaxes(self, -1, -2))  # noqa: N815  (NumPy's name)

    def __len__(self):
        return len(self.value)

    def __iter__(self):
        for i in range(len(self.value)):
            yield self[i]

    def __repr__(self):
        return f"Tracer({_describe(self)}, %{self.node.index})"

    # -- conversions become guards --------------------------------------------------------------
    def _convert(self, kind, py):
        result = py(self.value)
        self.tape.add_guard(self.node, kind, result)
        return result

    def __bool__(self):
        return self._convert("bool", bool)

    def __int__(self):
        return self._convert("int", int)

    def __float__(self):
        if self.diff and _storing_into_array():
            raise TracerError(_STORE_MESSAGE.format(what=_describe(self)))
        return self._convert("float", float)

    def __index__(self):
        return self._convert("index", operator.index)

    def item(self):
        return self._convert("float" if is_floating(self) else "int", lambda v: v.item())

    def tolist(self):
        return np.asarray(self).tolist()

    # -- indexing -------------------------------------------------------------------------------
    def __getitem__(self, key):
        return record(operator.getitem, (self, key), None)

    def __setitem__(self, key, value):
        from .rules.indexing import setitem

        new = record(setitem, (self, key, value), None)
        self.value, self.tape, self.node, self.diff = new.value, new.tape, new.node, new.diff

    # -- methods ------------------------------------------------------------------------------
    def reshape(self, *shape, order="C"):
        shape = shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape
        return np.reshape(self, shape, order=order)

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and not isinstance(axes[0], int) else axes
        return np.transpose(self, axes or None)

    def astype(self, dtype, copy=True):
        from .rules.elementwise import astype

        return astype(self, dtype)

    def sum(self, axis=None, dtype=None, keepdims=False):
        return np.sum(self, axis=axis, dtype=dtype, keepdims=keepdims)

    def mean(self, axis=None, dtype=None, keepdims=False):
        return np.mean(self, axis=axis, dtype=dtype, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return np.max(self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, keepdims=False):
        return np.min(self, axis=axis, keepdims=keepdims)

    def prod(self, axis=None, keepdims=False):
        return np.prod(self, axis=axis, keepdims=keepdims)

    def var(self, axis=None, ddof=0, keepdims=False):
        return np.var(self, axis=axis, ddof=ddof, keepdims=keepdims)

    def std(self, axis=None, ddof=0, keepdims=False):
        return np.std(self, axis=axis, ddof=ddof, keepdims=keepdims)

    def cumsum(self, axis=None):
        return np.cumsum(self, axis=axis)

    def cumprod(self, axis=None):
        return np.cumprod(self, axis=axis)

    def dot(self, b):
        return np.dot(self, b)

    def clip(self, min=None, max=None):  # noqa: A002  (NumPy's names)
        return np.clip(self, min, max)

    def ravel(self, order="C"):
        return np.ravel(self, order=order)

    def flatten(self, order="C"):
        return np.ravel(self, order=order)

    def squeeze(self, axis=None):
        return np.squeeze(self, axis=axis)

    def swapaxes(self, axis1, axis2):
        return np.swapaxes(self, axis1, axis2)

    def copy(self):
        return np.copy(self)

    def argmax(self, axis=None, keepdims=False):
        return np.argmax(self, axis=axis, keepdims=keepdims)

    def argmin(self, axis=None, keepdims=False):
        return np.argmin(self, axis=axis, keepdims=keepdims)

    def all(self, axis=None, keepdims=False):
        return np.all(self, axis=axis, keepdims=keepdims)

    def any(self, axis=None, keepdims=False):
        return np.any(self, axis=axis, keepdims=keepdims)


def _describe(t) -> str:
    return f"{np.dtype(t.dtype).name}[{', '.join(map(str, t.shape))}]"


def _binary(ufunc, reflected=False):
    def operator_(self, other):
        if type(other) in (list, tuple):
            other = np.asarray(other)
        return record_binary(ufunc, other, self) if reflected else record_binary(ufunc, self, other)

    return operator_


def _unary(ufunc):
    return lambda self: record_unary(ufunc, self)


_OPERATORS = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "truediv": np.divide,
    "floordiv": np.floor_divide,
    "mod": np.remainder,
    "pow": np.power,
    "matmul": np.matmul,
    "and": np.bitwise_and,
    "or": np.bitwise_or,
    "xor": np.bitwise_xor,
}
for _name, _ufunc in _OPERATORS.items():
    setattr(Tracer, f"__{_name}__", _binary(_ufunc))
    setattr(Tracer, f"__r{_name}__", _binary(_ufunc, reflected=True))
    setattr(Tracer, f"__i{_name}__", _binary(_ufunc))  # in place on a tracer: a new node
for _name, _ufunc in {
    "lt": np.less,
    "le": np.less_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
    "eq": np.equal,
    "ne": np.not_equal,
}.items():
    setattr(Tracer, f"__{_name}__", _binary(_ufunc))
for _name, _ufunc in {
    "neg": np.negative,
    "pos": np.positive,
    "abs": np.absolute,
    "invert": np.invert,
}.items():
    setattr(Tracer, f"__{_name}__", _unary(_ufunc))
