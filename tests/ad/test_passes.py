"""The optimisation passes and the memory planner, each on its own small graphs."""

from __future__ import annotations

import numpy as np
import pytest

from nnflow import ad
from nnflow.ad.memory import out_kind, plan
from nnflow.ad.passes import cse, dce, from_tape, optimize, simplify
from nnflow.ad.tape import _fn_name

RNG = np.random.default_rng(0)


def names(graph):
    return [_fn_name(op.fn) for op in graph.ops if not op.is_input]


def grad_graph(f, *args, wrt=None):
    """The forward+backward graph of ``ad.grad(f, *args)``, as compile_grad records it."""

    def step(*a):
        value, grads = ad.grad(f, *a, wrt=wrt)
        return value, tuple(grads)

    _, tape = ad.trace(step, *args)
    return from_tape(tape), tape


# -- dce ------------------------------------------------------------------------------------
def test_dce_drops_unused_forward_values_and_keeps_outputs():
    _, tape = ad.trace(lambda x: (np.cos(x), np.exp(x), np.sin(x))[2] * 2, np.ones(3))
    assert names(dce(from_tape(tape))) == ["sin", "multiply"]


def test_dce_keeps_guards_and_random_draws():
    import nnflow.random as nr

    rng = nr.default_rng(0)

    def f(x):
        nr.normal(rng, 3)  # unused, but skipping it would change later draws
        return x * 2 if float(np.sum(x)) > 0 else x

    _, tape = ad.trace(f, np.ones(3))
    kept = names(dce(from_tape(tape)))
    assert "draw_normal" in kept and "guard_float" in kept


def test_dce_removes_nothing_gradient_needs():
    graph, tape = grad_graph(lambda x: np.sum(np.tanh(x) ** 2), RNG.normal(size=4))
    x = RNG.normal(size=4)
    np.testing.assert_array_equal(ad.compile(tape).play(x)[1][0], tape.play(x)[1][0])
    assert len(dce(graph).ops) <= len(graph.ops)


def test_wrt_records_no_gradient_work_for_other_arguments():
    W, x = RNG.normal(size=(3, 4)), RNG.normal(size=(4, 5))
    both, _ = grad_graph(lambda W, x: np.sum(W @ x), W, x)
    only_w, _ = grad_graph(lambda W, x: np.sum(W @ x), W, x, wrt=(0,))
    assert names(optimize(both)).count("matmul") == 3
    assert names(optimize(only_w)).count("matmul") == 2


# -- cse ------------------------------------------------------------------------------------
def test_cse_merges_identical_calls_only():
    _, tape = ad.trace(
        lambda x: np.sin(x) + np.sin(x) * np.sin(x + 0.0) + (x * 2.0 + x * -0.0), np.ones(2)
    )
    merged = names(cse(from_tape(tape)))
    assert merged.count("sin") == 2  # sin(x) twice -> once; sin(x + 0.0) is another value
    assert merged.count("multiply") == 3  # x * 2.0 and x * -0.0 differ (0.0 vs -0.0)


def test_cse_never_merges_random_draws():
    import nnflow.random as nr

    rng = nr.default_rng(0)
    _, tape = ad.trace(
        lambda x: x + nr.normal(rng, 2, dtype=np.float64) + nr.normal(rng, 2, dtype=np.float64),
        np.ones(2),
    )
    assert names(cse(from_tape(tape))).count("draw_normal") == 2


# -- simplify -------------------------------------------------------------------------------
def test_simplify_removes_the_ones_cotangent_so_exp_reuses_its_output():
    graph, tape = grad_graph(lambda x: np.sum(np.exp(x)), RNG.normal(size=5))
    assert "multiply" in names(graph)  # ones * exp(x), as the rules record it
    simple = dce(simplify(graph))
    assert names(simple) == ["exp", "sum"]  # the gradient is the forward value itself
    x = RNG.normal(size=5)
    np.testing.assert_array_equal(ad.compile(tape).play(x)[1][0], tape.play(x)[1][0])


def test_simplify_turns_broadcast_sums_into_one_reduction():
    b, h = RNG.normal(size=4), RNG.normal(size=(4, 6))
    graph, tape = grad_graph(lambda b, h: np.sum(np.exp(h + b[:, None])), b, h, wrt=(0,))
    assert "_scatter_add" in names(graph)
    simple = names(optimize(graph))
    assert "_scatter_add" not in simple and "reshape" not in simple
    assert simple.count("sum") == 2  # the loss and the gradient of b (axis 1, no keepdims)
    np.testing.assert_array_equal(ad.compile(tape).play(b, h)[1][0], tape.play(b, h)[1][0])


