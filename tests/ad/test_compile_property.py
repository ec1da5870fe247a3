"""Property test: random compositions of ops and shapes, compiled gradients == eager ones.

Hypothesis builds a small program (unary and binary elementwise ops with broadcasting,
reductions with ``keepdims``, reversing views, data-dependent branches) over two arrays of
broadcast-compatible shapes (float64 or float32, C or Fortran order) and a Python float;
``ad.compile_grad`` of it must give exactly what ``ad.grad`` gives, on the call that traces
and on later calls that reuse the buffers.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nnflow import ad

UNARY = {
    "sin": np.sin,
    "tanh": np.tanh,
    "arctan": np.arctan,
    "square": np.square,
    "abs": np.abs,
    "neg": np.negative,
    "exp_tanh": lambda v: np.exp(np.tanh(v)),
    "reverse": lambda v: v[..., ::-1],
    "flat_round_trip": lambda v: np.reshape(np.reshape(v, -1), np.shape(v)),
}
BINARY = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "max": np.maximum,
    "div": lambda a, b: a / (1.0 + b * b),
    "where": lambda a, b: np.where(a > b, a, b * 0.5),
}
REDUCE = {"sum": np.sum, "mean": np.mean, "max": np.max}


def branch(v):
    """A data-dependent Python branch: recorded as a guard."""
    return v * 2.0 if float(np.sum(v)) > 0 else v - 1.0


shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


@st.composite
def programs(draw):
    shape = draw(shapes)
    other = tuple(n if draw(st.booleans()) else 1 for n in shape)[
        draw(st.integers(0, len(shape) - 1)) :
    ]
    steps = []
    for _ in range(draw(st.integers(1, 7))):
        kind = draw(st.sampled_from(["unary", "binary", "reduce", "branch", "scale"]))
        if kind == "unary":
            steps.append((kind, draw(st.sampled_from(sorted(UNARY))), draw(st.integers(0, 99))))
        elif kind == "binary":
            pick = st.integers(0, 99)
            steps.append((kind, draw(st.sampled_from(sorted(BINARY))), (draw(pick), draw(pick))))
        elif kind == "reduce":
            axis = draw(st.integers(0, len(shape) - 1))
            steps.append(
                (kind, draw(st.sampled_from(sorted(REDUCE))), (draw(st.integers(0, 99)), axis))
            )
        else:
            steps.append((kind, None, draw(st.integers(0, 99))))
    seed = draw(st.integers(0, 2**16))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    return shape, other, steps, seed, draw(st.booleans()), dtype


def run(steps, x, y, s):
    values = [x, y, x * s]
    for kind, name, where in steps:
        if kind == "unary":
            out = UNARY[name](values[where % len(values)])
        elif kind == "binary":
            out = BINARY[name](values[where[0] % len(values)], values[where[1] % len(values)])
        elif kind == "reduce":
            v = values[where[0] % len(values)]
            out = (
                REDUCE[name](v, axis=where[1] % max(np.ndim(v), 1), keepdims=True)
                if np.ndim(v)
                else v
            )
        elif kind == "branch":
            out = branch(values[where % len(values)])
        else:
            out = values[where % len(values)] * s
        values.append(out)
    weights = np.linspace(0.5, 1.5, np.size(values[-1])).reshape(np.shape(values[-1]))
    return np.sum(values[-1] * weights) + 0.25 * np.sum(values[len(values) // 2])


def assert_identical(got, want):
    assert got[0] == want[0] or (np.isnan(got[0]) and np.isnan(want[0]))
    for g, w in zip(got[1], want[1], strict=True):
        if isinstance(w, float):
            assert g == w or (np.isnan(g) and np.isnan(w))
        else:
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(g, w)


@settings(max_examples=60, deadline=None)
@given(programs())
def test_compiled_gradients_equal_eager_gradients(program):
    shape, other, steps, seed, fortran, dtype = program

    def f(x, y, s):
        return run(steps, x, y, s)

    rng = np.random.default_rng(seed)
    cg = ad.compile_grad(f)
    for _ in range(3):  # trace, then the compiled step (and maybe another variant), reused
        x, y = rng.normal(size=shape).astype(dtype), rng.normal(size=other).astype(dtype)
        s = float(rng.normal())
        x = np.asfortranarray(x) if fortran else x  # buffers follow the inputs' layout
        assert_identical(cg(x, y, s, copy=True), ad.grad(f, x, y, s))
