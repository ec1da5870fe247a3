"""Strict device mode: raise on the implicit host/device copies a traced step would make.

On the GPU a training step should touch only arrays that already live there. CuPy refuses a
NumPy array in its ufuncs (a ``TypeError``), but several mistakes still make a step copy between
host and device on every call without a word: a step whose data never reached the GPU (a model
or a batch not moved: everything runs on the CPU), a NumPy index array or mask (CuPy copies it
over), a primitive that moves an argument itself (``xp.asarray``), a random draw left on the
host, and a GPU value converted to a Python number (``float(loss)``, ``if (x > 0).any():``),
which copies it to the host and waits for the GPU. ``strict_device(device)`` turns each into a
:class:`~nnflow.backend.DeviceError` that names the operation, the argument and the array, at
the line that recorded it.

It is called inside the function being traced (``ad.grad``, ``ad.compile_grad``, ``ad.trace``)
and applies to the tapes recording at that moment, for the rest of their life (so the backward
pass that ``compile_grad`` records after the function returns is checked too); used as a
context manager, it stops at the end of the block. The flag hangs on those tapes and dies with
them: nothing global is set (DESIGN: the active-tape stack is the only global state of ``ad``).

How it checks, at no cost when it is off: a strict tape's ``nodes`` list is replaced by a list
that checks each node as it is appended. Every way of recording (the tracer's fast unary and
binary paths, the general path, random draws, guards) appends to ``tape.nodes``, so nothing is
missed, and a plain tape keeps its plain list. Eager ``ad.grad`` computes the backward pass on
concrete arrays without a tape; its results are checked where they are used (``Trainer(...,
strict_device=True)`` checks gradients, parameters and optimizer state before every update).

>>> import numpy as np
>>> from nnflow import ad
>>> def loss(x):
...     strict_device("cpu")
...     return np.sum(np.exp(x))
>>> float(ad.grad(loss, np.zeros(3))[0])
3.0
"""

from __future__ import annotations

from typing import Any

from ..backend import DEVICES, DeviceError, device_of, is_device_array
from .tape import Guard, Node, Tape, _describe, _fn_name, active_tapes

__all__ = ["strict_device", "StrictDevice", "DeviceError", "check_node"]


def _arrays(structure: Any, location: tuple = ()):
    """``(location, array)`` for the arrays in nested lists/tuples/dicts (tracers included)."""
    if isinstance(structure, (list, tuple)):
        for i, item in enumerate(structure):
            yield from _arrays(item, location + (i,))
    elif isinstance(structure, dict):
        for key, item in structure.items():
            yield from _arrays(item, location + (key,))
    elif is_device_array(structure):
        yield location, getattr(structure, "value", structure)  # a tracer: its data


def _where(location: tuple) -> str:
    head, rest = location[0], location[1:]
    name = f"argument {head}" if isinstance(head, int) else f"keyword {head!r}"
    return name + "".join(f"[{k!r}]" for k in rest)


def _input_name(tape: Tape, node: Node) -> str:
    arg, path = node.label
    names = tape.arg_names
    where = names[arg] if arg < len(names) else f"args[{arg}]"
    return where + "".join(f".{p}" if isinstance(p, str) else f"[{p!r}]" for p in path)


def _advice(device: str) -> str:
    if device == "gpu":
        return (
            "move it to the GPU before the step (model.to('gpu'), nnflow.backend.to_device(x, "
            "'gpu'), arrays made with the array module of the data: "
            "nnflow.backend.get_array_module(x).zeros(...))"
        )
    return "move it to the CPU before the step (nnflow.backend.to_device(x, 'cpu'))"


