"""Callbacks: schedules, early stopping, best checkpoints, CSV logs, plots, printing."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
from trainkit import classify, loaders, make_model

from nnflow.optim import SGD, ExponentialLR, ReduceLROnPlateau
from nnflow.train import (
    Callback,
    CSVLogger,
    EarlyStopping,
    LRSchedule,
    ModelCheckpoint,
    PlotLosses,
    PrintMetrics,
    Trainer,
    load,
    plot_history,
)


def trainer_for(model=None, lr=0.05, **kwargs):
    model = model or make_model()
    return Trainer(model, classify, SGD(model, lr=lr), progress=False, **kwargs)


class Record(Callback):
    def __init__(self):
        self.events = []

    def on_fit_start(self, trainer):
        self.events.append("fit_start")

    def on_epoch_start(self, trainer):
        self.events.append(f"epoch_start {trainer.epoch}")

    def on_batch_end(self, trainer, logs):
        self.events.append(f"batch {logs['step']}")

    def on_epoch_end(self, trainer, logs):
        self.events.append(f"epoch_end {logs['epoch']}")

    def on_fit_end(self, trainer):
        self.events.append("fit_end")


def test_hooks_run_in_order():
    record = Record()
    trainer_for().fit(loaders(n=300)[0], 2, callbacks=[record])
    assert record.events == [
        "fit_start",
        "epoch_start 0",
        "batch 1",
        "batch 2",
        "batch 3",
        "epoch_end 1",
        "epoch_start 1",
        "batch 4",
        "batch 5",
        "batch 6",
        "epoch_end 2",
        "fit_end",
    ]


def test_schedules_step_per_epoch_or_per_batch():
    trainer = trainer_for(lr=1.0)
    trainer.fit(loaders(n=300)[0], 2, callbacks=[ExponentialLR(trainer.optimizer, 0.5)])
    assert trainer.optimizer.lr == 0.25 and trainer.history["lr"] == [1.0, 0.5]  # rate used
    trainer = trainer_for(lr=1.0)
    schedule = LRSchedule(ExponentialLR(trainer.optimizer, 0.5), interval="step")
    trainer.fit(loaders(n=300)[0], 1, callbacks=[schedule])
    assert trainer.optimizer.lr == 0.125  # 3 batches
    with pytest.raises(ValueError, match="interval must be 'epoch' or 'step'"):
        LRSchedule(schedule.schedule, interval="batch")


def test_reduce_on_plateau_reads_the_monitored_metric():
    trainer = trainer_for(lr=0.1)
    # Improving means dropping below 1% of the best: never, after the first epoch.
    plateau = ReduceLROnPlateau(trainer.optimizer, factor=0.5, patience=0, threshold=0.99)
    train, val = loaders(n=300)
    trainer.fit(train, 3, val=val, callbacks=[LRSchedule(plateau)])
    assert trainer.optimizer.lr == pytest.approx(0.1 * 0.5**2)
    assert plateau.best == trainer.history["val_loss"][0]
    trainer = trainer_for()
    bad = LRSchedule(ReduceLROnPlateau(trainer.optimizer), monitor="val_accuracy")
    with pytest.raises(KeyError, match="monitor='val_accuracy' is not among .*loss, lr, time"):
        trainer.fit(train, 1, callbacks=[bad])


def test_early_stopping_stops_and_says_why(capsys):
    model = make_model()
    trainer = Trainer(model, classify, SGD(model, lr=0.0), progress=True)  # never improves
    history = trainer.fit(loaders(n=300)[0], 10, callbacks=[EarlyStopping("loss", patience=2)])
    assert len(history) == 3
    assert "early stopping: loss has not improved" in capsys.readouterr().out


def test_model_checkpoint_keeps_the_best(tmp_path):
    trainer = trainer_for(lr=0.1)
    best = ModelCheckpoint(tmp_path / "best.h5", monitor="val_loss")
    every = ModelCheckpoint(tmp_path / "epoch{epoch}.h5", monitor=None)
    train, val = loaders(n=300)
    history = trainer.fit(train, 3, val=val, callbacks=[best, every])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.h5",
        "epoch1.h5",
        "epoch2.h5",
        "epoch3.h5",
    ]
    best_epoch = int(np.argmin(history["val_loss"])) + 1
    assert load(tmp_path / "best.h5", make_model()) == {"epochs_done": best_epoch}
    assert best.best == min(history["val_loss"])


def test_csv_logger_writes_the_history(tmp_path):
    train, val = loaders(n=300)
    trainer_for().fit(train, 2, val=val, callbacks=[CSVLogger(tmp_path / "logs" / "run.csv")])
    with open(tmp_path / "logs" / "run.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", "loss", "val_loss", "lr", "time"]


def test_plot_without_matplotlib_warns_once_and_training_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.warns(RuntimeWarning, match="needs matplotlib: pip install matplotlib"):
        history = trainer_for().fit(
            loaders(n=300)[0], 2, callbacks=[PlotLosses(tmp_path / "p.png")]
        )
    assert len(history) == 2 and not (tmp_path / "p.png").exists()
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_history(history, tmp_path / "p.png")


def test_plot_history_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    history = [
        {"epoch": 1, "loss": 1.0, "val_loss": 1.2, "lr": 0.1, "time": 0.1},
        {"epoch": 2, "loss": 0.5, "val_loss": 0.7, "lr": 0.1, "time": 0.1},
    ]
    plot_history(history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_print_metrics_prints_one_line_per_epoch(capsys):
    trainer_for().fit(loaders(n=300)[0], 2, callbacks=[PrintMetrics()])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("epoch 2  loss ")
