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
