"""Shared helpers of the layer tests: seeded inputs and a weighted-sum gradcheck."""

from __future__ import annotations

import numpy as np
import pytest

from nnflow import ad


def rand(*shape, seed=0, dtype=np.float64):
    """Reproducible normal samples."""
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def check_model_grads(model, *inputs, wrt_inputs=True, **kw):
    """gradcheck of ``sum(model(*inputs) * weights)`` w.r.t. every parameter and the inputs.

    Fixed non-uniform weights catch rules that ignore the cotangent's values.
    """
    out = model(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    weights = np.random.default_rng(7).uniform(0.5, 1.5, np.shape(out))

    def loss(m, *xs):
        y = m(*xs)
        y = y[0] if isinstance(y, tuple) else y
        return np.sum(y * weights)

    wrt = None if wrt_inputs else (0,)
    return ad.gradcheck(loss, model, *inputs, wrt=wrt, **kw)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def count_kernel_calls(monkeypatch, module, names):
    """Replace the ``nnflow.jit.Kernel`` objects ``names`` of ``module`` with counting
    wrappers (the compiled kernel, when it would run): the counts, by name."""
    from nnflow import jit

    calls = dict.fromkeys(names, 0)
    for name in names:
        real = getattr(module, name)

        def counting(*a, compiled=real.compiled, name=name):
            calls[name] += 1
            return compiled(*a)

        fake = jit.Kernel(real.fn)
        monkeypatch.setattr(fake, "get", lambda *arrays, r=real, f=counting: r.get(*arrays) and f)
        monkeypatch.setattr(module, name, fake)
    return calls
