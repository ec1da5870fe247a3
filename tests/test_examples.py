"""Every example trains for a tiny budget through ``nnflow fit``, as a user runs it.

Each run is a subprocess of 2 epochs of 2 to 3 large batches (``--batch-size`` is the knob the
command already has; the RNN's batch size is its number of parallel streams). The checks: the
training loss of epoch 2 is below epoch 1's, the checkpoint loads into the script's own model
and optimizer, and the loaded model's held-out loss is below that of the untrained model the
script builds with the same seed. The whole file takes about 15 seconds on 2 idle cores (30
with the load average at 2).
"""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnflow
from nnflow.backend import gpu_available
from nnflow.optim import SGD

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# batch sizes giving 2 to 3 batches an epoch (the RNN: 2 chunks of 256 streams)
TINY = {"mlp": 512, "convnet": 512, "vae": 512, "rnn": 256}


def run(args, cwd, timeout=120) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``cwd`` with this checkout importable."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=path),
        cwd=cwd,
        timeout=timeout,
    )


def epoch_losses(stdout: str) -> list[float]:
    return [float(v) for v in re.findall(r"^epoch \d+  loss (\S+)", stdout, re.M)]


def held_out_loss(namespace: dict, model) -> float:
    """The script's loss on its validation data, in eval mode (as the trainer reports it)."""
    _, val = namespace["data"](64, 0)
    trainer = nnflow.Trainer(model, namespace["loss"], SGD(model), progress=False)
    return trainer.evaluate(val)["loss"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Each example trained 2 tiny epochs through ``python -m nnflow fit``: name -> result."""
    results = {}
    for name, batch_size in TINY.items():
        folder = tmp_path_factory.mktemp(name)
        checkpoint = folder / "runs" / f"{name}.h5"  # a folder that does not exist yet
        done = run(
            ["-m", "nnflow", "fit", EXAMPLES / f"{name}.py", "--epochs", 2, "--batch-size",
             batch_size, "--checkpoint", checkpoint, "--no-progress"],
            cwd=folder,
        )  # fmt: skip
        results[name] = (done, checkpoint)
    return results


@pytest.mark.parametrize("name", list(TINY))
def test_the_example_trains_and_its_checkpoint_loads(trained, name):
    done, checkpoint = trained[name]
    assert done.returncode == 0, done.stderr
    losses = epoch_losses(done.stdout)
    assert len(losses) == 2 and losses[1] < losses[0], done.stdout
    assert "done: 2 epochs" in done.stdout and "val_loss" in done.stdout

    namespace = runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__nnflow_fit__")
    untrained = held_out_loss(namespace, namespace["model"](0))
    model = namespace["model"](0)
    optimizer = namespace["optimizer"](model, 1e-3)
    nnflow.load(checkpoint, model, optimizer)  # validates every array, shape and dtype
    assert optimizer.state, "the optimizer state came back"
    assert held_out_loss(namespace, model) < untrained


def test_the_classifiers_report_accuracy(trained):
    for name in ("mlp", "convnet"):
        assert "val_accuracy" in trained[name][0].stdout


def test_the_vae_reports_elbo_and_writes_png_grids(trained):
    from PIL import Image

    done, checkpoint = trained["vae"]
    rows = re.findall(r"^epoch \d+  loss (\S+)  elbo (\S+)  val_loss (\S+)  val_elbo (\S+)",
                      done.stdout, re.M)  # fmt: skip
    assert len(rows) == 2
    for _, elbo, val_loss, val_elbo in rows:
        assert float(elbo) < 0 and float(val_elbo) == pytest.approx(-float(val_loss), rel=1e-3)
    assert float(rows[1][3]) > float(rows[0][3])  # the held-out ELBO improved
    for kind in ("reconstructions", "samples"):
        path = checkpoint.parent / f"vae-{kind}.png"
        assert f"{kind}: {path}" in done.stdout
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 200 and image.size[1] > 100
            pixels = np.asarray(image)
            assert pixels.min() < 100 and pixels.max() == 255  # ink on a white page


def test_the_rnn_samples_text_and_carries_state_across_chunks(trained):
    done, _ = trained["rnn"]
    sample = done.stdout.split("--- sampled at temperature 0.7:\n")[1].rsplit("\n---\n", 1)[0]
    assert sample.startswith("The ") and len(sample) == 404

    namespace = runpy.run_path(str(EXAMPLES / "rnn.py"), run_name="__nnflow_fit__")
    model, loss = namespace["model"](0).eval(), namespace["loss"]  # eval: no dropout noise
    train, _ = namespace["data"](4, 0)
    batches = iter(train)
    first, second = next(batches), next(batches)
    assert first[2] and not second[2]
    loss(model, first)
    state = [np.array(s) for s in model.rnn.state]
    assert state[0].shape == (4, 256) and np.abs(state[0]).max() > 0
    carried = float(loss(model, second))
    model.rnn.reset()
    fresh = float(loss(model, second))
    assert carried != fresh  # the second chunk starts from the first chunk's state
    loss(model, first)  # first=True resets: the same result as at the start
    np.testing.assert_array_equal(model.rnn.state[0], state[0])


def test_running_an_example_file_directly_is_nnflow_fit(tmp_path):
    done = run([EXAMPLES / "vae.py", "--epochs", 1, "--batch-size", 512, "--no-progress"],
               cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "epoch 1  loss" in done.stdout and "done: 1 epochs, 3 steps" in done.stdout
    assert (tmp_path / "vae-samples.png").exists()  # no checkpoint: next to the user


@pytest.mark.skipif(gpu_available(), reason="a GPU is here: --device gpu would train")
@pytest.mark.parametrize("name", list(TINY))
def test_device_gpu_without_cupy_fails_clearly(tmp_path, name):
    done = run(["-m", "nnflow", "fit", EXAMPLES / f"{name}.py", "--device", "gpu"], cwd=tmp_path)
    assert done.returncode == 1
    assert "cannot move arrays to device 'gpu'" in done.stderr
    assert "Traceback" not in done.stderr
