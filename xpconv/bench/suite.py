"""The benchmark suite: convolution layers given as (N, C, spatial, O, k, stride, pad, groups)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["Layer", "SUITE", "QUICK", "MEMORY_SWEEP_LAYER", "MEMORY_SWEEP_BATCHES", "select_layers"]


@dataclass(frozen=True)
class Layer:
    """One convolution: x (n, c, *size), weight (o, c // groups, k, ..., k), cubic kernel and symmetric padding."""

    name: str
    n: int
    c: int
    size: tuple[int, ...]
    o: int
    k: int
    stride: int = 1
    pad: int = 0
    groups: int = 1

    @property
    def nd(self) -> int:
        return len(self.size)

    @property
    def out_size(self) -> tuple[int, ...]:
        return tuple((s + 2 * self.pad - self.k) // self.stride + 1 for s in self.size)

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.n, self.c, *self.size)

    @property
    def w_shape(self) -> tuple[int, ...]:
        return (self.o, self.c // self.groups, *(self.k,) * self.nd)

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (self.n, self.o, *self.out_size)

    @property
    def flops(self) -> int:
        """Forward FLOPs (2 per multiply-add); the backward pass (dx and dW) does twice as many."""
        return 2 * self.n * self.o * math.prod(self.out_size) * (self.c // self.groups) * self.k ** self.nd

    def spec(self) -> str:
        """The issue's notation (N, C, H, O, k, stride, pad), plus groups and dims when they matter."""
        size = "x".join(map(str, self.size))
        extra = f", groups={self.groups}" if self.groups != 1 else ""
        return f"({self.n},{self.c},{size},{self.o},{self.k},{self.stride},{self.pad}{extra})"

    def with_batch(self, n: int) -> Layer:
        return Layer(**{**asdict(self), "n": n})

    def as_dict(self) -> dict:
        return {**asdict(self), "nd": self.nd, "out_size": list(self.out_size), "flops": self.flops}


SUITE: tuple[Layer, ...] = (
    Layer("2d-c3-32", 32, 3, (32, 32), 32, 3, 1, 1),
    Layer("2d-c64-32", 32, 64, (32, 32), 64, 3, 1, 1),
    Layer("2d-c64-32-s2", 32, 64, (32, 32), 128, 3, 2, 1),
    Layer("2d-c128-16", 64, 128, (16, 16), 128, 3, 1, 1),
    Layer("2d-c256-14", 16, 256, (14, 14), 256, 3, 1, 1),
    Layer("2d-1x1-56", 32, 64, (56, 56), 64, 1, 1, 0),
    Layer("2d-k5-64", 8, 32, (64, 64), 32, 5, 1, 2),
    Layer("2d-dw-32", 32, 64, (32, 32), 64, 3, 1, 1, groups=64),
    Layer("1d-c64-512", 32, 64, (512,), 64, 5, 1, 2),
    Layer("3d-c32-16", 8, 32, (16, 16, 16), 32, 3, 1, 1),
)
QUICK = ("2d-c3-32", "2d-1x1-56", "2d-dw-32")
MEMORY_SWEEP_LAYER = "2d-c64-32"
MEMORY_SWEEP_BATCHES = (8, 16, 32, 64, 128, 256)


def _parse_custom(text: str) -> Layer:
    """"N,C,S,O,k,stride,pad[,groups]" with S = "H", "HxW" or "DxHxW" (its rank gives 1-, 2- or 3-D)."""
    parts = text.split(",")
    if len(parts) not in (7, 8):
        raise ValueError(f"a custom layer is N,C,S,O,k,stride,pad[,groups] with S like 32 or 32x32, got {text!r}")
    try:
        n, c = int(parts[0]), int(parts[1])
        size = tuple(int(s) for s in parts[2].split("x"))
        o, k, stride, pad = (int(p) for p in parts[3:7])
        groups = int(parts[7]) if len(parts) == 8 else 1
    except ValueError:
        raise ValueError(f"a custom layer needs integers, got {text!r}") from None
    if not 1 <= len(size) <= 3 or min(n, c, o, k, stride, groups, *size) < 1 or pad < 0:
        raise ValueError(f"custom layer {text!r}: sizes must be positive, with 1 to 3 spatial dims")
    if c % groups or o % groups:
        raise ValueError(f"custom layer {text!r}: groups must divide C and O")
    layer = Layer(text, n, c, size, o, k, stride, pad, groups)
    if min(layer.out_size) < 1:
        raise ValueError(f"custom layer {text!r}: the kernel is larger than the padded input")
    return layer


def select_layers(spec: str) -> list[Layer]:
    """``all``, ``quick``, or comma-separated names from :data:`SUITE` / custom layers separated by ';'."""
    by_name = {layer.name: layer for layer in SUITE}
    if spec == "all":
        return list(SUITE)
    if spec == "quick":
        return [by_name[name] for name in QUICK]
    layers = []
    for item in spec.split(";"):
        item = item.strip()
        if item.count(",") >= 6:
            layers.append(_parse_custom(item))
            continue
        for name in filter(None, (s.strip() for s in item.split(","))):
            if name not in by_name:
                raise ValueError(f"unknown layer {name!r}; choose from: all, quick, {', '.join(by_name)}, "
                                 "or a custom N,C,S,O,k,stride,pad[,groups]")
            layers.append(by_name[name])
    return layers
