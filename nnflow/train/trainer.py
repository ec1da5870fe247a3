"""``Trainer``: a short training loop; checkpoints, schedules and logs are callbacks.

Each step computes ``loss(model, batch)`` and its gradient with ``ad.compile_grad`` (traced
once per batch shape, then replayed compiled; ``ad.grad`` when compiling is off, unavailable
or fails on this loss, with a warning), checks that the loss is finite, and steps the
optimizer. With ``checkpoint=PATH`` the trainer saves there after every epoch and when it is
stopped by Ctrl-C or SIGTERM (at the end of the batch in progress, so the file is consistent),
and ``fit(..., resume=True)`` continues from it exactly: the model, optimizer, generators held
by the model (dropout), data position, callbacks and history all come back, so 2 epochs then 2
more resumed give the same bits as 4 straight. A NaN or infinite loss stops training with
``NonFiniteLossError`` naming the step; the parameters are not updated with it and the last
good checkpoint is kept.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .. import ad
from ..backend import DeviceError, check_device, to_device
from .callbacks import Callback, LRSchedule, PrintMetrics
from .checkpoint import CheckpointError, generators, read_checkpoint, write_checkpoint
from .history import History, batch_size

__all__ = ["Trainer", "History", "NonFiniteLossError", "TrainingInterrupted"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the last checkpoint."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C (SIGINT) or SIGTERM after saving; ``signal`` tells which."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signal = signum


class _StopError(Exception):
    """Internal: a signal arrived; unwinds to ``fit``, which saves and raises."""


class Trainer:
    """Trains ``model`` on ``loss(model, batch)`` with ``optimizer``.

    Args:
        model: an ``nnflow.Model`` (or any object ``ad.grad`` differentiates).
        loss: ``loss(model, batch) -> scalar``.
        optimizer: an ``nnflow.optim`` optimizer built on ``model``.
        checkpoint: an HDF5 path saved after every epoch and on Ctrl-C/SIGTERM.
        device: ``"cpu"`` or ``"gpu"``; the model, optimizer state and batches are moved there.
        progress: tqdm bars (when stderr is a terminal) and one summary line per epoch.
        metrics: ``{name: fn(model, batch) -> float}``, e.g. ``{"accuracy": accuracy}``,
            averaged over samples on the training batches (in eval mode) and the validation set.
        compile: use ``ad.compile_grad`` (``False``: plain ``ad.grad`` every step).
        distributed: data-parallel training over the MPI ranks this process belongs to
            (``True``, or an ``nnflow.train.distributed.DataParallel`` with options); see
            ``nnflow/train/distributed.py``. Needs mpi4py (``pip install 'nnflow[dist]'``).
        strict_device: a debug mode that raises ``nnflow.backend.DeviceError`` on an implicit
            host/device copy in a training step: every operation the loss records (forward,
            and the backward pass when compiled) must read arrays on ``device``, no GPU value
            may become a Python number inside the loss (``ad.strict_device``), and the
            gradients, parameters and optimizer state must be on ``device`` before each update.

    >>> import numpy as np
    >>> from nnflow.data import DataLoader
    >>> from nnflow.optim import SGD
    >>> params = {"w": np.zeros(1)}
    >>> data = DataLoader((np.ones((8, 1)), np.full(8, 3.0)), batch_size=4)
    >>> def loss(p, batch):
    ...     x, y = batch
    ...     return np.mean((x @ p["w"] - y) ** 2)
    >>> history = Trainer(params, loss, SGD(params, lr=0.1), progress=False).fit(data, 20)
    >>> round(float(params["w"][0]), 3), history[-1]["epoch"]
    (3.0, 20)
    """

    def __init__(
        self,
        model: Any,
        loss: Callable[[Any, Any], Any],
        optimizer: Any,
        checkpoint: str | os.PathLike | None = None,
        device: str = "cpu",
        progress: bool = True,
        metrics: Mapping[str, Callable[[Any, Any], Any]] | None = None,
        compile: bool = True,
        distributed: Any = False,
        strict_device: bool = False,
    ):
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.strict_device = bool(strict_device)
        # the function differentiated: the loss, checked op by op in strict mode
        self._objective = _strict_loss(loss, device) if strict_device else loss
        self.dist: Any = None  # a DataParallel when distributed (rank 0 alone saves and prints)
        if distributed:
            from .distributed import DataParallel

            self.dist = distributed if isinstance(distributed, DataParallel) else DataParallel()
            self.dist.setup(device)  # before the model moves: picks this rank's GPU
            progress = progress and self.dist.rank == 0
        self.checkpoint = os.fspath(checkpoint) if checkpoint is not None else None
        self.device, self.progress, self.metrics = device, progress, dict(metrics or {})
        self.epoch = self.step = 0
        self.history = History()
        self.stop_training = False
        self.callbacks: list[Callback] = []
        compile_grad = getattr(ad, "compile_grad", None) if compile else None
        self._grad = compile_grad(self._objective, wrt=(0,)) if compile_grad else None
        self._generators = list(generators(model).values())
        self._batch = 0  # batches done in the current epoch
        self._sums: dict[str, float] = {}  # running sums of the current epoch (for resuming)
        self._signal: int | None = None
        self._train: Any = None
        self._saved: tuple[int, int] | None = None  # (epoch, step) of the trainer's checkpoint
        if hasattr(model, "to"):
            model.to(device)
        if hasattr(optimizer, "to"):
            optimizer.to(device)

    # -- the loop -----------------------------------------------------------------------------
    def fit(
        self,
        train: Iterable[Any],
        epochs: int,
        val: Iterable[Any] | None = None,
        callbacks: Iterable[Any] = (),
        resume: bool | str = False,
    ) -> History:
        """Train until ``epochs`` epochs are done in total; returns the per-epoch history.

        Args:
            train: a ``DataLoader`` (or any re-iterable of batches).
            epochs: the total number of epochs (a resumed run counts the ones already done).
            val: validation batches, evaluated after every epoch (``val_*`` metrics).
            callbacks: ``Callback`` objects; a bare learning-rate schedule is stepped per epoch.
            resume: continue from the checkpoint (``"auto"``: only if the file exists).
        """
        if self.dist is not None:  # an error only this rank sees stops every rank
            with self.dist.guard(self):
                return self._fit(train, epochs, val, callbacks, resume)
        return self._fit(train, epochs, val, callbacks, resume)

    def _fit(self, train, epochs, val, callbacks, resume) -> History:
        """``fit``'s body (``fit`` wraps it in the distributed error guard)."""
        self.callbacks = [_as_callback(c) for c in callbacks]
        if self.dist is not None:  # each rank gets its piece of every batch
            train, val = self.dist.prepare(self, train, val)
        self._train, self.stop_training = train, False
        if self.progress and not any(isinstance(c, PrintMetrics) for c in self.callbacks):
            self.callbacks.append(PrintMetrics())
        if resume:
            self._resume(train, resume)
        else:
            self.epoch = self.step = self._batch = 0
            self._sums, self.history = {}, History()
        if self.dist is not None:  # rank 0's parameters and generators to every rank
            self.dist.start(self)
        if self.epoch >= epochs:
            self.log(f"nothing to do: {self.epoch} of {epochs} epochs already done")
        self._call("on_fit_start")
        try:
            with self._signals():
                while self.epoch < epochs and not self.stop_training:
                    self._epoch(train, val, epochs)
        except _StopError:
            where = self._save_checkpoint()
            name = signal.Signals(self._signal).name
            raise TrainingInterrupted(
                self._signal,
                f"training stopped by {name} at epoch {self.epoch + 1}, step {self.step}"
                + (f"; checkpoint saved to {where}" if where else "; no checkpoint= to save to"),
            ) from None
        finally:
            self._call("on_fit_end")
        return self.history

    def _epoch(self, train: Any, val: Any, epochs: int) -> None:
        start = time.perf_counter()
        if self._batch == 0:
            self._sums = {}
            if hasattr(train, "set_epoch"):
                train.set_epoch(self.epoch)
        self._call("on_epoch_start")
        if hasattr(self.model, "train"):
            self.model.train()
        with self._bar(train, epochs) as bar:
            for batch in train:
                self._train_step(to_device(batch, self.device))
                bar.update(self._last_size)
                bar.set_postfix(loss=f"{self._sums['loss'] / self._sums['n']:.4g}", refresh=False)
                if self._signal is not None:
                    raise _StopError
        if self.dist is not None:  # rank 0's buffers (BatchNorm statistics) to every rank
            self.dist.broadcast_model(self.model)
        logs = {"epoch": self.epoch + 1}
        n = self._sums.get("n", 0)
        logs.update({k: v / n for k, v in self._sums.items() if k != "n" and n})
        if val is not None:
            if hasattr(val, "set_epoch"):
                val.set_epoch(self.epoch)
            logs.update(self.evaluate(val, prefix="val_"))
        logs["lr"] = float(getattr(self.optimizer, "lr", math.nan))
        logs["time"] = round(time.perf_counter() - start, 3)
        self.epoch, self._batch, self._sums = self.epoch + 1, 0, {}
        self.history.append(logs)
        self._call("on_epoch_end", logs)
        self._save_checkpoint()
        if self._signal is not None:
            raise _StopError

    def _train_step(self, batch: Any) -> None:
        metrics = None
        if self.dist is not None:  # loss, metrics and gradients averaged over the ranks
            value, size, metrics, grads = self.dist.step(self, batch)
        else:
            value, grads = self._gradient(batch)
            size = batch_size(batch)
        value = float(value)
        if not math.isfinite(value):
            raise NonFiniteLossError(self._non_finite_message(value))
        self._last_size = size
        sums = self._sums
        sums["loss"] = sums.get("loss", 0.0) + value * size
        sums["n"] = sums.get("n", 0) + size
        if self.metrics:
            for name, value_ in (metrics if metrics is not None else self._metrics(batch)).items():
                sums[name] = sums.get(name, 0.0) + value_ * size
        if self.strict_device:
            self._check_update(grads)
        self.optimizer.step(grads)
        self.step, self._batch = self.step + 1, self._batch + 1
        logs = {"loss": value, "step": self.step, "batch": self._batch, "size": size}
        self._call("on_batch_end", logs)

    def _gradient(self, batch: Any):
        if self._grad is not None:
            states = [g.bit_generator.state for g in self._generators]
            try:
                value, g = self._grad(self.model, batch)
                return value, g[0]
            except (NonFiniteLossError, KeyboardInterrupt, _StopError, DeviceError):
                raise
            except Exception as error:
                for generator, state in zip(self._generators, states, strict=True):
                    generator.bit_generator.state = state  # the failed trace's draws undone
                value, g = ad.grad(self._objective, self.model, batch, wrt=(0,))
                warnings.warn(
                    f"Trainer: ad.compile_grad failed on this loss ({type(error).__name__}: "
                    f"{error}); training continues with ad.grad (eager, slower)",
                    RuntimeWarning,
                    stacklevel=4,
                )
                self._grad = None
                return value, g[0]
        value, g = ad.grad(self._objective, self.model, batch, wrt=(0,))
        return value, g[0]

    def _check_update(self, grads: Any) -> None:
        """Strict mode: what the optimizer is about to read and write is all on the device."""
        device = self.device
        check_device(grads, device, f"step {self.step + 1}: gradients")
        parameters = getattr(self.optimizer, "parameters", None)
        if callable(parameters):
            check_device(dict(parameters()), device, f"step {self.step + 1}: parameters")
        check_device(
            getattr(self.optimizer, "state", {}), device, f"step {self.step + 1}: optimizer state"
        )

    def _metrics(self, batch: Any) -> dict[str, float]:
        with self._mode(training=False):
            return {name: float(fn(self.model, batch)) for name, fn in self.metrics.items()}

    def _non_finite_message(self, value: float) -> str:
        where = f"step {self.step + 1} (epoch {self.epoch + 1}, batch {self._batch + 1})"
        if self._saved is not None:
            epoch, step = self._saved
            keep = f"the last good checkpoint, {self.checkpoint} (epoch {epoch}, step {step}),"
            keep += " is kept"
        elif self.checkpoint and os.path.exists(self.checkpoint):
            keep = f"the checkpoint {self.checkpoint} is left as it was"
        elif self.checkpoint:
            keep = "no checkpoint had been written yet"
        else:
            keep = "no checkpoint= was given"
        return (
            f"loss is {value} at {where}; training stopped before updating the parameters, "
            f"{keep}. Try a lower learning rate or gradient clipping (max_grad_norm=)"
        )

    def evaluate(self, data: Iterable[Any], prefix: str = "") -> dict[str, float]:
        """Mean loss and metrics over ``data`` in eval mode, no gradients.

        >>> import numpy as np
        >>> from nnflow.optim import SGD
        >>> p = {"w": np.ones(1)}
        >>> t = Trainer(p, lambda p, b: np.mean(b * p["w"]), SGD(p), progress=False)
        >>> t.evaluate([np.ones(4), np.full(2, 4.0)])
        {'loss': 2.0}
        """
        sums: dict[str, float] = {}
        with self._mode(training=False):
            for batch in data:
                batch = to_device(batch, self.device)
                size = batch_size(batch)
                values = {"loss": float(self.loss(self.model, batch))}
                values.update({k: float(fn(self.model, batch)) for k, fn in self.metrics.items()})
                for name, value in values.items():
                    sums[name] = sums.get(name, 0.0) + value * size
                sums["n"] = sums.get("n", 0) + size
                if self._signal is not None:
                    raise _StopError
        if self.dist is not None:  # each rank evaluated its shard: add up the ranks' sums
            sums = self.dist.reduce_sums(sums, ["loss", *self.metrics], data)
        n = sums.pop("n", 0)
        return {prefix + name: total / n for name, total in sums.items()} if n else {}

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The trainer's JSON-able state: counters, data position, history, callbacks."""
        train = self._train
        return {
            "epoch": self.epoch,
            "step": self.step,
            "batch": self._batch,
            "sums": dict(self._sums),
            "seed": getattr(train, "seed", None),
            "world_size": self.dist.size if self.dist is not None else 1,
            "history": list(self.history),
            "callbacks": [
                {"class": type(c).__name__, "state": c.state_dict()}
                for c in self.callbacks
                if hasattr(c, "state_dict")
            ],
        }

    def save(self, path: str | os.PathLike | None = None) -> str:
        """Write a resumable checkpoint (model, optimizer, generators, trainer state).

        Returns the path written (``path``, else the trainer's ``checkpoint``).

        >>> import os, tempfile
        >>> import numpy as np
        >>> from nnflow.optim import SGD
        >>> p = {"w": np.ones(1)}
        >>> t = Trainer(p, lambda p, b: np.sum(p["w"]), SGD(p), progress=False)
        >>> os.path.basename(t.save(os.path.join(tempfile.mkdtemp(), "now.h5")))
        'now.h5'
        """
        path = os.fspath(path) if path is not None else self.checkpoint
        if path is None:
            raise ValueError("Trainer.save: no path given and no Trainer(checkpoint=...)")
        meta = {"epochs_done": self.epoch}
        if self.dist is None or self.dist.rank == 0:
            write_checkpoint(path, self.model, self.optimizer, trainer=self.state_dict(), meta=meta)
        if self.dist is not None:  # the other ranks go on once the file is written
            self.dist.barrier(f"rank 0 writing the checkpoint {path}")
        return path

    def _save_checkpoint(self) -> str | None:
        if not self.checkpoint:
            return None
        self._saved = (self.epoch, self.step)
        return self.save()

    def _resume(self, train: Any, mode: bool | str) -> None:
        if self.checkpoint is None:
            raise ValueError("fit(resume=True) needs Trainer(checkpoint=PATH) to resume from")
        path = self.checkpoint
        if self.dist is not None:  # rank 0 reads the file and sends it to every rank
            path = self.dist.fetch_checkpoint(path)
        if path is None or not os.path.exists(path):
            if mode == "auto":
                self.epoch = self.step = self._batch = 0
                self._sums, self.history = {}, History()
                return
            raise FileNotFoundError(
                f"fit(resume=True): no checkpoint at {self.checkpoint} to resume from; "
                f"run without resume to start fresh"
            )
        state = read_checkpoint(path, self.model, self.optimizer, require_trainer=True)
        state = state["trainer"]
        self.epoch, self.step, self._batch = state["epoch"], state["step"], state["batch"]
        saved_world, world = state.get("world_size", 1), self.dist.size if self.dist else 1
        if self._batch and saved_world != world:  # the data position depends on the ranks
            raise CheckpointError(
                self.checkpoint,
                [
                    f"saved in the middle of epoch {self.epoch + 1} by a run on {saved_world} "
                    f"process(es); resume it on {saved_world}, or from a checkpoint saved at "
                    f"the end of an epoch"
                ],
            )
        self._saved = (self.epoch, self.step)
        self._sums, self.history = dict(state["sums"]), History(state["history"])
        if self._batch and hasattr(train, "load_state_dict"):
            train.load_state_dict(
                {"epoch": self.epoch, "batch": self._batch, "seed": state["seed"]}
            )
        saved = state["callbacks"]
        stateful = [c for c in self.callbacks if hasattr(c, "load_state_dict")]
        if [s["class"] for s in saved] != [type(c).__name__ for c in stateful]:
            warnings.warn(
                f"resume: the checkpoint has state for callbacks {[s['class'] for s in saved]}, "
                f"fit got {[type(c).__name__ for c in stateful]}; their state starts afresh",
                RuntimeWarning,
                stacklevel=3,
            )
        else:
            for callback, entry in zip(stateful, saved, strict=True):
                callback.load_state_dict(entry["state"])
        self.log(f"resumed from {self.checkpoint}: epoch {self.epoch}, step {self.step}")

    # -- plumbing -----------------------------------------------------------------------------
    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook, lambda *a: None)(self, *args)

    @contextlib.contextmanager
    def _mode(self, training: bool):
        was = getattr(self.model, "training", True)
        if hasattr(self.model, "train"):
            self.model.train(training)
        try:
            yield
        finally:
            if hasattr(self.model, "train"):
                self.model.train(was)

    @contextlib.contextmanager
    def _signals(self):
        """SIGINT/SIGTERM set a flag the loop checks between batches (main thread only)."""
        self._signal = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            pending = self._signal if self.dist is None else self.dist.pending_signal
            if pending is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C stops at once
            if self.dist is not None:  # the ranks agree on it at the next step, then stop
                self.dist.pending_signal = signum
            else:
                self._signal = signum

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _bar(self, train: Any, epochs: int):
        from tqdm.auto import tqdm

        total = getattr(train, "num_samples", None)
        done = self._batch * getattr(train, "batch_size", 0) if total else 0
        return tqdm(
            total=total,
            initial=min(done, total or 0),
            desc=f"epoch {self.epoch + 1}/{epochs}",
            unit="sample",
            unit_scale=True,
            leave=False,
            dynamic_ncols=True,
            disable=not (self.progress and sys.stderr.isatty()),
        )

    def log(self, message: str) -> None:
        """Print ``message`` when ``progress`` is on (above any progress bar)."""
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(message)


def _strict_loss(loss: Callable[[Any, Any], Any], device: str) -> Callable[[Any, Any], Any]:
    """``loss`` that first puts the tapes recording it in strict device mode."""

    @functools.wraps(loss)
    def strict_loss(model: Any, batch: Any) -> Any:
        ad.strict_device(device)
        return loss(model, batch)

    return strict_loss


def _as_callback(callback: Any) -> Any:
    """A learning-rate schedule (anything with ``step`` and ``optimizer``) becomes LRSchedule."""
    if isinstance(callback, Callback):
        return callback
    if hasattr(callback, "step") and hasattr(callback, "optimizer"):
        return LRSchedule(callback)
    return callback
