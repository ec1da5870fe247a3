"""``Adagrad``: torch.optim.Adagrad's formula, in place.

With ``g`` the gradient, ``s`` the sum of squares and ``t`` the step::

    g = g + weight_decay * p
    s = s + g**2                      (s starts at initial_accumulator_value)
    p = p - lr / (1 + (t - 1) * lr_decay) * g / (sqrt(s) + eps)
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module
from .optimizer import Optimizer, zeros_like

__all__ = ["Adagrad"]


class Adagrad(Optimizer):
    """Adagrad (Duchi et al., 2011), as PyTorch's; see the module doc.

    Args:
        model: the object whose arrays are trained.
        lr: learning rate.
        lr_decay: the rate decays as ``lr / (1 + (t - 1) * lr_decay)``.
        weight_decay: L2 penalty added to the gradient.
        initial_accumulator_value: the starting value of the sum of squares.
        eps: added to the denominator for stability.
        **kwargs: ``options``, ``max_grad_norm``, ``max_grad_value`` (see ``Optimizer``).

    >>> import numpy as np
    >>> params = {"w": np.array([1.0])}
    >>> Adagrad(params, lr=0.1, eps=0.0).step({("w",): np.array([4.0])})
    >>> float(params["w"][0])  # 1 - 0.1 * 4 / sqrt(16)
    0.9
    """

    defaults = {
        "lr_decay": 0.0,
        "weight_decay": 0.0,
        "initial_accumulator_value": 0.0,
        "eps": 1e-10,
    }

    def __init__(
        self,
        model: Any,
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        **kwargs: Any,
    ):
        super().__init__(
            model,
            lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
            **kwargs,
        )

    def check(self, hp: dict[str, Any], where: str) -> None:
        super().check(hp, where)
        self._require(hp["lr_decay"] >= 0, "lr_decay", hp["lr_decay"], ">= 0", where)
        self._require(hp["weight_decay"] >= 0, "weight_decay", hp["weight_decay"], ">= 0", where)
        value = hp["initial_accumulator_value"]
        self._require(value >= 0, "initial_accumulator_value", value, ">= 0", where)
        self._require(hp["eps"] >= 0, "eps", hp["eps"], ">= 0", where)

    def init_state(self, param: Any, hp: dict[str, Any]) -> dict[str, Any]:
        return {"sum": zeros_like(param) + hp["initial_accumulator_value"]}

    def update(self, param: Any, grad: Any, state: dict[str, Any], hp: dict[str, Any]) -> None:
        xp = get_array_module(param)
        if hp["weight_decay"]:
            grad = grad + hp["weight_decay"] * param
        clr = hp["lr"] / (1 + (state["step"] - 1) * hp["lr_decay"])
        state["sum"] += grad * grad
        std = xp.sqrt(state["sum"])
        std += hp["eps"]
        xp.divide(grad, std, out=std)
        std *= clr
        param -= std
