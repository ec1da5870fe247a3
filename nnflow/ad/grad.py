"""The differentiation API: grad, update, trace, gradient, vjp, jvp, jacobian, hessian, hvp."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..tree import buffer_paths, get_path, is_array, leaves, set_path
from .backward import UNIT, backward
from .distinct import distinct_gradients
from .errors import NonScalarError
from .forward import tangent_of
from .tape import Tape, _Ref
from .tracer import Tracer, is_floating

__all__ = [
    "GradientResult",
    "grad",
    "update",
    "trace",
    "gradient",
    "vjp",
    "jvp",
    "jacobian",
    "hessian",
    "hvp",
]


class GradientResult(tuple):
    """The gradients returned by :func:`grad`: ``g[i]`` belongs to ``args[i]``.

    ``g.tape`` is the recorded forward tape.
    """

    tape: Tape

    def __new__(cls, items, tape):
        self = super().__new__(cls, items)
        self.tape = tape
        return self


# -- wrapping arguments into tracers and back ------------------------------------------------
class _Inputs:
    """Which leaves of which arguments became tape inputs."""

    def __init__(self, tape: Tape, args: Sequence, wrt, tangents=None):
        self.tape, self.kinds, self.nodes = tape, [], []
        self.held: dict[tuple, object] = {}  # (arg index, path) -> input node, all paths
        wrapped = []
        for i, arg in enumerate(args):
            allowed = wrt is None or i in wrt
            tangent = tangents[i] if tangents is not None else None
            if is_array(arg):
                t = self._input(arg, allowed, i, (), tangent)
                wrapped.append(t)
                self.kinds.append("array")
                self.nodes.append(t.node)
            elif isinstance(arg, float):
                t = self._input(np.float64(arg), allowed, i, (), tangent)
                wrapped.append(t)
                self.kinds.append("float")
                self.nodes.append(t.node)
            elif isinstance(arg, (bool, int, complex, str, type(None))):
                wrapped.append(arg)
                self.kinds.append(None)
                self.nodes.append(None)
            else:
                found, by_id = {}, {}
                frozen = buffer_paths(arg)  # buffers: inputs, never differentiated
                for path, leaf in leaves(arg, unique=False):
                    t = by_id.get(id(leaf))  # an array held at several paths (tied weights)
                    if t is None:
                        sub = get_path(tangent, path) if tangent is not None else None
                        t = self._input(leaf, allowed and path not in frozen, i, path, sub)
                        by_id[id(leaf)] = t
                        found[path] = t.node
                    self.held[(i, path)] = t.node
                    arg = set_path(arg, path, t)
                wrapped.append(arg)
                self.kinds.append("tree" if found else None)
                self.nodes.append(found)
        self.wrapped = wrapped

    def _input(self, value, allowed, arg_index, path, tangent):
        diff = allowed and is_floating(value)
        node = self.tape.add_input(value, diff, arg_index, path, tangent if diff else None)
        return Tracer(value, self.tape, node, diff)

    def restore(self) -> None:
        """Put concrete values back into argument objects; remember assigned state."""
        tape = self.tape
        for i, (arg, kind) in enumerate(zip(self.wrapped, self.kinds, strict=True)):
            if kind != "tree":
                continue
            for path, leaf in leaves(arg, unique=False):
                if type(leaf) is Tracer and leaf.tape is tape:
                    if self.held.get((i, path)) is not leaf.node:
                        tape.state.append((i, path, _Ref(leaf.node.index)))
                    set_path(arg, path, leaf.value)


def _concrete(structure, tape: Tape, refs: bool = False):
    """``structure`` with this tape's tracers replaced by values (or by ``_Ref``s)."""
    if type(structure) is Tracer and structure.tape is tape:
        return _Ref(structure.node.index) if refs else structure.value
    if isinstance(structure, (list, tuple)):
        items = [_concrete(s, tape, refs) for s in structure]
        if isinstance(structure, list):
            return items
        return type(structure)(*items) if hasattr(structure, "_fields") else tuple(items)
    if isinstance(structure, dict):
        return {k: _concrete(v, tape, refs) for k, v in structure.items()}
    return structure


def _argument_names(f, count: int) -> list[str]:
    """Names for printing a tape's inputs: ``f``'s parameter names where it has them."""
    try:
        return list(_cached_argument_names(f, count))
    except TypeError:  # an unhashable callable
        return list(_cached_argument_names.__wrapped__(f, count))


@functools.lru_cache(maxsize=256)
def _cached_argument_names(f, count: int) -> tuple[str, ...]:
    import inspect

    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = []
    for i in range(count):
        p = params[min(i, len(params) - 1)] if params else None
        if p is None or p.kind is p.VAR_KEYWORD or p.kind is p.KEYWORD_ONLY:
            names.append(f"args[{i}]")
        elif p.kind is p.VAR_POSITIONAL:
            names.append(f"{p.name}[{i - params.index(p)}]")
        else:
            names.append(p.name)
    return tuple(names)


