"""Higher order: second derivatives, Hessians, hvp, jvp and Jacobians in both modes."""

from __future__ import annotations

import numpy as np
import pytest

from nnflow import ad

SECOND_DERIVATIVES = {  # f, f'' in closed form
    "exp": (np.exp, np.exp),
    "sin": (np.sin, lambda x: -np.sin(x)),
    "tanh": (np.tanh, lambda x: -2 * np.tanh(x) * (1 - np.tanh(x) ** 2)),
    "log": (np.log, lambda x: -1 / x**2),
    "sqrt": (np.sqrt, lambda x: -0.25 * x**-1.5),
    "power": (lambda x: x**3.5, lambda x: 3.5 * 2.5 * x**1.5),
    "reciprocal": (lambda x: 1 / x, lambda x: 2 / x**3),
    "logistic": (lambda x: 1 / (1 + np.exp(-x)), lambda x: _s(x) * (1 - _s(x)) * (1 - 2 * _s(x))),
    "arctan": (np.arctan, lambda x: -2 * x / (1 + x * x) ** 2),
}


def _s(x):
    return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("name", SECOND_DERIVATIVES)
def test_second_derivative_matches_closed_form(name):
    f, f2 = SECOND_DERIVATIVES[name]
    x = np.linspace(0.3, 2.0, 6)
    d2 = ad.gradient(lambda x: np.sum(ad.gradient(lambda x: np.sum(f(x)))(x)))
    np.testing.assert_allclose(d2(x), f2(x), rtol=1e-10)
    np.testing.assert_allclose(np.diag(ad.hessian(lambda x: np.sum(f(x)), x)), f2(x), rtol=1e-10)


def test_third_derivative_of_scalar_function():
    d3 = ad.gradient(ad.gradient(ad.gradient(lambda x: x**4)))
    assert d3(1.5) == pytest.approx(24 * 1.5)


def test_hessian_of_quadratic_form():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 4))
    x = rng.normal(size=4)
    H = ad.hessian(lambda x: x @ A @ x, x)
    np.testing.assert_allclose(H, A + A.T, atol=1e-12)


def test_hessian_of_logistic_regression_loss():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(8, 3)), rng.integers(0, 2, 8).astype(float)
    w = rng.normal(size=3)

    def nll(w):
        z = X @ w
        return np.sum(np.logaddexp(0, z) - y * z)

    p = 1 / (1 + np.exp(-X @ w))
    np.testing.assert_allclose(ad.hessian(nll, w), X.T @ np.diag(p * (1 - p)) @ X, rtol=1e-10)


def test_hvp_equals_hessian_times_vector():
    rng = np.random.default_rng(2)
    W = rng.normal(size=(3, 5))

    def f(x):
        return np.sum(np.tanh(W @ x) ** 2) + np.sum(np.sin(x) * x)

    x, v = rng.normal(size=5), rng.normal(size=5)
    np.testing.assert_allclose(ad.hvp(f, x, v), ad.hessian(f, x) @ v, rtol=1e-10, atol=1e-12)


def _vector_function(x):
    return np.concatenate([np.sin(x) * x[::-1], np.cumsum(np.exp(x))[:2], [np.prod(x)]])


def test_forward_and_reverse_jacobians_agree_and_match_finite_differences():
    x = np.array([0.3, -0.7, 1.1])
    forward = ad.jacobian(_vector_function, x, mode="fwd")
    reverse = ad.jacobian(_vector_function, x, mode="rev")
    assert forward.shape == (6, 3)
    np.testing.assert_allclose(forward, reverse, rtol=1e-12, atol=1e-14)
    eps = 1e-6
    numeric = np.stack(
        [(_vector_function(x + eps * e) - _vector_function(x - eps * e)) / (2 * eps)
         for e in np.eye(3)], axis=1)  # fmt: skip
    np.testing.assert_allclose(reverse, numeric, rtol=1e-6, atol=1e-8)


def test_jvp_equals_jacobian_times_tangent():
    x, t = np.array([0.3, -0.7, 1.1]), np.array([1.0, 0.5, -2.0])
    out, tangent = ad.jvp(_vector_function, (x,), (t,))
    np.testing.assert_allclose(out, _vector_function(x))
    np.testing.assert_allclose(tangent, ad.jacobian(_vector_function, x) @ t, rtol=1e-12)


def test_jvp_is_true_forward_mode_and_keeps_no_tape():
    seen = []

    def f(x):
        for _ in range(20):
            x = np.sin(x) + x
            seen.append(x.tape)
        return x

    ad.jvp(f, (np.ones(3),), (np.ones(3),))
    assert seen[0].forward and len(seen[0].nodes) == 1  # only the input is kept


def test_jacobian_of_matrix_valued_function_has_output_then_input_shape():
    x = np.arange(1.0, 7.0).reshape(2, 3)
    J = ad.jacobian(lambda x: x.T * 2, x)
    assert J.shape == (3, 2, 2, 3)
    assert J[1, 0, 0, 1] == 2.0 and J[1, 0, 1, 1] == 0.0


def test_mixed_partials_through_nested_grad():
    # d/dy (d/dx x^2 y^3) = 6 x y^2
    def inner(x, y):
        return ad.grad(lambda x: x**2 * y**3, x)[1][0]

    _, g = ad.grad(inner, 1.5, 2.0)
    assert g[1] == pytest.approx(6 * 1.5 * 4.0)


def test_closure_over_outer_tracer_is_not_confused():
    # d/dx [x * d/dy (x + y)] = d/dx [x * 1] = 1  (perturbation confusion would give 2)
    def f(x):
        return x * ad.gradient(lambda y: x + y)(1.0)

    assert ad.gradient(f)(3.0) == pytest.approx(1.0)


def test_gradcheck_of_a_gradient_second_order_on_a_network():
    rng = np.random.default_rng(3)
    W1, W2, x = rng.normal(size=(4, 3)), rng.normal(size=(2, 4)), rng.normal(size=(3, 5))

    def loss(W1, W2):
        return np.sum(np.logaddexp(0, W2 @ np.tanh(W1 @ x)))

    def grad_norm(W1, W2):
        g1, g2 = ad.grad(loss, W1, W2)[1]
        return np.sum(g1 * g1) + np.sum(g2 * g2)

    ad.gradcheck(grad_norm, W1, W2, atol=1e-5, rtol=1e-5)
