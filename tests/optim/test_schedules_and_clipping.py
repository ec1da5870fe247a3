"""Learning-rate schedules and gradient clipping, against closed forms and PyTorch."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nnflow.optim import (
    SGD,
    CosineAnnealingLR,
    ExponentialLR,
    LinearLR,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
    clip_grad_norm,
    clip_grad_value,
    global_norm,
)

SCHEDULES = [
    (StepLR, {"step_size": 3, "gamma": 0.5}, lambda t: 0.5 ** (t // 3)),
    (ExponentialLR, {"gamma": 0.9}, lambda t: 0.9**t),
    (
        CosineAnnealingLR,
        {"T_max": 10, "eta_min": 0.01},
        lambda t: 0.01 + 0.99 * (1 + math.cos(math.pi * t / 10)) / 2,
    ),
    (LinearLR, {"start_factor": 0.1, "total_iters": 4}, lambda t: 0.1 + 0.9 * min(t, 4) / 4),
]


def fresh_optimizer(lr: float = 1.0) -> SGD:
    return SGD({"w": np.zeros(1)}, lr=lr)


@pytest.mark.parametrize(
    "cls, kwargs, formula", SCHEDULES, ids=lambda x: getattr(x, "__name__", "")
)
def test_closed_forms(cls, kwargs, formula):
    opt = fresh_optimizer()
    schedule = cls(opt, **kwargs)
    lrs = [opt.lr]
    for _ in range(10):
        schedule.step()
        lrs.append(opt.lr)
    np.testing.assert_allclose(lrs, [formula(t) for t in range(11)], rtol=1e-12)


@pytest.mark.parametrize(
    "cls, kwargs, formula", SCHEDULES, ids=lambda x: getattr(x, "__name__", "")
)
def test_schedules_match_pytorch(cls, kwargs, formula):
    torch = pytest.importorskip("torch")
    opt = fresh_optimizer(0.3)
    schedule = cls(opt, **kwargs)
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
    t_schedule = getattr(torch.optim.lr_scheduler, cls.__name__)(t_opt, **kwargs)
    for _ in range(10):
        assert math.isclose(opt.lr, t_opt.param_groups[0]["lr"], rel_tol=1e-9)
        t_opt.step()
        t_schedule.step()
        schedule.step()


def test_warmup_then_cosine_and_state_round_trip():
    opt = fresh_optimizer()
    warm = LinearLR(opt, start_factor=0.5, total_iters=2)
    cosine = CosineAnnealingLR(opt, T_max=4)
    schedule = SequentialLR(opt, [warm, cosine], milestones=[2])
    lrs = [opt.lr]
    for _ in range(6):
        schedule.step()
        lrs.append(opt.lr)
    np.testing.assert_allclose(lrs, [0.5, 0.75, 1.0, 0.853553, 0.5, 0.146447, 0.0], atol=1e-6)
    state = json.loads(json.dumps(schedule.state_dict()))
    other_opt = fresh_optimizer()
    other = SequentialLR(
        other_opt,
        [LinearLR(other_opt, 0.5, total_iters=2), CosineAnnealingLR(other_opt, T_max=4)],
        milestones=[2],
    )
    other.load_state_dict(state)
    assert other_opt.lr == opt.lr


def test_sequential_needs_matching_milestones():
    opt = fresh_optimizer()
    with pytest.raises(ValueError, match="2 schedules need 1 milestones, got 0"):
        SequentialLR(opt, [StepLR(opt, 1), StepLR(opt, 1)], milestones=[])


def test_reduce_on_plateau_matches_pytorch():
    torch = pytest.importorskip("torch")
    losses = [1.0, 0.9, 0.9, 0.95, 0.91, 0.92, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.4, 0.6, 0.7]
    kwargs = {"factor": 0.5, "patience": 2, "cooldown": 1, "min_lr": 0.02, "threshold": 0.01}
    opt = fresh_optimizer(0.1)
    plateau = ReduceLROnPlateau(opt, **kwargs)
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    t_plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(t_opt, **kwargs)
    seen = []
    for loss in losses:
        plateau.step(loss)
        t_plateau.step(loss)
        seen.append(opt.lr)
        assert math.isclose(opt.lr, t_opt.param_groups[0]["lr"], rel_tol=1e-12)
    assert seen[0] == 0.1 and min(seen) == 0.025  # halved twice


def test_reduce_on_plateau_max_mode_state_and_errors():
    opt = fresh_optimizer(1.0)
    plateau = ReduceLROnPlateau(opt, mode="max", patience=0, threshold_mode="abs", threshold=0.1)
    plateau.step(0.5)
    plateau.step(0.55)  # not better by 0.1: reduce
    assert math.isclose(opt.lr, 0.1)
    state = json.loads(json.dumps(plateau.state_dict()))
    again = ReduceLROnPlateau(fresh_optimizer(), mode="max")
    again.load_state_dict(state)
    assert again.best == 0.5 and again.last_step == 2
    with pytest.raises(ValueError, match="needs the monitored metric"):
        plateau.step()
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        ReduceLROnPlateau(opt, mode="lowest")


def test_clip_grad_norm_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for norm_type in (2.0, 1.0, math.inf):
        grads = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5), "c": None}
        tensors = [torch.zeros(3, 4, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)]
        tensors[0].grad, tensors[1].grad = torch.tensor(grads["a"]), torch.tensor(grads["b"])
        total = clip_grad_norm(grads, 1.5, norm_type)
        t_total = torch.nn.utils.clip_grad_norm_(tensors, 1.5, norm_type)
        assert math.isclose(total, float(t_total), rel_tol=1e-12)
        np.testing.assert_allclose(grads["a"], tensors[0].grad.numpy(), rtol=1e-12)
        np.testing.assert_allclose(grads["b"], tensors[1].grad.numpy(), rtol=1e-12)


def test_clip_grad_norm_in_place_below_limit_and_read_only():
    g = np.array([0.3, 0.4])
    grads = {"w": g}
    assert math.isclose(clip_grad_norm(grads, 10.0), 0.5) and grads["w"].tolist() == [0.3, 0.4]
    clip_grad_norm(grads, 0.25)
    assert grads["w"] is g and np.allclose(g, [0.15, 0.2], rtol=1e-5)
    frozen = np.broadcast_to(np.array([3.0]), (2,))  # not writeable: replaced in the dict
    grads = {"w": frozen}
    clip_grad_value(grads, 1.0)
    assert grads["w"] is not frozen and grads["w"].tolist() == [1.0, 1.0]
    assert global_norm({}) == 0.0 and global_norm({"a": np.zeros(0)}, math.inf) == 0.0


def test_clip_grad_value_matches_pytorch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal(10) * 3
    grads = {"w": x.copy()}
    clip_grad_value(grads, 1.0)
    t = torch.zeros(10, dtype=torch.float64)
    t.grad = torch.tensor(x)
    torch.nn.utils.clip_grad_value_([t], 1.0)
    np.testing.assert_array_equal(grads["w"], t.grad.numpy())
