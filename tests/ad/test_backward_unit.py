"""The backward pass's shortcuts: the symbolic seed ``UNIT`` and in-place accumulation.

``grad`` seeds the backward pass with ``UNIT`` (ones, kept symbolic: ``sum(exp(x))`` costs no
multiplication by ones) and sums the cotangents of a value used several times into a buffer it
allocated. These tests pin what must not change with them: the gradients (against finite
differences), that no returned gradient aliases an input, that no forward value or broadcast
view is written into, higher order, tied inputs and the device of the results.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from nnflow import ad
from nnflow.ad.backward import UNIT, backward

RNG = np.random.default_rng(7)
X = RNG.normal(size=(3, 4))
B = RNG.normal(size=(4,)) + 2.5
W = RNG.normal(size=(3, 4))

FUNCTIONS = {  # every shape of result the UNIT rules can give, and the fallbacks
    "exp": lambda x: np.sum(np.exp(x)),
    "sum-twice": lambda x: np.sum(x) + np.sum(x) + np.sum(x),
    "negate": lambda x: np.sum(-x),
    "subtract": lambda x: np.sum(1.0 - x) + np.sum(x - B),
    "divide-broadcast": lambda x: np.sum(x / B) + np.sum(B / (x * x + 1.0)),
    "scale": lambda x: np.sum(x * 2.0) + np.sum(3.0 * x),
    "add-broadcast": lambda x: np.sum(x[:1] + x) + np.sum(x + B),
    "multiply-broadcast": lambda x: np.sum(x * B) + np.sum(x[0] * x),
    "power": lambda x: np.sum(np.power(x * x + 1.0, 1.5)),
    "positive": lambda x: np.sum(+x),
    "mean-where": lambda x: np.mean(np.where(x > 0, x, 0.5 * x)),
    "scalar-output": lambda x: np.exp(np.sum(x * x) * 0.1),
    "square-sum-axis": lambda x: np.sum(np.sum(np.square(x), axis=0)),
    "fan-out": lambda x: np.sum(np.exp(np.exp(x) * 0.1)) + 3.0 * np.sum(np.exp(x) * 0.1),
    "tanh-chain": lambda x: np.sum(np.tanh(x) * np.tanh(x) + np.sin(x)),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_gradients_match_finite_differences(name):
    ad.gradcheck(FUNCTIONS[name], X.copy())


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_unit_seed_gives_what_real_ones_give(name):
    """``backward`` seeded with ``UNIT`` equals it seeded with an array of ones."""
    f = FUNCTIONS[name]
    _, g = ad.grad(f, X.copy())
    tape = g.tape
    out = tape.nodes[tape.output.index - 1]
    ones = backward(tape, out, np.ones_like(out.value))
    unit = backward(tape, out, UNIT)
    assert set(ones) == set(unit)
    for k in ones:
        np.testing.assert_allclose(unit[k], ones[k], rtol=1e-13, atol=1e-13)


def test_no_gradient_aliases_an_input():
    """``UNIT * w`` is ``w``: the gradient of ``sum(x * w)`` must still be a copy of ``w``."""
    x, w = X.copy(), W.copy()
    _, (gx, gw) = ad.grad(lambda x, w: np.sum(x * w), x, w)
    np.testing.assert_array_equal(gx, W)
    np.testing.assert_array_equal(gw, X)
    assert not np.shares_memory(gx, w) and not np.shares_memory(gw, x)
    gx[...] = 0.0  # the caller owns its gradients
    np.testing.assert_array_equal(w, W)


def test_accumulation_writes_into_no_forward_value():
    """The first cotangent of ``y`` is ``exp(y)``'s forward value: the sum must not go there."""
    x = X.copy()

    def f(x):
        y = np.exp(x * 0.5)  # backward meets sum(exp(y)) first: y's first cotangent is exp(y)
        return 3.0 * np.sum(y) + np.sum(y * 2.0) + np.sum(np.exp(y))

    _, g = ad.grad(f, x)
    y = np.exp(X * 0.5)
    np.testing.assert_allclose(g[0], (3.0 + np.exp(y) + 2.0) * y * 0.5, rtol=1e-13)
    for node in g.tape.nodes:  # every recorded value is still what the forward computed
        if node.fn is np.exp:
            want = np.exp(node.args[0])
            np.testing.assert_array_equal(node.value, want)
    np.testing.assert_array_equal(x, X)


def test_sum_of_broadcast_ones_is_not_written_in_place():
    """``sum(x)`` gives a read-only view of ones; adding more must allocate, not write there."""
    x = X.copy()
    val, g = ad.grad(lambda x: np.sum(x) + np.sum(x * x) + np.sum(np.exp(x)), x)
    np.testing.assert_allclose(g[0], 1.0 + 2.0 * X + np.exp(X), rtol=1e-13)
    _, g1 = ad.grad(lambda x: np.sum(x), x)  # the seed survives (a fresh view each time)
    np.testing.assert_array_equal(g1[0], np.ones_like(X))


