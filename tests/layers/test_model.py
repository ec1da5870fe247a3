"""Model: parameter discovery, buffers, modes, devices, repr, errors, ad.grad on models."""

from __future__ import annotations

import numpy as np
import pytest

import nnflow
from nnflow import ad
from nnflow.layers import BatchNorm, Chain, Linear, Model, ShapeError
from nnflow.tree import buffer_paths, leaves


class Net(Model):
    def __init__(self):
        self.encoder = Linear(3, 4, rng=0, dtype=np.float64)
        self.blocks = [Linear(4, 4, rng=1, dtype=np.float64), {"scale": np.ones(4)}]
        self.steps = np.arange(3)  # integers are not parameters
        self.register_buffer("count", np.zeros(()))

    def forward(self, x):
        self.count = self.count + 1
        return self.blocks[0](self.encoder(x)) * self.blocks[1]["scale"]


def test_parameters_walk_attributes_lists_dicts_and_skip_buffers_and_integers():
    paths = [p for p, _ in Net().parameters()]
    assert paths == [
        ("encoder", "weight"),
        ("encoder", "bias"),
        ("blocks", 0, "weight"),
        ("blocks", 0, "bias"),
        ("blocks", 1, "scale"),
    ]
    assert Net().num_parameters() == 12 + 4 + 16 + 4 + 4


def test_buffers_are_listed_saved_and_absent_from_gradients():
    net = Net()
    assert [p for p, _ in net.named_buffers()] == [("count",)]
    assert set(net.state_dict()) == {p for p, _ in net.parameters()} | {("count",)}
    assert buffer_paths(net) == {("count",)}
    val, g = ad.grad(lambda m, x: np.sum(m(x)), net, np.ones((2, 3)))
    assert set(g[0]) == {p for p, _ in net.parameters()}
    assert ("count",) not in g[0]
    # state the function assigned is written back as a plain array
    assert type(net.count) is not ad.Tracer and float(net.count) == 1.0


def test_non_persistent_buffers_are_not_saved():
    class M(Model):
        def __init__(self):
            self.register_buffer("cache", np.zeros(2), persistent=False)

    m = M()
    assert list(m.named_buffers()) == []
    assert [p for p, _ in m.named_buffers(persistent_only=False)] == [("cache",)]
    assert m.state_dict() == {}


def test_gradcheck_skips_buffers_and_checks_every_parameter():
    net = Net()
    ad.gradcheck(lambda m, x: np.sum(np.tanh(m(x))), net, np.ones((2, 3)))


def test_train_eval_propagate_to_sub_models():
    class Holder(Model):
        def __init__(self):
            self.parts = [Linear(2, 2), {"norm": BatchNorm(2)}, Chain(BatchNorm(2))]

    net = Holder()
    net.eval()
    assert all(not m.training for _, m in net.modules())
    net.train()
    assert all(m.training for _, m in net.modules())
    assert [p for p, _ in net.modules()] == [
        (),
        ("parts", 0),
        ("parts", 1, "norm"),
        ("parts", 2),
        ("parts", 2, "layers", 0),
    ]


def test_to_cpu_moves_in_place_and_returns_the_model():
    net = Net()
    assert net.to("cpu") is net
    with pytest.raises(ValueError, match="unknown device"):
        net.to("tpu")


def test_astype_casts_parameters_and_buffers():
    net = Linear(2, 3, rng=0).astype(np.float64)
    assert net.weight.dtype == np.float64 and net.bias.dtype == np.float64


def test_tied_weights_appear_once():
    a = Linear(3, 3, rng=0)
    model = Chain(a, a)
    assert [p for p, _ in model.parameters()] == [("layers", 0, "weight"), ("layers", 0, "bias")]


def test_repr_prints_the_tree_with_counts_and_shapes():
    net = Chain(Linear(784, 128, activation="relu"), Linear(128, 10))
    text = repr(net)
    assert "Linear(784 => 128, relu),  # 100,480 parameters" in text
    assert "Linear(128 => 10),  # 1,290 parameters" in text
    assert text.endswith("# Total: 4 arrays, 101,770 parameters, 397.5 KiB")
    custom = repr(Net())
    assert "encoder: Linear(3 => 4)  # 16 parameters" in custom
    assert "count: float64[] (buffer)" in custom


def test_shape_error_names_the_layer_path_and_both_shapes():
    model = Chain(Linear(4, 128), Linear(128, 10), Linear(64, 10))
    with pytest.raises(ShapeError) as info:
        model(np.ones((32, 4), np.float32))
    expected = "layers.2 (Linear(64 => 10)) expected input (..., 64), got float32[32, 10]"
    assert str(info.value) == expected


def test_shape_error_path_through_nested_models():
    class Outer(Model):
        def __init__(self):
            self.body = {"head": Chain(Linear(2, 3))}

        def forward(self, x):
            return self.body["head"](x)

    with pytest.raises(ShapeError, match=r"^body\.head\.layers\.0 \(Linear\(2 => 3\)\)"):
        Outer()(np.ones((1, 5)))


def test_forward_must_be_defined():
    with pytest.raises(NotImplementedError, match="Model defines no forward"):
        Model()(1)


def test_public_names_are_exported():
    assert nnflow.Model is Model
    for name in ("layers", "functional", "losses", "init"):
        assert hasattr(nnflow, name)


def test_tree_leaves_without_buffers():
    net = Net()
    assert ("count",) in [p for p, _ in leaves(net)]
    assert ("count",) not in [p for p, _ in leaves(net, buffers=False)]
