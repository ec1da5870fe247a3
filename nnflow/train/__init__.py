"""nnflow.train: the ``Trainer`` and its callbacks, HDF5 checkpoints, the ``nnflow`` command.

>>> import numpy as np
>>> from nnflow.data import DataLoader
>>> from nnflow.optim import SGD
>>> params = {"w": np.zeros(1)}
>>> trainer = Trainer(params, lambda p, b: np.mean((p["w"] - b) ** 2), SGD(params, lr=0.5),
...                   progress=False)
>>> history = trainer.fit(DataLoader(np.full(4, 2.0), batch_size=2), epochs=3)
>>> history["epoch"], round(float(params["w"][0]), 3)
([1, 2, 3], 2.0)
"""

from .callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    LRSchedule,
    ModelCheckpoint,
    PlotLosses,
    PrintMetrics,
    plot_history,
)
from .checkpoint import CheckpointError, load, save
from .history import History
from .metrics import accuracy
from .trainer import NonFiniteLossError, Trainer, TrainingInterrupted
from .validate import describe

__all__ = [
    "CSVLogger",
    "Callback",
    "CheckpointError",
    "EarlyStopping",
    "History",
    "LRSchedule",
    "ModelCheckpoint",
    "NonFiniteLossError",
    "PlotLosses",
    "PrintMetrics",
    "Trainer",
    "TrainingInterrupted",
    "accuracy",
    "describe",
    "load",
    "plot_history",
    "save",
]
