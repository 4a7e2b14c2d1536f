"""`xpconv train` as a user meets it: stopped by a signal, diverging, resumed, and its outputs checked first."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from xpconv.checkpoint import load_checkpoint
from xpconv.cli import main
from xpconv.cli.train import DIVERGED_STATUS

CLI = [sys.executable, "-m", "xpconv.cli"]
QUICK = ["--limit", "100", "--batch-size", "50", "--seed", "1"]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_at_a_batch_boundary_and_keeps_a_checkpoint(tmp_path, sig):
    ckpt = tmp_path / "run.npz"
    proc = subprocess.Popen([*CLI, "train", *QUICK, "--epochs", "1000", "--checkpoint", str(ckpt)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), proc.communicate(timeout=5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig
    line = _one_line(err)
    assert f"stopped by {sig.name}" in line and f"xpconv train --resume {ckpt}" in line
    saved = load_checkpoint(ckpt)
    assert saved.progress["epoch"] >= 1 and saved.config["epochs"] == 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.npz"]      # no temporary file left behind


@pytest.mark.slow
def test_a_signal_without_checkpoint_says_nothing_was_saved(tmp_path):
    proc = subprocess.Popen([*CLI, "train", *QUICK, "--epochs", "1000", "--save", str(tmp_path / "m.npz")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:                     # the first epoch's line: training is under way
        if line.startswith("epoch"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "nothing was saved (no --checkpoint given)" in _one_line(err)
    assert list(tmp_path.iterdir()) == []


def test_divergence_exits_non_zero_without_a_model_file(tmp_path, capsys):
    model, metrics = tmp_path / "m.npz", tmp_path / "m.json"
    argv = ["train", *QUICK, "--epochs", "2", "--optimizer", "sgd", "--lr", "1e6", "--save", str(model),
            "--metrics-out", str(metrics), "--checkpoint", str(tmp_path / "c.npz")]
    assert main(argv) == DIVERGED_STATUS
    line = _one_line(capsys.readouterr().err)
    assert "epoch 1" in line and "lower the learning rate" in line and "nothing was saved" in line
    assert list(tmp_path.iterdir()) == []


def test_resume_continues_the_recorded_run_and_refuses_other_settings(tmp_path, capsys):
    ckpt, metrics = tmp_path / "c.npz", tmp_path / "m.json"
    assert main(["train", *QUICK, "--epochs", "2", "--checkpoint", str(ckpt), "--metrics-out", str(metrics)]) == 0
    done = json.loads(metrics.read_text())
    capsys.readouterr()
    assert main(["train", "--resume", str(ckpt), "--lr", "0.5"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--lr 0.5 (checkpoint: 0.003)" in line
    again = tmp_path / "again.json"
    assert main(["train", "--resume", str(ckpt), "--metrics-out", str(again), "--seed", "1"]) == 0
    assert "resuming small_cnn on digits" in capsys.readouterr().out
    resumed = json.loads(again.read_text())
    for key in ("test_accuracy_per_epoch", "train_loss", "test_loss_per_epoch"):
        assert resumed[key] == done[key], key


def test_resume_refuses_an_architecture_record_larger_than_the_checkpoint(tmp_path, capsys):
    from dataclasses import replace

    from xpconv.checkpoint import save_checkpoint

    ckpt = tmp_path / "c.npz"
    assert main(["train", *QUICK, "--epochs", "1", "--checkpoint", str(ckpt)]) == 0
    saved = load_checkpoint(ckpt)
    big = tmp_path / "big.npz"
    arch = {**saved.arch, "kwargs": {**saved.arch["kwargs"], "channels": [100_000, 100_000]}}
    save_checkpoint(replace(saved, arch=arch), big)
    capsys.readouterr()
    assert main(["train", "--resume", str(big)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(big) in line and "does not fit its architecture record" in line and "values allowed" in line


@pytest.mark.parametrize("flags,match", [
    (["--save", "{tmp}/no/such/dir/m.npz"], "--save"),
    (["--save", "{tmp}"], "--save"),
    (["--save", "{tmp}/x.npz", "--metrics-out", "{tmp}/x.npz"], "--metrics-out"),
    (["--seed", "-1"], "--seed"),
    (["--label-smoothing", "2"], "--label-smoothing: must lie in [0.0, 1.0), got 2.0"),
    (["--weight-decay", "-0.1"], "--weight-decay: must lie in"),
    (["--clip-grad-norm", "0"], "--clip-grad-norm: must lie in"),
    (["--data-dir", "{tmp}"], "data-dir"),
])
def test_bad_outputs_and_arguments_fail_before_training(tmp_path, capsys, flags, match):
    argv = ["train", *QUICK[:2], "--epochs", "1", *[f.format(tmp=tmp_path) for f in flags]]
    before = sorted(tmp_path.rglob("*"))
    try:
        status = main(argv)
    except SystemExit as exc:                      # argparse's own one-line usage error
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and "epoch" not in capsys.readouterr().out
    assert sorted(tmp_path.rglob("*")) == before


def test_train_honours_xpconv_backend(monkeypatch, capsys):
    monkeypatch.setenv("XPCONV_BACKEND", "array_api_strict")
    assert main(["train", *QUICK, "--epochs", "1"]) == 0
    assert "backend array_api_strict" in capsys.readouterr().out
    monkeypatch.setenv("XPCONV_BACKEND", "garbage")
    assert main(["train", *QUICK, "--epochs", "1"]) == 2
    assert "XPCONV_BACKEND" in _one_line(capsys.readouterr().err)


def test_metrics_json_never_holds_bare_nan():
    from xpconv.cli.train import _metrics
    from xpconv.training import History

    class _Backend:
        name, device_name = "numpy", "cpu"

    class _Data:
        x_train = x_test = [0] * 4

    class _Model:
        arch = None

    history = History(train_loss=[float("nan")], train_accuracy=[0.1], test_loss=[float("inf")],
                      test_accuracy=[0.1], seconds=1.0)
    text = json.dumps(_metrics({"epochs": 1}, history, _Backend(), _Model(), _Data()), allow_nan=False)
    assert json.loads(text)["test_loss"] is None and json.loads(text)["train_loss"] == [None]
