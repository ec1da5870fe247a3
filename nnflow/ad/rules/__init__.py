"""The derivative-rule tables, one module per op family; importing this registers them all."""

from __future__ import annotations

import importlib

from .cases import Case

FAMILIES = ("elementwise", "reductions", "shape", "indexing", "linalg")

_modules = []
for _family in FAMILIES:
    try:
        _modules.append(importlib.import_module(f"{__name__}.{_family}"))
    except ModuleNotFoundError as error:  # a family still being written
        if error.name != f"{__name__}.{_family}":
            raise


_EXTERNAL: list[Case] = []  # cases of rules registered outside nnflow.ad (layers, users)


def register_cases(cases) -> None:
    """Add sample cases for rules registered outside ``nnflow.ad`` (``nnflow.layers``' conv
    and linear rules, a user's ``@ad.diffrule``), so the registry test checks them too.

    >>> import numpy as np
    >>> register_cases([])  # e.g. [Case(my_fn, my_fn, (np.ones(3),), "vector")]
    """
    _EXTERNAL.extend(cases)


def rule_cases() -> list[Case]:
    """Every sample case of every rule family (what the registry test runs).

    >>> len(rule_cases()) > 100
    True
    """
    own = [case for module in _modules for case in getattr(module, "CASES", ())]
    return own + list(_EXTERNAL)
