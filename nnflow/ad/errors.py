"""The errors nnflow.ad raises, each saying what went wrong, where, and how to fix it."""

from __future__ import annotations

__all__ = ["ADError", "NoRuleError", "TracerError", "RuleShapeError", "NonScalarError"]


class ADError(Exception):
    """Base class of nnflow.ad's errors."""


class TracerError(ADError):
    """A traced value was used in a way that cannot be recorded."""


class NonScalarError(ADError, ValueError):
    """``grad`` was given a function whose result is not a scalar."""


class NoRuleError(ADError, NotImplementedError):
    """A differentiable value reached a function with no derivative rule.

    >>> print(NoRuleError(abs, "x"))  # doctest: +ELLIPSIS
    nnflow.ad: no derivative rule for builtins.abs (argument 'x')...
    """

    def __init__(self, fn, argname: str):
        from .registry import qualname

        name = qualname(fn)
        short = getattr(fn, "__name__", "fn")
        super().__init__(
            f"nnflow.ad: no derivative rule for {name} (argument {argname!r}).\n"
            f"Register one:  @ad.diffrule({name.replace('numpy.', 'np.')}, {argname!r})\n"
            f"               def {short}_d{argname}(dy, y, *args, **kwargs): ...\n"
            f"or, for your own function, decorate it with @ad.primitive first; use "
            f"ad.nodiff({short}, {argname!r}) if no gradient should flow there."
        )
        self.fn, self.argname = fn, argname


class RuleShapeError(ADError, ValueError):
    """A derivative rule returned a cotangent that does not fit its argument."""
