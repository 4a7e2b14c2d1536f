"""Every bad input gets a clear ValueError/TypeError naming the problem."""
from __future__ import annotations

import numpy as np
import pytest

import xpconv

X = np.zeros((2, 4, 6, 6))
W = np.zeros((8, 4, 3, 3))


@pytest.mark.parametrize("call, exc, match", [
    (lambda: xpconv.conv2d(X, np.zeros((8, 3, 3, 3))), ValueError, "x has 4 channels but weight expects 3"),
    (lambda: xpconv.conv2d(X, np.zeros((8, 2, 3, 3)), groups=3), ValueError, "groups=3 does not divide the 4 input"),
    (lambda: xpconv.conv2d(X, np.zeros((6, 1, 3, 3)), groups=4), ValueError, "does not divide the 6 output"),
    (lambda: xpconv.conv2d(X, np.zeros((8, 4, 7, 3))), ValueError, "larger than the padded input"),
    (lambda: xpconv.conv2d(X, np.zeros((8, 4, 3, 3)), dilation=4), ValueError, "larger than the padded input"),
    (lambda: xpconv.conv2d(X, W, stride=0), ValueError, "stride must be >= 1"),
    (lambda: xpconv.conv2d(X, W, dilation=(1, 0)), ValueError, "dilation must be >= 1"),
    (lambda: xpconv.conv2d(X, W, padding=-1), ValueError, "padding must be >= 0"),
    (lambda: xpconv.conv2d(X, W, padding="full"), ValueError,
     "padding must be an int, a tuple of ints, 'valid' or 'same'"),
    (lambda: xpconv.conv2d(X, W, padding="same", stride=2), ValueError, "padding='same' needs stride 1"),
    (lambda: xpconv.conv2d(X, W, stride=(1, 1, 1)), ValueError, "stride must be an int or a tuple of 2 ints"),
    (lambda: xpconv.conv2d(X, W, stride=1.5), ValueError, "stride must be an int or a tuple"),
    (lambda: xpconv.conv2d(X, W, padding=(1.0, 1)), TypeError, "padding must contain ints"),
    (lambda: xpconv.conv2d(X, W, groups=0), ValueError, "groups must be a positive int"),
    (lambda: xpconv.conv2d(np.zeros((6, 6)), W), ValueError, "conv2d expects x of rank 4"),
    (lambda: xpconv.conv2d(np.zeros((1, 2, 4, 6, 6)), W), ValueError, "conv2d expects x of rank 4"),
    (lambda: xpconv.conv2d(X, np.zeros((8, 4, 3))), ValueError, "conv2d expects weight of rank 4"),
    (lambda: xpconv.conv1d(X, W), ValueError, "conv1d expects x of rank 3"),
    (lambda: xpconv.conv2d(X.astype(np.int64), W), TypeError, "x must have a real floating dtype"),
    (lambda: xpconv.conv2d(X.astype(np.int32), W.astype(np.int32)), TypeError,
     r"x must have a real floating dtype \(float16, float32, float64, or bfloat16 where the library has it"),
    (lambda: xpconv.conv2d_backward(np.zeros((2, 8, 4, 4), np.float16), X, W), TypeError,
     "grad_output has dtype float16 but x has float64; mixed float dtypes are not promoted"),
    (lambda: xpconv.conv2d(X, W.astype(np.complex128)), TypeError, "weight must have a real floating dtype"),
    (lambda: xpconv.conv2d(X, W, np.zeros(7)), ValueError, r"bias must have shape \(8,\)"),
    (lambda: xpconv.conv2d(X, W, np.zeros((8, 1))), ValueError, r"bias must have shape \(8,\)"),
    (lambda: xpconv.conv2d(X.astype(np.float32), W), TypeError, "mixed float dtypes are not promoted"),
    (lambda: xpconv.conv2d(X, W, np.zeros(8, np.float32)), TypeError, "mixed float dtypes"),
    (lambda: xpconv.conv2d(X.tolist(), W), TypeError, "x must be an array"),
    (lambda: xpconv.conv2d_backward(np.zeros((2, 8, 3, 3)), X, W), ValueError,
     r"grad_output must have the output's shape \(2, 8, 4, 4\)"),
    (lambda: xpconv.conv2d_backward(np.zeros((2, 8, 4, 4)), X.transpose(0, 2, 3, 1), W.transpose(0, 2, 3, 1),
                                    channels_last=True), ValueError,
     r"output's shape \(2, 4, 4, 8\), got \(2, 8, 4, 4\)"),
    (lambda: xpconv.conv2d_backward(np.zeros((2, 8, 4, 4), np.float32), X, W), TypeError, "mixed float dtypes"),
])
def test_bad_input_is_rejected_clearly(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_arrays_from_different_libraries_are_rejected():
    strict = xpconv.get_backend("array_api_strict")
    with pytest.raises(TypeError, match="arrays come from different libraries"):
        xpconv.conv2d(X, strict.asarray(W))


def test_arrays_on_different_devices_are_rejected():
    strict = xpconv.get_backend("array_api_strict")
    import array_api_strict as xs

    devices = xs.__array_namespace_info__().devices()
    if len(devices) < 2:
        pytest.skip("array_api_strict offers a single device in this version")
    x = xs.asarray(X, device=devices[0])
    w = xs.asarray(W, device=devices[1])
    assert strict.name == "array_api_strict"
    with pytest.raises(ValueError, match="is on device"):
        xpconv.conv2d(x, w)


@pytest.mark.parametrize("make", [lambda: xpconv.nn.Conv2d(4, 8, 3), lambda: xpconv.nn.ConvTranspose2d(4, 8, 3),
                                  lambda: xpconv.nn.Linear(6, 2), lambda: xpconv.nn.BatchNorm2d(4)])
def test_layers_do_not_promote_float16_input(make):
    """The one dtype policy: a float16 input to a float32 layer is a TypeError (nothing is promoted); an
    integer input too, with the dtypes that are supported."""
    with pytest.raises(TypeError, match=r"(has dtype float16 but|mixed float dtypes)"):
        make()(X.astype(np.float16)[:, :, :, :])


def test_bfloat16_is_refused_where_the_library_has_none():
    with pytest.raises(ValueError, match=r"'bfloat16' is not available on the numpy backend \(numpy has no"):
        xpconv.nn.Conv2d(4, 8, 3, dtype="bfloat16")
