"""The GPU benchmark workloads' nnflow side, on the NumPy stand-in for CuPy (``fake_gpu``).

``python -m benchmarks --device gpu`` runs nnflow on CuPy and PyTorch on CUDA (the command is
in ``benchmarks/README.md``); no GPU here, so these smoke tests build each workload's nnflow
systems for "gpu" on the stand-in (tiny shapes): the arrays go to the device, the compiled
step fuses, a step runs, and the check values equal the CPU build's.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.workloads import WORKLOADS
from benchmarks.workloads._common import GPU_SYSTEMS, Config

GPU_WORKLOADS = ("dense-f32", "mlp", "conv", "lstm")


@pytest.mark.parametrize("system", ["nnflow-eager", "nnflow-compiled"])
@pytest.mark.parametrize("name", GPU_WORKLOADS)
def test_gpu_workload_builds_and_agrees_with_cpu(fake_gpu, name, system):
    workload = WORKLOADS[name]
    assert system in workload.systems() and system in GPU_SYSTEMS
    module = workload.load()

    def config(device):
        return Config(dtype=workload.dtype, tiny=True, device=device, options=workload.options)

    want = module.build(system, config("cpu")).check()
    bench = module.build(system, config("gpu"))
    got = bench.check()
    bench.step()
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    if system == "nnflow-compiled" and name != "lstm":  # LSTM: the steps run inside the
        # lstm_layer / lstm_layer_backward primitives; what is left (the MSE) has no chain
        assert any(k.name.startswith("nnflow_fused") for k in fake_gpu.kernels)
