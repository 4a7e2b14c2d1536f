"""algorithm="direct" (depthwise, a multiply-add per kernel tap) against the float64 loop reference, on every
backend: 1-D, 2-D and 3-D, strides, dilations, paddings, channel multipliers, workspace caps."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xpconv
import xpconv._direct as direct
from algorithm_checks import (
    FLOAT32_BOUND,
    check_against_reference,
    check_finite_differences,
    check_layer_matches_im2col,
    check_layouts_match_im2col,
    float32_errors,
)
from conftest import as_numpy
from xpconv import nn
from xpconv._engine import flipped_geometry
from xpconv._geometry import make_geometry


@pytest.mark.parametrize("x_shape, mult, kernel, hyper", [
    ((2, 3, 7, 8), 1, (3, 3), dict(padding=1)),                                    # stride 1: dL/dx by a flipped pass
    ((2, 3, 7, 8), 2, (3, 3), dict(padding=(1, 0), stride=(1, 2), dilation=(1, 2))),  # multiplier: dL/dx scattered
    ((3, 4, 9, 9), 1, (3, 3), dict(padding=1, stride=2)),                          # stride 2
    ((2, 2, 6, 5), 1, (3, 3), dict(padding=3)),                                    # padding beyond the kernel
    ((2, 4, 11), 1, (5,), dict(padding=2, dilation=2)),                            # 1-D, dilated
    ((2, 4, 9), 3, (4,), dict(stride=2)),                                          # 1-D, even kernel, multiplier
    ((1, 2, 5, 4, 6), 1, (3, 2, 3), dict(padding=(1, 0, 2))),                      # 3-D
    ((2, 2, 5, 4, 6), 2, (3, 3, 3), dict(padding=1, stride=(2, 1, 1))),            # 3-D, multiplier, stride
    ((2, 1, 6, 6), 4, (3, 3), dict(padding=1)),                                    # one channel, groups=1
    ((1, 3, 1, 1), 1, (1, 1), {}),                                                 # a single output
])
def test_direct_matches_the_reference(backend, rng, x_shape, mult, kernel, hyper):
    c = x_shape[1]
    check_against_reference(backend, rng, x_shape, (c * mult, 1, *kernel), "direct", groups=c, **hyper)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 3), c=st.integers(1, 4), mult=st.integers(1, 2), k=st.integers(1, 4), h=st.integers(1, 9),
       w=st.integers(1, 9), stride=st.integers(1, 3), dilation=st.integers(1, 2), pad=st.integers(0, 3),
       bias=st.booleans(), per_chunk=st.sampled_from([None, 1, 2, 3]), seed=st.integers(0, 2**16))
def test_direct_on_random_configurations(backend, n, c, mult, k, h, w, stride, dilation, pad, bias, per_chunk,
                                         seed):
    """Random sizes, strides, dilations, paddings, multipliers, and workspace caps that let 1, 2 or 3 channels of
    a sample (or everything: None) into a step."""
    reach = dilation * (k - 1) + 1
    h, w = max(h, reach - 2 * pad), max(w, reach - 2 * pad)
    geom = make_geometry((k, k), stride, pad, dilation, c)
    flipped = flipped_geometry(geom)                   # dL/dx's own direct pass, where stride 1 allows it
    sizes = [direct._per_channel(mult, geom, (h, w))]
    if flipped is not None and mult == 1:
        sizes.append(direct._per_channel(1, flipped, geom.output_shape((h, w))))
    per_channel = 8 * max(sizes)
    check_against_reference(backend, np.random.default_rng(seed), (n, c, h, w), (c * mult, 1, k, k), "direct",
                            stride=stride, padding=pad, dilation=dilation, groups=c, bias=bias,
                            max_workspace_bytes=None if per_chunk is None else per_chunk * per_channel)


@pytest.mark.parametrize("mult, hyper", [(1, dict(padding=(1, 2))), (2, dict(padding=1, stride=2, dilation=(2, 1)))])
def test_direct_gradients_by_finite_differences(backend, rng, mult, hyper):
    check_finite_differences(backend, rng, (2, 3, 5, 4), (3 * mult, 1, 3, 3), "direct", groups=3, **hyper)


@pytest.mark.parametrize("x_shape, mult, hyper", [
    ((4, 32, 16, 16), 1, dict(padding=1)), ((4, 64, 9, 9), 1, dict(padding=1, stride=2)),
    ((2, 8, 12, 12), 3, dict(padding=2, dilation=2)), ((2, 16, 8, 8, 8), 1, dict(padding=1)),
])
def test_float32_error_stays_under_the_documented_bound(backend, rng, x_shape, mult, hyper):
    """The direct algorithm's float32 results against float64, relative to the convolution of the absolute values."""
    c, k = x_shape[1], (3,) * (len(x_shape) - 2)
    errors = float32_errors(backend, rng, x_shape, (c * mult, 1, *k), "direct", groups=c, **hyper)
    assert max(errors) <= FLOAT32_BOUND, errors


