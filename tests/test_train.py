"""Training end to end: loss goes down, runs repeat exactly, backends agree, and the CLI works."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from conftest import HAS_TORCH, f32_tol
from test_data import _mnist_arrays, _write_idx_dir
from xpconv.cli import main
from xpconv.data import load_dataset
from xpconv.models import build_model, small_cnn
from xpconv.training import History, evaluate, fit, make_optimizer, make_scheduler, plot_curves

_QUIET = dict(progress=False, log=lambda line: None)


@pytest.fixture(scope="module")
def digits64():
    return load_dataset("digits", seed=0).subset(64)


def _fit(backend, data, optimizer="sgd", epochs=1, batch_size=16, seed=0, lr=None):
    model = small_cnn(channels=(4, 8), backend=backend, seed=seed)
    opt = make_optimizer(optimizer, model.parameters(), lr)
    history = fit(model, data, epochs=epochs, batch_size=batch_size, optimizer=opt, seed=seed, **_QUIET)
    return model, history


def test_short_run_lowers_loss(backend, digits64):
    model = small_cnn(backend=backend, seed=1)
    before, _ = evaluate(model, digits64.x_train, digits64.y_train)
    fit(model, digits64, epochs=4, batch_size=16, optimizer=make_optimizer("adam", model.parameters(), 3e-3),
        **_QUIET)
    after, _ = evaluate(model, digits64.x_train, digits64.y_train)
    assert after < 0.9 * before, (before, after)   # 16 steps: from about 2.3 (chance) to under 2.0


def test_same_seed_same_metrics(backend, digits64):
    runs = [_fit(backend, digits64, "adam", epochs=2, seed=3)[1] for _ in range(2)]
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        assert getattr(runs[0], key) == getattr(runs[1], key), key
    other = _fit(backend, digits64, "adam", epochs=2, seed=4)[1]
    assert other.train_loss != runs[0].train_loss


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_first_steps_agree_across_backends(backend, digits64, optimizer):
    """Four float32 training steps from the same seed: every backend follows NumPy within float32 tolerance."""
    reference, ref_history = _fit("numpy", digits64, optimizer)
    model, history = _fit(backend, digits64, optimizer)
    np.testing.assert_allclose(history.train_loss, ref_history.train_loss, **f32_tol(backend, 1e-5))
    for key, value in reference.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[key], value, **f32_tol(backend, 1e-4, 1e-5),
                                   err_msg=key)


def test_fit_returns_a_history_that_plot_curves_draws(digits64, tmp_path):
    pytest.importorskip("matplotlib")
    _, history = _fit("numpy", digits64, epochs=2)
    assert isinstance(history, History) and history.epochs == 2
    assert len(history.test_accuracy) == 2 and history.seconds > 0 and history.eval_seconds > 0
    assert history.as_dict()["train_loss"] == history.train_loss
    plot_curves(history, tmp_path / "curves.png", title="two epochs")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(TypeError, match="History"):
        plot_curves(history.as_dict(), tmp_path / "dict.png")


def test_fit_rejects_bad_arguments(digits64):
    model = small_cnn(channels=(4, 8))
    opt = make_optimizer("sgd", model.parameters())
    with pytest.raises(ValueError, match="epochs"):
        fit(model, digits64, epochs=0, batch_size=8, optimizer=opt)
    with pytest.raises(ValueError, match="lr_schedule"):
        make_scheduler("step", opt, 10)
    with pytest.raises(ValueError, match="warm-up"):
        make_scheduler("cosine", opt, 10, warmup_steps=10)
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer("rmsprop", model.parameters())
    with pytest.raises(ValueError, match="architecture"):
        build_model({"name": "resnet", "kwargs": {}})
    with pytest.raises(ValueError, match="does not fit"):
        build_model({"name": "small_cnn", "kwargs": {"depth": 3}})


def test_cli_train_then_evaluate(tmp_path, capsys):
    model, metrics, plot = tmp_path / "m.npz", tmp_path / "metrics.json", tmp_path / "curves.png"
    argv = ["train", "--epochs", "2", "--limit", "200", "--batch-size", "50", "--seed", "1", "--save", str(model),
            "--metrics-out", str(metrics), "--plot", str(plot)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "epoch   2/2" in out and "images/s" in out and "backend numpy on cpu" in out
    m = json.loads(metrics.read_text())
    assert m["epochs"] == 2 and len(m["train_loss"]) == 2 and len(m["test_accuracy_per_epoch"]) == 2
    assert m["test_accuracy"] == m["test_accuracy_per_epoch"][-1]
    assert (m["backend"], m["device"], m["seed"], m["dataset"]) == ("numpy", "cpu", 1, "digits")
    assert m["train_size"] == m["test_size"] == 200 and m["seconds"] > 0 and m["images_per_second"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["evaluate", "--model", str(model)]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy {m['test_accuracy']:.2%} ({round(m['test_accuracy'] * 200)}/200)" in out
    assert main(["evaluate", "--model", str(model), "--backend", "array_api_strict"]) == 0
    assert f"test accuracy {m['test_accuracy']:.2%}" in capsys.readouterr().out


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_cli_torch_backend_and_mnist_files(tmp_path, rng, capsys):
    data_dir = tmp_path / "mnist"
    data_dir.mkdir()
    _write_idx_dir(data_dir, _mnist_arrays(rng, n_train=40, n_test=10, size=8))
    argv = ["train", "--backend", "torch", "--dataset", "mnist", "--data-dir", str(data_dir), "--epochs", "1",
            "--optimizer", "sgd", "--save", str(tmp_path / "m.npz")]
    assert main(argv) == 0
    assert "40 train / 10 test" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(tmp_path / "m.npz")]) == 0
    assert "on mnist" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["train", "--dataset", "mnist"], "--data-dir"),
    (["train", "--backend", "tpu"], "unknown backend 'tpu'"),
    (["train", "--device", "1"], "numpy backend runs on 'cpu' only"),
    (["evaluate", "--model", "no/such/model.npz"], "no such file"),
])
def test_cli_errors(argv, match, capsys):
    assert main(argv) == 2
    assert match in capsys.readouterr().err


def test_cli_rejects_bad_numbers(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "0"])
    assert "--epochs" in capsys.readouterr().err


def test_plot_without_matplotlib(monkeypatch, tmp_path):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.ticker"):
        monkeypatch.setitem(sys.modules, name, None)      # an import of any of them now fails
    with pytest.raises(ImportError, match=r'pip install "xpconv\[examples\]"'):
        plot_curves(History(), tmp_path / "x.png")


def test_clip_grad_norm_bounds_every_update(digits64):
    """Plain SGD with the gradients clipped to a total norm of c moves the weights by at most lr * c a step."""
    from xpconv.optim import SGD

    lr, clip = 0.5, 1e-3
    moves = {}
    for limit in (None, clip):
        model = small_cnn(channels=(4, 8), seed=2)
        before = np.concatenate([np.ravel(v) for v in model.state_dict().values()])
        fit(model, digits64.subset(16), epochs=1, batch_size=16, optimizer=SGD(model.parameters(), lr=lr),
            clip_grad_norm=limit, **_QUIET)
        after = np.concatenate([np.ravel(v) for v in model.state_dict().values()])
        moves[limit] = float(np.linalg.norm(after - before))         # one step: 16 images, batch 16
    assert moves[clip] <= lr * clip * (1 + 1e-4)
    assert moves[None] > 10 * lr * clip                                  # unclipped, the step is far larger
    model = small_cnn(channels=(4, 8))
    with pytest.raises(ValueError, match="clip_grad_norm"):
        fit(model, digits64, epochs=1, batch_size=16, optimizer=SGD(model.parameters(), lr=lr), clip_grad_norm=0,
            **_QUIET)


def test_normalize_standardizes_both_splits_and_evaluate_applies_the_recorded_statistics(tmp_path, capsys):
    """--normalize: the saved model records the training split's per-channel mean and std (computed here with
    NumPy), and 'xpconv evaluate' applies them, so it reports the accuracy training ended with."""
    model, metrics = tmp_path / "m.npz", tmp_path / "metrics.json"
    assert main(["train", "--epochs", "2", "--limit", "200", "--normalize", "--save", str(model),
                 "--metrics-out", str(metrics)]) == 0
    capsys.readouterr()
    from xpconv.io import read_metadata

    recorded = read_metadata(model)["extra"]["normalize"]
    x_train = load_dataset("digits", seed=0).subset(200).x_train.astype(np.float64)
    np.testing.assert_allclose(recorded["mean"], x_train.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(recorded["std"], x_train.std(axis=(0, 2, 3)), rtol=1e-12)
    m = json.loads(metrics.read_text())
    assert m["normalize"] is True
    assert main(["evaluate", "--model", str(model)]) == 0
    assert f"test accuracy {m['test_accuracy']:.2%} ({round(m['test_accuracy'] * 200)}/200)" in capsys.readouterr().out


def test_normalize_is_on_by_default_for_cifar10_only():
    import argparse

    from xpconv.cli.train import _RUN_KEYS, _resolve

    def config(**flags):
        return _resolve(argparse.Namespace(**(dict.fromkeys(_RUN_KEYS) | flags)), None)

    assert config(model="resnet20")["normalize"] is True                     # its data set is cifar10
    assert config(model="small_cnn")["normalize"] is False
    assert config(model="resnet20", normalize=False)["normalize"] is False
    assert config(model="small_cnn", normalize=True)["normalize"] is True
