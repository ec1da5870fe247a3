"""Shared fixtures: rules registered inside a test are removed again after it; ``device`` runs
a test on every device ("cpu", and "gpu" where CuPy sees a CUDA device); ``fake_gpu`` swaps CuPy
for the NumPy stand-in of ``tests/fakegpu.py`` for one test."""

from __future__ import annotations

import os

import pytest

from nnflow.ad.registry import _REGISTRY


@pytest.fixture(autouse=True)
def _isolated_rule_registry():
    """Tests define throw-away primitives; keep them out of the registry test's view."""
    before = set(_REGISTRY)
    yield
    for fn in set(_REGISTRY) - before:
        module = getattr(fn, "__module__", "") or ""
        if not module.startswith(("nnflow", "numpy", "_operator", "operator")):
            del _REGISTRY[fn]  # defined by the test itself, not a library import


# -- devices ------------------------------------------------------------------------------------
def _gpu_skip_reason() -> str:
    """Why the "gpu" device is skipped here ("" when CuPy sees a CUDA device)."""
    from nnflow import backend

    return backend._gpu_unavailable_reason()


@pytest.fixture(params=["cpu", "gpu"])
def device(request):
    """Each device a device-independent test runs on: "cpu" always, "gpu" when CuPy sees a
    CUDA device (skipped with the reason otherwise). Compare with ``devicekit.matches_cpu``.

    ``NNFLOW_TEST_FAKE_GPU=1`` runs the "gpu" cases on the NumPy stand-in for CuPy instead
    (``fake_gpu``) where there is no GPU: it checks the tests' GPU branches and nnflow's
    device plumbing, not CUDA.
    """
    if request.param == "gpu":
        why = _gpu_skip_reason()
        if why and os.environ.get("NNFLOW_TEST_FAKE_GPU") == "1":
            request.getfixturevalue("fake_gpu")
        elif why:
            pytest.skip(f"gpu: {why}")
    return request.param


@pytest.fixture
def fake_gpu(monkeypatch):
    """CuPy replaced by the NumPy stand-in of ``tests/fakegpu.py`` for one test: the "gpu"
    device exists, ``to_device(x, "gpu")`` gives ``FakeGpuArray``s, kernels are interpreted.
    Returns the stand-in module (its ``kernels`` lists the kernels built)."""
    import sys

    from fakegpu import FakeCupy

    from nnflow import backend

    fake = FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backend, "_load_cupy", lambda: (fake, ""))
    monkeypatch.setattr(backend, "_load_cudnn", lambda: (fake.cudnn, "no cuDNN in the stand-in"))
    return fake
