"""small_cnn: two conv-ReLU-maxpool stages and a linear layer, for 8x8 digits or MNIST."""
from __future__ import annotations

import numpy as np

from .. import nn
from .._docstrings import fill_doc
from .._typing import Device
from ..backends import Backend

__all__ = ["small_cnn"]


@fill_doc(backend_role="Where the parameters live and the model computes:")
def small_cnn(in_channels: int = 1, num_classes: int = 10, image_size: int = 8, channels: tuple[int, int] = (32, 64),
              *, backend: str | Backend | None = None, device: Device = None, dtype: str = "float32",
              seed: int | None = 0) -> nn.Sequential:
    """conv3x3-ReLU-maxpool2 -> conv3x3-ReLU-maxpool2 -> flatten -> linear.

    Input (N, in_channels, image_size, image_size); output logits (N, num_classes).
    Both convolutions keep the size (padding 1) and each pool halves it, so the
    linear layer sees ``channels[1] * (image_size // 4)**2`` features.  Every layer
    is initialized as in torch from a seed derived from ``seed``.

    Parameters
    ----------
    in_channels, num_classes : int, default 1, 10
        Input channels and number of classes.
    image_size : int, default 8
        Height and width of the input images, >= 4.
    channels : pair of int, default (32, 64)
        Output channels of the two convolutions.
    {backend_device_dtype}
    seed : int or None, default 0
        Seed of the initial weights; None: fresh entropy.

    Raises
    ------
    ValueError
        If ``image_size < 4``, or the layers refuse a size.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv.models import small_cnn
    >>> model = small_cnn(channels=(4, 8))
    >>> model(np.zeros((2, 1, 8, 8), dtype=np.float32)).shape
    (2, 10)
    >>> model.arch["name"], list(model.state_dict())[:2]
    ('small_cnn', ['0.weight', '0.bias'])
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
