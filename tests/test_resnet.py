"""CIFAR ResNets against the same networks written in torch (the widely used PyTorch CIFAR ResNet layout):
state dicts load without renaming; logits, loss, running statistics, every parameter gradient and the input
gradient agree in float64; sizes, initialization and seeds."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import HAS_TORCH, as_numpy
from xpconv import nn
from xpconv.models import cifar_resnet, resnet20, resnet32, resnet56

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")


def torch_cifar_resnet(num_blocks, option="A", num_classes=10):
    """He et al.'s CIFAR ResNet as it is usually written in PyTorch (BasicBlock with options A/B)."""
    import torch
    import torch.nn.functional as F
    from torch import nn as tnn

    class LambdaLayer(tnn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x):
            return self.fn(x)

    class BasicBlock(tnn.Module):
        def __init__(self, in_planes, planes, stride=1):
            super().__init__()
            self.conv1 = tnn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.conv2 = tnn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.shortcut = tnn.Sequential()
            if stride != 1 or in_planes != planes:
                if option == "A":
                    self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2],
                                                                (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0))
                else:
                    self.shortcut = tnn.Sequential(tnn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                                   tnn.BatchNorm2d(planes))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))

    class ResNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.in_planes = 16
            self.conv1 = tnn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
            self.bn1 = tnn.BatchNorm2d(16)
            self.layer1 = self._make_layer(16, num_blocks[0], 1)
            self.layer2 = self._make_layer(32, num_blocks[1], 2)
            self.layer3 = self._make_layer(64, num_blocks[2], 2)
            self.linear = tnn.Linear(64, num_classes)

        def _make_layer(self, planes, n, stride):
            layers = []
            for s in [stride] + [1] * (n - 1):
                layers.append(BasicBlock(self.in_planes, planes, s))
                self.in_planes = planes
            return tnn.Sequential(*layers)

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.layer3(self.layer2(self.layer1(out)))
            out = F.avg_pool2d(out, out.size()[3])
            return self.linear(out.view(out.size(0), -1))

    torch.manual_seed(0)
    model = ResNet().double()
    with torch.no_grad():                    # non-trivial BatchNorm parameters and running statistics
        for m in model.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _parameter_count(model) -> int:
    return sum(int(np.prod(p.shape)) for p in model.parameters())


def test_resnet20_has_the_papers_parameter_count():
    assert _parameter_count(resnet20()) == 269_722          # He et al. 2016, table 6: 0.27M
    assert _parameter_count(resnet20(num_classes=100)) == 269_722 + 90 * 65


@needs_torch
@pytest.mark.parametrize("build, n", [(resnet20, 3), (resnet32, 5), (resnet56, 9)])
def test_resnet_sizes_and_keys_match_torch(build, n):
    ours, ref = build(), torch_cifar_resnet((n, n, n))
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert _parameter_count(ours) == _parameter_count(ref)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: tuple(v.shape)
                                                                  for k, v in ref.state_dict().items()}


