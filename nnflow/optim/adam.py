"""``Adam`` (with AMSGrad) and ``AdamW``: torch.optim's formulas, in place.

With ``g`` the gradient, ``m``/``v`` the moment estimates and ``t`` the step::

    g = g + weight_decay * p           (Adam: L2 penalty in the gradient)
    p = p * (1 - lr * weight_decay)    (AdamW: decoupled decay, instead)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g**2
    v_max = max(v_max, v)              (amsgrad; v_max replaces v below)
    p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
"""

from __future__ import annotations

import math
from typing import Any

from ..backend import get_array_module
from .optimizer import Optimizer, check_betas, zeros_like

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015), optionally AMSGrad (Reddi et al., 2018); see module doc.

    Args:
        model: the object whose arrays are trained.
        lr: learning rate.
        betas: decay rates ``(beta1, beta2)`` of the first and second moment estimates.
        eps: added to the denominator for stability.
        weight_decay: L2 penalty added to the gradient (``AdamW`` decouples it instead).
        amsgrad: keep the running maximum of ``v`` (AMSGrad).
        **kwargs: ``options``, ``max_grad_norm``, ``max_grad_value`` (see ``Optimizer``).

    >>> import numpy as np
    >>> params = {"w": np.array([1.0])}
    >>> Adam(params, lr=0.1).step({("w",): np.array([3.0])})
    >>> round(float(params["w"][0]), 6)  # the first step moves by lr, whatever the scale
    0.9
    """

    defaults = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}
    decoupled = False  # AdamW: weight decay applied to the parameter, not the gradient

    def __init__(
        self,
        model: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        **kwargs: Any,
    ):
        super().__init__(
            model,
            lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            **kwargs,
        )

    def check(self, hp: dict[str, Any], where: str) -> None:
        super().check(hp, where)
        check_betas(self, hp["betas"], where)
        self._require(hp["eps"] >= 0, "eps", hp["eps"], ">= 0", where)
        self._require(hp["weight_decay"] >= 0, "weight_decay", hp["weight_decay"], ">= 0", where)

    def init_state(self, param: Any, hp: dict[str, Any]) -> dict[str, Any]:
        state = {"exp_avg": zeros_like(param), "exp_avg_sq": zeros_like(param)}
        if hp["amsgrad"]:
            state["max_exp_avg_sq"] = zeros_like(param)
        return state

    def update(self, param: Any, grad: Any, state: dict[str, Any], hp: dict[str, Any]) -> None:
        xp = get_array_module(param)
        lr, (beta1, beta2), eps, weight_decay = hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"]
        step = state["step"]
        if weight_decay and self.decoupled:
            param *= 1 - lr * weight_decay
        elif weight_decay:
            grad = grad + weight_decay * param
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg *= beta1
        exp_avg += (1 - beta1) * grad
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * (grad * grad)
        if hp["amsgrad"]:
            xp.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            exp_avg_sq = state["max_exp_avg_sq"]
        denom = xp.sqrt(exp_avg_sq)  # the one temporary: reused for the whole step
        denom /= math.sqrt(1 - beta2**step)
        denom += eps
        xp.divide(exp_avg, denom, out=denom)
        denom *= lr / (1 - beta1**step)
        param -= denom


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019); PyTorch's defaults.

    >>> import numpy as np
    >>> params = {"w": np.array([1.0])}
    >>> AdamW(params, lr=0.1, weight_decay=0.5).step({("w",): np.array([0.0])})
    >>> float(params["w"][0])  # zero gradient: only the decay 1 - 0.1 * 0.5 acts
    0.95
    """

    decoupled = True

    def __init__(
        self,
        model: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        **kwargs: Any,
    ):
        super().__init__(model, lr, betas, eps, weight_decay, amsgrad, **kwargs)
