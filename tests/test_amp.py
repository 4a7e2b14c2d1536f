"""Mixed precision: float16/bfloat16 convolutions against the float64 reference, layers in float16, float32
master weights, the float32 loss, and GradScaler against torch.amp.GradScaler's sequence of scales."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from instrumented import every_state_model

import xpconv
from conftest import HAS_TORCH, as_numpy
from reference import conv_backward_reference, conv_reference
from xpconv import nn
from xpconv.amp import GradScaler, master_dtype
from xpconv.checkpoint import load_checkpoint
from xpconv.cli import main
from xpconv.data import load_dataset
from xpconv.nn import Parameter
from xpconv.optim import SGD, Adam
from xpconv.training import fit

# A float16 result is the float64 convolution of the float16-rounded inputs, summed in float32 and rounded once
# (2**-11 relative): within this fraction of the largest |value| (bfloat16: 2**-8 per rounding).
F16_TOL, BF16_TOL = 2e-3, 1.6e-2
GEOMETRY = dict(stride=2, padding=1, groups=2)


def _close(got, ref, tol):
    np.testing.assert_allclose(as_numpy(got), ref, rtol=tol, atol=tol * np.abs(ref).max())


def _conv_check(backend, dtype, tol, rng):
    x = backend.asarray(rng.standard_normal((2, 4, 9, 9)), dtype=dtype)
    w = backend.asarray(rng.standard_normal((6, 2, 3, 3)), dtype=dtype)
    b = backend.asarray(rng.standard_normal(6), dtype=dtype)
    y = xpconv.conv2d(x, w, b, **GEOMETRY)
    assert y.dtype == x.dtype
    args = dict(stride=(2, 2), pads=[(1, 1), (1, 1)], dilation=(1, 1), groups=2)
    x64, w64, b64 = as_numpy(x), as_numpy(w), as_numpy(b)           # the rounded inputs, exactly
    _close(y, conv_reference(x64, w64, b64, **args), tol)
    dy = backend.asarray(rng.standard_normal(tuple(y.shape)), dtype=dtype)
    grads = xpconv.conv2d_backward(dy, x, w, **GEOMETRY)
    for got, ref in zip(grads, conv_backward_reference(as_numpy(dy), x64, w64, **args), strict=True):
        assert got.dtype == x.dtype
        _close(got, ref, tol)


def test_float16_conv_forward_and_backward_match_the_float64_reference(backend, rng):
    if not hasattr(backend.xp, "float16"):          # array-api-strict: the standard has no float16
        with pytest.raises(ValueError, match="'float16' is not available on the array_api_strict backend"):
            backend.dtype("float16")
        return
    _conv_check(backend, "float16", F16_TOL, rng)


def test_float16_winograd_matches_the_float64_reference(rng):
    """Winograd's transforms add roundings in float16: measured 1.2e-3 of the largest |value| (im2col 2.6e-4)."""
    x = rng.standard_normal((2, 8, 12, 12)).astype(np.float16)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float16)
    args = dict(stride=(1, 1), pads=[(1, 1), (1, 1)], dilation=(1, 1), groups=1)
    y = xpconv.conv2d(x, w, padding=1, algorithm="winograd")
    assert y.dtype == np.float16
    _close(y, conv_reference(x, w, None, **args), 2 * F16_TOL)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (the only backend with bfloat16)")
def test_torch_bfloat16_conv_matches_the_float64_reference(rng):
    _conv_check(xpconv.get_backend("torch"), "bfloat16", BF16_TOL, rng)


def _every_layer(dtype, backend="numpy"):
    on = dict(backend=backend, dtype=dtype)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, seed=0, **on), nn.BatchNorm2d(4, **on), nn.ReLU(**on),
                         nn.MaxPool2d(2, **on), nn.GroupNorm(2, 4, **on), nn.GELU(**on), nn.AvgPool2d(2, **on),
                         nn.Flatten(**on), nn.LayerNorm(16, **on), nn.Linear(16, 3, seed=1, **on), nn.Tanh(**on))


def test_every_kind_of_layer_runs_in_float16_close_to_float64(rng):
    """Forward and backward of a float16 model against the same weights in float64; norms keep float32."""
    wide, half = _every_layer("float64"), _every_layer("float16")
    half.load_state_dict(wide.state_dict())
    wide.load_state_dict(half.state_dict())                  # both hold the float16-rounded weights
    x = rng.standard_normal((4, 2, 8, 8))
    y16, y64 = half(x.astype(np.float16)), wide(x)
    assert y16.dtype == np.float16
    _close(y16, y64, 1e-2)
    dy = rng.standard_normal(y64.shape)
    dx16, dx64 = half.backward(dy.astype(np.float16)), wide.backward(dy)
    assert dx16.dtype == np.float16
    _close(dx16, dx64, 2e-2)
    for (name, p16), (_, p64) in zip(half.named_parameters(), wide.named_parameters(), strict=True):
        norm = name.startswith(("1.", "4.", "8."))
        assert p16.data.dtype == (np.float32 if norm else np.float16), name
        if name != "0.bias":            # 0 but for rounding: the BatchNorm after the convolution removes it
            _close(p16.grad, as_numpy(p64.grad), 2e-2)
    assert half[1].running_var.dtype == np.float32