def test_simplify_keeps_broadcast_sums_of_leading_axes_exact():
    b, h = RNG.normal(size=6), RNG.normal(size=(4, 6))
    graph, tape = grad_graph(lambda b, h: np.sum(np.tanh(h + b)), b, h, wrt=(0,))
    assert "reshape" not in names(optimize(graph))
    np.testing.assert_array_equal(ad.compile(tape).play(b, h)[1][0], tape.play(b, h)[1][0])


def test_simplify_leaves_non_ones_alone():
    _, tape = ad.trace(lambda x: x * np.full(3, 2.0) + x * np.ones(3, np.float32), np.ones(3))
    assert names(simplify(from_tape(tape))).count("multiply") == 1


# -- memory ---------------------------------------------------------------------------------
def test_out_kind():
    from nnflow.ad.passes import Op

    a = np.ones((2, 2))
    assert out_kind(Op(2, np.exp, (a,), value=a)) == "elementwise"
    assert out_kind(Op(2, np.matmul, (a, a), value=a)) == "out"
    assert out_kind(Op(2, np.sum, (a,), {"axis": 0}, value=a[0])) == "out"
    assert out_kind(Op(2, np.sum, (a,), value=np.float64(1))) is None  # scalars allocate
    assert out_kind(Op(2, np.transpose, (a,), value=a)) is None


def test_planner_writes_in_place_into_dying_values_and_reuses_buffers():
    _, tape = ad.trace(lambda x: np.sum(np.tanh(np.exp(x * 2.0) + 1.0) * 3.0), np.ones((8, 8)))
    p = plan(from_tape(tape))
    assert len(p.buffers) == 1  # one buffer for the whole elementwise chain
    assert sum(kind == "inplace" for kind, _ in p.dest.values()) == 4


def test_planner_never_writes_inputs_constants_or_live_views():
    def f(x):
        v = np.exp(x)
        t = v.T  # a view of v, read after v's last direct use
        w = np.sin(v)
        return np.sum(w) + np.sum(t * 2.0)

    x = RNG.normal(size=(3, 3))
    _, tape = ad.trace(f, x)
    graph = from_tape(tape)
    p = plan(graph)
    targets = {i for kind, i in p.dest.values() if kind == "inplace"}
    exp_index = next(op.index for op in graph.ops if op.fn is np.exp)
    assert exp_index not in targets  # sin(v) cannot overwrite v while v.T is still to be read
    assert all(not op.is_input for op in graph.ops if op.index in targets)
    before = x.copy()
    assert ad.compile(tape).play(x) == tape.play(x)
    np.testing.assert_array_equal(x, before)


def test_planner_gives_escaping_values_their_own_buffers_and_state_none():
    class Box:
        def __init__(self):
            self.h = np.zeros(4)

    def f(box, x):
        box.h = np.tanh(x + box.h)
        return np.sum(box.h * 2.0)

    _, tape = ad.trace(f, Box(), np.ones(4))
    graph = from_tape(tape)
    p = plan(graph)
    state = graph.state[0][2].index
    assert state not in p.dest and state not in p.planned
    out_buffers = [p.dest[i][1] for i in graph.escaping() if i in p.dest]
    others = [d[1] for i, d in p.dest.items() if d[0] == "buffer" and i not in graph.escaping()]
    assert not set(out_buffers) & set(others)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_step_plan_is_the_hand_written_one(dtype):
    """W @ x + b, exp, sum: one big buffer, in place add and exp, gradients in buffers."""
    W, b, x = (RNG.normal(size=s).astype(dtype) for s in [(6, 4), (6,), (4, 9)])
    graph, tape = grad_graph(
        lambda W, b, x: np.sum(np.exp(W @ x + b[:, None])), W, b, x, wrt=(0, 1)
    )
    graph = optimize(graph)
    p = plan(graph)
    assert names(graph) == ["matmul", "getitem", "add", "exp", "sum", "sum", "swapaxes", "matmul"]
    assert len(p.buffers) == 3
    assert sorted(kind for kind, _ in p.dest.values()) == ["buffer"] * 3 + ["inplace"] * 2
    big = [n for n in p.buffers if n == W.itemsize * 6 * 9]
    assert len(big) == 1
