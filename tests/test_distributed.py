"""xpconv.distributed in one process (the trivial communicator, sharding, SyncBatchNorm), and whole jobs under
``mpiexec -n 2`` started as subprocesses: a failing rank ends the job, the CLI trains on 2 ranks as 1 process
with the doubled batch and only rank 0 writes.  The collectives themselves are tested on 2 ranks by
tests/test_distributed_mpi.py (run under mpiexec by .ci/run)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from xpconv import get_backend, nn, to_numpy
from xpconv.backends import cuda_device_count
from xpconv.cli import main
from xpconv.data import DataLoader
from xpconv.distributed import (
    Communicator,
    MPICommunicator,
    NCCLCommunicator,
    SyncBatchNorm,
    convert_sync_batchnorm,
    gradient_bytes,
    init_communicator,
    run_or_abort,
)
from xpconv.models import resnet20, small_cnn
from xpconv.training import fit, make_optimizer

ROOT = Path(__file__).resolve().parents[1]


def _mpiexec() -> str | None:
    if importlib.util.find_spec("mpi4py") is None:
        return None
    beside_python = Path(sys.executable).with_name("mpiexec")    # the mpich wheel of the mpi extra
    return str(beside_python) if beside_python.exists() else shutil.which("mpiexec")


needs_mpiexec = pytest.mark.skipif(_mpiexec() is None,
                                   reason='mpi4py or mpiexec is missing (pip install "xpconv[mpi]")')


# -- one process ----------------------------------------------------------------------------------------------
def test_the_trivial_communicator_returns_its_inputs():
    comm = Communicator(get_backend("numpy"))
    arrays = [np.ones((2, 2)), np.arange(3)]
    assert comm.allreduce(arrays)[1] is arrays[1] and comm.broadcast(arrays)[0] is arrays[0]
    assert comm.allreduce_scalars([1, 2.5]) == [1.0, 2.5]
    comm.barrier()
    with pytest.raises(ValueError, match="op must be one of"):
        comm.allreduce(arrays, op="max")
    with pytest.raises(ValueError, match="root must be a rank"):
        comm.broadcast(arrays, root=1)
    with pytest.raises(TypeError, match="takes a Backend"):
        Communicator("numpy")  # type: ignore[arg-type]
    with pytest.raises(SystemExit):
        comm.abort(3)


def test_one_process_gets_the_trivial_communicator_and_errors_propagate():
    comm = init_communicator("numpy")
    assert type(comm) is Communicator and (comm.rank, comm.size, comm.local_rank) == (0, 1, 0)
    with pytest.raises(KeyError, match="left alone"):
        run_or_abort(lambda: {}["left alone"], comm)


needs_mpi4py = pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None,
                                  reason='mpi4py is not installed (pip install "xpconv[mpi]")')


def _collectives_of_one_rank(comm):
    """An MPI or NCCL communicator of size 1 runs the whole path (pack, reduce, unpack): values, dtypes, shapes
    come back unchanged, in new arrays."""
    xp, backend = comm.backend.xp, comm.backend
    arrays = [backend.asarray(np.arange(6.0).reshape(2, 3)), backend.asarray(np.arange(4)),
              backend.asarray(np.ones((2, 1, 2), dtype=np.float32))]
    for out in (comm.allreduce(arrays), comm.allreduce([arrays[0], arrays[2]], op="mean"), comm.broadcast(arrays)):
        for got in out:
            want = next(a for a in arrays if a.shape == got.shape)
            assert got is not want and got.dtype == want.dtype
            np.testing.assert_array_equal(to_numpy(got), to_numpy(want))
    assert comm.allreduce_scalars([2, 0.5]) == [2.0, 0.5]
    assert comm.bytes_reduced > 0 and xp is backend.xp


@needs_mpi4py
def test_an_mpi_communicator_of_one_rank_packs_reduces_and_unpacks(backend):
    comm = MPICommunicator(backend)
    assert (comm.rank, comm.size, comm.local_rank) == (0, 1, 0)
    _collectives_of_one_rank(comm)


@needs_mpi4py
def test_fit_on_an_mpi_communicator_of_one_rank_is_fit_alone():
    from xpconv.data import load_dataset

    data = load_dataset("digits", seed=0).subset(40)
    models = [small_cnn(channels=(4, 8), dtype="float64", seed=0) for _ in range(2)]
    histories = [fit(model, data, epochs=2, batch_size=16, optimizer=make_optimizer("adam", model.parameters()),
                     comm=c, progress=False, log=lambda line: None)
                 for model, c in zip(models, (MPICommunicator(get_backend("numpy")), None), strict=True)]
    assert histories[0].train_loss == histories[1].train_loss
    for key, value in models[1].state_dict().items():
        np.testing.assert_array_equal(models[0].state_dict()[key], value, err_msg=key)


@pytest.mark.gpu
@pytest.mark.skipif(cuda_device_count() == 0 or importlib.util.find_spec("mpi4py") is None,
                    reason="needs a usable CUDA device for CuPy and mpi4py")
def test_nccl_of_one_gpu_reduces_on_the_device_and_trains():
    comm = NCCLCommunicator(get_backend("cupy"))
    _collectives_of_one_rank(comm)
    from xpconv.data import load_dataset

    data = load_dataset("digits", seed=0).subset(64)
    models = [small_cnn(channels=(4, 8), backend="cupy", seed=0) for _ in range(2)]
    for model, c in zip(models, (comm, None), strict=True):
        fit(model, data, epochs=1, batch_size=16, optimizer=make_optimizer("sgd", model.parameters()), comm=c,
            progress=False, log=lambda line: None)
    for key, value in models[1].state_dict().items():
        np.testing.assert_allclose(models[0].state_dict()[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("n, batch_size", [(48, 8), (45, 8), (33, 8), (3, 4)])
def test_replicas_share_the_global_batches_of_one_loader(n, batch_size):
    """Replica r of 2 with batch B gets its part of each global batch of 2B, in the same steps: together
    they see every sample once, exactly the batches of one loader with batch 2B."""
    x, y = np.arange(n, dtype=np.float32).reshape(n, 1), np.arange(n)
    whole = DataLoader(x, y, 2 * batch_size, seed=4)
    parts = [DataLoader(x, y, batch_size, seed=4, num_replicas=2, rank=r) for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == len(whole)
    for epoch in range(2):
        steps = list(zip(whole, *parts, strict=True))
        for i, ((_, yb), (_, y0), (_, y1)) in enumerate(steps):
            assert np.concatenate([y0, y1]).tolist() == yb.tolist(), (epoch, i)
            assert abs(len(y0) - len(y1)) <= 1 and parts[0].global_batch_size(i) == len(yb)


def test_a_replica_rank_must_fit():
    x, y = np.zeros((4, 1), np.float32), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="rank must be in"):
        DataLoader(x, y, 2, num_replicas=2, rank=2)


def test_sync_batchnorm_alone_is_batchnorm_for_every_rank_of_input():
    rng = np.random.default_rng(0)
    for shape, plain in [((5, 3), nn.BatchNorm1d), ((4, 3, 6), nn.BatchNorm1d), ((2, 3, 4, 4), nn.BatchNorm2d),
                         ((2, 3, 2, 3, 2), nn.BatchNorm3d)]:
        x, g = rng.normal(size=shape), rng.normal(size=shape)
        bn, sync = plain(3, dtype="float64"), SyncBatchNorm(3, dtype="float64")
        np.testing.assert_array_equal(sync(x), bn(x))
        np.testing.assert_array_equal(sync.backward(g), bn.backward(g))
        np.testing.assert_array_equal(sync.weight.grad, bn.weight.grad)
    with pytest.raises(ValueError, match=r"expects x of shape \(N, 3, \*\)"):
        SyncBatchNorm(3)(np.zeros((2, 4), np.float32))


def test_convert_sync_batchnorm_reaches_the_layers_of_nested_blocks():
    model = resnet20(seed=0)
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    before, keys = model(x), list(model.state_dict())
    count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    params = list(model.parameters())
    model = convert_sync_batchnorm(model, Communicator(model.backend))
    assert sum(isinstance(m, SyncBatchNorm) for m in model.modules()) == count == 19
    assert list(model.state_dict()) == keys and list(model.parameters()) == params
    np.testing.assert_array_equal(model(x), before)
    assert isinstance(convert_sync_batchnorm(nn.BatchNorm2d(2)), SyncBatchNorm)


def test_gradient_bytes_counts_every_parameter_once():
    model = small_cnn(channels=(4, 8))
    assert gradient_bytes(model.parameters()) == 4 * sum(int(np.prod(p.shape)) for p in model.parameters())


def test_info_says_whether_mpi_and_nccl_are_usable(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "MPI (mpi4py)" in out and "NCCL (CuPy)" in out


def test_train_distributed_in_one_process_needs_no_launcher(tmp_path, capsys):
    status = main(["train", "--distributed", "--epochs", "1", "--limit", "64", "--metrics-out",
                   str(tmp_path / "m.json")])
    assert status == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["ranks"] == 1 and metrics["communication_bytes"] == 0
    assert "communication:" in capsys.readouterr().out


# -- whole jobs under mpiexec -n 2 --------------------------------------------------------------------------
def _launch(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = _mpiexec()
    assert command is not None
    return subprocess.run([command, "-n", "2", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@needs_mpiexec
def test_a_rank_that_raises_ends_the_whole_job_with_its_message(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        from xpconv.distributed import init_communicator, run_or_abort

        comm = init_communicator("numpy")

        def work():
            if comm.rank == 1:
                raise ValueError("rank one broke")
            comm.allreduce([np.ones(3)])       # rank 0 waits here for a partner that never comes
            return 0

        run_or_abort(work, comm, "job")
        """))
    start = time.perf_counter()
    result = _launch([sys.executable, str(script)], tmp_path, timeout=30)
    assert time.perf_counter() - start < 30
    assert result.returncode != 0
    assert "job: error on rank 1 of 2: ValueError: rank one broke" in result.stderr


