"""Elementwise fusion for compiled tapes on the GPU: chains of ufuncs become one CUDA kernel.

On the GPU every elementwise operation is a kernel launch that reads its operands from memory
and writes its result back: ``tanh(x * w + b)`` is three launches and two temporaries where one
pass over the data would do. This module rewrites a compiled tape's graph so that such chains,
forward and backward alike, run as one generated CuPy ``ElementwiseKernel`` each, and a chain
that ends in a ``sum`` as one ``ReductionKernel`` (the summed temporary is never written).

**Which ops fuse** (:func:`plan_fusion`). An op is *fusable* when it is a NumPy ufunc with a
CUDA-C template below, called with positional operands only, on arrays and scalars of a dtype
the kernel can spell (bool, integers, float32, float64), and NumPy's own type resolution
(``ufunc.resolve_dtypes``) gives the dtype it recorded. A fusable op is absorbed into the op that
reads it when that reader is fusable too (or is a ``sum`` over the chain, with only ``axis`` and
``keepdims``), the value is read exactly once (one consumer, one operand slot) and it does not
leave the step (output, state written back). Operands are broadcast by the kernel, so a value of
a smaller shape inside a chain is recomputed per output element: cheap next to a launch, and
only ever done once per element since every absorbed value has one reader. Groups are grown
from the last op backwards, so each op joins the chain of its one consumer; a group needs two
ops (or one op and its ``sum``) to be worth a kernel.

**What a group becomes** (:class:`FusedKernel`). One graph op at the chain's last position, with
the group's *leaves* (values from outside the group, array constants, non-finite scalars) as
arguments. Its CUDA-C body is one expression, a tree with one node per fused op, each operand
cast to the loop dtype NumPy would use and each result cast to its recorded dtype, so float32
chains round like the unfused ones step by step, and ``maximum``, ``sign``, ``logaddexp``
follow NumPy on NaN and signed zeros. Multi-use templates are ``__device__`` functions of a
preamble (an operand is never evaluated twice). The op declares itself ``elementwise`` to the
memory planner, which keeps its in-place reuse: a fused op may write over a leaf that dies there
(same shape, dtype and layout: each thread reads and writes one element). When two leaves may
be views of one buffer, the op asks for a fresh buffer instead (a kernel, unlike NumPy, does
not guard against overlapping operands).

The kernels are built with the array module of the data (``xp.ElementwiseKernel``), so this
module never imports CuPy; :func:`supported` says whether a module can run them, and
``nnflow.ad.fusion_numpy`` is a NumPy interpreter of the generated source, used to test the
planner, the source and its semantics on machines without a GPU.

>>> import nnflow.ad as ad
>>> from nnflow.ad.passes import from_tape
>>> _, tape = ad.trace(lambda x, w: np.tanh(x * w + 1.0), np.ones(3), np.ones(3))
>>> [[str(op) for op in group.ops] for group in plan_fusion(from_tape(tape))]
[['%3 = multiply(%1, %2)', '%4 = add(%3, 1.0)', '%5 = tanh(%4)']]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .memory import FRESH
from .passes import Graph, Op, is_impure
from .tape import _describe, _Ref

__all__ = [
    "FusedKernel",
    "Group",
    "PREAMBLE",
    "TEMPLATES",
    "c_type",
    "describe",
    "expression",
    "fuse",
    "plan_fusion",
    "supported",
]

# -- CUDA-C templates ---------------------------------------------------------------------------
# ``{0}``, ``{1}``: the operands, already cast to the loop's input dtype. ``F``: float loops
# only (NumPy has no integer loop, or C's differs); the others serve integer and bool loops too.
_F, _ANY = "f", "fiub"
TEMPLATES: dict[np.ufunc, tuple[str, str]] = {
    np.add: ("{0} + {1}", _ANY),
    np.subtract: ("{0} - {1}", "fiu"),
    np.multiply: ("{0} * {1}", _ANY),
    np.divide: ("{0} / {1}", _F),
    np.negative: ("-{0}", "fi"),
    np.positive: ("{0}", "fiu"),
    np.square: ("nnf_square({0})", "fiu"),
    np.reciprocal: ("nnf_reciprocal({0})", _F),
    np.absolute: ("nnf_abs({0})", "fi"),
    np.fabs: ("fabs({0})", _F),
    np.sign: ("nnf_sign({0})", "fi"),
    np.maximum: ("nnf_maximum({0}, {1})", _ANY),
    np.minimum: ("nnf_minimum({0}, {1})", _ANY),
    np.fmax: ("fmax({0}, {1})", _F),
    np.fmin: ("fmin({0}, {1})", _F),
    np.power: ("pow({0}, {1})", _F),
    np.arctan2: ("atan2({0}, {1})", _F),
    np.hypot: ("hypot({0}, {1})", _F),
    np.copysign: ("copysign({0}, {1})", _F),
    np.logaddexp: ("nnf_logaddexp({0}, {1})", _F),
    np.greater: ("{0} > {1}", _ANY),
    np.greater_equal: ("{0} >= {1}", _ANY),
    np.less: ("{0} < {1}", _ANY),
    np.less_equal: ("{0} <= {1}", _ANY),
    np.equal: ("{0} == {1}", _ANY),
    np.not_equal: ("{0} != {1}", _ANY),
    np.logical_and: ("{0} && {1}", _ANY),
    np.logical_or: ("{0} || {1}", _ANY),
    np.logical_not: ("!{0}", _ANY),
    np.isnan: ("isnan({0})", _F),
    np.isinf: ("isinf({0})", _F),
    np.isfinite: ("isfinite({0})", _F),
}
for _ufunc, _c in (
    (np.exp, "exp"), (np.exp2, "exp2"), (np.expm1, "expm1"), (np.log, "log"),
    (np.log2, "log2"), (np.log10, "log10"), (np.log1p, "log1p"), (np.sqrt, "sqrt"),
    (np.cbrt, "cbrt"), (np.sin, "sin"), (np.cos, "cos"), (np.tan, "tan"), (np.arcsin, "asin"),
    (np.arccos, "acos"), (np.arctan, "atan"), (np.sinh, "sinh"), (np.cosh, "cosh"),
    (np.tanh, "tanh"), (np.arcsinh, "asinh"), (np.arccosh, "acosh"), (np.arctanh, "atanh"),
    (np.floor, "floor"), (np.ceil, "ceil"), (np.trunc, "trunc"), (np.rint, "rint"),
):  # fmt: skip
    TEMPLATES[_ufunc] = (f"{_c}({{0}})", _F)

# Device functions for templates that use an operand twice; each body is one ``return``
# expression (which is what lets ``fusion_numpy`` interpret them). NumPy's semantics: maximum and
# minimum propagate NaN and return the second operand on ties (signed zeros), sign(+-0) and
# abs(-0) are +0.
PREAMBLE = """\
template <typename T> __device__ T nnf_square(T a) { return a * a; }
template <typename T> __device__ T nnf_reciprocal(T a) { return (T)1 / a; }
template <typename T> __device__ T nnf_abs(T a) { return a < (T)0 ? -a : (a == (T)0 ? (T)0 : a); }
template <typename T> __device__ T nnf_maximum(T a, T b) { return (a > b || a != a) ? a : b; }
template <typename T> __device__ T nnf_minimum(T a, T b) { return (a < b || a != a) ? a : b; }
template <typename T> __device__ T nnf_sign(T a) {
  return a != a ? a : (a > (T)0 ? (T)1 : (a < (T)0 ? (T)-1 : (T)0)); }
