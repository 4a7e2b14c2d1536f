"""Backend resolution: names, defaults, availability report, explicit conversion."""
from __future__ import annotations

import numpy as np
import pytest

import xpconv
from xpconv import backends
from xpconv.backends import Backend, NumpyBackend, UnitMap, zero_where
from xpconv.cli import main


def test_unknown_backend_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown backend 'jax'; valid backends are: numpy, cupy, torch"):
        xpconv.get_backend("jax")


def test_default_backend_follows_function_then_environment(monkeypatch):
    monkeypatch.delenv("XPCONV_BACKEND", raising=False)
    assert xpconv.get_backend().name == "numpy"
    monkeypatch.setenv("XPCONV_BACKEND", "array_api_strict")
    assert xpconv.get_backend().name == "array_api_strict"
    xpconv.set_default_backend("numpy")
    try:
        assert xpconv.get_backend().name == "numpy"
    finally:
        xpconv.set_default_backend(None)
    assert xpconv.get_default_backend() == "array_api_strict"


def test_bad_default_names_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        xpconv.set_default_backend("gpu")
    monkeypatch.setenv("XPCONV_BACKEND", "tensorflow")
    with pytest.raises(ValueError, match="XPCONV_BACKEND='tensorflow' is not a backend"):
        xpconv.get_backend()


def _fail_import(monkeypatch, module: str, error: ImportError) -> None:
    """Make xpconv.backends see ``error`` when it imports ``module``."""
    real = backends.importlib.import_module

    def fake_import(name, *a):
        if name == module:
            raise error
        return real(name, *a)

    monkeypatch.setattr(backends.importlib, "import_module", fake_import)


def test_missing_library_names_the_install_command(monkeypatch):
    _fail_import(monkeypatch, "array_api_strict", ModuleNotFoundError("No module named 'array_api_strict'"))
    with pytest.raises(xpconv.BackendUnavailableError, match="pip install array-api-strict"):
        xpconv.get_backend("array_api_strict")


def test_available_backends_reports_numpy_and_strict():
    report = xpconv.available_backends()
    assert set(report) == {"numpy", "cupy", "torch", "array_api_strict"}
    assert report["numpy"]["usable"] and report["numpy"]["version"] == np.__version__
    assert report["array_api_strict"]["usable"]
    for entry in report.values():
        assert set(entry) == {"installed", "usable", "version", "devices", "note"}
        assert entry["usable"] <= entry["installed"]


def test_numpy_backend_runs_on_cpu_only():
    with pytest.raises(ValueError, match="runs on 'cpu' only"):
        xpconv.get_backend("numpy", device=1)


def test_asarray_moves_between_backends_and_to_numpy_returns_host_copy(backend, rng):
    host = rng.standard_normal((3, 4))
    arr = backend.asarray(host, dtype="float32")
    assert arr.dtype == backend.xp.float32
    np.testing.assert_array_equal(xpconv.to_numpy(arr), host.astype(np.float32))
    other = xpconv.get_backend("numpy").asarray(arr)
    assert isinstance(other, np.ndarray)


def test_synchronize_leaves_no_queued_work_and_the_results_intact(backend, rng):
    """After synchronize(), the device's queue is empty (CUDA) and the queued work's result is complete:
    it equals the float64 NumPy product chain, and it stays so after a second synchronize()."""
    host_a = rng.standard_normal((512, 512))
    host_w = rng.standard_normal((512, 512)) / np.sqrt(512)  # keeps the chain's entries of order 1
    a, w = (backend.asarray(h, dtype="float32") for h in (host_a, host_w))
    expected = host_a
    for _ in range(4):
        a = backend.xp.matmul(a, w)
        expected = expected @ host_w
    backend.synchronize()
    if backend.name == "cupy":
        import cupy

        assert cupy.cuda.get_current_stream().done
    elif str(backend.device).startswith("cuda"):
        import torch

        assert torch.cuda.current_stream(backend.device).query()
    result = xpconv.to_numpy(a)
    assert result.dtype == np.float32 and result.shape == (512, 512)
    np.testing.assert_allclose(result, expected, rtol=1e-2, atol=1e-2)  # loose enough for TF32 on a GPU
    backend.synchronize()  # idempotent: nothing queued, nothing changed
    np.testing.assert_array_equal(xpconv.to_numpy(a), result)


def test_backend_dtype_names():
    with pytest.raises(ValueError, match="dtype must be one of 'float16', 'bfloat16', 'float32', 'float64'"):
        xpconv.get_backend("numpy").dtype("int8")
    assert xpconv.get_backend("numpy").dtype("float16") == np.float16
    with pytest.raises(ValueError, match="dtype 'bfloat16' is not available on the numpy backend"):
        xpconv.get_backend("numpy").dtype("bfloat16")
    with pytest.raises(ValueError, match="dtype 'float16' is not available on the array_api_strict backend"):
        xpconv.get_backend("array_api_strict").dtype("float16")


def test_info_command_prints_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numpy" in out and "array_api_strict" in out and "default backend" in out


