"""gradcheck: compare ``ad.grad`` with central finite differences, entry by entry."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..tree import format_path, get_path, is_array, leaves, set_path
from .errors import ADError
from .grad import grad

__all__ = ["gradcheck", "GradcheckError"]


class GradcheckError(ADError, AssertionError):
    """Reverse-mode and finite-difference derivatives disagree."""


def _differentiable_leaves(args, wrt):
    """``(arg index, path, array)`` for every float array the check perturbs."""
    for i, arg in enumerate(args):
        if wrt is not None and i not in wrt:
            continue
        if is_array(arg) or isinstance(arg, float):
            if np.asarray(arg).dtype.kind == "f":
                yield i, (), arg
        elif not isinstance(arg, (bool, int, str, type(None))):
            for path, leaf in leaves(arg, buffers=False):
                if leaf.dtype.kind == "f":
                    yield i, path, leaf


def _with(args, i, path, value):
    args = list(args)
    args[i] = set_path(args[i], path, value) if path else value
    return args


def gradcheck(
    f: Callable,
    *args,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    wrt=None,
    max_entries: int = 400,
    seed: int = 0,
    **kwargs,
) -> bool:
    """Check ``ad.grad(f, *args)`` against central differences; raise on a mismatch.

    Every float array argument (and every float leaf of object arguments) is checked entry
    by entry, up to ``max_entries`` randomly chosen entries per array. Use float64 inputs.
    The error names the argument, the path, the worst entry and both values.

    >>> gradcheck(lambda x: np.sum(np.sin(x) ** 2), np.linspace(0, 1, 5))
    True
    """
    wrt = (wrt,) if isinstance(wrt, int) else wrt
    _, g = grad(f, *args, wrt=wrt, **kwargs)
    rng = np.random.default_rng(seed)
    for i, path, leaf in _differentiable_leaves(args, wrt):
        analytic = g[i] if not path else g[i][path]
        analytic = np.asarray(analytic, dtype=np.float64)
        base = np.array(leaf, dtype=np.asarray(leaf).dtype, copy=True)
        size = base.size
        entries = range(size) if size <= max_entries else rng.choice(size, max_entries, False)
        worst = None
        for k in entries:
            idx = np.unravel_index(k, base.shape) if base.ndim else ()
            numeric = _central_difference(f, args, i, path, base, idx, eps, kwargs)
            expected = analytic[idx] if base.ndim else float(analytic)
            error = abs(expected - numeric)
            if not error <= atol + rtol * abs(numeric):  # NaN fails too
                if worst is None or not error <= worst[0]:
                    worst = (error, idx, expected, numeric)
        if worst is not None:
            error, idx, expected, numeric = worst
            where = f"argument {i}" + (f" at path {format_path(path)}" if path else "")
            raise GradcheckError(
                f"gradcheck failed for {getattr(f, '__name__', 'f')}: {where}, worst entry "
                f"{tuple(int(j) for j in idx)}: reverse mode {expected:.10g}, finite "
                f"differences {numeric:.10g} (|diff| {error:.3g} > atol {atol} + rtol {rtol})"
            )
    return True


def _central_difference(f, args, i, path, base, idx, eps, kwargs):
    """Central difference along one entry, perturbing the array in place (so that an array
    held at several paths, tied weights, moves everywhere at once) and restoring it."""
    leaf = get_path(args[i], path) if path else args[i]
    in_place = isinstance(leaf, np.ndarray) and leaf.ndim > 0 and leaf.flags.writeable

    def at(delta):
        if in_place:
            leaf[idx] = base[idx] + delta
            new_args = args
        else:
            x = base + delta
            x = float(x) if isinstance(leaf, float) else x
            new_args = _with(args, i, path, x)
        out = f(*new_args, **kwargs)
        return float(np.asarray(out, dtype=np.float64).reshape(()))

    try:
        return (at(eps) - at(-eps)) / (2 * eps)
    finally:
        if in_place:
            leaf[idx] = base[idx]
        else:
            _with(args, i, path, leaf)
