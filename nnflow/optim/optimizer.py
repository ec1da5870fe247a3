"""``Optimizer``: the base every rule shares — walking ``{path: grad}``, state, options.

An optimizer is built on a model (or any object holding arrays: ``nnflow.tree`` walks it) and
updates its parameters **in place** from the gradient dict ``ad.grad`` returns::

    opt = Adam(model, lr=1e-3)
    val, g = ad.grad(loss, model, batch)
    opt.step(g[0])                      # {path: array}; None entries are skipped

Each subclass is a small rule in the style of Optimisers.jl: ``init_state(param, hp)`` returns
the per-parameter state (arrays on the parameter's device, made lazily at its first update, so
a model moved to the GPU after the optimizer was built still gets GPU state), and
``update(param, grad, state, hp)`` applies the torch.optim formula in place. The state lives
in ``opt.state``, a ``{path: {name: array}}`` tree that checkpoints store; ``state[path]
["step"]`` counts that parameter's updates (a parameter with no gradient in a step is not
counted, as in PyTorch).

Per-path options: ``options`` maps a selector — a glob on the dotted path (``"*.bias"``,
``"encoder.*"``) or a predicate ``f(path) -> bool`` — to hyper-parameter overrides; every
matching entry applies, later ones winning. A per-path ``lr`` is that path's learning rate
*at the start*: schedules scale every path's rate by the same factor (PyTorch's param groups)::

    AdamW(model, lr=1e-3, weight_decay=0.1, options={"*.bias": {"weight_decay": 0.0}})
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ..backend import get_array_module, to_device
from ..tree import format_path, get_path, leaves
from .clip import clip_grad_norm, clip_grad_value

__all__ = ["Optimizer"]


class Optimizer:
    """Base class: subclasses define ``defaults``, ``init_state``, ``update``, ``check``.

    Args:
        model: the object whose arrays are trained (an ``nnflow.Model``, a dict, ...).
        lr: learning rate.
        options: ``{selector: {hyper-parameter: value}}`` per-path overrides (module doc).
        max_grad_norm: when set, ``step`` first clips the gradients' global 2-norm to it.
        max_grad_value: when set, ``step`` first clips every gradient entry to ``[-v, v]``.
            (Clipping changes the gradient arrays in place, as ``torch.nn.utils`` does.)
        **hyper: the rule's hyper-parameters (PyTorch's names).

    >>> from nnflow.optim import SGD
    >>> params = {"w": np.array([1.0, 2.0])}
    >>> opt = SGD(params, lr=0.5)
    >>> opt.step({("w",): np.array([1.0, 1.0])})
    >>> params["w"].tolist()
    [0.5, 1.5]
    """

    defaults: dict[str, Any] = {}

    def __init__(
        self,
        model: Any,
        lr: float,
        *,
        options: Mapping[Any, Mapping[str, Any]] | None = None,
        max_grad_norm: float | None = None,
        max_grad_value: float | None = None,
        **hyper: Any,
    ):
        self.model = model
        self.hyper = {"lr": lr, **self.defaults, **hyper}
        self.check(self.hyper, where="")
        self.initial_lr = float(lr)
        self.options = [(selector, dict(values)) for selector, values in (options or {}).items()]
        for selector, values in self.options:
            self.check({**self.hyper, **values}, where=f" (options for {_selector_name(selector)})")
        for name, limit in (("max_grad_norm", max_grad_norm), ("max_grad_value", max_grad_value)):
            if limit is not None and not limit > 0:
                raise ValueError(f"{type(self).__name__}: {name} must be > 0, got {limit}")
        self.max_grad_norm, self.max_grad_value = max_grad_norm, max_grad_value
        self.state: dict[tuple, dict[str, Any]] = {}
        self._overrides: dict[tuple, dict[str, Any]] = {}
        self._scratch: dict[tuple, Any] = {}  # update temporaries by (type, shape, dtype)

    # -- the rule interface -------------------------------------------------------------------
    def check(self, hp: dict[str, Any], where: str) -> None:
        """Raise ``ValueError`` for an unknown or out-of-range hyper-parameter in ``hp``."""
        unknown = sorted(set(hp) - set(self.defaults) - {"lr"})
        if unknown:
            known = ", ".join(["lr", *self.defaults])
            raise ValueError(
                f"{type(self).__name__}{where}: unknown hyper-parameter {unknown[0]!r} "
                f"(known: {known})"
            )
        self._require(hp["lr"] >= 0, "lr", hp["lr"], ">= 0", where)

    def _require(self, ok: bool, name: str, value: Any, want: str, where: str = "") -> None:
        if not ok:
            raise ValueError(f"{type(self).__name__}{where}: {name} must be {want}, got {value!r}")

    def init_state(self, param: Any, hp: dict[str, Any]) -> dict[str, Any]:
        """Fresh state for ``param`` (without ``step``, which the base class adds)."""
        return {}

    def update(self, param: Any, grad: Any, state: dict[str, Any], hp: dict[str, Any]) -> None:
        """Apply one update to ``param`` in place (``state["step"]`` is already counted)."""
        raise NotImplementedError

    def scratch_like(self, array: Any) -> Any:
        """A buffer shaped like ``array`` for an update's temporaries, reused across steps.

        Not state: it is never saved, and parameters of one shape share it, so it only holds
        values within one ``update`` call. It spares the large allocation (and the page faults)
        that ``param -= lr * grad`` pays for ``lr * grad`` on every step.

        >>> from nnflow.optim import SGD
        >>> opt = SGD({"w": np.zeros(3)}, lr=0.1)
        >>> opt.scratch_like(np.ones(3)) is opt.scratch_like(np.zeros(3))
        True
        """
        key = (type(array), tuple(array.shape), array.dtype)
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = get_array_module(array).empty_like(array)
        return buf

    # -- stepping -----------------------------------------------------------------------------
    @property
    def lr(self) -> float:
        """The learning rate (what schedules set).

        >>> from nnflow.optim import SGD
        >>> opt = SGD({"w": np.zeros(1)}, lr=0.1)
        >>> opt.lr = 0.05
        >>> opt.hyper["lr"]
        0.05
        """
        return self.hyper["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.hyper["lr"] = float(value)

    def step(self, grads: Mapping[tuple, Any]) -> None:
        """Update every parameter that has a (non-``None``) gradient in ``grads``, in place.

        Args:
            grads: ``{path: array}``, e.g. ``ad.grad(loss, model, batch)[1][0]``.

        >>> from nnflow.optim import SGD
        >>> params = {"w": np.ones(2)}
        >>> SGD(params, lr=1.0).step({("w",): np.full(2, 0.25), ("unused",): None})
        >>> params["w"].tolist()
        [0.75, 0.75]
        """
        if self.max_grad_value is not None or self.max_grad_norm is not None:
            grads = dict(grads)  # clipping may replace read-only arrays; not the caller's dict
            if self.max_grad_value is not None:
                clip_grad_value(grads, self.max_grad_value)
            if self.max_grad_norm is not None:
                clip_grad_norm(grads, self.max_grad_norm)
        for path, grad in grads.items():
            if grad is None:
                continue
            param = self._param(path)
            if tuple(grad.shape) != tuple(param.shape):
                raise ValueError(
                    f"{type(self).__name__}.step: gradient for {format_path(path)!r} has shape "
                    f"{tuple(grad.shape)}, but the parameter has shape {tuple(param.shape)}"
                )
            hp = self.hyper_for(path)
            state = self.state.get(path)
            if state is None:
                state = self.state[path] = {"step": 0, **self.init_state(param, hp)}
            state["step"] += 1
            try:
                self.update(param, grad, state, hp)
            except ValueError as error:  # e.g. "assignment destination is read-only"
                raise ValueError(
                    f"{type(self).__name__}.step: cannot update {format_path(path)!r} in place: "
                    f"{error}"
                ) from error

    def _param(self, path: tuple) -> Any:
        try:
            return get_path(self.model, path)
        except (KeyError, IndexError, AttributeError, TypeError):
            raise KeyError(
                f"{type(self).__name__}.step: the model has no parameter at "
                f"{format_path(path)!r} (a gradient dict of another model?)"
            ) from None

    def hyper_for(self, path: tuple) -> dict[str, Any]:
        """The hyper-parameters that apply to ``path`` (defaults, then matching options).

        >>> from nnflow.optim import SGD
        >>> opt = SGD({"w": np.zeros(1)}, lr=0.1, weight_decay=0.1,
        ...           options={"b*": {"weight_decay": 0.0}})
        >>> opt.hyper_for(("b",))["weight_decay"], opt.hyper_for(("w",))["weight_decay"]
        (0.0, 0.1)
        """
        overrides = self._overrides.get(path)
        if overrides is None:
            overrides = self._overrides[path] = {}
            for selector, values in self.options:
                if _matches(selector, path):
                    overrides.update(values)
        if not overrides:
            return self.hyper
        hp = {**self.hyper, **overrides}
        if "lr" in overrides and self.initial_lr > 0:  # scaled like the default rate
            hp["lr"] = overrides["lr"] * self.hyper["lr"] / self.initial_lr
        return hp

    # -- parameters, state, devices -----------------------------------------------------------
    def parameters(self) -> Iterator[tuple[tuple, Any]]:
        """``(path, array)`` for the model's trainable arrays (``Model.parameters`` if any)."""
        if hasattr(self.model, "parameters") and callable(self.model.parameters):
            yield from self.model.parameters()
            return
        for path, x in leaves(self.model, buffers=False):
            if np.dtype(x.dtype).kind == "f":
                yield path, x

    def state_template(self, path: tuple) -> dict[str, Any]:
        """What the state of ``path`` looks like (``step`` and fresh arrays): for validation.

        >>> from nnflow.optim import Adam
        >>> opt = Adam({"w": np.zeros(3, np.float32)})
        >>> {k: getattr(v, "shape", v) for k, v in opt.state_template(("w",)).items()}
        {'step': 0, 'exp_avg': (3,), 'exp_avg_sq': (3,)}
        """
        param = self._param(path)
        return {"step": 0, **self.init_state(param, self.hyper_for(path))}

    def to(self, device: str) -> Optimizer:
        """Move every state array to ``device`` (``"cpu"`` or ``"gpu"``), like ``Model.to``.

        >>> from nnflow.optim import SGD
        >>> opt = SGD({"w": np.zeros(1)}, lr=0.1)
        >>> opt.to("cpu") is opt
        True
        """
        for state in self.state.values():
            for name, value in state.items():
                if name != "step":
                    state[name] = to_device(value, device)
        self._scratch.clear()
        return self

    def hyper_state(self) -> dict[str, Any]:
        """The JSON-able hyper-parameters a checkpoint records (``lr`` included).

        >>> from nnflow.optim import SGD
        >>> SGD({"w": np.zeros(1)}, lr=0.1).hyper_state()["lr"]
        0.1
        """
        hyper = {k: list(v) if isinstance(v, tuple) else v for k, v in self.hyper.items()}
        return {**hyper, "initial_lr": self.initial_lr}

    def load_hyper_state(self, hyper: Mapping[str, Any]) -> None:
        """Restore what ``hyper_state`` returned (the learning rate a schedule had set)."""
        self.initial_lr = float(hyper.get("initial_lr", self.initial_lr))
        self.hyper["lr"] = float(hyper.get("lr", self.hyper["lr"]))

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())
        return f"{type(self).__name__}({hp})"


def _matches(selector: Any, path: tuple) -> bool:
    if callable(selector):
        return bool(selector(path))
    return fnmatch.fnmatchcase(format_path(path), str(selector))


def _selector_name(selector: Any) -> str:
    return repr(selector) if isinstance(selector, str) else getattr(selector, "__name__", "?")


def check_betas(opt: Optimizer, betas: Any, where: str) -> None:
    """Shared check of Adam's ``betas``: two numbers in ``[0, 1)``."""
    ok = isinstance(betas, (tuple, list)) and len(betas) == 2
    opt._require(ok, "betas", betas, "a pair (beta1, beta2)", where)
    for i, beta in enumerate(betas):
        opt._require(0.0 <= beta < 1.0, f"betas[{i}]", beta, "in [0, 1)", where)


def zeros_like(param: Any) -> Any:
    """Zeros of ``param``'s shape and dtype on its device (fresh optimizer state).

    >>> zeros_like(np.ones(2, np.float32))
    array([0., 0.], dtype=float32)
    """
    return get_array_module(param).zeros_like(param)
