"""Callbacks: everything around ``Trainer.fit``'s short loop (Chainer's extensions, Keras's
callbacks).

A callback overrides any of the hooks below; ``trainer.stop_training = True`` ends the run after
the current epoch. A callback with ``state_dict`` / ``load_state_dict`` (JSON-able) has its state
saved in the trainer's checkpoints and restored on resume, matched by position and class.

>>> import numpy as np
>>> class CountBatches(Callback):
...     def __init__(self):
...         self.batches = 0
...     def on_batch_end(self, trainer, logs):
...         self.batches += 1
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from typing import Any

__all__ = [
    "Callback",
    "LRSchedule",
    "EarlyStopping",
    "ModelCheckpoint",
    "CSVLogger",
    "PlotLosses",
    "PrintMetrics",
    "format_epoch",
    "plot_history",
]


class Callback:
    """Base class: every hook does nothing."""

    def on_fit_start(self, trainer: Any) -> None:
        """Before the first epoch (also when resuming)."""

    def on_epoch_start(self, trainer: Any) -> None:
        """Before each epoch's first batch (``trainer.epoch`` epochs are done)."""

    def on_batch_end(self, trainer: Any, logs: dict[str, Any]) -> None:
        """After each optimizer step; ``logs`` has ``loss``, ``step``, ``batch``, ``size``."""

    def on_epoch_end(self, trainer: Any, logs: dict[str, Any]) -> None:
        """After each epoch and its validation; ``logs`` is the epoch's history row."""

    def on_fit_end(self, trainer: Any) -> None:
        """After the last epoch, or when training stops for any reason."""


def _monitored(logs: dict[str, Any], monitor: str, owner: str) -> float:
    if monitor not in logs:
        raise KeyError(
            f"{owner}: monitor={monitor!r} is not among this epoch's metrics "
            f"({', '.join(sorted(logs))}); pass val= to fit for val_* metrics"
        )
    return float(logs[monitor])


class LRSchedule(Callback):
    """Step a learning-rate schedule every epoch (``interval="epoch"``) or batch (``"step"``).

    ``ReduceLROnPlateau`` gets the ``monitor`` metric (``val_loss`` by default, ``loss`` when
    there is no validation set). ``Trainer.fit`` wraps a bare schedule in this callback.

    >>> import numpy as np
    >>> from nnflow.optim import SGD, StepLR
    >>> callback = LRSchedule(StepLR(SGD({"w": np.zeros(1)}, lr=1.0), step_size=1, gamma=0.5))
    """

    def __init__(self, schedule: Any, interval: str = "epoch", monitor: str | None = None):
        if interval not in ("epoch", "step"):
            raise ValueError(f"LRSchedule: interval must be 'epoch' or 'step', got {interval!r}")
        self.schedule, self.interval, self.monitor = schedule, interval, monitor

    def _step(self, logs: dict[str, Any]) -> None:
        from ..optim import ReduceLROnPlateau

        if isinstance(self.schedule, ReduceLROnPlateau):
            monitor = self.monitor or ("val_loss" if "val_loss" in logs else "loss")
            self.schedule.step(_monitored(logs, monitor, "LRSchedule"))
        else:
            self.schedule.step()

    def on_batch_end(self, trainer: Any, logs: dict[str, Any]) -> None:
        if self.interval == "step":
            self._step(logs)

    def on_epoch_end(self, trainer: Any, logs: dict[str, Any]) -> None:
        if self.interval == "epoch":
            self._step(logs)

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state)


