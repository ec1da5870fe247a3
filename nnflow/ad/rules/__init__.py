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


def rule_cases() -> list[Case]:
    """Every sample case of every rule family (what the registry test runs).

    >>> len(rule_cases()) > 100
    True
    """
    return [case for module in _modules for case in getattr(module, "CASES", ())]
