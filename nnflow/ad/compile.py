"""Compiled tapes: ``compile(tape)`` and ``compile_grad(f)``.

``compile(tape)`` optimises a recorded tape (``passes``), plans its memory (``memory``) and
generates one straight-line Python function (``codegen``), executed with ``exec``: the
interpretive overhead of replaying a tape node by node is gone, and steady-state calls write
into buffers allocated once.

``compile_grad(f)`` records the forward *and* backward pass of ``ad.grad(f, ...)`` onto one tape
(``grad`` traced under ``trace``: every rule call lands on the outer tape) and compiles it, once
per signature (see ``signature``). Python branches on traced values became guards: a call whose
guards fail is traced again and the new variant cached beside the old one.

Returned gradients may be views of the step's internal buffers: the next call overwrites them.
Pass ``copy=True`` (``cg(*args, copy=True)``) to get arrays of your own, or copy the ones you
keep. Arrays you pass in are never written, except the state attributes ``f`` assigns.
"""

from __future__ import annotations

import builtins
import itertools
import linecache
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from ..backend import get_array_module
from . import fusion
from .codegen import generate, state_structure
from .distinct import distinct_gradients
from .grad import GradientResult, _argument_names, _concrete, _normalise_wrt, _run, grad
from .memory import Plan, plan, view_of
from .passes import Graph, from_tape, is_impure, optimize
from .signature import accessor, describe_change, find_objects, signature
from .tape import _ACTIVE, GuardFailure, Tape, place

__all__ = ["CompiledTape", "CompiledGrad", "RetraceWarning", "compile", "compile_grad"]

_COUNTER = itertools.count()


class RetraceWarning(UserWarning):
    """A compiled function was traced again more often than expected (and why)."""


class CompiledTape:
    """A tape turned into generated Python: ``play(*args)`` gives what ``tape.play`` gives.

    Attributes:
        source: the generated function's source (``print(c.source)``).
        graph: the optimised graph it was generated from; ``plan``: its memory plan.
    """

    def __init__(
        self,
        tape: Tape,
        *,
        optimized: bool = True,
        n_args: int | None = None,
        inputs: dict | None = None,
        writers: dict | None = None,
        known: dict | None = None,
        name: str = "tape",
    ):
        graph = from_tape(tape)
        self.tape = tape
        self.graph: Graph = optimize(graph) if optimized else graph
        xp = get_array_module(*[op.value for op in self.graph.inputs])
        if optimized and fusion.supported(xp):  # on the GPU: elementwise chains, one kernel
            self.graph = fusion.fuse(self.graph, xp)
        self.plan: Plan = plan(self.graph)
        if n_args is None:  # the traced function's arity, inputs or not (a generator, an int)
            n_args = len(getattr(tape, "arg_names", ())) or None
        generated = generate(self.graph, self.plan, n_args, inputs, writers, known)
        self.source: str = generated.source
        raws = [xp.empty(n, dtype=np.uint8) for n in self.plan.buffers]
        namespace = generated.namespace
        for view, (k, shape, dtype, axes) in generated.views.items():
            namespace[view] = view_of(raws[k], shape, dtype, axes)
        self.nbytes = sum(self.plan.buffers)
        self._owned = {id(raw) for raw in raws}
        filename = f"<nnflow compiled {name} #{next(_COUNTER)}>"
        linecache.cache[filename] = (len(self.source), None, self.source.splitlines(True), filename)
        exec(builtins.compile(self.source, filename, "exec"), namespace)
        self._play: Callable = namespace["play"]
        self.has_guards = any(op.is_guard for op in self.graph.ops)
        self.impure = [op for op in self.graph.ops if is_impure(op.fn)]

    def play(self, *args, copy: bool = False):
        """Run the compiled tape on ``args`` (the same structure and shapes as recorded).

        With ``copy=False`` the arrays returned may be the step's buffers, overwritten by the
        next call. Raises ``GuardFailure`` where ``tape.play`` would.

        >>> import nnflow.ad as ad
        >>> _, tape = ad.trace(lambda x: np.tanh(x) * 2, np.zeros(2))
        >>> ad.compile(tape).play(np.zeros(2), copy=True).tolist()
        [0.0, 0.0]
        """
        out = self._play(*self.unaliased(args))
        return copy_arrays(out) if copy else out

    __call__ = play

    def unaliased(self, args: tuple) -> tuple:
        """``args`` with arrays that view this step's buffers copied (they are overwritten)."""
        owned = self._owned
        if owned and any(id(getattr(a, "base", None)) in owned for a in args):
            return tuple(a.copy() if id(getattr(a, "base", None)) in owned else a for a in args)
        return args

    def __repr__(self):
        ops = sum(1 for op in self.graph.ops if not op.is_input)
        return f"CompiledTape({ops} ops, {self.plan.describe()})"


