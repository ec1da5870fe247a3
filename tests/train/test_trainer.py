"""Trainer: exact resumes (epoch ends and mid-epoch signals), NaN stops, compile fallback."""

from __future__ import annotations

import math
import os
import signal

import numpy as np
import pytest
from trainkit import arrays, assert_same_arrays, classify, loaders, make_model

from nnflow import ad
from nnflow.backend import to_device
from nnflow.optim import SGD, Adam, StepLR
from nnflow.train import (
    Callback,
    CheckpointError,
    EarlyStopping,
    NonFiniteLossError,
    Trainer,
    TrainingInterrupted,
    accuracy,
    load,
    save,
)
from nnflow.train.checkpoint import read_checkpoint


def run(epochs, checkpoint=None, resume=False, callbacks=(), **kwargs):
    model = make_model()
    opt = Adam(model, lr=1e-2)
    trainer = Trainer(
        model,
        classify,
        opt,
        checkpoint=checkpoint,
        progress=False,
        metrics={"accuracy": accuracy},
        **kwargs,
    )
    train, val = loaders()
    schedule = StepLR(opt, step_size=1, gamma=0.7)
    history = trainer.fit(
        train,
        epochs,
        val=val,
        resume=resume,
        callbacks=[schedule, EarlyStopping(patience=10), *callbacks],
    )
    return model, opt, history


def test_two_epochs_then_two_resumed_equal_four_straight(tmp_path):
    straight, straight_opt, straight_history = run(4)
    run(2, checkpoint=tmp_path / "run.h5")
    resumed, resumed_opt, history = run(4, checkpoint=tmp_path / "run.h5", resume=True)
    assert_same_arrays(arrays(straight), arrays(resumed))  # BatchNorm statistics included
    assert resumed_opt.lr == straight_opt.lr == pytest.approx(1e-2 * 0.7**4)  # schedule state
    for key, state in straight_opt.state.items():
        np.testing.assert_array_equal(state["exp_avg_sq"], resumed_opt.state[key]["exp_avg_sq"])
    assert straight.layers[3].rng.random() == resumed.layers[3].rng.random()  # dropout stream
    drop_time = [{k: v for k, v in row.items() if k != "time"} for row in history]
    assert drop_time == [{k: v for k, v in row.items() if k != "time"} for row in straight_history]
    assert history["epoch"] == [1, 2, 3, 4] and history["loss"][3] < history["loss"][0]


class SignalAt(Callback):
    """Sends ``signum`` to this process after the ``step``-th optimizer step."""

    def __init__(self, step, signum):
        self.step, self.signum = step, signum

    def on_batch_end(self, trainer, logs):
        if logs["step"] == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_epoch_saves_and_resumes_exactly(tmp_path, signum):
    straight, _, _ = run(2)
    path = tmp_path / "run.h5"
    with pytest.raises(TrainingInterrupted, match=f"stopped by {signal.Signals(signum).name}"):
        run(2, checkpoint=path, callbacks=[SignalAt(7, signum)])  # epoch 2, batch 2 of 5
    state = read_checkpoint(path, make_model(), Adam(make_model(), lr=1e-2))["trainer"]
    assert (state["epoch"], state["step"], state["batch"]) == (1, 7, 2)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    resumed, _, history = run(2, checkpoint=path, resume=True)
    assert_same_arrays(arrays(straight), arrays(resumed))
    assert history["epoch"] == [1, 2]


class NaNAfter:
    """A loss that turns NaN from the ``step``-th call on (every call is a training step)."""

    def __init__(self, step):
        self.calls, self.step = 0, step

    def __call__(self, model, batch):
        self.calls += 1
        value = classify(model, batch)
        return value * np.nan if self.calls >= self.step else value


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    model = make_model()
    path = tmp_path / "run.h5"
    trainer = Trainer(
        model, NaNAfter(8), SGD(model, lr=0.1), checkpoint=path, progress=False, compile=False
    )
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(loaders()[0], 3)
    message = str(info.value)
    assert "loss is nan at step 8 (epoch 2, batch 3)" in message
    assert f"last good checkpoint, {path} (epoch 1, step 5), is kept" in message
    assert all(np.isfinite(x).all() for x in arrays(model).values())  # no NaN update applied
    saved = read_checkpoint(path, make_model(), SGD(make_model(), lr=0.1))["trainer"]
    assert saved["epoch"] == 1 and saved["step"] == 5


