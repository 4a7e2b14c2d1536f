"""Optimizers against torch.optim step by step on every backend; state dicts; state that follows model.to();
gradient clipping against torch.nn.utils.clip_grad_norm_."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from array_api_compat import array_namespace, device
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import HAS_TORCH, as_numpy
from xpconv.backends import get_backend
from xpconv.nn import Linear, Parameter
from xpconv.nn.utils import clip_grad_norm_
from xpconv.optim import SGD, Adam, AdamW

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")

CASES = [
    (SGD, dict(lr=0.1)),
    (SGD, dict(lr=0.05, momentum=0.9)),
    (SGD, dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    (SGD, dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)),
    (SGD, dict(lr=0.05, momentum=0.5, weight_decay=0.1, maximize=True)),
    (Adam, dict(lr=0.01)),
    (Adam, dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    (Adam, dict(lr=0.02, weight_decay=0.1, decoupled_weight_decay=True)),
    (Adam, dict(lr=0.02, amsgrad=True, maximize=True, weight_decay=0.05)),
    (AdamW, dict(lr=0.02)),
    (AdamW, dict(lr=0.02, betas=(0.5, 0.9), weight_decay=0.3, amsgrad=True)),
]
IDS = [f"{c.__name__}-{i}" for i, (c, _) in enumerate(CASES)]
SHAPES = [(3, 4), (5,)]


def _torch_optimizer(cls, kwargs, params):
    import torch

    return getattr(torch.optim, cls.__name__)(params, **kwargs)


def _grads(rng, steps):
    return [[rng.standard_normal(s) for s in SHAPES] for _ in range(steps)]


def _run(opt, params, backend, grads):
    """One optimizer step per entry of ``grads`` (host arrays copied to ``backend``)."""
    for step_grads in grads:
        opt.zero_grad()
        for p, g in zip(params, step_grads, strict=True):
            p.grad += backend.asarray(g, dtype="float64")
        opt.step()


def _params(backend, arrays):
    return [Parameter(backend.asarray(a, dtype="float64")) for a in arrays]


@needs_torch
@pytest.mark.parametrize("cls,kwargs", CASES, ids=IDS)
def test_matches_torch_optim_trajectory_and_state(backend, rng, cls, kwargs):
    import torch

    init, grads = [rng.standard_normal(s) for s in SHAPES], _grads(rng, 6)
    ours, theirs = _params(backend, init), [torch.tensor(a, requires_grad=True) for a in init]
    opt, ref = cls(ours, **kwargs), _torch_optimizer(cls, kwargs, theirs)
    for step_grads in grads:
        _run(opt, ours, backend, [step_grads])
        for t, g in zip(theirs, step_grads, strict=True):
            t.grad = torch.tensor(g)
        ref.step()
        for p, t in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(as_numpy(p.data), t.detach().numpy(), rtol=1e-12, atol=1e-12)
    state, expected = opt.state_dict()["state"], ref.state_dict()["state"]
    assert sorted(state) == sorted(expected)
    for index, entries in expected.items():
        assert set(state[index]) == set(entries)
        for name, value in entries.items():
            if name == "step":
                assert state[index][name] == int(value)
            else:
                np.testing.assert_allclose(state[index][name], value.numpy(), rtol=1e-12, atol=1e-12)


_unit = st.floats(0.0, 0.99)
_SGD_KWARGS = st.fixed_dictionaries(dict(lr=st.floats(0.0, 0.5), momentum=_unit, dampening=_unit,
                                         weight_decay=st.floats(0.0, 0.5), maximize=st.booleans()))
_ADAM_KWARGS = st.fixed_dictionaries(dict(lr=st.floats(0.0, 0.5), betas=st.tuples(_unit, _unit),
                                          eps=st.floats(1e-10, 1e-3), weight_decay=st.floats(0.0, 0.5),
                                          amsgrad=st.booleans(), maximize=st.booleans(),
                                          decoupled_weight_decay=st.booleans()))


@needs_torch
@settings(max_examples=30, deadline=None)
@given(case=st.one_of(st.tuples(st.just(SGD), _SGD_KWARGS), st.tuples(st.just(Adam), _ADAM_KWARGS)),
       seed=st.integers(0, 2**16))
def test_random_hyperparameters_match_torch(case, seed):
    import torch

    cls, kwargs = case
    rng, numpy = np.random.default_rng(seed), get_backend("numpy")
    init, grads = [rng.standard_normal(s) for s in SHAPES], _grads(rng, 4)
    ours, theirs = _params(numpy, init), [torch.tensor(a, requires_grad=True) for a in init]
    ref = _torch_optimizer(cls, kwargs, theirs)
    _run(cls(ours, **kwargs), ours, numpy, grads)
    for step_grads in grads:
        for t, g in zip(theirs, step_grads, strict=True):
            t.grad = torch.tensor(g)
        ref.step()
    for p, t in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-12)


@needs_torch
def test_parameter_groups_match_torch(rng):
    import torch

    init, grads = [rng.standard_normal(s) for s in SHAPES], _grads(rng, 4)
    backend = get_backend("numpy")
    ours, theirs = _params(backend, init), [torch.tensor(a, requires_grad=True) for a in init]
    opt = SGD([{"params": [ours[0]]}, {"params": [ours[1]], "lr": 0.3, "nesterov": True}], lr=0.05, momentum=0.9)
    ref = torch.optim.SGD([{"params": [theirs[0]]}, {"params": [theirs[1]], "lr": 0.3, "nesterov": True}],
                          lr=0.05, momentum=0.9)
    _run(opt, ours, backend, grads)
    for step_grads in grads:
        for t, g in zip(theirs, step_grads, strict=True):
            t.grad = torch.tensor(g)
        ref.step()
    for p, t in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-12)
    ours_groups = opt.state_dict()["param_groups"]
    for mine, theirs_group in zip(ours_groups, ref.state_dict()["param_groups"], strict=True):
        assert {k: mine[k] for k in mine} == {k: theirs_group[k] for k in mine}


@pytest.mark.parametrize("cls,kwargs", CASES, ids=IDS)
def test_state_dict_round_trip_is_bit_identical_on_numpy(rng, cls, kwargs):
    numpy = get_backend("numpy")
    init, grads = [rng.standard_normal(s) for s in SHAPES], _grads(rng, 7)
    straight = _params(numpy, init)
    opt = cls(straight, **kwargs)
    _run(opt, straight, numpy, grads)

    first = _params(numpy, init)
    opt = cls(first, **kwargs)
    _run(opt, first, numpy, grads[:4])
    saved = opt.state_dict()
    saved["param_groups"] = json.loads(json.dumps(saved["param_groups"]))   # plain JSON: tuples come back as lists
    resumed = _params(numpy, [p.data for p in first])
    new = cls(resumed, lr=123.0)
    new.load_state_dict(saved)
    _run(new, resumed, numpy, grads[4:])
    for p, q in zip(resumed, straight, strict=True):
        np.testing.assert_array_equal(p.data, q.data)
    assert new.param_groups[0]["lr"] == kwargs["lr"]


@pytest.mark.parametrize("cls,kwargs", [CASES[3], CASES[8]], ids=["SGD", "Adam"])
@pytest.mark.parametrize("direction", ["from_backend", "to_backend"])
def test_state_dict_moves_between_backends(backend, rng, cls, kwargs, direction):
    numpy = get_backend("numpy")
    source, target = (backend, numpy) if direction == "from_backend" else (numpy, backend)
    init, grads = [rng.standard_normal(s) for s in SHAPES], _grads(rng, 6)
    straight = _params(source, init)
    _run(cls(straight, **kwargs), straight, source, grads)

    first = _params(source, init)
    opt = cls(first, **kwargs)
    _run(opt, first, source, grads[:3])
    resumed = _params(target, [as_numpy(p.data) for p in first])
    new = cls(resumed, **kwargs)
    new.load_state_dict(opt.state_dict())
    for entries in new.state.values():
        for value in entries.values():
            if not isinstance(value, int):
                assert array_namespace(value) is target.xp and device(value) == target.device
    _run(new, resumed, target, grads[3:])
    for p, q in zip(resumed, straight, strict=True):
        np.testing.assert_allclose(as_numpy(p.data), as_numpy(q.data), rtol=1e-12, atol=1e-12)


def _stepped_adam(rng):
    params = [Parameter(np.ones(s)) for s in SHAPES]
    opt = Adam(params, lr=0.1, amsgrad=True)
    for p in params:
        p.grad = rng.standard_normal(p.shape)
    opt.step()
    return opt


def _bad_state_dicts(good):
    def edit(fn):
        bad = copy.deepcopy(good)
        fn(bad)
        return bad

    return {
        "top-level keys": edit(lambda s: s.pop("state")),
        "extra top-level key": edit(lambda s: s.update(extra=1)),
        "group count": edit(lambda s: s["param_groups"].append(dict(s["param_groups"][0]))),
        "parameter count": edit(lambda s: s["param_groups"][0]["params"].pop()),
        "duplicate index": edit(lambda s: s["param_groups"][0].update(params=[0, 0])),
        "group key": edit(lambda s: s["param_groups"][0].pop("eps")),
        "unknown group key": edit(lambda s: s["param_groups"][0].update(foreach=None)),
        "hyper-parameter": edit(lambda s: s["param_groups"][0].update(lr=-1.0)),
        "state entry": edit(lambda s: s["state"][1].pop("max_exp_avg_sq")),
        "unknown index": edit(lambda s: s["state"].update({7: s["state"][0]})),
        "shape": edit(lambda s: s["state"][0].update(exp_avg=np.zeros((4, 3)))),
        "dtype": edit(lambda s: s["state"][1].update(exp_avg_sq=np.zeros(5, dtype=np.int64))),
        "step": edit(lambda s: s["state"][0].update(step=-1)),
    }


@pytest.mark.parametrize("case", list(_bad_state_dicts(_stepped_adam(np.random.default_rng(0)).state_dict())))
def test_load_state_dict_rejects_and_changes_nothing(rng, case):
    opt = _stepped_adam(rng)
    bad = _bad_state_dicts(opt.state_dict())[case]
    before = opt.state_dict()
    opt.param_groups[0]["lr"] = 0.1
    with pytest.raises(ValueError):  # noqa: PT011 - each case names a different problem
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for index, entries in before["state"].items():
        for name, value in entries.items():
            np.testing.assert_array_equal(after["state"][index][name], value)


def test_state_dict_is_a_copy(rng):
    opt = _stepped_adam(rng)
    saved = opt.state_dict()
    saved["state"][0]["exp_avg"][...] = 99.0
    saved["param_groups"][0]["lr"] = 5.0
    assert not np.any(opt.state_dict()["state"][0]["exp_avg"] == 99.0)
    assert opt.param_groups[0]["lr"] == 0.1
    loaded = opt.state_dict()
    opt.load_state_dict(loaded)
    loaded["state"][0]["exp_avg"][...] = 77.0
    assert not np.any(opt.state_dict()["state"][0]["exp_avg"] == 77.0)


@pytest.mark.parametrize("cls,kwargs", [CASES[2], CASES[8]], ids=["SGD", "Adam"])
def test_state_follows_the_parameters_after_model_to(backend, rng, cls, kwargs):
    grads = [[rng.standard_normal((2, 3)), rng.standard_normal(2)] for _ in range(4)]

    def run(model, steps, opt=None):
        opt = opt or cls(model.parameters(), **kwargs)
        for step_grads in steps:
            opt.zero_grad()
            for p, g in zip(model.parameters(), step_grads, strict=True):
                p.grad += model.backend.asarray(g, dtype="float64")
            opt.step()
        return opt

    moved = Linear(3, 2, seed=0, dtype="float64", backend="numpy")
    opt = run(moved, grads[:2])
    moved.to(backend)
    run(moved, grads[2:], opt)
    for entries in opt.state.values():
        for value in entries.values():
            if not isinstance(value, int):
                assert array_namespace(value) is backend.xp and device(value) == backend.device
    there = Linear(3, 2, seed=0, dtype="float64", backend=backend)
    run(there, grads)
    for p, q in zip(moved.parameters(), there.parameters(), strict=True):
        np.testing.assert_allclose(as_numpy(p.data), as_numpy(q.data), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls,kwargs", [CASES[2], CASES[6]], ids=["SGD", "Adam"])
def test_keeps_dtype_device_and_user_arrays(backend, rng, cls, kwargs):
    user = backend.asarray(rng.standard_normal((4, 3)), dtype="float32")
    before = as_numpy(user).copy()
    p = Parameter(user)
    grad = backend.asarray(rng.standard_normal((4, 3)), dtype="float32")
    grad_before = as_numpy(grad).copy()
    p.grad = grad
    opt = cls([p], **kwargs)
    for _ in range(2):
        opt.step()
    assert p.data.dtype == user.dtype
    assert array_namespace(p.data) is array_namespace(user)
    assert device(p.data) == device(user)
    assert not np.allclose(as_numpy(p.data), before)
    np.testing.assert_array_equal(as_numpy(user), before)
    np.testing.assert_array_equal(as_numpy(grad), grad_before)
    for value in opt.state[p].values():
        if not isinstance(value, int):
            assert value.dtype == user.dtype and device(value) == device(user)


def test_zero_grad_and_reuse(backend):
    p = Parameter(backend.asarray([1.0, 2.0], dtype="float32"))
    p.grad = backend.asarray([0.5, -0.5], dtype="float32")
    opt = SGD([p], lr=1.0)
    opt.step()
    np.testing.assert_allclose(as_numpy(p.data), [0.5, 2.5])
    opt.zero_grad()
    np.testing.assert_array_equal(as_numpy(p.grad), [0.0, 0.0])
    opt.step()
    np.testing.assert_allclose(as_numpy(p.data), [0.5, 2.5])


def test_lr_shorthand_sets_every_group():
    a, b = Parameter(np.zeros(2)), Parameter(np.zeros(2))
    opt = Adam([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    assert opt.lr == 0.1
    opt.lr = 0.2
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.2]
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0


@pytest.mark.parametrize("cls,kwargs,match", [
    (SGD, dict(lr=-0.1), "lr"),
    (SGD, dict(lr=0.1, momentum=-1), "momentum"),
    (SGD, dict(lr=0.1, weight_decay=-1), "weight_decay"),
    (SGD, dict(lr=0.1, dampening=1.5), "dampening"),
    (SGD, dict(lr=0.1, nesterov=True), "nesterov"),
    (SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
    (Adam, dict(lr=-1e-3), "lr"),
    (Adam, dict(betas=(1.0, 0.999)), r"betas\[0\]"),
    (Adam, dict(betas=(0.9, -0.1)), r"betas\[1\]"),
    (Adam, dict(betas=0.9), "betas"),
    (Adam, dict(eps=-1e-8), "eps"),
    (AdamW, dict(weight_decay=-0.01), "weight_decay"),
])
def test_rejects_bad_hyperparameters(cls, kwargs, match):
    p = Parameter(np.zeros(2, dtype=np.float32))
    with pytest.raises(ValueError, match=match):
        cls([p], **kwargs)
    with pytest.raises(ValueError, match=match):           # the same checks for a parameter group
        cls([{"params": [p], **kwargs}])


def test_rejects_bad_params():
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match="Parameter"):
        SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(TypeError, match="iterable"):
        SGD(Parameter(np.zeros(2)), lr=0.1)
    with pytest.raises(TypeError, match="lr must be a number"):
        SGD([Parameter(np.zeros(2))], lr="0.1")
    p = Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="more than once"):
        Adam([p, p])
    with pytest.raises(ValueError, match="more than once"):
        Adam([{"params": [p]}, {"params": [p]}])
    with pytest.raises(ValueError, match="unknown keys"):
        SGD([{"params": [p], "momentun": 0.9}])
    opt = SGD([p], lr=0.1)
    p.grad = np.zeros(3)
    with pytest.raises(ValueError, match="gradient shape"):
        opt.step()


# -- clip_grad_norm_ -------------------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(backend, rng, norm_type, max_norm):
    import torch

    grads = [rng.standard_normal(s) for s in [(3, 4), (5,), (2, 1, 3)]]
    params = [Parameter(backend.asarray(np.zeros_like(g), dtype="float64")) for g in grads]
    originals = []
    for p, g in zip(params, grads, strict=True):
        p.grad = backend.asarray(g, dtype="float64")
        originals.append(p.grad)
    theirs = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for t, g in zip(theirs, grads, strict=True):
        t.grad = torch.tensor(g)
    total = clip_grad_norm_(params, max_norm, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
    assert array_namespace(total) is backend.xp and total.shape == ()   # a 0-d array: never read back to the host
    np.testing.assert_allclose(as_numpy(total), expected.numpy(), rtol=1e-12)
    for p, t, g, original in zip(params, theirs, grads, originals, strict=True):
        np.testing.assert_allclose(as_numpy(p.grad), t.grad.numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(as_numpy(original), g)          # rebound, not modified in place
        assert p.grad.dtype == original.dtype


def test_clip_grad_norm_nonfinite_and_errors(backend):
    p = Parameter(backend.asarray([0.0, 0.0], dtype="float32"))
    p.grad = backend.asarray([math.nan, 1.0], dtype="float32")
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(p, 1.0, error_if_nonfinite=True)
    np.testing.assert_array_equal(np.isnan(as_numpy(p.grad)), [True, False])   # unchanged by the error
    assert math.isnan(float(as_numpy(clip_grad_norm_(p, 1.0))))               # torch scales by the NaN norm
    assert np.isnan(as_numpy(p.grad)).all()
    assert clip_grad_norm_([], 1.0) == 0.0
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm_(p, -1.0)
    with pytest.raises(TypeError, match="norm_type"):
        clip_grad_norm_(p, 1.0, norm_type="fro")
    with pytest.raises(TypeError, match="Parameters"):
        clip_grad_norm_([np.zeros(2)], 1.0)


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.1, momentum=0.9),
                                  lambda p: Adam(p, lr=0.1, weight_decay=0.1, decoupled_weight_decay=True)])
def test_updates_leave_the_users_array_and_then_work_in_place(backend, make):
    """The first step makes a new array (the one handed in is kept); later steps change that one in place."""
    handed = backend.asarray(np.array([1.0, -2.0, 3.0]))
    p = Parameter(handed)
    optimizer = make([p])
    p.grad = backend.asarray(np.array([0.5, 0.5, -1.0]))
    optimizer.step()
    np.testing.assert_array_equal(as_numpy(handed), [1.0, -2.0, 3.0])
    made = p.data
    optimizer.step()
    assert p.data is made
    p.data = backend.asarray(np.array([1.0, 1.0, 1.0]))     # replaced from outside (e.g. load_state_dict)
    replaced = p.data
    optimizer.step()
    assert p.data is not replaced and as_numpy(replaced).tolist() == [1.0, 1.0, 1.0]
