"""Optional oracle: weights ported from PyTorch give the same outputs and gradients.

Skipped when PyTorch is not installed; never a required dependency.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import rand

from nnflow import ad, losses
from nnflow.layers import GRU, LSTM, RNN, BatchNorm, Conv2d, ConvTranspose2d, Linear

torch = pytest.importorskip("torch")


def port(torch_module, model):
    """Copy every torch parameter and buffer onto the attribute of the same name."""
    state = torch_module.state_dict()
    for name, value in state.items():
        setattr(model, name, value.detach().numpy().astype(np.float64))
    return model


def compare(torch_module, model, x, out=lambda y: y):
    torch_module = torch_module.double()
    port(torch_module, model)
    xt = torch.tensor(x, requires_grad=True)
    yt = out(torch_module(xt))
    weights = rand(*yt.shape, seed=3)
    (yt * torch.tensor(weights)).sum().backward()
    val, g = ad.grad(lambda m, x: np.sum(out(m(x)) * weights), model, x)
    np.testing.assert_allclose(out(model(x)), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g[1], xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    for name, p in torch_module.named_parameters():
        np.testing.assert_allclose(g[0][(name,)], p.grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=name)  # fmt: skip


def test_linear_matches_torch():
    compare(torch.nn.Linear(5, 3), Linear(5, 3), rand(4, 5))


def test_conv2d_matches_torch():
    tm = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2)
    compare(tm, Conv2d(4, 6, 3, stride=2, padding=1, groups=2), rand(2, 4, 7, 6))


def test_conv_transpose2d_matches_torch():
    tm = torch.nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)
    compare(tm, ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1), rand(2, 4, 5, 5))


def test_batchnorm_matches_torch_including_running_stats():
    tm = torch.nn.BatchNorm2d(3).double()
    model = BatchNorm(3, dtype=np.float64)
    x = rand(4, 3, 5, 5) * 2 + 1
    compare(tm, model, x)
    tm.train()
    tm(torch.tensor(x))  # compare() ran torch once and nnflow twice; catch up
    np.testing.assert_allclose(model.running_var, tm.running_var.numpy(), rtol=1e-12)


PAIRS = [(LSTM, torch.nn.LSTM), (GRU, torch.nn.GRU), (RNN, torch.nn.RNN)]


@pytest.mark.parametrize("cls, tcls", PAIRS)
def test_recurrent_sequences_match_torch(cls, tcls):
    tm = tcls(3, 4, num_layers=2, batch_first=True)
    compare(tm, cls(3, 4, num_layers=2), rand(2, 6, 3), out=lambda y: y[0])


def test_cross_entropy_matches_torch_with_smoothing():
    logits, labels = rand(5, 4), np.array([0, 3, 1, 1, 2])
    expected = torch.nn.functional.cross_entropy(
        torch.tensor(logits), torch.tensor(labels), label_smoothing=0.1
    )
    np.testing.assert_allclose(losses.cross_entropy(logits, labels, label_smoothing=0.1),
                               expected.item(), rtol=1e-12)  # fmt: skip