@pytest.mark.parametrize("make", [
    lambda dt: nn.LeakyReLU(0.1, dtype=dt), lambda dt: nn.ELU(dtype=dt), lambda dt: nn.GELU("tanh", dtype=dt),
    lambda dt: nn.Sigmoid(dtype=dt), lambda dt: nn.SiLU(dtype=dt), lambda dt: nn.Softmax(1, dtype=dt),
    lambda dt: nn.MaxPool2d(3, stride=2, padding=1, dtype=dt), lambda dt: nn.AdaptiveAvgPool2d(2, dtype=dt),
    lambda dt: nn.AdaptiveMaxPool2d(3, dtype=dt), lambda dt: nn.Upsample(scale_factor=2, dtype=dt),
    lambda dt: nn.ConvTranspose2d(3, 2, 3, stride=2, seed=0, dtype=dt),
    lambda dt: nn.Conv1d(6, 4, 3, seed=0, dtype=dt)],
    ids=["leaky_relu", "elu", "gelu_tanh", "sigmoid", "silu", "softmax", "maxpool", "adaptive_avg", "adaptive_max",
         "upsample", "conv_transpose", "conv1d"])
def test_more_layers_in_float16_match_float64(make, rng):
    wide, half = make("float64"), make("float16")
    half.load_state_dict(wide.state_dict())
    wide.load_state_dict(half.state_dict())
    x = rng.standard_normal((2, 3, 6, 6)) * 3
    if isinstance(wide, nn.Conv1d):
        x = np.reshape(x, (2, 6, 18))
    y16, y64 = half(x.astype(np.float16)), wide(x.astype(np.float16).astype(np.float64))
    assert y16.dtype == np.float16
    _close(y16, y64, 4e-3)
    dy = rng.standard_normal(y64.shape)
    dx16 = half.backward(dy.astype(np.float16))
    assert dx16.dtype == np.float16
    _close(dx16, wide.backward(dy.astype(np.float16).astype(np.float64)), 4e-3)


def test_dropout_keeps_float16():
    drop = nn.Dropout(0.5, seed=0, dtype="float16")
    y = drop(np.ones((4, 8), np.float16))
    assert y.dtype == np.float16 and set(np.unique(y).tolist()) <= {0.0, 2.0}
    assert drop.backward(np.ones_like(y)).dtype == np.float16


def test_cross_entropy_of_float16_logits_is_computed_in_float32(rng):
    logits = (rng.standard_normal((8, 5)) * 4).astype(np.float16)
    labels = rng.integers(0, 5, 8)
    z = logits.astype(np.float64)
    log_p = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn.on_device(logits, labels)
    assert loss.dtype == np.float32
    assert abs(float(loss) + log_p[np.arange(8), labels].mean()) < 1e-6      # float16 arithmetic: ~1e-3
    scale = 2.0**12
    grad = loss_fn.backward(scale)                       # scaled in float32, then rounded to float16 once
    expected = (np.exp(log_p) - np.eye(5)[labels]) / 8 * scale
    assert grad.dtype == np.float16
    np.testing.assert_array_equal(grad, expected.astype(np.float32).astype(np.float16))


def test_master_weights_keep_updates_smaller_than_a_float16_step():
    """1 - 1e-4 rounds back to 1 in float16; a float32 master accumulates ten such steps."""
    p = Parameter(np.ones(3, np.float16))
    opt = SGD([p], lr=1.0)
    for _ in range(10):
        p.grad = np.full(3, 1e-4, np.float16)
        opt.step()
    master = opt.state[p]["master_param"]
    assert master.dtype == np.float32 and p.data.dtype == np.float16
    np.testing.assert_allclose(master, 1 - 10 * np.float32(np.float16(1e-4)), rtol=1e-6)
    np.testing.assert_array_equal(p.data, master.astype(np.float16))
    assert p.data[0] < 1


