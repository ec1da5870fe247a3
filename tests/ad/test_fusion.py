"""Elementwise fusion (``nnflow.ad.fusion``), tested without a GPU.

Three layers of checks: the planner's groups on recorded tapes; the generated CUDA-C text; and
its semantics, by running the generated source through ``fusion_numpy`` (a NumPy interpreter
of C expressions, with C's conversion rules) against the unfused NumPy results, op by op for
every template and special values, and end to end for compiled training steps whose graph is
fused and memory-planned as on the GPU.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import nnflow
from nnflow import ad, layers, losses
from nnflow.ad import fusion, fusion_numpy, registry
from nnflow.ad.fusion import TEMPLATES, FusedKernel, plan_fusion
from nnflow.ad.memory import plan
from nnflow.ad.passes import from_tape, optimize
from nnflow.ad.tape import _fn_name

KERNELS = fusion_numpy.KERNELS


def graph_of(f, *args):
    """The optimised graph of ``f``'s forward tape."""
    return optimize(from_tape(ad.trace(f, *args)[1]))


def grad_graph(f, *args):
    """The optimised forward+backward graph ``compile_grad`` compiles for ``f``."""
    tape = ad.compile_grad(f).tape(*args)
    return optimize(from_tape(tape))


def names(group) -> list[str]:
    ops = [_fn_name(op.fn) for op in group.ops]
    return ops + (["sum"] if group.reduction is not None else [])


def test_docstring_examples():
    import doctest

    for module in (fusion, fusion_numpy):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# -- the planner ------------------------------------------------------------------------------
def test_forward_and_backward_chains_of_a_step():
    def f(x, w):
        return np.sum(np.exp(np.tanh(x * w) + 1.0) * 2.0)

    x = np.ones((3, 4))
    groups = plan_fusion(grad_graph(f, x, x))
    # tanh and exp are read by the backward pass too, so each ends a chain; the backward
    # chain dy * exp(.) * (1 - tanh^2) is one kernel; the two products by x and w are alone
    assert [names(g) for g in groups] == [
        ["multiply", "tanh"],
        ["add", "exp"],
        ["multiply", "sum"],
        ["multiply", "multiply", "subtract", "multiply"],
    ]


def test_a_value_read_twice_ends_its_chain():
    groups = plan_fusion(graph_of(lambda x: np.exp(x) * 2.0 + np.exp(x) * 3.0, np.ones(3)))
    assert [names(g) for g in groups] == [["multiply", "multiply", "add"]]  # exp: alone
    graph = graph_of(lambda x: np.exp(x) * np.exp(x), np.ones(3))
    assert plan_fusion(graph) == []  # x*x of one value: read twice by the same op


def test_values_leaving_the_step_are_not_absorbed():
    graph = graph_of(lambda x: (np.tanh(x * 2.0), np.tanh(x * 2.0) + 1.0), np.ones(3))
    assert [names(g) for g in plan_fusion(graph)] == [["multiply", "tanh"]]


def test_non_elementwise_ops_break_chains():
    def f(x, w):
        return np.tanh(np.exp(x) @ w + 1.0).reshape(-1) * 2.0

    groups = plan_fusion(graph_of(f, np.ones((2, 3)), np.ones((3, 2))))
    assert [names(g) for g in groups] == [["add", "tanh"]]  # exp | matmul | reshape | multiply


def test_unsupported_calls_are_left_alone():
    x = np.ones(3)
    for f, arg in [
        (lambda x: np.tanh(np.add(x, 1.0, dtype=np.float32)), x),  # a keyword argument
        (lambda x: np.exp(x * 2.0), np.ones(3, np.complex128)),  # no complex kernels
        (lambda x: np.exp(x * 2.0), np.ones(3, np.float16)),  # nor half precision
        (lambda x: np.floor_divide(x, 2.0) + 1.0, x),  # no template
    ]:
        assert plan_fusion(graph_of(f, arg)) == []


