"""xpconv.models: LeNet-5 against torch in float64, every model's arch record through save/load, build_model."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import xpconv
from conftest import HAS_TORCH, as_numpy
from xpconv import nn
from xpconv.io import read_metadata
from xpconv.models import MODELS, build_model, cifar_resnet, lenet5

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")

# A small instance of each model and an input that fits it.
SMALL = {
    "small_cnn": ({"channels": [2, 3]}, (2, 1, 8, 8)),
    "lenet5": ({"num_classes": 4}, (2, 1, 28, 28)),
    "resnet20": ({}, (2, 3, 8, 8)),
    "resnet32": ({"shortcut": "B"}, (2, 3, 8, 8)),
    "resnet56": ({"in_channels": 1, "num_classes": 3}, (2, 1, 8, 8)),
    "cifar_resnet": ({"num_blocks": [1, 2, 1], "shortcut": "B"}, (2, 3, 8, 8)),
}


def torch_lenet5(num_classes=10):
    """The documented LeNet-5 variant written in torch, as a Sequential of named layers."""
    import torch
    from torch import nn as tnn

    torch.manual_seed(0)
    return tnn.Sequential(OrderedDict(
        conv1=tnn.Conv2d(1, 6, 5, padding=2), relu1=tnn.ReLU(), pool1=tnn.MaxPool2d(2),
        conv2=tnn.Conv2d(6, 16, 5), relu2=tnn.ReLU(), pool2=tnn.MaxPool2d(2), flatten=tnn.Flatten(),
        fc1=tnn.Linear(400, 120), relu3=tnn.ReLU(), fc2=tnn.Linear(120, 84), relu4=tnn.ReLU(),
        fc3=tnn.Linear(84, num_classes))).double()


def test_lenet5_size():
    # conv1 6*25+6, conv2 16*6*25+16, fc1 400*120+120, fc2 120*84+84, fc3 84*10+10
    assert sum(int(np.prod(p.shape)) for p in lenet5().parameters()) == 156 + 2416 + 48120 + 10164 + 850


@needs_torch
def test_lenet5_matches_torch_in_float64(backend, rng):
    import torch

    ref = torch_lenet5()
    model = lenet5(backend=backend, dtype="float64", seed=7)
    model.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    x_np, labels = rng.standard_normal((3, 1, 28, 28)), np.array([0, 9, 4])
    xt = torch.tensor(x_np, requires_grad=True)
    ref_loss = torch.nn.functional.cross_entropy(ref(xt), torch.from_numpy(labels))
    ref_loss.backward()
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(model(backend.asarray(x_np)), backend.asarray(labels))
    grad_x = model.backward(loss_fn.backward())
    assert loss == pytest.approx(ref_loss.item(), rel=1e-10)
    np.testing.assert_allclose(as_numpy(grad_x), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    ref_params = dict(ref.named_parameters())
    assert [n for n, _ in model.named_parameters()] == list(ref_params)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(as_numpy(p.grad), ref_params[name].grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)
    model.eval()
    np.testing.assert_allclose(as_numpy(model(backend.asarray(x_np))), ref(xt).detach().numpy(), rtol=1e-10,
                               atol=1e-12)


def test_lenet5_is_initialized_as_torch_from_seeds():
    state, again = lenet5(seed=2).state_dict(), lenet5(seed=2).state_dict()
    assert all(np.array_equal(state[k], again[k]) for k in state)
    for key, fan_in in (("conv1.weight", 25), ("conv2.weight", 150), ("fc1.weight", 400), ("fc3.bias", 84)):
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(state[key]).max() <= bound and np.abs(state[key]).max() > 0.8 * bound, key


def test_models_table_names_every_builder():
    assert set(MODELS) == set(SMALL)


@pytest.mark.parametrize("name", list(SMALL))
def test_arch_record_round_trips_through_save_and_load(name, tmp_path, rng):
    kwargs, shape = SMALL[name]
    model = MODELS[name](**kwargs, seed=3).eval()
    assert model.arch["name"] == name
    assert {k: v for k, v in model.arch["kwargs"].items() if k in kwargs} == kwargs
    path = xpconv.save(model, tmp_path / f"{name}.npz")
    assert read_metadata(path)["arch"] == model.arch
    loaded = xpconv.load(path).eval()                           # rebuilt from the record alone
    assert type(loaded) is type(model) and loaded.arch == model.arch
    assert list(loaded.state_dict()) == list(model.state_dict())
    x = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(loaded(x), model(x))
    rebuilt = build_model(model.arch, backend="numpy")         # same record, same seed default: same weights
    assert all(np.array_equal(a, b) for a, b in zip(rebuilt.state_dict().values(),
                                                     MODELS[name](**kwargs).state_dict().values(), strict=True))


def test_build_model_errors():
    with pytest.raises(ValueError, match=r"unknown architecture .*known: small_cnn, lenet5, resnet20"):
        build_model({"name": "resnet18", "kwargs": {}})
    with pytest.raises(ValueError, match="does not fit lenet5"):
        build_model({"name": "lenet5", "kwargs": {"depth": 3}})
    with pytest.raises(ValueError, match="shortcut must be one of"):
        build_model({"name": "resnet20", "kwargs": {"shortcut": "C"}})
    with pytest.raises(ValueError, match="num_blocks must be three ints"):
        cifar_resnet([1, 1])
