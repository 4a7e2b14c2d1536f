"""Communicators: the collectives data-parallel training needs, on MPI (host arrays) or NCCL (CuPy arrays).

One process per device, launched by ``mpiexec`` (or ``srun``); every process builds its communicator with
:func:`init_communicator`, which asks the backend how its arrays travel (:attr:`Backend.collective`):

    Communicator       one process, no MPI at all: every collective returns its input
    MPICommunicator    ``mpi4py``: arrays are packed into one host NumPy buffer per dtype, reduced with one
                       ``Allreduce`` (``Bcast``) and copied back to the backend (NumPy: no copy at all)
    NCCLCommunicator   ``cupy.cuda.nccl``: the same packing on the GPU, one ``ncclAllReduce`` per dtype;
                       rank 0 makes the NCCL unique id and MPI broadcasts it (as ChainerMN does)

Shapes: a collective takes a list of arrays of any shapes and returns a new list of the same shapes and
dtypes, on the backend's device; the inputs are never modified.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import numpy as np

from .._typing import Array, Device
from ..backends import Backend, get_backend

__all__ = ["Communicator", "MPICommunicator", "NCCLCommunicator", "init_communicator", "run_or_abort",
           "mpi_available", "nccl_available", "local_rank"]

_OPS = ("sum", "mean")
_T = TypeVar("_T")


def _mpi() -> Any:
    """mpi4py's MPI module (initializing MPI), or ImportError with the fix."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(f"distributed training needs mpi4py and an MPI library ({exc}); install them with: "
                          'pip install "xpconv[mpi]"') from None
    return MPI


def mpi_available() -> tuple[bool, str]:
    """(usable, description): whether mpi4py imports and which MPI library it runs on (never raises)."""
    try:
        MPI = _mpi()
        library = " ".join(MPI.Get_library_version().splitlines()[0].split())
        return True, f"mpi4py {sys.modules['mpi4py'].__version__}, {library}"
    except Exception as exc:
        return False, " ".join(str(exc).split())


def nccl_available() -> tuple[bool, str]:
    """(usable, description): whether CuPy's NCCL bindings load and a CUDA device is usable (never raises)."""
    from ..backends import cuda_device_count

    try:
        from cupy.cuda import nccl

        version = nccl.get_version()
    except Exception as exc:
        return False, f"not usable: {' '.join(str(exc).split()) or type(exc).__name__}"
    count = cuda_device_count()
    return count > 0, f"NCCL {version // 10000}.{version // 100 % 100}.{version % 100}, {count} CUDA device(s)"