@needs_mpiexec
def test_train_on_two_ranks_is_one_process_with_the_doubled_batch_and_only_rank_0_writes(tmp_path):
    common = ["--epochs", "2", "--limit", "200", "--seed", "1"]
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    result = _launch([sys.executable, "-m", "xpconv.cli", "train", "--distributed", "--batch-size", "16", *common,
                      "--save", "m.npz", "--metrics-out", "m.json", "--checkpoint", "c.npz"], two)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("training small_cnn") == 1 and result.stdout.count("communication:") == 1
    assert sorted(p.name for p in two.iterdir()) == ["c.npz", "m.json", "m.npz"]
    assert main(["train", "--batch-size", "32", *common, "--metrics-out", str(one / "m.json")]) == 0
    metrics = json.loads((two / "m.json").read_text())
    reference = json.loads((one / "m.json").read_text())
    assert metrics["ranks"] == 2 and metrics["communication_bytes"] > 0
    # float32 sums in another order (and this process's BLAS threads): at most one test image may flip
    np.testing.assert_allclose(metrics["test_accuracy_per_epoch"], reference["test_accuracy_per_epoch"],
                               atol=1.01 / metrics["test_size"])
    np.testing.assert_allclose(metrics["train_loss"], reference["train_loss"], rtol=1e-5)


