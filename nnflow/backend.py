"""NumPy or CuPy: which array module to use, and moving data between devices.

Array code never consults a global switch; it asks its data::

    xp = get_array_module(x)      # numpy for NumPy arrays, cupy for CuPy arrays
    y = xp.exp(x) + xp.zeros_like(x)

This is the only module of nnflow that imports CuPy, and it does so lazily: importing nnflow,
or calling these functions on CPU data, never imports CuPy (CuPy's import is slow, and machines
without it must work unchanged). ``get_array_module`` does not even try: a CuPy array can only
exist once the program has imported CuPy, so it looks in ``sys.modules``.

An object that wraps an array (an AD tracer, for instance) is routed to the right module by the
Python array API standard's hook: it defines ``__array_namespace__()`` returning ``numpy`` or
``cupy``.

Two GPU helpers live here too, so that no other module imports CuPy:

- ``check_device(x, device)`` raises ``DeviceError`` naming every array of ``x`` that is not on
  ``device``: the explicit form of the strict-device debug mode (``nnflow.ad.strict_device``,
  ``Trainer(..., strict_device=True)``), which finds the host/device copies a training step
  would otherwise make silently (a NumPy constant meeting CuPy data, a model left on the CPU,
  ``float(loss)`` inside the step);
- ``cudnn(*arrays)`` is CuPy's cuDNN module (``cupyx.cudnn``) when every array is on the GPU
  and cuDNN can be loaded, else ``None``: the convolutions' choice between cuDNN and their
  GEMM formulation. ``NNFLOW_CUDNN=0`` in the environment turns cuDNN off (for comparisons).
"""

from __future__ import annotations

import copy
import functools
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, Literal

import numpy as np

__all__ = [
    "Device",
    "DEVICES",
    "DeviceError",
    "get_array_module",
    "device_of",
    "to_device",
    "gpu_available",
    "is_device_array",
    "check_device",
    "cudnn",
]

Device = Literal["cpu", "gpu"]
DEVICES: tuple[str, ...] = ("cpu", "gpu")


@functools.cache
def _load_cupy() -> tuple[ModuleType | None, str]:
    """Import CuPy once; returns ``(cupy, "")`` or ``(None, why it could not be imported)``."""
    try:
        import cupy
    # Not only ImportError: a broken CUDA install can make CuPy's import fail otherwise, and
    # that must not break CPU users; the reason is kept for the error a GPU request raises.
    except Exception as error:
        return None, f"{type(error).__name__}: {error}"
    return cupy, ""


def _gpu_unavailable_reason() -> str:
    """Why arrays cannot be put on the GPU here, or ``""`` when they can."""
    cupy, why = _load_cupy()
    if cupy is None:
        return f"CuPy could not be imported ({why}); install it with: pip install 'nnflow[gpu]'"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDARuntimeError when there is no driver or no device
        return f"CuPy is installed but found no usable CUDA device ({error})"
    return "" if count > 0 else "CuPy is installed but found no CUDA device"


def gpu_available() -> bool:
    """Whether CuPy can be imported and sees at least one CUDA device.

    >>> isinstance(gpu_available(), bool)
    True
    """
    return not _gpu_unavailable_reason()


def get_array_module(*arrays: Any) -> ModuleType:
    """The array module (``numpy`` or ``cupy``) that computes on ``arrays``.

    Returns ``cupy`` if any argument is a CuPy array (or wraps one, see the module docstring),
    ``numpy`` otherwise: NumPy arrays, Python and NumPy scalars, lists, ``None``.

    >>> import numpy as np
    >>> get_array_module(np.ones(3)).__name__
    'numpy'
    >>> get_array_module(2.0, np.float32(1)).__name__
    'numpy'
    """
    cupy = sys.modules.get("cupy")
    if cupy is None:  # no CuPy array can exist before CuPy is imported
        return np
    for x in arrays:
        if isinstance(x, cupy.ndarray):
            return cupy
        if not isinstance(x, (np.ndarray, np.generic)) and hasattr(x, "__array_namespace__"):
            if x.__array_namespace__() is cupy:
                return cupy
    return np


def device_of(x: Any) -> Device:
    """``"gpu"`` for a CuPy array (or an object wrapping one), ``"cpu"`` for anything else.

    >>> import numpy as np
    >>> device_of(np.zeros((2, 2)))
    'cpu'
    """
    return "cpu" if get_array_module(x) is np else "gpu"


def to_device(x: Any, device: Device) -> Any:
    """``x`` with every array moved to ``device`` (``"cpu"`` or ``"gpu"``).

    Recurses into lists, tuples (named tuples included) and dicts, returning new containers of
    the same types; other objects (scalars, NumPy scalars included, strings, ``None``) are
    returned as they are. An array already on ``device`` is returned itself, not a copy. The
    input is never changed in place, and objects are not walked into (moving a model's arrays
    in place is ``Model.to``'s job, over ``nnflow.tree``).

    Raises:
        ValueError: ``device`` is neither ``"cpu"`` nor ``"gpu"``.
        RuntimeError: ``device`` is ``"gpu"`` and CuPy or a CUDA device is missing.

    >>> import numpy as np
    >>> to_device({"w": np.ones(2), "n": 3}, "cpu")
    {'w': array([1., 1.]), 'n': 3}
    """
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {DEVICES}")
    if device == "gpu":
        why = _gpu_unavailable_reason()
        if why:
            raise RuntimeError(f"cannot move arrays to device 'gpu': {why}")
        cupy = _load_cupy()[0]
        return _map_arrays(x, lambda a: cupy.asarray(a) if isinstance(a, np.ndarray) else a)
    cupy = sys.modules.get("cupy")
    if cupy is None:  # nothing can be on the GPU; still rebuild containers for consistency
        return _map_arrays(x, lambda a: a)
    return _map_arrays(x, lambda a: cupy.asnumpy(a) if isinstance(a, cupy.ndarray) else a)


