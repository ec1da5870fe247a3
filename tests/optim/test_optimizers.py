"""Optimizers against their formulas written out here, and against torch.optim when installed.

``OPTIMIZERS`` (Optimisers.jl's ``RULES`` style) lists every configuration; each runs 20 steps
in float64 on a two-parameter model, with one parameter missing its gradient at some steps (so
per-parameter step counts matter, as in PyTorch).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from nnflow import ad
from nnflow.backend import device_of, to_device
from nnflow.optim import SGD, Adagrad, Adam, AdamW, RMSProp, RMSprop

STEPS = 20


# -- the formulas, written out independently of nnflow.optim ------------------------------------
def ref_sgd(p, grads, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
    buf = None
    for g in grads:
        if g is None:
            continue
        d = g + weight_decay * p
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        p = p - lr * d
    return p


def ref_adam(
    p, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, decoupled=False
):
    b1, b2 = betas
    m, v, vmax, t = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p), 0
    for g in grads:
        if g is None:
            continue
        t += 1
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        m_hat = m / (1 - b1**t)
        v_hat = (vmax if amsgrad else v) / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def ref_adamw(p, grads, lr, weight_decay=1e-2, **kwargs):
    return ref_adam(p, grads, lr, weight_decay=weight_decay, decoupled=True, **kwargs)


def ref_rmsprop(p, grads, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
    s, a, buf = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for g in grads:
        if g is None:
            continue
        g = g + weight_decay * p
        s = alpha * s + (1 - alpha) * g**2
        a = alpha * a + (1 - alpha) * g
        denom = np.sqrt(s - a**2 if centered else s) + eps
        if momentum:
            buf = momentum * buf + g / denom
            p = p - lr * buf
        else:
            p = p - lr * g / denom
    return p


def ref_adagrad(
    p, grads, lr, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10
):
    s, t = np.full_like(p, initial_accumulator_value), 0
    for g in grads:
        if g is None:
            continue
        t += 1
        g = g + weight_decay * p
        s = s + g * g
        p = p - lr / (1 + (t - 1) * lr_decay) * g / (np.sqrt(s) + eps)
    return p


OPTIMIZERS = [
    (SGD, ref_sgd, "SGD", {"lr": 0.1}),
    (SGD, ref_sgd, "SGD", {"lr": 0.05, "momentum": 0.9}),
    (SGD, ref_sgd, "SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    (SGD, ref_sgd, "SGD", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1}),
    (Adam, ref_adam, "Adam", {"lr": 0.01}),
    (Adam, ref_adam, "Adam", {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    (Adam, ref_adam, "Adam", {"lr": 0.01, "amsgrad": True}),
    (AdamW, ref_adamw, "AdamW", {"lr": 0.01}),
    (AdamW, ref_adamw, "AdamW", {"lr": 0.03, "weight_decay": 0.2, "amsgrad": True}),
    (RMSProp, ref_rmsprop, "RMSprop", {"lr": 0.01}),
    (RMSProp, ref_rmsprop, "RMSprop", {"lr": 0.01, "alpha": 0.9, "momentum": 0.5}),
    (RMSProp, ref_rmsprop, "RMSprop", {"lr": 0.01, "centered": True, "weight_decay": 0.05}),
    (RMSProp, ref_rmsprop, "RMSprop", {"lr": 0.005, "centered": True, "momentum": 0.9}),
    (Adagrad, ref_adagrad, "Adagrad", {"lr": 0.1}),
    (Adagrad, ref_adagrad, "Adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1}),
    (Adagrad, ref_adagrad, "Adagrad", {"lr": 0.1, "initial_accumulator_value": 0.5}),
]
IDS = [f"{cls.__name__}-{i}" for i, (cls, *_rest) in enumerate(OPTIMIZERS)]


def problem(seed: int = 0):
    """Initial parameters and 20 steps of gradients; ``b`` has none at steps 3, 7 and 8."""
    rng = np.random.default_rng(seed)
    params = {"W": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
    grads = [
        {
            ("W",): rng.standard_normal((3, 4)),
            ("b",): None if step in (3, 7, 8) else rng.standard_normal(4),
        }
        for step in range(STEPS)
    ]
    return params, grads


def run_nnflow(cls, kwargs, params, grads):
    params = {k: v.copy() for k, v in params.items()}
    ids = {k: id(v) for k, v in params.items()}
    opt = cls(params, **kwargs)
    for g in grads:
        opt.step({path: None if x is None else x.copy() for path, x in g.items()})
    assert {k: id(v) for k, v in params.items()} == ids, "updates must happen in place"
    return params, opt


@pytest.mark.parametrize("cls, ref, torch_name, kwargs", OPTIMIZERS, ids=IDS)
def test_matches_formula(cls, ref, torch_name, kwargs):
    params, grads = problem()
    got, opt = run_nnflow(cls, kwargs, params, grads)
    for name in params:
        want = ref(params[name], [g[(name,)] for g in grads], **kwargs)
        np.testing.assert_allclose(got[name], want, rtol=1e-12, atol=1e-14, err_msg=name)
    assert opt.state[("W",)]["step"] == STEPS and opt.state[("b",)]["step"] == STEPS - 3


@pytest.mark.parametrize("cls, ref, torch_name, kwargs", OPTIMIZERS, ids=IDS)
def test_matches_pytorch(cls, ref, torch_name, kwargs):
    torch = pytest.importorskip("torch")
    params, grads = problem(seed=1)
    got, _ = run_nnflow(cls, kwargs, params, grads)
    tensors = {
        k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()
    }
    opt = getattr(torch.optim, torch_name)(list(tensors.values()), **kwargs)
    for g in grads:
        for name, t in tensors.items():
            x = g[(name,)]
            t.grad = None if x is None else torch.tensor(x)
        opt.step()
    for name, t in tensors.items():
        np.testing.assert_allclose(got[name], t.detach().numpy(), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("cls, ref, torch_name, kwargs", OPTIMIZERS, ids=IDS)
def test_float32_stays_float32_and_state_is_per_path(cls, ref, torch_name, kwargs):
    params = {"W": np.ones((2, 3), np.float32), "layers": [{"bias": np.zeros(3, np.float32)}]}
    opt = cls(params, **kwargs)
    opt.step({("W",): np.ones((2, 3), np.float32), ("layers", 0, "bias"): np.ones(3, np.float32)})
    assert params["W"].dtype == np.float32 and params["layers"][0]["bias"].dtype == np.float32
    assert set(opt.state) == {("W",), ("layers", 0, "bias")}
    for path, state in opt.state.items():
        for name, value in state.items():
            if name != "step":
                assert value.shape == opt._param(path).shape and value.dtype == np.float32


def test_rmsprop_has_pytorch_spelling_too():
    assert RMSprop is RMSProp


def test_with_ad_grad_on_a_model_object():
    class Net:
        def __init__(self):
            self.W, self.b = np.full((2, 2), 0.5), np.zeros(2)

    net, x = Net(), np.array([1.0, 2.0])
    opt = SGD(net, lr=0.1)
    W = net.W
    for _ in range(3):
        _, g = ad.grad(lambda m: np.sum((m.W @ x + m.b) ** 2), net)
        opt.step(g[0])
    assert net.W is W and float(np.sum((net.W @ x + net.b) ** 2)) < 4.5


def test_per_path_options_no_weight_decay_on_biases():
    params = {"weight": np.ones(2), "bias": np.ones(2)}
    opt = AdamW(params, lr=0.1, weight_decay=0.5, options={"bias": {"weight_decay": 0.0}})
    opt.step({("weight",): np.zeros(2), ("bias",): np.zeros(2)})
    assert params["weight"].tolist() == [0.95, 0.95] and params["bias"].tolist() == [1.0, 1.0]


def test_options_by_predicate_and_glob_later_wins():
    params = {"enc": {"w": np.ones(1)}, "dec": {"w": np.ones(1)}}
    opt = SGD(
        params,
        lr=1.0,
        options={
            "enc.*": {"lr": 0.5},
            (lambda path: path[-1] == "w" and path[0] == "enc"): {"lr": 0.25},
        },
    )
    opt.step({("enc", "w"): np.ones(1), ("dec", "w"): np.ones(1)})
    assert params["enc"]["w"].tolist() == [0.75] and params["dec"]["w"].tolist() == [0.0]


def test_per_path_lr_is_scaled_by_schedules():
    params = {"a": np.zeros(1), "b": np.zeros(1)}
    opt = SGD(params, lr=1.0, options={"b": {"lr": 0.1}})
    opt.lr = 0.5  # what a schedule does
    assert opt.hyper_for(("a",))["lr"] == 0.5 and math.isclose(opt.hyper_for(("b",))["lr"], 0.05)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: SGD(p, lr=-1.0), "SGD: lr must be >= 0, got -1.0"),
        (lambda p: SGD(p, lr=0.1, nesterov=True), "nesterov"),
        (lambda p: Adam(p, betas=(0.9, 1.0)), "Adam: betas[1] must be in [0, 1), got 1.0"),
        (lambda p: Adam(p, eps=-1.0), "eps must be >= 0"),
        (lambda p: RMSProp(p, momentum=-0.5), "RMSProp: momentum must be >= 0"),
        (lambda p: Adagrad(p, lr_decay=-1.0), "Adagrad: lr_decay must be >= 0"),
        (lambda p: Adam(p, options={"*.bias": {"momentum": 0.9}}), "unknown hyper-parameter"),
        (lambda p: Adam(p, options={"*.bias": {"weight_decay": -1}}), "options for '*.bias'"),
        (lambda p: Adam(p, max_grad_norm=0.0), "max_grad_norm must be > 0"),
    ],
)
def test_bad_hyper_parameters_are_named(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make({"w": np.zeros(2)})


def test_step_errors_name_the_path():
    params = {"w": np.zeros(2)}
    opt = SGD(params, lr=0.1)
    with pytest.raises(KeyError, match="no parameter at 'layers.0.weight'"):
        opt.step({("layers", 0, "weight"): np.zeros(2)})
    with pytest.raises(ValueError, match=r"gradient for 'w' has shape \(3,\).*shape \(2,\)"):
        opt.step({("w",): np.zeros(3)})
    params["w"].flags.writeable = False
    with pytest.raises(ValueError, match="cannot update 'w' in place"):
        opt.step({("w",): np.ones(2)})


def test_builtin_clipping_before_the_update():
    params = {"w": np.zeros(2)}
    grads = {("w",): np.array([3.0, 4.0])}
    SGD(params, lr=1.0, max_grad_norm=1.0).step(grads)
    np.testing.assert_allclose(params["w"], [-0.6, -0.8], rtol=1e-5)
    np.testing.assert_allclose(grads[("w",)], [0.6, 0.8], rtol=1e-5)  # clipped in place
    params = {"w": np.zeros(2)}
    SGD(params, lr=1.0, max_grad_value=0.5).step({("w",): np.array([3.0, -0.25])})
    assert params["w"].tolist() == [-0.5, 0.25]


def test_adam_allocates_only_temporaries():
    """The state arrays are made once; a step reuses them (same objects, same buffers)."""
    params = {"w": np.ones(1000)}
    opt = Adam(params, lr=0.1, amsgrad=True)
    opt.step({("w",): np.ones(1000)})
    before = {k: (id(v), v.ctypes.data) for k, v in opt.state[("w",)].items() if k != "step"}
    opt.step({("w",): np.ones(1000)})
    after = {k: (id(v), v.ctypes.data) for k, v in opt.state[("w",)].items() if k != "step"}
    assert before == after


def test_sgd_step_allocates_no_parameter_sized_temporary():
    """``param -= lr * grad`` would allocate ``lr * grad`` every step; SGD reuses one buffer
    (shared by parameters of one shape, so both must still get their own update)."""
    import tracemalloc

    params = {"a": np.ones((256, 256)), "b": np.full((256, 256), 2.0)}
    grads = {("a",): np.full((256, 256), 3.0), ("b",): np.full((256, 256), 5.0)}
    opt = SGD(params, lr=0.5, momentum=0.9)
    opt.step(grads)  # the first step makes the momentum buffers and the scratch
    tracemalloc.start()
    try:
        opt.step(grads)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 256 * 8 // 4  # well under one 512 KiB parameter-sized array
    # momentum buffer after two steps: 0.9 g + g = 1.9 g; p = p0 - 0.5 (g + 1.9 g)
    np.testing.assert_allclose(params["a"], 1 - 0.5 * 2.9 * 3.0)
    np.testing.assert_allclose(params["b"], 2 - 0.5 * 2.9 * 5.0)


def test_state_template_and_to():
    params = {"w": np.zeros((2, 2), np.float32)}
    opt = RMSProp(params, momentum=0.9, centered=True)
    template = opt.state_template(("w",))
    assert sorted(template) == ["grad_avg", "momentum_buffer", "square_avg", "step"]
    opt.step({("w",): np.ones((2, 2), np.float32)})
    assert opt.to("cpu") is opt and opt.state[("w",)]["square_avg"].dtype == np.float32
    assert "RMSProp(lr=0.01" in repr(opt)


@pytest.mark.parametrize("cls, ref, torch_name, kwargs", OPTIMIZERS, ids=IDS)
def test_every_device_matches_cpu(device, cls, ref, torch_name, kwargs):
    params, grads = problem()
    want, _ = run_nnflow(cls, kwargs, params, grads)
    on_device = to_device(params, device)
    opt = cls(on_device, **kwargs)
    for g in grads:
        opt.step(to_device(g, device))
    for name in params:
        assert device_of(on_device[name]) == device
        np.testing.assert_allclose(to_device(on_device[name], "cpu"), want[name], rtol=1e-10)
    for state in opt.state.values():
        assert all(device_of(v) == device for k, v in state.items() if k != "step")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_update_kernel_is_bitwise_numpys(monkeypatch, dtype):
    """The one-pass update (``nnflow.optim.update_kernels``) against the scratch-array path:
    the same bits, for C-ordered and transposed parameters; other layouts and dtypes, and a
    gradient that is the parameter itself, take NumPy; the kernel runs where it should."""
    pytest.importorskip("numba")
    from nnflow import jit
    from nnflow.optim import sgd as sgd_module

    calls = []
    real = sgd_module.SGD_UPDATE
    fake = jit.Kernel(real.fn)
    fake.__dict__["compiled"] = lambda p, g, lr: calls.append(p.size) or real.compiled(p, g, lr)
    monkeypatch.setattr(sgd_module, "SGD_UPDATE", fake)
    rng = np.random.default_rng(9)
    base = {
        "w": rng.normal(size=(7, 5)).astype(dtype),
        "t": np.ascontiguousarray(rng.normal(size=(5, 3)).astype(dtype)).T,
        "mixed": rng.normal(size=4).astype(dtype),
    }
    grads = {
        ("w",): rng.normal(size=(7, 5)).astype(dtype),
        ("t",): np.ascontiguousarray(rng.normal(size=(5, 3)).astype(dtype)).T,
        ("mixed",): rng.normal(size=4).astype(np.float32 if dtype == np.float64 else np.float64),
    }
    results = []
    for flag in ("0", "1"):
        monkeypatch.setenv("NNFLOW_NUMBA", flag)
        params = {k: v.copy(order="K") for k, v in base.items()}
        SGD(params, lr=0.37).step(grads)
        results.append(params)
    for key in base:
        assert results[1][key].tobytes() == results[0][key].tobytes(), key
    assert calls == [35, 15]
    params = {"w": base["w"].copy()}
    SGD(params, lr=0.5).step({("w",): params["w"]})  # the gradient is the parameter: NumPy
    np.testing.assert_array_equal(params["w"], base["w"] * dtype(0.5))