def copy_arrays(structure):
    """``structure`` (tuples, lists, dicts) with every array copied.

    >>> a = np.ones(2); copy_arrays((a, {"k": a}))[1]["k"] is a
    False
    """
    if isinstance(structure, (list, tuple)):
        items = [copy_arrays(s) for s in structure]
        if isinstance(structure, GradientResult):
            return GradientResult(items, structure.tape)
        return items if isinstance(structure, list) else type(structure)(items)
    if isinstance(structure, dict):
        return {k: copy_arrays(v) for k, v in structure.items()}
    return (
        structure.copy()
        if hasattr(structure, "copy") and hasattr(structure, "shape")
        else structure
    )


def compile(tape: Tape, optimized: bool = True) -> CompiledTape:  # noqa: A001  (the API name)
    """Compile a recorded tape; ``compile(tape).play(*args)`` equals ``tape.play(*args)``.

    >>> import nnflow.ad as ad
    >>> _, tape = ad.trace(lambda x: np.sum(np.exp(x)), np.zeros(3))
    >>> c = ad.compile(tape)
    >>> float(c.play(np.zeros(3))) == float(tape.play(np.zeros(3)))
    True
    >>> print(c.source.splitlines()[0])
    def play(a0):
    """
    return CompiledTape(tape, optimized=optimized)


# -- compile_grad -----------------------------------------------------------------------------
class _Variant:
    """One compiled step for one signature and one set of branch outcomes."""

    def __init__(self, compiled: CompiledTape, float_args: tuple[int, ...], generators: list):
        self.compiled, self.float_args = compiled, float_args
        self.generators = generators  # (where in the arguments or None, generator) pairs
        self.snapshot = compiled.has_guards and bool(compiled.impure)

    def rng_states(self, flat) -> list:
        """The states of the generators this step draws from (restored if a guard fails)."""
        gens = [g if where is None else _read(flat, *where) for where, g in self.generators]
        return [(g, g.bit_generator.state) for g in gens if hasattr(g, "bit_generator")]


def _read(flat, arg, path):
    x = flat[arg]
    for key in path:
        x = x[key] if isinstance(x, (dict, list, tuple)) else getattr(x, key)
    return x


