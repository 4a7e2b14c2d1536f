"""The shared argument checks: what they accept (PyTorch's kinds, NumPy scalars included), what they reject."""
from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from xpconv import nn
from xpconv.optim import SGD, Adam
from xpconv.validation import check_int, check_real, cli_type, int_tuple, non_negative_int, positive_int


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), np.uint8(3)])
def test_positive_int_accepts_python_and_numpy_integers(value):
    got = positive_int("n", value)
    assert got == 3 and type(got) is int


@pytest.mark.parametrize("value,error", [(0, ValueError), (-2, ValueError), (True, ValueError), (2.0, ValueError),
                                         ("3", ValueError), (None, ValueError), (np.float32(3), ValueError)])
def test_positive_int_rejects_everything_else_naming_the_argument(value, error):
    with pytest.raises(error, match="in_channels must be a positive int"):
        positive_int("in_channels", value)


def test_check_int_bounds():
    assert non_negative_int("warmup", 0) == 0
    assert check_int("dim", -1) == -1
    with pytest.raises(ValueError, match="warmup must be a >= 0 int"):
        non_negative_int("warmup", -1)


@pytest.mark.parametrize("value,expected", [(3, (3, 3)), ((1, 2), (1, 2)), ([np.int64(4), 5], (4, 5))])
def test_int_tuple_repeats_an_int_and_accepts_numpy_integers(value, expected):
    got = int_tuple("stride", value, 2, 1)
    assert got == expected and all(type(v) is int for v in got)


@pytest.mark.parametrize("value,error,match", [
    ((1, 2, 3), ValueError, "stride must be an int or a tuple of 2 ints"),
    (1.5, ValueError, "stride must be an int or a tuple of 2 ints"),
    ((1, 1.0), TypeError, "stride must contain ints"),
    ((1, True), TypeError, "stride must contain ints"),
    ((1, 0), ValueError, "stride must be >= 1"),
])
def test_int_tuple_rejects(value, error, match):
    with pytest.raises(error, match=match):
        int_tuple("stride", value, 2, 1)


@pytest.mark.parametrize("value", [0.1, np.float32(0.1), np.float64(0.1), 1, np.int64(1)])
def test_check_real_accepts_python_and_numpy_numbers(value):
    got = check_real("lr", value, 0.0)
    assert type(got) is float and got == float(value)


@pytest.mark.parametrize("value,error,match", [
    (True, TypeError, "lr must be a number"), ("0.1", TypeError, "lr must be a number"),
    (-1.0, ValueError, r"lr must lie in \[0.0, inf\]"), (math.nan, ValueError, "lr must lie in"),
])
def test_check_real_rejects(value, error, match):
    with pytest.raises(error, match=match):
        check_real("lr", value, 0.0)


def test_check_real_open_ends():
    assert check_real("beta", 0.0, 0.0, 1.0, high_open=True) == 0.0
    with pytest.raises(ValueError, match=r"beta must lie in \[0.0, 1.0\)"):
        check_real("beta", 1.0, 0.0, 1.0, high_open=True)
    with pytest.raises(ValueError, match=r"eps must lie in \(0.0, inf\]"):
        check_real("eps", 0.0, 0.0, low_open=True)


def test_cli_type_turns_a_rejected_value_into_an_argparse_error():
    convert = cli_type(positive_int)
    assert convert("4") == 4
    for text in ("0", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            convert(text)


def test_layers_and_optimizers_take_numpy_scalars_as_pytorch_does():
    conv = nn.Conv2d(np.int64(4), np.int64(4), np.int64(3), stride=np.int32(1), padding=np.int64(1))
    assert conv.kernel_size == (3, 3) and conv.weight.shape == (4, 4, 3, 3)
    assert nn.Linear(np.int64(3), np.int64(2)).weight.shape == (2, 3)
    bn = nn.BatchNorm2d(np.int64(4), eps=np.float32(1e-3), momentum=np.float64(0.2))
    assert bn.num_features == 4 and bn.momentum == pytest.approx(0.2)
    assert nn.MaxPool2d(np.int64(2)).kernel_size == (2, 2)
    assert nn.Dropout(np.float32(0.25)).p == 0.25
    sgd = SGD(conv.parameters(), lr=np.float32(0.1), momentum=np.float64(0.9))
    assert sgd.lr == pytest.approx(0.1) and type(sgd.lr) is float
    adam = Adam(conv.parameters(), lr=np.float32(1e-3), betas=(np.float32(0.9), 0.99))
    assert adam.param_groups[0]["betas"][1] == 0.99