def test_adam_state_is_float32_and_round_trips_with_the_master(rng):
    p = Parameter(rng.standard_normal(4).astype(np.float16))
    opt = Adam([p], lr=1e-2)
    for _ in range(3):
        p.grad = rng.standard_normal(4).astype(np.float16)
        opt.step()
    state = opt.state_dict()
    assert {k: state["state"][0][k].dtype for k in ("exp_avg", "exp_avg_sq", "master_param")} == {
        "exp_avg": np.float32, "exp_avg_sq": np.float32, "master_param": np.float32}
    q = Parameter(p.data.copy())
    again = Adam([q], lr=1e-2)
    again.load_state_dict(state)
    grad = rng.standard_normal(4).astype(np.float16)
    p.grad, q.grad = grad, grad.copy()
    opt.step()
    again.step()
    np.testing.assert_array_equal(q.data, p.data)
    np.testing.assert_array_equal(again.state[q]["master_param"], opt.state[p]["master_param"])


def test_a_parameter_set_from_outside_restarts_its_master():
    p = Parameter(np.ones(2, np.float16))
    opt = SGD([p], lr=0.5)
    p.grad = np.ones(2, np.float16)
    opt.step()
    p.data = np.full(2, 4.0, np.float16)                 # e.g. model.load_state_dict of other weights
    opt.step()
    assert p.data.tolist() == [3.5, 3.5]


# -- GradScaler ------------------------------------------------------------------------------------------
PATTERN = [1.0, 1.0, math.inf, 1.0, 1.0, 1.0, 1.0, math.nan, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -math.inf, 1.0]


def _scales(scaler, grads, dtype=np.float16):
    """The scale after each step of a parameter whose unscaled gradient is each value of ``grads``."""
    p = Parameter(np.zeros(2, dtype))
    opt, scales, values = SGD([p], lr=0.5), [], []
    for g in grads:
        opt.zero_grad()
        p.grad = np.array([g * scaler.get_scale(), scaler.get_scale()]).astype(dtype)
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
        values.append(float(p.data[1]))
    return scales, values


def test_grad_scaler_backs_off_on_inf_and_grows_after_the_interval():
    scaler = GradScaler(init_scale=16.0, growth_interval=3)
    scales, values = _scales(scaler, PATTERN[:8])
    assert scales == [16.0, 16.0, 8.0, 8.0, 8.0, 16.0, 16.0, 8.0]      # torch's rule, by hand
    assert values == [-0.5, -1.0, -1.0, -1.5, -2.0, -2.5, -3.0, -3.0]   # the inf/NaN steps are skipped


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_grad_scaler_follows_torch_amp_grad_scaler_on_the_same_inf_pattern():
    import torch

    kwargs = dict(init_scale=2.0**10, growth_factor=3.0, backoff_factor=0.25, growth_interval=2)
    ref, p = torch.amp.GradScaler("cpu", **kwargs), torch.nn.Parameter(torch.zeros(2))
    opt, expected, values = torch.optim.SGD([p], lr=0.5), [], []
    for g in PATTERN:
        opt.zero_grad()
        p.grad = ref.scale(torch.tensor([g, 1.0]))
        ref.step(opt)
        ref.update()
        expected.append(ref.get_scale())
        values.append(float(p.detach()[1]))
    mine = GradScaler(**kwargs)
    assert _scales(mine, PATTERN, np.float32) == (expected, values)
    assert mine.state_dict() == ref.state_dict()


def test_grad_scaler_state_round_trip_continues_the_same_sequence():
    whole = GradScaler(init_scale=64.0, growth_interval=3)
    full, _ = _scales(whole, PATTERN)
    first = GradScaler(init_scale=64.0, growth_interval=3)
    head, _ = _scales(first, PATTERN[:5])
    state = json.loads(json.dumps(first.state_dict()))        # plain JSON, as in a checkpoint's progress record
    second = GradScaler()
    second.load_state_dict(state)
    tail, _ = _scales(second, PATTERN[5:])
    assert head + tail == full


def test_grad_scaler_misuse_and_bad_arguments():
    with pytest.raises(ValueError, match="growth_factor"):
        GradScaler(growth_factor=1.0)
    with pytest.raises(ValueError, match="backoff_factor"):
        GradScaler(backoff_factor=1.0)
    with pytest.raises(ValueError, match="growth_interval"):
        GradScaler(growth_interval=0)
    with pytest.raises(ValueError, match="exactly the keys"):
        GradScaler().load_state_dict({})
    p = Parameter(np.zeros(1, np.float16))
    opt, scaler = SGD([p], lr=0.1), GradScaler()
    with pytest.raises(RuntimeError, match="update"):
        scaler.update()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="already been called"):
        scaler.unscale_(opt)


def test_disabled_grad_scaler_passes_through():
    scaler = GradScaler(enabled=False)
    p = Parameter(np.ones(1))
    p.grad = np.array([2.0])
    assert scaler.scale(3.0) == 3.0 and scaler.get_scale() == 1.0 and scaler.state_dict() == {}
    scaler.unscale_(SGD([p], lr=0.5))
    scaler.step(opt := SGD([p], lr=0.5))
    scaler.update()
    assert p.data.tolist() == [0.0] and opt.state_dict()["state"] == {}


