"""The tracer: operators, methods, indexing, conversions and what may not be traced."""

from __future__ import annotations

import numpy as np
import pytest

from nnflow import ad

X = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])


def check(f, *args):
    """f runs on tracers, gives NumPy's value, and its gradient matches finite differences."""
    val, _ = ad.grad(lambda *a: np.sum(f(*a)), *args)
    np.testing.assert_allclose(val, np.sum(f(*args)))
    ad.gradcheck(
        lambda *a: np.sum(f(*a) * np.cos(np.arange(np.size(f(*args)))).reshape(np.shape(f(*args)))),
        *args,
    )


OPERATORS = {
    "add": lambda x: x + 2.0,
    "radd": lambda x: 2.0 + x,
    "sub": lambda x: x - 1.5,
    "rsub": lambda x: 1.5 - x,
    "mul": lambda x: x * x,
    "rmul": lambda x: 3.0 * x,
    "truediv": lambda x: x / 4.0,
    "rtruediv": lambda x: 1.0 / (x + 3.0),
    "pow": lambda x: (x + 3.0) ** 1.5,
    "rpow": lambda x: 2.0**x,
    "matmul": lambda x: x @ x.T,
    "rmatmul": lambda x: np.ones((4, 2)) @ x,
    "neg": lambda x: -x,
    "pos": lambda x: +x,
    "abs": lambda x: abs(x),
    "mod": lambda x: (x + 3.0) % 1.7,
    "list-operand": lambda x: x * [1.0, 2.0, 3.0],
}


@pytest.mark.parametrize("name", OPERATORS)
def test_operators(name):
    check(OPERATORS[name], X)


def test_inplace_operators_make_new_nodes_and_leave_inputs_alone():
    def f(x):
        y = x * 1.0
        y += 1.0
        y *= x
        y -= 0.5
        y /= 2.0
        y **= 2
        return y

    check(f, X)
    original = X.copy()

    def mutate_argument(x):
        x += 1.0  # on a tracer: a new node, the caller's array is untouched
        x *= 2.0
        return np.sum(x)

    val, g = ad.grad(mutate_argument, X)
    np.testing.assert_array_equal(X, original)
    np.testing.assert_allclose(val, np.sum((X + 1) * 2))
    np.testing.assert_allclose(g[0], np.full_like(X, 2.0))


METHODS = {
    "T": lambda x: x.T,
    "reshape-tuple": lambda x: x.reshape((3, 2)),
    "reshape-args": lambda x: x.reshape(3, -1),
    "transpose": lambda x: x.transpose(),
    "transpose-axes": lambda x: x[None].transpose(2, 0, 1),
    "sum": lambda x: x.sum(axis=0),
    "mean": lambda x: x.mean(axis=1, keepdims=True),
    "max": lambda x: x.max(axis=1),
    "min": lambda x: x.min(),
    "prod": lambda x: x.prod(axis=0),
    "var": lambda x: x.var(axis=1),
    "std": lambda x: x.std(),
    "dot": lambda x: x.dot(np.ones(3)),
    "clip": lambda x: x.clip(-0.8, 1.0),
    "astype": lambda x: x.astype(np.float64) * 2,
    "ravel": lambda x: x.ravel(),
    "flatten": lambda x: x.flatten(),
    "squeeze": lambda x: x[None, :, None].squeeze(),
    "swapaxes": lambda x: x.swapaxes(0, 1),
    "cumsum": lambda x: x.cumsum(axis=1),
    "iter": lambda x: np.stack([row * (i + 1) for i, row in enumerate(x)]),
}


@pytest.mark.parametrize("name", METHODS)
def test_methods(name):
    check(METHODS[name], X)


def test_properties_and_len():
    def f(x):
        assert x.shape == (2, 3) and x.ndim == 2 and x.size == 6 and len(x) == 2
        assert x.dtype == np.float64
        return np.sum(x)

    ad.grad(f, X)


INDEXES = {
    "int": (1,),
    "negative-int": (-1, -2),
    "slice-step": (slice(None, None, 2),),
    "negative-step": (slice(None), slice(None, None, -1)),
    "ellipsis": (Ellipsis, 1),
    "newaxis": (None, slice(None), None),
    "int-array-repeated": (np.array([0, 1, 0, 0]),),
    "bool-mask": (X > 0,),
    "mixed": (np.array([1, 0]), slice(1, None)),
}


