"""The ``xpconv train`` and ``xpconv evaluate`` commands: flags in, calls of :mod:`xpconv.training` out."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .. import __version__, io
from ..backends import BACKEND_NAMES, get_backend
from ..data import DATASETS, load_dataset
from ..models import small_cnn
from ..training import DEFAULT_LR, LR_SCHEDULES, evaluate, fit, make_optimizer, plot_curves
from ..validation import cli_type, positive_int, positive_real
from .errors import guarded

__all__ = ["register"]

DEFAULTS = dict(batch_size=32, optimizer="adam", seed=0)
DEFAULT_EPOCHS = {"digits": 40, "mnist": 3}


def _add_data_args(p, default_dataset):
    p.add_argument("--backend", default="numpy", help=f"{', '.join(BACKEND_NAMES)} (default: numpy)")
    p.add_argument("--device", default=None, help="GPU index for cupy/torch (default: 0)")
    p.add_argument("--dataset", choices=DATASETS, default=default_dataset,
                   help="digits (scikit-learn, 8x8) or mnist (files in --data-dir)")
    p.add_argument("--data-dir", default=None, help="directory holding mnist.npz or the MNIST IDX files")
    p.add_argument("--limit", type=cli_type(positive_int), default=None,
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
          f"backend {backend.name} on {backend.device_name}, seed {args.seed}")
    history = fit(model, data, epochs=epochs, batch_size=args.batch_size, optimizer=optimizer, seed=args.seed,
                  lr_schedule=args.lr_schedule, progress=None)
    images = epochs * len(data.x_train)
    metrics = {
        "test_accuracy": history.test_accuracy[-1], "test_loss": history.test_loss[-1],
        "train_loss": history.train_loss, "train_accuracy": history.train_accuracy,
        "test_accuracy_per_epoch": history.test_accuracy, "test_loss_per_epoch": history.test_loss,
        "epochs": epochs, "seconds": history.seconds, "eval_seconds": history.eval_seconds,
        "images_per_second": images / history.seconds, "backend": backend.name, "device": backend.device_name,
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
        plot_curves(history, args.plot, title=f"xpconv small_cnn on {args.dataset} ({backend.name}, "
                                              f"{backend.device_name})")
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
          f"backend {backend.name} on {backend.device_name}")
    return 0


def register(subparsers) -> None:
    """Add the ``train`` and ``evaluate`` subcommands."""
    p = subparsers.add_parser("train", help="train the small CNN (digits on NumPy by default)",
                              description="Train xpconv's small CNN and report test accuracy, time and images/s.")
    _add_data_args(p, "digits")
    p.add_argument("--epochs", type=cli_type(positive_int), default=None,
                   help=f"passes over the training set (default: {DEFAULT_EPOCHS['digits']} for digits, "
                   f"{DEFAULT_EPOCHS['mnist']} for mnist)")
    p.add_argument("--batch-size", type=cli_type(positive_int), default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=cli_type(positive_real, float), default=None,
                   help=f"peak learning rate (default: {DEFAULT_LR['adam']} for adam, {DEFAULT_LR['sgd']} for sgd)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="cosine")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default=DEFAULTS["optimizer"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="seeds the split, the init and the batches")
    p.add_argument("--save", metavar="MODEL.npz", help="save the trained model here")
    p.add_argument("--metrics-out", metavar="METRICS.json", help="write metrics as JSON here")
    p.add_argument("--plot", metavar="CURVES.png", help="draw loss and accuracy curves here (needs matplotlib)")
    p.set_defaults(func=guarded(_run_train, "train"))

    e = subparsers.add_parser("evaluate", help="test accuracy of a saved model",
                              description="Report the test accuracy of a model saved by 'xpconv train --save'. "
                              "The data set, split seed and limit default to those recorded in the file.")
    e.add_argument("--model", required=True, metavar="MODEL.npz")
    _add_data_args(e, None)
    e.add_argument("--seed", type=int, default=None, help="split seed (default: the one used in training)")
    e.set_defaults(func=guarded(_run_evaluate, "evaluate"))
