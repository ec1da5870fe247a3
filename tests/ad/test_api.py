"""The differentiation API on the behaviours of Yota's README, in Python."""

from __future__ import annotations

import numpy as np
import pytest

from nnflow import ad


class Linear:
    """Yota's ``Linear`` struct: plain object with array fields."""

    def __init__(self, W, b):
        self.W, self.b = W, b


def forward(m, X):
    return m.W @ X + m.b[:, None]


def loss(m, X):
    return np.sum(forward(m, X))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_linear_struct_field_gradients_and_update(rng):
    m = Linear(rng.random((3, 4)), rng.random(3))
    X = rng.random((4, 5))
    val, g = ad.grad(loss, m, X)
    assert np.isclose(val, np.sum(m.W @ X + m.b[:, None]))
    np.testing.assert_allclose(g[0][("W",)], np.ones((3, 5)) @ X.T)
    np.testing.assert_allclose(g[0][("b",)], np.full(3, 5.0))
    np.testing.assert_allclose(g[1], m.W.T @ np.ones((3, 5)))
    assert isinstance(m.W, np.ndarray)  # the object holds arrays again, not tracers
    W_before, W_object = m.W.copy(), m.W
    ad.update(m, g[0], lambda x, gx: x - 0.01 * gx)
    np.testing.assert_allclose(m.W, W_before - 0.01 * g[0][("W",)])
    assert m.W is W_object  # updated in place


def test_nested_containers_give_path_dicts(rng):
    params = {"layers": [{"w": rng.random(3)}, {"w": rng.random(3)}], "scale": (2.0, rng.random(1))}

    def f(p):
        total = sum(np.sum(layer["w"] ** 2) for layer in p["layers"])
        return total * p["scale"][1][0]

    _, g = ad.grad(f, params)
    s = params["scale"][1][0]
    assert set(g[0]) == {("layers", 0, "w"), ("layers", 1, "w"), ("scale", 1)}
    np.testing.assert_allclose(g[0][("layers", 1, "w")], 2 * params["layers"][1]["w"] * s)
    expected_ds = sum(np.sum(layer["w"] ** 2) for layer in params["layers"])
    np.testing.assert_allclose(g[0][("scale", 1)], [expected_ds])
    assert isinstance(params["scale"], tuple) and isinstance(params["scale"][1], np.ndarray)


def test_python_float_gets_float_gradient_and_ints_get_none():
    val, g = ad.grad(lambda x, a, n: np.sum(x * a) * n, np.array([1.0, 2.0]), 3.0, 2)
    assert val == 18.0
    assert isinstance(g[1], float) and g[1] == 6.0
    assert g[2] is None
    np.testing.assert_allclose(g[0], [6.0, 6.0])


def test_wrt_restricts_the_gradients():
    x, y = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    _, g = ad.grad(lambda x, y: np.sum(x * y), x, y, wrt=(1,))
    assert g[0] is None
    np.testing.assert_allclose(g[1], x)


def test_unused_parameter_gets_zeros_not_an_error():
    m = Linear(np.ones((2, 2)), np.ones(2))
    _, g = ad.grad(lambda m: np.sum(m.W), m)
    np.testing.assert_array_equal(g[0][("b",)], np.zeros(2))
    ad.update(m, g[0], lambda x, gx: x - gx)
    np.testing.assert_array_equal(m.W, np.zeros((2, 2)))


def test_gradient_keeps_dtype_and_shape():
    x = np.ones((2, 3), dtype=np.float32)
    _, g = ad.grad(lambda x: np.sum(np.exp(x) * 2.0), x)
    assert g[0].dtype == np.float32 and g[0].shape == (2, 3)


def test_logistic_custom_rule_is_used_and_correct():
    calls = []

    @ad.primitive
    def logistic(x):
        return 1 / (1 + np.exp(-x))

    @ad.diffrule(logistic, "x")
    def logistic_dx(dy, y, x):
        calls.append(1)
        return dy * y * (1 - y)

    x = np.linspace(-2, 2, 5)
    val, g = ad.grad(lambda x: np.sum(logistic(x)), x)
    s = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(g[0], s * (1 - s))
    assert calls, "the custom rule was not called"
    assert "logistic" in str(g.tape) and "exp" not in str(g.tape)  # one node, not traced through
    ad.gradcheck(lambda x: np.sum(logistic(x) * x), x)


def test_rule_receives_keyword_arguments():
    seen = {}

    @ad.primitive
    def scaled_sum(x, *, factor=1.0, axis=None):
        return np.sum(x, axis=axis) * factor

    @ad.diffrule(scaled_sum, "x")
    def scaled_sum_dx(dy, y, x, *, factor=1.0, axis=None):
        seen.update(factor=factor, axis=axis)
        return np.broadcast_to(np.expand_dims(dy, axis) * factor, x.shape)

    x = np.arange(6.0).reshape(2, 3)
    _, g = ad.grad(lambda x: np.sum(scaled_sum(x, factor=3.0, axis=0) ** 2), x)
    assert seen == {"factor": 3.0, "axis": 0}
    np.testing.assert_allclose(g[0], np.broadcast_to(2 * 9 * x.sum(0), (2, 3)))


def test_nodiff_blocks_gradient_through_an_argument():
    @ad.primitive
    def weighted(x, w):
        return x * w

    ad.diffrule(weighted, "x")(lambda dy, y, x, w: dy * w)
    ad.nodiff(weighted, "w")
    x, w = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    _, g = ad.grad(lambda x, w: np.sum(weighted(x, w)), x, w)
    np.testing.assert_allclose(g[0], w)
    np.testing.assert_array_equal(g[1], np.zeros(2))


