"""GRU and Elman RNN (tanh) backpropagation through time, float32: the LSTM workload's shapes.

``GRU(64 -> 128)`` or ``RNN(64 -> 128)`` over a sequence of 50, batch 32 (batch first), loss the
mean squared error of all outputs against a fixed target; gradients w.r.t. the four parameters
(no update). The workload's option ``cell`` picks ``"gru"`` or ``"rnn"``. Systems: nnflow
(``nnflow.layers.GRU``/``RNN``, whose layers are fused primitives with BPTT on raw arrays) and
torch's fused ``nn.GRU``/``nn.RNN``; no hand-written NumPy version, so the values and
gradients are checked against ``nnflow-eager`` and torch.
"""

from __future__ import annotations

import numpy as np

from ._common import Bench, Config, uniform
from .lstm import NAMES, SHAPES, nnflow_sequence, torch_sequence

SYSTEMS = ("nnflow-eager", "nnflow-compiled", "torch")
__all__ = ["SHAPES", "NAMES", "SYSTEMS", "build", "data"]  # SHAPES, NAMES: the LSTM's
GATES = {"gru": 3, "rnn": 1}


def data(cfg: Config):
    """``(params, x, target)``: PyTorch's layout and initialisation, one seed."""
    s = cfg.pick(SHAPES)
    h, i, g = s["hidden"], s["input"], GATES[cfg.options.get("cell", "gru")]
    rng = np.random.default_rng(0)
    shapes = [(g * h, i), (g * h, h), (g * h,), (g * h,)]
    params = [uniform(rng, shape, h, np.float32) for shape in shapes]
    x = rng.standard_normal((s["batch"], s["seq"], i)).astype(np.float32)
    target = rng.standard_normal((s["batch"], s["seq"], h)).astype(np.float32)
    return params, x, target


def build(system: str, cfg: Config) -> Bench:
    """One system's loss and gradients (no update)."""
    cell = cfg.options.get("cell", "gru")
    params, x, target = data(cfg)
    if system in ("nnflow-eager", "nnflow-compiled"):
        from nnflow.layers import GRU, RNN

        layer = GRU if cell == "gru" else RNN
        return nnflow_sequence(cfg, system, layer, params, x, target)
    if system == "torch":
        import torch

        layer = torch.nn.GRU if cell == "gru" else torch.nn.RNN
        return torch_sequence(cfg, layer, params, x, target)
    raise ValueError(f"{cell}: unknown system {system!r} (known: {', '.join(SYSTEMS)})")