@pytest.mark.parametrize("coretype", [None, "Haswell"])
def test_info_command_names_the_cpu_blas_and_a_pinned_kernel_type(capsys, monkeypatch, coretype):
    pytest.importorskip("threadpoolctl")
    if coretype is None:
        monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    else:
        monkeypatch.setenv("OPENBLAS_CORETYPE", coretype)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "CPU BLAS: " in out and " kernels, " in out
    assert ("OPENBLAS_CORETYPE=Haswell is set" in out) == (coretype is not None)


def test_a_broken_install_is_not_reported_as_missing(monkeypatch):
    _fail_import(monkeypatch, "cupy", ImportError("libnvrtc.so.13: cannot open shared object file"))
    note = xpconv.available_backends()["cupy"]["note"]
    assert note.startswith("installed but fails to import") and "libnvrtc" in note


SPECIALS = [np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0, -1.0]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_zero_where_gives_where_bits_on_every_backend(backend, rng, dtype, layout):
    """Each backend's ``zero_where`` (NumPy's bitwise fast path too) gives ``np.where(cond, +0, a)`` to the bit,
    for NaN, inf, -0.0 and random values, on a contiguous array and on a strided view; ``a`` is not modified."""
    try:
        backend.dtype(dtype)
    except ValueError:
        pytest.skip(f"{backend.name} has no {dtype}")
    values = np.concatenate([SPECIALS * 4, rng.standard_normal(480)]).astype(dtype).reshape(8, 64)
    cond = np.concatenate([np.repeat([True, False], 16), rng.random(480) < 0.5]).reshape(8, 64)
    if layout == "strided":
        values, cond = values[:, ::2], cond[:, ::2]
    expected = np.where(cond, np.zeros((), dtype), values)
    a, c = backend.asarray(values, dtype=dtype), backend.asarray(cond)
    kept = backend.to_numpy(a).copy()
    got = backend.to_numpy(zero_where(c, a))
    bits = f"u{np.dtype(dtype).itemsize}"
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got.view(bits), expected.view(bits))
    np.testing.assert_array_equal(backend.to_numpy(a).view(bits), kept.view(bits))


def test_numpy_zero_where_matches_the_portable_path(rng):
    """The fast path against the portable ``where`` it replaces, on NumPy itself (the pair the benchmark times)."""
    a = rng.standard_normal((4, 3, 5, 7)).astype(np.float32)
    a.flat[:8] = SPECIALS
    cond = rng.random(a.shape) < 0.5
    fast, portable = NumpyBackend.zero_where(cond, a), Backend.zero_where(cond, a)
    np.testing.assert_array_equal(fast.view(np.uint32), portable.view(np.uint32))


def test_unit_map_runs_in_order_on_its_threads_with_one_blas_thread():
    """Results come in the items' order; at most ``workers`` run at once, each with BLAS held to one thread;
    the BLAS thread counts are restored afterwards, an error in a unit reaches the caller, and the caller's
    ``np.errstate`` holds in the units."""
    import threading

    blas = backends._blas_pools()
    if blas is None or not blas.lib_controllers:
        pytest.skip("threadpoolctl sees no BLAS library")
    before = [lib.num_threads for lib in blas.lib_controllers]
    lock, running, seen = threading.Lock(), [0], []

    def unit(i):
        with lock:
            running[0] += 1
            seen.append((running[0], threading.current_thread().name,
                         max(lib.num_threads for lib in blas.lib_controllers)))
        np.linalg.norm(np.ones((200, 200)) @ np.ones((200, 200)))      # some work with the GIL released
        with lock:
            running[0] -= 1
        if i == 7:
            raise ArithmeticError("unit 7")
        return i * i

    with blas.limit(limits=2):
        units = UnitMap(2, blas)
        assert list(units(unit, range(7))) == [i * i for i in range(7)]
        assert max(n for n, _, _ in seen) <= 2
        assert {threads for _, _, threads in seen} == {1}
        assert all(name.startswith("xpconv-unit") for _, name, _ in seen)
        with pytest.raises(ArithmeticError, match="unit 7"):
            list(units(unit, range(10)))
        assert [lib.num_threads for lib in blas.lib_controllers] == [2] * len(before)
        big = np.full(4, 6e4, dtype=np.float16)
        with np.errstate(over="raise"), pytest.raises(FloatingPointError):      # the caller's errstate holds
            list(units(lambda a: a * a, [big, big, big]))
        with np.errstate(over="ignore"):
            assert all(np.isinf(r).all() for r in units(lambda a: a * a, [big, big, big]))
    assert [lib.num_threads for lib in blas.lib_controllers] == before


def test_numpy_backend_threads_its_units_only_with_several_blas_threads():
    blas = backends._blas_pools()
    if blas is None or not blas.lib_controllers:
        pytest.skip("threadpoolctl sees no BLAS library")
    numpy_backend = backends.get_backend("numpy")
    with blas.limit(limits=1):
        assert numpy_backend.unit_map is None
    with blas.limit(limits=2):
        assert numpy_backend.unit_map.workers == 2
    assert backends.get_backend("array_api_strict").unit_map is None
