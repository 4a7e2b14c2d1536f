"""How the ``xpconv`` command ends on bad input, closed pipes, interrupts and bugs (see xpconv/cli/errors.py).

One real subprocess per behaviour class (the exit status and stderr a shell sees); the rest in-process.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from xpconv.cli import main
from xpconv.cli.errors import guarded
from xpconv.cli.paths import check_outputs

CLI = [sys.executable, "-m", "xpconv.cli"]


def _cli(*args, env=None, stdout=subprocess.PIPE):
    return subprocess.run([*CLI, *args], stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_bad_xpconv_backend_is_one_line_naming_the_variable():
    result = _cli("info", env={"XPCONV_BACKEND": "garbage"})
    assert result.returncode == 2 and result.stdout == ""
    assert _one_line(result.stderr).startswith("xpconv info: error: XPCONV_BACKEND='garbage' is not a backend")


def test_a_closed_pipe_ends_quietly_with_status_141():
    read, write = os.pipe()
    os.close(read)                                      # the reader is gone before xpconv writes a byte
    try:
        result = _cli("info", stdout=write)
    finally:
        os.close(write)
    assert (result.returncode, result.stderr) == (141, "")


def test_unwritable_bench_output_fails_before_the_run_with_one_line(tmp_path):
    result = _cli("bench", "--backends", "numpy", "--layers", "1,1,8,1,3,1,1", "--json",
                  str(tmp_path / "no-dir" / "r.json"), "--no-progress")
    assert result.returncode == 2 and result.stdout == ""
    assert _one_line(result.stderr) == (f"xpconv bench: error: --json {tmp_path}/no-dir/r.json: directory "
                                        f"{tmp_path}/no-dir does not exist")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, message", [
    (lambda d: ["--json", str(d)], lambda d: f"--json {d}: is a directory"),
    (lambda d: ["--json", str(d / "r"), "--plot", f"{d}/./r"], lambda d: f"--plot {d}/./r: the same file as --json"),
    (lambda d: ["--json", str(d / "r"), "--memory-sweep", "--plot", str(d / "c.png"), "--memory-plot", str(d / "r")],
     lambda d: f"--memory-plot {d}/r: the same file as --json"),
])
def test_bench_output_paths_are_checked_before_the_run(tmp_path, capsys, flags, message):
    (tmp_path / "r").write_text("old")
    assert main(["bench", "--backends", "numpy", "--layers", "1,1,8,1,3,1,1", "--no-progress", *flags(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and _one_line(err) == f"xpconv bench: error: {message(tmp_path)}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"] and (tmp_path / "r").read_text() == "old"


def test_check_outputs(tmp_path):
    (tmp_path / "in.npz").write_text("data")
    (tmp_path / "link.npz").symlink_to(tmp_path / "in.npz")
    check_outputs({"--save": tmp_path / "m.npz", "--plot": None, "--metrics-out": tmp_path / "m.json"},
                  inputs={"--resume": tmp_path / "in.npz", "--data-dir": None})
    with pytest.raises(ValueError, match=r"^--save .*link\.npz: would overwrite the input --resume$"):
        check_outputs({"--save": tmp_path / "link.npz"}, inputs={"--resume": tmp_path / "in.npz"})
    with pytest.raises(FileNotFoundError, match=r"^--save .*/x/m\.npz: directory .*/x does not exist$"):
        check_outputs({"--save": tmp_path / "x" / "m.npz"})
    if os.geteuid() != 0:                               # root may write anywhere
        (tmp_path / "ro").mkdir(mode=0o555)
        with pytest.raises(PermissionError, match=r"^--save .*ro/m\.npz: permission denied$"):
            check_outputs({"--save": tmp_path / "ro" / "m.npz"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz", "link.npz"] + (["ro"] if os.geteuid() else [])


def test_no_permission_is_one_line_even_for_root(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    if prefix and subprocess.run(["setpriv", "--version"], capture_output=True).returncode != 0:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    result = subprocess.run([*prefix, *CLI, "bench", "--json", str(tmp_path / "ro" / "r.json"), "--no-progress"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert _one_line(result.stderr) == f"xpconv bench: error: --json {tmp_path}/ro/r.json: permission denied"
    assert list((tmp_path / "ro").iterdir()) == []


def _raising(exc):
    def run(args):
        print("partial output")
        raise exc
    return run


@pytest.mark.parametrize("exc, status, line", [
    (ValueError("bad value"), 2, "xpconv x: error: bad value"),
    (TypeError("bad type"), 2, "xpconv x: error: bad type"),
    (FileNotFoundError(2, "No such file or directory", "m.npz"), 2,
     "xpconv x: error: m.npz: No such file or directory"),
    (PermissionError("m.npz: permission denied"), 2, "xpconv x: error: m.npz: permission denied"),
    (IsADirectoryError("out: is a directory"), 2, "xpconv x: error: out: is a directory"),
    (MemoryError(), 2, "xpconv x: error: out of memory (MemoryError)"),
    (ModuleNotFoundError("No module named 'matplotlib'"), 2, "xpconv x: error: No module named 'matplotlib'"),
    (KeyboardInterrupt(), 130, "xpconv x: interrupted"),
])
def test_errors_a_user_can_cause_are_one_line(capsys, exc, status, line):
    import argparse

    assert guarded(_raising(exc), "x")(argparse.Namespace(debug=False)) == status
    assert _one_line(capsys.readouterr().err) == line


def test_debug_shows_the_traceback_and_a_bug_asks_to_be_reported(capsys):
    import argparse

    assert guarded(_raising(ValueError("bad value")), "x")(argparse.Namespace(debug=True)) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "xpconv x: error: bad value"
    assert guarded(_raising(KeyError("oops")), "x")(argparse.Namespace(debug=False)) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'oops'" in err
    assert err.strip().splitlines()[-1].startswith("xpconv x: internal error (KeyError): this is a bug in xpconv")


def test_a_real_bug_in_a_subprocess_prints_a_traceback_and_exits_1(tmp_path):
    code = ("import sys; from xpconv import cli; cli._info = lambda args: {}['missing']; "
            "sys.argv = ['xpconv', 'info']; sys.exit(cli.main())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert "internal error (KeyError)" in result.stderr.strip().splitlines()[-1]


def test_global_debug_flag_is_accepted(capsys, monkeypatch):
    monkeypatch.setenv("XPCONV_BACKEND", "garbage")
    assert main(["--debug", "info"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "XPCONV_BACKEND='garbage'" in err.strip().splitlines()[-1]


@pytest.mark.parametrize("name", ["device1", "array_api_strict.Device('device1')"])
def test_array_api_strict_devices_by_name(name):
    import xpconv

    backend = xpconv.get_backend("array_api_strict", name)
    assert str(backend.device) == "array_api_strict.Device('device1')"
    with pytest.raises(ValueError, match="device1"):
        xpconv.get_backend("array_api_strict", "device9")
