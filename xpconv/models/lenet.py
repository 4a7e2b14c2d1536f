"""LeNet-5 for 28x28 single-channel images (MNIST), in its common modern variant."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import nn
from .._docstrings import fill_doc
from .._typing import Device
from ..backends import Backend

__all__ = ["lenet5"]


@fill_doc(backend_role="Where the parameters live and the model computes:")
def lenet5(num_classes: int = 10, in_channels: int = 1, *, backend: str | Backend | None = None,
           device: Device = None, dtype: str = "float32", seed: int | None = 0) -> nn.Sequential:
    """LeNet-5 (LeCun et al. 1998) as usually written today, for (N, in_channels, 28, 28) inputs.

    ``conv1`` 6@5x5 padding 2 - ReLU - maxpool 2 - ``conv2`` 16@5x5 - ReLU - maxpool 2 - flatten (400) -
    ``fc1`` 120 - ReLU - ``fc2`` 84 - ReLU - ``fc3`` num_classes; 61,706 parameters for 10 classes.
    It differs from the 1998 network in: padding 2 on 28x28 images in place of 32x32 inputs, ReLU in
    place of scaled tanh, max pooling in place of trainable subsampling, C3 connected to all six maps
    (not the sparse table), and a linear output layer (logits for cross-entropy) in place of the
    Gaussian RBF units.  Layers are initialized as torch's defaults, from seeds derived from ``seed``;
    ``state_dict()`` keys are ``conv1.weight``, ..., ``fc3.bias``.

    Parameters
    ----------
    num_classes : int, default 10
        Number of output logits.
    in_channels : int, default 1
        Input channels.
    {backend_device_dtype}
    seed : int or None, default 0
        Seed of the initial weights; None: fresh entropy.

    Returns
    -------
    model : nn.Sequential
        Its ``arch`` record rebuilds it with :func:`xpconv.models.build_model`.

    Raises
    ------
    ValueError
        If ``num_classes`` or ``in_channels`` is not a positive int, or ``dtype``/``backend`` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv.models import lenet5
    >>> model = lenet5()
    >>> model(np.zeros((2, 1, 28, 28), dtype=np.float32)).shape
    (2, 10)
    >>> sum(p.data.size for p in model.parameters())
    61706
    >>> [k for k in model.state_dict() if k.endswith("weight")]
    ['conv1.weight', 'conv2.weight', 'fc1.weight', 'fc2.weight', 'fc3.weight']
    """
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(5)]
    on = dict(backend=backend, device=device, dtype=dtype)
    model = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(in_channels, 6, 5, padding=2, seed=seeds[0], **on), relu1=nn.ReLU(**on),
        pool1=nn.MaxPool2d(2, **on),
        conv2=nn.Conv2d(6, 16, 5, seed=seeds[1], **on), relu2=nn.ReLU(**on), pool2=nn.MaxPool2d(2, **on),
        flatten=nn.Flatten(**on),
        fc1=nn.Linear(16 * 5 * 5, 120, seed=seeds[2], **on), relu3=nn.ReLU(**on),
        fc2=nn.Linear(120, 84, seed=seeds[3], **on), relu4=nn.ReLU(**on),
        fc3=nn.Linear(84, num_classes, seed=seeds[4], **on),
    ))
    model.arch = {"name": "lenet5", "kwargs": {"num_classes": num_classes, "in_channels": in_channels,
                                               "dtype": dtype}}
    return model