def test_sum_ends_a_chain_as_a_reduction_kernel():
    x = np.ones((4, 5), np.float32)
    graph = graph_of(lambda x: np.sum(np.exp(x) * x, axis=(1,), keepdims=True), x)
    [group] = plan_fusion(graph)
    assert names(group) == ["exp", "multiply", "sum"]
    fused = fusion.fuse(graph, KERNELS)
    [op] = [op for op in fused.ops if isinstance(op.fn, FusedKernel)]
    assert op.kwargs == {"axis": (1,), "keepdims": True} and op.fn.reduction
    for f in (
        lambda x: np.sum(np.exp(x) * x, dtype=np.float64),  # a dtype: NumPy's own sum
        lambda x: np.mean(np.exp(x) * x),  # not a sum
    ):
        assert all(g.reduction is None for g in plan_fusion(graph_of(f, x)))
    ints = graph_of(lambda i: np.sum(i * 2 + 1), np.arange(4))
    assert all(g.reduction is None for g in plan_fusion(ints))  # integer sums widen


def test_broadcast_operands_are_leaves_of_one_kernel():
    def f(x, b, c):
        return np.tanh(x * b + c) * 0.5

    graph = graph_of(f, np.ones((3, 4)), np.ones(4), np.ones((3, 1)))
    [group] = plan_fusion(graph)
    assert names(group) == ["multiply", "add", "tanh", "multiply"]
    assert [leaf.index for leaf in group.leaves] == [1, 2, 3]


# -- the generated source ---------------------------------------------------------------------
def kernels_of(f, *args):
    graph = fusion.fuse(graph_of(f, *args), KERNELS)
    return [op.fn for op in graph.ops if isinstance(op.fn, FusedKernel)]


def test_source_of_a_float32_chain():
    x = np.ones((2, 3), np.float32)
    [k] = kernels_of(lambda x, w: np.tanh(x * w + 1.0), x, x)
    assert k.in_params == "float32 in0, float32 in1" and k.out_params == "float32 out0"
    assert k.operation == "out0 = (tanh(((in0 * in1) + ((float)1.0))))"
    assert k.__nnflow_out_kind__ == "elementwise" and not k.reduction
    assert "ElementwiseKernel(nnflow_fused5" in k.source and repr(k).endswith("3 ops>")


def test_source_casts_where_numpy_converts():
    x32, w = np.ones((2, 3), np.float32), np.ones((2, 3))
    [k] = kernels_of(lambda x, w: np.maximum(x * 2, w), x32, w)
    assert k.in_params == "float32 in0, float64 in1"
    assert k.operation == "out0 = (nnf_maximum(((double)(in0 * ((float)2))), in1))"
    [k] = kernels_of(lambda x, i: np.exp(x) * (i + 1), x32, np.arange(3))
    assert k.operation == "out0 = (((double)(exp(in0))) * ((double)(in1 + ((long long)1))))"
    [k] = kernels_of(lambda a: (a + a) * a, np.ones(3, np.int8))
    assert k.operation == "out0 = ((signed char)(((signed char)(in0 + in0)) * in0))"


def test_source_of_a_reduction():
    [k] = kernels_of(lambda x: np.sum((x > 0) * x, axis=1, keepdims=True),
                     np.ones((2, 3), np.float32))  # fmt: skip
    assert k.reduction and k.__nnflow_out_kind__ == "out"
    assert k.operation == "(((float)(in0 > ((float)0))) * in0)" and k.reduce_type == "float"
    assert "reduce: a + b (identity 0, float)" in k.source


def test_non_finite_constants_are_kernel_arguments():
    [k] = kernels_of(lambda x: np.minimum(x * 2.0, np.inf) - 1.0, np.ones(3))
    assert k.in_params == "float64 in0, float64 in1"
    assert "in1" in k.operation and "inf" not in k.operation


def test_describe_lists_every_kernel():
    x = np.ones(3)
    graph = fusion.fuse(graph_of(lambda x: np.sum(np.exp(x * 2.0) * 3.0), x), KERNELS)
    text = fusion.describe(graph)
    assert "multiply(%1, 2.0); %3 = exp(%2); %4 = multiply(%3, 3.0); %5 = sum(%4)" in text
    assert "ReductionKernel" in text


# -- semantics: the interpreted source against NumPy ------------------------------------------
SPECIAL = np.array([-np.inf, -3.5, -1.0, -0.5, -0.0, 0.0, 0.25, 0.5, 1.0, 2.0, 7.0, np.inf, np.nan])


