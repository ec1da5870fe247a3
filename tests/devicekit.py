"""Helpers of the device-parametrized tests (the ``device`` fixture of ``tests/conftest.py``).

A test builds its inputs on the CPU, runs with :func:`place` putting them on ``device``, and
compares with :func:`assert_close` after :func:`host` brought the results back: on "cpu" that
checks the result against its reference, on "gpu" it also checks that GPU results equal CPU
results to float tolerance (:func:`tolerance`) and that results stay on the device
(:func:`assert_on`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nnflow.backend import device_of, is_device_array, to_device


def place(device: str, x: Any) -> Any:
    """``x`` on ``device``: models (anything with ``.to``) moved in place, containers rebuilt."""
    if hasattr(x, "to") and callable(x.to) and not is_device_array(x):
        return x.to(device)
    if isinstance(x, dict):
        return {k: place(device, v) for k, v in x.items()}
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(place(device, v) for v in x)
    return to_device(x, device)


def host(x: Any) -> Any:
    """``x`` with every array brought to the CPU as a NumPy array (tuples become lists)."""
    if isinstance(x, dict):
        return {k: host(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [host(v) for v in x]
    if is_device_array(x):
        return np.asarray(to_device(x, "cpu"))
    return x


def assert_on(device: str, x: Any) -> None:
    """Every array in ``x`` (dicts, lists, tuples) lives on ``device``."""
    if isinstance(x, dict):
        for v in x.values():
            assert_on(device, v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            assert_on(device, v)
    elif is_device_array(x):
        assert device_of(x) == device, f"a {type(x).__name__} on {device_of(x)}, not {device}"


def tolerance(dtype) -> dict[str, float]:
    """``rtol``/``atol`` for GPU-vs-CPU comparisons: summation order and the last bits of
    transcendental functions differ between cuBLAS/CUDA and OpenBLAS/libm."""
    if np.dtype(dtype) == np.float64:
        return {"rtol": 1e-9, "atol": 1e-11}
    return {"rtol": 2e-4, "atol": 2e-5}


def assert_close(got: Any, want: Any, rtol: float = 1e-9, atol: float = 1e-11, path=()) -> None:
    """``got`` equals ``want`` (same structure; arrays and floats to tolerance)."""
    got, want = host(got), host(want)
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{path}: keys differ"
        for k in want:
            assert_close(got[k], want[k], rtol, atol, path + (k,))
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: lengths differ"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, rtol, atol, path + (i,))
    elif want is None:
        assert got is None, f"{path}: {got!r} is not None"
    else:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"at {path}")


def matches_cpu(device: str, make, run, **tol) -> Any:
    """``run(*make())`` on ``device``, checked against the same on the CPU; returns the CPU
    result (for further checks against a reference).

    ``make()`` must build fresh inputs each call (models included), on the CPU.
    """
    want = run(*make())
    if device == "cpu":
        return want
    got = run(*place(device, make()))
    assert_on(device, got)
    assert_close(got, want, **tol)
    return want
