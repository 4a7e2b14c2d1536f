"""PyTorch weights: ``to_torch_state_dict`` feeds an equivalent ``torch.nn`` model as it is, and
``from_torch_state_dict`` brings a torch model's weights back; the outputs agree to 1e-10 in float64.

The torch models are written here, independently, from PyTorch's own layers (the CIFAR ResNet as the widely
used PyTorch code writes it, option-A shortcuts through ``F.pad``).
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import BACKENDS, as_numpy, make_backend
from xpconv.io import from_torch_state_dict, to_torch_state_dict
from xpconv.models import lenet5, resnet20, small_cnn

torch = pytest.importorskip("torch", reason="torch is not installed")
tnn, F = torch.nn, torch.nn.functional


class _PadShortcut(tnn.Module):
    def __init__(self, planes):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _Block(tnn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.shortcut = _PadShortcut(planes) if stride != 1 or in_planes != planes else tnn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class _ResNet20(tnn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(3):
                blocks.append(_Block(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(tnn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = tnn.Linear(64, 10)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def _torch_small_cnn():
    return tnn.Sequential(tnn.Conv2d(1, 32, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
                          tnn.Conv2d(32, 64, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
                          tnn.Linear(64 * 2 * 2, 10))


def _torch_lenet5():
    from collections import OrderedDict

    return tnn.Sequential(OrderedDict(
        conv1=tnn.Conv2d(1, 6, 5, padding=2), relu1=tnn.ReLU(), pool1=tnn.MaxPool2d(2),
        conv2=tnn.Conv2d(6, 16, 5), relu2=tnn.ReLU(), pool2=tnn.MaxPool2d(2), flatten=tnn.Flatten(),
        fc1=tnn.Linear(400, 120), relu3=tnn.ReLU(), fc2=tnn.Linear(120, 84), relu4=tnn.ReLU(), fc3=tnn.Linear(84, 10)))


CASES = {"small_cnn": (small_cnn, _torch_small_cnn, (1, 8, 8)), "lenet5": (lenet5, _torch_lenet5, (1, 28, 28)),
         "resnet20": (resnet20, _ResNet20, (3, 32, 32))}


def _randomize_statistics(model, rng):
    """BatchNorm running statistics away from (0, 1), so that eval mode tests them too."""
    for m in model.modules():
        if getattr(m, "running_mean", None) is not None:
            c = m.num_features
            m.running_mean = m.backend.asarray(rng.standard_normal(c), dtype=m.dtype)
            m.running_var = m.backend.asarray(rng.uniform(0.5, 2.0, c), dtype=m.dtype)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("spec", BACKENDS)
def test_weights_to_torch_give_the_same_outputs_and_come_back(name, spec, rng):
    build, build_torch, shape = CASES[name]
    backend = make_backend(spec)
    model = build(seed=1, backend=backend, dtype="float64")
    _randomize_statistics(model, rng)
    model.eval()
    state = to_torch_state_dict(model)
    assert all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in state.values())
    reference = build_torch().double().eval()
    reference.load_state_dict(state, strict=True)                    # the keys are torch's: nothing renamed
    x = rng.standard_normal((3, *shape))
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    got = as_numpy(model(backend.asarray(x, dtype="float64")))
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)

    # and back: a torch model's (different) weights into a fresh xpconv model on this backend
    with torch.no_grad():
        for p in reference.parameters():
            p.mul_(0.9).add_(0.01)
    fresh = build(seed=7, backend=backend, dtype="float64").eval()
    assert from_torch_state_dict(fresh, reference.state_dict()) is fresh
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(as_numpy(fresh(backend.asarray(x, dtype="float64"))), expected, rtol=1e-10,
                               atol=1e-10)


def test_from_torch_takes_a_module_and_refuses_a_mismatch_leaving_the_model_unchanged():
    model = small_cnn(seed=0)
    reference = _torch_small_cnn()
    from_torch_state_dict(model, reference)                        # a torch.nn.Module: its state_dict()
    np.testing.assert_array_equal(model.state_dict()["0.weight"], reference[0].weight.detach().numpy())
    before = model.state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['7.bias', '7.weight'\]"):
        from_torch_state_dict(model, {k: v for k, v in reference.state_dict().items() if not k.startswith("7.")})
    wrong = dict(reference.state_dict(), **{"0.weight": torch.zeros(32, 1, 5, 5)})
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(32, 1, 5, 5\)"):
        from_torch_state_dict(model, wrong)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_the_torch_tensors_are_new_and_keep_the_model_dtype():
    model = small_cnn(seed=0)
    state = to_torch_state_dict(model)
    assert state["0.weight"].dtype == torch.float32
    state["0.weight"].zero_()
    assert np.abs(model.state_dict()["0.weight"]).sum() > 0
