"""Data parallelism on 2 MPI ranks: run as ``mpiexec -n 2 python -m pytest -x tests/test_distributed_mpi.py``.

Every rank runs every test; a test's collectives pair up across ranks.  Each rank also trains the
single-process reference itself (it has all the data), so that 2 ranks with per-rank batch B are compared with
1 process with batch 2B.  Under a plain ``pytest`` (one process) the module skips with that reason; .ci/run
runs it under ``mpiexec -n 2``.
"""
from __future__ import annotations

import numpy as np
import pytest

from xpconv import nn, to_numpy
from xpconv.data import Dataset, load_dataset
from xpconv.distributed import (
    Communicator,
    MPICommunicator,
    broadcast_state,
    convert_sync_batchnorm,
    init_communicator,
)
from xpconv.models import small_cnn
from xpconv.training import evaluate, fit, make_optimizer

MPI = pytest.importorskip("mpi4py.MPI", reason="mpi4py is not installed (pip install \"xpconv[mpi]\")")
WORLD = MPI.COMM_WORLD
pytestmark = pytest.mark.skipif(WORLD.Get_size() != 2, reason="needs exactly 2 MPI ranks: mpiexec -n 2 python -m "
                                "pytest tests/test_distributed_mpi.py (as .ci/run does)")
RANK = WORLD.Get_rank()
_QUIET = dict(progress=False, log=lambda line: None)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _subset(data: Dataset, n_train: int, n_test: int = 50) -> Dataset:
    return data._replace(x_train=data.x_train[:n_train], y_train=data.y_train[:n_train],
                         x_test=data.x_test[:n_test], y_test=data.y_test[:n_test])


def _bn_cnn(seed: int, dtype: str, backend="numpy") -> nn.Sequential:
    on = dict(backend=backend, dtype=dtype)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, seed=seed, **on), nn.BatchNorm2d(4, **on), nn.ReLU(**on),
                         nn.MaxPool2d(2, **on), nn.Flatten(**on), nn.Linear(4 * 4 * 4, 10, seed=seed + 1, **on))


def _train(model, data, batch_size, comm=None, epochs=1, optimizer="adam"):
    opt = make_optimizer(optimizer, model.parameters())
    history = fit(model, data, epochs=epochs, batch_size=batch_size, optimizer=opt, seed=5, comm=comm, **_QUIET)
    return model, history


def _allgather(value):
    return WORLD.allgather(value)


# -- the communicator ---------------------------------------------------------------------------------------
def test_communicator_ranks_and_collectives(backend):
    comm = init_communicator(backend)
    assert isinstance(comm, MPICommunicator)
    assert (comm.rank, comm.size, comm.local_rank) == (RANK, 2, RANK)      # one node: local rank = rank
    xp = backend.xp
    mine = [xp.asarray(np.full((2, 3), RANK + 1.0), device=backend.device),
            xp.asarray(np.arange(4) * (RANK + 1), device=backend.device),
            xp.asarray(np.full(5, RANK + 1.0, dtype=np.float32), device=backend.device)]
    before = [to_numpy(a).copy() for a in mine]
    summed = comm.allreduce(mine)
    np.testing.assert_array_equal(to_numpy(summed[0]), np.full((2, 3), 3.0))
    np.testing.assert_array_equal(to_numpy(summed[1]), np.arange(4) * 3)
    assert to_numpy(summed[2]).dtype == np.float32 and to_numpy(summed[1]).dtype == before[1].dtype
    np.testing.assert_array_equal(to_numpy(comm.allreduce(mine[2:], op="mean")[0]), np.full(5, 1.5, np.float32))
    np.testing.assert_array_equal(to_numpy(comm.broadcast(mine, root=1)[0]), np.full((2, 3), 2.0))
    for a, b in zip(mine, before, strict=True):                                        # the inputs are left alone
        np.testing.assert_array_equal(to_numpy(a), b)
    assert comm.allreduce_scalars([RANK + 0.5, 2]) == [2.0, 4.0]
    assert comm.bytes_reduced > 0
    comm.barrier()
    with pytest.raises(ValueError, match="op must be one of"):
        comm.allreduce(mine, op="max")
    with pytest.raises(TypeError, match="floating arrays only"):
        comm.allreduce(mine, op="mean")


