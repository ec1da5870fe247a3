"""``Model``: the base class of every layer and user network (Flux-style plain objects).

A model is a plain object: assign arrays and sub-models in ``__init__``, define ``forward``.
Every floating-point array reachable through attributes, lists, tuples and dicts is a trainable
parameter, found by walking the object (``nnflow.tree``), except the arrays registered as
buffers with ``register_buffer`` (running statistics, carried recurrent state): those are listed
in the model's ``__nnflow_buffers__`` dict, which ``nnflow.tree`` consults, so ``ad.grad``
records them as constants and never returns a gradient for them.

>>> import numpy as np
>>> class Affine(Model):
...     def __init__(self):
...         self.W, self.b = np.ones((2, 3)), np.zeros(2)
...     def forward(self, x):
...         return x @ self.W.T + self.b
>>> m = Affine()
>>> [path for path, _ in m.parameters()], m.num_parameters()
([('W',), ('b',)], 8)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..backend import to_device
from ..tree import BUFFERS, buffer_paths, format_path, get_path, is_array, leaves, set_path

__all__ = ["Model", "LayerError", "ShapeError", "check_features", "check_rank", "describe"]


class LayerError(ValueError):
    """An error raised inside a layer; its message names the layer's path in the model.

    Every ``Model.__call__`` the error passes through prepends the attribute path under which
    the failing layer sits, so the user sees ``layers.2 (Linear(128 => 10)) expected ...``.
    """

    def __init__(self, layer: Model, detail: str):
        super().__init__(detail)
        self.layer, self.owner, self.path, self.detail = layer, layer, (), detail

    def locate(self, parent: Model) -> None:
        """Prepend the path of the innermost located layer inside ``parent``."""
        if self.owner is parent:
            return
        found = _child_path(parent, self.owner)
        if found is not None:
            self.path, self.owner = found + self.path, parent

    def __str__(self) -> str:
        label = self.layer.label()
        where = format_path(self.path)
        return f"{where} ({label}) {self.detail}" if where else f"{label} {self.detail}"


class ShapeError(LayerError):
    """An input of the wrong shape or rank for a layer."""


def _child_path(parent, target) -> tuple | None:
    """The path of ``target`` among ``parent``'s direct children (not inside sub-models)."""
    stack: list[tuple[tuple, Any]] = [((), parent)]
    seen: set[int] = set()
    while stack:
        path, obj = stack.pop(0)
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, dict):
            items = obj.items()
        elif isinstance(obj, (list, tuple)):
            items = enumerate(obj)
        elif obj is parent:
            items = vars(obj).items()
        else:
            continue
        for key, child in items:
            if child is target:
                return path + (key,)
            if isinstance(child, (dict, list, tuple)):
                stack.append((path + (key,), child))
    return None


def describe(x: Any) -> str:
    """``float32[32, 64]`` for an array (or tracer), ``repr`` for anything else.

    >>> describe(np.zeros((2, 3), np.float32))
    'float32[2, 3]'
    """
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{np.dtype(x.dtype).name}[{', '.join(map(str, x.shape))}]"
    return repr(x)


def check_features(layer: Model, x: Any, expected: int, axis: int = -1, what="input") -> None:
    """Raise ``ShapeError`` unless ``x.shape[axis] == expected``.

    >>> class L(Model):
    ...     def forward(self, x):
    ...         check_features(self, x, 3)
    >>> L()(np.zeros((2, 4)))
    Traceback (most recent call last):
    ...
    nnflow.layers.model.ShapeError: L() expected input (..., 3), got float64[2, 4]
    """
    shape = np.shape(x)
    if not shape or shape[axis] != expected:
        if axis == -1:
            want = f"(..., {expected})"
        else:
            want = f"{expected} features on axis {axis}"
        raise ShapeError(layer, f"expected {what} {want}, got {describe(x)}")


