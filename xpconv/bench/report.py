"""Results as a markdown table, a JSON file and matplotlib figures."""
from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["auto_choices", "environment_line", "kernel_names", "markdown_table", "summary_lines", "sweep_table",
           "write_json", "plot_suite", "plot_memory"]

_MIB = 2**20


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _kernels(env):
    """(BLAS pool, "<arch> kernels") for each pool that reports its kernel architecture (OpenBLAS does)."""
    return [(b, f"{b['architecture']} kernels") for b in env.get("blas", []) if b.get("architecture")]


def kernel_names(env) -> list[str]:
    """Short names of the BLAS kernels in use, e.g. ["openblas Haswell kernels"], for plot titles."""
    return [f"{b['internal_api']} {kernels}" for b, kernels in _kernels(env)]


def environment_line(env) -> str:
    """What the figures depend on, in one line: CPU/GPU, threads, library versions, BLAS kernels."""
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    blas = [f"{b['internal_api']} {b.get('version')} ({kernels})" for b, kernels in _kernels(env)]
    coretype = env.get("env", {}).get("OPENBLAS_CORETYPE")
    xla = [f"XLA CPU threads {env['xla_threads']}"] if env.get("xla_threads") else []
    parts = [env["cpu"] + (f", GPU {env['gpu']}" if env.get("gpu") else ""), f"threads {env.get('threads')}",
             *xla, versions, *blas, *([f"OPENBLAS_CORETYPE={coretype}"] if coretype else [])]
    return "environment: " + "; ".join(parts)


def auto_choices(layers, runners=()) -> dict[str, str]:
    """The algorithm ``algorithm="auto"`` picked for each layer, by name: as the auto runners among ``runners``
    ran it (auto-tuned, the backends can differ: ``"numpy im2col / torch winograd"``), else by the rule."""
    from .._ops import choose_algorithm
    from .runners import layer_geometry

    recorded = [r for r in runners if getattr(r, "algorithm", None) == "auto"]
    out = {}
    for layer in layers:
        picks = {r.name: r.chose[layer.name] for r in recorded if layer.name in r.chose}
        if len(set(picks.values())) > 1:
            out[layer.name] = " / ".join(f"{backend} {alg}" for backend, alg in picks.items())
        else:
            by_rule = choose_algorithm("auto", layer_geometry(layer), layer.c)
            out[layer.name] = next(iter(picks.values()), None) or by_rule
    return out


def markdown_table(rows, layers) -> str:
    """One line per (layer, backend): times in ms, GFLOP/s, ratios, peak workspace in MiB."""
    spec = {layer.name: layer.spec() for layer in layers}
    lines = [
        "| layer | (N,C,S,O,k,s,p) | backend | fwd ms | bwd ms | fwd+bwd ms | GFLOP/s | vs GEMM | vs shaped GEMM "
        "| vs torch-ref | peak MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        peak = None if r["peak_workspace_bytes"] is None else r["peak_workspace_bytes"] / _MIB
        lines.append(
            f"| {r['layer']} | {spec.get(r['layer'], '')} | {r['backend']} | {r['forward_s'] * 1e3:.2f} | "
            f"{r['backward_s'] * 1e3:.2f} | {r['step_s'] * 1e3:.2f} | {r['step_gflops']:.1f} | "
            f"{r['gemm_ratio']:.2f} | {r['shaped_gemm_ratio']:.2f} | {_fmt(r['ref_ratio'], '.2f')} | "
            f"{_fmt(peak, '.1f')} |")
    return "\n".join(lines)


def summary_lines(summary) -> str:
    """Geometric means over the suite, per backend (ratio to torch-ref: lower is faster)."""
    out = []
    for name, s in summary.items():
        out.append(f"{name}: fwd+bwd time / torch-ref geomean {_fmt(s['geomean_vs_torch_ref'], '.2f')} "
                   f"(worst {_fmt(s['worst_vs_torch_ref'], '.2f')}); throughput / same-FLOP square GEMM geomean "
                   f"{_fmt(s['geomean_vs_gemm'], '.2f')}, / layer-shaped GEMM "
                   f"{_fmt(s['geomean_vs_shaped_gemm'], '.2f')}")
    return "\n".join(out)


def sweep_table(rows) -> str:
    """Memory sweep: peak bytes of forward+backward vs batch size, capped and uncapped."""
    lines = ["| backend | N | cap MiB | peak MiB | one activation MiB | im2col MiB | fwd+bwd ms | GFLOP/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cap = "none" if r["max_workspace_bytes"] is None else f"{r['max_workspace_bytes'] / _MIB:.0f}"
        lines.append(f"| {r['backend']} | {r['n']} | {cap} | {r['peak_bytes'] / _MIB:.1f} | "
                     f"{r['activation_bytes'] / _MIB:.1f} | {r['im2col_bytes'] / _MIB:.1f} | "
                     f"{r['step_s'] * 1e3:.1f} | {r['step_gflops']:.1f} |")
    return "\n".join(lines)


def write_json(path, payload) -> None:
    Path(path).write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n", encoding="utf-8")


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("error: --plot needs matplotlib: pip install matplotlib  (or pip install 'xpconv[bench]')",
              file=sys.stderr)
        return None
    return plt


def plot_suite(rows, path, title: str) -> bool:
    """Grouped bars: forward+backward GFLOP/s per layer and backend, GEMM ceiling as a tick per bar."""
    plt = _pyplot()
    if plt is None:
        return False
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    width = 0.8 / len(backends)
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=90)
    for j, name in enumerate(backends):
        by_layer = {r["layer"]: r for r in rows if r["backend"] == name}
        xs = [i + (j - (len(backends) - 1) / 2) * width for i, layer in enumerate(layers) if layer in by_layer]
        mine = [by_layer[layer] for layer in layers if layer in by_layer]
        ax.bar(xs, [r["step_gflops"] for r in mine], width, label=name)
        ax.scatter(xs, [r["gemm_gflops"] for r in mine], marker="_", s=120, color="black", zorder=3,
                   label="same-FLOP GEMM" if j == 0 else None)
    ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("forward+backward GFLOP/s")
    return _finish(plt, fig, ax, path, title)


def plot_memory(rows, path, title: str) -> bool:
    """Peak bytes vs batch size, with and without the cap, beside the activations and the full im2col size."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=90)
    for name in dict.fromkeys(r["backend"] for r in rows):
        for capped in (True, False):
            mine = [r for r in rows if r["backend"] == name and (r["max_workspace_bytes"] is not None) == capped]
            if not mine:
                continue
            label = (f"{name}, cap {mine[0]['max_workspace_bytes'] / _MIB:.0f} MiB" if capped
                     else f"{name}, no cap")
            ax.plot([r["n"] for r in mine], [r["peak_bytes"] / _MIB for r in mine], "o-", label=label)
    ref = [r for r in rows if r["max_workspace_bytes"] is None] or rows
    ref = list({r["n"]: r for r in ref}.values())
    ax.plot([r["n"] for r in ref], [r["activation_bytes"] / _MIB for r in ref], "k--", label="one activation (x or y)")
    ax.plot([r["n"] for r in ref], [r["im2col_bytes"] / _MIB for r in ref], "k:", label="full im2col buffer")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("batch size N")
    ax.set_ylabel("peak MiB during forward+backward")
    return _finish(plt, fig, ax, path, title)


def _finish(plt, fig, ax, path, title: str) -> bool:
    """Title, legend, save to ``path`` and close."""
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
