"""Data parallelism on a communicator: the same weights everywhere, one gradient message per step.

Each rank holds a whole model and trains on its part of every global batch (see
:class:`~xpconv.data.DataLoader`'s ``num_replicas``/``rank``).  The three things that keep the ranks one model:

    broadcast_state      at the start: rank 0's parameters and buffers on every rank, whatever their seeds
    allreduce_gradients  every step: the sum of every rank's gradients (each rank scaled its loss's gradient
                         by its share of the global batch), packed in one flat buffer per dtype, one allreduce
    average_buffers      before evaluating or saving: BatchNorm's running statistics, averaged over the ranks
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ..backends import to_numpy
from ..nn import Module, Parameter
from .communicator import Communicator

__all__ = ["broadcast_state", "allreduce_gradients", "average_buffers", "gradient_bytes"]


def broadcast_state(model: Module, comm: Communicator, root: int = 0) -> None:
    """Give every rank rank ``root``'s parameters and buffers (``model.state_dict()``), in place."""
    if comm.passthrough:
        return
    state = model.state_dict()
    received = comm.broadcast([model.backend.asarray(v) for v in state.values()], root=root)
    model.load_state_dict(dict(zip(state, received, strict=True)))


def allreduce_gradients(params: Iterable[Parameter], comm: Communicator,
                        values: Sequence[float] = ()) -> list[float]:
    """Replace each ``p.grad`` by its sum over all ranks; returns the sums of ``values``, sent along.

    Gradients and values travel in one flat buffer per dtype (one message for a float32 model): ``values``
    (e.g. the loss and a stop flag) ride in the gradients' dtype.
    """
    params = list(params)
    if comm.passthrough:
        return [float(v) for v in values]
    grads = [p.grad for p in params]
    extra = comm.backend.asarray(np.asarray(values, dtype=np.float64), dtype=grads[0].dtype)
    *summed, extra = comm.allreduce([*grads, extra])
    for p, g in zip(params, summed, strict=True):
        p.grad = g
    return [float(v) for v in comm.backend.to_numpy(extra)]


def average_buffers(model: Module, comm: Communicator) -> None:
    """Average the floating buffers (BatchNorm's running statistics) over all ranks, in place.

    Integer buffers (``num_batches_tracked``) are left alone: every rank counts the same steps.
    """
    if comm.passthrough:
        return
    state = model.state_dict()
    trained = {name for name, _ in model.named_parameters()}
    names = [k for k, v in state.items() if k not in trained and np.issubdtype(v.dtype, np.floating)]
    if not names:
        return
    averaged = comm.allreduce([model.backend.asarray(state[k]) for k in names], op="mean")
    model.load_state_dict(state | dict(zip(names, averaged, strict=True)))


def gradient_bytes(params: Iterable[Parameter]) -> int:
    """Bytes of the gradients one step sends (each rank's buffer, before the allreduce's own traffic)."""
    return sum(to_numpy(p.data).nbytes for p in params)
