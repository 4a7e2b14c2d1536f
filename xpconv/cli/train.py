"""The ``xpconv train`` and ``xpconv evaluate`` commands: flags in, calls of :mod:`xpconv.training` out.

A run's configuration is resolved once (flags, else the model's defaults; with ``--resume``, the checkpoint's
record, which explicit flags may not contradict) and recorded in every checkpoint.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from .. import __version__, io
from ..allocator import keep_freed_memory
from ..amp import GradScaler
from ..backends import BACKEND_NAMES, get_backend
from ..checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..data import DATASETS, augmentation, channel_stats, load_dataset, normalize
from ..distributed import Communicator, gradient_bytes, init_communicator, run_or_abort
from ..interrupt import StopRequest, exit_status
from ..models import MODELS, build_model
from ..nn import CrossEntropyLoss
from ..training import (
    DEFAULT_LR,
    LR_SCHEDULES,
    TrainingDiverged,
    evaluate,
    fit,
    make_optimizer,
    make_scheduler,
    plot_curves,
)
from ..validation import check_real, cli_type, non_negative_int, positive_int, positive_real
from .errors import guarded
from .paths import check_outputs

__all__ = ["register", "MODEL_DEFAULTS", "DIVERGED_STATUS", "PRECISIONS"]

DIVERGED_STATUS = 3   # the exit status of a run whose loss became NaN or infinite

# Per-model defaults of the training flags (docs/training.md explains each choice).
_SMALL = dict(optimizer="adam", lr=None, batch_size=32, weight_decay=0.0, lr_schedule="cosine", warmup_epochs=0,
              label_smoothing=0.0, clip_grad_norm=None, augment=False, precision="float32")
_RESNET = dict(optimizer="sgd", lr=0.1, batch_size=128, weight_decay=1e-4, lr_schedule="cosine", warmup_epochs=1,
               label_smoothing=0.0, clip_grad_norm=None, augment=True, precision="float32")
PRECISIONS = ("float32", "float16", "bfloat16")
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "small_cnn": _SMALL, "lenet5": _SMALL | dict(batch_size=64, augment=True),
    "resnet20": _RESNET, "resnet32": _RESNET, "resnet56": _RESNET}
DEFAULT_EPOCHS = {("small_cnn", "digits"): 40, ("small_cnn", "mnist"): 3, ("lenet5", "mnist5k"): 30,
                  ("lenet5", "mnist"): 3}
FALLBACK_EPOCHS = 30
NORMALIZED_BY_DEFAULT = ("cifar10",)      # the data sets --normalize is on for by default
DEFAULT_DATASET = {"small_cnn": "digits", "lenet5": "mnist5k", "resnet20": "cifar10", "resnet32": "cifar10",
                   "resnet56": "cifar10"}
# The flags that make up a run (recorded in checkpoints); outputs and the backend may change on resume.
_RUN_KEYS = ("model", "dataset", "data_dir", "limit", "epochs", "seed", "normalize", *_SMALL)


def _resolve(args, recorded: dict[str, Any] | None) -> dict[str, Any]:
    """The run's configuration: explicit flags, else the checkpoint's record, else the defaults."""
    given = {k: getattr(args, k) for k in _RUN_KEYS if getattr(args, k) is not None}
    if recorded is not None:
        clash = {k: (v, recorded.get(k)) for k, v in given.items() if recorded.get(k) != v}
        if clash:
            listing = ", ".join(f"--{k.replace('_', '-')} {v!r} (checkpoint: {r!r})" for k, (v, r) in clash.items())
            raise ValueError(f"a resumed run keeps its configuration; these flags differ from the checkpoint's: "
                             f"{listing}")
        return dict(recorded)
    model = given.get("model", "small_cnn")
    config = {"model": model, "dataset": DEFAULT_DATASET[model], "data_dir": None, "limit": None, "seed": 0}
    config |= MODEL_DEFAULTS[model] | given
    config.setdefault("epochs", DEFAULT_EPOCHS.get((model, config["dataset"]), FALLBACK_EPOCHS))
    config.setdefault("normalize", config["dataset"] in NORMALIZED_BY_DEFAULT)
    if config["lr"] is None:
        config["lr"] = DEFAULT_LR[config["optimizer"]]
    return config


def _normalized(data, stats):
    """``data`` with both splits standardized per channel by ``stats`` = (mean, std), or as it is for None."""
    if not stats:
        return data
    mean, std = stats
    return data._replace(x_train=normalize(data.x_train, mean, std), x_test=normalize(data.x_test, mean, std))


def _add_data_args(p, dataset_default: str) -> None:
    p.add_argument("--backend", default=None,
                   help=f"{', '.join(BACKEND_NAMES)} (default: $XPCONV_BACKEND, else numpy)")
    p.add_argument("--device", default=None, help="device: GPU index for cupy/torch, device1 for array_api_strict")
    p.add_argument("--dataset", choices=DATASETS, default=None, help=dataset_default)
    p.add_argument("--data-dir", default=None,
                   help="directory holding the data set's files (mnist: mnist.npz or IDX files; cifar10: the binary "
                   "version or cifar10.npz); not for digits or mnist5k")
    p.add_argument("--limit", type=cli_type(positive_int), default=None,
                   help="use at most N training and N test images (quick runs)")


def _metrics(config, history, backend, model, data) -> dict[str, Any]:
    """What the run measured, as JSON values (a non-finite number becomes null: bare NaN is not JSON)."""
    images = history.epochs * len(data.x_train)

    def finite(v):
        return [finite(x) for x in v] if isinstance(v, list) else (v if math.isfinite(v) else None)

    return {
        "test_accuracy": finite(history.test_accuracy[-1]), "test_loss": finite(history.test_loss[-1]),
        "train_loss": finite(history.train_loss), "train_accuracy": finite(history.train_accuracy),
        "test_accuracy_per_epoch": finite(history.test_accuracy), "test_loss_per_epoch": finite(history.test_loss),
        "seconds": history.seconds, "eval_seconds": history.eval_seconds,
        "images_per_second": images / history.seconds if history.seconds else None,
        "backend": backend.name, "device": backend.device_name, "train_size": len(data.x_train),
        "test_size": len(data.x_test), "arch": model.arch,
        "xpconv_version": __version__,
    } | config


def _run_train(args) -> int:
    keep_freed_memory()                   # the same arrays every step: no page faults to get them back
    if not args.distributed:
        return _train(args, Communicator(get_backend(args.backend, args.device)))
    comm = init_communicator(args.backend, args.device)
    return run_or_abort(lambda: _train(args, comm), comm, "xpconv train")


def _quiet(*args: Any, **kwargs: Any) -> None:
    """print() of the ranks other than 0."""


def _train(args, comm: Communicator) -> int:
    """The training run of one rank (of one process: ``comm.size`` 1); only rank 0 prints and writes files."""
    lead = comm.rank == 0
    say = print if lead else _quiet
    resumed = load_checkpoint(args.resume) if args.resume else None
    config = _resolve(args, resumed.config if resumed else None)
    checkpoint_path = args.checkpoint or args.resume
    outputs = {"--save": args.save, "--metrics-out": args.metrics_out, "--plot": args.plot,
               "--checkpoint": None if checkpoint_path == args.resume else checkpoint_path}
    check_outputs(outputs, inputs={"--resume": args.resume, "--data-dir": config["data_dir"]})
    if args.save:
        io.check_format(args.save)          # a .safetensors file without the library stops here, not after training
    backend = comm.backend
    data = load_dataset(config["dataset"], config["data_dir"], seed=config["seed"]).subset(config["limit"])
    stats = channel_stats(data.x_train) if config.get("normalize") else None
    data = _normalized(data, stats)
    _, channels, size, _ = data.x_train.shape
    if resumed is not None:
        if resumed.arch is None:
            raise ValueError(f"{args.resume}: the checkpoint records no architecture")
        try:
            model = build_model(resumed.arch, backend=backend,
                                max_elements=sum(a.size for a in resumed.model.values()))
            model.load_state_dict(resumed.model)
        except ValueError as exc:
            raise ValueError(f"{args.resume}: the checkpoint's model does not fit its architecture record "
                             f"({exc})") from None
    else:
        shape = {"image_size": size} if config["model"] == "small_cnn" else {}   # the others fix their input size
        model = MODELS[config["model"]](in_channels=channels, num_classes=data.num_classes, backend=backend,
                                        seed=config["seed"], dtype=config["precision"], **shape)
    optimizer = make_optimizer(config["optimizer"], model.parameters(), config["lr"], config["weight_decay"])
    steps_per_epoch = math.ceil(len(data.x_train) / (config["batch_size"] * comm.size))
    scheduler = make_scheduler(config["lr_schedule"], optimizer, config["epochs"] * steps_per_epoch,
                               config["warmup_epochs"] * steps_per_epoch)
    if resumed is not None:
        optimizer.load_state_dict(resumed.optimizer)
        if (scheduler is None) != (resumed.scheduler is None):
            raise ValueError(f"{args.resume}: the checkpoint's learning-rate schedule does not fit its configuration")
        if scheduler is not None and resumed.scheduler is not None:
            scheduler.load_state_dict(resumed.scheduler)
    # float16 needs loss scaling; bfloat16 has float32's range and trains without it, as in torch
    scaler = GradScaler(enabled=config.get("precision") == "float16")
    # Each rank draws its own crops and flips (rank 0 those of a single process).
    augment = augmentation(config["dataset"], seed=config["seed"] + comm.rank) if config["augment"] else None

    def write_checkpoint(progress: dict[str, Any]) -> None:
        save_checkpoint(Checkpoint(model=model.state_dict(), optimizer=optimizer.state_dict(), progress=progress,
                                   config=config, scheduler=None if scheduler is None else scheduler.state_dict(),
                                   arch=model.arch), checkpoint_path)

    where = f"backend {backend.name} on {backend.device_name}"
    ranks = f" per rank x {comm.size} ranks ({type(comm).__name__})" if args.distributed else ""
    say(f"{'resuming' if resumed else 'training'} {config['model']} on {config['dataset']} "
        f"({len(data.x_train)} train / {len(data.x_test)} test images) with {config['optimizer']} lr "
        f"{config['lr']:g} ({config['lr_schedule']}), batch {config['batch_size']}{ranks}, {config['epochs']} "
        f"epochs, {where}, {config.get('precision', 'float32')}, seed {config['seed']}")
    comm.barrier()           # every rank has loaded its data: from here the collectives' cost is the training's
    comm.bytes_reduced, comm.seconds = 0, 0.0
    try:
        with StopRequest() as stop:
            history = fit(model, data, epochs=config["epochs"], batch_size=config["batch_size"], optimizer=optimizer,
                          scheduler=scheduler, loss_fn=CrossEntropyLoss(label_smoothing=config["label_smoothing"]),
                          augment=augment, seed=config["seed"], progress=None if lead else False, log=say,
                          resume=resumed.progress if resumed else None,
                          on_checkpoint=write_checkpoint if checkpoint_path and lead else None, stop=stop, comm=comm,
                          clip_grad_norm=config.get("clip_grad_norm"), scaler=scaler)
    except TrainingDiverged as exc:                  # on every rank at the same step: the loss is the global one
        if lead:
            print(f"xpconv train: error: {exc}; nothing was saved", file=sys.stderr)
        return DIVERGED_STATUS
    if history.stopped:
        if not lead:
            return exit_status(stop.signum or 0)
        kept = (f"checkpoint written to {checkpoint_path}; continue with: xpconv train --resume {checkpoint_path}"
                if checkpoint_path else "nothing was saved (no --checkpoint given)")
        print(f"xpconv train: stopped by {history.stopped} after epoch {history.epochs} of {config['epochs']}: "
              f"{kept}", file=sys.stderr)
        return exit_status(stop.signum or 0)
    metrics = _metrics(config, history, backend, model, data)
    if args.distributed:
        metrics |= _communication(comm, model, history)
    if not lead:
        return 0
    print(f"test accuracy {history.test_accuracy[-1]:.2%} | training {history.seconds:.1f} s, "
          f"{metrics['images_per_second'] or 0:,.0f} images/s (+{history.eval_seconds:.1f} s evaluating) | {where}")
    if args.save:
        io.save(model, args.save, metadata={k: config[k] for k in ("dataset", "seed", "data_dir", "limit")}
                | {"test_accuracy": history.test_accuracy[-1],
                   "normalize": None if stats is None else {"mean": list(stats[0]), "std": list(stats[1])}})
        print(f"model saved to {args.save}")
    if args.metrics_out:
        io.atomic_write(args.metrics_out, (json.dumps(metrics, indent=2, allow_nan=False) + "\n").encode())
        print(f"metrics written to {args.metrics_out}")
    if args.plot:
        plot_curves(history, args.plot, title=f"xpconv {config['model']} on {config['dataset']} ({backend.name}, "
                                              f"{backend.device_name})")
        print(f"curves drawn to {args.plot}")
    if args.distributed:
        print(f"communication: {metrics['gradient_bytes_per_step']:,} bytes of gradients per step, in one "
              f"allreduce across {comm.size} ranks; all collectives took {metrics['communication_seconds']:.2f} s, "
              f"{metrics['communication_fraction']:.1%} of the training time (rank 0)")
    return 0


def _communication(comm: Communicator, model, history) -> dict[str, Any]:
    """What the collectives cost this rank: gradient bytes per step, seconds and their share of training."""
    return {"ranks": comm.size, "gradient_bytes_per_step": gradient_bytes(model.parameters()),
            "communication_bytes": comm.bytes_reduced, "communication_seconds": comm.seconds,
            "communication_fraction": comm.seconds / history.seconds if history.seconds else 0.0}


def _run_evaluate(args) -> int:
    extra = io.read_metadata(args.model)["extra"]
    backend = get_backend(args.backend, args.device)
    model = io.load(args.model, backend=backend)
    dataset = args.dataset or extra.get("dataset", "digits")
    seed = extra.get("seed", 0) if args.seed is None else args.seed
    data = load_dataset(dataset, args.data_dir or extra.get("data_dir"), seed=seed)
    limit = args.limit if args.limit is not None else extra.get("limit")
    recorded = extra.get("normalize")                     # the model's input statistics, from its training split
    data = _normalized(data.subset(limit), recorded and (recorded["mean"], recorded["std"]))
    start = time.perf_counter()
    loss, accuracy = evaluate(model, data.x_test, data.y_test)
    seconds = time.perf_counter() - start
    print(f"test accuracy {accuracy:.2%} ({round(accuracy * len(data.x_test))}/{len(data.x_test)}), "
          f"test loss {loss:.4f} on {dataset} (split seed {seed}) | {seconds:.2f} s | "
          f"backend {backend.name} on {backend.device_name}")
    return 0


def _fraction(name: str, value: object) -> float:
    """A float in [0, 1)."""
    return check_real(name, value, 0.0, 1.0, high_open=True)


def register(subparsers) -> None:
    """Add the ``train`` and ``evaluate`` subcommands."""
    p = subparsers.add_parser("train", help="train a CNN (small_cnn on digits on NumPy by default)",
                              description="Train one of xpconv's models and report test accuracy, time and images/s. "
                              "Defaults depend on the model (docs/training.md).")
    p.add_argument("--model", choices=tuple(MODELS), default=None, help="default: small_cnn")
    _add_data_args(p, "default: the model's (small_cnn: digits, lenet5: mnist5k, resnets: cifar10)")
    p.add_argument("--epochs", type=cli_type(positive_int), default=None,
                   help="passes over the training set (default: per model and data set)")
    p.add_argument("--batch-size", type=cli_type(positive_int), default=None)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default=None)
    p.add_argument("--lr", type=cli_type(positive_real, float), default=None,
                   help=f"peak learning rate (default: {DEFAULT_LR['adam']} for adam, {DEFAULT_LR['sgd']} for sgd, "
                   "0.1 for the resnets)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None, help="stepped every batch (default: cosine)")
    p.add_argument("--warmup-epochs", type=cli_type(non_negative_int), default=None,
                   help="linear warm-up from lr/10 (default: 1 for the resnets, else 0)")
    p.add_argument("--weight-decay", type=cli_type(_fraction, float), default=None)
    p.add_argument("--label-smoothing", type=cli_type(_fraction, float), default=None)
    p.add_argument("--clip-grad-norm", type=cli_type(positive_real, float), default=None, metavar="MAX",
                   help="scale the gradients to a total 2-norm of at most MAX every step (default: no clipping)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="the model's dtype: float16 trains with float32 master weights and dynamic loss scaling, "
                   "bfloat16 (torch only) with float32 master weights (default: float32; docs/precision.md)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crops and flips (default: on for the resnets)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="standardize each channel of both splits by the training split's mean and std, recorded in "
                   "the saved model for 'xpconv evaluate' (default: on for cifar10)")
    p.add_argument("--seed", type=cli_type(non_negative_int), default=None,
                   help="seeds the split, the init and the batches (default: 0)")
    p.add_argument("--save", metavar="MODEL.npz",
                   help="save the trained model here (.npz, or .safetensors: the format follows the suffix)")
    p.add_argument("--metrics-out", metavar="METRICS.json", help="write metrics as JSON here")
    p.add_argument("--plot", metavar="CURVES.png", help="draw loss and accuracy curves here (needs matplotlib)")
    p.add_argument("--checkpoint", metavar="CKPT.npz",
                   help="write a checkpoint here after every epoch and when stopped (Ctrl-C, SIGTERM)")
    p.add_argument("--resume", metavar="CKPT.npz",
                   help="continue the run of this checkpoint (and keep checkpointing to it unless --checkpoint)")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training, one process per device: mpiexec -n N xpconv train --distributed "
                   "(--batch-size is per rank; MPI on the CPU, NCCL with --backend cupy; docs/distributed.md)")
    p.set_defaults(func=guarded(_run_train, "train"))

    e = subparsers.add_parser("evaluate", help="test accuracy of a saved model",
                              description="Report the test accuracy of a model saved by 'xpconv train --save'. "
                              "The data set, split seed and limit default to those recorded in the file.")
    e.add_argument("--model", required=True, metavar="MODEL.npz", help="a saved model (.npz or .safetensors)")
    _add_data_args(e, "default: the one recorded in the file")
    e.add_argument("--seed", type=cli_type(non_negative_int), default=None,
                   help="split seed (default: the one used in training)")
    e.set_defaults(func=guarded(_run_evaluate, "evaluate"))