class CompiledGrad:
    """``cg(*args, **kwargs) -> (value, gradients)``, as ``ad.grad(f, ...)``, compiled.

    See :func:`compile_grad`. ``cg.tape(*args)`` and ``cg.source(*args)`` show what runs for
    such arguments; ``cg.traces`` counts the traces so far.
    """

    def __init__(self, f: Callable, wrt=None, cache_size: int = 32, warn_after: int = 8):
        self.f, self.wrt = f, _normalise_wrt(wrt)
        self.cache_size, self.warn_after = cache_size, warn_after
        self.traces = 0
        self._cache: OrderedDict[tuple, list[_Variant]] = OrderedDict()
        self._last_key: tuple | None = None
        self.__name__ = f"compile_grad({getattr(f, '__name__', repr(f))})"

    def __call__(self, *args, copy: bool = False, **kwargs):
        if _ACTIVE:  # differentiated or traced from outside: be the eager function
            return grad(self.f, *args, wrt=self.wrt, **kwargs)
        flat, names = self._flatten(args, kwargs)
        key = (names, signature(flat))
        variants = self._cache.get(key)
        if variants is None:
            return self._trace(key, flat, names, copy, self._why_new(key))
        self._cache.move_to_end(key)
        failure = None
        for position, variant in enumerate(variants):
            states = variant.rng_states(flat) if variant.snapshot else None
            try:
                out = variant.compiled._play(*variant.compiled.unaliased(flat))
            except GuardFailure as error:
                failure = error
                for g, state in states or ():
                    g.bit_generator.state = state
                continue
            if position:  # most recently matched first: alternating inputs pay one failure
                variants.insert(0, variants.pop(position))
            return self._result(out, variant, copy)
        return self._trace(key, flat, names, copy, f"a data-dependent branch changed ({failure})")

    @staticmethod
    def _flatten(args, kwargs):
        if not kwargs:
            return args, ()
        names = tuple(sorted(kwargs))
        return args + tuple(kwargs[k] for k in names), names

    def _result(self, out, variant: _Variant, copy: bool):
        value, grads = out
        grads = distinct_gradients(list(grads))  # as eager grad: no two share memory
        if variant.float_args:
            for i in variant.float_args:
                grads[i] = None if grads[i] is None else float(grads[i])
        result = GradientResult(grads, variant.compiled.tape)
        return (copy_arrays(value), copy_arrays(result)) if copy else (value, result)

    # -- tracing ----------------------------------------------------------------------------
    def _why_new(self, key) -> str:
        if self._last_key is None:
            return "first call"
        names = _argument_names(self.f, len(key[1]) - len(key[0])) + list(key[0])
        if key[0] != self._last_key[0]:
            return f"keyword arguments changed ({self._last_key[0]} -> {key[0]})"
        change = describe_change(self._last_key[1], key[1], names)
        evicted = "" if len(self._cache) < self.cache_size else " (cache full)"
        return f"the signature changed: {change}{evicted}"

    def _step(self, n: int, names: tuple):
        f, wrt = self.f, self.wrt

        def step(*flat):
            value, grads = grad(f, *flat[:n], wrt=wrt, **dict(zip(names, flat[n:], strict=True)))
            return value, tuple(grads)

        return step

    def _record(self, flat, names):
        step = self._step(len(flat) - len(names), names)
        before = np.random.get_state(legacy=False)
        tape, _, out = _run(step, flat, {}, wrt=())
        tape.arg_names = _argument_names(self.f, len(flat) - len(names)) + list(names)
        _warn_global_random(before, self.__name__)
        return tape, _concrete(out, tape)

    def _trace(self, key, flat, names, copy, reason):
        tape, (value, grads) = self._record(flat, names)
        variant = self._compile(tape, flat, len(flat) - len(names))
        self.traces += 1
        if self.traces > self.warn_after:
            warnings.warn(
                f"{self.__name__} traced {self.traces} times; this time because {reason}. "
                "A signature that keeps changing recompiles on every call: keep shapes fixed "
                "and pass changing numbers as arrays or floats, not ints or attributes",
                RetraceWarning,
                stacklevel=3,
            )
        variants = self._cache.setdefault(key, [])
        variants.insert(0, variant)
        del variants[self.cache_size :]
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        self._last_key = key
        return self._result((value, grads), variant, copy)

    def _compile(self, tape: Tape, flat: tuple, n: int) -> _Variant:
        inputs, writers = {}, {}
        for node in tape.inputs:
            arg, path = node.label
            expr = accessor(flat, arg, path)[0]
            inputs[node.index] = f"_scalar_input({expr})" if type(flat[arg]) is float else expr
        for arg, path, _ in tape.state:
            containers = accessor(flat, arg, path)[1]
            if tuple in containers:  # rebuilt, from its structure if it is not there (None)
                k = containers.index(tuple)
                structure = state_structure(_read(flat, arg, path[:k]))
                call = f"a{arg}, {path[:k]!r}, {path[k:]!r}, {structure!r}"
                call = call.replace("{", "{{").replace("}", "}}")
                writers[(arg, path)] = f"_set_state({call}, {{}})"
            elif path:
                parent = accessor(flat, arg, path[:-1])[0].replace("{", "{{").replace("}", "}}")
                last = repr(path[-1]).replace("{", "{{").replace("}", "}}")
                writers[(arg, path)] = (
                    f"{parent}[{last}] = {{}}"
                    if containers[-1] in (dict, list)
                    else f"_setattr({parent}, {last}, {{}})"
                )
        generators = _generators(tape)
        where = find_objects(flat, {id(g) for g in generators})
        known = {i: accessor(flat, *place)[0] for i, place in where.items()}
        compiled = CompiledTape(
            tape, n_args=len(flat), inputs=inputs, writers=writers, known=known, name=self.__name__
        )
        _slim(tape, compiled.graph)
        floats = tuple(i for i, a in enumerate(flat[:n]) if type(a) is float)
        return _Variant(compiled, floats, [(where.get(id(g)), g) for g in generators])

    # -- inspection -------------------------------------------------------------------------
    def _variant(self, args, kwargs) -> _Variant:
        flat, names = self._flatten(args, kwargs)
        variants = self._cache.get((names, signature(flat)))
        if variants:
            return variants[0]
        import copy as copying

        flat = copying.deepcopy(flat)  # inspecting must not change the caller's objects
        tape, _ = self._record(flat, names)
        return self._compile(tape, flat, len(flat) - len(names))

    def tape(self, *args, **kwargs) -> Tape:
        """The forward+backward tape that runs for such arguments (traced if not cached)."""
        return self._variant(args, kwargs).compiled.tape

    def source(self, *args, **kwargs) -> str:
        """The generated source that runs for such arguments (traced if not cached)."""
        return self._variant(args, kwargs).compiled.source

    def __repr__(self):
        variants = sum(len(v) for v in self._cache.values())
        return f"<{self.__name__}: {len(self._cache)} signatures, {variants} variants>"


