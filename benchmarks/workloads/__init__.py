"""The runner's workloads: name, module, float type, unit, reference and targets of each.

Every module here implements its workload for each system it lists (``SYSTEMS``) through
``build(system, cfg)`` (see ``_common``); this table says how the runner reports it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Target:
    """``system``'s median must be at most ``ratio`` times ``reference``'s."""

    system: str
    reference: str
    ratio: float
    source: str

    def describe(self) -> str:
        """``nnflow-compiled <= 1.05x numpy-best``, or ``... 2.5x faster than torch``."""
        if self.ratio < 1:
            return f"{self.system} {1 / self.ratio:.3g}x faster than {self.reference}"
        return f"{self.system} <= {self.ratio:.3g}x {self.reference}"


@dataclass(frozen=True)
class AllocTarget:
    """``system`` must allocate less than ``limit`` bytes of NumPy memory per call (CPU only:
    tracemalloc sees NumPy's allocations, not a GPU's)."""

    system: str
    limit: int
    source: str

    def describe(self) -> str:
        """``nnflow-compiled allocates < 64 KiB per call``."""
        return f"{self.system} allocates < {self.limit / 1024:g} KiB per call"


@dataclass(frozen=True)
class Workload:
    """One row group of the table: what runs, how it is reported."""

    name: str
    module: str
    dtype: str
    title: str
    reference: tuple[str, ...] = ("torch", "numpy-best")  # first one that ran is the ratio's base
    targets: tuple[Target, ...] = ()
    gpu_targets: tuple[Target, ...] = ()  # with --device gpu (the base there is torch on CUDA)
    per_op: bool = False  # report time per primitive op (the chain)
    alloc_targets: tuple[AllocTarget, ...] = ()
    options: dict = field(default_factory=dict)

    def load(self):
        """The workload's module."""
        return importlib.import_module(f"{__name__}.{self.module}")

    def systems(self) -> tuple[str, ...]:
        """The systems its module implements."""
        return tuple(self.load().SYSTEMS)


_DENSE = (  # the compiled-tapes issue's three targets
    Target("nnflow-compiled", "numpy-best", 1.05, "compiled-tapes issue"),
    Target("nnflow-eager", "numpy-naive", 1.3, "compiled-tapes issue"),
)
_DENSE_ALLOC = (AllocTarget("nnflow-compiled", 64 * 1024, "compiled-tapes issue"),)
_GPU = Target("nnflow-compiled", "torch", 1.2, "GPU issue")

WORKLOADS = {
    w.name: w
    for w in [
        Workload(
            "dense-f64",
            "dense",
            "float64",
            "dense layer exp(W @ x + b): value and dW, db; W 512x256, x 256x4096, float64",
            ("numpy-best",),
            _DENSE,
            alloc_targets=_DENSE_ALLOC,
        ),
        Workload(
            "dense-f32",
            "dense",
            "float32",
            "dense layer exp(W @ x + b): value and dW, db; W 512x256, x 256x4096, float32",
            ("numpy-best",),
            _DENSE,
            gpu_targets=(_GPU,),
            alloc_targets=_DENSE_ALLOC,
        ),
        Workload(
            "chain",
            "chain",
            "float64",
            "per-op overhead: 50 elementwise ops + sum on float64[4], forward + backward",
            ("torch", "numpy-best"),
            (
                Target("nnflow-compiled", "torch", 0.4, "benchmarks issue"),
                Target("nnflow-eager", "torch", 1.0, "AD-core issue"),
            ),
            per_op=True,
        ),
        Workload(
            "mlp",
            "mlp",
            "float32",
            "MLP training step 784-512-256-10, ReLU, cross-entropy, batch 128, float32, SGD",
            ("torch", "numpy-best"),
            (Target("nnflow-compiled", "torch", 1.1, "benchmarks issue"),),
            gpu_targets=(_GPU,),
        ),
        Workload(
            "mlp-gemm",
            "gemm",
            "float32",
            "the MLP step's 8 GEMMs alone (BLAS share of the step), float32",
            ("torch", "numpy-best"),
        ),
        Workload(
            "conv",
            "conv",
            "float32",
            "ConvNet training step: 64x1x28x28, conv3x3 16, conv3x3 32, maxpool 2, "
            "linear 10, float32, SGD",
            ("torch", "numpy-best"),
            (Target("nnflow-compiled", "torch", 1.5, "layers issue"),),
        ),
        Workload(
            "lstm",
            "lstm",
            "float32",
            "LSTM BPTT: seq 50, batch 32, 64 -> 128, MSE, parameter gradients, float32",
            ("torch", "numpy-best"),
            (Target("nnflow-compiled", "torch", 1.2, "layers issue"),),
        ),
        Workload(
            "gru",
            "recurrent",
            "float32",
            "GRU BPTT: seq 50, batch 32, 64 -> 128, MSE, parameter gradients, float32",
            ("torch",),
            options={"cell": "gru"},
        ),
        Workload(
            "rnn",
            "recurrent",
            "float32",
            "Elman RNN (tanh) BPTT: seq 50, batch 32, 64 -> 128, MSE, parameter gradients",
            ("torch",),
            options={"cell": "rnn"},
        ),
        Workload(
            "vae",
            "vae",
            "float32",
            "VAE training step: 784-400-(20+20), 20-400-784, batch 128, -ELBO, float32, SGD",
            ("torch", "numpy-best"),
        ),
        Workload(
            "hvp",
            "hvp",
            "float64",
            "Hessian-vector product of an MLP loss (32-64-1 tanh, 256 samples), float64",
            ("torch", "numpy-best"),
        ),
    ]
}