@pytest.mark.parametrize("name", INDEXES)
def test_getitem_every_index_kind(name):
    key = INDEXES[name]
    check(lambda x: x[key], X)


def test_traced_mask_and_traced_integer_index():
    check(lambda x: x[x > 0], X)
    check(lambda x: x[:, np.argmax(x, axis=1)], X)


def test_setitem_on_tracer_is_a_functional_update():
    def f(x):
        y = x * 1.0
        y[0, 1] = y[1, 2] * 3.0
        y[1] = 0.0
        return y

    check(f, X)
    expected = X.copy()
    expected[0, 1] = X[1, 2] * 3.0
    expected[1] = 0.0
    val, _ = ad.trace(f, X)
    np.testing.assert_allclose(val, expected)


def test_comparisons_are_boolean_and_carry_no_gradient():
    def f(x):
        mask = x > 0
        assert mask.dtype == bool and not mask.diff
        return np.sum(x * mask)

    _, g = ad.grad(f, X)
    np.testing.assert_array_equal(g[0], (X > 0).astype(float))


@pytest.mark.parametrize("convert,kind", [(bool, "bool"), (int, "int"), (float, "float")])
def test_conversions_are_recorded_as_guards(convert, kind):
    def f(x):
        n = convert(np.sum(x) > 0) if convert is bool else convert(np.sum(x))
        return np.sum(x) * (2.0 if n else 1.0)

    _, g = ad.grad(f, X)
    assert f"guard_{kind}" in str(g.tape)


def test_writing_a_traced_value_into_a_numpy_array_says_what_to_do():
    def into_row(x):
        buf = np.zeros((2, 3))
        buf[0] = x[0]
        return np.sum(buf)

    with pytest.raises(ad.TracerError, match="np.stack"):
        ad.grad(into_row, X)
    with pytest.raises(ad.TracerError, match="np.concatenate"):
        ad.grad(lambda x: np.sum(np.asarray(x)), X)


def test_writing_a_traced_scalar_into_a_numpy_array_says_what_to_do():
    def into_element(x):
        buf = np.zeros(3)
        buf[0] = x[0, 0]
        return np.sum(buf)

    with pytest.raises(Exception) as info:  # NumPy wraps the error it got from the tracer
        ad.grad(into_element, X)
    error = info.value if isinstance(info.value, ad.TracerError) else info.value.__cause__
    assert isinstance(error, ad.TracerError) and "np.where" in str(error)


def test_float_of_a_traced_scalar_is_allowed_for_logging():
    seen = []

    def f(x):
        loss = np.sum(x * x)
        seen.append(float(loss))
        return loss

    ad.grad(f, X)
    assert seen == [pytest.approx(np.sum(X * X))]


def test_ufunc_out_argument_is_refused():
    with pytest.raises(ad.TracerError, match="out="):
        ad.grad(lambda x: np.sum(np.exp(x, out=np.empty_like(X))), X)


def test_ufunc_methods_reduce_accumulate_outer():
    check(lambda x: np.add.reduce(x, axis=0), X)
    check(lambda x: np.multiply.accumulate(x + 2.0, axis=1), X)
    check(lambda x: np.multiply.outer(x[0], x[1]), X)


def test_escaped_tracer_is_reported():
    leaked = []
    ad.grad(lambda x: leaked.append(x) or np.sum(x), X)
    with pytest.raises(ad.TracerError, match="escaped"):
        ad.grad(lambda y: np.sum(leaked[0] * y), X)


def test_like_functions_and_static_queries():
    def f(x):
        z = np.zeros_like(x)
        assert type(z) is np.ndarray and np.shape(x) == (2, 3) and np.ndim(x) == 2
        return np.sum(x + z + np.ones_like(x))

    check(f, X)


def test_traced_mask_used_on_a_plain_array_becomes_an_array_guard():
    table = np.arange(3.0)

    def f(x):
        return np.sum(x * table[x > 0].sum())

    x = np.array([1.0, -1.0, 2.0])
    _, g = ad.grad(f, x)
    np.testing.assert_array_equal(g[0], np.full(3, 2.0))
    assert "guard_array" in str(g.tape)
    assert float(g.tape.play(x * 3)) == float(f(x * 3))  # same mask: replay is fine
    with pytest.raises(ad.GuardFailure):
        g.tape.play(np.array([-1.0, 1.0, 2.0]))  # other mask: the replay refuses