@needs_mpiexec
def test_a_distributed_run_stopped_by_sigterm_resumes_to_the_same_end(tmp_path):
    """mpiexec forwards SIGTERM to every rank; the ranks agree on the step to stop at, rank 0 checkpoints, and
    the resumed run (on 2 ranks again) ends with the metrics of a run that never stopped."""
    common = [sys.executable, "-m", "xpconv.cli", "train", "--distributed", "--batch-size", "8", "--limit", "300",
              "--epochs", "10", "--seed", "2"]
    whole = _launch([*common, "--metrics-out", "whole.json"], tmp_path)
    assert whole.returncode == 0, whole.stderr
    env = os.environ | {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    job = subprocess.Popen([_mpiexec(), "-n", "2", *common, "--checkpoint", "c.npz"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert job.stdout is not None
    for line in job.stdout:
        if line.startswith("epoch   1/10"):
            job.terminate()                                  # SIGTERM to mpiexec, which forwards it
            break
    _, err = job.communicate(timeout=60)
    assert job.returncode != 0 and "stopped by SIGTERM" in err, err
    resumed = _launch([sys.executable, "-m", "xpconv.cli", "train", "--distributed", "--resume", "c.npz",
                       "--metrics-out", "resumed.json"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("resuming small_cnn") == 1
    metrics = [json.loads((tmp_path / name).read_text()) for name in ("whole.json", "resumed.json")]
    for key in ("train_loss", "train_accuracy", "test_loss_per_epoch", "test_accuracy_per_epoch"):
        assert metrics[1][key] == metrics[0][key], key
