"""Learning-rate schedulers against torch.optim.lr_scheduler over many steps; state dicts resume the sequence."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import HAS_TORCH
from xpconv.nn import Parameter
from xpconv.optim import SGD, Adam, lr_scheduler

# name: (optimizer class and kwargs, steps, build(module, optimizer) -> scheduler); module is ours or torch's.
CONFIGS = {
    "step": (SGD, {}, 60, lambda m, o: m.StepLR(o, step_size=7, gamma=0.5)),
    "multistep": (SGD, {}, 80, lambda m, o: m.MultiStepLR(o, milestones=[10, 30, 30, 60], gamma=0.3)),
    "cosine": (SGD, {}, 150, lambda m, o: m.CosineAnnealingLR(o, T_max=40, eta_min=1e-4)),
    "linear-warmup": (SGD, {}, 40, lambda m, o: m.LinearLR(o, start_factor=0.1, total_iters=20)),
    "linear-decay": (SGD, {}, 40, lambda m, o: m.LinearLR(o, start_factor=1.0, end_factor=0.05, total_iters=25)),
    "onecycle": (SGD, dict(momentum=0.9), 100, lambda m, o: m.OneCycleLR(o, max_lr=0.5, total_steps=100)),
    "onecycle-adam-linear-3phase": (Adam, {}, 90, lambda m, o: m.OneCycleLR(
        o, max_lr=[0.02, 0.01], epochs=9, steps_per_epoch=10, anneal_strategy="linear", three_phase=True,
        pct_start=0.25, div_factor=10.0, final_div_factor=100.0)),
    "onecycle-no-momentum": (Adam, {}, 50, lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=50,
                                                                     cycle_momentum=False)),
    "warmup-cosine": (SGD, {}, 120, lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, start_factor=0.1, total_iters=10), m.CosineAnnealingLR(o, T_max=100)], milestones=[10])),
    "three-stages": (SGD, {}, 70, lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, start_factor=0.5, total_iters=4), m.StepLR(o, step_size=5, gamma=0.7),
            m.MultiStepLR(o, milestones=[3, 9])], milestones=[6, 30])),
}


def _ours(config):
    cls, kwargs, _, build = config
    opt = cls([{"params": [Parameter(np.zeros(2))], "lr": 0.1},
               {"params": [Parameter(np.zeros(1))], "lr": 0.03}], **kwargs)
    return opt, build(lr_scheduler, opt)


def _momenta(opt):
    return [g["betas"][0] if "betas" in g else g["momentum"] for g in opt.param_groups]


def _trace(opt, sched, steps):
    """(lr per group, momentum per group) before each of ``steps`` steps."""
    trace = []
    for _ in range(steps):
        assert sched.get_last_lr() == [g["lr"] for g in opt.param_groups]
        trace.append((sched.get_last_lr(), _momenta(opt)))
        opt.step()
        sched.step()
    return trace


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_sequence_matches_torch(name):
    import torch

    cls, kwargs, steps, build = CONFIGS[name]
    opt, sched = _ours(CONFIGS[name])
    ref_opt = getattr(torch.optim, cls.__name__)([{"params": [torch.zeros(2, requires_grad=True)], "lr": 0.1},
                                                   {"params": [torch.zeros(1, requires_grad=True)], "lr": 0.03}],
                                                  **kwargs)
    ref = build(torch.optim.lr_scheduler, ref_opt)
    ours = _trace(opt, sched, steps)
    theirs = _trace(ref_opt, ref, steps)
    np.testing.assert_allclose(np.array([lr for lr, _ in ours]), np.array([lr for lr, _ in theirs]),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.array([m for _, m in ours]), np.array([m for _, m in theirs]),
                               rtol=1e-12, atol=1e-12)
    assert len({lr for lrs, _ in ours for lr in lrs}) > 2            # the schedule really moves


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dicts_resume_the_sequence(name):
    steps = CONFIGS[name][2]
    opt, sched = _ours(CONFIGS[name])
    straight = _trace(opt, sched, steps)

    opt, sched = _ours(CONFIGS[name])
    first = _trace(opt, sched, steps // 3)
    opt_state = opt.state_dict()
    opt_state["param_groups"] = json.loads(json.dumps(opt_state["param_groups"]))
    sched_state = json.loads(json.dumps(sched.state_dict()))              # plain JSON: what a checkpoint stores
    new_opt, new_sched = _ours(CONFIGS[name])
    _trace(new_opt, new_sched, 2)                                         # a fresh run that went elsewhere
    new_opt.load_state_dict(opt_state)
    new_sched.load_state_dict(sched_state)
    rest = _trace(new_opt, new_sched, steps - steps // 3)
    assert first + rest == straight


@pytest.mark.parametrize("name", ["cosine", "warmup-cosine"])
def test_load_state_dict_rejects_and_changes_nothing(name):
    opt, sched = _ours(CONFIGS[name])
    _trace(opt, sched, 5)
    before = sched.state_dict()
    bad_cases = [{}, {**before, "extra": 1}, {k: v for k, v in before.items() if k != "last_epoch"}, [1, 2]]
    if name == "warmup-cosine":
        bad_cases.append({**before, "_schedulers": before["_schedulers"][:1]})
        bad_cases.append({**before, "_schedulers": [before["_schedulers"][0], {"last_epoch": 3}]})
    else:
        bad_cases.append({**before, "base_lrs": [0.1]})
    for bad in bad_cases:
        with pytest.raises(ValueError, match="state"):
            sched.load_state_dict(bad)
        assert sched.state_dict() == before


def test_resume_with_last_epoch_as_torch():
    opt, sched = _ours(CONFIGS["step"])
    _trace(opt, sched, 10)
    expected = _trace(opt, sched, 10)
    fresh_opt = SGD([Parameter(np.zeros(2))], lr=0.1)                    # no scheduler recorded initial_lr
    with pytest.raises(ValueError, match="initial_lr"):
        lr_scheduler.StepLR(fresh_opt, step_size=7, gamma=0.5, last_epoch=9)
    opt, sched = _ours(CONFIGS["step"])
    _trace(opt, sched, 10)
    resumed = lr_scheduler.StepLR(opt, step_size=7, gamma=0.5, last_epoch=9)
    assert _trace(opt, resumed, 10) == expected


def test_onecycle_stops_after_total_steps():
    opt, sched = _ours(CONFIGS["onecycle"])
    _trace(opt, sched, 100)
    with pytest.raises(ValueError, match="total_steps"):
        sched.step()


@pytest.mark.parametrize("build,error,match", [
    (lambda o: lr_scheduler.StepLR(o, step_size=0), ValueError, "step_size"),
    (lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=-1.0), ValueError, "gamma"),
    (lambda o: lr_scheduler.StepLR(o, step_size=2, last_epoch=-2), ValueError, "last_epoch"),
    (lambda o: lr_scheduler.MultiStepLR(o, milestones=[2, -1]), ValueError, "milestones"),
    (lambda o: lr_scheduler.MultiStepLR(o, milestones=3), TypeError, "milestones"),
    (lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=0), ValueError, "T_max"),
    (lambda o: lr_scheduler.LinearLR(o, start_factor=0.0), ValueError, "start_factor"),
    (lambda o: lr_scheduler.LinearLR(o, end_factor=1.5), ValueError, "end_factor"),
    (lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1), ValueError, "total_steps"),
    (lambda o: lr_scheduler.OneCycleLR(o, max_lr=[0.1, 0.2, 0.3], total_steps=5), ValueError, "max_lr"),
    (lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=5, pct_start=1.5), ValueError, "pct_start"),
    (lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=5, anneal_strategy="exp"), ValueError,
     "anneal_strategy"),
    (lambda o: lr_scheduler.SequentialLR(o, [], milestones=[]), ValueError, "at least one"),
    (lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.StepLR(o, 2), lr_scheduler.StepLR(o, 3)],
                                         milestones=[]), ValueError, "milestones"),
    (lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.StepLR(o, 2), lr_scheduler.StepLR(o, 3)],
                                         milestones=[0]), ValueError, "milestones"),
    (lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.StepLR(SGD([Parameter(np.zeros(1))]), 2)],
                                         milestones=[]), ValueError, "another optimizer"),
    (lambda o: lr_scheduler.SequentialLR(o, ["cosine"], milestones=[]), TypeError, "LRScheduler"),
    (lambda o: lr_scheduler.StepLR("sgd", step_size=2), TypeError, "Optimizer"),
    (lambda o: lr_scheduler.OneCycleLR("sgd", max_lr=0.1, total_steps=5), TypeError, "Optimizer"),
])
def test_rejects_bad_arguments(build, error, match):
    opt, _ = _ours(CONFIGS["step"])
    with pytest.raises(error, match=match):
        build(opt)


def test_schedulers_never_touch_arrays():
    """The scheduler module imports no array library and no module that computes with arrays."""
    path = Path(lr_scheduler.__file__)
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    assert imported == {"__future__", "copy", "math", "bisect", "collections.abc", "typing", "..validation",
                        "..._docstrings".removeprefix("."), ".optimizer"}