template <typename T> __device__ T nnf_logaddexp(T a, T b) {
  return a == b ? a + log((T)2) : (a > b ? a + log1p(exp(b - a))
         : (a < b ? b + log1p(exp(a - b)) : a - b)); }
"""

_C_TYPES = {
    "bool": "bool", "int8": "signed char", "int16": "short", "int32": "int",
    "int64": "long long", "uint8": "unsigned char", "uint16": "unsigned short",
    "uint32": "unsigned int", "uint64": "unsigned long long", "float32": "float",
    "float64": "double",
}  # fmt: skip
_REDUCE_KWARGS = {"axis", "keepdims", "dtype"}
_MAX_LEAVES = 48  # well under CUDA's kernel parameter limit, and a sane kernel size


def c_type(dtype) -> str:
    """The C type of a NumPy dtype in generated kernels.

    >>> c_type(np.float32), c_type(np.int64)
    ('float', 'long long')
    """
    return _C_TYPES[np.dtype(dtype).name]


def supported(xp) -> bool:
    """Whether array module ``xp`` can run generated kernels (CuPy, or a stand-in for it).

    >>> supported(np)
    False
    """
    return hasattr(xp, "ElementwiseKernel") and hasattr(xp, "ReductionKernel")


# -- the planner --------------------------------------------------------------------------------
@dataclass
class Group:
    """Ops fused into one kernel, in graph order; ``root`` is the last (its value is the
    kernel's result); ``reduction`` the ``sum`` op it ends in, if any."""

    ops: list[Op]
    reduction: Op | None = None
    leaves: list[Any] = field(default_factory=list)  # _Ref or constant, kernel argument order

    @property
    def root(self) -> Op:
        return self.reduction or self.ops[-1]


def _dtype_of(x, defs: dict[int, Op]):
    """The dtype a ufunc's type resolution should see for operand ``x`` (Python scalars weak)."""
    if isinstance(x, _Ref):
        x = defs[x.index].value
    if type(x) in (int, float):
        return type(x)
    if type(x) is bool:
        return np.dtype(bool)
    dtype = getattr(x, "dtype", None)
    return None if dtype is None else np.dtype(dtype)


def _loop(op: Op, defs: dict[int, Op]) -> tuple | None:
    """``(input dtypes, output dtype)`` of a fusable ufunc op, or ``None`` when it cannot fuse."""
    fn = op.fn
    if not isinstance(fn, np.ufunc) or fn not in TEMPLATES or op.kwargs:
        return None
    if fn.nout != 1 or len(op.args) != fn.nin or is_impure(fn):
        return None
    value = op.value
    if type(value).__name__ != "ndarray" or np.dtype(value.dtype).name not in _C_TYPES:
        return None
    operands = [_dtype_of(a, defs) for a in op.args]
    if any(d is None or (isinstance(d, np.dtype) and d.name not in _C_TYPES) for d in operands):
        return None
    try:
        types = fn.resolve_dtypes((*operands, None))
    except (TypeError, ValueError, AttributeError):
        return None
    *ins, out = types
    if out != value.dtype or any(d.name not in _C_TYPES for d in ins):
        return None
    kind = ins[0].kind if ins else out.kind
    if kind not in TEMPLATES[fn][1]:
        return None
    return tuple(ins), out


def _reduction_of(op: Op, defs: dict[int, Op]) -> Op | None:
    """The op ``op`` sums (a plain ``np.sum`` over a float chain), or ``None``."""
    if op.fn is not np.sum or not 1 <= len(op.args) <= 2 or set(op.kwargs) - _REDUCE_KWARGS:
        return None
    if op.kwargs.get("dtype") is not None or not isinstance(op.args[0], _Ref):
        return None
    source = defs.get(op.args[0].index)
    value = op.value
    if source is None or getattr(value, "dtype", None) is None:
        return None
    if np.dtype(value.dtype) != np.dtype(getattr(source.value, "dtype", None) or "O"):
        return None
    if np.dtype(value.dtype).kind != "f":
        return None
    return source


def plan_fusion(graph: Graph) -> list[Group]:
    """The fusion groups of ``graph`` (module docstring), in graph order of their roots.

    >>> import nnflow.ad as ad
    >>> from nnflow.ad.passes import from_tape
    >>> _, tape = ad.trace(lambda x: np.sum(np.exp(x) * 2.0), np.ones(3))
    >>> [str(op) for op in plan_fusion(from_tape(tape))[0].ops]
    ['%2 = exp(%1)', '%3 = multiply(%2, 2.0)']
    """
    defs = {op.index: op for op in graph.ops}
    uses = graph.uses()
    escaping = graph.escaping()
    loops: dict[int, tuple] = {}
    for op in graph.ops:
        if not op.is_input and not op.is_guard:
            loop = _loop(op, defs)
            if loop is not None:
                loops[op.index] = loop
    state = {ref.index for _, _, ref in graph.state}
    taken: set[int] = set()
    groups: list[Group] = []

    def absorbable(i: int) -> bool:
        return i in loops and i not in taken and uses.get(i) == 1 and i not in escaping

    def grow(root: Op) -> list[Op]:
        members, todo = [root], [root]
        taken.add(root.index)
        while todo:
            op = todo.pop()
            for a in op.args:
                if isinstance(a, _Ref) and absorbable(a.index):
                    taken.add(a.index)
                    members.append(defs[a.index])
                    todo.append(defs[a.index])
        return members

    for op in reversed(graph.ops):
        if op.index in taken or op.is_input or op.is_guard:
            continue
        source = _reduction_of(op, defs)
        if source is not None and absorbable(source.index) and op.index not in state:
            members = grow(source)
            groups.append(Group(sorted(members, key=_position(graph)), reduction=op))
            taken.add(op.index)
        elif op.index in loops:
            members = grow(op)
            if len(members) >= 2:
                groups.append(Group(sorted(members, key=_position(graph))))
            else:
                taken.discard(op.index)  # alone: left as it is (its producers stay free too)
    groups.reverse()
    for group in groups:
        group.leaves = _leaves(group)
    return [g for g in groups if len(g.leaves) <= _MAX_LEAVES]


def _position(graph: Graph) -> Callable[[Op], int]:
    order = {op.index: k for k, op in enumerate(graph.ops)}
    return lambda op: order[op.index]


def _inline(x) -> str | None:
    """C source for a scalar constant written into the kernel, or ``None`` (a kernel argument)."""
    if type(x) is bool:
        return "true" if x else "false"
    if type(x) is int and -(2**62) < x < 2**62:
        return repr(x)
    if type(x) is float and math.isfinite(x):
        text = repr(x)
        return text if "." in text or "e" in text else text + ".0"
    return None


def _leaves(group: Group) -> list[Any]:
    """The kernel's arguments: values from outside the group and constants not inlined."""
    inside = {op.index for op in group.ops}
    leaves: list[Any] = []
    seen: set = set()
    for op in group.ops:
        for a in op.args:
            if isinstance(a, _Ref):
                if a.index in inside or ("ref", a.index) in seen:
                    continue
                seen.add(("ref", a.index))
                leaves.append(a)
            elif _inline(a) is None and ("const", id(a)) not in seen:
                seen.add(("const", id(a)))
                leaves.append(a)
    return leaves


# -- source generation --------------------------------------------------------------------------
def _cast(expr: str, have: np.dtype, want: np.dtype) -> str:
    """``expr`` (an identifier or a parenthesised expression) converted to ``want``."""
    return expr if have == want else f"(({c_type(want)}){expr})"


def _c_result(template: str, ins: tuple) -> np.dtype | None:
    """The C type of a template's result when it is that of NumPy's loop, else ``None``.

    C promotes bool and integers narrower than ``int`` before arithmetic (``a + b`` on two
    ``short`` is an ``int``); comparisons and logical operators give ``bool``.
    """
    first = np.dtype(ins[0]) if ins else None
    if template.startswith(("isnan", "isinf", "isfinite", "!")) or any(
        op in template for op in (" > ", " >= ", " < ", " <= ", " == ", " != ", " && ", " || ")
    ):
        return np.dtype(bool)
    if first is not None and (first.kind == "f" or first.itemsize >= 4 and first.kind in "iu"):
        return first
    if template.startswith("nnf_"):  # device functions return their argument type
        return first
    return None


def expression(group: Group, defs: dict[int, Op]) -> tuple[str, list[np.dtype]]:
    """The group's CUDA-C expression over ``in0, in1...`` and the dtypes of those parameters.

    Every operand is cast to the loop dtype NumPy resolves for its op, and every intermediate
    result to its recorded dtype, so the kernel computes in the same precision, step by step.
    """
    inside = {op.index: op for op in group.ops}
    param_types = []
    names: dict = {}
    for k, leaf in enumerate(group.leaves):
        key = ("ref", leaf.index) if isinstance(leaf, _Ref) else ("const", id(leaf))
        names[key] = f"in{k}"
        value = defs[leaf.index].value if isinstance(leaf, _Ref) else leaf
        dtype = getattr(value, "dtype", None)
        param_types.append(np.dtype(dtype) if dtype is not None else np.dtype(type(value)))
    loops = {op.index: _loop(op, defs) for op in group.ops}

    def operand(a, want: np.dtype) -> str:
        if isinstance(a, _Ref) and a.index in inside:
            have = inside[a.index].value.dtype
            return _cast(emit(inside[a.index]), np.dtype(have), want)
        if isinstance(a, _Ref) or _inline(a) is None:
            key = ("ref", a.index) if isinstance(a, _Ref) else ("const", id(a))
            k = int(names[key][2:])
            return _cast(names[key], param_types[k], want)
        literal = _inline(a)
        if literal.startswith("-"):
            literal = f"({literal})"
        return f"(({c_type(want)}){literal})"

    def emit(op: Op) -> str:
        ins, out = loops[op.index]
        template = TEMPLATES[op.fn][0]
        body = template.format(*[operand(a, t) for a, t in zip(op.args, ins, strict=True)])
        natural = _c_result(template, ins)
        return f"({body})" if natural == out else f"(({c_type(out)})({body}))"

    return emit(group.ops[-1]), param_types


# -- the fused op -------------------------------------------------------------------------------
_KERNEL_IDS = itertools.count()


class FusedKernel:
    """A fused group as one callable: ``k(*leaves)``, ``k(*leaves, out)`` (elementwise) or
    ``k(*leaves, axis=..., keepdims=..., out=...)`` (a reduction), running one CuPy kernel.

    Attributes:
        source: the CUDA-C the kernel is built from (what ``print(kernel)`` shows);
        in_params, out_params, operation: the ``ElementwiseKernel`` / ``ReductionKernel``
            arguments; ``ops``: the fused ops, as printed in a graph; ``reduction``: bool.
    """

    def __init__(self, group: Group, defs: dict[int, Op], xp, may_overlap: bool = False):
        reduction = [str(group.reduction)] if group.reduction is not None else []
        self.ops = [str(op) for op in group.ops] + reduction
        self.reduction = group.reduction is not None
        root = group.root
        self.__name__ = f"fused{root.index}"
        self.name = f"nnflow_fused{root.index}_{next(_KERNEL_IDS)}"
        expr, types = expression(group, defs)
        self.in_params = ", ".join(f"{t.name} in{k}" for k, t in enumerate(types))
        out_dtype = np.dtype(root.value.dtype)
        self.out_params = f"{out_dtype.name} out0"
        self.preamble = PREAMBLE
        # elementwise: the planner may write over a dying leaf; "out": a buffer of its own
        self.__nnflow_out_kind__ = "out" if self.reduction or may_overlap else "elementwise"
        self.nin = len(types)
        if self.reduction:
            self.operation = expr
            self.reduce_type = c_type(out_dtype)
            self._kernel = xp.ReductionKernel(
                self.in_params, self.out_params, expr, "a + b", "out0 = a", "0",
                name=self.name, reduce_type=self.reduce_type, preamble=PREAMBLE,
            )  # fmt: skip
            self.source = (
                f"ReductionKernel({self.name}): {self.in_params} -> {self.out_params}\n"
                f"  map:    {expr}\n  reduce: a + b (identity 0, {self.reduce_type})\n"
                f"  post:   out0 = a"
            )
        else:
            self.operation = f"out0 = {expr}"
            self._kernel = xp.ElementwiseKernel(
                self.in_params, self.out_params, self.operation, name=self.name,
                preamble=PREAMBLE,
            )  # fmt: skip
            self.source = (
                f"ElementwiseKernel({self.name}): {self.in_params} -> {self.out_params}\n"
                f"  {self.operation};"
            )

    def __call__(self, *args, out=None, axis=None, keepdims=False):
        if self.reduction:
            return self._kernel(*args, axis=axis, keepdims=keepdims, out=out)
        if len(args) > self.nin:  # the planned output, positional as for a ufunc
            return self._kernel(*args)
        if out is not None:
            return self._kernel(*args, out)
        return self._kernel(*args)

    def __repr__(self):
        kind = "reduction" if self.reduction else "elementwise"
        return f"<{self.__name__}: {kind} kernel of {len(self.ops)} ops>"

    def __str__(self):
        return self.source


def _storages(graph: Graph) -> Callable[[int], frozenset]:
    """For each value, the values whose memory it may share (views of views...)."""
    defs = {op.index: op for op in graph.ops}
    memo: dict[int, frozenset] = {}

    def roots(i: int) -> frozenset:
        if i not in memo:
            op = defs.get(i)
            fresh = (
                op is None or op.is_input or op.is_guard or isinstance(op.fn, np.ufunc)
                or op.fn in FRESH or is_impure(op.fn) or isinstance(op.fn, FusedKernel)
            )  # fmt: skip
            memo[i] = frozenset([i]) if fresh else frozenset().union(*map(roots, op.refs()))
        return memo[i]

    return roots


def fuse(graph: Graph, xp, groups: list[Group] | None = None) -> Graph:
    """``graph`` with every group of :func:`plan_fusion` replaced by one :class:`FusedKernel` op.

    Args:
        graph: an optimised graph (``passes.optimize``), before memory planning.
        xp: the array module whose ``ElementwiseKernel``/``ReductionKernel`` build the kernels.
        groups: the groups to fuse (default: ``plan_fusion(graph)``).
    """
    groups = plan_fusion(graph) if groups is None else groups
    if not groups:
        return graph
    defs = {op.index: op for op in graph.ops}
    roots = _storages(graph)
    absorbed: set[int] = set()
    replaced: dict[int, Op] = {}
    for group in groups:
        refs = [leaf.index for leaf in group.leaves if isinstance(leaf, _Ref)]
        shared = [roots(i) for i in refs]
        may_overlap = any(a & b for a, b in itertools.combinations(shared, 2))
        kernel = FusedKernel(group, defs, xp, may_overlap)
        root = group.root
        kwargs = {}
        if group.reduction is not None:
            op = group.reduction
            axis = op.args[1] if len(op.args) > 1 else op.kwargs.get("axis")
            kwargs = {"axis": axis, "keepdims": bool(op.kwargs.get("keepdims", False))}
        replaced[root.index] = Op(root.index, kernel, tuple(group.leaves), kwargs, root.value)
        absorbed.update(op.index for op in group.ops if op.index != root.index)
    ops = [replaced.get(op.index, op) for op in graph.ops if op.index not in absorbed]
    return Graph(ops, graph.output, graph.state)


def describe(graph: Graph) -> str:
    """The fused kernels of a graph, one block each (for ``print``).

    >>> import nnflow.ad as ad
    >>> from nnflow.ad.passes import from_tape
    >>> print(describe(from_tape(ad.trace(lambda x: np.exp(x), np.ones(2))[1])))
    no fused kernels
    """
    blocks = [
        f"%{op.index} {_describe(op.value)} <- " + "; ".join(op.fn.ops) + "\n" + op.fn.source
        for op in graph.ops
        if isinstance(op.fn, FusedKernel)
    ]
    return "\n\n".join(blocks) if blocks else "no fused kernels"
