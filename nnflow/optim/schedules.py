"""Learning-rate schedules: step, exponential, cosine, linear (warmup), sequences, plateau.

A schedule holds an optimizer and sets its ``lr`` each time ``step()`` is called (once per
epoch, or once per batch: ``nnflow.train.callbacks.LRSchedule`` chooses). The closed-form ones
compute the rate from the step count ``t`` and the base rate, so their whole state is ``t``;
names, arguments and values follow torch.optim.lr_scheduler. ``state_dict`` /
``load_state_dict`` round-trip through JSON (checkpoints store them as attributes).

>>> import numpy as np
>>> from nnflow.optim import SGD
>>> opt = SGD({"w": np.zeros(1)}, lr=1.0)
>>> schedule = StepLR(opt, step_size=2, gamma=0.5)
>>> [(schedule.step(), opt.lr)[1] for _ in range(4)]
[1.0, 0.5, 0.5, 0.25]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "Schedule",
    "StepLR",
    "ExponentialLR",
    "CosineAnnealingLR",
    "LinearLR",
    "SequentialLR",
    "ReduceLROnPlateau",
]


class Schedule:
    """Base of the closed-form schedules: ``lr = lr_at(t)``, with ``t`` the steps taken.

    The base rate is the optimizer's initial one (``optimizer.initial_lr``, PyTorch's
    ``initial_lr``), so schedules built one after another on one optimizer agree. Building one
    sets the optimizer's rate to ``lr_at(0)`` (as PyTorch does).
    """

    def __init__(self, optimizer: Any):
        self.optimizer = optimizer
        self.base_lr = float(getattr(optimizer, "initial_lr", optimizer.lr))
        self.last_step = 0
        self.optimizer.lr = self.lr_at(0)

    def lr_at(self, t: int) -> float:
        """The learning rate after ``t`` steps."""
        raise NotImplementedError

    def step(self, metric: float | None = None) -> None:
        """Advance one step (an epoch or a batch) and set the optimizer's rate."""
        self.last_step += 1
        self.optimizer.lr = self.lr_at(self.last_step)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: the step count and base rate."""
        return {"last_step": self.last_step, "base_lr": self.base_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``'s result and set the optimizer's rate accordingly."""
        self.last_step, self.base_lr = int(state["last_step"]), float(state["base_lr"])
        self.optimizer.lr = self.lr_at(self.last_step)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_step={self.last_step}, lr={self.optimizer.lr:g})"


