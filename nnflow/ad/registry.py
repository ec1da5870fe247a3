"""The one registry of derivative rules.

Every differentiable operation nnflow knows is an entry here, keyed by the function object
that is called (``numpy.exp``, ``numpy.sum``, ``operator.getitem``, a user ``@primitive``).
An entry holds, per argument name:

- a reverse-mode rule ``rule(dy, y, *args, **kwargs) -> cotangent of that argument``
  (``dy`` is the cotangent of the output, ``y`` the output, then the original call's
  arguments); the engine sums broadcast axes back to the argument's shape, so rules stay
  one line;
- optionally a forward-mode rule ``jvp(t, y, *args, **kwargs) -> tangent of the output``
  given the tangent ``t`` of that argument.

Two flags let forward mode reuse the reverse rules without a table of its own:

- ``elementwise``: the Jacobian is diagonal, so the reverse rule applied to the argument's
  tangent (broadcast to the output) is also its forward rule;
- ``linear``: the arguments in which the function is (multi)linear, so the tangent is the
  function itself evaluated with that argument replaced by its tangent.

Anything else without a ``jvp`` rule gets its tangent by transposing the (linear) reverse rule
locally, one node at a time, which is still forward-mode accumulation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "FnInfo",
    "diffrule",
    "nodiff",
    "register",
    "register_nondifferentiable",
    "register_decomposition",
    "decomposition",
    "lookup",
    "registered_rules",
    "qualname",
]


@dataclass
class FnInfo:
    """Everything the engine knows about one function."""

    fn: Callable
    name: str
    positional: tuple[str, ...] = ()
    var_positional: int | None = None  # index where ``*args`` starts, if any
    rules: dict[str, Callable] = field(default_factory=dict)
    jvps: dict[str, Callable] = field(default_factory=dict)
    nodiff: set[str] = field(default_factory=set)
    sequences: set[str] = field(default_factory=set)  # args that are lists of arrays
    linear: tuple[str, ...] = ()
    elementwise: bool = False
    differentiable: bool = True
    cache: dict = field(default_factory=dict)  # location -> (name, element, rule)

    plain: bool = True  # differentiable in every argument (the fast path of recording)

    def refresh(self) -> None:
        """Recompute derived fields after the entry changed."""
        self.cache.clear()
        self.plain = self.differentiable and not self.nodiff

    def argname(self, position: int) -> tuple[str, int | None]:
        """Name of positional argument ``position`` and its index inside ``*args``."""
        if self.var_positional is not None and position >= self.var_positional:
            name = self.positional[self.var_positional]
            return name, position - self.var_positional
        if position < len(self.positional):
            return self.positional[position], None
        raise IndexError(f"{self.name} has no positional argument {position}")

    def is_sequence(self, name: str) -> bool:
        if name in self.sequences:
            return True
        vp = self.var_positional
        return vp is not None and self.positional[vp] == name


_REGISTRY: dict[Any, FnInfo] = {}


def qualname(fn: Callable) -> str:
    """A readable dotted name: ``numpy.exp``, ``numpy.linalg.inv``, ``mymodule.logistic``.

    >>> qualname(np.exp)
    'numpy.exp'
    """
    if isinstance(fn, np.ufunc):
        return f"numpy.{fn.__name__}"
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", repr(fn))
    if module.startswith("numpy"):
        module = "numpy.linalg" if "linalg" in module else "numpy"
    if module == "_operator":
        module = "operator"
    return f"{module}.{name}" if module else name


def _signature_names(fn: Callable) -> tuple[tuple[str, ...], int | None]:
    if isinstance(fn, np.ufunc):
        return (("x",) if fn.nin == 1 else tuple(f"x{i + 1}" for i in range(fn.nin))), None
    target = getattr(fn, "__nnflow_wrapped__", fn)
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return (), None
    names, var_positional = [], None
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind is p.VAR_POSITIONAL:
            var_positional = len(names)
            names.append(p.name)
    return tuple(names), var_positional


def lookup(fn: Callable) -> FnInfo | None:
    """The registry entry of ``fn``, or ``None``."""
    return _REGISTRY.get(fn)


def _entry(fn: Callable) -> FnInfo:
    info = _REGISTRY.get(fn)
    if info is None:
        positional, var_positional = _signature_names(fn)
        info = FnInfo(fn, qualname(fn), positional, var_positional)
        _REGISTRY[fn] = info
    return info


def _check_argname(info: FnInfo, argname: str) -> None:
    if info.positional and argname not in info.positional:
        raise ValueError(
            f"{info.name} has no argument {argname!r}; its arguments are {list(info.positional)}"
        )


def register(
    fn: Callable,
    rules: dict[str, Callable],
    *,
    jvps: dict[str, Callable] | None = None,
    nodiff: tuple[str, ...] = (),
    sequences: tuple[str, ...] = (),
    linear: tuple[str, ...] = (),
    elementwise: bool = False,
) -> FnInfo:
    """Register the reverse rules (and optional forward rules) of ``fn`` in one call.

    This is what the rule tables use; users write ``@ad.diffrule`` instead.

    >>> _ = register(np.negative, {"x": lambda dy, y, x: -dy}, elementwise=True)
    """
    info = _entry(fn)
    info.cache.clear()
    for name, rule in rules.items():
        _check_argname(info, name)
        info.rules[name] = rule
    info.jvps.update(jvps or {})
    info.nodiff.update(nodiff)
    info.sequences.update(sequences)
    info.linear = tuple(linear) or info.linear
    info.elementwise = elementwise or info.elementwise
    info.differentiable = True
    info.refresh()
    return info


def register_nondifferentiable(*fns: Callable) -> None:
    """Mark functions whose outputs carry no gradient (``sign``, ``floor``, comparisons).

    They are still recorded on the tape, so a replay recomputes them.

    >>> register_nondifferentiable(np.sign)
    """
    for fn in fns:
        info = _entry(fn)
        info.differentiable = False
        info.refresh()


def diffrule(fn: Callable, argname: str) -> Callable[[Callable], Callable]:
    """Decorator registering the derivative of primitive ``fn`` w.r.t. ``argname``.

    The rule is called as ``rule(dy, y, *args, **kwargs)`` and returns the cotangent of
    that argument (broadcast axes are summed back by the engine).

    >>> @primitive
    ... def logistic(x):
    ...     return 1 / (1 + np.exp(-x))
    >>> @diffrule(logistic, "x")
    ... def logistic_dx(dy, y, x):
    ...     return dy * y * (1 - y)
    """

    _check_argname(_entry(fn), argname)

    def decorate(rule: Callable) -> Callable:
        register(fn, {argname: rule})
        return rule

    return decorate


def nodiff(fn: Callable, argname: str) -> None:
    """Declare that no gradient flows through argument ``argname`` of ``fn``.

    >>> nodiff(np.take_along_axis, "indices")
    """
    info = _entry(fn)
    _check_argname(info, argname)
    info.nodiff.add(argname)
    info.refresh()


_DECOMPOSITIONS: dict[Callable, Callable] = {}


def register_decomposition(fn: Callable, impl: Callable) -> None:
    """Trace ``fn`` on tracers by running ``impl`` (written with registered operations).

    Used for functions that are compositions of others (``hstack`` is ``concatenate`` after
    ``atleast_1d``), so they need no rule of their own.

    >>> register_decomposition(np.vstack, lambda tup, **kw: np.concatenate(
    ...     [np.atleast_2d(t) for t in tup], axis=0))
    """
    _DECOMPOSITIONS[fn] = impl


def decomposition(fn: Callable) -> Callable | None:
    """The registered decomposition of ``fn``, or ``None``."""
    return _DECOMPOSITIONS.get(fn)


def registered_rules() -> list[Callable]:
    """Every function with at least one reverse rule (what the registry test covers)."""
    return [info.fn for info in _REGISTRY.values() if info.rules]


def primitive(fn: Callable) -> Callable:  # re-exported by nnflow.ad.custom
    """Decorator: calls of ``fn`` with traced arguments are recorded as one tape node.

    >>> @primitive
    ... def softplus(x):
    ...     return np.logaddexp(0, x)
    """
    import functools

    from .tracer import Tracer, record

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for a in args:
            if type(a) is Tracer or (type(a) in (list, tuple) and _has_tracer(a)):
                return record(wrapper, args, kwargs)
        for a in kwargs.values():
            if type(a) is Tracer:
                return record(wrapper, args, kwargs)
        return fn(*args, **kwargs)

    wrapper.__nnflow_wrapped__ = fn
    _entry(wrapper)
    return wrapper


def _has_tracer(seq) -> bool:
    from .tracer import Tracer

    return any(type(a) is Tracer for a in seq)
