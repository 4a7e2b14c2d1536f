"""Training and evaluation loops, the optimizers and schedules they are built with, and the curves they draw.

One loop serves every backend: the model lives on a :class:`~xpconv.backends.Backend`, every op runs under its
:meth:`~xpconv.backends.Backend.activate`, the :class:`~xpconv.data.DataLoader` copies each batch there (without
waiting, where the library allows), labels are checked on the host where they come from, and the loss and
the count of correct predictions are added up on the device and read once per logging interval: a step
never waits for the GPU otherwise.

A run can stop and continue: :func:`fit` reports its progress (epoch, batch, random-generator states, the
metrics so far) to ``on_checkpoint`` after every epoch and when a :class:`~xpconv.interrupt.StopRequest` asks it
to stop at a batch boundary, and ``resume=`` continues from such a record, so that a run stopped and resumed
ends with the same weights and metrics, bit for bit, as one that never stopped.  The ``xpconv train`` command
(:mod:`xpconv.cli.train`) is built on :func:`fit`.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from ._namespace import namespace
from ._typing import Array
from .amp import GradScaler
from .backends import Backend, to_numpy
from .data import Compose, DataLoader, Dataset
from .distributed import Communicator, allreduce_gradients, average_buffers, broadcast_state
from .interrupt import StopRequest
from .nn import CrossEntropyLoss, Module, Parameter
from .nn.utils import clip_grad_norm_
from .optim import SGD, Adam, Optimizer
from .optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, MultiStepLR, OneCycleLR, SequentialLR
from .validation import non_negative_int, positive_int, positive_real

__all__ = ["DEFAULT_LR", "LR_SCHEDULES", "History", "TrainingDiverged", "make_optimizer", "make_scheduler",
           "evaluate", "fit", "plot_curves"]

DEFAULT_LR = {"adam": 3e-3, "sgd": 0.05}
LR_SCHEDULES = ("cosine", "constant", "multistep", "onecycle")


class TrainingDiverged(ArithmeticError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


@dataclass
class History:
    """What :func:`fit` measured: one value per epoch of each curve, and the seconds spent.

    ``seconds`` counts training only (batches, forward, backward, step); ``eval_seconds`` the test
    evaluations after each epoch.  ``stopped`` names the signal that stopped the run early, if one did.
    """

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0
    eval_seconds: float = 0.0
    stopped: str | None = None

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> History:
        """The History :meth:`as_dict` described; ValueError if ``record`` is not such a record."""
        names = {f.name for f in fields(cls)}
        if not isinstance(record, dict) or not set(record) <= names:
            raise ValueError(f"not a training history record: {record!r:.200}")
        return cls(**record)


def make_optimizer(name: str, params: Iterable[Parameter], lr: float | None = None,
                   weight_decay: float = 0.0) -> Optimizer:
    """``"adam"`` (torch defaults otherwise) or ``"sgd"`` (momentum 0.9), with ``lr`` or the default for it."""
    if name not in DEFAULT_LR:
        raise ValueError(f"unknown optimizer {name!r}; choose 'adam' or 'sgd'")
    lr = DEFAULT_LR[name] if lr is None else lr
    if name == "adam":
        return Adam(params, lr=lr, weight_decay=weight_decay)
    return SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def make_scheduler(name: str, optimizer: Optimizer, total_steps: int, warmup_steps: int = 0) -> LRScheduler | None:
    """The learning-rate schedule ``name`` over ``total_steps`` optimizer steps, stepped once per batch.

    ``"cosine"``: cosine annealing from the optimizer's lr to 0; ``"multistep"``: divided by 10 after 50 % and
    75 % of the steps (He et al. 2016's CIFAR schedule); ``"onecycle"``: :class:`OneCycleLR` peaking at the
    optimizer's lr; ``"constant"``: None (no scheduler).  ``warmup_steps`` > 0 prepends a linear warm-up from
    a tenth of the lr (not with ``"onecycle"``, which warms up by itself).
    """
    if name not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {name!r}")
    total_steps = positive_int("total_steps", total_steps)
    warmup_steps = non_negative_int("warmup_steps", warmup_steps)
    if warmup_steps >= total_steps:
        raise ValueError(f"the warm-up ({warmup_steps} steps) must be shorter than the run ({total_steps} steps): "
                         "shorten the warm-up (--warmup-epochs) or train for longer")
    if name == "onecycle":
        if warmup_steps:
            raise ValueError("the onecycle schedule has its own warm-up; drop the warm-up")
        return OneCycleLR(optimizer, max_lr=optimizer.lr, total_steps=total_steps)
    if name == "constant" and not warmup_steps:
        return None
    steps = total_steps - warmup_steps
    main: LRScheduler
    if name == "cosine":
        main = CosineAnnealingLR(optimizer, T_max=steps)
    elif name == "multistep":
        main = MultiStepLR(optimizer, milestones=[steps // 2, steps * 3 // 4], gamma=0.1)
    else:
        main = LinearLR(optimizer, start_factor=1.0, end_factor=1.0, total_iters=1)
    if not warmup_steps:
        return main
    warmup = LinearLR(optimizer, start_factor=0.1, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, main], milestones=[warmup_steps])


def _count_correct(logits: Array, labels: Array) -> Array:
    """Number of rows of logits (N, C) whose arg-max equals the label (N,): a 0-d int array on the device."""
    xp = namespace(logits)
    return xp.sum(xp.astype(xp.argmax(logits, axis=1) == labels, xp.int32))


def _check_labels(y: np.ndarray, classes: int, split: str) -> None:
    """ValueError unless the host labels ``y`` of ``split`` lie in [0, classes): checked once, where they come
    from, so that no step reads labels back from the device."""
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise ValueError(f"the {split} labels must lie in [0, {classes}) for a model with {classes} outputs, "
                         f"got values in [{y.min()}, {y.max()}]")


class _Totals:
    """The loss sum (loss times batch size) and the correct count, added up on the device and read on demand.

    Each step adds to one float64 device array ``(2,)``; :meth:`read` copies it to the host (one wait for
    the device) and is called once per logging interval, never per step.
    """

    def __init__(self, backend: Backend, loss_sum: float = 0.0, correct: int = 0) -> None:
        self.xp = backend.xp
        self.sums = backend.asarray(np.array([loss_sum, correct], dtype=np.float64))

    def add(self, loss: Array, logits: Array, labels: Array) -> None:
        xp, n = self.xp, labels.shape[0]
        step = xp.stack([xp.astype(loss, xp.float64) * n, xp.astype(_count_correct(logits, labels), xp.float64)])
        self.sums = self.sums + step

    def read(self) -> tuple[float, int]:
        loss_sum, correct = to_numpy(self.sums).tolist()
        return loss_sum, int(correct)


@contextlib.contextmanager
def _input_needs_no_grad(model: Module) -> Iterator[None]:
    """The model's input is data: its first layer's backward may skip dL/dx while the block runs."""
    model.requires_input_grad(False)
    try:
        yield
    finally:
        model.requires_input_grad(True)


def evaluate(model: Module, x: Array, y: Array, batch_size: int = 500,
             comm: Communicator | None = None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on host arrays x (N, C, H, W), y (N,), in eval mode.

    The sums stay on the device until the end: one wait for the device per call.  With a communicator of
    several ranks, each rank evaluates its contiguous part of x and the sums are reduced: every rank returns
    the figures of the whole of x.
    """
    was_training = model.training
    model.eval()
    loss_fn = CrossEntropyLoss()
    x, y = to_numpy(x), to_numpy(y)
    n = len(y)
    if n == 0:
        raise ValueError("cannot evaluate on an empty data set")
    mine = np.array_split(np.arange(n), 1 if comm is None else comm.size)[0 if comm is None else comm.rank]
    total_loss, correct = 0.0, 0
    if len(mine):
        loader = DataLoader(x[mine[0]:mine[-1] + 1], y[mine[0]:mine[-1] + 1], batch_size, shuffle=False,
                            backend=model.backend, dtype=model.dtype_name)
        with model.backend.activate():
            totals = _Totals(model.backend)
            for i, (xb, yb) in enumerate(loader):
                logits = model(xb)
                if i == 0:
                    _check_labels(loader.y, logits.shape[1], "evaluation")
                totals.add(loss_fn.on_device(logits, yb), logits, yb)
            total_loss, correct = totals.read()
    model.train(was_training)
    if comm is not None:
        total_loss, reduced = comm.allreduce_scalars([total_loss, correct])
        correct = round(reduced)
    return total_loss / n, correct / n


def _generators(model: Module) -> dict[str, Module]:
    """The layers of ``model`` with a random generator (e.g. dropout masks), by the layer's dotted name."""
    return {name or "model": m for name, m in model._named_modules() if hasattr(m, "random_state")}


def _set_generator_states(model: Module, states: dict[str, Any]) -> None:
    generators = _generators(model)
    if set(states) != set(generators):
        raise ValueError(f"the record's random generators {sorted(states)} do not match the model's "
                         f"{sorted(generators)}")
    for name, state in states.items():
        generators[name].set_random_state(state)  # type: ignore[attr-defined]


def fit(model: Module, data: Dataset, *, epochs: int, batch_size: int, optimizer: Optimizer,
        scheduler: LRScheduler | None = None, loss_fn: CrossEntropyLoss | None = None,
        augment: Compose | None = None, seed: int = 0, progress: bool | None = None,
        log: Callable[[str], object] = print, resume: dict[str, Any] | None = None,
        on_checkpoint: Callable[[dict[str, Any]], object] | None = None,
        stop: StopRequest | None = None, log_interval: int | None = None,
        comm: Communicator | None = None, clip_grad_norm: float | None = None,
        scaler: GradScaler | None = None) -> History:
    """Train ``model`` on ``data``, evaluating on its test split after every epoch; returns the :class:`History`.

    Parameters
    ----------
    model : Module
        Trained in place, on its own backend.
    data : Dataset
        Host arrays; the training split is reshuffled every epoch from a generator seeded by ``seed``.
    epochs, batch_size : int
        Passes over the training split, and images per step (the last batch of an epoch may be smaller).
    optimizer : Optimizer
        Built on ``model.parameters()``.
    scheduler : LRScheduler or None
        Stepped after every optimizer step (see :func:`make_scheduler`).
    loss_fn : CrossEntropyLoss or None
        Default ``CrossEntropyLoss()``.
    augment : callable or None
        Applied to every training batch on the device (see :mod:`xpconv.data`).
    seed : int
        Seeds the order of the batches.
    progress : bool or None
        A tqdm bar per epoch on stderr (None: only on a terminal).
    log : callable
        Gets one line per epoch.
    resume : dict or None
        A progress record passed to ``on_checkpoint`` by an earlier call with the same arguments; the model,
        optimizer and scheduler must hold the state saved with it.  Training continues at its batch.
    on_checkpoint : callable or None
        Called with a progress record (plain JSON values) after every epoch and when stopped early.
    stop : StopRequest or None
        Checked after every step and every evaluation: once it holds a signal, ``fit`` reports its progress
        and returns, with ``History.stopped`` naming the signal.
    log_interval : int or None
        Steps between reads of the running loss and accuracy: the loss and the correct count stay on the
        device, and the step that ends an interval (or the epoch) copies them to the host, the only time a
        training step waits for the device.  The progress bar and the divergence check use these reads.
        None: every step on the CPU, where a read costs nothing (a diverging loss stops the run at its step),
        every 50 steps on a GPU.
    clip_grad_norm : float or None
        Scale the gradients to a total 2-norm of at most this before every optimizer step
        (:func:`xpconv.nn.utils.clip_grad_norm_`, on the device: no wait); None: no clipping.
    scaler : GradScaler or None
        Dynamic loss scaling for a float16 model (:mod:`xpconv.amp`): the loss gradient is scaled, the gradients
        unscaled (before clipping) and checked, and a step with inf/NaN gradients is skipped; its state goes
        into the progress record.  None: no scaling.
    comm : Communicator or None
        Data parallelism (:mod:`xpconv.distributed`): rank 0's weights are broadcast first, ``batch_size`` is
        per rank, each rank trains on its part of every global batch of ``comm.size * batch_size`` images,
        gradients are summed in one message per step (with the loss and the stop flag), BatchNorm running
        statistics are averaged before each evaluation and the metrics are reduced: every rank ends with
        the weights and History of one process trained with the global batch.  ``on_checkpoint`` is called
        on every rank (let rank 0 write); ``resume`` takes rank 0's record on every rank.  None: one process.

    Raises
    ------
    TrainingDiverged
        If a training loss is NaN or infinite (the message names the epoch and the step that ends the
        logging interval), or the test loss after an epoch is; nothing is reported to ``on_checkpoint`` from the
        diverged weights.
    ValueError
        If ``epochs`` or ``batch_size`` is not a positive int, or ``resume`` does not fit this run.
    """
    from tqdm.auto import tqdm

    epochs = positive_int("epochs", epochs)
    if clip_grad_norm is not None:
        clip_grad_norm = positive_real("clip_grad_norm", clip_grad_norm)
    if log_interval is None:
        log_interval = 50 if model.backend.is_gpu else 1
    log_interval = positive_int("log_interval", log_interval)
    comm = Communicator(model.backend) if comm is None else comm
    # On a GPU the next batch is sliced, pinned, uploaded and augmented on a thread while the step runs.
    loader = DataLoader(data.x_train, data.y_train, batch_size, shuffle=True, seed=[seed, 1],
                        backend=model.backend, dtype=model.dtype_name, transform=augment,
                        prefetch=1 if model.backend.is_gpu else 0, num_replicas=comm.size, rank=comm.rank)
    loss_fn = CrossEntropyLoss() if loss_fn is None else loss_fn
    scaler = GradScaler(enabled=False) if scaler is None else scaler
    history, start_epoch, start_batch, sums = History(), 0, 0, [0.0, 0, 0]
    if resume is not None:
        try:
            history = History.from_dict(resume["history"])
            start_epoch, start_batch = int(resume["epoch"]), int(resume["batch"])
            sums = [float(resume["sums"][0]), int(resume["sums"][1]), int(resume["sums"][2])]
            sums = sums if comm.rank == 0 else [0.0, 0, 0]      # the record's sums are the global ones
            loader.load_state_dict(resume["loader"])
            if augment is not None:
                augment.load_state_dict(resume["augment"])
            _set_generator_states(model, resume["generators"])
            scaler.load_state_dict(resume.get("scaler", {}))
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"the resume record is incomplete ({exc!r})") from None
        if not 0 <= start_epoch <= epochs or not 0 <= start_batch <= len(loader):
            raise ValueError(f"the resume record's position (epoch {start_epoch}, batch {start_batch}) does not fit "
                             f"a run of {epochs} epochs of {len(loader)} batches")

    def record(epoch: int, batch: int, start: tuple[dict[str, Any], dict[str, Any] | None]) -> dict[str, Any]:
        return {"epoch": epoch, "batch": batch, "loader": start[0], "augment": start[1], "sums": list(sums),
                "generators": {k: m.random_state() for k, m in _generators(model).items()},  # type: ignore[attr-defined]
                "history": history.as_dict(), "scaler": scaler.state_dict()}

    def here() -> tuple[dict[str, Any], dict[str, Any] | None]:
        return loader.state_dict(), None if augment is None else augment.state_dict()

    def stopped(agreed: Communicator | None = None) -> bool:
        """Whether a stop was asked for (with ``agreed``: on any rank, the answer the same on every rank)."""
        asked = stop is not None and stop.signum is not None
        return asked if agreed is None or agreed.size == 1 else agreed.allreduce_scalars([asked])[0] > 0

    n = loader.x.shape[0]
    broadcast_state(model, comm)
    params = list(model.parameters())
    model.train()
    for epoch in range(start_epoch, epochs):
        epoch_start = here()                                 # before this epoch's order and crops are drawn
        skip, start_batch = start_batch, 0
        bar = tqdm(total=len(loader), initial=skip, desc=f"epoch {epoch + 1}/{epochs}", leave=False, unit="batch",
                   file=sys.stderr, disable=None if progress is None else not progress)
        start = time.perf_counter()
        with model.backend.activate(), _input_needs_no_grad(model):
            totals = _Totals(model.backend, sums[0], int(sums[1]))
            for step, (xb, yb) in enumerate(loader):
                if step < skip:                  # already trained before the run stopped: replayed, not trained
                    continue
                # A diverging run overflows before its loss turns non-finite: the checks below report it, in one line.
                with np.errstate(over="ignore", invalid="ignore"):
                    share = xb.shape[0] / loader.global_batch_size(step)    # 1 in one process
                    logits = model(xb)
                    if step == skip:
                        _check_labels(loader.y, logits.shape[1], "training")
                    loss = loss_fn.on_device(logits, yb)
                    optimizer.zero_grad()
                    # the gradient of the global batch's mean loss (times the loss scale, with a scaler)
                    model.backward(loss_fn.backward(scaler.scale(share)))
                    if comm.size > 1:
                        # One message: every rank's gradients, the global batch's loss, whether a rank must stop.
                        global_loss, stops = allreduce_gradients(
                            params, comm, [float(loss) * share if share else 0.0, stopped()])
                        if not math.isfinite(global_loss):
                            bar.close()
                            raise TrainingDiverged(f"the training loss became {global_loss} at epoch {epoch + 1}, "
                                                   f"step {step + 1} of {len(loader)}; lower the learning rate "
                                                   f"(now {optimizer.lr:.3g})")
                    else:
                        stops = stopped()
                    scaler.unscale_(optimizer)
                    if clip_grad_norm is not None:
                        clip_grad_norm_(params, clip_grad_norm)
                    scaler.step(optimizer)                        # skipped on inf/NaN gradients (with a scaler)
                    scaler.update()
                if scheduler is not None:
                    scheduler.step()
                if xb.shape[0]:
                    totals.add(loss, logits, yb)
                    sums[2] += xb.shape[0]
                bar.update()
                if (step + 1) % log_interval == 0 or stops or step + 1 == len(loader):   # the one wait per interval
                    sums[0], sums[1] = totals.read()
                    if not math.isfinite(sums[0]):
                        bar.close()
                        raise TrainingDiverged(
                            f"the training loss became {sums[0] / max(sums[2], 1)} at epoch {epoch + 1}, step "
                            f"{step + 1} of {len(loader)}; lower the learning rate (now {optimizer.lr:.3g})")
                    bar.set_postfix(loss=f"{sums[0] / max(sums[2], 1):.4f}",
                                    acc=f"{sums[1] / max(sums[2], 1):.3f}", refresh=False)
                if stops and step + 1 < len(loader):
                    break
        model.backend.synchronize()                # the last step's GPU work counts in this epoch's time
        history.seconds += time.perf_counter() - start
        bar.close()
        total = comm.allreduce_scalars(sums)
        sums = [float(total[0]), int(total[1]), int(total[2])]
        average_buffers(model, comm)               # the ranks' BatchNorm running statistics, before eval/saving
        if stopped(comm) and sums[2] < n:
            if on_checkpoint is not None:
                on_checkpoint(record(epoch, step + 1, epoch_start))
            history.stopped = stop.name if stop is not None else None
            return history
        start = time.perf_counter()
        with np.errstate(over="ignore", invalid="ignore"):
            test_loss, test_acc = evaluate(model, data.x_test, data.y_test, comm=comm)
        if not math.isfinite(test_loss):
            raise TrainingDiverged(f"the test loss became {test_loss} after epoch {epoch + 1}; lower the learning "
                                   f"rate (now {optimizer.lr:.3g})")
        history.eval_seconds += time.perf_counter() - start
        history.train_loss.append(sums[0] / n)
        history.train_accuracy.append(sums[1] / n)
        history.test_loss.append(test_loss)
        history.test_accuracy.append(test_acc)
        log(f"epoch {epoch + 1:>3}/{epochs}  lr {optimizer.lr:.2e}  train loss {sums[0] / n:.4f}  "
            f"train acc {sums[1] / n:.2%}  test loss {test_loss:.4f}  test acc {test_acc:.2%}")
        sums = [0.0, 0, 0]
        if on_checkpoint is not None:
            on_checkpoint(record(epoch + 1, 0, here()))
        if stopped(comm):
            history.stopped = stop.name if stop is not None else None
            return history
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
