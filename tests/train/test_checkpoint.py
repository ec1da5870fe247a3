"""HDF5 checkpoints: round trips, layout, validation listing every problem, no pickle."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
from trainkit import ROOT, arrays, assert_same_arrays, classify, make_model

from nnflow import ad
from nnflow.optim import SGD, Adam
from nnflow.train import CheckpointError, describe, load, save
from nnflow.train.checkpoint import encode, from_json, generators, to_json


def trained(seed: int = 0, steps: int = 3):
    """A model and Adam with non-trivial state (moments, BatchNorm statistics, used generator)."""
    model, opt = make_model(seed), None
    opt = Adam(model, lr=1e-2, amsgrad=True)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        batch = (rng.random((16, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, 16))
        _, g = ad.grad(classify, model, batch, wrt=(0,))
        opt.step(g[0])
    return model, opt


def test_round_trip_restores_everything(tmp_path):
    model, opt = trained(0)
    path = tmp_path / "run.h5"
    save(path, model, opt, note="hello", sizes=[1, 2])
    other, other_opt = trained(seed=5, steps=1)
    assert load(path, other, other_opt) == {"note": "hello", "sizes": [1, 2]}
    assert_same_arrays(arrays(model), arrays(other))
    assert other_opt.state.keys() == opt.state.keys() and other_opt.lr == opt.lr
    for key, state in opt.state.items():
        assert other_opt.state[key]["step"] == state["step"] == 3
        for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            np.testing.assert_array_equal(other_opt.state[key][name], state[name])
    drop, other_drop = model.layers[3].rng, other.layers[3].rng
    assert other_drop is not drop and other_drop.random() == drop.random()  # same stream


def test_layout_mirrors_the_model(tmp_path):
    model, opt = trained()
    save(tmp_path / "run.h5", model, opt)
    with h5py.File(tmp_path / "run.h5") as f:
        assert f.attrs["format"] == "nnflow-checkpoint" and f.attrs["model_class"].endswith("Chain")
        assert f["model/layers/1/weight"].shape == (32, 64)
        assert f["model/layers/2/running_mean"].attrs["kind"] == "buffer"
        assert f["model/layers/1/weight"].attrs["kind"] == "parameter"
        assert f["optimizer/state/layers/1/weight/exp_avg"].shape == (32, 64)
        assert f["optimizer/state/layers/1/weight/step"][()] == 3
        assert from_json(f["optimizer"].attrs["hyper"])["amsgrad"] is True
        assert from_json(f["rng"].attrs["layers/3/rng"])["bit_generator"] == "PCG64"
        assert list(f["model/layers/1"]) == ["weight", "bias"]  # creation order, not sorted
    text = describe(tmp_path / "run.h5")
    assert re.search(r"layers\.1\.weight\s+float32\[32, 64\]\s+parameter", text)
    assert "layers.2.running_var" in text and "optimizer: Adam(lr=0.01" in text
    assert "rng: layers.3.rng  PCG64" in text


def test_every_problem_is_listed_and_nothing_changes(tmp_path):
    model, opt = trained()
    save(tmp_path / "run.h5", model, opt)
    other = make_model(1)
    other.layers[1].weight = np.zeros((32, 64), np.float64)  # dtype differs
    other.layers[4].weight = np.zeros((5, 32), np.float32)  # shape differs
    del other.layers[4].bias  # missing from the model: unexpected in the file
    other.extra = np.zeros(3, np.float32)  # missing from the file
    other.layers[3].rng = None  # a generator the file has and the model has not
    before = arrays(other)
    with pytest.raises(CheckpointError) as info:
        load(tmp_path / "run.h5", other, SGD(other, lr=0.1))
    problems = "\n".join(info.value.problems)
    assert "model: missing 'extra' (float32[3]): not in the file" in problems
    assert "model: unexpected 'layers.4.bias' (float32[10]) in the file" in problems
    assert "'layers.1.weight' has dtype float32 in the file but float64 in the model" in problems
    assert "'layers.4.weight' has shape (10, 32) in the file but (5, 32) in the model" in problems
    assert "optimizer: the file holds Adam state, the optimizer is SGD" in problems
    assert "rng: the file has state for a generator at 'layers.3.rng', the model none" in problems
    assert len(info.value.problems) == 6 and str(tmp_path / "run.h5") in str(info.value)
    assert_same_arrays(before, arrays(other))  # untouched


def test_optimizer_state_mismatches_are_listed(tmp_path):
    model, opt = trained()
    save(tmp_path / "run.h5", model, opt)
    plain = Adam(make_model(), lr=1e-3)  # no amsgrad: one entry fewer per path
    with pytest.raises(CheckpointError, match=r"has entries \['exp_avg', 'exp_avg_sq', "):
        load(tmp_path / "run.h5", plain.model, plain)
    assert plain.state == {} and plain.lr == 1e-3
    save(tmp_path / "bare.h5", model)
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        load(tmp_path / "bare.h5", model, opt)


def test_missing_truncated_and_foreign_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere.h5' \(1 problem\):\n  - the file does not"):
        load(tmp_path / "nowhere.h5", make_model())
    model, opt = trained()
    save(tmp_path / "run.h5", model, opt)
    data = (tmp_path / "run.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "cut.h5"))):
        load(tmp_path / "cut.h5", make_model(), Adam(make_model(), amsgrad=True))
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(CheckpointError, match="not a readable HDF5 file"):
        load(tmp_path / "text.h5", make_model())
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(2)
    with pytest.raises(CheckpointError, match="not an nnflow checkpoint"):
        load(tmp_path / "other.h5", make_model())


def test_object_and_string_datasets_are_refused(tmp_path):
    params = {"w": np.zeros(2, np.float32), "names": np.zeros(1, np.float32)}
    save(tmp_path / "run.h5", params)
    with h5py.File(tmp_path / "run.h5", "a") as f:
        del f["model/names"]
        f.create_dataset("model/names", data=["a"], dtype=h5py.string_dtype())
        del f["model/w"]
        f.create_dataset("model/w", (2,), dtype=h5py.vlen_dtype(np.float32))
    with pytest.raises(CheckpointError) as info:
        load(tmp_path / "run.h5", params)
    assert all("refused" in p or "dtype" in p for p in info.value.problems)
    assert len(info.value.problems) == 2


def test_no_pickle_anywhere_in_checkpoint_code():
    for name in ("checkpoint.py", "validate.py", "trainer.py"):
        source = (ROOT / "nnflow" / "train" / name).read_text()
        assert "pickle" not in source.replace("no pickle", "").replace("unpickled", ""), name


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(TypeError, match="metadata 'when' is not JSON-serializable"):
        save(tmp_path / "x.h5", {"w": np.zeros(1)}, when=object())
    assert not (tmp_path / "x.h5").exists()


def test_generators_of_other_kinds_and_json_helpers(tmp_path):
    class Holder:
        def __init__(self, seed):
            self.w = np.zeros(2)
            self.mt = np.random.Generator(np.random.MT19937(seed))  # state holds an array

    a, b = Holder(1), Holder(2)
    a.mt.random(5)
    save(tmp_path / "mt.h5", a)
    load(tmp_path / "mt.h5", b)
    assert b.mt.random() == a.mt.random()
    assert list(generators({"x": [a]})) == [("x", 0, "mt")]
    assert encode(("a/b", 0, ".x", "")) == "a%2Fb/0/%2Ex/%00"
    assert from_json(to_json({"v": np.float32(1.5), "i": np.int64(2)})) == {"v": 1.5, "i": 2}


def test_dtype_mismatch_is_an_error_not_a_cast(tmp_path):
    save(tmp_path / "f64.h5", {"w": np.zeros(2)})
    target = {"w": np.ones(2, np.float32)}
    with pytest.raises(CheckpointError, match="float64 in the file but float32 in the model"):
        load(tmp_path / "f64.h5", target)
    assert target["w"].tolist() == [1.0, 1.0]
