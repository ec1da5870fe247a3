"""``SGD``: stochastic gradient descent with momentum, dampening, Nesterov and weight decay.

The update is torch.optim.SGD's, step for step (``g`` the gradient, ``b`` the momentum buffer)::

    g = g + weight_decay * p
    b = g                                   at the first step
    b = momentum * b + (1 - dampening) * g  afterwards
    g = g + momentum * b  (nesterov)   or   g = b
    p = p - lr * g
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_array_module
from ..jit import flat_views
from .optimizer import Optimizer, zeros_like
from .update_kernels import SGD_UPDATE

__all__ = ["SGD"]


class SGD(Optimizer):
    """Stochastic gradient descent (PyTorch's hyper-parameters and formula, see module doc).

    Args:
        model: the object whose arrays are trained.
        lr: learning rate.
        momentum: momentum factor (0 disables the buffer).
        dampening: dampening of the momentum's gradient term.
        nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
        weight_decay: L2 penalty added to the gradient.
        **kwargs: ``options``, ``max_grad_norm``, ``max_grad_value`` (see ``Optimizer``).

    >>> import numpy as np
    >>> params = {"w": np.array([1.0])}
    >>> opt = SGD(params, lr=0.1, momentum=0.9)
    >>> for _ in range(2):
    ...     opt.step({("w",): np.array([1.0])})
    >>> round(float(params["w"][0]), 6)  # 1 - 0.1 * 1 - 0.1 * 1.9
    0.71
    """

    defaults = {"momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0}

    def __init__(
        self,
        model: Any,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(
            model,
            lr,
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            weight_decay=weight_decay,
            **kwargs,
        )

    def check(self, hp: dict[str, Any], where: str) -> None:
        super().check(hp, where)
        self._require(hp["momentum"] >= 0, "momentum", hp["momentum"], ">= 0", where)
        self._require(hp["weight_decay"] >= 0, "weight_decay", hp["weight_decay"], ">= 0", where)
        if hp["nesterov"]:
            ok = hp["momentum"] > 0 and hp["dampening"] == 0
            self._require(ok, "nesterov", True, "used with momentum > 0 and dampening 0", where)

    def init_state(self, param: Any, hp: dict[str, Any]) -> dict[str, Any]:
        return {"momentum_buffer": zeros_like(param)} if hp["momentum"] else {}

    def update(self, param: Any, grad: Any, state: dict[str, Any], hp: dict[str, Any]) -> None:
        lr, momentum, weight_decay = hp["lr"], hp["momentum"], hp["weight_decay"]
        xp = get_array_module(param)
        if weight_decay:
            grad = grad + weight_decay * param
        if momentum:
            buf = state["momentum_buffer"]
            if state["step"] == 1:
                buf[...] = grad
            else:
                buf *= momentum
                if hp["dampening"]:
                    buf += xp.multiply(grad, 1 - hp["dampening"], out=self.scratch_like(buf))
                else:
                    buf += grad
            grad = grad + momentum * buf if hp["nesterov"] else buf
        # param -= lr * grad, without allocating lr * grad (torch's param.add_(grad, alpha=-lr)):
        # one Numba pass where it can (bitwise the same), else through a reused scratch array
        fused = SGD_UPDATE.get(param, grad)
        flat = None if fused is None or not param.flags.writeable else flat_views(param, grad)
        if flat is not None and not np.may_share_memory(param, grad):
            fused(*flat, param.dtype.type(lr))
            return
        param -= xp.multiply(grad, lr, out=self.scratch_like(param))
