"""BatchNorm2d: per-channel normalization over (N, H, W) with running statistics, as in PyTorch."""
from __future__ import annotations

import numpy as np

from .._docstrings import fill_doc
from .._ops import namespace_of
from .._typing import Array
from ..validation import check_real, positive_int, positive_real
from .module import Module, Parameter

__all__ = ["BatchNorm2d"]

_AXES = (0, 2, 3)  # the axes each channel's statistics are taken over


@fill_doc(dtype_role="Floating dtype of the parameters and running statistics; inputs must have the same dtype.")
class BatchNorm2d(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias per channel of x (N, C, H, W).

    Training normalizes with the batch's mean and biased variance and updates the buffers
    ``running_mean``/``running_var`` (unbiased variance) by ``r = (1 - momentum) r + momentum s``;
    eval normalizes with the running statistics.  ``weight`` (C,) starts at 1, ``bias`` (C,) at 0.
    As ``torch.nn.BatchNorm2d`` with ``track_running_stats=True``.

    Parameters
    ----------
    num_features : int
        Number of channels ``C``.
    eps : float, default 1e-5
        Added to the variance before the square root; > 0.
    momentum : float, default 0.1
        Weight of the new batch statistics in the running averages, in [0, 1].
    affine : bool, default True
        Whether the layer has the learnable per-channel ``weight`` and ``bias``; without them
        ``weight`` and ``bias`` are None.
    {backend_device_dtype}

    Attributes
    ----------
    weight, bias : Parameter or None
        ``(C,)`` scale and shift (None without ``affine``).
    running_mean, running_var : array
        ``(C,)`` buffers, saved by ``state_dict()``, starting at 0 and 1.
    num_batches_tracked : array
        0-d int64 buffer counting the training batches seen.

    Raises
    ------
    {raises_unavailable}
    ValueError
        If ``num_features`` is not a positive int, ``eps`` is not > 0, ``momentum`` is outside [0, 1],
        {bad_backend}.
    TypeError
        If ``eps`` or ``momentum`` is not a real number.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> bn = nn.BatchNorm2d(2)
    >>> x = np.arange(16, dtype=np.float32).reshape(2, 2, 2, 2)
    >>> y = bn(x)
    >>> y.shape, bool(np.allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-6))     # zero mean per channel
    ((2, 2, 2, 2), True)
    >>> [round(float(m), 3) for m in bn.running_mean], int(bn.num_batches_tracked)
    ([0.55, 0.95], 1)
    >>> grad_x = bn.backward(np.ones_like(y))
    >>> grad_x.shape, bn.weight.grad.shape, bn.bias.grad.tolist()
    ((2, 2, 2, 2), (2,), [8.0, 8.0])
    >>> bn.eval()(x).shape                              # eval: normalized with the running statistics
    (2, 2, 2, 2)
    """

    running_mean: Array
    running_var: Array
    num_batches_tracked: Array

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, *, backend=None, device=None,
                 dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        self.num_features = positive_int("num_features", num_features)
        self.eps, self.momentum = positive_real("eps", eps), check_real("momentum", momentum, 0.0, 1.0)
        self.affine = bool(affine)
        c = self.num_features
        self.weight = Parameter(self.backend.asarray(np.ones(c), dtype=self.dtype)) if affine else None
        self.bias = Parameter(self.backend.asarray(np.zeros(c), dtype=self.dtype)) if affine else None
        self.register_buffer("running_mean", self.backend.asarray(np.zeros(c), dtype=self.dtype))
        self.register_buffer("running_var", self.backend.asarray(np.ones(c), dtype=self.dtype))
        self.register_buffer("num_batches_tracked", self.backend.asarray(np.zeros((), dtype=np.int64)))
        self._cache = None

    def _clear_cache(self) -> None:
        self._cache = None

    @fill_doc(x_shape="``(N, C, H, W)``", y_shape="``x``'s shape",
              bad_x="is not ``(N, C, H, W)`` with ``C = num_features``, or in\ntraining has a single value "
                    "per channel (``N * H * W == 1``)")
    def forward(self, x):
        """Normalize ``x`` per channel; in training mode also update the running statistics.

        {layer_forward}
        """
        xp = namespace_of(x, self.running_mean, names=["x", "running_mean"])
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d({self.num_features}) expects x of shape (N, {self.num_features}, H, W), "
                             f"got {tuple(x.shape)}")

        def per_channel(a):                                                 # (C,) -> (1, C, 1, 1)
            return xp.reshape(a, (1, -1, 1, 1))

        if self.training:
            count = x.shape[0] * x.shape[2] * x.shape[3]
            if count < 2:
                raise ValueError(f"BatchNorm2d needs more than 1 value per channel in training, got x of shape "
                                 f"{tuple(x.shape)}")
            mean = xp.mean(x, axis=_AXES)                                   # (C,)
            centered = x - per_channel(mean)
            var = xp.mean(centered * centered, axis=_AXES)                  # (C,) biased
            m = self.momentum
            self.running_mean = (1 - m) * self.running_mean + m * mean
            self.running_var = (1 - m) * self.running_var + (m * count / (count - 1)) * var
            self.num_batches_tracked = self.num_batches_tracked + 1
        else:
            centered, var = x - per_channel(self.running_mean), self.running_var
        inv_std = per_channel(1.0 / xp.sqrt(var + self.eps))                # (1, C, 1, 1)
        x_hat = centered * inv_std
        self._cache = (x_hat, inv_std) if self.training else None
        if self.weight is None or self.bias is None:                          # affine=False
            return x_hat
        return x_hat * per_channel(self.weight.data) + per_channel(self.bias.data)

    @fill_doc()
    def backward(self, grad_output):
        """dL/dx through the batch statistics; dL/dweight and dL/dbias are (C,) (with ``affine``).

        {layer_backward}
        """
        x_hat, inv_std = self._need_cache(self._cache)
        self._cache = None
        xp = namespace_of(grad_output, x_hat, names=["grad_output", "x"])
        if tuple(grad_output.shape) != tuple(x_hat.shape):
            raise ValueError(f"grad_output must have the output's shape {tuple(x_hat.shape)}, "
                             f"got {tuple(grad_output.shape)}")
        g = grad_output                                                     # dL/dx_hat
        if self.weight is not None and self.bias is not None:                 # affine=True
            self.weight.grad += xp.sum(grad_output * x_hat, axis=_AXES)
            self.bias.grad += xp.sum(grad_output, axis=_AXES)
            g = grad_output * xp.reshape(self.weight.data, (1, -1, 1, 1))
        mean_g = xp.mean(g, axis=_AXES, keepdims=True)
        mean_gx = xp.mean(g * x_hat, axis=_AXES, keepdims=True)
        return inv_std * (g - mean_g - x_hat * mean_gx)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"backend={self.backend.name!r}")
