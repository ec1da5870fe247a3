"""A NumPy interpreter of the kernels ``fusion`` generates: CuPy's kernel API, run on the CPU.

``ElementwiseKernel(in_params, out_params, operation, name, preamble=...)`` and
``ReductionKernel(...)`` here take what CuPy's take and *interpret the CUDA-C source* with NumPy,
following C's rules where they differ from NumPy's: the usual arithmetic conversions (``float``
op ``double`` is ``double``, integers narrower than ``int`` are promoted), truncating casts,
``bool`` comparisons, ``?:`` choosing per element, and the preamble's ``template <typename T>``
device functions, expanded from their ``return`` expressions. So the generated text itself is
what is checked: a wrong template, a missing cast or a misplaced operand changes the result.

It covers the subset ``fusion`` emits (expressions; no statements, loops or pointers). Its uses:
the tests of fusion on machines without a GPU, and ``fuse(graph, KERNELS)`` to debug a fused
graph on the CPU.

>>> k = ElementwiseKernel("float32 in0, float32 in1", "float32 out0",
...                       "out0 = (tanh((in0 * in1)))", "demo")
>>> k(np.array([1.0], np.float32), np.array([2.0], np.float32)).tolist() == [np.tanh(np.float32(2))]
True
"""

from __future__ import annotations

import re
import types
from typing import Any

import numpy as np

__all__ = ["ElementwiseKernel", "ReductionKernel", "KERNELS", "evaluate", "parse"]

_TYPES = {
    "bool": "bool", "signed char": "int8", "char": "int8", "short": "int16", "int": "int32",
    "long long": "int64", "long": "int64", "unsigned char": "uint8",
    "unsigned short": "uint16", "unsigned int": "uint32", "unsigned long long": "uint64",
    "unsigned": "uint32", "float": "float32", "double": "float64",
}  # fmt: skip
_TYPE_WORDS = {"bool", "signed", "unsigned", "char", "short", "int", "long", "float", "double"}
_MATH = {
    "exp": np.exp, "exp2": np.exp2, "expm1": np.expm1, "log": np.log, "log2": np.log2,
    "log10": np.log10, "log1p": np.log1p, "sqrt": np.sqrt, "cbrt": np.cbrt, "sin": np.sin,
    "cos": np.cos, "tan": np.tan, "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan,
    "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh, "asinh": np.arcsinh,
    "acosh": np.arccosh, "atanh": np.arctanh, "floor": np.floor, "ceil": np.ceil,
    "trunc": np.trunc, "rint": np.rint, "fabs": np.fabs, "pow": np.power, "atan2": np.arctan2,
    "hypot": np.hypot, "fmax": np.fmax, "fmin": np.fmin, "copysign": np.copysign,
}  # fmt: skip
_PREDICATES = {"isnan": np.isnan, "isinf": np.isinf, "isfinite": np.isfinite}
_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?[fF]?)|(?P<id>[A-Za-z_]\w*)"
    r"|(?P<op>&&|\|\||==|!=|<=|>=|[-+*/<>!?:(),]))"
)