@needs_torch
@pytest.mark.parametrize("num_blocks, option", [((3, 3, 3), "A"), ((1, 1, 1), "B"), ((2, 1, 1), "A")])
def test_resnet_matches_torch_in_float64(backend, rng, num_blocks, option):
    """Train mode (batch statistics): logits, loss, running statistics and every gradient; eval mode: logits."""
    import torch

    ref = torch_cifar_resnet(num_blocks, option)
    model = cifar_resnet(num_blocks, shortcut=option, backend=backend, dtype="float64", seed=1)
    model.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})   # the keys match as they are
    x_np, labels = rng.standard_normal((4, 3, 16, 16)), np.array([0, 3, 9, 1])

    # eval: the running statistics, before any training forward changes them
    xt = torch.from_numpy(x_np)
    ref.eval()
    model.eval()
    np.testing.assert_allclose(as_numpy(model(backend.asarray(x_np))), ref(xt).detach().numpy(),
                               rtol=1e-10, atol=1e-12)

    ref.train()
    model.train()
    xt = torch.tensor(x_np, requires_grad=True)
    ref_loss = torch.nn.functional.cross_entropy(ref(xt), torch.from_numpy(labels))
    ref_loss.backward()
    loss_fn = nn.CrossEntropyLoss()
    model.zero_grad()
    loss = loss_fn(model(backend.asarray(x_np)), backend.asarray(labels))
    grad_x = model.backward(loss_fn.backward())
    assert loss == pytest.approx(ref_loss.item(), rel=1e-10)
    np.testing.assert_allclose(as_numpy(grad_x), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        np.testing.assert_allclose(as_numpy(p.grad), ref_params[name].grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)
    ref_state = ref.state_dict()
    for name, value in model.state_dict().items():           # running statistics after the training forward
        np.testing.assert_allclose(value, ref_state[name].numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_kaiming_normal_init_from_seeds():
    model = resnet20(seed=3)
    state = model.state_dict()
    for key, fan_in in (("layer3.2.conv2.weight", 64 * 9), ("layer2.0.conv1.weight", 16 * 9), ("linear.weight", 64)):
        w = state[key]
        assert abs(w.mean()) < 0.1 * np.sqrt(2 / fan_in), key
        assert w.std() == pytest.approx(np.sqrt(2 / fan_in), rel=0.1 if w.size < 1000 else 0.03), key
    bound = 1 / np.sqrt(64)
    assert np.all(np.abs(state["linear.bias"]) <= bound) and np.ptp(state["linear.bias"]) > 0
    for key in (k for k in state if k.endswith(("bn1.weight", "bn2.weight"))):
        assert np.all(state[key] == 1) and np.all(state[key.replace("weight", "bias")] == 0), key
    again, other = resnet20(seed=3).state_dict(), resnet20(seed=4).state_dict()
    assert all(np.array_equal(state[k], again[k]) for k in state)
    assert not np.array_equal(state["layer1.0.conv1.weight"], other["layer1.0.conv1.weight"])
    convs = [state[k] for k in state if k.endswith("conv1.weight") and state[k].shape == (16, 16, 3, 3)]
    assert not np.array_equal(convs[0], convs[1])             # every block draws its own weights


def test_same_seed_same_weights_on_every_backend(backend):
    host = resnet20(seed=5, dtype="float64").state_dict()
    there = resnet20(seed=5, dtype="float64", backend=backend).state_dict()
    assert all(np.array_equal(host[k], there[k]) for k in host)


def test_resnet_argument_errors():
    with pytest.raises(ValueError, match="shortcut must be one of"):
        resnet20(shortcut="C")
    with pytest.raises(ValueError, match="num_blocks must be three ints"):
        cifar_resnet((3, 3))
    with pytest.raises(ValueError, match=r"num_blocks\[1\] must be a positive int"):
        cifar_resnet((3, 0, 3))
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        resnet20(in_channels=0)


def _resnet20_steps(backend, x, labels, steps=3):
    """Losses and final state of ``steps`` SGD-with-momentum steps of a seeded float32 ResNet-20."""
    from xpconv.optim import SGD

    model = resnet20(backend=backend, seed=5)
    optimizer, loss_fn = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4), nn.CrossEntropyLoss()
    xb, yb = model.backend.asarray(x), model.backend.asarray(labels)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        losses.append(loss_fn(model(xb), yb))
        model.backward(loss_fn.backward())
        optimizer.step()
    return losses, model.state_dict()


def test_resnet20_first_training_steps_agree_across_backends(backend, rng):
    """Three float32 training steps (batch statistics, momentum, weight decay) follow NumPy's within float32
    tolerance on every backend."""
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    labels = np.array([0, 3, 9, 1])
    ref_losses, ref_state = _resnet20_steps("numpy", x, labels)
    losses, state = _resnet20_steps(backend, x, labels)
    assert ref_losses[-1] < ref_losses[0]                    # the steps do train
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for key, value in ref_state.items():
        np.testing.assert_allclose(state[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