def _map_arrays(x: Any, move: Callable[[Any], Any]) -> Any:
    """Apply ``move`` to every leaf of the list/tuple/dict structure ``x``."""
    if isinstance(x, dict):
        out = copy.copy(x)  # keeps the dict's type and its extras (a defaultdict's factory)
        for key, value in x.items():
            out[key] = _map_arrays(value, move)
        return out
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a named tuple
        return type(x)(*(_map_arrays(item, move) for item in x))
    if isinstance(x, (list, tuple)):
        return type(x)(_map_arrays(item, move) for item in x)
    return move(x)


# -- strict device checks -----------------------------------------------------------------------
class DeviceError(RuntimeError):
    """An array is not on the device a strict step expects (an implicit host/device copy)."""


def is_device_array(x: Any) -> bool:
    """Whether ``x`` is an array that lives on a device: a NumPy or CuPy array of any rank, or
    an object wrapping one (``__array_namespace__``); ``False`` for Python and NumPy scalars,
    which CuPy passes to its kernels by value (no copy).

    >>> import numpy as np
    >>> is_device_array(np.zeros(())), is_device_array(np.float32(1)), is_device_array(2.0)
    (True, False, False)
    """
    if isinstance(x, np.ndarray):
        return True
    if isinstance(x, (np.generic, int, float, complex, bool, str, bytes)) or x is None:
        return False
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray):
        return True
    return hasattr(x, "__array_namespace__") and hasattr(x, "shape")


def _describe(x: Any) -> str:
    dtype = getattr(x, "dtype", None)
    shape = ", ".join(str(n) for n in getattr(x, "shape", ()))
    if type(x) is np.ndarray:
        kind = "a NumPy array"
    elif device_of(x) == "gpu":
        kind = "a CuPy array"
    else:
        kind = f"a {type(x).__name__}"
    return f"{kind} {np.dtype(dtype).name if dtype is not None else ''}[{shape}]"


def misplaced(x: Any, device: Device, path: tuple = ()) -> list[tuple[tuple, str]]:
    """``(path, description)`` of every array in the list/tuple/dict structure ``x`` that is not
    on ``device`` (scalars are fine on either device).

    >>> import numpy as np
    >>> misplaced({"w": np.ones(2), "lr": 0.1}, "gpu")
    [(('w',), 'a NumPy array float64[2] on cpu')]
    """
    found: list[tuple[tuple, str]] = []
    if isinstance(x, dict):
        for key, value in x.items():
            found += misplaced(value, device, path + (key,))
    elif isinstance(x, (list, tuple)):
        for i, value in enumerate(x):
            found += misplaced(value, device, path + (i,))
    elif is_device_array(x):
        where = device_of(x)
        if where != device:
            found.append((path, f"{_describe(x)} on {where}"))
    return found


def check_device(x: Any, device: Device, what: str = "arrays") -> None:
    """Raise ``DeviceError`` unless every array in ``x`` (lists, tuples, dicts) is on ``device``.

    The message names each misplaced array by its path, so the one a model or an optimizer
    forgot to move is found at once.

    >>> import numpy as np
    >>> check_device([np.ones(2), 3], "cpu")
    >>> check_device({"w": np.ones(2)}, "gpu", "parameters")
    Traceback (most recent call last):
    ...
    nnflow.backend.DeviceError: parameters not on 'gpu': ['w'] is a NumPy array float64[2] on cpu
    """
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {DEVICES}")
    found = misplaced(x, device)
    if found:
        shown = "; ".join(
            f"{''.join(f'[{p!r}]' for p in path) or '(the value)'} is {what_}"
            for path, what_ in found[:8]
        )
        more = f" (and {len(found) - 8} more)" if len(found) > 8 else ""
        raise DeviceError(f"{what} not on {device!r}: {shown}{more}")


# -- cuDNN ----------------------------------------------------------------------------------------
@functools.cache
def _load_cudnn() -> tuple[ModuleType | None, str]:
    """Import CuPy's cuDNN convolutions once: ``(cupyx.cudnn, "")`` or ``(None, why not)``."""
    cupy, why = _load_cupy()
    if cupy is None:
        return None, why
    try:
        import cupyx.cudnn as cudnn_module  # loads libcudnn; fails where it is not installed
    except Exception as error:
        return None, f"{type(error).__name__}: {error}"
    if not getattr(cupy.cuda, "cudnn_enabled", True):
        return None, "CuPy reports cuDNN as disabled"
    return cudnn_module, ""


def cudnn(*arrays: Any) -> ModuleType | None:
    """``cupyx.cudnn`` when every array is a CuPy array and cuDNN loads, else ``None``.

    Never imports CuPy for CPU data. ``NNFLOW_CUDNN=0`` in the environment returns ``None``
    (the GEMM formulation everywhere, e.g. to compare the two).

    >>> import numpy as np
    >>> cudnn(np.ones(2)) is None
    True
    """
    if not arrays or any(get_array_module(a) is np for a in arrays if a is not None):
        return None
    if os.environ.get("NNFLOW_CUDNN", "1") == "0":
        return None
    return _load_cudnn()[0]