def test_nan_without_checkpoint_says_so():
    model = make_model()
    trainer = Trainer(model, NaNAfter(1), SGD(model, lr=0.1), progress=False)
    with pytest.raises(NonFiniteLossError, match="step 1 .*no checkpoint= was given"):
        trainer.fit(loaders()[0], 1)


def test_compile_failure_falls_back_to_ad_grad(monkeypatch):
    def broken_compile_grad(f, wrt=None):
        def cg(*args, **kwargs):
            raise NotImplementedError("cannot compile this")

        return cg

    monkeypatch.setattr(ad, "compile_grad", broken_compile_grad)
    model = make_model()
    trainer = Trainer(model, classify, Adam(model, lr=1e-2), progress=False)
    with pytest.warns(RuntimeWarning, match="compile_grad failed .*NotImplementedError"):
        history = trainer.fit(loaders()[0], 2)
    assert trainer._grad is None and history["loss"][1] < history["loss"][0]


def test_compiled_and_eager_training_agree():
    results = []
    for compile_ in (True, False):
        model = make_model()
        Trainer(model, classify, Adam(model, lr=1e-2), progress=False, compile=compile_).fit(
            loaders()[0], 1
        )
        results.append(arrays(model))
    for path in results[0]:
        np.testing.assert_allclose(results[0][path], results[1][path], rtol=1e-4, atol=1e-5)


def test_resume_errors(tmp_path):
    model = make_model()
    trainer = Trainer(model, classify, SGD(model), progress=False)
    with pytest.raises(ValueError, match=r"needs Trainer\(checkpoint=PATH\)"):
        trainer.fit(loaders()[0], 1, resume=True)
    trainer = Trainer(model, classify, SGD(model), checkpoint=tmp_path / "x.h5", progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*x.h5 to resume from"):
        trainer.fit(loaders()[0], 1, resume=True)
    assert trainer.fit(loaders()[0], 1, resume="auto")["epoch"] == [1]  # auto: starts fresh
    save(tmp_path / "plain.h5", model, trainer.optimizer)
    trainer.checkpoint = str(tmp_path / "plain.h5")
    with pytest.raises(CheckpointError, match="no trainer state"):
        trainer.fit(loaders()[0], 2, resume=True)


def test_fit_counts_epochs_in_total_and_saves_every_epoch(tmp_path, capsys):
    model = make_model()
    path = tmp_path / "run.h5"
    trainer = Trainer(model, classify, Adam(model, lr=1e-2), checkpoint=path)
    trainer.fit(loaders()[0], 1)
    assert load(path, make_model()) == {"epochs_done": 1}
    history = trainer.fit(loaders()[0], 1, resume=True)
    out = capsys.readouterr().out
    assert "epoch 1  loss" in out and "nothing to do: 1 of 1 epochs already done" in out
    assert len(history) == 1


def test_evaluate_weights_by_batch_size_and_restores_the_mode():
    model = make_model()
    trainer = Trainer(model, classify, SGD(model), progress=False, metrics={"acc": accuracy})
    _, val = loaders()
    result = trainer.evaluate(val, prefix="val_")
    assert set(result) == {"val_loss", "val_acc"} and 0.0 <= result["val_acc"] <= 1.0
    assert model.training and math.isfinite(result["val_loss"])


def test_checkpoints_written_on_every_device_load_on_the_cpu(tmp_path, device):
    model = make_model()
    trainer = Trainer(
        model,
        classify,
        Adam(model, lr=1e-2),
        checkpoint=tmp_path / "run.h5",
        device=device,
        progress=False,
    )
    history = trainer.fit(loaders()[0], 2)
    assert history["loss"][1] < history["loss"][0]
    on_cpu = make_model()
    read_checkpoint(tmp_path / "run.h5", on_cpu, Adam(on_cpu, lr=1e-2))
    for path, x in model.state_dict().items():
        np.testing.assert_array_equal(to_device(x, "cpu"), on_cpu.state_dict()[path])
