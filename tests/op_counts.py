"""Kernel launches per layer, counted with ``torch.profiler`` on torch CPU, as a proxy for a GPU's launches.

torch records every aten op it runs.  A top-level op (one not called by another aten op) counts as a launch
when it, or an op it calls, does work on the data; ops that only make a view or allocate (``reshape`` of a
contiguous array, ``slice``, ``permute``, ``empty``, ...) do not, as they launch nothing on a GPU either.

``python tests/op_counts.py`` prints the table that docs/gpu.md records; tests/test_op_budget.py keeps each
count under its budget.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np

# aten ops that only build a view or allocate: no kernel launch on a GPU
VIEW_OPS = frozenset(f"aten::{name}" for name in (
    "reshape", "view", "_unsafe_view", "_reshape_alias", "slice", "select", "alias", "permute", "swapaxes",
    "transpose", "t", "expand", "unsqueeze", "squeeze", "as_strided", "detach", "empty", "empty_strided", "to",
    "lift_fresh", "resolve_conj", "resolve_neg", "result_type", "broadcast_to", "expand_as", "contiguous",
    "empty_like", "flatten", "unflatten", "view_as", "numpy_T", "movedim", "split", "unbind", "chunk", "narrow",
    "diagonal", "matrix_H", "mT", "real", "imag", "is_nonzero", "size", "stride", "dim"))


def launches(fn: Callable[[], object]) -> int:
    """Kernel launches (see the module) of one call of ``fn``, after one untimed warm-up call."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.events() if e.name.startswith("aten::")]

    def works(event) -> bool:
        return event.name not in VIEW_OPS or any(works(child) for child in event.cpu_children)

    top = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return sum(works(e) for e in top)


@contextlib.contextmanager
def gpu_policies() -> Iterator[None]:
    """torch CPU with a GPU's engine policies: the batch inside one GEMM, im2col and its fold as gathers."""
    from xpconv.backends import TorchBackend

    TorchBackend.batch_inner_gemm = TorchBackend.gather_columns = property(lambda self: True)  # type: ignore
    try:
        yield
    finally:
        del TorchBackend.batch_inner_gemm, TorchBackend.gather_columns


def _under_gpu_policies(fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with gpu_policies():
            return fn()
    return run


def layer_cases() -> dict[str, Callable[[], object]]:
    """Each layer type's forward, backward (after its forward, which is not counted) and optimizer steps,
    on torch CPU float32 at a small benchmark-like shape (N=8, 16 channels, 16x16)."""
    import torch

    from xpconv import nn
    from xpconv.backends import get_backend
    from xpconv.optim import SGD, Adam

    backend = get_backend("torch")
    rng = np.random.default_rng(0)

    def data(*shape):
        return backend.asarray(rng.standard_normal(shape), dtype="float32")

    x, feats = data(8, 16, 16, 16), data(8, 64)
    layers = {
        "Conv2d 3x3": (nn.Conv2d(16, 16, 3, padding=1, backend=backend, seed=0), x),
        "Conv2d 3x3, first layer (no dL/dx)": (nn.Conv2d(16, 16, 3, padding=1, backend=backend, seed=0), x),
        "Conv2d 1x1": (nn.Conv2d(16, 16, 1, backend=backend, seed=0), x),
        "Linear": (nn.Linear(64, 10, backend=backend, seed=0), feats),
        "BatchNorm2d": (nn.BatchNorm2d(16, backend=backend), x),
        "ReLU": (nn.ReLU(backend=backend), x),
        "MaxPool2d 2x2": (nn.MaxPool2d(2, backend=backend), x),
        "Dropout": (nn.Dropout(0.5, backend=backend, seed=0), x),
    }
    layers["Conv2d 3x3, first layer (no dL/dx)"][0].requires_input_grad(False)
    layers["Conv2d 3x3, GPU policies"] = (nn.Conv2d(16, 16, 3, padding=1, backend=backend, seed=0), x)
    cases: dict[str, Callable[[], object]] = {}
    for name, (layer, inp) in layers.items():
        out = layer(inp)
        grad = torch.ones_like(out)
        wrap = _under_gpu_policies if name.endswith("GPU policies") else (lambda fn: fn)
        cases[f"{name} forward"] = wrap(lambda layer=layer, inp=inp: layer(inp))
        cases[f"{name} backward"] = wrap(lambda layer=layer, inp=inp, grad=grad: (layer(inp), layer.backward(grad)))
    loss_fn, logits, labels = nn.CrossEntropyLoss(), data(8, 10), backend.asarray(np.arange(8) % 10)
    cases["CrossEntropyLoss forward"] = lambda: loss_fn.on_device(logits, labels)
    cases["CrossEntropyLoss backward"] = lambda: (loss_fn.on_device(logits, labels), loss_fn.backward())
    for name, make in (("SGD momentum step", lambda p: SGD(p, lr=0.1, momentum=0.9)),
                       ("Adam step", lambda p: Adam(p, lr=1e-3))):
        param = nn.Parameter(data(16, 16, 3, 3))
        param.grad = data(16, 16, 3, 3)
        cases[f"{name} (one parameter)"] = make([param]).step
    return cases


def measure() -> dict[str, int]:
    """Launches of every case in :func:`layer_cases`; a backward case's count excludes its forward's."""
    counts = {name: launches(fn) for name, fn in layer_cases().items()}
    for name in counts:
        if name.endswith(" backward"):
            counts[name] -= counts[name.removesuffix("backward") + "forward"]
    return counts


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    print("| case | aten ops that launch |\n|---|---|")
    for case, count in measure().items():
        print(f"| {case} | {count} |")
