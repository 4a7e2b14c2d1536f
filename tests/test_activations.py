"""Elementwise activations, Softmax, Identity and erf: torch float64 as reference, finite differences, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import HAS_TORCH, as_numpy
from layer_check import check_layer_gradients, torch_leaf
from xpconv import nn
from xpconv.nn.activation import erf

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")

# (id, xpconv layer factory, torch module factory, has a kink at 0)
LAYERS = [
    ("ReLU", lambda **kw: nn.ReLU(**kw), lambda t: t.nn.ReLU(), True),
    ("LeakyReLU", lambda **kw: nn.LeakyReLU(0.2, **kw), lambda t: t.nn.LeakyReLU(0.2), True),
    ("LeakyReLU-negative", lambda **kw: nn.LeakyReLU(-1.5, **kw), lambda t: t.nn.LeakyReLU(-1.5), True),
    ("ELU", lambda **kw: nn.ELU(**kw), lambda t: t.nn.ELU(), True),
    ("ELU-alpha", lambda **kw: nn.ELU(alpha=1.7, **kw), lambda t: t.nn.ELU(alpha=1.7), True),
    ("GELU", lambda **kw: nn.GELU(**kw), lambda t: t.nn.GELU(), False),
    ("GELU-tanh", lambda **kw: nn.GELU(approximate="tanh", **kw), lambda t: t.nn.GELU(approximate="tanh"), False),
    ("SiLU", lambda **kw: nn.SiLU(**kw), lambda t: t.nn.SiLU(), False),
    ("Sigmoid", lambda **kw: nn.Sigmoid(**kw), lambda t: t.nn.Sigmoid(), False),
    ("Tanh", lambda **kw: nn.Tanh(**kw), lambda t: t.nn.Tanh(), False),
    ("Softmax-dim1", lambda **kw: nn.Softmax(dim=1, **kw), lambda t: t.nn.Softmax(dim=1), False),
    ("Softmax-dim-1", lambda **kw: nn.Softmax(-1, **kw), lambda t: t.nn.Softmax(dim=-1), False),
    ("Identity", lambda **kw: nn.Identity(3, "ignored", flag=True, **kw), lambda t: t.nn.Identity(), False),
]
IDS = [case[0] for case in LAYERS]


def _inputs(rng, shape, kink: bool) -> np.ndarray:
    """Normal values times 3; with a kink at 0, kept at |x| >= 0.1 so no finite-difference step crosses it."""
    x = 3 * rng.standard_normal(shape)
    return np.where(np.abs(x) < 0.1, 0.1 + np.abs(x), x) if kink else x


# -- erf --------------------------------------------------------------------------------------------------
ERF_POINTS = np.concatenate([
    [0.0, -0.0, 1e-300, 5e-324, 1e-8, 0.46875, np.nextafter(0.46875, 1), 4.0, np.nextafter(4.0, 5), 5.9, 6.0,
     26.0, 27.0, 30.0, 31.0, 1e10, 1e300],
    np.linspace(0.0, 7.0, 7001), np.geomspace(1e-12, 1.0, 500)])


def test_erf_matches_math_erf_in_float64():
    x = np.concatenate([ERF_POINTS, -ERF_POINTS])
    got = erf(x)
    expected = np.array([math.erf(v) for v in x])
    ulp = np.spacing(np.abs(expected))                        # math.erf is correctly rounded to about 1 ulp
    assert np.all(np.abs(got - expected) <= 4 * np.maximum(ulp, np.spacing(1e-300)))
    assert np.max(np.abs(got - expected)) <= 2.3e-16                      # absolute, across all points


def test_erf_special_values_and_dtypes(backend):
    xp = backend.xp
    x = backend.asarray(np.array([np.inf, -np.inf, np.nan, 0.5]), dtype="float32")
    y = erf(x)
    assert y.dtype == xp.float32
    np.testing.assert_array_equal(as_numpy(y)[:3], [1.0, -1.0, np.nan])
    assert as_numpy(y)[3] == pytest.approx(math.erf(0.5), rel=1e-6)
    x64 = backend.asarray(np.linspace(-8, 8, 321), dtype="float64")
    np.testing.assert_allclose(as_numpy(erf(x64)), [math.erf(v) for v in np.linspace(-8, 8, 321)],
                               rtol=0, atol=3e-16)
    with pytest.raises(TypeError, match="real floating"):
        erf(backend.asarray(np.array([1, 2])))


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=-40, max_value=40, allow_nan=False))
def test_erf_matches_math_erf_for_random_values(v):
    assert abs(float(erf(np.array([v]))[0]) - math.erf(v)) <= 4 * np.spacing(abs(math.erf(v))) + 1e-300


# -- against torch ---------------------------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("name, make, make_torch, kink", LAYERS, ids=IDS)
def test_forward_and_backward_match_torch(backend, rng, name, make, make_torch, kink):
    import torch

    x_np = _inputs(rng, (4, 5, 3), kink)
    x_np[0, 0, :] = [0.0, 40.0, -40.0]                                   # 0 (a kink: torch's convention) and tails
    layer = make(backend=backend, dtype="float64")
    y = layer(backend.asarray(x_np))
    dy = rng.standard_normal(tuple(y.shape))
    dx = layer.backward(backend.asarray(dy))
    xt = torch_leaf(x_np)
    yt = make_torch(torch)(xt)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(as_numpy(y), yt.detach().numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(as_numpy(dx), xt.grad.numpy(), rtol=1e-10, atol=1e-14)


@needs_torch
@pytest.mark.parametrize("name, make, make_torch, kink", LAYERS, ids=IDS)
def test_huge_inputs_stay_finite_and_match_torch(backend, name, make, make_torch, kink):
    """No overflow (pytest turns NumPy's overflow warnings into errors) and torch's values, float32 and 64."""
    import torch

    for dtype, big in (("float32", 1e30), ("float64", 1e300)):
        x_np = np.array([[-big, -1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4, big]])
        layer = make(backend=backend, dtype=dtype)
        y = layer(backend.asarray(x_np, dtype=dtype))
        dx = layer.backward(backend.xp.ones_like(y))
        assert y.dtype == dx.dtype == backend.dtype(dtype)
        xt = torch.tensor(x_np, dtype=getattr(torch, dtype), requires_grad=True)
        yt = make_torch(torch)(xt)
        yt.backward(torch.ones_like(yt))
        np.testing.assert_allclose(as_numpy(y), yt.detach().double().numpy(), rtol=1e-6, atol=1e-30)
        ref_dx = xt.grad.double().numpy()
        if name == "GELU-tanh":      # torch's x^2 overflows to inf and 0 * inf gives NaN; the true slope is 0 or 1
            ref_dx = np.where(np.isnan(ref_dx) & (np.abs(x_np) == big), (x_np > 0).astype(float), ref_dx)
        np.testing.assert_allclose(as_numpy(dx), ref_dx, rtol=1e-6, atol=1e-30)


@needs_torch
@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_softmax_matches_torch_for_random_shapes_and_dims(shape, data):
    import torch

    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(len(shape) * 10 + dim)
    x_np, dy = 5 * rng.standard_normal(shape), rng.standard_normal(shape)
    layer = nn.Softmax(dim, dtype="float64")
    y, dx = layer(x_np), None
    dx = layer.backward(dy)
    xt = torch_leaf(x_np)
    yt = torch.softmax(xt, dim)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-15)


# -- finite differences, modes, dtypes --------------------------------------------------------------------
@pytest.mark.parametrize("name, make, make_torch, kink", LAYERS, ids=IDS)
def test_gradients_by_finite_differences(backend, rng, name, make, make_torch, kink):
    check_layer_gradients(make(backend=backend, dtype="float64"), _inputs(rng, (2, 3, 2), kink))


@pytest.mark.parametrize("name, make, make_torch, kink", LAYERS, ids=IDS)
def test_train_eval_float32_and_input_untouched(backend, rng, name, make, make_torch, kink):
    x_np = _inputs(rng, (3, 4), kink).astype(np.float32)
    x = backend.asarray(x_np)
    layer = make(backend=backend)
    y_train = as_numpy(layer(x))
    dx = layer.backward(backend.xp.ones_like(x))
    assert dx.dtype == backend.xp.float32
    layer.eval()
    y_eval = layer(x)
    assert y_eval.dtype == backend.xp.float32
    np.testing.assert_array_equal(as_numpy(y_eval), y_train)             # the same map in both modes
    np.testing.assert_array_equal(as_numpy(x), x_np)
    with pytest.raises(RuntimeError, match="training mode"):
        layer.backward(backend.xp.ones_like(x))


@pytest.mark.parametrize("name, make, make_torch, kink", LAYERS, ids=IDS)
def test_wrong_gradient_is_rejected_and_keeps_the_cache(backend, rng, name, make, make_torch, kink):
    xp = backend.xp
    x = backend.asarray(_inputs(rng, (2, 3), kink), dtype="float64")
    layer = make(backend=backend, dtype="float64")
    layer(x)
    for bad in ((3, 2), (1, 3), (2, 3, 1), (6,)):                         # (1, 3) would broadcast silently
        with pytest.raises(ValueError, match=rf"shape \(2, 3\), got {re_shape(bad)}"):
            layer.backward(xp.ones(bad, dtype=xp.float64, device=backend.device))
    with pytest.raises(TypeError, match="dtype"):
        layer.backward(xp.ones((2, 3), dtype=xp.float32, device=backend.device))
    with pytest.raises(TypeError, match="grad_output must be an array"):
        layer.backward([[1.0, 1.0, 1.0]] * 2)
    dx = layer.backward(xp.ones((2, 3), dtype=xp.float64, device=backend.device))   # the cache survived
    assert tuple(dx.shape) == (2, 3)


def re_shape(shape) -> str:
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


def test_bad_arguments():
    with pytest.raises(TypeError, match="negative_slope"):
        nn.LeakyReLU("0.1")
    with pytest.raises(ValueError, match="negative_slope"):
        nn.LeakyReLU(float("nan"))
    with pytest.raises(TypeError, match="alpha"):
        nn.ELU(None)
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU(approximate="erf")
    with pytest.raises(TypeError, match="dim"):
        nn.Softmax()                                                     # dim is required
    with pytest.raises(ValueError, match="dim must be a"):
        nn.Softmax(1.0)
    with pytest.raises(ValueError, match=r"Softmax\(dim=2\) does not fit an input of shape \(2, 3\)"):
        nn.Softmax(2)(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        nn.Softmax(0)(np.ones((), dtype=np.float32))
    with pytest.raises(TypeError, match="real floating"):
        nn.Sigmoid()(np.ones((2, 3), dtype=np.int64))


def test_nan_propagates_like_torch(backend):
    x = backend.asarray(np.array([[np.nan, 1.0]]), dtype="float64")
    for layer in (nn.LeakyReLU(backend=backend, dtype="float64"), nn.ELU(backend=backend, dtype="float64"),
                  nn.GELU(backend=backend, dtype="float64"), nn.Sigmoid(backend=backend, dtype="float64")):
        assert np.isnan(as_numpy(layer(x))[0, 0]) and np.isfinite(as_numpy(layer(x))[0, 1])