def _run(f, args, kwargs, wrt=None, tangents=None, forward=False):
    tape = Tape(forward=forward)
    if not forward:
        tape.arg_names = _argument_names(f, len(args))
    if forward:
        tape.tangent_rule = tangent_of
    with tape:
        inputs = _Inputs(tape, args, wrt, tangents)
        try:
            out = f(*inputs.wrapped, **kwargs)
        finally:
            inputs.restore()
    tape.output = _concrete(out, tape, refs=True)
    return tape, inputs, out


def _assemble(inputs: _Inputs, cotangents: dict, wrt) -> list:
    grads = []
    for i, (kind, nodes) in enumerate(zip(inputs.kinds, inputs.nodes, strict=True)):
        if kind is None or (wrt is not None and i not in wrt):
            grads.append(None)
        elif kind == "tree":
            grads.append(
                {path: _cotangent(node, cotangents) for path, node in nodes.items() if node.diff}
            )
        elif not nodes.diff:
            grads.append(None)
        else:
            g = _cotangent(nodes, cotangents)
            grads.append(float(g) if kind == "float" and not isinstance(g, Tracer) else g)
    return grads


def _cotangent(node, cotangents):
    g = cotangents.get(node.index)
    return np.zeros_like(node.value) if g is None else g


# -- reverse mode -------------------------------------------------------------------------------
def grad(f: Callable, *args, wrt: Sequence[int] | None = None, **kwargs):
    """Value of the scalar ``f(*args, **kwargs)`` and its gradient w.r.t. every argument.

    ``g[i]`` is an array like ``args[i]`` for an array, a float for a Python float, a
    ``{path: array}`` dict for any other object (model, dict, list, tuple), and ``None`` for
    arguments that are not floating point or not in ``wrt`` (a tuple of argument indices).

    >>> val, g = grad(lambda x, p: np.sum(p["w"] * x ** 2), np.array([1.0, 2.0]),
    ...               {"w": np.array([3.0, 4.0])})
    >>> float(val), g[0].tolist(), g[1][("w",)].tolist()
    (19.0, [6.0, 16.0], [1.0, 4.0])
    """
    wrt = _normalise_wrt(wrt)
    tape, inputs, out = _run(f, args, kwargs, wrt)
    value = _concrete(out, tape)
    if type(out) is Tracer and out.tape is tape:
        if np.size(out.value) != 1:
            raise NonScalarError(
                f"ad.grad needs a function with a scalar result; {_name(f)} returned "
                f"{np.dtype(out.dtype).name}{list(out.shape)}. Reduce it (np.sum, np.mean), or "
                "use ad.jacobian / ad.vjp for functions with array results"
            )
        # UNIT: ones kept symbolic (no multiplication by them); a tracer (grad inside grad,
        # compile_grad) gets real ones, so that the recorded backward is the plain one
        seed = UNIT if type(out.value) is not Tracer else np.ones_like(out.value)
        cotangents = backward(tape, out.node, seed) if out.diff else {}
    else:
        if np.size(value) != 1:
            raise NonScalarError(f"ad.grad needs a scalar result; got shape {np.shape(value)}")
        cotangents = {}
    grads = distinct_gradients(_assemble(inputs, cotangents, wrt))  # no two share memory
    return value, GradientResult(grads, tape)


def _normalise_wrt(wrt):
    if wrt is None:
        return None
    return (wrt,) if isinstance(wrt, int) else tuple(wrt)


def _name(f) -> str:
    return getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or repr(f)


def update(obj: Any, grads: Any, fn: Callable) -> Any:
    """Replace each array ``x`` at a path of ``grads`` by ``fn(x, gx)``, in place if possible.

    ``grads`` is the ``{path: gradient}`` dict from :func:`grad` (or an array, when ``obj``
    is one); ``None`` gradients are skipped. Returns ``obj``.

    >>> params = {"w": np.array([1.0, 2.0])}
    >>> _ = update(params, {("w",): np.array([0.5, 0.5])}, lambda x, g: x - 0.1 * g)
    >>> params["w"].tolist()
    [0.95, 1.95]
    """
    if not isinstance(grads, dict):
        new = fn(obj, grads)
        return _assign(obj, new)
    for path, g in grads.items():
        if g is None:
            continue
        x = get_path(obj, path)
        new = fn(x, g)
        if new is not x and _assign(x, new) is not x:
            obj = set_path(obj, path, new)
    return obj


def _assign(x, new):
    """Write ``new`` into ``x`` when shapes and dtypes allow, returning what holds the result."""
    writable = getattr(getattr(x, "flags", None), "writeable", False)
    if writable and np.shape(new) == x.shape and getattr(new, "dtype", x.dtype) == x.dtype:
        x[...] = new
        return x
    return new


