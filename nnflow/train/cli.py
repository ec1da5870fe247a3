"""The ``nnflow`` command: ``nnflow fit SCRIPT [options]`` and ``nnflow info CHECKPOINT``.

A training script is a Python file that defines:

- ``model()`` (or ``model(seed)``) returning the model to train;
- ``data(batch_size, seed)`` returning ``(train, val)`` loaders (``val`` may be ``None``);
- ``loss(model, batch)`` returning a scalar;
- optionally ``optimizer(model, lr)`` (default: ``Adam(model, lr=lr)``), ``metrics`` (a function
  ``fn(model, batch)``, a list of them or a ``{name: fn}`` dict), ``callbacks(optimizer)``
  returning a list of callbacks or schedules, and ``defaults``, a dict overriding the command's
  defaults (``{"epochs": 20, "batch_size": 32, "lr": 1e-3}``).

Ending the script with ``if __name__ == "__main__": nnflow.cli.run_script(globals())`` makes
``python script.py --epochs 2`` the same as ``nnflow fit script.py --epochs 2``.

Exit status: 0 on success, 1 when the script or training fails (the message names the problem),
2 for bad arguments (with a usage line), 130 / 143 when stopped by Ctrl-C / SIGTERM (after
saving the checkpoint).
"""

from __future__ import annotations

import argparse
import inspect
import os
import runpy
import sys
import traceback
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "run_script"]

DEFAULTS = {"epochs": 10, "batch_size": 64, "lr": 1e-3, "seed": 0, "device": "cpu"}
REQUIRED = {"model": "model()", "data": "data(batch_size, seed)", "loss": "loss(model, batch)"}


class ScriptError(Exception):
    """A training script that cannot be used; the message says what is wrong."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _add_fit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        help="total epochs (default: the script's defaults, else 10)",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, help="batch size (default: the script's, else 64)"
    )
    parser.add_argument(
        "--lr", type=_positive_float, help="learning rate (default: the script's, else 1e-3)"
    )
    parser.add_argument("--device", choices=("cpu", "gpu"), help="where to train (default cpu)")
    parser.add_argument("--checkpoint", metavar="PATH", help="HDF5 checkpoint saved every epoch")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--seed", type=int, help="seed for data order and model init (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel over the MPI ranks (mpirun -n N ...); --batch-size is per rank",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnflow", description="Train nnflow models and inspect their checkpoints."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fit = commands.add_parser("fit", help="train the model a script defines")
    fit.add_argument("script", help="a Python file defining model(), data(), loss()")
    _add_fit_options(fit)
    info = commands.add_parser("info", help="print a checkpoint's contents")
    info.add_argument("checkpoint", help="an HDF5 checkpoint written by nnflow")
    parser.set_defaults(fit_parser=fit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nnflow`` command with ``argv`` (default ``sys.argv[1:]``); returns the status.

    >>> main(["info", "/no/such/file.h5"])  # the error goes to stderr
    1
    """
    parser = _parser()
    args = parser.parse_args(argv)  # exits with status 2 and a usage line on bad arguments
    if args.command == "info":
        return _info(args.checkpoint)
    if not os.path.isfile(args.script):
        _usage_error(args.fit_parser, f"script not found: {args.script}")
    try:
        namespace = _load_script(args.script)
    except ScriptError as error:
        return _fail(str(error))
    return _fit(namespace, args, args.script, args.fit_parser)


def run_script(namespace: dict[str, Any], argv: Sequence[str] | None = None) -> None:
    """``nnflow fit`` on the definitions in ``namespace`` (a script's ``globals()``); exits.

    Put ``if __name__ == "__main__": run_script(globals())`` at the end of a training script.
    """
    name = os.path.basename(str(namespace.get("__file__", "script")))
    parser = argparse.ArgumentParser(prog=f"python {name}", description=namespace.get("__doc__"))
    _add_fit_options(parser)
    args = parser.parse_args(argv)
    sys.exit(_fit(namespace, args, name, parser))


def _usage_error(parser: argparse.ArgumentParser, message: str) -> None:
    parser.error(message)  # prints the usage line and exits with status 2


def _fail(message: str) -> int:
    print(f"nnflow: error: {message}", file=sys.stderr)
    return 1


def _load_script(path: str) -> dict[str, Any]:
    try:
        return runpy.run_path(path, run_name="__nnflow_fit__")
    except SystemExit:
        raise
    except BaseException as error:
        trace = "".join(traceback.format_exception(error)).rstrip()
        raise ScriptError(f"the script {path} raised an error while loading:\n{trace}") from None


