"""nnflow.backend: array-module choice and device moves.

CPU behaviour is tested everywhere. CuPy's side is tested twice: with a stand-in module in
``sys.modules`` (the dispatch logic, on any machine) and with real CuPy on a GPU (skipped with
a reason where CuPy or a CUDA device is missing).
"""

import ast
import doctest
import pathlib
import subprocess
import sys
import types
from collections import OrderedDict, defaultdict, namedtuple

import numpy as np
import pytest

from nnflow import backend
from nnflow.backend import device_of, get_array_module, gpu_available, to_device

PACKAGE = pathlib.Path(backend.__file__).parent


def test_docstring_examples():
    result = doctest.testmod(backend)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize(
    "args",
    [(np.ones(3),), (np.float32(1.5),), (2.0,), ([1.0, 2.0],), (None,), (np.ones(2), 3, "s"), ()],
)
def test_get_array_module_is_numpy_for_host_data(args):
    assert get_array_module(*args) is np


def test_device_of_host_data_is_cpu():
    assert device_of(np.zeros((2, 3), dtype=np.float32)) == "cpu"
    assert device_of(1.0) == "cpu"


def test_to_cpu_returns_numpy_arrays_themselves():
    w = np.arange(6.0).reshape(2, 3)
    assert to_device(w, "cpu") is w


def test_to_cpu_rebuilds_nested_containers_with_their_types():
    Pair = namedtuple("Pair", "a b")
    w, b = np.ones((2, 2)), np.zeros(2)
    tree = {"layers": [(w, b), Pair(w, 3)], "lr": 0.1, "name": "mlp", "none": None}
    moved = to_device(tree, "cpu")
    assert moved is not tree and moved["layers"] is not tree["layers"]
    assert type(moved["layers"][0]) is tuple and type(moved["layers"][1]) is Pair
    assert moved["layers"][0][0] is w and moved["layers"][1].a is w and moved["layers"][1].b == 3
    assert (moved["lr"], moved["name"], moved["none"]) == (0.1, "mlp", None)


def test_to_device_keeps_dict_subclasses():
    ordered = to_device(OrderedDict(b=np.ones(1), a=np.zeros(1)), "cpu")
    assert type(ordered) is OrderedDict and list(ordered) == ["b", "a"]
    default = to_device(defaultdict(list, w=np.ones(1)), "cpu")
    assert type(default) is defaultdict and default["missing"] == []


def test_unknown_device_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError, match=r"'cuda'.*'cpu', 'gpu'"):
        to_device(np.ones(2), "cuda")


def test_gpu_request_without_cupy_names_the_device_and_the_fix(monkeypatch):
    missing = (None, "ModuleNotFoundError: No module named 'cupy'")
    monkeypatch.setattr(backend, "_load_cupy", lambda: missing)
    assert gpu_available() is False
    with pytest.raises(RuntimeError, match=r"device 'gpu'.*No module named 'cupy'.*nnflow\[gpu\]"):
        to_device([np.ones(2)], "gpu")


@pytest.mark.skipif(backend._load_cupy()[0] is not None, reason="CuPy is installed here")
def test_gpu_request_on_a_machine_without_cupy():
    assert gpu_available() is False
    with pytest.raises(RuntimeError, match="device 'gpu'.*CuPy could not be imported"):
        to_device(np.ones(2), "gpu")


def test_gpu_request_with_cupy_but_no_device_says_so(monkeypatch):
    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace()))
    fake.cuda.runtime.getDeviceCount = no_device
    monkeypatch.setattr(backend, "_load_cupy", lambda: (fake, ""))
    assert gpu_available() is False
    with pytest.raises(RuntimeError, match="device 'gpu'.*no usable CUDA device.*NoDevice"):
        to_device(np.ones(2), "gpu")


@pytest.fixture
def fake_cupy(monkeypatch):
    """A stand-in CuPy in sys.modules: enough for the dispatch logic, on any machine."""
    module = types.ModuleType("cupy")

    class ndarray:  # noqa: N801 (mirrors cupy.ndarray)
        def __init__(self, host):
            self.host = host

    module.ndarray = ndarray
    module.asnumpy = lambda a: a.host
    monkeypatch.setitem(sys.modules, "cupy", module)
    return module


class Wrapper:
    """Wraps an array the way an AD tracer does, announcing its module by the array API hook."""

    def __init__(self, xp):
        self.xp = xp

    def __array_namespace__(self):
        return self.xp


def test_cupy_arrays_and_wrappers_dispatch_to_cupy(fake_cupy):
    on_gpu = fake_cupy.ndarray(np.ones(2))
    assert get_array_module(on_gpu) is fake_cupy
    assert get_array_module(np.ones(2), 1.0, on_gpu) is fake_cupy
    assert get_array_module(Wrapper(fake_cupy)) is fake_cupy
    assert get_array_module(Wrapper(np), np.ones(2)) is np
    assert device_of(on_gpu) == "gpu" and device_of(Wrapper(fake_cupy)) == "gpu"
    assert device_of(np.ones(2)) == "cpu"


def test_to_cpu_brings_cupy_arrays_back(fake_cupy):
    host = np.arange(3.0)
    moved = to_device({"w": fake_cupy.ndarray(host), "b": [np.ones(1)]}, "cpu")
    assert moved["w"] is host and device_of(moved["b"][0]) == "cpu"


def test_only_backend_imports_cupy():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "backend.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if any(name.split(".")[0] == "cupy" for name in names):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not offenders, f"only nnflow/backend.py may import cupy; found imports at {offenders}"


def test_cpu_work_never_imports_cupy():
    code = (
        "import sys, numpy as np, nnflow.backend as b\n"
        "x = np.ones(2)\n"
        "b.get_array_module(x); b.device_of(x); b.to_device([x], 'cpu')\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _real_cupy():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install 'nnflow[gpu]')")
    if not gpu_available():
        pytest.skip(f"no CUDA device: {backend._gpu_unavailable_reason()}")
    return cupy


def test_round_trip_through_the_gpu():
    cupy = _real_cupy()
    tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "steps": (np.ones(2), 5)}
    on_gpu = to_device(tree, "gpu")
    assert isinstance(on_gpu["w"], cupy.ndarray) and on_gpu["w"].dtype == np.float32
    assert get_array_module(on_gpu["w"]) is cupy and device_of(on_gpu["steps"][0]) == "gpu"
    assert on_gpu["steps"][1] == 5
    assert to_device(on_gpu["w"], "gpu") is on_gpu["w"]
    back = to_device(on_gpu, "cpu")
    assert type(back["w"]) is np.ndarray
    np.testing.assert_array_equal(back["w"], tree["w"])
    np.testing.assert_array_equal(back["steps"][0], tree["steps"][0])