def test_stop_gradient():
    x = np.array([2.0, 3.0])
    _, g = ad.grad(lambda x: np.sum(x * ad.stop_gradient(x)), x)
    np.testing.assert_allclose(g[0], x)


def inc_mul(a, b):
    return a * (b + 1)


def test_trace_print_and_play():
    val, tape = ad.trace(inc_mul, np.array(2.0), np.array(3.0))
    assert float(val) == 8.0
    text = str(tape)
    lines = text.splitlines()
    assert lines[0].startswith("%1 = input") and "float64[]" in lines[0]
    assert any("add(%2, 1)" in line for line in lines)
    assert any("multiply(%1, %3)" in line for line in lines)
    assert lines[-1] == "return %4"
    assert float(tape.play(np.array(4.0), np.array(5.0))) == 24.0


def test_play_replays_objects_and_writes_state_back():
    class Counter:
        def __init__(self):
            self.w, self.state = np.array([1.0, 2.0]), np.zeros(2)

    def step(m, x):
        m.state = m.state + m.w * x
        return np.sum(m.state)

    m = Counter()
    val, tape = ad.trace(step, m, np.array(2.0))
    assert float(val) == 6.0 and isinstance(m.state, np.ndarray)
    np.testing.assert_allclose(m.state, [2.0, 4.0])
    other = Counter()
    out = tape.play(other, np.array(3.0))
    np.testing.assert_allclose(other.state, [3.0, 6.0])
    assert float(out) == 9.0


def iterative(x, n):
    for _ in range(n):
        x = 2 * x
    return np.sum(x)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 8])
def test_iterative_loop_gradient_is_two_to_the_n(n):
    _, g = ad.grad(iterative, np.random.default_rng(n).random(4), n)
    np.testing.assert_array_equal(g[0], np.full(4, 2.0**n))


def test_iterative_alternating_n_stays_correct():
    x = np.ones(3)
    for n in [3, 1, 4, 1, 5]:
        np.testing.assert_array_equal(ad.grad(iterative, x, n)[1][0], np.full(3, 2.0**n))


def test_data_dependent_branch_records_a_guard_and_replay_checks_it():
    def f(x):
        if np.sum(x) > 0:
            return np.sum(x * 2)
        return np.sum(x * 3)

    _, g = ad.grad(f, np.ones(2))
    np.testing.assert_array_equal(g[0], [2.0, 2.0])
    assert "guard_bool" in str(g.tape)
    assert float(g.tape.play(np.full(2, 2.0))) == 8.0
    with pytest.raises(ad.GuardFailure):
        g.tape.play(-np.ones(2))
    np.testing.assert_array_equal(ad.grad(f, -np.ones(2))[1][0], [3.0, 3.0])


def test_vjp_and_gradient_composition():
    out, back = ad.vjp(lambda x: np.sin(x) * x, np.array([0.5, 1.0]))
    x = np.array([0.5, 1.0])
    np.testing.assert_allclose(out, np.sin(x) * x)
    (ct,) = back(np.array([1.0, 2.0]))
    np.testing.assert_allclose(ct, np.array([1.0, 2.0]) * (np.cos(x) * x + np.sin(x)))
    d = ad.gradient(lambda a, b: np.sum(a * b), argnums=(0, 1))
    ga, gb = d(np.array([1.0]), np.array([2.0]))
    assert ga.tolist() == [2.0] and gb.tolist() == [1.0]


def test_gradcheck_catches_a_wrong_rule():
    @ad.primitive
    def cube(x):
        return x**3

    ad.diffrule(cube, "x")(lambda dy, y, x: dy * 2 * x * x)  # wrong: should be 3x^2
    with pytest.raises(ad.GradcheckError, match=r"argument 0.*worst entry"):
        ad.gradcheck(lambda x: np.sum(cube(x)), np.array([1.0, 2.0]))


def test_gradcheck_names_the_path_in_objects():
    @ad.primitive
    def double(x):
        return 2 * x

    ad.diffrule(double, "x")(lambda dy, y, x: dy)  # wrong on purpose
    params = {"layer": {"weight": np.array([1.0, 2.0])}}
    with pytest.raises(ad.GradcheckError, match="layer.weight"):
        ad.gradcheck(lambda p: np.sum(double(p["layer"]["weight"])), params)
    np.testing.assert_array_equal(params["layer"]["weight"], [1.0, 2.0])  # restored


def test_tied_weights_get_one_summed_gradient():
    class Tied:
        def __init__(self):
            self.encoder = {"weight": np.array([[1.0, 2.0], [3.0, 4.0]])}
            self.decoder = {"weight": self.encoder["weight"]}  # the same array object

    m = Tied()
    x = np.array([1.0, -1.0])

    def f(m):
        return np.sum(m.decoder["weight"].T @ (m.encoder["weight"] @ x))

    _, g = ad.grad(f, m)
    assert set(g[0]) == {("encoder", "weight")}
    W = m.encoder["weight"]
    expected = np.outer(W @ np.ones(2), x) + np.outer(W @ x, np.ones(2))
    np.testing.assert_allclose(g[0][("encoder", "weight")], expected)
    assert m.decoder["weight"] is m.encoder["weight"]  # still tied, still a plain array
    ad.gradcheck(f, m)