class _Spec:
    """Shape and dtype of a recorded array that a cached tape no longer keeps."""

    __slots__ = ("shape", "dtype")

    def __init__(self, value):
        self.shape, self.dtype = tuple(np.shape(value)), value.dtype

    ndim = property(lambda self: len(self.shape))

    def __repr__(self):
        return f"<{np.dtype(self.dtype).name}{list(self.shape)} not kept>"


def _spec(value):
    return _Spec(value) if type(value).__name__ == "ndarray" and value.nbytes > 1024 else value


def _slim(tape: Tape, graph: Graph) -> None:
    """Drop the recorded values of a cached step's tape and graph (every activation of the
    traced call), keeping shapes and dtypes for printing and constants for ``tape.play``."""
    for node in tape.nodes:
        node.value = _spec(node.value)
        for loc, _ in node.parents or ():
            if loc[0] == "kw":
                node.kwargs = {**node.kwargs, loc[1]: _spec(node.kwargs[loc[1]])}
            else:
                node.args = place(tuple(node.args), loc, _spec(_at(node.args, loc)))
    for op in graph.ops:
        op.value = _spec(op.value)


def _at(structure, location):
    for key in location:
        structure = structure[key]
    return structure


def _generators(tape: Tape) -> list:
    """The random generators the tape's draws use (their first argument)."""
    found = {}
    for node in tape.nodes:
        if is_impure(node.fn) and node.args:
            found.setdefault(id(node.args[0]), node.args[0])
    return list(found.values())


def _warn_global_random(before: dict, name: str) -> None:
    after = np.random.get_state(legacy=False)
    if before["state"]["pos"] != after["state"]["pos"] or not np.array_equal(
        before["state"]["key"], after["state"]["key"]
    ):
        warnings.warn(
            f"{name}: NumPy's global random state changed while the function was traced: "
            "those draws are now constants of the compiled step and repeat on every call. "
            "Draw with nnflow.random (normal, uniform, bernoulli) from a Generator instead",
            RuntimeWarning,
            stacklevel=4,
        )


def compile_grad(
    f: Callable, wrt: int | Sequence[int] | None = None, *, cache_size: int = 32,
    warn_after: int = 8,
) -> CompiledGrad:  # fmt: skip
    """``ad.grad(f, ...)``, traced once per signature and compiled.

    ``cg = compile_grad(f)``; ``val, g = cg(*args, **kwargs)`` returns what
    ``ad.grad(f, *args, wrt=wrt, **kwargs)`` returns. The gradients may be views of internal
    buffers that the next call overwrites: ``cg(*args, copy=True)`` returns copies. State that
    ``f`` assigns on argument objects is written back on every call; draws made through
    ``nnflow.random`` are made afresh on every call.

    Args:
        f: a function with a scalar result.
        wrt: argument indices to differentiate (default: all).
        cache_size: how many signatures (and variants per signature) are kept.
        warn_after: a ``RetraceWarning`` (with the reason) on every trace after this many.

    >>> cg = compile_grad(lambda x: np.sum(x ** 2))
    >>> val, g = cg(np.array([1.0, 2.0]))
    >>> float(val), g[0].tolist()
    (5.0, [2.0, 4.0])
    """
    return CompiledGrad(f, wrt, cache_size=cache_size, warn_after=warn_after)
