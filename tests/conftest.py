"""Shared fixtures: rules registered inside a test are removed again after it."""

from __future__ import annotations

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