def test_tied_inputs_accumulate():
    """One array at two paths of a model is one input: its gradient sums both uses."""
    w = W.copy()
    params = {"a": w, "b": w, "c": [w]}

    def f(p, x):
        return np.sum(p["a"] * x) + np.sum(np.exp(p["b"])) + np.sum(p["c"][0] ** 2)

    _, g = ad.grad(f, params, X, wrt=(0,))
    grads = [v for v in g[0].values() if v is not None]
    assert len(grads) == 1
    np.testing.assert_allclose(grads[0], X + np.exp(W) + 2.0 * W, rtol=1e-13)
    np.testing.assert_array_equal(w, W)
    # the same array passed twice: two inputs, each gets its own share
    _, (g1, g2) = ad.grad(lambda a, b: np.sum(np.exp(a) * b), w, w)
    np.testing.assert_allclose(g1, np.exp(W) * W, rtol=1e-13)
    np.testing.assert_allclose(g2, np.exp(W), rtol=1e-13)


def test_second_order_through_the_unit_path():
    """The outer grad's UNIT flows through exp and sum into the recorded inner backward."""
    x = X.copy()

    def outer(x):
        inner = ad.gradient(lambda z: np.sum(np.sin(z) * z))(x)  # sin z + z cos z
        return np.sum(np.exp(inner * 0.5))

    _, g = ad.grad(outer, x)
    inner = np.sin(X) + X * np.cos(X)
    dinner = 2.0 * np.cos(X) - X * np.sin(X)
    np.testing.assert_allclose(g[0], np.exp(inner * 0.5) * 0.5 * dinner, rtol=1e-12)
    ad.gradcheck(outer, x)
    v = RNG.normal(size=X.shape)
    f = FUNCTIONS["fan-out"]
    hv = ad.hvp(f, x, v)
    eps = 1e-6
    grad_f = ad.gradient(f)
    fd = (grad_f(x + eps * v) - grad_f(x - eps * v)) / (2 * eps)
    np.testing.assert_allclose(hv, fd, rtol=1e-6, atol=1e-8)


def test_compiled_gradient_agrees():
    """Tracing grad for ``compile_grad`` sums plain cotangents (from constants) and tracers."""
    for f in (FUNCTIONS["fan-out"], FUNCTIONS["sum-twice"]):
        cg = ad.compile_grad(f)
        for _ in range(2):
            np.testing.assert_allclose(cg(X)[1][0], ad.grad(f, X)[1][0], rtol=1e-13)

    def g(x, s):  # backward meets x + x first: two plain cotangents, then two tracers
        return np.sum((np.abs(x) * s + x * s + (x + x)) * np.array([0.5, 1.5]))

    x, s = np.array([0.3, -0.2]), 0.6
    want = (np.sign(x) * s + s + 2.0) * np.array([0.5, 1.5])
    np.testing.assert_allclose(ad.grad(g, x, s)[1][0], want, rtol=1e-13)
    cg = ad.compile_grad(g)
    for _ in range(2):
        np.testing.assert_allclose(cg(x, s)[1][0], want, rtol=1e-13)


def test_no_multiplication_by_ones():
    """``grad(sum(exp(x)))`` allocates exp's output and nothing of that size more."""
    x = np.random.default_rng(0).normal(size=(256, 512)).astype(np.float32)

    def f(x):
        return np.sum(np.exp(x))

    ad.grad(f, x)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        _, g = ad.grad(f, x)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(g[0], np.exp(x), rtol=1e-6)
    assert peak < 1.5 * x.nbytes, f"peak {peak} bytes for a {x.nbytes}-byte input"


def test_fan_out_sums_in_place():
    """Ten uses of ``x``: the sums go into one buffer, not a fresh array per use.

    Each use's cotangent is a broadcast view (no memory), so the buffer of the sum is the only
    large array of the backward pass: allocating every partial sum would need two at once.
    """
    x = np.random.default_rng(0).normal(size=(512, 256))

    def f(x):
        return sum(np.sum(np.sum(x, axis=0) * float(k)) for k in range(1, 11))

    ad.grad(f, x)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        _, g = ad.grad(f, x)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(g[0], np.full_like(x, 55.0), rtol=1e-13)
    assert peak < 1.6 * x.nbytes, f"peak {peak / x.nbytes:.2f} arrays"


def test_device_of_results(fake_gpu):
    """On the GPU stand-in, gradients from the UNIT path and from the sums stay on device."""
    from nnflow.backend import to_device

    x = to_device(X.copy(), "gpu")
    names = ("exp", "sum-twice", "negate", "scale", "fan-out", "positive", "scalar-output")
    functions = {name: FUNCTIONS[name] for name in names}
    functions["divide"] = lambda x: np.sum(x / (x[0] * x[0] + 1.0)) - np.sum(x)
    for name, f in functions.items():
        _, g = ad.grad(f, x)
        assert isinstance(g[0], fake_gpu.ndarray), name
        want = ad.grad(f, X.copy())[1][0]
        np.testing.assert_allclose(g[0].get(), want, rtol=1e-12, err_msg=name)
