"""A seeded batch iterator that moves each batch to a backend, optionally augments it there, and can prepare
the next batch on a background thread while the current step runs.

Shapes: ``x`` (N, ...) and ``y`` (N,) live on the host; a batch is ``(B, ...)`` of the loader's dtype and
``(B,)`` int64, on the backend's device.
"""
from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from .._typing import Array, Device
from ..backends import Backend, get_backend, to_numpy
from ..validation import non_negative_int, positive_int

__all__ = ["DataLoader", "prefetched"]

_T = TypeVar("_T")
_POLL_SECONDS = 0.05          # how often a blocked worker looks whether the consumer has gone


def prefetched(items: Iterator[_T], depth: int) -> Iterator[_T]:
    """Iterate over ``items`` while a background thread produces up to ``depth`` of them ahead.

    The items arrive in the order ``items`` produces them.  An exception raised in the worker is raised
    again here, in the consumer; when the consumer stops early (``break``, an exception, or the iterator
    being closed or garbage-collected) the worker is told to stop and is joined before this returns (it may
    finish the item it is producing).

    Parameters
    ----------
    items : iterator
        Consumed only by the worker thread.
    depth : int
        Most items produced ahead, >= 1.

    Returns
    -------
    iterator
        The same items, in the same order.

    Raises
    ------
    ValueError
        For ``depth`` < 1 (when iteration starts).
    Exception
        Whatever ``items`` raised, re-raised in the consumer.

    Examples
    --------
    >>> list(prefetched(iter(range(5)), depth=2))
    [0, 1, 2, 3, 4]
    """
    depth = positive_int("depth", depth)
    slots: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                pass
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            put((False, exc))

    worker = threading.Thread(target=work, name="xpconv-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            more, item = slots.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        worker.join()


class DataLoader:
    """Iterate over ``(x, y)`` batches on ``backend``, reshuffled every epoch from one seeded generator.

    ``x`` (N, ...) and ``y`` (N,) are host arrays (any backend's arrays are copied to the host once, and
    never modified); each batch is ``backend.asarray(x[idx], dtype)``, passed through ``transform`` on the
    device, and int64 labels.  The same ``seed`` gives the same sequence of batches, with or without
    ``prefetch``: the epoch's order is drawn when the epoch starts, and the batches (with the transform's
    random draws) are made one after another, in order, by whichever thread makes them.

    Parameters
    ----------
    x : array
        ``(N, ...)`` samples.
    y : array
        ``(N,)`` integer labels.
    batch_size : int, default 64
    shuffle : bool, default True
        Draw a new order every epoch (else the stored order).
    seed : int, sequence of int or None, default None
        Seed of :attr:`generator`, which draws every epoch's order.
    backend, device
        Where batches go (:func:`xpconv.get_backend`).
    dtype : {"float32", "float64", "float16", "bfloat16"}, default "float32"
    drop_last : bool, default False
        Drop a last, smaller batch.
    transform : callable or None, default None
        Applied to every image batch on the device, e.g.
        ``Compose([RandomCrop(32, padding=4, seed=s), RandomHorizontalFlip(seed=s + 1)])``.
    prefetch : int or bool, default 0
        Batches prepared ahead on a background thread (``True``: 1): slicing on the host, the copy to the
        device and ``transform`` overlap the consumer's step.  Off by default: on a CPU backend the thread
        competes with the step for the same cores; on a GPU it hides the host work and the copy.  Either
        way, batches go up with :meth:`~xpconv.backends.Backend.upload`: on a GPU from pinned memory, queued
        without making the host wait.
    num_replicas, rank : int, default 1, 0
        Data parallelism (as torch's ``DistributedSampler``): every replica draws the same order, the
        global batches hold ``num_replicas * batch_size`` samples, and replica ``rank`` gets its part of
        each (``np.array_split``: a smaller last global batch is split as evenly as possible, so no sample
        is dropped or repeated; a replica may get an empty part when it has fewer samples than replicas).

    Raises
    ------
    ValueError
        For x and y of different lengths, an empty data set, or a bad ``batch_size``/``prefetch``.
    TypeError
        For labels that are not integers or a ``transform`` that is not callable.

    Examples
    --------
    >>> import numpy as np
    >>> x, y = np.arange(10, dtype=np.float32).reshape(10, 1), np.arange(10)
    >>> loader = DataLoader(x, y, batch_size=4, seed=0, prefetch=1)
    >>> [len(yb) for _, yb in loader]
    [4, 4, 2]
    >>> state = loader.state_dict()                       # between epochs: what a checkpoint stores
    >>> first = [yb.tolist() for _, yb in loader]
    >>> loader.load_state_dict(state)
    >>> [yb.tolist() for _, yb in loader] == first
    True
    """

    def __init__(self, x: Array, y: Array, batch_size: int = 64, shuffle: bool = True,
                 seed: int | Sequence[int] | None = None, backend: str | Backend | None = None, device: Device = None,
                 dtype: str = "float32", drop_last: bool = False, *, transform: Callable[[Array], Array] | None = None,
                 prefetch: int | bool = 0, num_replicas: int = 1, rank: int = 0) -> None:
        self.x, self.y = np.asarray(to_numpy(x)), np.asarray(to_numpy(y))
        if self.x.ndim < 1 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x (N, ...) and y (N,) must have the same length N, got shapes {self.x.shape} "
                             f"and {self.y.shape}")
        if self.x.shape[0] == 0:
            raise ValueError("cannot iterate over an empty data set")
        if not np.issubdtype(self.y.dtype, np.integer):
            raise TypeError(f"labels y must be integers, got dtype {self.y.dtype}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.batch_size = positive_int("batch_size", batch_size)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.prefetch = int(prefetch) if isinstance(prefetch, bool) else non_negative_int("prefetch", prefetch)
        self.transform = transform
        self.num_replicas = positive_int("num_replicas", num_replicas)
        self.rank = non_negative_int("rank", rank)
        if self.rank >= self.num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={self.num_replicas}), got {self.rank}")
        self.backend = get_backend(backend, device)
        self.dtype = self.backend.dtype(dtype)
        self.generator = np.random.default_rng(seed)
        self._epochs_running = 0

    def __len__(self) -> int:
        n, size = self.x.shape[0], self.batch_size * self.num_replicas
        return n // size if self.drop_last else math.ceil(n / size)

    def global_batch_size(self, i: int) -> int:
        """Samples in global batch ``i`` (all replicas' parts together): the last one may be smaller."""
        size = self.batch_size * self.num_replicas
        return min(size, self.x.shape[0] - i * size)

    def _batches(self, order: np.ndarray) -> Iterator[tuple[Array, Array]]:
        size = self.batch_size * self.num_replicas
        for i in range(len(self)):
            idx = np.array_split(order[i * size:(i + 1) * size], self.num_replicas)[self.rank]
            with self.backend.activate():          # this may run on the prefetching thread: select the device here
                xb = self.backend.upload(self.x[idx], dtype=self.dtype)
                batch = (xb if self.transform is None or not len(idx) else self.transform(xb),
                         self.backend.upload(self.y[idx].astype(np.int64)))
            yield batch

    def __iter__(self) -> Iterator[tuple[Array, Array]]:
        n = self.x.shape[0]
        order = self.generator.permutation(n) if self.shuffle else np.arange(n)
        self._epochs_running += 1
        try:
            batches = self._batches(order)
            yield from prefetched(batches, self.prefetch) if self.prefetch else batches
        finally:
            self._epochs_running -= 1

    def state_dict(self) -> dict[str, Any]:
        """The generators' states, between epochs: ``{"generator": ..., "transform": ...}`` (plain dicts).

        A loader restored with :meth:`load_state_dict` goes on with exactly the orders (and augmentations)
        of the run it was saved from.  Raises RuntimeError while an epoch is being iterated over (its order is
        drawn already, and with ``prefetch`` the transform has drawn for batches not yet consumed).
        """
        if self._epochs_running:
            raise RuntimeError("DataLoader.state_dict() is taken between epochs, but an iteration is in progress")
        state: dict[str, Any] = {"generator": self.generator.bit_generator.state}
        if hasattr(self.transform, "state_dict"):
            state["transform"] = self.transform.state_dict()  # type: ignore[union-attr]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the states saved by :meth:`state_dict` (ValueError if ``state`` does not fit this loader)."""
        if "generator" not in state or hasattr(self.transform, "state_dict") != ("transform" in state):
            raise ValueError(f"state with keys {sorted(state)} does not fit this loader "
                             f"(transform: {self.transform!r})")
        self.generator.bit_generator.state = state["generator"]
        if "transform" in state:
            self.transform.load_state_dict(state["transform"])  # type: ignore[union-attr]