def test_master_dtype():
    from array_api_compat import numpy as xp

    assert master_dtype(xp, xp.float16) == xp.float32 and master_dtype(xp, xp.float32) == xp.float32


# -- training ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_float16_training_reaches_float32_accuracy(tmp_path, capsys):
    """A short run (NumPy's float16 matmul has no BLAS: ~20x slower); measured 82.0 % and 84.5 % of 400."""
    accuracy = {}
    for precision in ("float32", "float16"):
        out = tmp_path / f"{precision}.json"
        assert main(["train", "--precision", precision, "--epochs", "3", "--limit", "400", "--lr", "0.01",
                     "--batch-size", "16", "--metrics-out", str(out)]) == 0
        metrics = json.loads(out.read_text())
        assert metrics["precision"] == precision
        accuracy[precision] = metrics["test_accuracy"]
    assert accuracy["float32"] > 0.75
    assert abs(accuracy["float16"] - accuracy["float32"]) <= 0.04, accuracy


def test_fit_with_a_grad_scaler_reads_one_number_per_step(monkeypatch):
    """The inf/NaN check stays on the device; GradScaler.step reads its sum once (6 steps: 6 reads)."""
    import xpconv.amp

    reads = []
    monkeypatch.setattr(xpconv.amp, "to_numpy", lambda a: reads.append(a.shape) or xpconv.to_numpy(a))
    data = load_dataset("digits", seed=0).subset(96)
    model = every_state_model("numpy", dtype="float16")
    fit(model, data, epochs=1, batch_size=16, optimizer=Adam(model.parameters(), lr=1e-3), progress=False,
        log=lambda line: None, scaler=GradScaler())
    assert reads == [()] * 6


@pytest.mark.slow
def test_cli_float16_run_resumed_from_its_first_epoch_ends_the_same(tmp_path, monkeypatch, capsys):
    """The precision is recorded, the model rebuilt in float16, the master weights and the scaler restored."""
    import shutil

    import xpconv.cli.train as cli_train

    real = cli_train.save_checkpoint

    def save_and_keep_epoch_one(checkpoint, path):
        real(checkpoint, path)
        if checkpoint.progress["epoch"] == 1:
            shutil.copy(path, tmp_path / "epoch1.npz")

    monkeypatch.setattr(cli_train, "save_checkpoint", save_and_keep_epoch_one)
    quick = ["--limit", "100", "--batch-size", "25", "--seed", "1"]
    whole, again = tmp_path / "whole.json", tmp_path / "again.json"
    assert main(["train", "--precision", "float16", *quick, "--epochs", "2", "--checkpoint",
                 str(tmp_path / "c.npz"), "--metrics-out", str(whole)]) == 0
    saved = load_checkpoint(tmp_path / "epoch1.npz")
    assert saved.config["precision"] == "float16" and saved.progress["scaler"]["scale"] == 2.0**16
    assert saved.optimizer["state"][0]["master_param"].dtype == np.float32
    assert main(["train", "--resume", str(tmp_path / "epoch1.npz"), "--checkpoint", str(tmp_path / "d.npz"),
                 "--metrics-out", str(again)]) == 0
    done, resumed = json.loads(whole.read_text()), json.loads(again.read_text())
    for key in ("test_accuracy_per_epoch", "train_loss", "test_loss_per_epoch"):
        assert resumed[key] == done[key], key
    assert load_checkpoint(tmp_path / "d.npz").model["0.weight"].tobytes() == \
        load_checkpoint(tmp_path / "c.npz").model["0.weight"].tobytes()


def test_cli_refuses_bfloat16_on_numpy(capsys):
    assert main(["train", "--precision", "bfloat16", "--epochs", "1", "--limit", "50"]) == 2
    assert "'bfloat16' is not available on the numpy backend" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (the only backend with bfloat16)")
def test_torch_bfloat16_training_step_and_state_dict():
    model = _every_layer("bfloat16", backend="torch")
    opt, loss_fn = Adam(model.parameters(), lr=1e-2), nn.CrossEntropyLoss()
    x = model.backend.asarray(np.random.default_rng(0).standard_normal((4, 2, 8, 8)), dtype="bfloat16")
    loss = loss_fn.on_device(model(x), np.array([0, 1, 2, 0]))
    model.backward(loss_fn.backward())
    opt.step()
    assert math.isfinite(float(loss)) and str(model[0].weight.data.dtype) == "torch.bfloat16"
    state = model.state_dict()                               # bfloat16 comes to the host as float32, exactly
    assert state["0.weight"].dtype == np.float32
    np.testing.assert_array_equal(state["0.weight"], model[0].weight.data.float().numpy())
    assert opt.state_dict()["state"][0]["master_param"].dtype == np.float32