def test_broadcast_makes_differently_seeded_ranks_identical():
    comm = init_communicator("numpy")
    model = small_cnn(channels=(4, 8), seed=RANK)
    assert _allgather(model.state_dict()["0.weight"].sum())[0] != _allgather(model.state_dict()["0.weight"].sum())[1]
    broadcast_state(model, comm)
    states = _allgather(model.state_dict())
    for key, value in states[0].items():
        np.testing.assert_array_equal(states[1][key], value, err_msg=key)
    np.testing.assert_array_equal(states[RANK]["0.weight"], small_cnn(channels=(4, 8), seed=0).state_dict()["0.weight"])


# -- equivalence with one process and the doubled batch -------------------------------------------------------
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_one_step_on_two_ranks_equals_one_process_with_the_doubled_batch(backend, digits, dtype, tol):
    data = _subset(digits, 2 * 12)                                   # one global batch of 24: one step
    comm = init_communicator(backend)
    model, history = _train(small_cnn(channels=(4, 8), dtype=dtype, seed=7 + RANK, backend=backend), data, 12, comm)
    ref, ref_history = _train(small_cnn(channels=(4, 8), dtype=dtype, seed=7), data, 24)
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        np.testing.assert_allclose(to_numpy(p.grad), to_numpy(q.grad), rtol=tol, atol=tol, err_msg=name)
        np.testing.assert_allclose(to_numpy(p.data), to_numpy(q.data), rtol=tol, atol=tol, err_msg=name)
    np.testing.assert_allclose(history.train_loss, ref_history.train_loss, rtol=tol)
    np.testing.assert_allclose(history.test_loss, ref_history.test_loss, rtol=tol)
    assert history.test_accuracy == ref_history.test_accuracy


@pytest.mark.parametrize("n_train", [45, 33])          # tails of 13 (7 + 6) and of 1 (1 + an empty part)
@pytest.mark.parametrize("sync_bn", [False, True])
def test_epochs_on_two_ranks_end_as_one_process_with_uneven_tails(digits, n_train, sync_bn):
    data = _subset(digits, n_train)
    comm = init_communicator("numpy")
    if sync_bn:
        model = convert_sync_batchnorm(_bn_cnn(3 + RANK, "float64"), comm)
        ref = _bn_cnn(3, "float64")
    else:
        model, ref = small_cnn(channels=(4, 8), dtype="float64", seed=3 + RANK), small_cnn(channels=(4, 8),
                                                                                             dtype="float64", seed=3)
    model, history = _train(model, data, 8, comm, epochs=3, optimizer="sgd")
    ref, ref_history = _train(ref, data, 16, epochs=3, optimizer="sgd")
    for key, value in ref.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[key], value, rtol=1e-9, atol=1e-12, err_msg=key)
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        np.testing.assert_allclose(getattr(history, key), getattr(ref_history, key), rtol=1e-9, err_msg=key)
    states = _allgather(model.state_dict())
    for key, value in states[0].items():
        np.testing.assert_array_equal(states[1][key], value, err_msg=key)


def test_per_rank_batchnorm_statistics_are_averaged_before_evaluation(digits):
    comm = init_communicator("numpy")
    model, _ = _train(_bn_cnn(3, "float32"), _subset(digits, 64), 8, comm)
    means = _allgather(model.state_dict()["1.running_mean"])
    np.testing.assert_array_equal(means[0], means[1])


def test_evaluate_reduces_over_the_ranks(digits):
    comm = init_communicator("numpy")
    model = small_cnn(channels=(4, 8), seed=1)
    loss, accuracy = evaluate(model, digits.x_test[:101], digits.y_test[:101], batch_size=16, comm=comm)
    ref_loss, ref_accuracy = evaluate(model, digits.x_test[:101], digits.y_test[:101])
    assert accuracy == ref_accuracy and loss == pytest.approx(ref_loss, rel=1e-6)


