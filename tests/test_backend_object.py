"""The Backend object's behaviour: where arrays live, what the device is, the engine's chunking policy,
its clock and its memory probe; every library-specific answer comes from here."""
from __future__ import annotations

import numpy as np
import pytest

import xpconv
from conftest import as_numpy
from xpconv import nn
from xpconv._engine import conv_forward
from xpconv._geometry import make_geometry
from xpconv.backends import CPU_CHUNK_BYTES, Backend, get_backend, library_of, to_numpy


def test_from_array_finds_the_library_and_the_device(backend):
    a = backend.asarray(np.arange(6.0).reshape(2, 3), dtype="float32")
    found = Backend.from_array(a)
    assert found == backend and found.name == backend.name and library_of(a) == backend.name
    assert found.device_name == backend.device_name
    np.testing.assert_array_equal(to_numpy(a), np.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("thing", [[1.0, 2.0], 3.0, "x", None])
def test_from_array_rejects_non_arrays(thing):
    assert library_of(thing) is None
    with pytest.raises(TypeError, match="expected an array of numpy, cupy, torch, array_api_strict"):
        Backend.from_array(thing)


def test_cpu_backends_say_so_and_chunk_cache_sized(backend):
    if backend.is_gpu:
        assert backend.cache_chunk_bytes is None and backend.device_name.startswith("cuda:")
    else:
        assert backend.cache_chunk_bytes == CPU_CHUNK_BYTES
        assert backend.device_name == str(backend.device)


def test_numpy_device_name_is_cpu():
    assert get_backend("numpy").device_name == "cpu"


def test_the_engine_chunks_as_the_policy_it_is_given_says(monkeypatch):
    """The engine never looks at the device: the same CPU array gives one GEMM per sample with the CPU's
    cache-sized policy and one GEMM for the batch without it."""
    import array_api_compat.numpy as compat_numpy

    calls = []
    real = compat_numpy.matmul
    monkeypatch.setattr(compat_numpy, "matmul", lambda a, b, **kw: calls.append(b.shape) or real(a, b, **kw))
    x = np.ones((4, 16, 32, 32), dtype=np.float32)                  # per sample: 144 KiB of columns and more
    w = np.ones((16, 16, 3, 3), dtype=np.float32)
    geom = make_geometry((3, 3), 2, 1, 1, 1)                        # stride 2: exact columns
    y_one, _ = conv_forward(x, w, None, geom, cache_chunk_bytes=None)
    assert len(calls) == 1
    y_cached, _ = conv_forward(x, w, None, geom, cache_chunk_bytes=2**17)
    assert len(calls) == 1 + 4
    np.testing.assert_array_equal(y_one, y_cached)


def test_times_returns_one_positive_duration_per_repeat(backend):
    calls = []
    times = backend.times(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(times) == 3 and all(t >= 0 for t in times) and len(calls) == 5


def test_peak_bytes_sees_an_allocation_where_it_can_measure(backend):
    if not backend.measures_memory:
        called = []
        assert backend.peak_bytes(lambda: called.append(1)) is None and called == []
        return
    size = 8 * 2**20
    peak = backend.peak_bytes(lambda: backend.xp.ones(size // 4, dtype=backend.xp.float32, device=backend.device))
    assert size <= peak < 2 * size


def test_synchronize_then_read_gives_the_finished_result(backend):
    a = backend.asarray(np.full((64, 64), 2.0), dtype="float32")
    b = backend.xp.matmul(a, a)
    backend.synchronize()
    np.testing.assert_array_equal(as_numpy(b), np.full((64, 64), 256.0))


def test_layers_report_their_backend(backend):
    layer = nn.Conv2d(2, 3, 3, backend=backend)
    assert layer.backend == backend and Backend.from_array(layer.weight.data) == backend
    assert xpconv.get_backend(backend) is backend
