"""A stand-in for CuPy on machines without a GPU: NumPy arrays that say they live on the GPU.

``FakeCupy`` is a module object to put in ``sys.modules["cupy"]`` (the ``fake_gpu`` fixture of
``tests/conftest.py`` does, and points ``nnflow.backend``'s loader at it). Its ``ndarray`` is
``FakeGpuArray``, a NumPy subclass whose ufuncs and array functions compute with NumPy and
return ``FakeGpuArray`` again, and which, like CuPy, refuses to mix with plain NumPy arrays (a
``TypeError`` names the host array). Its ``ElementwiseKernel``/``ReductionKernel`` are the NumPy
interpreter of ``nnflow.ad.fusion_numpy``, so compiled tapes fuse as they would on the GPU. So
nnflow's device plumbing (``to_device``, ``get_array_module``, ``Model.to``, the optimizer
state, the compiled step's buffers, fusion, the convolutions' cuDNN choice, strict device mode)
runs on the CPU against a module that behaves like CuPy where it matters for routing: what it
cannot show is CUDA itself (compilation, speed, cuDNN's numerics).
"""

from __future__ import annotations

import types

import numpy as np

from nnflow.ad import fusion_numpy


class FakeGpuArray(np.ndarray):
    """A NumPy array standing for a CuPy array (see the module docstring)."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if any(_foreign(x) for x in inputs):
            return NotImplemented  # a tracer: its turn
        _refuse_host(inputs, f"numpy.{ufunc.__name__}")
        out = kwargs.get("out")
        if out is not None:
            _refuse_host(out, f"numpy.{ufunc.__name__}(out=...)")
            kwargs["out"] = tuple(_host(o) for o in out)
        result = getattr(ufunc, method)(*_host_tree(inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _device(result)

    def __array_function__(self, func, types_, args, kwargs):
        if any(not issubclass(t, np.ndarray) for t in types_):
            return NotImplemented
        _refuse_host((args, kwargs), f"numpy.{func.__name__}")
        return _device(func(*_host_tree(args), **_host_tree(kwargs)))

    def get(self) -> np.ndarray:
        """A host copy (CuPy's ``ndarray.get``)."""
        return np.array(self.view(np.ndarray))


# CuPy's array type is called ``ndarray`` too, and nnflow's planner recognises arrays by that name
FakeGpuArray.__name__ = FakeGpuArray.__qualname__ = "ndarray"


def _foreign(x) -> bool:
    """Another array type with its own dispatch (an AD tracer)."""
    return not isinstance(x, np.ndarray) and hasattr(type(x), "__array_ufunc__")


def _host(x):
    return x.view(np.ndarray) if isinstance(x, FakeGpuArray) else x


def _host_tree(x):
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(_host_tree(e) for e in x)
    if isinstance(x, dict):
        return {k: _host_tree(v) for k, v in x.items()}
    return _host(x)


def _device(x):
    """NumPy results as device arrays (reductions give 0-d arrays, as CuPy's do)."""
    if type(x) is np.ndarray:
        return x.view(FakeGpuArray)
    if isinstance(x, np.generic) and x.dtype.kind in "biufc":
        return np.asarray(x).view(FakeGpuArray)
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(_device(e) for e in x)
    return x


def _refuse_host(structure, where: str) -> None:
    """CuPy's refusal of NumPy arrays in device computations."""
    if isinstance(structure, (list, tuple)):
        for item in structure:
            _refuse_host(item, where)
    elif isinstance(structure, dict):
        for item in structure.values():
            _refuse_host(item, where)
    elif type(structure) is np.ndarray:
        raise TypeError(
            f"{where}: unsupported type <class 'numpy.ndarray'> (a host array "
            f"{structure.dtype}{list(structure.shape)} met device arrays)"
        )


def _wrapped(fn):
    def call(*args, **kwargs):
        _refuse_host((args, kwargs), getattr(fn, "__name__", "function"))
        return _device(fn(*_host_tree(args), **_host_tree(kwargs)))

    call.__name__ = getattr(fn, "__name__", "function")
    return call


class _Kernel:
    """A generated kernel, interpreted on the host arrays behind device arrays."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __call__(self, *args, **kwargs):
        _refuse_host((args, kwargs), self.kernel.name)
        result = self.kernel(*_host_tree(args), **_host_tree(kwargs))
        out = kwargs.get("out")
        if out is None and len(args) > len(self.kernel.in_params):
            out = args[-1]
        return out if out is not None else _device(result)


class FakeCupy(types.ModuleType):
    """The ``cupy`` module of the stand-in: NumPy's functions, on ``FakeGpuArray``."""

    ndarray = FakeGpuArray

    def __init__(self, cudnn=None):
        super().__init__("cupy")
        self.cuda = types.SimpleNamespace(
            runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
            get_current_stream=lambda: types.SimpleNamespace(synchronize=lambda: None),
            cudnn_enabled=cudnn is not None,
        )
        self.lib = types.SimpleNamespace(
            stride_tricks=types.SimpleNamespace(
                as_strided=_wrapped(np.lib.stride_tricks.as_strided)
            )
        )
        self.cudnn = cudnn
        self.kernels: list = []  # every kernel built, for the tests to look at

    def __getattr__(self, name):
        attr = getattr(np, name)
        if callable(attr) and not isinstance(attr, type):
            return _wrapped(attr)
        return attr

    def asarray(self, x, dtype=None):
        """A device copy of host data (CuPy's ``asarray``)."""
        return np.array(_host(x), dtype=dtype).view(FakeGpuArray)

    def asnumpy(self, x):
        """A host copy of device data."""
        return np.array(_host(x))

    def ElementwiseKernel(self, *args, **kwargs):  # noqa: N802  (CuPy's name)
        kernel = fusion_numpy.ElementwiseKernel(*args, **kwargs)
        self.kernels.append(kernel)
        return _Kernel(kernel)

    def ReductionKernel(self, *args, **kwargs):  # noqa: N802  (CuPy's name)
        kernel = fusion_numpy.ReductionKernel(*args, **kwargs)
        self.kernels.append(kernel)
        return _Kernel(kernel)
