"""MaxPool2d and AvgPool2d: finite differences on every backend, torch as reference, padding, errors."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import HAS_TORCH, as_numpy
from layer_check import check_layer_gradients, torch_leaf
from xpconv import nn

# (kernel_size, stride, padding): non-overlapping, overlapping, padded, rectangular, kernel 1
CONFIGS = [(2, None, 0), (3, 1, 1), (3, 2, 1), ((2, 3), (1, 2), (1, 0)), (1, None, 0)]


def _distinct(rng, shape):
    """Values whose pairwise gaps are >= 0.01, so no max changes within a finite-difference step."""
    return rng.permutation(np.arange(np.prod(shape)) * 0.01 - 1.0).reshape(shape)


@pytest.mark.parametrize("cls", [nn.MaxPool2d, nn.AvgPool2d])
@pytest.mark.parametrize("kernel, stride, padding", CONFIGS[:4])
def test_gradients_by_finite_differences(backend, rng, cls, kernel, stride, padding):
    layer = cls(kernel, stride, padding, backend=backend, dtype="float64")
    check_layer_gradients(layer, _distinct(rng, (1, 2, 5, 6)))


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("kernel, stride, padding", CONFIGS)
def test_match_torch(backend, rng, kernel, stride, padding):
    import torch.nn.functional as F

    x_np = rng.standard_normal((3, 2, 7, 6)) - 2.0            # mostly negative: padding must never win
    for cls, ref in ((nn.MaxPool2d, F.max_pool2d), (nn.AvgPool2d, F.avg_pool2d)):
        layer = cls(kernel, stride, padding, backend=backend, dtype="float64")
        y = layer(backend.asarray(x_np))
        dy = rng.standard_normal(tuple(y.shape))
        dx = layer.backward(backend.asarray(dy))
        xt = torch_leaf(x_np)
        yt = ref(xt, kernel, stride, padding)
        yt.backward(torch_leaf(dy))
        np.testing.assert_allclose(as_numpy(y), yt.detach().numpy(), rtol=1e-12, atol=1e-12, err_msg=cls.__name__)
        np.testing.assert_allclose(as_numpy(dx), xt.grad.numpy(), rtol=1e-12, atol=1e-12, err_msg=cls.__name__)


def test_max_pool_routes_gradient_to_argmax_and_skips_padding(backend):
    x = np.array([[[[-5.0, -1.0, -7.0],
                    [-3.0, -9.0, -2.0],
                    [-4.0, -6.0, -8.0]]]], dtype=np.float32)
    layer = nn.MaxPool2d(2, stride=2, padding=1, backend=backend)
    y = layer(backend.asarray(x))
    # windows over the padded input: {-5}, {-1, -7}, {-3, -4}, {-9, -2, -6, -8}
    np.testing.assert_array_equal(as_numpy(y), [[[[-5.0, -1.0], [-3.0, -2.0]]]])
    dx = layer.backward(backend.asarray(np.array([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=np.float32)))
    np.testing.assert_array_equal(as_numpy(dx), [[[[1.0, 2.0, 0.0], [3.0, 0.0, 4.0], [0.0, 0.0, 0.0]]]])
    assert dx.dtype == backend.xp.float32


def test_avg_pool_counts_padding_as_zero(backend):
    x = np.ones((1, 1, 2, 2), dtype=np.float32)
    y = nn.AvgPool2d(2, stride=1, padding=1, backend=backend)(backend.asarray(x))
    np.testing.assert_allclose(as_numpy(y), [[[[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]]]])


def test_eval_mode_keeps_no_cache_and_input_untouched(backend, rng):
    x_np = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    x = backend.asarray(x_np)
    layer = nn.MaxPool2d(2, backend=backend).eval()
    assert tuple(layer(x).shape) == (2, 3, 2, 2)
    np.testing.assert_array_equal(as_numpy(x), x_np)
    with pytest.raises(RuntimeError, match="training mode"):
        layer.backward(backend.xp.ones((2, 3, 2, 2), dtype=backend.xp.float32, device=backend.device))


def test_rejects_bad_arguments_and_inputs(backend):
    xp = backend.xp
    with pytest.raises(ValueError, match="at most half of kernel_size"):
        nn.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="kernel_size"):
        nn.AvgPool2d(0)
    with pytest.raises(ValueError, match=r"expects x of shape \(N, C, H, W\)"):
        nn.MaxPool2d(2, backend=backend)(xp.zeros((3, 4, 4), dtype=xp.float32, device=backend.device))
    with pytest.raises(ValueError, match="larger than the padded input"):
        nn.AvgPool2d(5, backend=backend)(xp.zeros((1, 1, 3, 3), dtype=xp.float32, device=backend.device))
    layer = nn.MaxPool2d(2, backend=backend)
    layer(xp.zeros((1, 1, 4, 4), dtype=xp.float32, device=backend.device))
    with pytest.raises(ValueError, match="grad_output must have the output's shape"):
        layer.backward(xp.zeros((1, 1, 3, 3), dtype=xp.float32, device=backend.device))