def check_node(node: Node, device: str, tape: Tape) -> None:
    """Raise ``DeviceError`` if recorded ``node`` reads or makes an array off ``device``, or
    converts a GPU value to a Python number (a guard).

    >>> import numpy as np
    >>> check_node(Node(2, np.exp, (np.ones(2),), {}, [], np.ones(2), True), "cpu", Tape())
    """
    fn = node.fn
    prefix = f"strict_device({device!r}): "
    if fn is None:  # a tape input: an argument of the traced function
        value = node.value
        if is_device_array(value) and device_of(value) != device:
            raise DeviceError(
                f"{prefix}input {_input_name(tape, node)} is {_describe(value)} on "
                f"{device_of(value)}; {_advice(device)}"
            )
        return
    name = f"%{node.index} = {_fn_name(fn)}(...)"
    if isinstance(fn, Guard):
        value = node.args[0] if node.args else None
        if is_device_array(value) and device_of(getattr(value, "value", value)) == "gpu":
            raise DeviceError(
                f"{prefix}{name} converts a GPU value ({_describe(value)}) to a Python "
                f"{fn.kind}: a device-to-host copy and a wait for the GPU on every step. Keep "
                "the computation on arrays (xp.where instead of if, a mask instead of a "
                "data-dependent shape), or read the value after the step"
            )
        return
    for location, value in _arrays((tuple(node.args or ()), dict(node.kwargs or {}))):
        where = device_of(value)
        if where != device:
            raise DeviceError(
                f"{prefix}{name} got {_describe(value)} on {where} as its {_where(location[1:])}; "
                f"{_advice(device)}"
            )
    value = node.value
    if is_device_array(value) and device_of(getattr(value, "value", value)) != device:
        raise DeviceError(
            f"{prefix}{name} returned {_describe(value)} on {device_of(value)} from arrays on "
            f"{device!r}; a primitive must return its result where its inputs live"
        )


class _CheckedNodes(list):
    """A tape's node list that checks every node appended to it (see the module docstring)."""

    __slots__ = ("device", "tape")

    def append(self, node: Node) -> None:
        check_node(node, self.device, self.tape)
        list.append(self, node)


class StrictDevice:
    """What :func:`strict_device` returns: already applied; ``with`` ends it at the block's end.

    Attributes:
        device: the expected device; ``tapes``: the tapes it applies to.
    """

    def __init__(self, device: str, tapes: tuple[Tape, ...]):
        self.device, self.tapes = device, tapes
        self._previous: list[str | None] = []
        for tape in reversed(tapes):  # the innermost tape names inputs as the user wrote them
            for node in tape.nodes:  # what was recorded before: the inputs, first of all
                check_node(node, device, tape)
        for tape in tapes:
            nodes = tape.nodes
            previous = nodes.device if isinstance(nodes, _CheckedNodes) else None
            self._previous.append(previous)
            tape.nodes = _checked(nodes, device, tape)

    def __enter__(self) -> StrictDevice:
        return self

    def __exit__(self, *exc) -> bool:
        for tape, previous in zip(self.tapes, self._previous, strict=True):
            nodes = tape.nodes
            tape.nodes = list(nodes) if previous is None else _checked(nodes, previous, tape)
        return False

    def __repr__(self):
        return f"<strict_device({self.device!r}) on {len(self.tapes)} tapes>"


def _checked(nodes: list, device: str, tape: Tape) -> _CheckedNodes:
    checked = _CheckedNodes(nodes)
    checked.device, checked.tape = device, tape
    return checked


def strict_device(device: str) -> StrictDevice:
    """From now on, every operation recorded on the active tapes must read and return arrays on
    ``device`` (``"cpu"`` or ``"gpu"``), and on the GPU no traced value may become a Python
    number; any other raises :class:`~nnflow.backend.DeviceError` naming it.

    Call it inside the function being differentiated or traced; it applies to the tapes
    recording now for the rest of their life (the backward pass ``compile_grad`` records
    included), or until the end of a ``with strict_device(...):`` block. The inputs already on
    the tapes (the function's arguments) are checked at once.

    Raises:
        RuntimeError: no tape is recording (it was called outside ``ad.grad``/``trace``).
        ValueError: ``device`` is not ``"cpu"`` or ``"gpu"``.

    >>> import numpy as np
    >>> from nnflow import ad
    >>> def loss(x):
    ...     strict_device("gpu")
    ...     return np.sum(x)
    >>> ad.grad(loss, np.ones(2))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    nnflow.backend.DeviceError: strict_device('gpu'): input x is float64[2] on cpu; move it ...
    """
    if device not in DEVICES:
        raise ValueError(f"strict_device: unknown device {device!r}; expected one of {DEVICES}")
    tapes = tuple(tape for tape in active_tapes() if not tape.forward)
    if not tapes:
        raise RuntimeError(
            "strict_device() checks the operations a traced function records: call it inside "
            "the function given to ad.grad / ad.compile_grad / ad.trace (or use "
            "Trainer(..., strict_device=True)), or check arrays with "
            "nnflow.backend.check_device(x, device)"
        )
    return StrictDevice(device, tapes)
