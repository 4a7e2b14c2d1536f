"""Dropout and BatchNorm2d: finite differences, train/eval behaviour, running statistics against torch."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import HAS_TORCH, as_numpy
from layer_check import check_layer_gradients, torch_leaf
from xpconv import nn

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")


# -- Dropout -------------------------------------------------------------------------------------------
def test_dropout_masks_are_drawn_on_the_device_reproducibly(backend, monkeypatch):
    """Masks come from the backend's own generator, on its device (no host draw, no upload), the same for the
    same seed and after a state restore."""
    x = backend.asarray(np.ones((4, 64), dtype=np.float32))
    draws, random = [], type(backend).random

    def spy(self, generator, shape, dtype):
        draws.append(shape)
        return random(self, generator, shape, dtype)

    monkeypatch.setattr(type(backend), "random", spy)
    first = nn.Dropout(0.5, backend=backend, seed=7)
    state = first.random_state()
    masks = [as_numpy(first(x)) for _ in range(2)]
    assert draws == [(4, 64), (4, 64)]
    assert not np.array_equal(masks[0], masks[1])
    np.testing.assert_array_equal(as_numpy(nn.Dropout(0.5, backend=backend, seed=7)(x)), masks[0])
    first.set_random_state(state)
    np.testing.assert_array_equal(as_numpy(first(x)), masks[0])


def test_dropout_gradient_by_finite_differences(backend, rng):
    layer = nn.Dropout(0.4, backend=backend, dtype="float64", seed=3)
    state = layer.random_state()

    def replay_mask():
        layer.set_random_state(state)

    check_layer_gradients(layer, rng.standard_normal((3, 7)), reset=replay_mask)


def test_dropout_train_zeroes_and_scales_eval_is_identity(backend, rng):
    x_np = rng.uniform(1.0, 2.0, size=(50, 200)).astype(np.float32)
    x = backend.asarray(x_np)
    layer = nn.Dropout(0.3, backend=backend, seed=0)
    y = as_numpy(layer(x))
    dropped = y == 0
    assert 0.27 < dropped.mean() < 0.33                                  # 10000 draws, p = 0.3
    np.testing.assert_allclose(y[~dropped], x_np[~dropped] / 0.7, rtol=1e-6)
    dx = as_numpy(layer.backward(backend.xp.ones_like(x)))
    np.testing.assert_array_equal(dx == 0, dropped)                     # the same mask goes backward
    np.testing.assert_array_equal(as_numpy(x), x_np)
    layer.eval()
    np.testing.assert_array_equal(as_numpy(layer(x)), x_np)
    with pytest.raises(RuntimeError, match="training mode"):
        layer.backward(x)


def test_dropout_masks_differ_between_libraries_but_not_between_runs(backend):
    """Each library draws with its own generator: the same seed gives other masks on another library
    (documented), and always the same on this one."""
    x = np.ones((4, 64), dtype=np.float32)
    a, b = (nn.Dropout(0.5, backend=backend, seed=11)(backend.asarray(x)) for _ in range(2))
    np.testing.assert_array_equal(as_numpy(a), as_numpy(b))
    if backend.name not in ("numpy", "array_api_strict"):                 # these two share NumPy's generator
        assert not np.array_equal(as_numpy(a), nn.Dropout(0.5, backend="numpy", seed=11)(x))


def test_dropout_extreme_p_and_bad_arguments(backend):
    x = backend.xp.ones((2, 3), dtype=backend.xp.float32, device=backend.device)
    np.testing.assert_array_equal(as_numpy(nn.Dropout(0.0, backend=backend)(x)), np.ones((2, 3)))
    np.testing.assert_array_equal(as_numpy(nn.Dropout(1.0, backend=backend)(x)), np.zeros((2, 3)))
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="dropout probability"):
            nn.Dropout(p)
    with pytest.raises(TypeError, match="dropout probability"):
        nn.Dropout("0.5")
    if backend.name != "numpy":
        with pytest.raises(ValueError, match="move the model"):
            nn.Dropout(0.5)(x)


def test_dropout_rejects_a_wrong_gradient_and_keeps_its_mask(backend):
    xp = backend.xp
    layer = nn.Dropout(0.5, backend=backend, seed=0)
    y = layer(xp.ones((2, 3), dtype=xp.float32, device=backend.device))
    with pytest.raises(ValueError, match=r"shape \(2, 3\), got \(1, 3\)"):    # would broadcast silently
        layer.backward(xp.ones((1, 3), dtype=xp.float32, device=backend.device))
    np.testing.assert_array_equal(as_numpy(layer.backward(xp.ones_like(y))), as_numpy(y))


# -- Dropout2d -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 4, 2, 3), (5, 2, 3)])
def test_dropout2d_zeroes_whole_channels_with_dropouts_masks(backend, shape):
    x = np.ones(shape, dtype=np.float32)
    layer = nn.Dropout2d(0.5, backend=backend, seed=4)
    y = as_numpy(layer(backend.asarray(x)))
    channels = backend.asarray(np.ones((*shape[:-2], 1, 1), dtype=np.float32))
    keep = as_numpy(nn.Dropout(0.5, backend=backend, seed=4)(channels)) > 0   # Dropout's draw, one per channel
    np.testing.assert_array_equal(y, np.broadcast_to(keep * 2.0, shape))
    assert 0 < keep.sum() < keep.size
    np.testing.assert_array_equal(as_numpy(layer.backward(backend.asarray(3 * x))), 3 * y)
    layer.eval()
    np.testing.assert_array_equal(as_numpy(layer(backend.asarray(x))), x)


def test_dropout2d_gradient_by_finite_differences(backend, rng):
    layer = nn.Dropout2d(0.4, backend=backend, dtype="float64", seed=5)
    state = layer.random_state()

    def replay_mask():
        layer.set_random_state(state)

    check_layer_gradients(layer, rng.standard_normal((2, 3, 2, 2)), reset=replay_mask)


@needs_torch
def test_dropout2d_statistics_match_torch_semantics(backend, rng):
    """Per-channel keep rate 1 - p and the 1/(1-p) scale, as torch's Dropout2d (whose masks come from its own RNG)."""
    import torch

    x = rng.uniform(1.0, 2.0, size=(40, 50, 2, 2))
    y = as_numpy(nn.Dropout2d(0.3, backend=backend, dtype="float64", seed=1)(backend.asarray(x)))
    torch.manual_seed(0)
    yt = torch.nn.Dropout2d(0.3)(torch.from_numpy(x)).numpy()
    for out in (y, yt):
        kept = np.all(out != 0, axis=(2, 3))
        assert np.array_equal(kept, np.any(out != 0, axis=(2, 3)))           # a channel is kept or dropped whole
        assert 0.65 < kept.mean() < 0.75                                      # 2000 channels, p = 0.3
        np.testing.assert_allclose(out[kept], x[kept] / 0.7, rtol=1e-12)


