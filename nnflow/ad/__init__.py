"""nnflow.ad: trace unmodified NumPy code onto a tape and differentiate it.

>>> import numpy as np
>>> from nnflow import ad
>>> val, g = ad.grad(lambda x: np.sum(np.exp(x)), np.zeros(3))
>>> g[0].tolist()
[1.0, 1.0, 1.0]
"""

from . import rules  # noqa: F401  (registers every rule table)
from .check import GradcheckError, gradcheck
from .compile import CompiledGrad, CompiledTape, RetraceWarning, compile, compile_grad
from .custom import diffrule, nodiff, primitive, stop_gradient
from .device import strict_device
from .errors import ADError, NonScalarError, NoRuleError, RuleShapeError, TracerError
from .grad import (
    GradientResult,
    grad,
    gradient,
    hessian,
    hvp,
    jacobian,
    jvp,
    trace,
    update,
    vjp,
)
from .registry import registered_rules
from .rules.reductions import logsumexp
from .tape import GuardFailure, Tape
from .tracer import Tracer

__all__ = [
    "ADError",
    "CompiledGrad",
    "CompiledTape",
    "GradcheckError",
    "GradientResult",
    "GuardFailure",
    "NoRuleError",
    "NonScalarError",
    "RetraceWarning",
    "RuleShapeError",
    "Tape",
    "Tracer",
    "TracerError",
    "compile",
    "compile_grad",
    "diffrule",
    "grad",
    "gradcheck",
    "gradient",
    "hessian",
    "hvp",
    "jacobian",
    "jvp",
    "logsumexp",
    "nodiff",
    "primitive",
    "registered_rules",
    "stop_gradient",
    "strict_device",
    "trace",
    "update",
    "vjp",
]
