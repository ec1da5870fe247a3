"""Strict device mode: ``ad.strict_device``, ``Trainer(strict_device=True)``, ``check_device``.

The GPU side runs on the NumPy stand-in for CuPy (``fake_gpu``): its arrays are on "gpu" as far
as nnflow can tell, and host arrays are NumPy's, exactly the mix the mode must catch. Without
the stand-in, a step on NumPy data checked for "gpu" shows the same errors.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest

import nnflow
from nnflow import ad, backend, layers, losses, optim
from nnflow.ad.device import StrictDevice
from nnflow.backend import DeviceError, check_device, misplaced, to_device
from nnflow.data import DataLoader


def strict_grad(f, *args, device="gpu", compiled=False, **kwargs):
    """``ad.grad`` (or ``compile_grad``) of ``f`` with the tapes in strict mode for ``device``."""

    @functools.wraps(f)  # the arguments keep their names in messages
    def checked(*a, **k):
        ad.strict_device(device)
        return f(*a, **k)

    if compiled:
        return ad.compile_grad(checked)(*args, **kwargs)
    return ad.grad(checked, *args, **kwargs)


def test_docstring_examples():
    import doctest

    from nnflow.ad import device

    result = doctest.testmod(device)
    assert result.attempted > 0 and result.failed == 0


# -- the explicit check -----------------------------------------------------------------------
def test_check_device_names_every_misplaced_array():
    tree = {"w": np.ones(2), "layers": [np.zeros(3), 0.5, np.float32(1)], "n": None}
    check_device(tree, "cpu")
    with pytest.raises(DeviceError) as error:
        check_device(tree, "gpu", "parameters")
    message = str(error.value)
    assert message.startswith("parameters not on 'gpu':")
    assert "['w'] is a NumPy array float64[2] on cpu" in message
    assert "['layers'][0] is a NumPy array float64[3] on cpu" in message
    assert "[1]" not in message and "['n']" not in message  # scalars and None are fine
    assert [path for path, _ in misplaced(tree, "gpu")] == [("w",), ("layers", 0)]
    with pytest.raises(ValueError, match="unknown device"):
        check_device(tree, "tpu")


def test_check_device_on_the_stand_in(fake_gpu):
    params = {"w": to_device(np.ones(2), "gpu"), "b": np.zeros(2)}
    with pytest.raises(DeviceError, match=r"\['b'\] is a NumPy array float64\[2\] on cpu"):
        check_device(params, "gpu")
    with pytest.raises(DeviceError, match=r"\['w'\] is a CuPy array float64\[2\] on gpu"):
        check_device(params, "cpu")


# -- ad.strict_device -------------------------------------------------------------------------
def test_outside_tracing_it_says_where_to_call_it():
    with pytest.raises(RuntimeError, match="inside the function given to ad.grad"):
        ad.strict_device("gpu")
    with pytest.raises(ValueError, match="unknown device 'cuda'"):
        ad.grad(lambda x: (ad.strict_device("cuda"), np.sum(x))[1], np.ones(2))


@pytest.mark.parametrize("compiled", [False, True])
def test_cpu_data_passes_for_cpu(compiled):
    def f(x, w):
        return np.sum(np.tanh(x @ w) ** 2) + np.max(x)

    x, w = np.ones((2, 3)), np.full((3, 2), 0.1)
    value, g = strict_grad(f, x, w, device="cpu", compiled=compiled)
    want_value, want = ad.grad(f, x, w)
    assert float(value) == pytest.approx(float(want_value))
    np.testing.assert_allclose(g[1], want[1])


@pytest.mark.parametrize("compiled", [False, True])
def test_cpu_data_fails_for_gpu_naming_the_input(compiled):
    with pytest.raises(DeviceError, match=r"input x is float64\[2\] on cpu; move it to the GPU"):
        strict_grad(lambda x: np.sum(x), np.ones(2), compiled=compiled)


def test_model_left_on_the_cpu_is_named_by_its_path():
    model = layers.Linear(3, 2, rng=0)
    with pytest.raises(DeviceError, match=r"input model\.weight is float32\[2, 3\] on cpu"):
        strict_grad(lambda model, x: np.sum(model(x)), model, np.ones((1, 3), np.float32))


def test_device_data_passes_on_the_stand_in(fake_gpu):
    x = to_device(np.linspace(-1, 1, 6).reshape(2, 3), "gpu")
    for compiled in (False, True):
        value, g = strict_grad(lambda x: np.sum(np.exp(x) * x), x, compiled=compiled)
        assert backend.device_of(g[0]) == "gpu"
        np.testing.assert_allclose(to_device(g[0], "cpu"), np.exp(x.get()) * (x.get() + 1))


# Host arrays that CuPy takes without a word, copying them to the GPU on every call (mixing
# them into ufuncs it refuses with a TypeError, as the stand-in does): index arrays, masks, and
# whatever a primitive moves itself with ``xp.asarray``.
HOST = np.arange(3.0)
INDEX = np.array([2, 0])


@pytest.fixture
def movers():
    """Primitives that move an argument to the data's device themselves (a copy per call);
    made per test, so that the registry test never sees them."""

    @ad.primitive
    def shift(x, c):
        return x + backend.get_array_module(x).asarray(c)

    @ad.primitive
    def lerp(a, b, t):
        return a + backend.get_array_module(a).asarray(t) * (b - a)

    ad.diffrule(shift, "x")(lambda dy, y, x, c: dy)
    ad.diffrule(lerp, "a")(lambda dy, y, a, b, t: dy * (1 - t))
    return {"shift": shift, "lerp": lerp}


@pytest.mark.parametrize(
    "f, shape, op, where, what",
    [
        (lambda m, x: np.sum(m["shift"](x, HOST)), 3, "shift", "argument 1", "float64[3]"),
        (lambda m, x: np.sum(m["lerp"](x, x * 2, HOST)), 3, "lerp", "argument 2", "float64[3]"),
        (lambda m, x: np.sum(x[INDEX]), 3, "getitem", "argument 1", "int64[2]"),
        (lambda m, x: np.sum(x[:, INDEX]), (3, 3), "getitem", r"argument 1\[1\]", "int64[2]"),
        (lambda m, x: np.sum(m["shift"](x, c=HOST)), 3, "shift", "keyword 'c'", "float64[3]"),
    ],
    ids=["binary", "flat", "index", "tuple-key", "keyword"],
)  # fmt: skip
def test_a_host_array_reaching_an_op_is_named(fake_gpu, movers, f, shape, op, where, what):
    x = to_device(np.ones(shape), "gpu")
    pattern = rf"= {op}\(\.\.\.\) got {re.escape(what)} on cpu as its {where}"
    with pytest.raises(DeviceError, match=pattern):
        strict_grad(lambda x: f(movers, x), x)


def test_a_primitive_returning_host_data_is_named(fake_gpu):
    @ad.primitive
    def leak(x):
        return x.get()

    ad.diffrule(leak, "x")(lambda dy, y, x: dy)
    with pytest.raises(DeviceError, match=r"= leak\(\.\.\.\) returned float64\[3\] on cpu"):
        strict_grad(lambda x: np.sum(leak(x)), to_device(np.ones(3), "gpu"))


def test_python_numbers_from_gpu_values_are_refused(fake_gpu):
    def branchy(x):
        if np.sum(x) > 0:  # bool(): a device-to-host copy and a sync
            return np.sum(x * 2.0)
        return np.sum(x)

    x = to_device(np.ones(3), "gpu")
    with pytest.raises(DeviceError, match="converts a GPU value .* to a Python bool"):
        strict_grad(branchy, x)
    with pytest.raises(DeviceError, match="to a Python float"):
        strict_grad(lambda x: np.sum(x) * float(np.max(x)), x)
    assert float(ad.grad(branchy, x)[0]) == 6.0  # allowed outside strict mode (a guard)


def test_the_backward_pass_compile_grad_records_is_checked(fake_gpu):
    @ad.primitive
    def square(x):
        return x * x

    ad.diffrule(square, "x")(lambda dy, y, x: dy * 2.0 * x[np.arange(3)])  # a host index
    x = to_device(np.ones(3), "gpu")
    strict_grad(lambda x: np.sum(square(x)), x)  # eager: the rule runs on concrete arrays
    with pytest.raises(DeviceError, match=r"= getitem\(\.\.\.\) got int64\[3\] on cpu"):
        strict_grad(lambda x: np.sum(square(x)), x, compiled=True)


def test_random_draws_are_checked(fake_gpu):
    x = to_device(np.ones(3, np.float32), "gpu")
    rng = np.random.default_rng(0)

    def noisy(x, like):
        return np.sum(x * nnflow.random.normal(rng, 3, like=like))

    strict_grad(noisy, x, x)  # drawn on the CPU, moved to the data's device by nnflow.random
    with pytest.raises(DeviceError, match=r"draw_normal\(\.\.\.\) returned float32\[3\] on cpu"):
        strict_grad(noisy, x, None)  # left where the generator drew it


def test_the_context_manager_ends_with_its_block():
    seen = {}

    def f(x):
        tape = ad.Tape  # noqa: F841  (documentation: the tape is the active one)
        with ad.strict_device("cpu") as strict:
            assert isinstance(strict, StrictDevice) and len(strict.tapes) == 1
            y = np.exp(x)
        seen["type"] = type(strict.tapes[0].nodes)
        return np.sum(y * to_device(np.ones(2), "cpu"))

    ad.grad(f, np.ones(2))
    assert seen["type"] is list  # the plain node list is back after the block


def test_nested_modes_restore_the_outer_one():
    def f(x):  # a Python float: its input is a scalar, fine on either device
        outer = ad.strict_device("cpu")
        with ad.strict_device("gpu"):
            assert outer.tapes[0].nodes.device == "gpu"
        assert outer.tapes[0].nodes.device == "cpu"
        return x * 2.0

    assert ad.grad(f, 1.5)[1][0] == 2.0


def test_plain_tapes_keep_plain_lists():
    _, g = ad.grad(lambda x: np.sum(x**2), np.ones(2))
    assert type(g.tape.nodes) is list


# -- Trainer(strict_device=True) --------------------------------------------------------------
def _model():
    return layers.Chain(layers.Linear(4, 8, activation="relu", rng=0), layers.Linear(8, 2, rng=1))


def _data():
    rng = np.random.default_rng(0)
    return DataLoader((rng.normal(size=(16, 4)).astype(np.float32), rng.integers(0, 2, 16)), 8)


def _classify(model, batch):
    x, y = batch
    return losses.cross_entropy(model(x), y)


@pytest.mark.parametrize("compile", [True, False])
def test_trainer_strict_on_the_stand_in(fake_gpu, compile):
    model = _model()
    trainer = nnflow.Trainer(
        model, _classify, optim.Adam(model, lr=0.01), device="gpu", progress=False,
        strict_device=True, compile=compile,
    )  # fmt: skip
    history = trainer.fit(_data(), 2)
    assert history["loss"][1] < history["loss"][0]
    assert backend.device_of(model.layers[0].weight) == "gpu"
    assert any(k.name.startswith("nnflow_fused") for k in fake_gpu.kernels) == compile


def test_trainer_strict_names_a_host_index_in_the_loss(fake_gpu):
    def loss(model, batch):
        x, y = batch
        return losses.cross_entropy(model(x)[:, np.array([1, 0])], y)  # classes swapped

    model = _model()
    trainer = nnflow.Trainer(
        model, loss, optim.SGD(model, lr=0.1), device="gpu", progress=False, strict_device=True
    )
    with pytest.raises(DeviceError, match=r"getitem\(\.\.\.\) got int64\[2\] on cpu"):
        trainer.fit(_data(), 1)


def test_trainer_strict_checks_what_the_optimizer_reads(fake_gpu):
    model = _model()
    opt = optim.SGD(model, lr=0.1, momentum=0.9)
    trainer = nnflow.Trainer(
        model, _classify, opt, device="gpu", progress=False, strict_device=True
    )
    trainer.fit(_data(), 1)
    path = next(iter(opt.state))
    opt.state[path]["momentum_buffer"] = to_device(opt.state[path]["momentum_buffer"], "cpu")
    with pytest.raises(DeviceError, match=r"step 1: optimizer state not on 'gpu'.*momentum_buf"):
        trainer.fit(_data(), 2, resume=False)


def test_trainer_without_strict_mode_does_not_check():
    model = _model()
    trainer = nnflow.Trainer(model, _classify, optim.SGD(model, lr=0.1), progress=False)
    assert trainer._objective is _classify and not trainer.strict_device
