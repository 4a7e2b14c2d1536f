"""Training and evaluation loops, and the ``xpconv train`` / ``xpconv evaluate`` commands.

One loop serves every backend: the model lives on a :class:`~xpconv.backends.Backend`,
the :class:`~xpconv.data.DataLoader` copies each batch there, and the only values
that come back to the host are the per-batch loss and the count of correct
predictions (Python numbers).
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from array_api_compat import array_namespace

from . import __version__, io
from .backends import BackendUnavailableError, get_backend
from .data import DATASETS, DataLoader, Dataset, load_dataset
from .models import small_cnn
from .nn import CrossEntropyLoss
from .optim import SGD, Adam

__all__ = ["make_optimizer", "evaluate", "fit", "plot_curves", "register"]

DEFAULTS = dict(batch_size=32, optimizer="adam", seed=0)
DEFAULT_EPOCHS = {"digits": 40, "mnist": 3}
DEFAULT_LR = {"adam": 3e-3, "sgd": 0.05}


def make_optimizer(name: str, params, lr: float | None = None):
    """``"adam"`` (torch defaults otherwise) or ``"sgd"`` (momentum 0.9), with ``lr`` or the default for it."""
    if name not in DEFAULT_LR:
        raise ValueError(f"unknown optimizer {name!r}; choose 'adam' or 'sgd'")
    lr = DEFAULT_LR[name] if lr is None else lr
    return Adam(params, lr=lr) if name == "adam" else SGD(params, lr=lr, momentum=0.9)


def _count_correct(logits, labels) -> int:
    """Number of rows of logits (N, C) whose arg-max equals the label (N,)."""
    xp = array_namespace(logits)
    return int(xp.sum(xp.astype(xp.argmax(logits, axis=1) == labels, xp.int32)))


def evaluate(model, x, y, batch_size: int = 500) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on host arrays x (N, C, H, W), y (N,), in eval mode."""
    was_training = model.training
    model.eval()
    loss_fn, total_loss, correct = CrossEntropyLoss(), 0.0, 0
    loader = DataLoader(x, y, batch_size, shuffle=False, backend=model.backend, dtype=model.dtype_name)
    for xb, yb in loader:
        logits = model(xb)
        total_loss += loss_fn(logits, yb) * xb.shape[0]
        correct += _count_correct(logits, yb)
    model.train(was_training)
    n = loader.x.shape[0]
    return total_loss / n, correct / n


def fit(model, data: Dataset, *, epochs: int, batch_size: int, optimizer, seed: int = 0, lr_schedule: str = "cosine",
        progress: bool | None = None, log=print) -> dict:
    """Train ``model`` on ``data`` and evaluate on its test split after every epoch; returns the history.

    With ``lr_schedule="cosine"`` the learning rate of epoch ``e`` is
    ``lr * (1 + cos(pi * e / epochs)) / 2`` (set once per epoch); ``"constant"`` keeps it.
    ``progress`` shows a tqdm bar per epoch (None: only on a terminal); ``log`` gets one line per epoch.
    History keys: ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy`` (lists, one per
    epoch), ``seconds`` (training only: batches, forward, backward, step) and ``eval_seconds``.
    """
    from tqdm.auto import tqdm

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
    loader = DataLoader(data.x_train, data.y_train, batch_size, shuffle=True, seed=[seed, 1],
                        backend=model.backend, dtype=model.dtype_name)
    loss_fn, base_lr = CrossEntropyLoss(), optimizer.lr
    history = {k: [] for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")}
    seconds = eval_seconds = 0.0
    n = loader.x.shape[0]
    model.train()
    for epoch in range(epochs):
        if lr_schedule == "cosine":
            optimizer.lr = base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, unit="batch", file=sys.stderr,
                   disable=None if progress is None else not progress)
        start = time.perf_counter()
        for xb, yb in bar:
            logits = model(xb)
            loss = loss_fn(logits, yb)
            optimizer.zero_grad()
            model.backward(loss_fn.backward())
            optimizer.step()
            total_loss += loss * xb.shape[0]
            correct += _count_correct(logits, yb)
            seen += xb.shape[0]
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
        model.backend.synchronize()                # the last step's GPU work counts in this epoch's time
        seconds += time.perf_counter() - start
        bar.close()
        start = time.perf_counter()
        test_loss, test_acc = evaluate(model, data.x_test, data.y_test)
        eval_seconds += time.perf_counter() - start
        for key, value in zip(history, (total_loss / n, correct / n, test_loss, test_acc)):
            history[key].append(value)
        log(f"epoch {epoch + 1:>3}/{epochs}  lr {optimizer.lr:.2e}  train loss {total_loss / n:.4f}  "
            f"train acc {correct / n:.2%}  test loss {test_loss:.4f}  test acc {test_acc:.2%}")
    optimizer.lr = base_lr
    return {**history, "seconds": seconds, "eval_seconds": eval_seconds}


