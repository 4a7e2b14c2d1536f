"""Compare the engine of two git revisions side by side in one run (for engine work).

    python benchmarks/ab_engines.py 95da159 --threads 2 --repeats 5          # against the working tree
    python benchmarks/ab_engines.py 95da159 HEAD
    python benchmarks/ab_engines.py HEAD HEAD --after-batch-inner                # the engine's two GEMM policies

Each revision's ``xpconv`` package is extracted with ``git archive`` into a temporary folder and
imported under its own name, so both engines (and the modules they import) run in one process.
For every suite layer it times, in blocks of ``--repeats`` calls (after one warm-up call) and over
two rounds: torch's own convolution with autograd, a square GEMM with the layer's forward FLOPs,
and forward+backward of each engine file (as the Conv layers call it, forward keeping its columns),
plus the second engine with ``max_workspace_bytes=None`` (one chunk).  It prints medians and the
ratios that matter: time / torch, throughput / GEMM, and chunked / one-chunk throughput.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import io
import math
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _load_engine(revision: str | None, name: str, tmp: Path):
    """The ``_engine`` module of ``xpconv`` at a git revision (None: the working tree), as package ``name``."""
    if revision is None:
        package = ROOT / "xpconv"
    else:
        archive = subprocess.run(["git", "archive", revision, "xpconv"], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp / name, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        package = tmp / name / "xpconv"
    spec = importlib.util.spec_from_file_location(name, package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"{name}._engine")


def _cpu_policy(engine) -> dict:
    """The CPU's chunking policy as the engine takes it: an argument since the engine stopped inspecting
    devices (the NumPy backend's ``cache_chunk_bytes``), nothing for engines that chose it themselves."""
    if "cache_chunk_bytes" not in inspect.signature(engine.conv_forward).parameters:
        return {}
    package = sys.modules[engine.__name__.rpartition(".")[0]]
    return {"cache_chunk_bytes": package.backends.CPU_CHUNK_BYTES}


def _medians(fns: dict, repeats: int) -> dict:
    times = {key: [] for key in fns}
    for _ in range(2):
        for key, fn in fns.items():
            fn()
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="git revision of the engine to compare against")
    parser.add_argument("after", nargs="?", help="git revision (default: the working tree)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--after-batch-inner", action="store_true",
                        help="run the second engine with the batch inside the GEMM (batch_inner=True)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ab_engines_") as tmp:
        engines = {"before": _load_engine(args.before, "xpconv_before", Path(tmp)),
                   "after": _load_engine(args.after, "xpconv_after", Path(tmp))}
        return _compare(engines, args)


def _compare(engines, args) -> int:
    import torch
    from threadpoolctl import threadpool_limits

    from xpconv.bench.suite import SUITE

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    print("| layer | torch ms | GEMM GFLOP/s | before ms | before / torch | before / GEMM | after ms | after / torch "
          "| after / GEMM | one-chunk ms | chunked / one-chunk throughput |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with threadpool_limits(args.threads):
        for layer in SUITE:
            x = rng.standard_normal(layer.x_shape, dtype=np.float32)
            w = rng.standard_normal(layer.w_shape, dtype=np.float32)
            b = rng.standard_normal(layer.o, dtype=np.float32)
            dy = rng.standard_normal(layer.y_shape, dtype=np.float32)
            xt, wt, bt = (torch.from_numpy(a.copy()).requires_grad_() for a in (x, w, b))
            conv = getattr(torch.nn.functional, f"conv{layer.nd}d")
            m = round((layer.flops / 2) ** (1 / 3))
            a = rng.standard_normal((m, m), dtype=np.float32)
            at = a.T.copy()

            # Every timed callable binds this layer's arrays as defaults (B023): none depends on the loop variables.
            def torch_step(conv=conv, layer=layer, xt=xt, wt=wt, bt=bt, dy=dy):
                y = conv(xt, wt, bt, stride=layer.stride, padding=layer.pad, groups=layer.groups)
                return torch.autograd.grad(y, (xt, wt, bt), torch.from_numpy(dy))

            def gemm_step(a=a, at=at):
                return a @ at

            fns = {"torch": torch_step, "gemm": gemm_step}
            for key, engine, cap in (("before", engines["before"], 256 * 2**20),
                                     ("after", engines["after"], 256 * 2**20), ("one-chunk", engines["after"], None)):
                geom = engine.ConvGeometry((layer.k,) * layer.nd, (layer.stride,) * layer.nd,
                                           ((layer.pad, layer.pad),) * layer.nd, (1,) * layer.nd, layer.groups)
                policy = _cpu_policy(engine)
                if key != "before" and args.after_batch_inner:
                    policy["batch_inner"] = True

                def step(engine=engine, geom=geom, cap=cap, policy=policy, x=x, w=w, b=b, dy=dy):
                    _, cols = engine.conv_forward(x, w, b, geom, keep_cols=True, max_workspace_bytes=cap, **policy)
                    engine.conv_backward(dy, x, w, geom, cols=cols, max_workspace_bytes=cap, **policy)
                    np.sum(dy, axis=(0, *range(2, dy.ndim)))

                fns[key] = step
            t = _medians(fns, args.repeats)
            gemm = 2 * m**3 / t["gemm"]
            row = {"layer": layer.name}
            for key in ("before", "after"):
                row[f"{key}/torch"] = t[key] / t["torch"]
                row[f"{key}/gemm"] = 3 * layer.flops / t[key] / gemm
            row["chunked"] = t["one-chunk"] / t["after"]
            rows.append(row)
            print(f"| {layer.name} | {t['torch'] * 1e3:.1f} | {gemm / 1e9:.0f} | {t['before'] * 1e3:.1f} | "
                  f"{row['before/torch']:.2f} | {row['before/gemm']:.2f} | {t['after'] * 1e3:.1f} | "
                  f"{row['after/torch']:.2f} | {row['after/gemm']:.2f} | {t['one-chunk'] * 1e3:.1f} | "
                  f"{row['chunked']:.2f} |", flush=True)

    def geomean(key):
        return math.exp(sum(math.log(r[key]) for r in rows) / len(rows))

    print()
    for key in ("before", "after"):
        print(f"{key}: time / torch geomean {geomean(key + '/torch'):.2f} (worst "
              f"{max(r[key + '/torch'] for r in rows):.2f}); throughput / GEMM geomean {geomean(key + '/gemm'):.2f}")
    print(f"chunked / one-chunk throughput geomean {geomean('chunked'):.2f} "
          f"(worst {min(r['chunked'] for r in rows):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