def test_dropout2d_rejects_other_ranks(backend):
    xp = backend.xp
    with pytest.raises(ValueError, match=r"Dropout2d expects x of shape \(N, C, H, W\) or \(C, H, W\)"):
        nn.Dropout2d(backend=backend)(xp.ones((2, 3), dtype=xp.float32, device=backend.device))
    assert nn.Dropout2d(backend=backend).eval()(xp.ones((2, 3), dtype=xp.float32, device=backend.device)) is not None


# -- BatchNorm2d ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_gradients_by_finite_differences(backend, rng, affine):
    layer = nn.BatchNorm2d(3, affine=affine, backend=backend, dtype="float64")
    if affine:
        layer.weight.data = backend.asarray(rng.uniform(0.5, 2.0, 3))
        layer.bias.data = backend.asarray(rng.standard_normal(3))
    check_layer_gradients(layer, rng.standard_normal((2, 3, 2, 3)) * 2 + 1)


@needs_torch
def test_batchnorm_matches_torch_in_train_and_eval(backend, rng):
    import torch

    ours = nn.BatchNorm2d(3, momentum=0.2, backend=backend, dtype="float64")
    ref = torch.nn.BatchNorm2d(3, momentum=0.2, dtype=torch.float64)
    w, b = rng.uniform(0.5, 2.0, 3), rng.standard_normal(3)
    ours.weight.data, ours.bias.data = backend.asarray(w), backend.asarray(b)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(w))
        ref.bias.copy_(torch.from_numpy(b))
    for step in range(2):
        x_np = rng.standard_normal((4, 3, 3, 2)) * (step + 1) + step
        ours.zero_grad()
        ref.zero_grad()
        y = ours(backend.asarray(x_np))
        dy = rng.standard_normal(x_np.shape)
        dx = ours.backward(backend.asarray(dy))
        xt = torch_leaf(x_np)
        yt = ref(xt)
        yt.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(as_numpy(y), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(as_numpy(dx), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(as_numpy(ours.weight.grad), ref.weight.grad.numpy(), rtol=1e-10)
        np.testing.assert_allclose(as_numpy(ours.bias.grad), ref.bias.grad.numpy(), rtol=1e-10)
    state, ref_state = ours.state_dict(), ref.state_dict()
    assert list(state) == list(ref_state)
    for key, value in ref_state.items():
        np.testing.assert_allclose(state[key], value.numpy(), rtol=1e-12, err_msg=key)
    ours.eval()
    ref.eval()
    x_np = rng.standard_normal((2, 3, 2, 2))
    np.testing.assert_allclose(as_numpy(ours(backend.asarray(x_np))), ref(torch.from_numpy(x_np)).detach().numpy(),
                               rtol=1e-10, atol=1e-12)


def test_batchnorm_eval_uses_running_statistics_only(backend, rng):
    layer = nn.BatchNorm2d(2, backend=backend, dtype="float64").eval()
    layer.register_buffer("running_mean", backend.asarray(np.array([1.0, -2.0])))
    layer.register_buffer("running_var", backend.asarray(np.array([4.0, 0.25])))
    x_np = rng.standard_normal((3, 2, 2, 2))
    expected = (x_np - np.array([1.0, -2.0])[:, None, None]) / np.sqrt(np.array([4.0, 0.25]) + 1e-5)[:, None, None]
    np.testing.assert_allclose(as_numpy(layer(backend.asarray(x_np))), expected, rtol=1e-12)
    np.testing.assert_array_equal(as_numpy(layer.running_mean), [1.0, -2.0])     # eval does not update
    assert int(as_numpy(layer.num_batches_tracked)) == 0


def test_batchnorm_keeps_float32_and_rejects_bad_input(backend):
    xp = backend.xp
    layer = nn.BatchNorm2d(3, backend=backend)
    y = layer(xp.ones((2, 3, 2, 2), dtype=xp.float32, device=backend.device))
    assert y.dtype == layer.running_var.dtype == xp.float32
    with pytest.raises(ValueError, match=r"expects x of shape \(N, 3, H, W\)"):
        layer(xp.ones((2, 4, 2, 2), dtype=xp.float32, device=backend.device))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(xp.ones((1, 3, 1, 1), dtype=xp.float32, device=backend.device))
    for kwargs, match in (({"num_features": 0}, "num_features must be a positive int"),
                          ({"num_features": 2, "eps": 0}, "eps must lie in"),
                          ({"num_features": 2, "momentum": 2}, "momentum must lie in")):
        with pytest.raises(ValueError, match=match):
            nn.BatchNorm2d(**kwargs)


def test_batchnorm_moves_and_saves_its_buffers(backend):
    layer = nn.BatchNorm2d(2, backend="numpy")
    layer(np.arange(16, dtype=np.float32).reshape(2, 2, 2, 2))
    state = layer.state_dict()
    layer.to(backend)
    assert layer.running_mean.dtype == backend.xp.float32
    assert layer.num_batches_tracked.dtype == backend.xp.int64
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, state[key])


def test_assigning_a_buffer_keeps_it_registered(backend):
    """As in PyTorch: ``bn.running_mean = new`` replaces the buffer, it stays in state_dict() and moves with .to()."""
    bn = nn.BatchNorm2d(3, backend=backend)
    new = backend.asarray(np.array([1.0, 2.0, 3.0]), dtype="float32")
    bn.running_mean = new
    state = bn.state_dict()
    assert set(state) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    np.testing.assert_array_equal(state["running_mean"], [1.0, 2.0, 3.0])
    bn.to("numpy")
    assert isinstance(bn.running_mean, np.ndarray)
    np.testing.assert_array_equal(bn.running_mean, [1.0, 2.0, 3.0])
