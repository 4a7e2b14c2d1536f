"""Smoke tests of ``xpconv bench`` on tiny layers: JSON structure, positive timings, skips, errors."""
from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import CUDA_COUNT
from xpconv.bench.driver import make_runners, memory_sweep
from xpconv.bench.suite import SUITE, Layer, select_layers
from xpconv.cli import main

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_CUPY = importlib.util.find_spec("cupy") is not None
TINY = "2,3,6x6,4,3,1,1"


def test_bench_json_has_environment_results_and_positive_timings(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    out = tmp_path / "bench.json"
    rc = main(["bench", "--backends", "numpy,cupy,torch-ref", "--layers", f"{TINY};3,4,9,4,3,2,0,2",
               "--repeats", "2", "--warmup", "1", "--threads", "1", "--json", str(out), "--no-progress"])
    assert rc == 0
    captured = capsys.readouterr()
    stdout = captured.out
    assert "| layer |" in stdout and "numpy: fwd+bwd time" in stdout
    data = json.loads(out.read_text())
    env = data["environment"]
    # the first line names what the figures depend on; a pinned OpenBLAS kernel is pointed out
    first = stdout.splitlines()[0]
    assert first.startswith("environment: ") and env["cpu"] in first and "threads 1" in first
    assert f"numpy {env['versions']['numpy']}" in first and "OPENBLAS_CORETYPE=Haswell" in first
    assert env["env"]["OPENBLAS_CORETYPE"] == "Haswell"
    assert "note: OPENBLAS_CORETYPE=Haswell is set" in captured.err
    assert env["threads"] == 1 and env["versions"]["numpy"] and env["cpu"]
    assert isinstance(env["blas"], list) and "CUPY_TF32" in env["env"]
    assert all(pool["num_threads"] == 1 for pool in env["blas"])
    # cupy runs where CuPy has a usable CUDA device, torch-ref where torch is installed; the others are skipped
    usable = {"numpy": True, "cupy": CUDA_COUNT > 0, "torch-ref": HAS_TORCH}
    expected = {name for name, ok in usable.items() if ok}
    assert set(data["skipped"]) == set(usable) - expected
    layers = [TINY, "3,4,9,4,3,2,0,2"]
    assert [layer["name"] for layer in data["config"]["layers"]] == layers
    assert sorted((r["backend"], r["layer"]) for r in data["results"]) == sorted(
        (name, layer) for name in expected for layer in layers)
    for r in data["results"]:
        for key in ("forward_s", "backward_s", "step_s", "gemm_gflops", "step_gflops", "shaped_gemm_gflops"):
            assert r[key] > 0, key
        assert len(r["step_times"]) == 2
        assert r["ref_ratio"] is None or r["ref_ratio"] > 0
    numpy_rows = [r for r in data["results"] if r["backend"] == "numpy"]
    assert all(r["peak_workspace_bytes"] > 0 for r in numpy_rows)
    if HAS_TORCH:
        assert data["environment"]["torch"]["num_threads"] == 1
        assert all(r["ref_ratio"] > 0 for r in numpy_rows)
        assert data["summary"]["numpy"]["geomean_vs_torch_ref"] > 0
    if "cupy" in data["skipped"]:
        reason = data["skipped"]["cupy"]
        assert reason.startswith("BackendUnavailableError: backend 'cupy' ")
        if HAS_CUPY:
            assert "no CUDA device is usable" in reason
        else:
            assert "is not installed" in reason and 'pip install "xpconv[cuda12]"' in reason
        assert f"note: skipping backend 'cupy': {reason}" in captured.err


def test_bench_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    assert main(["bench", "--backends", "numpy", "--layers", TINY, "--repeats", "1", "--warmup", "0",
                 "--plot", str(png), "--no-progress"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_memory_sweep_peak_is_bounded_by_the_cap():
    """Capped peak stays near the activations while the uncapped one grows with the im2col buffer."""
    layer = Layer("sweep", 1, 8, (32, 32), 8, 5, 1, 2)
    runners, _ = make_runners(["numpy"])
    cap = 2**20
    rows = memory_sweep(runners, cap, repeats=1, warmup=0, layer=layer, batches=(2, 32), progress=False)
    peak = {(r["n"], r["max_workspace_bytes"]): r["peak_bytes"] for r in rows}
    big = next(r for r in rows if r["n"] == 32)
    assert big["im2col_bytes"] > 4 * cap
    assert peak[(32, cap)] < big["activation_bytes"] + 2 * cap
    assert peak[(32, cap)] < peak[(32, None)]


def test_bad_layer_and_backend_are_reported(capsys):
    assert main(["bench", "--layers", "no-such-layer", "--no-progress"]) == 2
    assert "unknown layer 'no-such-layer'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--backends", "numpy,tensorflow"])


def test_suite_has_the_reference_2d_layers_a_depthwise_one_and_1d_and_3d_ones():
    specs = {(s.n, s.c, s.size[0], s.o, s.k, s.stride, s.pad) for s in SUITE if s.nd == 2 and s.groups == 1}
    for spec in [(32, 3, 32, 32, 3, 1, 1), (32, 64, 32, 64, 3, 1, 1), (32, 64, 32, 128, 3, 2, 1),
                 (64, 128, 16, 128, 3, 1, 1), (16, 256, 14, 256, 3, 1, 1), (32, 64, 56, 64, 1, 1, 0),
                 (8, 32, 64, 32, 5, 1, 2)]:
        assert spec in specs
    assert any(s.groups == s.c > 1 for s in SUITE)
    assert {1, 3} <= {s.nd for s in SUITE}
    assert [s.name for s in select_layers("quick")] and len(select_layers("all")) == len(SUITE)
    with pytest.raises(ValueError, match="groups must divide"):
        select_layers("2,3,8,4,3,1,1,2")


def test_bench_runs_each_algorithm_side_by_side_and_says_what_auto_chose(tmp_path, capsys):
    out = tmp_path / "bench.json"
    stride2 = "3,4,9,4,3,2,0,2"
    assert main(["bench", "--backends", "numpy", "--algorithms", "im2col,winograd,fft,auto", "--layers",
                 f"{TINY};{stride2}", "--repeats", "1", "--warmup", "0", "--json", str(out), "--no-progress"]) == 0
    data = json.loads(out.read_text())
    # winograd cannot compute the stride-2 layer: no row for it there
    assert sorted((r["backend"], r["layer"]) for r in data["results"]) == sorted(
        [("numpy:im2col", TINY), ("numpy:winograd", TINY), ("numpy:fft", TINY), ("numpy", TINY),
         ("numpy:im2col", stride2), ("numpy:fft", stride2), ("numpy", stride2)])
    assert data["auto_chose"] == {TINY: "im2col", stride2: "im2col"}
    assert data["config"]["algorithms"] == ["im2col", "winograd", "fft", "auto"]
    assert f"auto chose: {TINY} im2col, {stride2} im2col" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bench", "--algorithms", "winograd6x6"])


def test_bench_autotune_reports_what_auto_timed_and_chose(tmp_path, capsys):
    """With --autotune, 'auto chose' is what the auto rows ran: one of the eligible algorithms per layer."""
    import xpconv

    out = tmp_path / "bench.json"
    stride2 = "3,4,9,4,3,2,0,2"
    xpconv.clear_autotune_cache()
    try:
        assert main(["bench", "--backends", "numpy", "--autotune", "--layers", f"{TINY};{stride2}", "--repeats", "1",
                     "--warmup", "0", "--json", str(out), "--no-progress"]) == 0
        chose = json.loads(out.read_text())["auto_chose"]
        assert chose[TINY] in ("im2col", "winograd") and chose[stride2] == "im2col"
        assert sorted(xpconv.autotune_choices().values()) == sorted(chose.values())
        assert not xpconv.autotune_enabled()                                  # the switch is back off after the run
        assert f"auto chose: {TINY} {chose[TINY]}, {stride2} im2col" in capsys.readouterr().out
    finally:
        xpconv.clear_autotune_cache()


def test_an_algorithm_that_refuses_a_layer_is_left_out_with_the_reason(tmp_path, capsys):
    """FFT's kernel transform over a small workspace cap: its rows are left out and stderr says why; im2col runs."""
    out = tmp_path / "bench.json"
    assert main(["bench", "--backends", "numpy", "--algorithms", "im2col,fft", "--layers", "3,4,9x9,4,3,1,1",
                 "--max-workspace-bytes", "8000", "--repeats", "1", "--warmup", "0", "--json", str(out),
                 "--no-progress"]) == 0
    backends = {r["backend"] for r in json.loads(out.read_text())["results"]}
    assert backends == {"numpy:im2col"}
    assert "numpy:fft skipped on" in capsys.readouterr().err