def test_the_layer_takes_the_algorithm(backend, rng):
    """nn.Conv2d(algorithm="direct") gives im2col's layer's output and gradients (float64)."""
    check_layer_matches_im2col(backend, rng, lambda **kw: nn.Conv2d(4, 8, 3, padding=1, groups=4, backend=backend,
                                                                     dtype="float64", seed=3, **kw),
                               "direct", (2, 4, 5, 6), (2, 8, 5, 6))


def test_direct_refuses_what_is_not_depthwise():
    with pytest.raises(ValueError, match=r"algorithm='direct' cannot.*depthwise only.*4 channels in 2 group"):
        nn.Conv2d(4, 4, 3, groups=2, algorithm="direct")
    with pytest.raises(ValueError, match="depthwise only"):
        xpconv.conv1d(np.ones((1, 2, 8)), np.ones((2, 2, 3)), algorithm="direct")
    with pytest.raises(ValueError, match="depthwise only"):
        xpconv.conv3d_backward(np.ones((1, 2, 2, 2, 2)), np.ones((1, 2, 4, 4, 4)), np.ones((2, 2, 3, 3, 3)),
                               algorithm="direct")


def test_a_workspace_cap_below_one_channel_is_a_clear_error():
    x, w = np.ones((2, 8, 16, 16)), np.ones((8, 1, 3, 3))
    with pytest.raises(ValueError, match="one channel of one sample needs"):
        xpconv.conv2d(x, w, padding=1, groups=8, algorithm="direct", max_workspace_bytes=1024)
    chunked = xpconv.conv2d(x, w, padding=1, groups=8, algorithm="direct", max_workspace_bytes=20_000)  # 1 channel
    np.testing.assert_allclose(chunked, xpconv.conv2d(x, w, padding=1, groups=8), rtol=1e-12)


def test_an_empty_batch(backend):
    x = backend.asarray(np.ones((0, 2, 5, 5)), dtype="float64")
    w = backend.asarray(np.ones((4, 1, 3, 3)), dtype="float64")
    y = xpconv.conv2d(x, w, padding=1, groups=2, algorithm="direct")
    assert tuple(y.shape) == (0, 4, 5, 5)
    dx, dw, _ = xpconv.conv2d_backward(y, x, w, padding=1, groups=2, algorithm="direct")
    assert tuple(dx.shape) == (0, 2, 5, 5) and float(as_numpy(dw).sum()) == 0.0


@pytest.mark.parametrize("channels_last, unbatched", [(True, False), (False, True), (True, True)])
def test_channels_last_and_unbatched_inputs(backend, rng, channels_last, unbatched):
    """The op layer's layouts reach the direct algorithm channels-first and batched: im2col's values (float64)."""
    check_layouts_match_im2col(backend, rng, "direct", (2, 5, 6, 4) if channels_last else (2, 4, 5, 6),
                               (8, 3, 3, 1) if channels_last else (8, 1, 3, 3), unbatched, padding=1, groups=4,
                               channels_last=channels_last)


@pytest.mark.parametrize("shape, mult, stride", [((32, 16, 17), 1, 1), ((16, 32, 16), 2, 2), ((4, 8, 64), 1, 1)])
@pytest.mark.parametrize("cap", [2**20, 2 * 2**20])
def test_workspace_stays_under_the_cap(rng, shape, mult, stride, cap):
    """NumPy, tracemalloc: the peak of each pass beyond its results stays under max_workspace_bytes (5 % slack for
    Python objects), where the whole batch's workspace is more than twice the cap (and, for the last shape, one
    sample's is over the cap: the channels are split)."""
    n, c, h = shape
    x, w = rng.standard_normal((n, c, h, h)), rng.standard_normal((c * mult, 1, 3, 3))
    kw = dict(padding=1, stride=stride, groups=c, algorithm="direct", max_workspace_bytes=cap)
    dy = rng.standard_normal(xpconv.conv2d(x[:1], w, **kw).shape[2:])
    dy = np.broadcast_to(dy, (n, c * mult, *dy.shape)).copy()
    tracemalloc.start()
    y = xpconv.conv2d(x, w, **kw)
    forward_peak = tracemalloc.get_traced_memory()[1] - y.nbytes
    tracemalloc.stop()
    tracemalloc.start()
    dx, dw, db = xpconv.conv2d_backward(dy, x, w, **kw)
    backward_peak = tracemalloc.get_traced_memory()[1] - dx.nbytes - dw.nbytes - db.nbytes
    tracemalloc.stop()
    geom = make_geometry((3, 3), stride, 1, 1, c)
    assert n * c * 8 * direct._per_channel(mult, geom, (h, h)) > 2 * cap
    assert forward_peak <= 1.05 * cap and backward_peak <= 1.05 * cap, (forward_peak / cap, backward_peak / cap)