def _check_fused_equals_unfused(f, *args):
    graph = graph_of(f, *args)
    groups = plan_fusion(graph)
    assert groups, "nothing fused"
    defs = {op.index: op for op in graph.ops}
    fused = fusion.fuse(graph, KERNELS, groups)
    for op in fused.ops:
        if not isinstance(op.fn, FusedKernel):
            continue
        leaves = [defs[a.index].value if hasattr(a, "index") else a for a in op.args]
        with np.errstate(all="ignore"):
            got = op.fn(*leaves, **op.kwargs)
        want = defs[op.index].value
        assert got.dtype == want.dtype, (op.fn.source, got.dtype, want.dtype)
        if got.dtype.kind != "f":
            np.testing.assert_array_equal(got, want, err_msg=op.fn.source)
            continue
        # NumPy's SIMD exp/log and the libm calls inside its logaddexp differ in the last bit
        rtol = 1e-6 if got.dtype == np.float32 else 1e-14
        np.testing.assert_allclose(got, want, rtol=rtol, atol=0, err_msg=op.fn.source)
        same = np.signbit(got) == np.signbit(want)  # signed zeros (maximum, sign, abs...)
        assert (same | np.isnan(want)).all(), (op.fn.source, got, want)


UNARY = [u for u in TEMPLATES if u.nin == 1]
BINARY = [u for u in TEMPLATES if u.nin == 2]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ufunc", UNARY, ids=lambda u: u.__name__)
def test_every_unary_template_on_special_values(ufunc, dtype):
    x = SPECIAL.astype(dtype)
    with np.errstate(all="ignore"):
        _check_fused_equals_unfused(lambda x: ufunc(np.positive(x)), x)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ufunc", BINARY, ids=lambda u: u.__name__)
def test_every_binary_template_on_special_values(ufunc, dtype, monkeypatch):
    if registry.lookup(ufunc) is None:  # traceable only with an entry: a throw-away one
        info = registry.FnInfo(ufunc, ufunc.__name__, differentiable=False, plain=False)
        monkeypatch.setitem(registry._REGISTRY, ufunc, info)
    a = np.repeat(SPECIAL, len(SPECIAL)).astype(dtype)
    b = np.tile(SPECIAL, len(SPECIAL)).astype(dtype)
    with np.errstate(all="ignore"):
        _check_fused_equals_unfused(lambda a, b: ufunc(np.positive(a), b), a, b)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.bool_])
def test_integer_and_bool_chains(dtype):
    a = np.array([0, 1, 2, 5, 7, 100, 127], dtype=np.int64).astype(dtype)
    b = a[::-1].copy()

    def f(a, b):
        mixed = np.maximum(a, b) * a + np.minimum(a, b)
        return np.logical_and(mixed > b, np.logical_not(a == b)) | (a != b)

    with np.errstate(all="ignore"):
        _check_fused_equals_unfused(f, a, b)


def test_mixed_precision_and_broadcasting():
    x32 = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    b64, c = np.linspace(0.5, 2, 4), np.arange(3).reshape(3, 1)
    _check_fused_equals_unfused(lambda x, b, c: np.tanh(x * 0.7) * b + np.exp(c * 0.1), x32,
                                b64, c)  # fmt: skip
    _check_fused_equals_unfused(lambda x: np.sum(np.logaddexp(x, -x) * 2.0, axis=0), x32)


# -- end to end: compiled steps fused and planned as on the GPU --------------------------------
@pytest.fixture
def kernel_module(monkeypatch):
    """Compiled tapes see an array module with (interpreted) kernels: they fuse."""
    module = types.SimpleNamespace(
        ElementwiseKernel=KERNELS.ElementwiseKernel,
        ReductionKernel=KERNELS.ReductionKernel,
        empty=np.empty,
    )
    compile_module = sys.modules["nnflow.ad.compile"]
    monkeypatch.setattr(compile_module, "get_array_module", lambda *arrays: module)
    return module


def _variant(cg):
    return next(iter(cg._cache.values()))[0].compiled


def _mlp():
    return layers.Chain(layers.Linear(6, 16, activation="tanh", rng=0),
                        layers.Linear(16, 3, rng=1)).astype(np.float64)  # fmt: skip


def _classify(model, x, y):
    return losses.cross_entropy(model(x), y)


