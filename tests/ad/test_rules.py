"""The registry test: every rule's sample cases, gradchecked first and second order, plus
forward mode against reverse mode. A rule registered without a case fails here."""

from __future__ import annotations

import numpy as np
import pytest

from nnflow import ad
from nnflow.ad.registry import _REGISTRY, qualname
from nnflow.ad.rules import rule_cases

CASES = rule_cases()
SECOND_ORDER = [c for c in CASES if c.second_order]


def _weights(shape, seed=7):
    """A fixed non-uniform cotangent, so rules that ignore dy's values are caught."""
    return np.random.default_rng(seed).uniform(0.5, 1.5, shape)


def _weighted(case):
    out = case.call(*case.args)
    weights = _weights(np.shape(out))

    def loss(*args):
        return np.sum(case.call(*args) * weights)

    return loss


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_first_order(case):
    ad.gradcheck(_weighted(case), *case.args, eps=case.eps, atol=case.atol, rtol=case.rtol)


@pytest.mark.parametrize("case", SECOND_ORDER, ids=[c.label for c in SECOND_ORDER])
def test_second_order(case):
    """Gradcheck the gradient itself, w.r.t. the inputs and the output cotangent ``weights``.

    Differentiating w.r.t. ``weights`` runs each rule's own rules even for linear functions,
    whose second derivative w.r.t. the inputs is zero.
    """
    weights = _weights(np.shape(case.call(*case.args)))
    directions = [_weights(np.shape(a), seed=11 + i) for i, a in enumerate(case.args)]

    def directional_gradient(*args_and_weights):
        *args, w = args_and_weights
        g = ad.grad(lambda *a: np.sum(case.call(*a) * w), *args)[1]
        return sum(np.sum(gi * d) for gi, d in zip(g, directions, strict=True))

    ad.gradcheck(
        directional_gradient,
        *case.args,
        weights,
        eps=max(case.eps, 1e-5),
        atol=max(case.atol, 1e-5) * 10,
        rtol=max(case.rtol, 1e-4) * 10,
    )


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_forward_mode_matches_reverse_mode(case):
    """<R, J t> from jvp equals <J^T R, t> from grad, for random R and t."""
    loss = _weighted(case)
    tangents = tuple(_weights(np.shape(a), seed=3 + i) - 1.0 for i, a in enumerate(case.args))
    _, forward = ad.jvp(loss, case.args, tangents)
    reverse = ad.grad(loss, *case.args)[1]
    expected = sum(np.sum(g * t) for g, t in zip(reverse, tangents, strict=True))
    np.testing.assert_allclose(forward, expected, rtol=1e-9, atol=1e-9)


def test_every_rule_has_a_sample():
    missing = set(ad.registered_rules()) - {case.fn for case in CASES}
    assert not missing, f"rules without sample inputs: {sorted(map(qualname, missing))}"


def test_a_rule_without_a_sample_is_caught():
    """The coverage check itself can fail: a fresh rule with no case shows up as missing."""

    @ad.primitive
    def lonely(x):
        return x * 2

    ad.diffrule(lonely, "x")(lambda dy, y, x: dy * 2)
    try:
        missing = set(ad.registered_rules()) - {case.fn for case in CASES}
        assert lonely in missing
    finally:
        _REGISTRY.pop(lonely)