class StepLR(Schedule):
    """``lr = base_lr * gamma ** (t // step_size)``.

    >>> import numpy as np
    >>> from nnflow.optim import SGD
    >>> StepLR(SGD({"w": np.zeros(1)}, lr=1.0), step_size=3, gamma=0.1).lr_at(6)
    0.010000000000000002
    """

    def __init__(self, optimizer: Any, step_size: int, gamma: float = 0.1):
        if step_size < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer)

    def lr_at(self, t: int) -> float:
        return self.base_lr * self.gamma ** (t // self.step_size)


class ExponentialLR(Schedule):
    """``lr = base_lr * gamma ** t``.

    >>> import numpy as np
    >>> from nnflow.optim import SGD
    >>> ExponentialLR(SGD({"w": np.zeros(1)}, lr=1.0), gamma=0.5).lr_at(3)
    0.125
    """

    def __init__(self, optimizer: Any, gamma: float):
        self.gamma = float(gamma)
        super().__init__(optimizer)

    def lr_at(self, t: int) -> float:
        return self.base_lr * self.gamma**t


class CosineAnnealingLR(Schedule):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2`` (SGDR, no restarts).

    >>> import numpy as np
    >>> from nnflow.optim import SGD
    >>> CosineAnnealingLR(SGD({"w": np.zeros(1)}, lr=1.0), T_max=4).lr_at(2)
    0.5
    """

    def __init__(self, optimizer: Any, T_max: int, eta_min: float = 0.0):
        if T_max < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be >= 1, got {T_max}")
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(optimizer)

    def lr_at(self, t: int) -> float:
        cosine = (1 + math.cos(math.pi * t / self.T_max)) / 2
        return self.eta_min + (self.base_lr - self.eta_min) * cosine


class LinearLR(Schedule):
    """Linear warmup (or decay): the factor goes from ``start_factor`` to ``end_factor``
    over ``total_iters`` steps, then stays.

    ``lr = base_lr * (start + (end - start) * min(t, total_iters) / total_iters)``.

    >>> import numpy as np
    >>> from nnflow.optim import SGD
    >>> warmup = LinearLR(SGD({"w": np.zeros(1)}, lr=1.0), start_factor=0.25, total_iters=3)
    >>> [warmup.lr_at(t) for t in range(5)]
    [0.25, 0.5, 0.75, 1.0, 1.0]
    """

    def __init__(
        self,
        optimizer: Any,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
    ):
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ValueError(
                "LinearLR: start_factor must be in (0, 1] and end_factor in [0, 1], got "
                f"{start_factor} and {end_factor}"
            )
        if total_iters < 1:
            raise ValueError(f"LinearLR: total_iters must be >= 1, got {total_iters}")
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)
        self.total_iters = int(total_iters)
        super().__init__(optimizer)

    def lr_at(self, t: int) -> float:
        progress = min(t, self.total_iters) / self.total_iters
        return self.base_lr * (self.start_factor + (self.end_factor - self.start_factor) * progress)


class SequentialLR(Schedule):
    """Run ``schedules`` one after the other, switching at each of ``milestones`` (steps).

    Each schedule counts its own steps from 0 when it takes over, e.g. 5 steps of warmup then
    cosine decay: ``SequentialLR(opt, [LinearLR(opt, 0.1, total_iters=5),
    CosineAnnealingLR(opt, T_max=45)], milestones=[5])``.

    >>> import numpy as np
    >>> from nnflow.optim import SGD
    >>> opt = SGD({"w": np.zeros(1)}, lr=1.0)
    >>> both = SequentialLR(opt, [LinearLR(opt, 0.5, total_iters=2), ExponentialLR(opt, 0.5)],
    ...                     milestones=[2])
    >>> [both.lr_at(t) for t in range(5)]
    [0.5, 0.75, 1.0, 0.5, 0.25]
    """

    def __init__(self, optimizer: Any, schedules: Sequence[Schedule], milestones: Sequence[int]):
        if len(milestones) != len(schedules) - 1:
            raise ValueError(
                f"SequentialLR: {len(schedules)} schedules need {len(schedules) - 1} milestones, "
                f"got {len(milestones)}"
            )
        if list(milestones) != sorted(milestones):
            raise ValueError(f"SequentialLR: milestones must increase, got {list(milestones)}")
        self.schedules, self.milestones = list(schedules), [int(m) for m in milestones]
        super().__init__(optimizer)

    def lr_at(self, t: int) -> float:
        start = 0
        for schedule, milestone in zip(self.schedules, self.milestones, strict=False):
            if t < milestone:
                return schedule.lr_at(t - start)
            start = milestone
        return self.schedules[-1].lr_at(t - start)


class ReduceLROnPlateau:
    """Multiply the rate by ``factor`` when ``metric`` has not improved for ``patience`` steps.

    PyTorch's semantics: improvement means ``metric < best * (1 - threshold)`` (``mode="min"``,
    ``threshold_mode="rel"``; ``"abs"``: ``metric < best - threshold``; ``mode="max"`` mirrors
    them); after a reduction, ``cooldown`` steps pass before bad steps count again; the rate
    never goes below ``min_lr``. ``step(metric)`` needs the monitored value.

    >>> import numpy as np
    >>> from nnflow.optim import SGD
    >>> opt = SGD({"w": np.zeros(1)}, lr=1.0)
    >>> plateau = ReduceLROnPlateau(opt, factor=0.5, patience=1)
    >>> for loss in [1.0, 1.0, 1.0, 0.5]:
    ...     plateau.step(loss)
    >>> opt.lr
    0.5
    """

    def __init__(
        self,
        optimizer: Any,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
        eps: float = 1e-8,
    ):
        if mode not in ("min", "max") or threshold_mode not in ("rel", "abs"):
            raise ValueError(
                f"ReduceLROnPlateau: mode must be 'min' or 'max' and threshold_mode 'rel' or "
                f"'abs', got {mode!r} and {threshold_mode!r}"
            )
        if not 0 <= factor < 1:
            raise ValueError(f"ReduceLROnPlateau: factor must be in [0, 1), got {factor}")
        self.optimizer, self.mode, self.factor, self.patience = optimizer, mode, factor, patience
        self.threshold, self.threshold_mode, self.cooldown = threshold, threshold_mode, cooldown
        self.min_lr, self.eps = min_lr, eps
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = self.cooldown_counter = self.last_step = 0

    def is_better(self, metric: float) -> bool:
        """Whether ``metric`` improves on the best value seen (by the threshold)."""
        sign = 1.0 if self.mode == "min" else -1.0
        if self.threshold_mode == "rel":
            return sign * metric < sign * self.best * (1 - sign * self.threshold)
        return sign * metric < sign * self.best - self.threshold

    def step(self, metric: float | None = None) -> None:
        """Record ``metric`` (required) and reduce the rate after a plateau."""
        if metric is None:
            raise ValueError("ReduceLROnPlateau.step needs the monitored metric's value")
        metric = float(metric)
        self.last_step += 1
        if self.is_better(metric):
            self.best, self.num_bad_epochs = metric, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            old = self.optimizer.lr
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                self.optimizer.lr = new
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (best value, counters)."""
        keys = ("best", "num_bad_epochs", "cooldown_counter", "last_step")
        return {key: getattr(self, key) for key in keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``'s result (the optimizer keeps its own ``lr``)."""
        self.best = float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])
        self.last_step = int(state["last_step"])
