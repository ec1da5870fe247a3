"""Shared by the training tests: a small classifier on the shipped digits, with every kind of
state a checkpoint must carry.

Parameters, BatchNorm buffers (running statistics, an int64 counter), a Dropout generator, and a
shuffled DataLoader: resuming is exact only if all of them come back.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nnflow import losses
from nnflow.data import DataLoader, digits
from nnflow.layers import BatchNorm1d, Chain, Dropout, Flatten, Linear

ROOT = Path(__file__).resolve().parents[2]


def make_model(seed: int = 0) -> Chain:
    return Chain(
        Flatten(),
        Linear(64, 32, activation="relu", rng=seed),
        BatchNorm1d(32),
        Dropout(0.3, rng=seed + 1),
        Linear(32, 10, rng=seed + 2),
    )


def classify(model, batch):
    images, labels = batch
    return losses.cross_entropy(model(images), labels)


def loaders(batch_size: int = 128, seed: int = 0, n: int = 600):
    x, y = digits("train")
    train = DataLoader((x[:n], y[:n]), batch_size, shuffle=True, seed=seed)
    val = DataLoader(digits("test"), 512, shuffle=False)
    return train, val


def arrays(model) -> dict:
    return {path: np.array(x) for path, x in model.state_dict().items()}


def assert_same_arrays(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for path in a:
        assert a[path].dtype == b[path].dtype, path
        np.testing.assert_array_equal(a[path], b[path], err_msg=str(path))


def subprocess_env() -> dict:
    """The environment for child Pythons: this checkout importable, no stray progress bars."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env
