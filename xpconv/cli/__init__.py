"""The ``xpconv`` command: ``info`` here; other subcommands register from their own modules.

Only argparse and printing live under ``xpconv.cli``: each command turns its flags into calls of
the library modules (:mod:`xpconv.training`, :mod:`xpconv.io`, :mod:`xpconv.bench`, ...).
"""
from __future__ import annotations

import argparse
import importlib
import platform
import sys

from .errors import EXIT_BROKEN_PIPE, flush_stdout, guarded

# Modules that each define ``register(subparsers)``, adding one or more subcommands.
_COMMAND_MODULES: tuple[str, ...] = ("xpconv.cli.train", "xpconv.cli.export", "xpconv.bench.cli")


def _info(args) -> int:
    from .. import __version__
    from ..backends import available_backends, get_default_backend

    print(f"xpconv {__version__}  (Python {platform.python_version()}, {platform.machine()})")
    import array_api_compat

    print(f"array-api-compat {array_api_compat.__version__}")
    print(f"default backend: {get_default_backend()}  (set with XPCONV_BACKEND or xpconv.set_default_backend)")
    print()
    print(f"{'backend':<18}{'version':<14}{'usable':<8}devices / note")
    report = available_backends()
    for name, e in report.items():
        usable = "yes" if e["usable"] else "no"
        detail = ", ".join(e["devices"]) + (f"  ({e['note']})" if e["note"] else "")
        print(f"{name:<18}{e['version'] or '-':<14}{usable:<8}{detail}")
    _print_cpu_blas()
    _print_distributed()
    if not report["cupy"]["usable"]:  # '--backend auto' looks at CuPy only
        print("\nNo usable CUDA GPU for CuPy: '--backend auto' falls back to NumPy on the CPU (with a warning).\n"
              "Check `nvidia-smi`. In Docker, the host needs the NVIDIA Container Toolkit and the container "
              "'--gpus all' (compose: a GPU reservation).")
    return 0


def _print_distributed() -> None:
    """Whether ``train --distributed`` can run: mpi4py with its MPI library, and NCCL for CuPy."""
    from ..distributed import mpi_available, nccl_available

    print()
    for what, (usable, note) in (("MPI (mpi4py)", mpi_available()), ("NCCL (CuPy)", nccl_available())):
        print(f"{what:<18}{'yes' if usable else 'no':<8}{note}")


def _print_cpu_blas() -> None:
    """The BLAS libraries loaded (NumPy's, and torch's where imported), their kernels and threads."""
    from ..bench.environment import blas_pools, coretype_note

    print()
    pools = [p for p in blas_pools() if p.get("user_api") == "blas"]
    for p in pools:
        print(f"CPU BLAS: {p.get('internal_api')} {p.get('version')} ({p.get('prefix')}), "
              f"{p.get('architecture') or 'unknown'} kernels, {p.get('num_threads')} threads")
    if not pools:
        print("CPU BLAS: unknown (pip install threadpoolctl to see it)")
    if note := coretype_note():
        print(note)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xpconv", description="Convolutional layers with explicit backprop "
                                     "on NumPy, CuPy, PyTorch and array-api-strict.")
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback of an error, not just its one-line message")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="show installed backends, devices and versions")
    info.set_defaults(func=_info)
    for module in _COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def _run(args) -> int:
    from ..backends import get_default_backend

    get_default_backend()   # a bad XPCONV_BACKEND stops every command here, with one line naming the variable
    return args.func(args)


def main(argv=None) -> int:
    """Run the ``xpconv`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    How each kind of error ends (exit status, what goes to stderr) is in :mod:`xpconv.cli.errors`.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:                  # --help and usage errors: their output may meet a closed pipe too
        if not flush_stdout():
            return EXIT_BROKEN_PIPE
        raise
    return guarded(_run, args.command)(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