def trace(f: Callable, *args, **kwargs):
    """Run ``f`` once, recording it: returns ``(value, tape)``.

    >>> val, tape = trace(lambda x: np.sin(x) * 2, np.zeros(2))
    >>> len(tape), tape.play(np.full(2, np.pi / 2)).tolist()
    (3, [2.0, 2.0])
    """
    tape, _, out = _run(f, args, kwargs)
    return _concrete(out, tape), tape


def gradient(f: Callable, argnums: int | Sequence[int] = 0) -> Callable:
    """A function computing the gradient of ``f`` w.r.t. ``argnums`` (composable).

    >>> d2 = gradient(gradient(lambda x: x ** 3))
    >>> float(d2(2.0))
    12.0
    """
    single = isinstance(argnums, int)
    wrt = (argnums,) if single else tuple(argnums)

    def grad_f(*args, **kwargs):
        g = grad(f, *args, wrt=wrt, **kwargs)[1]
        return g[argnums] if single else tuple(g[i] for i in wrt)

    grad_f.__name__ = f"gradient({_name(f)})"
    return grad_f


def vjp(f: Callable, *primals):
    """``(f(*primals), vjp_fn)`` where ``vjp_fn(ct)`` gives the cotangents of the primals.

    >>> out, back = vjp(lambda x: x * 3.0, np.ones(2))
    >>> back(np.array([1.0, 2.0]))[0].tolist()
    [3.0, 6.0]
    """
    tape, inputs, out = _run(f, primals, {})
    value = _concrete(out, tape)

    def vjp_fn(cotangent):
        if type(out) is Tracer and out.tape is tape and out.diff:
            cotangents = backward(tape, out.node, cotangent)
        else:
            cotangents = {}
        return tuple(_assemble(inputs, cotangents, None))

    return value, vjp_fn


def jvp(f: Callable, primals: Sequence, tangents: Sequence):
    """Forward mode: ``(f(*primals), J @ tangents)``, one pass, no tape kept.

    >>> out, t = jvp(np.sin, (np.zeros(2),), (np.array([1.0, 2.0]),))
    >>> t.tolist()
    [1.0, 2.0]
    """
    primals, tangents = tuple(primals), tuple(tangents)
    if len(primals) != len(tangents):
        raise ValueError(f"jvp got {len(primals)} primals but {len(tangents)} tangents")
    tape, _, out = _run(f, primals, {}, tangents=tangents, forward=True)
    return _concrete(out, tape), _tangents(out, tape)


def _tangents(out, tape):
    if type(out) is Tracer and out.tape is tape:
        t = out.node.tangent
        return np.zeros_like(out.value) if t is None else t
    if isinstance(out, (list, tuple)):
        return type(out)(_tangents(o, tape) for o in out)
    return np.zeros_like(out)


def jacobian(f: Callable, x, mode: str = "rev"):
    """The Jacobian of ``f`` at array ``x``, shaped ``f(x).shape + x.shape``.

    ``mode="rev"`` records ``f`` once and runs one backward pass per output element;
    ``mode="fwd"`` runs one forward-mode pass per input element.

    >>> jacobian(lambda x: x ** 2, np.array([1.0, 2.0])).tolist()
    [[2.0, 0.0], [0.0, 4.0]]
    """
    x_shape, size = np.shape(x), int(np.size(x))
    if mode == "rev":
        out, back = vjp(f, x)
        basis = np.eye(int(np.size(out)), dtype=_dtype(out)).reshape((-1,) + np.shape(out))
        rows = [back(e)[0] for e in basis]
        return np.reshape(np.stack(rows), np.shape(out) + x_shape)
    if mode == "fwd":
        basis = np.eye(size, dtype=_dtype(x)).reshape((-1,) + x_shape)
        columns = [jvp(f, (x,), (e,))[1] for e in basis]
        out_shape = np.shape(columns[0])
        return np.reshape(np.stack(columns, axis=-1), out_shape + x_shape)
    raise ValueError(f"jacobian: mode must be 'rev' or 'fwd', got {mode!r}")


def _dtype(x):
    dtype = getattr(x, "dtype", np.float64)
    return dtype if np.dtype(dtype).kind == "f" else np.float64


def hessian(f: Callable, x):
    """The Hessian of scalar ``f`` at ``x`` (forward over reverse), shaped ``x.shape * 2``.

    >>> hessian(lambda x: np.sum(x ** 3), np.array([1.0, 2.0])).tolist()
    [[6.0, 0.0], [0.0, 12.0]]
    """
    return jacobian(gradient(f), x, mode="fwd")


def hvp(f: Callable, x, v):
    """Hessian-vector product of scalar ``f`` at ``x`` with ``v``, without the Hessian.

    >>> hvp(lambda x: np.sum(x ** 3), np.array([1.0, 2.0]), np.array([1.0, 1.0])).tolist()
    [6.0, 12.0]
    """
    return jvp(gradient(f), (x,), (v,))[1]
