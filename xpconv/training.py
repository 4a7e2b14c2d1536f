"""Training and evaluation loops, and the curves they draw.

One loop serves every backend: the model lives on a :class:`~xpconv.backends.Backend`,
the :class:`~xpconv.data.DataLoader` copies each batch there, and the only values
that come back to the host are the per-batch loss and the count of correct
predictions (Python numbers).  The ``xpconv train`` command (:mod:`xpconv.cli.train`)
is built on :func:`fit`.
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from array_api_compat import array_namespace

from ._typing import Array
from .data import DataLoader, Dataset
from .nn import CrossEntropyLoss, Module, Parameter
from .optim import SGD, Adam, Optimizer
from .validation import positive_int

__all__ = ["DEFAULT_LR", "History", "make_optimizer", "evaluate", "fit", "plot_curves"]

DEFAULT_LR = {"adam": 3e-3, "sgd": 0.05}
LR_SCHEDULES = ("cosine", "constant")


@dataclass
class History:
    """What :func:`fit` measured: one value per epoch of each curve, and the seconds spent.

    ``seconds`` counts training only (batches, forward, backward, step); ``eval_seconds`` the test
    evaluations after each epoch.
    """

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0
    eval_seconds: float = 0.0

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_optimizer(name: str, params: Iterable[Parameter], lr: float | None = None) -> Optimizer:
    """``"adam"`` (torch defaults otherwise) or ``"sgd"`` (momentum 0.9), with ``lr`` or the default for it."""
    if name not in DEFAULT_LR:
        raise ValueError(f"unknown optimizer {name!r}; choose 'adam' or 'sgd'")
    lr = DEFAULT_LR[name] if lr is None else lr
    return Adam(params, lr=lr) if name == "adam" else SGD(params, lr=lr, momentum=0.9)


def _count_correct(logits: Array, labels: Array) -> int:
    """Number of rows of logits (N, C) whose arg-max equals the label (N,)."""
    xp = array_namespace(logits)
    return int(xp.sum(xp.astype(xp.argmax(logits, axis=1) == labels, xp.int32)))


def evaluate(model: Module, x: Array, y: Array, batch_size: int = 500) -> tuple[float, float]:
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


def fit(model: Module, data: Dataset, *, epochs: int, batch_size: int, optimizer: Optimizer, seed: int = 0,
        lr_schedule: str = "cosine", progress: bool | None = None, log: Callable[[str], object] = print) -> History:
    """Train ``model`` on ``data`` and evaluate on its test split after every epoch; returns the :class:`History`.

    With ``lr_schedule="cosine"`` the learning rate of epoch ``e`` is
    ``lr * (1 + cos(pi * e / epochs)) / 2`` (set once per epoch); ``"constant"`` keeps it.
    ``progress`` shows a tqdm bar per epoch (None: only on a terminal); ``log`` gets one line per epoch.
    """
    from tqdm.auto import tqdm

    epochs = positive_int("epochs", epochs)
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
    loader = DataLoader(data.x_train, data.y_train, batch_size, shuffle=True, seed=[seed, 1],
                        backend=model.backend, dtype=model.dtype_name)
    loss_fn, base_lr = CrossEntropyLoss(), optimizer.lr
    history = History()
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
        history.seconds += time.perf_counter() - start
        bar.close()
        start = time.perf_counter()
        test_loss, test_acc = evaluate(model, data.x_test, data.y_test)
        history.eval_seconds += time.perf_counter() - start
        history.train_loss.append(total_loss / n)
        history.train_accuracy.append(correct / n)
        history.test_loss.append(test_loss)
        history.test_accuracy.append(test_acc)
        log(f"epoch {epoch + 1:>3}/{epochs}  lr {optimizer.lr:.2e}  train loss {total_loss / n:.4f}  "
            f"train acc {correct / n:.2%}  test loss {test_loss:.4f}  test acc {test_acc:.2%}")
    optimizer.lr = base_lr
    return history


def plot_curves(history: History, path: str | os.PathLike[str], title: str | None = None) -> None:
    """Loss and accuracy per epoch (train and test) of a :func:`fit` history, as a two-panel figure at ``path``."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ImportError('plotting needs matplotlib, which is not installed; install it with: '
                          'pip install "xpconv[examples]"') from None
    if not isinstance(history, History):
        raise TypeError(f"plot_curves takes the History that fit() returns, got {type(history).__name__}")
    epochs = range(1, history.epochs + 1)
    fig = Figure(figsize=(10, 4))                  # no pyplot: no global state, no GUI backend
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, history.train_loss, label="train")
    ax_loss.plot(epochs, history.test_loss, label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, history.train_accuracy, label="train")
    ax_acc.plot(epochs, history.test_accuracy, label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