class Communicator:
    """A single process: ``rank`` 0 of ``size`` 1; every collective returns its input.

    The base of the MPI and NCCL communicators, which implement the packing (one flat buffer per dtype) on top
    of two primitives, :meth:`_allreduce_flat` and :meth:`_broadcast_flat`.  ``bytes_reduced`` and
    ``seconds`` add up what the collectives sent and how long they took (for the step-time fraction).

    Examples
    --------
    >>> import numpy as np
    >>> comm = Communicator(get_backend("numpy"))
    >>> comm.rank, comm.size, comm.allreduce_scalars([1.5, 2.0])
    (0, 1, [1.5, 2.0])
    >>> comm.allreduce([np.ones(3)], op="mean")[0].tolist()
    [1.0, 1.0, 1.0]
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    passthrough: bool = True      # collectives return their inputs (the MPI and NCCL ones communicate, even alone)

    def __init__(self, backend: Backend) -> None:
        if not isinstance(backend, Backend):
            raise TypeError(f"a communicator takes a Backend, got {type(backend).__name__}")
        self.backend = backend
        self.bytes_reduced = 0
        self.seconds = 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, backend={self.backend!r})"

    # -- collectives ---------------------------------------------------------------------------------
    def allreduce(self, arrays: Sequence[Array], op: str = "sum") -> list[Array]:
        """The element-wise ``op`` ("sum"; "mean" of floating arrays) of each array over all ranks (one message
        per dtype)."""
        arrays = list(arrays)
        if op not in _OPS:
            raise ValueError(f"op must be one of {', '.join(_OPS)}, got {op!r}")
        if op == "mean" and not all(self.backend.xp.isdtype(a.dtype, "real floating") for a in arrays):
            raise TypeError("allreduce(op='mean') takes floating arrays only; use op='sum' for integers")
        if self.passthrough:
            return arrays
        return self._collective(arrays, self._allreduce_flat, mean=op == "mean")

    def broadcast(self, arrays: Sequence[Array], root: int = 0) -> list[Array]:
        """Rank ``root``'s arrays on every rank (the arrays must have the same shapes and dtypes everywhere)."""
        arrays = list(arrays)
        if not 0 <= root < self.size:
            raise ValueError(f"root must be a rank in [0, {self.size}), got {root!r}")
        if self.passthrough:
            return arrays
        return self._collective(arrays, lambda flat: self._broadcast_flat(flat, root))

    def allreduce_scalars(self, values: Sequence[float], op: str = "sum") -> list[float]:
        """The ``op`` of each Python number over all ranks, as floats (float64 on the way)."""
        host = np.array([float(v) for v in values], dtype=np.float64)
        if self.passthrough and op in _OPS:    # one process: no trip through the device
            return host.tolist()
        reduced = self.allreduce([self.backend.asarray(host)], op)[0]
        return [float(v) for v in self.backend.to_numpy(reduced)]

    def barrier(self) -> None:
        """Wait until every rank has called it."""

    def abort(self, status: int = 1) -> NoReturn:
        """End the whole job with ``status``: every rank, not only this one."""
        raise SystemExit(status)

    # -- packing ----------------------------------------------------------------------------------------
    def _collective(self, arrays: list[Array], run: Callable[[Array], Array], mean: bool = False) -> list[Array]:
        """Pack ``arrays`` into one flat buffer per dtype, ``run`` each buffer (divided by ``size`` for a mean),
        unpack into new arrays."""
        xp = self.backend.xp
        out: list[Array] = list(arrays)
        groups: dict[Any, list[int]] = {}
        for i, a in enumerate(arrays):
            groups.setdefault(a.dtype, []).append(i)
        start = time.perf_counter()
        for indices in groups.values():
            flat = xp.concat([xp.reshape(self.backend.asarray(arrays[i]), (-1,)) for i in indices])
            flat = run(flat)
            if mean:
                flat = flat / self.size
            offset = 0
            for i in indices:
                size = int(np.prod(arrays[i].shape))
                out[i] = xp.reshape(flat[offset:offset + size], tuple(arrays[i].shape))
                offset += size
        self.seconds += time.perf_counter() - start
        return out

    def _allreduce_flat(self, flat: Array) -> Array:  # pragma: no cover - the trivial communicator never calls it
        raise NotImplementedError

    def _broadcast_flat(self, flat: Array, root: int) -> Array:  # pragma: no cover
        raise NotImplementedError


class MPICommunicator(Communicator):
    """The ranks of an MPI communicator (``mpi4py``), for host arrays: NumPy, array-api-strict, torch on the CPU.

    Each collective copies its packed buffer to host memory (no copy for NumPy), runs one MPI call on it and
    copies the result back to the backend.
    """

    passthrough = False

    def __init__(self, backend: Backend, comm: Any = None) -> None:
        super().__init__(backend)
        MPI = _mpi()
        self._mpi = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_rank = local_rank(self.comm)

    def _host(self, flat: Array) -> np.ndarray:
        host = np.ascontiguousarray(self.backend.to_numpy(flat))
        return host if host.flags.writeable else host.copy()

    def _allreduce_flat(self, flat: Array) -> Array:
        host = self._host(flat)
        self.comm.Allreduce(self._mpi.IN_PLACE, host, op=self._mpi.SUM)
        self.bytes_reduced += host.nbytes
        return self.backend.asarray(host)

    def _broadcast_flat(self, flat: Array, root: int) -> Array:
        host = self._host(flat)
        self.comm.Bcast(host, root=root)
        self.bytes_reduced += host.nbytes
        return self.backend.asarray(host)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, status: int = 1) -> NoReturn:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(status)
        raise SystemExit(status)  # pragma: no cover - Abort does not return


# NCCL's names of the dtypes it reduces (NumPy's dtype names as keys).
_NCCL_DTYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
                "int32": "NCCL_INT32", "int64": "NCCL_INT64", "uint8": "NCCL_UINT8"}