def _definitions(namespace: dict[str, Any], name: str) -> dict[str, Any]:
    missing = [sig for key, sig in REQUIRED.items() if not callable(namespace.get(key))]
    if missing:
        raise ScriptError(
            f"{name} does not define {', '.join(missing)}. A training script defines model(), "
            f"data(batch_size, seed) returning (train, val) and loss(model, batch); optionally "
            f"optimizer(model, lr), metrics, callbacks(optimizer) and defaults"
        )
    return namespace


def _settings(namespace: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    script_defaults = namespace.get("defaults") or {}
    if not isinstance(script_defaults, dict):
        raise ScriptError(f"defaults must be a dict, got {type(script_defaults).__name__}")
    unknown = set(script_defaults) - set(DEFAULTS)
    if unknown:
        raise ScriptError(f"defaults has unknown keys {sorted(unknown)} (known: {list(DEFAULTS)})")
    settings = {**DEFAULTS, **script_defaults}
    for key in DEFAULTS:
        if getattr(args, key, None) is not None:
            settings[key] = getattr(args, key)
    return settings


def _build(namespace: dict[str, Any], settings: dict[str, Any], name: str):
    from ..optim import Adam
    from .metrics import as_metrics

    make_model = namespace["model"]
    takes_seed = len(inspect.signature(make_model).parameters) > 0
    model = make_model(settings["seed"]) if takes_seed else make_model()
    loaders = namespace["data"](settings["batch_size"], settings["seed"])
    if not (isinstance(loaders, tuple) and len(loaders) == 2):
        raise ScriptError(
            f"{name}: data(batch_size, seed) must return (train, val), got {loaders!r}"
        )
    make_optimizer = namespace.get("optimizer")
    optimizer = (make_optimizer or (lambda m, lr: Adam(m, lr=lr)))(model, settings["lr"])
    callbacks = namespace["callbacks"](optimizer) if callable(namespace.get("callbacks")) else []
    return model, loaders, optimizer, list(callbacks), as_metrics(namespace.get("metrics"))


def _fit(namespace: dict[str, Any], args: argparse.Namespace, name: str, parser) -> int:
    from .callbacks import PrintMetrics
    from .checkpoint import CheckpointError
    from .distributed import DistributedError
    from .trainer import NonFiniteLossError, Trainer, TrainingInterrupted

    distributed = getattr(args, "distributed", False)
    if args.resume and not args.checkpoint:
        _usage_error(parser, "--resume needs --checkpoint PATH (the checkpoint to continue)")
    # distributed: only rank 0 needs the file (it sends it to the others); the trainer checks
    if args.resume and not distributed and not os.path.exists(args.checkpoint):
        return _fail(
            f"--resume: no checkpoint at {args.checkpoint} to resume from "
            f"(run without --resume to start fresh)"
        )
    try:
        settings = _settings(_definitions(namespace, name), args)
        model, (train, val), optimizer, callbacks, metrics = _build(namespace, settings, name)
    except ScriptError as error:
        return _fail(str(error))
    except Exception as error:
        trace = "".join(traceback.format_exception(error)).rstrip()
        return _fail(f"setting up {name} failed:\n{trace}")
    try:
        trainer = Trainer(
            model,
            namespace["loss"],
            optimizer,
            checkpoint=args.checkpoint,
            device=settings["device"],
            progress=not args.no_progress,
            metrics=metrics,
            distributed=distributed,
        )
    except (RuntimeError, ImportError) as error:  # --device gpu without a GPU, no mpi4py
        return _fail(str(error))
    root = trainer.dist is None or trainer.dist.rank == 0  # the other ranks print nothing
    if args.no_progress:
        callbacks.append(PrintMetrics())
    try:
        history = trainer.fit(
            train, settings["epochs"], val=val, callbacks=callbacks, resume=args.resume
        )
    except TrainingInterrupted as error:  # the checkpoint is saved: exit as the signal would
        if root:
            print(f"nnflow: {error}", file=sys.stderr)
        return 128 + int(error.signal)
    except (NonFiniteLossError, CheckpointError, DistributedError, FileNotFoundError) as error:
        return _fail(str(error)) if root else 1
    if not root:
        return 0
    last = history[-1] if len(history) else {}
    metrics_text = "  ".join(f"{k} {v:.4g}" for k, v in last.items() if k.startswith("val_"))
    saved = f"; checkpoint: {args.checkpoint}" if args.checkpoint else ""
    print(f"done: {trainer.epoch} epochs, {trainer.step} steps  {metrics_text}{saved}".rstrip())
    return 0


def _info(path: str) -> int:
    from .checkpoint import CheckpointError
    from .validate import describe

    try:
        print(describe(path))
    except CheckpointError as error:
        return _fail(str(error))
    return 0