def check_rank(layer: Model, x: Any, ranks: tuple[int, ...], layout: str) -> None:
    """Raise ``ShapeError`` unless ``x.ndim`` is one of ``ranks``.

    >>> class L(Model):
    ...     def forward(self, x):
    ...         check_rank(self, x, (4,), "(N, C, H, W)")
    >>> L()(np.zeros(3))
    Traceback (most recent call last):
    ...
    nnflow.layers.model.ShapeError: L() expected a 4-d input (N, C, H, W), got float64[3]
    """
    if np.ndim(x) not in ranks:
        dims = " or ".join(f"{r}-d" for r in ranks)
        raise ShapeError(layer, f"expected a {dims} input {layout}, got {describe(x)}")


class Model:
    """Base class of layers and networks: parameters, buffers, train/eval, devices, repr.

    Subclasses assign arrays and sub-models in ``__init__`` (no ``super().__init__()`` call
    needed) and define ``forward``; calling the model calls ``forward``.

    >>> class Scale(Model):
    ...     def __init__(self):
    ...         self.s = np.ones(3, np.float32)
    ...         self.register_buffer("calls", np.zeros(()))
    ...     def forward(self, x):
    ...         return self.s * x
    >>> m = Scale()
    >>> m
    Scale()  # 3 parameters
    >>> [p for p, _ in m.parameters()], [p for p, _ in m.named_buffers()]
    ([('s',)], [('calls',)])
    """

    training: bool = True

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} defines no forward method")

    def __call__(self, *args, **kwargs):
        try:
            return self.forward(*args, **kwargs)
        except LayerError as error:
            error.locate(self)
            raise

    # -- parameters and buffers ---------------------------------------------------------------
    def register_buffer(self, name: str, value: Any, persistent: bool = True) -> None:
        """Store ``value`` (an array, a tuple of arrays or ``None``) as attribute ``name``,
        marked as a buffer: saved in checkpoints when ``persistent``, never trained.

        >>> class Norm(Model):
        ...     def __init__(self):
        ...         self.register_buffer("running_mean", np.zeros(4))
        >>> Norm().num_parameters(), len(list(Norm().named_buffers()))
        (0, 1)
        """
        buffers = self.__dict__.get(BUFFERS)
        if buffers is None:
            buffers = self.__dict__[BUFFERS] = {}
        buffers[name] = persistent
        setattr(self, name, value)

    def parameters(self) -> Iterator[tuple[tuple, Any]]:
        """``(path, array)`` for every trainable (floating-point, non-buffer) array.

        >>> class M(Model):
        ...     def __init__(self):
        ...         self.layers = [np.ones(2), np.arange(3)]
        >>> [p for p, _ in M().parameters()]
        [('layers', 0)]
        """
        for path, x in leaves(self, buffers=False):
            if np.dtype(x.dtype).kind == "f":
                yield path, x

    def named_buffers(self, persistent_only: bool = True) -> Iterator[tuple[tuple, Any]]:
        """``(path, array)`` for every buffer (only the persistent ones by default)."""
        frozen = buffer_paths(self)
        for path, x in leaves(self):
            if path in frozen and (not persistent_only or self._persistent(path)):
                yield path, x

    def _persistent(self, path: tuple) -> bool:
        for i in range(len(path)):
            owner = get_path(self, path[:i])
            names = owner.__dict__.get(BUFFERS) if hasattr(owner, "__dict__") else None
            if names and path[i] in names:
                return bool(names[path[i]])
        return True

    def state_dict(self) -> dict[tuple, Any]:
        """``{path: array}`` of every parameter and persistent buffer (what a checkpoint holds).

        >>> class M(Model):
        ...     def __init__(self):
        ...         self.w = np.ones(2)
        >>> list(M().state_dict())
        [('w',)]
        """
        saved = dict(self.parameters())
        saved.update(self.named_buffers())
        return {path: x for path, x in leaves(self) if path in saved}

    def num_parameters(self) -> int:
        """The number of trainable scalars.

        >>> class M(Model):
        ...     def __init__(self):
        ...         self.w = np.ones((3, 4))
        >>> M().num_parameters()
        12
        """
        return sum(int(np.size(x)) for _, x in self.parameters())

    def modules(self) -> Iterator[tuple[tuple, Model]]:
        """``(path, model)`` for this model and every sub-model, depth first.

        >>> class M(Model):
        ...     def __init__(self):
        ...         self.inner = [Model()]
        >>> [p for p, _ in M().modules()]
        [(), ('inner', 0)]
        """
        seen: set[int] = set()

        def walk(obj, path):
            if id(obj) in seen or is_array(obj):
                return
            seen.add(id(obj))
            if isinstance(obj, Model):
                yield path, obj
                items = vars(obj).items()
            elif isinstance(obj, dict):
                items = obj.items()
            elif isinstance(obj, (list, tuple)):
                items = enumerate(obj)
            else:
                return
            for key, child in items:
                yield from walk(child, path + (key,))

        yield from walk(self, ())

    # -- modes and devices --------------------------------------------------------------------
    def train(self, mode: bool = True) -> Model:
        """Put this model and every sub-model in training mode (``mode=False``: evaluation).

        >>> Model().train(False).training
        False
        """
        for _, m in self.modules():
            m.training = bool(mode)
        return self

    def eval(self) -> Model:
        """Evaluation mode: dropout off, batch norm uses its running statistics.

        >>> Model().eval().training
        False
        """
        return self.train(False)

    def to(self, device: str) -> Model:
        """Move every array (parameters and buffers) to ``"cpu"`` or ``"gpu"``, in place.

        >>> m = Model()
        >>> m.to("cpu") is m
        True
        """
        for path, x in leaves(self):
            moved = to_device(x, device)
            if moved is not x:
                set_path(self, path, moved)
        return self

    def astype(self, dtype) -> Model:
        """Cast every floating-point array (parameters and buffers) to ``dtype``, in place.

        >>> class M(Model):
        ...     def __init__(self):
        ...         self.w = np.ones(2, np.float32)
        >>> M().astype(np.float64).w.dtype
        dtype('float64')
        """
        for path, x in leaves(self):
            if np.dtype(x.dtype).kind == "f":
                set_path(self, path, x.astype(dtype))
        return self

    # -- printing -----------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """The text between the parentheses of a leaf layer's repr (``784 => 128, relu``)."""
        return ""

    def label(self) -> str:
        """``Linear(784 => 128, relu)``: the one-line name used in reprs and errors."""
        return f"{type(self).__name__}({self.extra_repr()})"

    def _children(self) -> list[tuple[str, Any]]:
        """Named sub-models and bare arrays, for the repr."""
        out = []
        for name, value in vars(self).items():
            if name == BUFFERS or name == "training":
                continue
            if isinstance(value, Model) or is_array(value):
                out.append((name, value))
            elif isinstance(value, (list, tuple, dict)):
                items = value.items() if isinstance(value, dict) else enumerate(value)
                for key, v in items:
                    if isinstance(v, Model) or is_array(v):
                        out.append((f"{name}[{key!r}]", v))
        return out

    def __repr__(self) -> str:
        return "\n".join(self._repr_lines(top=True))

    def _repr_lines(self, top: bool = False) -> list[str]:
        count = self.num_parameters()
        note = f"  # {count:,} parameters" if count else ""
        children = [(n, v) for n, v in self._children() if isinstance(v, Model)]
        if not children:
            return [self.label() + note]
        lines = [f"{type(self).__name__}("]
        for name, value in self._children():
            if isinstance(value, Model):
                inner = value._repr_lines()
                prefix = "" if name.startswith("layers[") and self._is_chain() else f"{name}: "
                lines.append("  " + prefix + inner[0])
                lines.extend("  " + line for line in inner[1:])
            else:
                kind = " (buffer)" if name in self.__dict__.get(BUFFERS, {}) else ""
                lines.append(f"  {name}: {describe(value)}{kind}")
        lines.append(")" + (self._total() if top else note))
        return lines

    def _is_chain(self) -> bool:
        return False

    def _total(self) -> str:
        params = list(self.parameters())
        size = sum(int(np.size(x)) * np.dtype(x.dtype).itemsize for _, x in params)
        return (
            f"  # Total: {len(params)} arrays, {sum(int(np.size(x)) for _, x in params):,} "
            f"parameters, {_bytes(size)}"
        )


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"