class NCCLCommunicator(MPICommunicator):
    """NCCL between GPUs, for CuPy arrays: the buffers stay on the device; MPI only starts it and waits.

    Rank 0 makes the NCCL unique id, MPI broadcasts it, and every rank creates its NCCL communicator on its
    backend's device (which :func:`init_communicator` chose as the ``local_rank``-th GPU of its node).
    """

    def __init__(self, backend: Backend, comm: Any = None) -> None:
        super().__init__(backend, comm)
        from cupy.cuda import nccl

        self._nccl = nccl
        self.backend.device.use()                   # this process's GPU, before NCCL is created on it
        unique_id = nccl.get_unique_id() if self.rank == 0 else None
        unique_id = self.comm.bcast(unique_id, root=0)
        self._nccl_comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)

    def _nccl_args(self, flat: Array) -> tuple[int, int, int]:
        import cupy

        name = str(flat.dtype)
        if name not in _NCCL_DTYPES:
            raise TypeError(f"NCCL cannot reduce dtype {name}")
        return flat.size, getattr(self._nccl, _NCCL_DTYPES[name]), cupy.cuda.get_current_stream().ptr

    def _allreduce_flat(self, flat: Array) -> Array:
        out = self.backend.xp.empty_like(flat)
        count, dtype, stream = self._nccl_args(flat)
        self._nccl_comm.allReduce(flat.data.ptr, out.data.ptr, count, dtype, self._nccl.NCCL_SUM, stream)
        self.backend.synchronize()                  # the time counted is the reduction's, not its launch's
        self.bytes_reduced += flat.nbytes
        return out

    def _broadcast_flat(self, flat: Array, root: int) -> Array:
        out = self.backend.xp.asarray(flat, copy=True)
        count, dtype, stream = self._nccl_args(out)
        self._nccl_comm.bcast(out.data.ptr, count, dtype, root, stream)
        self.backend.synchronize()
        self.bytes_reduced += flat.nbytes
        return out


def local_rank(comm: Any) -> int:
    """This process's rank among those of ``comm`` on the same node (``Split_type(COMM_TYPE_SHARED)``)."""
    MPI = _mpi()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return int(node.Get_rank())
    finally:
        node.Free()


def init_communicator(backend: str | Backend | None = None, device: Device = None) -> Communicator:
    """The communicator of this process, on its backend.

    Under ``mpiexec -n N`` (N > 1): an :class:`NCCLCommunicator` for a GPU backend whose arrays NCCL reduces
    (CuPy), each rank on GPU ``local_rank`` unless ``device`` names one, else an :class:`MPICommunicator`.
    A single process (no launcher, or mpi4py not installed) gets the trivial :class:`Communicator`.

    Raises
    ------
    BackendUnavailableError, ValueError
        As :func:`xpconv.get_backend`, e.g. when a node has fewer GPUs than ranks.
    """
    try:
        MPI = _mpi()
    except ImportError:
        return Communicator(get_backend(backend, device))
    world = MPI.COMM_WORLD
    if world.Get_size() == 1:
        return Communicator(get_backend(backend, device))
    chosen = get_backend(backend, device)
    if chosen.is_gpu and device is None:
        chosen = get_backend(chosen, local_rank(world))
    kinds: dict[str, type[MPICommunicator]] = {"mpi": MPICommunicator, "nccl": NCCLCommunicator}
    return kinds[chosen.collective](chosen, world)


def run_or_abort(fn: Callable[[], _T], comm: Communicator, what: str = "xpconv") -> _T:
    """``fn()``; if it raises on one of several ranks, print the error with the rank and end the whole job.

    A rank that fails while the others wait in a collective would leave them waiting forever: this prints
    ``"{what}: error on rank r of n: ..."`` to stderr and calls ``MPI.COMM_WORLD.Abort(1)``, which ends every
    rank within seconds.  With one process the exception propagates unchanged.
    """
    try:
        return fn()
    except BaseException as exc:
        if comm.size == 1:
            raise
        message = " ".join((str(exc) or type(exc).__name__).split())
        print(f"{what}: error on rank {comm.rank} of {comm.size}: {type(exc).__name__}: {message}",
              file=sys.stderr, flush=True)
        comm.abort(1)
