"""Peak host memory (tracemalloc) and time of one forward + backward of LeNet-5 (batch 64) per dtype, on NumPy.

    python benchmarks/precision.py

float16 halves the activations' and columns' memory; its time on the CPU is NumPy's float16 matmul, which has
no BLAS kernel (docs/precision.md): the speed of half precision is a GPU matter.
"""
from __future__ import annotations

import time
import tracemalloc

import numpy as np

from xpconv import models, nn


def main() -> None:
    x = np.random.default_rng(0).standard_normal((64, 1, 28, 28))
    labels = np.arange(64) % 10
    for dtype in ("float32", "float16"):
        model, loss_fn = models.lenet5(dtype=dtype), nn.CrossEntropyLoss()
        xb = x.astype(dtype)
        tracemalloc.start()
        start = time.perf_counter()
        loss_fn.on_device(model(xb), labels)
        model.backward(loss_fn.backward())
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"{dtype}: peak {peak / 2**20:.1f} MiB, {seconds:.2f} s")


if __name__ == "__main__":
    main()
