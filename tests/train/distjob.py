"""The training job of the distributed tests: a float64 MLP on the shipped digits.

As an ``nnflow fit`` script it defines ``model``, ``data``, ``loss``, ``optimizer``, ``metrics``
and ``callbacks``; ``DISTJOB_FAIL=kill|raise|hang|term`` makes rank 1 fail in that way after
the 2nd step of the 2nd epoch. Run as a program (under ``mpirun``) it trains through the
Python API, ``Trainer(..., distributed=True)``, and each rank writes its parameters (and rank
0 the history) to the folder given::

    mpirun -n 2 python distjob.py OUT_DIR BATCH_SIZE SAMPLES EPOCHS
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np

from nnflow import losses
from nnflow.data import DataLoader, digits
from nnflow.layers import Chain, Flatten, Linear
from nnflow.optim import AdamW
from nnflow.train import Callback, Trainer, accuracy

defaults = {"epochs": 3, "batch_size": 16, "lr": 1e-2}
metrics = {"accuracy": accuracy}
SAMPLES = int(os.environ.get("DISTJOB_SAMPLES", "193"))  # the last global batch of 32 has 1


def model():
    return Chain(
        Flatten(),
        Linear(64, 24, activation="relu", rng=0, dtype=np.float64),
        Linear(24, 10, rng=1, dtype=np.float64),
    )


def data(batch_size, seed, samples=None):
    x, y = digits("train")
    n = SAMPLES if samples is None else samples
    train = DataLoader((x[:n].astype(np.float64), y[:n]), batch_size, seed=seed)
    xv, yv = digits("test")
    val = DataLoader((xv.astype(np.float64), yv), 100, shuffle=False)
    return train, val


def loss(model, batch):
    x, y = batch
    return losses.cross_entropy(model(x), y)


def optimizer(model, lr):
    return AdamW(model, lr=lr, weight_decay=1e-2)


class Fail(Callback):
    """Rank 1 fails after the 2nd step of the 2nd epoch, as ``DISTJOB_FAIL`` says."""

    def __init__(self, mode: str):
        self.mode = mode

    def on_batch_end(self, trainer, logs):
        if trainer.dist is None or trainer.dist.rank != 1:
            return
        if trainer.epoch == 1 and logs["batch"] == 2:
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif self.mode == "raise":
                raise RuntimeError("injected failure on rank 1")
            elif self.mode == "hang":
                time.sleep(600)
            elif self.mode == "term":  # only this rank gets the signal
                os.kill(os.getpid(), signal.SIGTERM)


def callbacks(optimizer):
    mode = os.environ.get("DISTJOB_FAIL")
    return [Fail(mode)] if mode else []


def arrays(model) -> dict:
    return {".".join(map(str, path)): np.array(x) for path, x in model.state_dict().items()}


def train(batch_size: int, samples: int, epochs: int, distributed: bool):
    """Train with the Python API; returns (trainer, model, history)."""
    net = model()
    train_data, val = data(batch_size, seed=0, samples=samples)
    trainer = Trainer(
        net,
        loss,
        optimizer(net, defaults["lr"]),
        progress=False,
        metrics=metrics,
        distributed=distributed,
    )
    if trainer.dist is not None and trainer.dist.rank:  # rank 0's parameters must win
        for _, x in net.parameters():
            x += 1.0
    history = trainer.fit(train_data, epochs, val=val)
    return trainer, net, history


if __name__ == "__main__":
    out, batch_size, samples, epochs = sys.argv[1], *map(int, sys.argv[2:5])
    trainer, net, history = train(batch_size, samples, epochs, distributed=True)
    rank = trainer.dist.rank
    np.savez(os.path.join(out, f"rank{rank}.npz"), **arrays(net))
    if rank == 0:
        rows = [{k: v for k, v in row.items() if k != "time"} for row in history]
        stats = dict(trainer.dist.stats, size=trainer.dist.size)
        with open(os.path.join(out, "history.json"), "w") as f:
            json.dump({"history": rows, "stats": stats}, f)
