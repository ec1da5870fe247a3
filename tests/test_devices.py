"""The device-independent core, on every device: "cpu" always, "gpu" where CuPy sees a CUDA
device (the ``device`` fixture). On the GPU each result must equal the CPU's to float tolerance
and stay on the GPU: AD (``grad``, ``compile_grad``, higher order), every layer family forward
and backward, every optimizer's steps, a ``Trainer`` epoch, and checkpoints written on one
device and read on the other.

``NNFLOW_TEST_FAKE_GPU=1 pytest tests/test_devices.py`` runs the "gpu" cases on the NumPy
stand-in for CuPy where there is no GPU (see ``tests/fakegpu.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
from devicekit import assert_close, assert_on, host, matches_cpu, place, tolerance

import nnflow
from nnflow import ad, functional, layers, losses, optim
from nnflow.backend import device_of, to_device
from nnflow.data import DataLoader
from nnflow.train.checkpoint import read_checkpoint, write_checkpoint

TOL64 = tolerance(np.float64)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


# -- nnflow.ad --------------------------------------------------------------------------------
def small(x, p):
    """Elementwise ops, a matmul, broadcasting, indexing, reductions and a float argument."""
    h = np.tanh(x @ p["W"] + p["b"])
    return np.sum(h**2) + np.mean(np.exp(x[:, 0])) * p["s"] + np.max(h[1:, :2])


def small_inputs():
    return rand(4, 3, seed=1), {"W": rand(3, 5, seed=2), "b": rand(5, seed=3), "s": 0.5}


def test_grad(device):
    want = matches_cpu(device, small_inputs, lambda x, p: ad.grad(small, x, p), **TOL64)
    x, p = small_inputs()
    h = np.tanh(x @ p["W"] + p["b"])
    dh = 2 * h  # the max term adds one more entry
    i, j = np.unravel_index(np.argmax(h[1:, :2]), (3, 2))
    dh[1 + i, j] += 1
    dz = dh * (1 - h**2)
    assert_close(want[1][1][("W",)], x.T @ dz)
    assert_close(want[1][1][("b",)], dz.sum(0))


def test_compile_grad_twice(device):
    cg = ad.compile_grad(small)

    def run(x, p):
        first = cg(x, p, copy=True)
        x2 = x * 0.5
        return first, cg(x2, p, copy=True), ad.grad(small, x2, p)

    first, second, eager = matches_cpu(device, small_inputs, run, **TOL64)
    assert_close(second, eager)
    assert_close(first, ad.grad(small, *small_inputs()))


def test_higher_order(device):
    def f(x):
        return np.sum(np.sin(x) * x**2)

    v = rand(5, seed=4)
    hv = matches_cpu(device, lambda: (rand(5), v), lambda x, v: ad.hvp(f, x, v), **TOL64)
    x = rand(5)
    exact = (2 * np.sin(x) + 4 * x * np.cos(x) - x**2 * np.sin(x)) * v
    assert_close(hv[-1] if isinstance(hv, tuple) else hv, exact)


# -- layers -----------------------------------------------------------------------------------
def _seq(*shape):
    return lambda: rand(*shape, seed=5)


LAYERS = {
    "linear-relu": (
        lambda: layers.Linear(6, 4, activation="relu", rng=0), _seq(3, 6)),
    "conv2d": (
        lambda: layers.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, rng=0),
        _seq(2, 4, 7, 7)),
    "conv-same-pool": (
        lambda: layers.Chain(layers.Conv2d(2, 3, 2, padding="same", rng=0), layers.MaxPool2d(2),
                             layers.AvgPool2d(2)),
        _seq(2, 2, 8, 8)),
    "conv-transpose": (
        lambda: layers.ConvTranspose2d(3, 2, 3, stride=2, padding=1, rng=0), _seq(2, 3, 4, 4)),
    "conv1d": (lambda: layers.Conv1d(3, 4, 3, dilation=2, rng=0), _seq(2, 3, 9)),
    "batchnorm-train": (lambda: layers.BatchNorm2d(3), _seq(4, 3, 2, 2)),
    "layernorm": (lambda: layers.LayerNorm(5), _seq(3, 5)),
    "embedding": (
        lambda: layers.Chain(layers.Embedding(7, 4, rng=0), layers.Flatten()),
        lambda: np.array([[1, 6, 0], [3, 3, 2]])),
    "dropout": (
        lambda: layers.Chain(layers.Linear(4, 4, rng=0), layers.Dropout(0.5, rng=1)),
        _seq(3, 4)),
    "lstm": (lambda: layers.LSTM(3, 4, rng=0), _seq(2, 5, 3)),
    "gru": (lambda: layers.GRU(3, 4, rng=0), _seq(2, 5, 3)),
    "rnn-relu": (lambda: layers.RNN(3, 4, nonlinearity="relu", rng=0), _seq(2, 5, 3)),
}  # fmt: skip


def _model(make):
    model = make()
    return model.astype(np.float64)


def _weights_like(y):
    """Fixed non-uniform weights: a rule that ignores its cotangent's values shows."""
    return np.cos(np.arange(y.size).reshape(y.shape))


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_forward_and_gradient(device, name):
    make_model, make_x = LAYERS[name]

    def loss(model, x):
        y = model(x)
        y = y[0] if isinstance(y, tuple) else y
        w = to_device(_weights_like(np.empty(y.shape)), device_of(y))
        return np.sum(y * w)

    def run(model, x):
        out = model(x)
        eager = ad.grad(loss, model, x, wrt=(0,))
        compiled = ad.compile_grad(loss, wrt=(0,))(model, x, copy=True)
        return out, eager[0], eager[1][0], compiled[0], compiled[1][0], model.state_dict()

    out, value, grads, cvalue, cgrads, state = matches_cpu(
        device, lambda: (_model(make_model), make_x()), run, **TOL64
    )
    assert grads and all(g is not None for g in grads.values())
    if name != "dropout":  # there the two calls draw different masks
        assert_close(cvalue, value)
        assert_close(cgrads, grads)


