"""``RMSProp`` (torch.optim.RMSprop's formula, plain, centered and with momentum), in place.

With ``g`` the gradient, ``s`` the square average, ``a`` the gradient average, ``b`` the buffer::

    g = g + weight_decay * p
    s = alpha * s + (1 - alpha) * g**2
    a = alpha * a + (1 - alpha) * g;  d = sqrt(s - a**2) + eps   (centered)
                                      d = sqrt(s) + eps          (otherwise)
    b = momentum * b + g / d;  p = p - lr * b                    (momentum > 0)
    p = p - lr * g / d                                           (otherwise)
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module
from .optimizer import Optimizer, zeros_like

__all__ = ["RMSProp", "RMSprop"]


class RMSProp(Optimizer):
    """RMSProp (Hinton, 2012), as PyTorch's ``RMSprop``; see the module doc.

    Args:
        model: the object whose arrays are trained.
        lr: learning rate.
        alpha: smoothing constant of the square average.
        eps: added to the denominator for stability.
        weight_decay: L2 penalty added to the gradient.
        momentum: momentum factor (0: none).
        centered: normalise by the estimated variance instead of the second moment.
        **kwargs: ``options``, ``max_grad_norm``, ``max_grad_value`` (see ``Optimizer``).

    >>> import numpy as np
    >>> params = {"w": np.array([1.0])}
    >>> RMSProp(params, lr=0.01, alpha=0.75, eps=0.0).step({("w",): np.array([2.0])})
    >>> round(float(params["w"][0]), 6)  # 1 - 0.01 * 2 / sqrt(0.25 * 4)
    0.98
    """

    defaults = {"alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0, "centered": False}

    def __init__(
        self,
        model: Any,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        **kwargs: Any,
    ):
        super().__init__(
            model,
            lr,
            alpha=alpha,
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            centered=centered,
            **kwargs,
        )

    def check(self, hp: dict[str, Any], where: str) -> None:
        super().check(hp, where)
        self._require(hp["alpha"] >= 0, "alpha", hp["alpha"], ">= 0", where)
        self._require(hp["eps"] >= 0, "eps", hp["eps"], ">= 0", where)
        self._require(hp["momentum"] >= 0, "momentum", hp["momentum"], ">= 0", where)
        self._require(hp["weight_decay"] >= 0, "weight_decay", hp["weight_decay"], ">= 0", where)

    def init_state(self, param: Any, hp: dict[str, Any]) -> dict[str, Any]:
        state = {"square_avg": zeros_like(param)}
        if hp["momentum"] > 0:
            state["momentum_buffer"] = zeros_like(param)
        if hp["centered"]:
            state["grad_avg"] = zeros_like(param)
        return state

    def update(self, param: Any, grad: Any, state: dict[str, Any], hp: dict[str, Any]) -> None:
        xp = get_array_module(param)
        alpha, weight_decay = hp["alpha"], hp["weight_decay"]
        if weight_decay:
            grad = grad + weight_decay * param
        square_avg = state["square_avg"]
        square_avg *= alpha
        square_avg += (1 - alpha) * (grad * grad)
        if hp["centered"]:
            grad_avg = state["grad_avg"]
            grad_avg *= alpha
            grad_avg += (1 - alpha) * grad
            avg = square_avg - grad_avg * grad_avg
            xp.sqrt(avg, out=avg)
        else:
            avg = xp.sqrt(square_avg)
        avg += hp["eps"]
        if hp["momentum"] > 0:
            buf = state["momentum_buffer"]
            buf *= hp["momentum"]
            buf += grad / avg
            param -= hp["lr"] * buf
        else:
            xp.divide(grad, avg, out=avg)
            avg *= hp["lr"]
            param -= avg


RMSprop = RMSProp  # PyTorch's spelling