def test_a_run_resumed_from_rank_zeros_record_ends_as_one_that_never_stopped(digits):
    data = _subset(digits, 45)
    comm = init_communicator("numpy")
    saved = []

    def keep(record):
        saved.append((record, model.state_dict(), opt.state_dict()))

    model = small_cnn(channels=(4, 8), seed=RANK)
    opt = make_optimizer("adam", model.parameters())
    fit(model, data, epochs=3, batch_size=8, optimizer=opt, seed=5, comm=comm, on_checkpoint=keep, **_QUIET)
    record, state, opt_state = WORLD.bcast(saved[0] if RANK == 0 else None)   # what rank 0 wrote after epoch 1
    resumed = small_cnn(channels=(4, 8), seed=11)
    resumed.load_state_dict(state)
    opt2 = make_optimizer("adam", resumed.parameters())
    opt2.load_state_dict(opt_state)
    history = fit(resumed, data, epochs=3, batch_size=8, optimizer=opt2, seed=5, comm=comm, resume=record, **_QUIET)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[key], value, err_msg=key)
    assert history.train_loss == saved[-1][0]["history"]["train_loss"]


# -- SyncBatchNorm ----------------------------------------------------------------------------------------------
def _halves(x):
    return np.array_split(x, 2)[RANK]


def test_sync_batchnorm_equals_batchnorm_on_the_concatenated_batch():
    comm = init_communicator("numpy")
    rng = np.random.default_rng(0)
    x, g = rng.normal(2.0, 3.0, (7, 3, 4, 5)), rng.normal(size=(7, 3, 4, 5))      # 4 + 3 samples
    bn, sync = nn.BatchNorm2d(3, dtype="float64"), nn.SyncBatchNorm(3, comm=comm, dtype="float64")
    y, y_sync = bn(x), sync(_halves(x))
    np.testing.assert_allclose(y_sync, _halves(y), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sync.running_var, bn.running_var, rtol=1e-12)
    dx, dx_sync = bn.backward(g), sync.backward(_halves(g))
    np.testing.assert_allclose(dx_sync, _halves(dx), rtol=1e-10, atol=1e-12)
    grads = comm.allreduce([sync.weight.grad, sync.bias.grad])               # what the gradient allreduce does
    np.testing.assert_allclose(grads[0], bn.weight.grad, rtol=1e-12)
    np.testing.assert_allclose(grads[1], bn.bias.grad, rtol=1e-12)


def test_sync_batchnorm_gradient_matches_finite_differences_across_ranks():
    """L = sum over both ranks of y * r: every rank's dL/dx (which depends on the other rank's x) by central
    differences, each perturbation's loss reduced over the ranks."""
    comm = init_communicator("numpy")
    rng = np.random.default_rng(1)
    x, r = _halves(rng.normal(size=(6, 2, 3))), _halves(rng.normal(size=(6, 2, 3)))
    sync = nn.SyncBatchNorm(2, comm=comm, dtype="float64")
    sync.weight.data, sync.bias.data = np.array([1.5, -0.7]), np.array([0.3, 0.1])

    def loss(x_local):
        return comm.allreduce_scalars([float(np.sum(sync(x_local) * r))])[0]

    sync(x)
    dx = sync.backward(r)
    eps = 1e-6
    for owner in (0, 1):
        for index in [(0, 0, 0), (1, 1, 2), (2, 0, 1)]:
            shift = np.zeros_like(x)
            if owner == RANK:
                shift[index] = eps
            numeric = (loss(x + shift) - loss(x - shift)) / (2 * eps)
            analytic = comm.allreduce_scalars([dx[index] if owner == RANK else 0.0])[0]
            assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-8), (owner, index)


def test_convert_sync_batchnorm_keeps_parameters_order_and_statistics():
    comm = init_communicator("numpy")
    model = _bn_cnn(0, "float32")
    bn = model[1]
    bn.running_mean = bn.running_mean + 1.0
    before = model.state_dict()
    params = list(model.parameters())
    converted = convert_sync_batchnorm(model, comm)
    assert converted is model and isinstance(model[1], nn.SyncBatchNorm) and model[1].comm is comm
    assert list(model.parameters()) == params                       # the same Parameter objects, same order
    assert list(model.state_dict()) == list(before)
    for key, value in before.items():
        np.testing.assert_array_equal(model.state_dict()[key], value)
    assert isinstance(Communicator(comm.backend), Communicator)