# -- optimizers -------------------------------------------------------------------------------
OPTIMIZERS = {
    "sgd-nesterov": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam-amsgrad": lambda p: optim.Adam(p, lr=0.01, amsgrad=True),
    "adamw": lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.1),
    "rmsprop-centered": lambda p: optim.RMSProp(p, lr=0.01, momentum=0.5, centered=True),
    "adagrad": lambda p: optim.Adagrad(p, lr=0.1),
    "adam-clipped": lambda p: optim.Adam(p, lr=0.01, max_grad_norm=0.5),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_steps(device, name):
    def make():
        grads = [{("w",): rand(3, 4, seed=s), ("b",): rand(4, seed=s + 10)} for s in range(3)]
        return {"w": rand(3, 4), "b": rand(4, seed=1)}, grads

    def run(params, grads):
        opt = OPTIMIZERS[name](params)
        for g in grads:
            opt.step(g)
        return params, {k: v for k, v in opt.state.items()}

    params, state = matches_cpu(device, make, run, **TOL64)
    assert all(s["step"] == 3 for s in state.values())


# -- training and checkpoints -----------------------------------------------------------------
def _net():
    return layers.Chain(
        layers.Linear(6, 8, activation="tanh", rng=0),
        layers.BatchNorm1d(8),
        layers.Linear(8, 3, rng=1),
    ).astype(np.float64)


def _classify(model, batch):
    x, y = batch
    return losses.cross_entropy(model(x), y)


def _loader():
    rng = np.random.default_rng(0)
    return DataLoader((rng.normal(size=(40, 6)), rng.integers(0, 3, 40)), 8, seed=0)


def _fit(device, strict=False, **kwargs):
    model = _net()
    opt = optim.Adam(model, lr=0.01)
    trainer = nnflow.Trainer(
        model, _classify, opt, device=device, progress=False, strict_device=strict, **kwargs
    )
    return model, opt, trainer.fit(_loader(), 2)


def test_trainer_epochs(device):
    model, opt, history = _fit(device, strict=True)
    assert_on(device, model.state_dict())
    assert_on(device, opt.state)
    _, _, cpu_history = _fit("cpu")
    np.testing.assert_allclose(history["loss"], cpu_history["loss"], rtol=1e-9)
    assert history["loss"][1] < history["loss"][0]


def test_checkpoint_across_devices(device, tmp_path):
    model, opt, _ = _fit(device, checkpoint=tmp_path / "run.h5")
    on_cpu = _net()
    cpu_opt = optim.Adam(on_cpu, lr=0.01)
    read_checkpoint(tmp_path / "run.h5", on_cpu, cpu_opt)  # written on device, read on CPU
    assert_on("cpu", on_cpu.state_dict())
    assert_close(on_cpu.state_dict(), model.state_dict(), rtol=0, atol=0)
    assert_close(cpu_opt.state, opt.state, rtol=0, atol=0)
    write_checkpoint(tmp_path / "cpu.h5", on_cpu, cpu_opt)  # and back: CPU file, device model
    back = place(device, _net())
    back_opt = optim.Adam(back, lr=0.01)
    read_checkpoint(tmp_path / "cpu.h5", back, back_opt)
    assert_on(device, back.state_dict())
    assert_on(device, back_opt.state)
    assert_close(host(back.state_dict()), on_cpu.state_dict(), rtol=0, atol=0)
    assert_close(host(back_opt.state), cpu_opt.state, rtol=0, atol=0)


def test_losses_and_activations(device):
    def make():
        return rand(4, 5), np.array([0, 4, 2, 2]), rand(4, 5, seed=9) > 0

    def run(logits, labels, targets):
        values = {
            "ce": losses.cross_entropy(logits, labels),
            "bce": losses.binary_cross_entropy_with_logits(logits, targets * 1.0),
            "mse": losses.mse(logits, logits * 0.5),
            "kl": losses.gaussian_kl(logits, logits * 0.1),
        }
        for name in ("relu", "gelu", "sigmoid", "softplus", "elu", "silu", "log_softmax"):
            values[name] = getattr(functional, name)(logits)
        g = ad.grad(lambda x: losses.cross_entropy(functional.gelu(x), labels), logits)[1][0]
        return values, g

    matches_cpu(device, make, run, **TOL64)


def test_results_stay_on_the_device(device):
    x = place(device, rand(3, 4))
    val, g = ad.grad(lambda x: np.sum(np.exp(x)), x)
    assert device_of(g[0]) == device and device_of(x) == device
    assert_close(g[0], np.exp(host(x)))
