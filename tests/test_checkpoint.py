"""Checkpoints: a run stopped anywhere and resumed ends bit-identical to one that never stopped; files are checked."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpconv import nn
from xpconv.amp import GradScaler
from xpconv.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from xpconv.data import augmentation, load_dataset
from xpconv.nn import CrossEntropyLoss
from xpconv.training import TrainingDiverged, fit, make_optimizer, make_scheduler

_QUIET = dict(progress=False, log=lambda line: None)
EPOCHS, BATCH = 3, 16


@pytest.fixture(scope="module")
def digits48():
    return load_dataset("digits", seed=0).subset(48)          # 3 steps per epoch


class StopAfter:
    """A stand-in for StopRequest that asks to stop once ``steps`` steps have been checked."""

    def __init__(self, steps):
        self.checks, self.steps = 0, steps

    @property
    def signum(self):
        self.checks += 1
        return 2 if self.checks > self.steps else None

    name = "SIGINT"


def _run(seed_init=0, dtype="float32"):
    """A model with every kind of state: BatchNorm buffers, a dropout generator, SGD momentum, a schedule
    (and, in float16, float32 master weights and a loss scaler, which ``_fit`` makes)."""
    on = dict(backend="numpy", dtype=dtype)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, seed=seed_init, **on), nn.BatchNorm2d(4, **on), nn.ReLU(**on),
                          nn.Dropout(0.2, seed=seed_init, **on), nn.Flatten(**on),
                          nn.Linear(4 * 8 * 8, 10, seed=seed_init + 1, **on))
    optimizer = make_optimizer("sgd", model.parameters(), 0.05, weight_decay=1e-4)
    scheduler = make_scheduler("cosine", optimizer, EPOCHS * 3, warmup_steps=2)
    return model, optimizer, scheduler


def _fit(data, model, optimizer, scheduler, **kwargs):
    # float16: a scale that overflows the first steps' gradients (skipped steps, backoff) and grows every 2 steps
    scaler = GradScaler(init_scale=2.0**24, growth_interval=2, enabled=model.dtype_name == "float16")
    return fit(model, data, epochs=EPOCHS, batch_size=BATCH, optimizer=optimizer, scheduler=scheduler,
               loss_fn=CrossEntropyLoss(label_smoothing=0.1), augment=augmentation("digits", seed=5),
               seed=5, scaler=scaler, **_QUIET, **kwargs)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("stop_after", [1, 3, 5, 7])   # mid-epoch and at the end of an epoch
def test_stopped_and_resumed_run_is_bit_identical(digits48, tmp_path, stop_after, dtype):
    model, optimizer, scheduler = _run(dtype=dtype)
    whole_records = []
    whole = _fit(digits48, model, optimizer, scheduler, on_checkpoint=whole_records.append)

    first = _run(dtype=dtype)
    records = []
    stopped = _fit(digits48, *first, on_checkpoint=records.append, stop=StopAfter(stop_after))
    assert stopped.stopped == "SIGINT" and records
    m, o, s = first
    path = tmp_path / "run.ckpt.npz"
    save_checkpoint(Checkpoint(model=m.state_dict(), optimizer=o.state_dict(), progress=records[-1],
                               scheduler=s.state_dict(), config={"note": "test"}), path)

    saved = load_checkpoint(path)
    assert saved.config == {"note": "test"}
    model2, optimizer2, scheduler2 = _run(seed_init=99, dtype=dtype)   # other weights and masks: all restored
    model2.load_state_dict(saved.model)
    optimizer2.load_state_dict(saved.optimizer)
    scheduler2.load_state_dict(saved.scheduler)
    resumed_records = []
    resumed = _fit(digits48, model2, optimizer2, scheduler2, resume=saved.progress,
                   on_checkpoint=resumed_records.append)

    assert resumed.stopped is None
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        assert getattr(resumed, key) == getattr(whole, key), key
    for key, value in model.state_dict().items():
        assert np.array_equal(model2.state_dict()[key], value), key
    assert optimizer2.lr == optimizer.lr
    assert resumed_records[-1]["scaler"] == whole_records[-1]["scaler"]
    if dtype == "float16":                    # the scale moved (skipped steps and growth), and the masters match
        assert whole_records[-1]["scaler"]["scale"] != 2.0**24
        for index, entries in optimizer.state_dict()["state"].items():
            for name, value in entries.items():
                assert np.array_equal(optimizer2.state_dict()["state"][index][name], value), (index, name)


def test_stop_without_checkpoint_callback_returns_early(digits48):
    history = _fit(digits48, *_run(), stop=StopAfter(1))
    assert history.stopped == "SIGINT" and history.epochs == 0


def test_divergence_stops_at_the_step_and_reports_nothing(digits48):
    model, _, _ = _run()
    optimizer = make_optimizer("sgd", model.parameters(), 1e6)
    records = []
    with pytest.raises(TrainingDiverged, match=r"(epoch 1, step \d+ of 3|after epoch 1); lower the learning rate"):
        fit(model, digits48, epochs=2, batch_size=BATCH, optimizer=optimizer, on_checkpoint=records.append, **_QUIET)
    assert records == []


def test_resume_record_that_does_not_fit_is_refused(digits48):
    model, optimizer, scheduler = _run()
    records = []
    _fit(digits48, model, optimizer, scheduler, on_checkpoint=records.append, stop=StopAfter(1))
    bad = dict(records[-1], batch=99)
    with pytest.raises(ValueError, match="does not fit"):
        _fit(digits48, *_run(), resume=bad)
    incomplete = {k: v for k, v in records[-1].items() if k != "loader"}
    with pytest.raises(ValueError, match="incomplete"):
        _fit(digits48, *_run(), resume=incomplete)


def _small_checkpoint(tmp_path):
    model, optimizer, scheduler = _run()
    path = tmp_path / "c.npz"
    save_checkpoint(Checkpoint(model=model.state_dict(), optimizer=optimizer.state_dict(), progress={"epoch": 1},
                               scheduler=scheduler.state_dict()), path)
    return path


def test_checkpoint_files_are_checked(tmp_path):
    path = _small_checkpoint(tmp_path)
    assert load_checkpoint(path).progress == {"epoch": 1}
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match=r"plain\.npz: not a valid xpconv checkpoint"):
        load_checkpoint(tmp_path / "plain.npz")
    for bad in ([1, 2], {"format": "xpconv-checkpoint", "version": 1, "progress": [], "config": {}, "arch": None,
                          "scheduler": None, "optimizer": {"param_groups": [], "state": {}}}):
        np.savez(tmp_path / "bad.npz", __xpconv_checkpoint__=np.array(json.dumps(bad)))
        with pytest.raises(ValueError, match=r"bad\.npz: not a valid xpconv checkpoint"):
            load_checkpoint(tmp_path / "bad.npz")
    with pytest.raises(TypeError, match="not plain JSON"):
        save_checkpoint(Checkpoint(model={}, optimizer={}, progress={"x": float("nan")}), tmp_path / "nan.npz")
    assert not (tmp_path / "nan.npz").exists()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupt_checkpoints_give_a_value_error_naming_the_file(tmp_path, data):
    path = _small_checkpoint(tmp_path)
    blob = bytearray(path.read_bytes())
    original = load_checkpoint(path)
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[:data.draw(st.integers(0, len(blob) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            i = data.draw(st.integers(0, len(blob) - 1), label="offset")
            blob[i] ^= data.draw(st.integers(1, 255), label="xor")
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(bytes(blob))
    try:
        loaded = load_checkpoint(bad)
    except ValueError as exc:
        message = str(exc)
    else:
        message = None
    if message is not None:
        assert "corrupt.npz" in message
        return
    # A corruption the zip format cannot see (e.g. in an unused header byte) must not change the contents.
    assert loaded.progress == original.progress and loaded.scheduler == original.scheduler
    assert loaded.model.keys() == original.model.keys()
    for key, value in original.model.items():
        assert np.array_equal(loaded.model[key], value), key
