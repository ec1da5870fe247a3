"""The ``nnflow`` command, run as users run it: in subprocesses."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from trainkit import ROOT, subprocess_env

from nnflow.data import DataLoader
from nnflow.train.checkpoint import read_checkpoint

MLP = str(ROOT / "examples" / "mlp.py")


def nnflow(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "nnflow", *map(str, args)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=timeout,
    )


def script(tmp_path, body: str, name: str = "job.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


TINY = """
import numpy as np
from nnflow import losses
from nnflow.data import DataLoader, digits
from nnflow.layers import Chain, Flatten, Linear

def model():
    return Chain(Flatten(), Linear(64, 10, rng=0))

def data(batch_size, seed):
    x, y = digits("train")
    return DataLoader((x[:256], y[:256]), batch_size, seed=seed), None

def loss(model, batch):
    x, y = batch
    return losses.cross_entropy(model(x), y)
"""


def mlp_arrays(path) -> dict:
    namespace: dict = {}
    exec(compile(open(MLP).read(), MLP, "exec"), namespace)  # the example's own model()
    model = namespace["model"](0)
    read_checkpoint(path, model)
    return {p: np.array(x) for p, x in model.state_dict().items()}


def test_fit_the_mlp_example_then_resume_equals_straight(tmp_path):
    straight = nnflow("fit", MLP, "--epochs", 3, "--checkpoint", tmp_path / "a.h5", "--no-progress")
    assert straight.returncode == 0, straight.stderr
    assert "epoch 3  loss" in straight.stdout and "val_accuracy" in straight.stdout
    assert "done: 3 epochs" in straight.stdout
    first = nnflow("fit", MLP, "--epochs", 2, "--checkpoint", tmp_path / "b.h5", "--no-progress")
    assert first.returncode == 0, first.stderr
    rest = nnflow(
        "fit", MLP, "--epochs", 3, "--checkpoint", tmp_path / "b.h5", "--resume", "--no-progress"
    )
    assert rest.returncode == 0, rest.stderr
    assert "epoch 3  loss" in rest.stdout and "epoch 1  loss" not in rest.stdout
    a, b = mlp_arrays(tmp_path / "a.h5"), mlp_arrays(tmp_path / "b.h5")
    for path in a:
        np.testing.assert_array_equal(a[path], b[path], err_msg=str(path))
    info = nnflow("info", tmp_path / "a.h5")
    assert info.returncode == 0 and "layers.1.weight" in info.stdout
    assert "float32[128, 64]" in info.stdout and "trainer: epoch 3" in info.stdout


def test_running_the_example_itself_is_the_same_as_nnflow_fit(tmp_path):
    done = subprocess.run(
        [sys.executable, MLP, "--epochs", "1", "--batch-size", "128", "--no-progress"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "epoch 1  loss" in done.stdout and "done: 1 epochs, 12 steps" in done.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", MLP, "--epochs", "zero"], "argument --epochs: invalid _positive_int value"),
        (["fit", MLP, "--epochs", "0"], "must be a positive integer, got 0"),
        (["fit", MLP, "--bogus"], "unrecognized arguments: --bogus"),
        (["fit", MLP, "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
        (["fit", MLP, "--resume"], "--resume needs --checkpoint PATH"),
        (["fit", "no/such/script.py"], "script not found: no/such/script.py"),
        (["fit"], "the following arguments are required: script"),
        (["train", MLP], "invalid choice: 'train'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_arguments_exit_2_with_a_usage_line(args, message):
    done = nnflow(*args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("usage: nnflow") and message in done.stderr


def test_a_script_missing_definitions_is_named(tmp_path):
    path = script(tmp_path, "def model():\n    return None\n")
    done = nnflow("fit", path)
    assert done.returncode == 1
    assert "job.py does not define data(batch_size, seed), loss(model, batch)" in done.stderr


def test_a_script_raising_on_import_is_reported(tmp_path):
    path = script(tmp_path, "import numpy\nraise RuntimeError('dataset folder missing')\n")
    done = nnflow("fit", path)
    assert done.returncode == 1
    assert "raised an error while loading" in done.stderr
    assert "RuntimeError: dataset folder missing" in done.stderr


def test_resume_without_a_checkpoint_says_so(tmp_path):
    done = nnflow("fit", script(tmp_path, TINY), "--resume", "--checkpoint", tmp_path / "none.h5")
    assert done.returncode == 1
    assert f"--resume: no checkpoint at {tmp_path / 'none.h5'} to resume from" in done.stderr


def test_nan_loss_exits_1_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    # One NaN sample that drop_last leaves out of epoch 1 and that epoch 2 serves in batch b.
    loader = DataLoader(np.zeros(256), 60, seed=0, drop_last=True)
    sample = int(loader.order(0)[-1])
    b = int(np.nonzero(loader.order(1) == sample)[0][0]) // 60
    body = TINY.replace(
        "    return DataLoader((x[:256], y[:256]), batch_size, seed=seed), None",
        f"    x = x[:256].copy()\n    x[{sample}] = np.nan\n"
        "    return DataLoader((x, y[:256]), batch_size, seed=seed, drop_last=True), None",
    )
    ckpt = tmp_path / "run.h5"
    done = nnflow(
        "fit",
        script(tmp_path, body),
        "--batch-size",
        "60",
        "--epochs",
        "3",
        "--checkpoint",
        ckpt,
        "--no-progress",
    )
    assert done.returncode == 1, done.stderr
    assert f"loss is nan at step {4 + b + 1} (epoch 2, batch {b + 1})" in done.stderr
    assert "epoch 1  loss" in done.stdout and f"{ckpt} (epoch 1, step 4), is kept" in done.stderr
    info = nnflow("info", ckpt)
    assert "trainer: epoch 1, step 4" in info.stdout


def test_sigterm_saves_and_exits_143(tmp_path):
    body = TINY + textwrap.dedent("""
        import time
        from nnflow.train import Callback

        class Slow(Callback):
            def on_batch_end(self, trainer, logs):
                time.sleep(0.02)  # training code is compiled: slow the loop down here

        def callbacks(optimizer):
            return [Slow()]
    """)
    ckpt = tmp_path / "run.h5"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nnflow",
            "fit",
            script(tmp_path, body),
            "--batch-size",
            "16",
            "--epochs",
            "50",
            "--checkpoint",
            str(ckpt),
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    assert child.stdout.readline().startswith("epoch 1  loss")
    time.sleep(0.1)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signal.SIGTERM, err
    assert "training stopped by SIGTERM" in err and f"checkpoint saved to {ckpt}" in err
    # The checkpoint is the one saved on SIGTERM: its step is the last one the run printed
    # or later (the signal lands at any moment of epoch 2 or after, on a slow machine).
    info = nnflow("info", ckpt)
    match = re.search(r"trainer: epoch (\d+), step (\d+)", info.stdout)
    assert info.returncode == 0 and match, info.stdout
    epochs_printed = out.count("loss") + 1  # the line read above, then the rest
    assert int(match.group(1)) >= 1 and int(match.group(2)) >= 16 * (epochs_printed - 1)
    assert "done:" not in out


def test_info_on_a_bad_file_names_it(tmp_path):
    (tmp_path / "junk.h5").write_text("junk")
    done = nnflow("info", tmp_path / "junk.h5")
    assert (
        done.returncode == 1 and "junk.h5" in done.stderr and "not a readable HDF5" in done.stderr
    )


def test_console_script_entry_point_is_importable():
    from nnflow.cli import main

    assert main(["info", str(ROOT / "no-such-file.h5")]) == 1