def plot_curves(metrics: dict, path) -> None:
    """Loss and accuracy per epoch (train and test) as a two-panel figure written to ``path``."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ImportError('--plot needs matplotlib, which is not installed; install it with: '
                          'pip install "xpconv[examples]"') from None
    epochs = range(1, len(metrics["train_loss"]) + 1)
    fig = Figure(figsize=(10, 4))                  # no pyplot: no global state, no GUI backend
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, metrics["train_loss"], label="train")
    ax_loss.plot(epochs, metrics["test_loss_per_epoch"], label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, metrics["train_accuracy"], label="train")
    ax_acc.plot(epochs, metrics["test_accuracy_per_epoch"], label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"xpconv small_cnn on {metrics['dataset']} ({metrics['backend']}, {metrics['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _device_name(backend) -> str:
    """"cpu" / "cuda:0" style name of a backend's device."""
    dev = backend.device
    if backend.name == "cupy":
        return f"cuda:{dev.id}"
    return str(dev)


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise ValueError
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _add_data_args(p, default_dataset):
    p.add_argument("--backend", default="numpy", help="numpy, cupy, torch, array_api_strict or auto "
                   "(default: numpy)")
    p.add_argument("--device", default=None, help="GPU index for cupy/torch (default: 0)")
    p.add_argument("--dataset", choices=DATASETS, default=default_dataset,
                   help="digits (scikit-learn, 8x8) or mnist (files in --data-dir)")
    p.add_argument("--data-dir", default=None, help="directory holding mnist.npz or the MNIST IDX files")
    p.add_argument("--limit", type=_positive(int), default=None,
                   help="use at most N training and N test images (quick runs)")


def _run_train(args) -> int:
    backend = get_backend(args.backend, args.device)
    epochs = args.epochs or DEFAULT_EPOCHS[args.dataset]
    data = load_dataset(args.dataset, args.data_dir, seed=args.seed).subset(args.limit)
    _, channels, size, _ = data.x_train.shape
    model = small_cnn(channels, data.num_classes, size, backend=backend, seed=args.seed)
    optimizer = make_optimizer(args.optimizer, model.parameters(), args.lr)
    print(f"training small_cnn on {args.dataset} ({len(data.x_train)} train / {len(data.x_test)} test images) "
          f"with {args.optimizer} lr {optimizer.lr:g}, batch {args.batch_size}, {epochs} epochs, "
          f"backend {backend.name} on {_device_name(backend)}, seed {args.seed}")
    history = fit(model, data, epochs=epochs, batch_size=args.batch_size, optimizer=optimizer, seed=args.seed,
                  lr_schedule=args.lr_schedule, progress=None)
    images = epochs * len(data.x_train)
    metrics = {
        "test_accuracy": history["test_accuracy"][-1], "test_loss": history["test_loss"][-1],
        "train_loss": history["train_loss"], "train_accuracy": history["train_accuracy"],
        "test_accuracy_per_epoch": history["test_accuracy"], "test_loss_per_epoch": history["test_loss"],
        "epochs": epochs, "seconds": history["seconds"], "eval_seconds": history["eval_seconds"],
        "images_per_second": images / history["seconds"], "backend": backend.name, "device": _device_name(backend),
        "seed": args.seed, "dataset": args.dataset, "train_size": len(data.x_train), "test_size": len(data.x_test),
        "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": optimizer.lr,
        "lr_schedule": args.lr_schedule, "model": model.arch, "xpconv_version": __version__,
    }
    print(f"test accuracy {metrics['test_accuracy']:.2%} | training {metrics['seconds']:.1f} s, "
          f"{metrics['images_per_second']:,.0f} images/s (+{metrics['eval_seconds']:.1f} s evaluating) | "
          f"backend {backend.name} on {metrics['device']}")
    if args.save:
        io.save(model, args.save, metadata={k: metrics[k] for k in ("dataset", "seed", "test_accuracy")}
                | {"data_dir": args.data_dir, "limit": args.limit})
        print(f"model saved to {args.save}")
    if args.metrics_out:
        Path(args.metrics_out).write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"metrics written to {args.metrics_out}")
    if args.plot:
        plot_curves(metrics, args.plot)
        print(f"curves drawn to {args.plot}")
    return 0