def test_compiled_step_fuses_and_matches_eager(kernel_module):
    model, x, y = _mlp(), np.random.default_rng(0).normal(size=(5, 6)), np.array([0, 2, 1, 1, 0])
    cg = ad.compile_grad(_classify, wrt=(0,))
    value, g = cg(model, x, y, copy=True)
    compiled = _variant(cg)
    fused = [op for op in compiled.graph.ops if isinstance(op.fn, FusedKernel)]
    assert len(fused) >= 3 and "fused" in compiled.source
    in_place = [op for op in fused if compiled.plan.dest.get(op.index, ("",))[0] == "inplace"]
    assert in_place, "the memory planner no longer writes fused kernels over dying operands"
    want_value, want = ad.grad(_classify, model, x, y, wrt=(0,))
    assert float(value) == pytest.approx(float(want_value), rel=1e-12)
    for path, grad in want[0].items():
        np.testing.assert_allclose(g[0][path], grad, rtol=1e-12, atol=1e-14)
    for scale in (0.5, 2.0):  # steady state: the buffers are reused, results stay right
        value, g = cg(model, x * scale, y)
        want_value, want = ad.grad(_classify, model, x * scale, y, wrt=(0,))
        assert float(value) == pytest.approx(float(want_value), rel=1e-12)
        for path, grad in want[0].items():
            np.testing.assert_allclose(g[0][path], grad, rtol=1e-12, atol=1e-14)


def test_lstm_step_fuses_its_gates(kernel_module):
    lstm = layers.LSTM(3, 4, rng=0).astype(np.float64)
    x = np.random.default_rng(1).normal(size=(2, 5, 3))

    def loss(m, x):
        out, (h, c) = m(x)
        return np.sum(out**2) + np.sum(np.tanh(c))

    cg = ad.compile_grad(loss, wrt=(0,))
    value, g = cg(lstm, x, copy=True)
    assert any(isinstance(op.fn, FusedKernel) for op in _variant(cg).graph.ops)
    want_value, want = ad.grad(loss, lstm, x, wrt=(0,))
    assert float(value) == pytest.approx(float(want_value), rel=1e-12)
    for path, grad in want[0].items():
        np.testing.assert_allclose(g[0][path], grad, rtol=1e-10, atol=1e-12)


def test_overlapping_operands_get_a_buffer_of_their_own(kernel_module):
    def f(a):
        e = np.exp(a)
        return np.sum(np.tanh(e * e.T) * 2.0)  # e and its transpose share memory

    a = np.random.default_rng(0).normal(size=(4, 4))
    _, tape = ad.trace(f, a)
    compiled = ad.compile(tape)
    [k] = [op for op in compiled.graph.ops if isinstance(op.fn, FusedKernel)]
    assert k.fn.reduction  # multiply, tanh, multiply, sum
    graph = fusion.fuse(graph_of(lambda a: np.tanh(np.exp(a) * np.exp(a).T), a), KERNELS)
    [op] = [op for op in graph.ops if isinstance(op.fn, FusedKernel)]
    assert op.fn.__nnflow_out_kind__ == "out"  # never written over an operand
    assert plan(graph).dest[op.index][0] == "buffer"
    np.testing.assert_allclose(compiled.play(a), f(a), rtol=1e-12)


def test_numpy_data_is_never_fused():
    cg = ad.compile_grad(lambda x: np.sum(np.tanh(x * 2.0) * 3.0))
    cg(np.ones(3))
    assert not any(isinstance(op.fn, FusedKernel) for op in _variant(cg).graph.ops)
    assert not fusion.supported(np)


def test_fused_trainer_epoch_on_the_gpu_stand_in(fake_gpu):
    from nnflow.data import DataLoader
    from nnflow.optim import Adam

    rng = np.random.default_rng(0)
    data = (rng.normal(size=(24, 6)), rng.integers(0, 3, 24))

    def fit(device):
        model = _mlp()
        loss = lambda m, batch: _classify(m, *batch)  # noqa: E731
        trainer = nnflow.Trainer(model, loss, Adam(model, lr=0.01), device=device,
                                 progress=False)  # fmt: skip
        return trainer.fit(DataLoader(data, 8, seed=0), 2)["loss"]

    on_gpu = fit("gpu")
    assert any(k.name.startswith("nnflow_fused") for k in fake_gpu.kernels)
    np.testing.assert_allclose(on_gpu, fit("cpu"), rtol=1e-12)
