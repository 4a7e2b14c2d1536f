"""GPU discipline, checked on the CPU: every op under the backend's device context, one host read per logging
interval, no upload inside forward and backward.

array-api-strict on its non-default device stands in for a second GPU, and ``instrumented.instrument``
counts what a GPU would see (see that module).  The same properties are checked on real GPUs by the ``gpu``
tests in tests/test_gpu_sync.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from instrumented import every_state_model, instrument

from xpconv import nn
from xpconv.backends import get_backend
from xpconv.data import Compose, RandomCrop, RandomHorizontalFlip, load_dataset
from xpconv.optim import Adam
from xpconv.training import evaluate, fit

BATCH = 16


@pytest.fixture(scope="module")
def digits48():
    return load_dataset("digits", seed=0).subset(48)          # 3 steps per epoch


def _fit(model, data, log_interval, epochs=1):
    augment = Compose([RandomCrop(8, padding=1, seed=1), RandomHorizontalFlip(seed=2)])
    return fit(model, data, epochs=epochs, batch_size=BATCH, optimizer=Adam(model.parameters(), lr=1e-3),
               augment=augment, progress=False, log=lambda line: None, log_interval=log_interval)


def test_every_op_of_a_training_run_runs_under_the_device_context(monkeypatch, digits48):
    backend = get_backend("array_api_strict", "device1")
    with instrument(monkeypatch) as tally:
        model = every_state_model(backend)
        _fit(model, digits48, log_interval=1)
        evaluate(model, digits48.x_test, digits48.y_test)
    assert tally.ops["matmul"] + tally.ops["tensordot"] > 0 and tally.ops["take"] > 0   # it did count
    assert not tally.outside, f"ops outside Backend.activate(): {dict(tally.outside)}"


def test_the_counter_sees_ops_outside_the_device_context(monkeypatch):
    """The check above can fail: an op the model did not wrap is reported."""
    backend = get_backend("array_api_strict", "device1")
    with instrument(monkeypatch) as tally:
        x = backend.asarray(np.ones((2, 3)))
        backend.xp.sum(x * 2.0)
    assert tally.outside == {"sum": 1, "__mul__": 1}


@pytest.mark.parametrize("log_interval", [1, 2, 3])
def test_a_training_step_reads_the_host_once_per_logging_interval(monkeypatch, digits48, log_interval):
    """3 steps per epoch: the steps read ceil(3 / interval) times, the evaluation once; nothing else."""
    backend = get_backend("array_api_strict", "device1")
    model = every_state_model(backend)
    with instrument(monkeypatch) as tally:
        history = _fit(model, digits48, log_interval, epochs=2)
    assert sum(tally.reads.values()) == 2 * (math.ceil(3 / log_interval) + 1), dict(tally.reads)
    assert set(tally.reads) == {"__dlpack__"}                                # one to_numpy of the sums, no float()
    assert np.isfinite(history.train_loss).all() and len(history.train_loss) == 2


def test_forward_backward_and_step_neither_read_nor_upload(monkeypatch, digits48):
    backend = get_backend("array_api_strict", "device1")
    model = every_state_model(backend)
    loss_fn, optimizer = nn.CrossEntropyLoss(label_smoothing=0.1), Adam(model.parameters(), lr=1e-3)
    x = backend.asarray(digits48.x_train[:BATCH])
    y = backend.asarray(digits48.y_train[:BATCH].astype(np.int64))
    for _ in range(2):                                          # the second step has the optimizer's state
        with instrument(monkeypatch) as tally, backend.activate():
            loss = loss_fn.on_device(model(x), y)
            optimizer.zero_grad()
            model.backward(loss_fn.backward())
            optimizer.step()
        assert not tally.reads and not tally.outside, (dict(tally.reads), dict(tally.outside))
        # The one upload is the dropout mask's uniform numbers: array-api-strict has no generator of its own, so
        # its Backend draws with NumPy's (CuPy and torch draw on the device: tests/test_gpu_sync.py).
        assert tally.uploads == {"ndarray": 1}, f"host -> device copies inside a step: {dict(tally.uploads)}"
    with instrument(monkeypatch) as tally:
        float(loss)
    assert tally.reads == {"__float__": 1}                      # the counter sees a read


def test_the_functional_api_runs_under_the_device_context(monkeypatch, rng):
    """xpconv.conv2d and conv2d_backward, called without a layer, select the inputs' device too."""
    import xpconv

    backend = get_backend("array_api_strict", "device1")
    x, w, b = (backend.asarray(rng.standard_normal(s)) for s in ((2, 3, 6, 6), (4, 3, 3, 3), (4,)))
    with instrument(monkeypatch) as tally:
        y = xpconv.conv2d(x, w, b, padding=1)
    dy = backend.xp.ones_like(y)
    with instrument(monkeypatch) as tally_backward:
        xpconv.conv2d_backward(dy, x, w, padding=1)
    for counted in (tally, tally_backward):
        assert counted.ops["matmul"] + counted.ops["tensordot"] > 0
        assert not counted.outside, dict(counted.outside)