# -- parsing ------------------------------------------------------------------------------------
def _tokens(source: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    source = source.strip()
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None or m.end() == pos:
            raise SyntaxError(f"cannot read C at {source[pos : pos + 20]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    """Recursive descent over C's expression grammar; builds nested tuples."""

    def __init__(self, source: str, type_names: set[str]):
        self.tokens, self.k, self.type_names = _tokens(source), 0, type_names

    def peek(self, ahead: int = 0):
        k = self.k + ahead
        return self.tokens[k] if k < len(self.tokens) else (None, None)

    def take(self, text: str | None = None):
        token = self.peek()
        if text is not None and token[1] != text:
            raise SyntaxError(f"expected {text!r}, found {token[1]!r}")
        self.k += 1
        return token

    def parse(self):
        node = self.ternary()
        if self.peek()[0] is not None:
            raise SyntaxError(f"unexpected {self.peek()[1]!r}")
        return node

    def ternary(self):
        cond = self.binary(0)
        if self.peek()[1] == "?":
            self.take("?")
            a = self.ternary()
            self.take(":")
            return ("?:", cond, a, self.ternary())
        return cond

    _LEVELS = (("||",), ("&&",), ("==", "!="), ("<", ">", "<=", ">="), ("+", "-"), ("*", "/"))

    def binary(self, level: int):
        if level == len(self._LEVELS):
            return self.unary()
        node = self.binary(level + 1)
        while self.peek()[1] in self._LEVELS[level]:
            op = self.take()[1]
            node = ("bin", op, node, self.binary(level + 1))
        return node

    def _cast_type(self) -> tuple[str, int] | None:
        """``(type, tokens)`` if a cast ``(type)`` starts here."""
        words, k = [], 1
        while self.peek(k)[0] == "id" and (
            self.peek(k)[1] in _TYPE_WORDS or self.peek(k)[1] in self.type_names
        ):
            words.append(self.peek(k)[1])
            k += 1
        if words and self.peek(k)[1] == ")":
            return " ".join(words), k + 1
        return None

    def unary(self):
        token = self.peek()
        if token[1] in ("-", "!", "+"):
            self.take()
            return ("un", token[1], self.unary())
        if token[1] == "(":
            cast = self._cast_type()
            if cast is not None:
                self.k += cast[1]
                return ("cast", cast[0], self.unary())
            self.take("(")
            node = self.ternary()
            self.take(")")
            return node
        return self.primary()

    def primary(self):
        kind, text = self.take()
        if kind == "num":
            return ("num", text)
        if kind != "id":
            raise SyntaxError(f"unexpected {text!r}")
        if text in ("true", "false"):
            return ("num", text)
        if self.peek()[1] == "(":
            self.take("(")
            args = []
            if self.peek()[1] != ")":
                args.append(self.ternary())
                while self.peek()[1] == ",":
                    self.take(",")
                    args.append(self.ternary())
            self.take(")")
            return ("call", text, args)
        return ("var", text)


def parse(source: str, type_names: set[str] = frozenset({"T"})):
    """The expression tree of C expression ``source`` (nested tuples).

    >>> parse("(float)a + f(b, 2.0f)")
    ('bin', '+', ('cast', 'float', ('var', 'a')), ('call', 'f', [('var', 'b'), ('num', '2.0f')]))
    """
    return _Parser(source, set(type_names)).parse()


_FUNCTION = re.compile(
    r"template\s*<typename T>\s*__device__\s+T\s+(\w+)\(([^)]*)\)\s*\{\s*return\s+(.*?);\s*\}",
    re.S,
)


def _functions(preamble: str) -> dict[str, tuple[list[str], Any]]:
    """The preamble's ``template <typename T> __device__ T f(T a...) { return e; }`` functions."""
    found = {}
    for name, params, body in _FUNCTION.findall(preamble):
        names = [p.split()[-1] for p in params.split(",") if p.strip()]
        found[name] = (names, parse(body))
    return found


# -- evaluation with C's rules --------------------------------------------------------------------
def _promote_int(dtype: np.dtype) -> np.dtype:
    return np.dtype("int32") if dtype.kind == "b" or dtype.itemsize < 4 else dtype


def _common(a: np.dtype, b: np.dtype) -> np.dtype:
    """C's usual arithmetic conversions."""
    if "f" in (a.kind, b.kind):
        return np.dtype("float64") if np.dtype("float64") in (a, b) else np.dtype("float32")
    a, b = _promote_int(a), _promote_int(b)
    if a == b:
        return a
    if a.itemsize != b.itemsize:
        return a if a.itemsize > b.itemsize else b
    return a if a.kind == "u" else b


def _arr(x) -> np.ndarray:
    return np.asarray(x)


def _literal(text: str) -> np.ndarray:
    if text in ("true", "false"):
        return np.asarray(text == "true")
    if text[-1] in "fF":
        return np.asarray(np.float32(text[:-1]))
    if any(c in text for c in ".eE"):
        return np.asarray(np.float64(text))
    return np.asarray(int(text), dtype=np.int64 if abs(int(text)) >= 2**31 else np.int32)


def _c_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f":
        return np.divide(a, b)
    q = np.abs(a) // np.abs(b)  # C truncates toward zero
    return np.where((a < 0) != (b < 0), -q, q).astype(a.dtype)


_BINARY = {
    "+": np.add, "-": np.subtract, "*": np.multiply, "/": _c_divide,
    "<": np.less, ">": np.greater, "<=": np.less_equal, ">=": np.greater_equal,
    "==": np.equal, "!=": np.not_equal,
}  # fmt: skip


def evaluate(node, env: dict[str, Any], functions: dict | None = None, type_env=None):
    """Value of expression tree ``node`` with variables ``env`` (arrays), elementwise.

    ``functions``: preamble functions (see ``_functions``); ``type_env``: template types.

    >>> evaluate(parse("a > (T)0 ? a : -a"), {"a": np.array([-2.0, 3.0])}, {},
    ...          {"T": np.dtype("f8")}).tolist()
    [2.0, 3.0]
    """
    functions, type_env = functions or {}, type_env or {}
    kind = node[0]
    if kind == "num":
        return _literal(node[1])
    if kind == "var":
        return _arr(env[node[1]])
    if kind == "cast":
        name = node[1]
        dtype = type_env[name] if name in type_env else np.dtype(_TYPES[name])
        value = evaluate(node[2], env, functions, type_env)
        return _arr(value.astype(dtype))
    if kind == "un":
        value = evaluate(node[2], env, functions, type_env)
        if node[1] == "!":
            return _arr(np.logical_not(value))
        value = value.astype(_promote_int(value.dtype)) if value.dtype.kind != "f" else value
        return _arr(-value if node[1] == "-" else value)
    if kind == "bin":
        op = node[1]
        a = evaluate(node[2], env, functions, type_env)
        b = evaluate(node[3], env, functions, type_env)
        if op in ("&&", "||"):
            fn = np.logical_and if op == "&&" else np.logical_or
            return _arr(fn(a.astype(bool), b.astype(bool)))
        common = _common(a.dtype, b.dtype)
        return _arr(_BINARY[op](a.astype(common), b.astype(common)))
    if kind == "?:":
        cond = evaluate(node[1], env, functions, type_env).astype(bool)
        a = evaluate(node[2], env, functions, type_env)
        b = evaluate(node[3], env, functions, type_env)
        common = a.dtype if a.dtype == b.dtype else _common(a.dtype, b.dtype)
        return _arr(np.where(cond, a.astype(common), b.astype(common)))
    if kind == "call":
        name, args = node[1], [evaluate(a, env, functions, type_env) for a in node[2]]
        if name in functions:
            params, body = functions[name]
            if len(params) != len(args) or len({a.dtype for a in args}) != 1:
                raise TypeError(f"{name}: template arguments {[a.dtype for a in args]}")
            return evaluate(body, dict(zip(params, args, strict=True)), functions,
                            {**type_env, "T": args[0].dtype})  # fmt: skip
        if name in _PREDICATES:
            return _arr(_PREDICATES[name](args[0]))
        if name not in _MATH:
            raise NameError(f"no C function {name!r} in the interpreter")
        dtype = args[0].dtype if args[0].dtype.kind == "f" else np.dtype("float64")
        for a in args[1:]:
            dtype = _common(dtype, a.dtype)
        return _arr(_MATH[name](*[a.astype(dtype) for a in args]))
    raise ValueError(f"unknown node {node!r}")


# -- CuPy's kernel API ----------------------------------------------------------------------------
def _params(text: str) -> list[tuple[np.dtype, str]]:
    out = []
    for part in text.split(","):
        dtype, name = part.split()
        out.append((np.dtype(dtype), name))
    return out


class _Kernel:
    def __init__(self, in_params, out_params, name, preamble):
        self.in_params, self.out_params = _params(in_params), _params(out_params)
        self.name, self.preamble = name, preamble
        self.functions = _functions(preamble)

    def _inputs(self, args) -> dict[str, np.ndarray]:
        if len(args) < len(self.in_params):
            raise TypeError(f"{self.name}: {len(self.in_params)} inputs, got {len(args)}")
        env = {}
        for (dtype, name), a in zip(self.in_params, args, strict=False):
            env[name] = np.asarray(a).astype(dtype, copy=False)
        return env

    def _write(self, result: np.ndarray, out):
        dtype = self.out_params[0][0]
        if out is None:
            return np.array(result, dtype=dtype)
        np.copyto(out, result, casting="unsafe")
        return out


class ElementwiseKernel(_Kernel):
    """CuPy's ``ElementwiseKernel`` for ``out0 = <expression>`` operations, interpreted."""

    def __init__(self, in_params, out_params, operation, name="kernel", preamble="", **_):
        super().__init__(in_params, out_params, name, preamble)
        target, _, expr = operation.partition("=")
        if target.strip() != self.out_params[0][1]:
            raise SyntaxError(f"{name}: expected '{self.out_params[0][1]} = ...'")
        self.tree = parse(expr.strip().rstrip(";"))

    def __call__(self, *args):
        n = len(self.in_params)
        env = self._inputs(args[:n])
        shape = np.broadcast_shapes(*(v.shape for v in env.values()))
        with np.errstate(all="ignore"):
            result = np.broadcast_to(evaluate(self.tree, env, self.functions), shape)
        return self._write(result, args[n] if len(args) > n else None)


class ReductionKernel(_Kernel):
    """CuPy's ``ReductionKernel`` for ``a + b`` reductions of a mapped expression."""

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity,
                 name="reduce_kernel", reduce_type=None, preamble="", **_):  # fmt: skip
        super().__init__(in_params, out_params, name, preamble)
        if reduce_expr.replace(" ", "") != "a+b" or post_map_expr.replace(" ", "") != "out0=a":
            raise NotImplementedError("the interpreter reduces with a + b into out0 = a")
        self.tree = parse(map_expr)
        self.reduce_dtype = np.dtype(_TYPES[reduce_type]) if reduce_type else None
        self.identity = identity

    def __call__(self, *args, axis=None, keepdims=False, out=None):
        env = self._inputs(args)
        shape = np.broadcast_shapes(*(v.shape for v in env.values()))
        with np.errstate(all="ignore"):
            mapped = np.broadcast_to(evaluate(self.tree, env, self.functions), shape)
            dtype = self.reduce_dtype or self.out_params[0][0]
            reduced = np.sum(mapped.astype(dtype), axis=axis, keepdims=keepdims)
        return self._write(np.asarray(reduced), out)


KERNELS = types.SimpleNamespace(
    ElementwiseKernel=ElementwiseKernel, ReductionKernel=ReductionKernel
)
"""The kernel constructors as an array module's attributes: ``fuse(graph, KERNELS)``."""
