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
from .mlp import nnflow_training, torch_training

SYSTEMS = ("nnflow-eager", "nnflow-compiled", "torch")
SHAPES = {
    "full": {"batch": 32, "seq": 50, "input": 64, "hidden": 128},
    "tiny": {"batch": 2, "seq": 3, "input": 4, "hidden": 5},
}
NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
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
    s = cfg.pick(SHAPES)
    if system in ("nnflow-eager", "nnflow-compiled"):
        from nnflow import losses
        from nnflow.layers import GRU, RNN

        model = (GRU if cell == "gru" else RNN)(s["input"], s["hidden"])
        for name, p in zip(NAMES, params, strict=True):
            setattr(model, name, p.copy())

        def loss(model, x, target):
            return losses.mse(model(x)[0], target)

        paths = {name: (name,) for name in NAMES}
        compiled = system == "nnflow-compiled"
        return nnflow_training(cfg, compiled, model, loss, (x, target), paths, update=False)
    if system == "torch":
        import torch

        layer = torch.nn.GRU if cell == "gru" else torch.nn.RNN
        model = layer(s["input"], s["hidden"], batch_first=True)
        with torch.no_grad():
            for name, p in zip(NAMES, params, strict=True):
                getattr(model, name).copy_(torch.from_numpy(p))

        def loss_fn(model, x, target):
            return ((model(x)[0] - target) ** 2).mean()

        names = {name: name for name in NAMES}
        return torch_training(cfg, model, loss_fn, (x, target), names, update=False)
    raise ValueError(f"{cell}: unknown system {system!r} (known: {', '.join(SYSTEMS)})")