def _run_evaluate(args) -> int:
    extra = io.read_metadata(args.model)["extra"]
    backend = get_backend(args.backend, args.device)
    model = io.load(args.model, backend=backend)
    dataset = args.dataset or extra.get("dataset", "digits")
    seed = extra.get("seed", 0) if args.seed is None else args.seed
    data = load_dataset(dataset, args.data_dir or extra.get("data_dir"), seed=seed)
    limit = args.limit if args.limit is not None else extra.get("limit")
    data = data.subset(limit)
    start = time.perf_counter()
    loss, accuracy = evaluate(model, data.x_test, data.y_test)
    seconds = time.perf_counter() - start
    print(f"test accuracy {accuracy:.2%} ({round(accuracy * len(data.x_test))}/{len(data.x_test)}), "
          f"test loss {loss:.4f} on {dataset} (split seed {seed}) | {seconds:.2f} s | "
          f"backend {backend.name} on {_device_name(backend)}")
    return 0


def _guarded(run, name):
    """Run a command, turning the errors a user can cause into one line on stderr and exit status 2."""
    def command(args) -> int:
        try:
            return run(args)
        except (ValueError, TypeError, ImportError, FileNotFoundError, BackendUnavailableError) as exc:
            print(f"xpconv {name}: error: {exc}", file=sys.stderr)
            return 2
    return command


def register(subparsers) -> None:
    """Add the ``train`` and ``evaluate`` subcommands."""
    p = subparsers.add_parser("train", help="train the small CNN (digits on NumPy by default)",
                              description="Train xpconv's small CNN and report test accuracy, time and images/s.")
    _add_data_args(p, "digits")
    p.add_argument("--epochs", type=_positive(int), default=None,
                   help=f"passes over the training set (default: {DEFAULT_EPOCHS['digits']} for digits, "
                   f"{DEFAULT_EPOCHS['mnist']} for mnist)")
    p.add_argument("--batch-size", type=_positive(int), default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=_positive(float), default=None,
                   help=f"peak learning rate (default: {DEFAULT_LR['adam']} for adam, {DEFAULT_LR['sgd']} for sgd)")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default=DEFAULTS["optimizer"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="seeds the split, the init and the batches")
    p.add_argument("--save", metavar="MODEL.npz", help="save the trained model here")
    p.add_argument("--metrics-out", metavar="METRICS.json", help="write metrics as JSON here")
    p.add_argument("--plot", metavar="CURVES.png", help="draw loss and accuracy curves here (needs matplotlib)")
    p.set_defaults(func=_guarded(_run_train, "train"))

    e = subparsers.add_parser("evaluate", help="test accuracy of a saved model",
                              description="Report the test accuracy of a model saved by 'xpconv train --save'. "
                              "The data set, split seed and limit default to those recorded in the file.")
    e.add_argument("--model", required=True, metavar="MODEL.npz")
    _add_data_args(e, None)
    e.add_argument("--seed", type=int, default=None, help="split seed (default: the one used in training)")
    e.set_defaults(func=_guarded(_run_evaluate, "evaluate"))
