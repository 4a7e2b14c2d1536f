"""Data-parallel training across processes, GPUs and nodes: MPI (mpi4py) for host arrays, NCCL for CuPy.

Launch one process per device with ``mpiexec -n N`` (docs/distributed.md); in each::

    comm = init_communicator("numpy")             # rank, size, local_rank; NCCL on a CuPy GPU backend
    model = convert_sync_batchnorm(model, comm)   # optional: global-batch BatchNorm statistics
    fit(model, data, ..., batch_size=B, comm=comm)  # B per rank: each step sees N·B images

:func:`xpconv.training.fit` broadcasts rank 0's weights, shards every global batch, sums the gradients in
one message per step, averages BatchNorm's running statistics before evaluating and reduces the metrics.
"""
from __future__ import annotations

from ..nn import Module, SyncBatchNorm
from .communicator import (
    Communicator,
    MPICommunicator,
    NCCLCommunicator,
    init_communicator,
    mpi_available,
    nccl_available,
    run_or_abort,
)
from .parallel import allreduce_gradients, average_buffers, broadcast_state, gradient_bytes

__all__ = ["Communicator", "MPICommunicator", "NCCLCommunicator", "init_communicator", "run_or_abort",
           "mpi_available", "nccl_available", "broadcast_state", "allreduce_gradients", "average_buffers",
           "gradient_bytes", "SyncBatchNorm", "convert_sync_batchnorm"]


def convert_sync_batchnorm(model: Module, comm: Communicator | None = None) -> Module:
    """``model`` with its BatchNorm layers replaced by :class:`~xpconv.nn.SyncBatchNorm` on ``comm``."""
    return SyncBatchNorm.convert_sync_batchnorm(model, comm)
