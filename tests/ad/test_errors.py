"""Each misuse gets a clear error that names the culprit and the fix."""

from __future__ import annotations

import numpy as np
import pytest

from nnflow import ad


def test_non_scalar_result_points_to_jacobian():
    with pytest.raises(ad.NonScalarError, match=r"float64\[2, 3\].*jacobian"):
        ad.grad(lambda x: x * 2, np.ones((2, 3)))


def test_function_without_rule_names_it_and_shows_how_to_add_one():
    with pytest.raises(ad.NoRuleError) as info:
        ad.grad(lambda x: np.sum(np.sinc(x)), np.ones(3))
    message = str(info.value)
    assert "numpy.sinc" in message and "argument 'x'" in message
    assert "@ad.diffrule(np.sinc, 'x')" in message and "ad.primitive" in message


def test_primitive_without_rule_for_one_argument():
    @ad.primitive
    def mix(a, b):
        return a * b

    ad.diffrule(mix, "a")(lambda dy, y, a, b: dy * b)
    with pytest.raises(ad.NoRuleError, match="argument 'b'"):
        ad.grad(lambda a, b: np.sum(mix(a, b)), np.ones(2), np.ones(2))
    _, g = ad.grad(lambda a, b: np.sum(mix(a, b)), np.ones(2), np.ones(2), wrt=(0,))
    np.testing.assert_array_equal(g[0], np.ones(2))


def test_integer_and_boolean_inputs_get_none_without_crashing():
    idx, mask = np.array([0, 2]), np.array([True, False, True])
    val, g = ad.grad(lambda x, i, m: np.sum(x[i]) + np.sum(x[m] * 2), np.ones(3), idx, mask)
    assert g[1] is None and g[2] is None
    np.testing.assert_array_equal(g[0], [3.0, 0.0, 3.0])
    _, g = ad.grad(lambda n: np.sum(n * 2.0), np.arange(3))
    assert g[0] is None


def test_rule_returning_the_wrong_shape_names_the_rule():
    @ad.primitive
    def badly_shaped(x):
        return x * 2

    ad.diffrule(badly_shaped, "x")(lambda dy, y, x: np.ones(7))
    with pytest.raises(ad.RuleShapeError, match=r"badly_shaped.*'x'.*\(7,\).*\(2, 3\)"):
        ad.grad(lambda x: np.sum(badly_shaped(x)), np.ones((2, 3)))


def test_diffrule_for_unknown_argument_name_is_refused():
    @ad.primitive
    def one_arg(x):
        return x

    with pytest.raises(ValueError, match="no argument 'y'"):
        ad.diffrule(one_arg, "y")
