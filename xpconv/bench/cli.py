"""``xpconv bench``: time the convolution suite on each backend against torch and a plain GEMM."""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
from pathlib import Path

from ..models import MODELS
from ..tuning import autotune
from ..validation import cli_type, non_negative_int, positive_int
from .runners import BACKEND_CHOICES
from .suite import MEMORY_SWEEP_LAYER, QUICK, SUITE

__all__ = ["register", "run"]


def _backends(text: str) -> list[str]:
    names = [b.strip() for b in text.split(",") if b.strip()]
    bad = [b for b in names if b not in BACKEND_CHOICES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown backend(s) {bad}; choose from {','.join(BACKEND_CHOICES)}")
    return names


def _algorithms(text: str) -> list[str]:
    from .._ops import ALGORITHMS

    names = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in names if a not in ALGORITHMS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown algorithm(s) {bad}; choose from {','.join(ALGORITHMS)}")
    return list(dict.fromkeys(names))


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark the convolution suite on the backends",
        description="Time forward, backward and forward+backward of the suite's layers (median after warm-up; "
                    "CUDA events on the GPU) on each backend, against torch's own convolution and a same-FLOP "
                    "GEMM. Prints a markdown table; see benchmarks/README.md.")
    p.add_argument("--backends", type=_backends, default=["numpy", "torch", "torch-ref"],
                   help=f"comma-separated from {','.join(BACKEND_CHOICES)}; torch-ref is torch.nn.functional.conv*d "
                        "with autograd, jax-ref jax.lax.conv_general_dilated under jit with vjp (XLA's CPU threads: "
                        "1 with --threads 1, else all CPUs; docs/benchmarks.md). Unavailable ones are skipped with a "
                        "note (default: numpy,torch,torch-ref)")
    p.add_argument("--algorithms", type=_algorithms, default=["auto"],
                   help="comma-separated from auto,im2col,winograd,winograd4x4,direct,fft: each xpconv backend runs "
                        "each algorithm side by side, as a row named backend:algorithm (auto: the backend's name); an "
                        "algorithm is skipped on layers it cannot compute (winograd, winograd4x4: 2-D 3x3 stride 1; "
                        "direct: depthwise). Prints what auto chose per layer (default: auto)")
    p.add_argument("--autotune", action="store_true",
                   help="auto-tune algorithm='auto' (xpconv.set_autotune): each layer's first auto call times the "
                        "eligible algorithms and keeps the fastest, as docs/algorithms.md describes")
    p.add_argument("--layers", default="all",
                   help=f"all, quick ({','.join(QUICK)}), comma-separated names "
                        f"({', '.join(layer.name for layer in SUITE)}), or custom layers 'N,C,S,O,k,stride,pad"
                        "[,groups]' (S = 32, 32x32 or 16x16x16) separated by ';'")
    p.add_argument("--repeats", type=cli_type(positive_int), default=5,
                   help="timed calls per measurement (median; default 5)")
    p.add_argument("--warmup", type=cli_type(non_negative_int), default=1, help="untimed calls first (default 1)")
    p.add_argument("--threads", type=cli_type(positive_int), default=None,
                   help="BLAS/OpenMP threads (threadpoolctl) and torch.set_num_threads (default: all CPUs)")
    p.add_argument("--max-workspace-bytes", type=cli_type(positive_int), default=None,
                   help="im2col workspace cap given to xpconv (default: the library default, 256 MiB)")
    p.add_argument("--torch-device", default="cpu", help="device for the torch and torch-ref backends "
                                                         "(cpu or cuda; default cpu)")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 on the GPU: torch's cuDNN/cuBLAS flags, and CUPY_TF32=1 unless already set "
                        "(default: off on both sides)")
    p.add_argument("--memory-sweep", action="store_true",
                   help=f"also measure peak memory vs batch size for {MEMORY_SWEEP_LAYER}, with and without the cap")
    p.add_argument("--json", metavar="PATH", help="write all results and the environment as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a bar chart of GFLOP/s (PNG; needs matplotlib)")
    p.add_argument("--memory-plot", metavar="PATH",
                   help="where the memory-sweep chart goes (default: next to --plot, suffix -memory)")
    p.add_argument("--seed", type=int, default=0, help="random inputs' seed (default 0)")
    p.add_argument("--model", choices=MODELS, default=None,
                   help="instead of the layer suite, time a whole training step (forward, cross-entropy, backward, "
                        "SGD momentum) of this model on random data, in images/s; torch-ref runs the same network "
                        "in torch.nn with autograd")
    p.add_argument("--batch-size", type=cli_type(positive_int), default=128,
                   help="images per step with --model (default 128)")
    p.add_argument("--steps", type=cli_type(positive_int), default=5,
                   help="timed steps with --model, after --warmup untimed ones (median; default 5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def _memory_plot_path(plot: str) -> str:
    """The memory-sweep chart's default path: beside ``--plot``, suffix ``-memory``."""
    return str(Path(plot).with_name(Path(plot).stem + "-memory.png"))


def run(args) -> int:
    from .._ops import DEFAULT_MAX_WORKSPACE_BYTES
    from ..allocator import keep_freed_memory
    from ..cli.paths import check_outputs
    from . import report
    from .driver import make_runners, memory_sweep, run_suite, summarize
    from .environment import collect_environment, coretype_note, set_tf32, set_threads, set_xla_threads
    from .suite import select_layers

    layers = select_layers(args.layers)   # a ValueError: one line and exit status 2 (xpconv.cli.errors)
    kept = keep_freed_memory()            # every runner, torch-ref's too, reuses freed memory (xpconv.allocator)
    memory_plot = args.memory_plot or (args.plot and args.memory_sweep and _memory_plot_path(args.plot))
    check_outputs({"--json": args.json, "--plot": args.plot, "--memory-plot": memory_plot or None})
    if args.tf32:
        os.environ.setdefault("CUPY_TF32", "1")  # before CuPy is imported by a runner
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = args.threads or cpus
    xla_threads = set_xla_threads(threads, cpus)     # before a runner imports JAX
    if args.model:
        from .model_step import run_model

        return run_model(args, threads, xla_threads)
    cap = DEFAULT_MAX_WORKSPACE_BYTES if args.max_workspace_bytes is None else args.max_workspace_bytes
    runners, skipped = make_runners(args.backends, args.torch_device, args.algorithms)
    if not runners:
        print("error: none of the requested backends can run here", file=sys.stderr)
        return 1
    set_tf32(args.tf32)
    limiter = set_threads(threads)
    env = collect_environment(args.torch_device)  # while the thread limits are in force
    env["threads"] = threads
    if any(r.name == "jax-ref" for r in runners):
        env["xla_threads"] = xla_threads
    env["tf32"] = args.tf32
    env["keep_freed_memory"] = kept
    if note := coretype_note():
        print(note, file=sys.stderr)
    progress = not args.no_progress
    try:
        with autotune(True) if args.autotune else nullcontext():
            rows = run_suite(runners, layers, repeats=args.repeats, warmup=args.warmup, max_workspace_bytes=cap,
                             seed=args.seed, progress=progress)
        sweep = (memory_sweep(runners, cap, repeats=min(args.repeats, 3), warmup=args.warmup, seed=args.seed,
                              progress=progress) if args.memory_sweep else [])
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
    summary = summarize(rows)

    print(report.environment_line(env))
    print()
    print(report.markdown_table(rows, layers))
    print()
    print(report.summary_lines(summary))
    auto = report.auto_choices(layers, runners)
    print()
    print("auto chose: " + ", ".join(f"{name} {alg}" for name, alg in auto.items()))
    if sweep:
        print()
        print(report.sweep_table(sweep))
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    gpu = env.get("gpu") or env.get("torch", {}).get("gpu")
    on_gpu = any(getattr(r, "on_gpu", False) for r in runners)
    title = ", ".join([gpu if on_gpu and gpu else env["cpu"], f"{threads} threads", "float32",
                       *report.kernel_names(env)])
    if args.json:
        report.write_json(args.json, {
            "environment": env,
            "config": {"backends": args.backends, "algorithms": args.algorithms,
                       "layers": [layer.as_dict() for layer in layers],
                       "repeats": args.repeats, "warmup": args.warmup, "threads": threads,
                       "max_workspace_bytes": cap, "torch_device": args.torch_device, "tf32": args.tf32},
            "results": rows, "summary": summary, "auto_chose": auto, "memory_sweep": sweep, "skipped": skipped})
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        if not report.plot_suite(rows, args.plot, title):
            return 1
        print(f"wrote {args.plot}", file=sys.stderr)
    if sweep and (args.plot or args.memory_plot):
        path = args.memory_plot or _memory_plot_path(args.plot)
        if not report.plot_memory(sweep, path, f"{MEMORY_SWEEP_LAYER}: {title}"):
            return 1
        print(f"wrote {path}", file=sys.stderr)
    return 0