class _Best:
    """Tracks the best value of a monitored metric (shared by early stopping and checkpoints)."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"{type(self).__name__}: mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.mode, self.min_delta = monitor, mode, min_delta
        self.best = math.inf if mode == "min" else -math.inf

    def improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(Callback, _Best):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    >>> stop = EarlyStopping(monitor="val_loss", patience=2)
    >>> stop.best
    inf
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str = "min",
    ):
        _Best.__init__(self, monitor, mode, min_delta)
        self.patience, self.wait = int(patience), 0

    def on_epoch_end(self, trainer: Any, logs: dict[str, Any]) -> None:
        value = _monitored(logs, self.monitor, "EarlyStopping")
        if self.improved(value):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            trainer.stop_training = True
            trainer.log(
                f"early stopping: {self.monitor} has not improved on {self.best:.4g} for "
                f"{self.wait} epochs"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = float(state["best"]), int(state["wait"])


class ModelCheckpoint(Callback, _Best):
    """Save a checkpoint at ``path`` when ``monitor`` improves (the best model), or after every
    epoch with ``monitor=None``; ``{epoch}`` in ``path`` is replaced by the epoch number.

    (``Trainer(checkpoint=PATH)`` already keeps the last epoch's checkpoint for resuming.)

    >>> best = ModelCheckpoint("runs/best.h5", monitor="val_accuracy", mode="max")
    """

    def __init__(
        self, path: str | os.PathLike, monitor: str | None = "val_loss", mode: str = "min"
    ):
        _Best.__init__(self, monitor or "", mode)
        self.path = os.fspath(path)

    def on_epoch_end(self, trainer: Any, logs: dict[str, Any]) -> None:
        if self.monitor:
            value = _monitored(logs, self.monitor, "ModelCheckpoint")
            if not self.improved(value):
                return
            self.best = value
        trainer.save(self.path.format(epoch=trainer.epoch))

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])


class CSVLogger(Callback):
    """Write the history to a CSV file after every epoch (rewritten whole, so a resumed run's
    file matches its history exactly).

    >>> logger = CSVLogger("runs/log.csv")
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)

    def on_epoch_end(self, trainer: Any, logs: dict[str, Any]) -> None:
        rows = list(trainer.history)
        columns = list(dict.fromkeys(key for row in rows for key in row))
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


def plot_history(history: Any, path: str | os.PathLike) -> None:
    """Write a PNG of the loss (and other metric) curves per epoch; needs matplotlib.

    Args:
        history: ``Trainer.fit``'s result (a list of per-epoch dicts).
        path: the PNG file to write.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plot_history needs matplotlib: pip install matplotlib") from None
    rows = list(history)
    epochs = [row["epoch"] for row in rows]
    names = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in ("epoch", "time")]
    groups = {}
    for name in names:
        groups.setdefault(name.removeprefix("val_"), []).append(name)
    fig = Figure(figsize=(5 * len(groups), 4), layout="tight")
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (metric, series) in zip(axes, groups.items(), strict=True):
        for name in series:
            ax.plot(epochs, [row.get(name, math.nan) for row in rows], marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.savefig(os.fspath(path))


class PlotLosses(Callback):
    """Redraw the loss curves into a PNG after every epoch (``plot_history``).

    Without matplotlib it warns once and does nothing, so training is never stopped for a plot.

    >>> plot = PlotLosses("runs/losses.png")
    """

    def __init__(self, path: str | os.PathLike):
        self.path, self.disabled = os.fspath(path), False

    def on_epoch_end(self, trainer: Any, logs: dict[str, Any]) -> None:
        if self.disabled:
            return
        try:
            plot_history(trainer.history, self.path)
        except ImportError as error:
            self.disabled = True
            warnings.warn(f"PlotLosses: {error}; no plot written", RuntimeWarning, stacklevel=2)


def format_epoch(logs: dict[str, Any]) -> str:
    """One epoch's metrics on one line.

    >>> format_epoch({"epoch": 3, "loss": 0.12345, "val_loss": 0.2, "time": 1.234})
    'epoch 3  loss 0.1235  val_loss 0.2  (1.23 s)'
    """
    parts = [f"epoch {logs['epoch']}"]
    for key, value in logs.items():
        if key not in ("epoch", "time"):
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts) + f"  ({logs.get('time', 0):.2f} s)"


class PrintMetrics(Callback):
    """Print one line per epoch (what ``Trainer(progress=True)`` prints), e.g. for logs."""

    def on_epoch_end(self, trainer: Any, logs: dict[str, Any]) -> None:
        print(format_epoch(logs), flush=True)
