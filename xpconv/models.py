"""Ready-made models, each rebuildable from the ``arch`` record that :func:`xpconv.save` stores."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import nn
from ._typing import Device
from .backends import Backend

__all__ = ["small_cnn", "build_model", "MODELS"]


def small_cnn(in_channels: int = 1, num_classes: int = 10, image_size: int = 8, channels: tuple[int, int] = (32, 64),
              *, backend: str | Backend | None = None, device: Device = None, dtype: str = "float32",
              seed: int | None = 0) -> nn.Sequential:
    """conv3x3-ReLU-maxpool2 -> conv3x3-ReLU-maxpool2 -> flatten -> linear.

    Input (N, in_channels, image_size, image_size); output logits (N, num_classes).
    Both convolutions keep the size (padding 1) and each pool halves it, so the
    linear layer sees ``channels[1] * (image_size // 4)**2`` features.  Every layer
    is initialized as in torch from a seed derived from ``seed``.
    """
    if image_size < 4:
        raise ValueError(f"small_cnn needs image_size >= 4 (two 2x2 poolings), got {image_size}")
    c1, c2 = channels
    seeds = np.random.SeedSequence(seed).generate_state(3)
    on = dict(backend=backend, device=device, dtype=dtype)
    model = nn.Sequential(
        nn.Conv2d(in_channels, c1, 3, padding=1, seed=int(seeds[0]), **on), nn.ReLU(**on), nn.MaxPool2d(2, **on),
        nn.Conv2d(c1, c2, 3, padding=1, seed=int(seeds[1]), **on), nn.ReLU(**on), nn.MaxPool2d(2, **on),
        nn.Flatten(**on),
        nn.Linear(c2 * (image_size // 4) ** 2, num_classes, seed=int(seeds[2]), **on),
    )
    model.arch = {"name": "small_cnn", "kwargs": {"in_channels": in_channels, "num_classes": num_classes,
                                                  "image_size": image_size, "channels": [c1, c2], "dtype": dtype}}
    return model


MODELS = {"small_cnn": small_cnn}


def build_model(arch: dict[str, Any], *, backend: str | Backend | None = None, device: Device = None) -> nn.Module:
    """The model an ``arch`` record ``{"name": ..., "kwargs": {...}}`` describes, on ``backend``/``device``."""
    if not isinstance(arch, dict) or arch.get("name") not in MODELS or not isinstance(arch.get("kwargs", {}), dict):
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(MODELS)}")
    try:
        return MODELS[arch["name"]](**arch.get("kwargs", {}), backend=backend, device=device)
    except TypeError as exc:
        raise ValueError(f"architecture record {arch!r} does not fit {arch['name']}: {exc}") from None
