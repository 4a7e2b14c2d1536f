"""Normalization layers as PyTorch's: BatchNorm1d/2d/3d, LayerNorm and GroupNorm.

Each standardizes x over some axes, ``x_hat = (x - mean) / sqrt(var + eps)`` (biased variance), then applies
an optional elementwise affine map ``y = x_hat * weight + bias``:
    BatchNorm   x (N, C, *s)   statistics per channel over (N, *s)        weight, bias (C,)
    LayerNorm   x (*, *norm)   statistics per sample over the last axes    weight, bias ``normalized_shape``
    GroupNorm   x (N, C, *s)   statistics per sample and group of C/G channels  weight, bias (C,)
Backward, with g = dL/dy * weight and means over the same axes:
``dL/dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sqrt(var + eps)``.

Mixed precision (docs/precision.md): a layer built with ``dtype="float16"`` or ``"bfloat16"`` takes and returns
that dtype but keeps its parameters and running statistics in float32 and computes in float32, as cuDNN's
batch normalization does with half inputs.
"""
from __future__ import annotations

import math

import numpy as np

from .._docstrings import fill_doc
from .._ops import namespace_of
from .._typing import Array
from ..amp import master_dtype
from ..validation import check_real, int_tuple, positive_int, positive_real
from .init import claim_elements
from .module import Module, Parameter

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LayerNorm", "GroupNorm"]


def _standardize(xp, x, axes: tuple[int, ...], eps: float):
    """(x_hat, 1 / sqrt(var + eps), mean, var) over ``axes``, the statistics kept as size-1 axes."""
    mean = xp.mean(x, axis=axes, keepdims=True)
    centered = x - mean
    var = xp.mean(centered * centered, axis=axes, keepdims=True)
    inv_std = 1.0 / xp.sqrt(var + eps)
    return centered * inv_std, inv_std, mean, var


class _Normalization(Module):
    """Standardize, then the affine map; backward through both.

    A subclass defines ``_check_input(x)``, ``_param_shape(x)`` (the parameters' broadcast shape, of x's rank)
    and ``_standardize(xp, x) -> (x_hat, inv_std, view)``: ``view`` is the shape the statistics were taken
    in (None: x's own) over the axes ``_axes(x)``, and ``inv_std`` broadcasts against it.
    """

    weight: Parameter | None
    bias: Parameter | None

    def __init__(self, *, backend=None, device=None, dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        self._cache = None

    def _clear_cache(self) -> None:
        self._cache = None

    def _make_affine(self, shape: tuple[int, ...], weight: bool, bias: bool) -> None:
        """``weight`` (ones) and ``bias`` (zeros) of ``shape``, each None when not wanted."""
        claim_elements(self, *[shape] * (int(weight) + int(bias)))
        self.weight = Parameter(self.backend.asarray(np.ones(shape), dtype=self.stats_dtype)) if weight else None
        self.bias = Parameter(self.backend.asarray(np.zeros(shape), dtype=self.stats_dtype)) if bias else None

    @property
    def stats_dtype(self):
        """The dtype of the parameters, running statistics and arithmetic: float32 for a float16/bfloat16
        layer, the layer's dtype otherwise."""
        return master_dtype(self.backend.xp, self.dtype)

    def _widened(self, x, name: str, arrays: dict):
        """(xp, ``x`` in its :func:`~xpconv.amp.master_dtype`), checked against the layer's ``arrays``: a
        float16/bfloat16 ``x`` must have the layer's own dtype (nothing is promoted silently)."""
        xp = namespace_of(x, names=[name])
        wide = xp.astype(x, master_dtype(xp, x.dtype), copy=False)
        namespace_of(wide, *arrays.values(), names=[name, *arrays])
        if wide.dtype != x.dtype and x.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but {type(self).__name__} was built for {self.dtype_name}; "
                            "mixed float dtypes are not promoted silently, cast one of them")
        return xp, wide

    def _arrays(self) -> dict[str, Array | None]:
        """The layer's arrays an input must match (library, device, dtype)."""
        return {"weight": None if self.weight is None else self.weight.data,
                "bias": None if self.bias is None else self.bias.data}

    @fill_doc(x_shape="the layer's input shape (see the class)", y_shape="``x``'s shape",
              bad_x="has the wrong shape for the layer, or a batch too small for its statistics")
    def forward(self, x):
        """Standardize ``x`` and apply the affine map; in training mode keep what backward needs.

        {layer_forward}
        """
        xp, wide = self._widened(x, "x", self._arrays())
        dtype, x = x.dtype, wide
        self._check_input(x)
        x_hat, inv_std, view = self._standardize(xp, x)
        shape = self._param_shape(x)
        self._cache = (x_hat, inv_std, view, shape) if self.training else None
        y = x_hat
        if self.weight is not None:
            y = y * xp.reshape(self.weight.data, shape)
        if self.bias is not None:
            y = y + xp.reshape(self.bias.data, shape)
        return xp.astype(y, dtype, copy=False)

    @fill_doc()
    def backward(self, grad_output):
        """dL/dx through the statistics; dL/dweight and dL/dbias (when present) have the parameters' shapes.

        {layer_backward}
        """
        x_hat, inv_std, view, shape = self._need_cache(self._cache)
        xp, wide = self._widened(grad_output, "grad_output", {"x": x_hat})
        dtype, grad_output = grad_output.dtype, wide
        self._check_grad_shape(grad_output, tuple(x_hat.shape))
        self._cache = None
        summed = tuple(i for i, s in enumerate(shape) if s == 1)        # the axes the parameters do not vary on
        g = grad_output
        if self.bias is not None:
            self.bias.grad += xp.reshape(xp.sum(grad_output, axis=summed), self.bias.shape)
        if self.weight is not None:
            self.weight.grad += xp.reshape(xp.sum(grad_output * x_hat, axis=summed), self.weight.shape)
            g = grad_output * xp.reshape(self.weight.data, shape)
        if view is not None:
            g, x_hat = xp.reshape(g, view), xp.reshape(x_hat, view)
        mean_g, mean_gx = self._grad_means(xp, g, x_hat, self._axes(x_hat))
        return xp.astype(xp.reshape(inv_std * (g - mean_g - x_hat * mean_gx), tuple(grad_output.shape)), dtype,
                         copy=False)

    def _grad_means(self, xp, g, x_hat, axes: tuple[int, ...]):
        """(mean(g), mean(g * x_hat)) over the statistics' ``axes``, kept as size-1 axes."""
        return xp.mean(g, axis=axes, keepdims=True), xp.mean(g * x_hat, axis=axes, keepdims=True)

    def _check_input(self, x) -> None:  # pragma: no cover - every normalization overrides it
        raise NotImplementedError

    def _param_shape(self, x) -> tuple[int, ...]:  # pragma: no cover
        raise NotImplementedError

    def _axes(self, x) -> tuple[int, ...]:  # pragma: no cover
        raise NotImplementedError

    def _standardize(self, xp, x):  # pragma: no cover
        raise NotImplementedError


# -- BatchNorm ----------------------------------------------------------------------------------------
class _BatchNorm(_Normalization):
    """BatchNorm1d/2d/3d: ``ranks`` are the accepted input ranks, ``layout`` names them for errors."""

    ranks: tuple[int, ...]
    layout: str
    running_mean: Array | None
    running_var: Array | None
    num_batches_tracked: Array | None

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, *,
                 backend=None, device=None, dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        self.num_features = c = positive_int("num_features", num_features)
        self.eps = positive_real("eps", eps)
        self.momentum = None if momentum is None else check_real("momentum", momentum, 0.0, 1.0)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        self._make_affine((c,), self.affine, self.affine)
        track = self.track_running_stats
        if track:
            claim_elements(self, (c,), (c,), ())
        self.register_buffer("running_mean", self.backend.asarray(np.zeros(c), dtype=self.stats_dtype) if track
                             else None)
        self.register_buffer("running_var", self.backend.asarray(np.ones(c), dtype=self.stats_dtype) if track
                             else None)
        self.register_buffer("num_batches_tracked",
                             self.backend.asarray(np.zeros((), dtype=np.int64)) if track else None)

    def _arrays(self) -> dict[str, Array | None]:
        return {**super()._arrays(), "running_mean": self.running_mean}

    def _check_input(self, x) -> None:
        if x.ndim not in self.ranks or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) expects x of shape "
                             f"{self.layout.format(c=self.num_features)}, got {tuple(x.shape)}")

    def _param_shape(self, x) -> tuple[int, ...]:
        return (1, self.num_features) + (1,) * (x.ndim - 2)

    def _axes(self, x) -> tuple[int, ...]:
        return (0, *range(2, x.ndim))

    def _standardize(self, xp, x):
        axes, shape = self._axes(x), self._param_shape(x)
        if self.running_mean is not None and self.running_var is not None and not self.training:
            inv_std = xp.reshape(1.0 / xp.sqrt(self.running_var + self.eps), shape)
            return (x - xp.reshape(self.running_mean, shape)) * inv_std, inv_std, None
        x_hat, inv_std, mean, var, count = self._batch_standardize(xp, x, axes)
        seen = self.num_batches_tracked
        if self.training and seen is not None and self.running_mean is not None and self.running_var is not None:
            self.num_batches_tracked = seen = seen + 1
            # momentum None: the cumulative average, as torch (one host read of the counter per batch)
            m = 1.0 / float(seen) if self.momentum is None else self.momentum
            c = self.num_features
            self.running_mean = (1 - m) * self.running_mean + m * xp.reshape(mean, (c,))
            self.running_var = (1 - m) * self.running_var + (m * count / (count - 1)) * xp.reshape(var, (c,))
        return x_hat, inv_std, None

    def _batch_standardize(self, xp, x, axes: tuple[int, ...]):
        """(x_hat, inv_std, mean, var, values per channel) from the statistics of this batch."""
        count = math.prod(x.shape) // self.num_features
        self._check_count(count, x)
        return (*_standardize(xp, x, axes, self.eps), count)

    @fill_doc()
    def backward(self, grad_output):
        """dL/dx through the batch statistics; dL/dweight and dL/dbias (when present), shape (C,).

        The parameters vary along the axis the statistics do not cover, so the per-channel sums of dL/dy and
        dL/dy * x_hat give the parameters' gradients and both means of the formula at once (seven passes
        over x's size instead of eleven).

        {layer_backward}
        """
        x_hat, inv_std, _, shape = self._need_cache(self._cache)
        xp, wide = self._widened(grad_output, "grad_output", {"x": x_hat})
        dtype, grad_output = grad_output.dtype, wide
        self._check_grad_shape(grad_output, tuple(x_hat.shape))
        self._cache = None
        axes = self._axes(x_hat)
        sum_g, sum_gx = xp.sum(grad_output, axis=axes), xp.sum(grad_output * x_hat, axis=axes)     # (C,) each
        if self.bias is not None:
            self.bias.grad += sum_g
        if self.weight is not None:
            self.weight.grad += sum_gx
        sum_g, sum_gx, count = self._global_sums(xp, sum_g, sum_gx, math.prod(x_hat.shape) // self.num_features)
        scale = inv_std if self.weight is None else inv_std * xp.reshape(self.weight.data, shape)
        grad_input = ((grad_output - x_hat * xp.reshape(sum_gx / count, shape)) * scale
                      - xp.reshape(sum_g / count, shape) * scale)
        return xp.astype(grad_input, dtype, copy=False)

    def _global_sums(self, xp, sum_g, sum_gx, count: int):
        """(sum of dL/dy, sum of dL/dy * x_hat, values per channel) over the batch the statistics came from."""
        return sum_g, sum_gx, count

    def _check_count(self, count: int, x) -> None:
        if count < (2 if self.training else 1):
            raise ValueError(f"{type(self).__name__} needs more than 1 value per channel in training (and one "
                             f"without running statistics), got x of shape {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}, backend={self.backend.name!r}")


_BATCHNORM_DOC = """y = (x - mean) / sqrt(var + eps) * weight + bias per channel of x {shape}.

    As ``torch.nn.BatchNorm{nd}d``.  Training normalizes with the batch's mean and biased variance
    over {over} and updates the buffers ``running_mean``/``running_var`` (unbiased variance) by
    ``r = (1 - momentum) r + momentum s``; eval normalizes with the running statistics.  Without
    ``track_running_stats`` the batch statistics serve in eval too and the buffers are None (and not
    saved).  ``weight`` (C,) starts at 1, ``bias`` (C,) at 0.

    Parameters
    ----------
    num_features : int
        Number of channels ``C``.
    eps : float, default 1e-5
        Added to the variance before the square root; > 0.
    momentum : float or None, default 0.1
        Weight of the new batch statistics in the running averages, in [0, 1]; None: the cumulative
        average, ``1 / num_batches_tracked``.
    affine : bool, default True
        Whether the layer has the learnable per-channel ``weight`` and ``bias`` (else both are None).
    track_running_stats : bool, default True
        Whether to keep running statistics for eval.
    {backend_device_dtype}

    Attributes
    ----------
    weight, bias : Parameter or None
        ``(C,)`` scale and shift (None without ``affine``).
    running_mean, running_var : array or None
        ``(C,)`` buffers starting at 0 and 1, saved by ``state_dict()`` (None without ``track_running_stats``).
    num_batches_tracked : array or None
        0-d int64 buffer counting the training batches seen (None without ``track_running_stats``).

    Raises
    ------
    {raises_unavailable}
    ValueError
        If ``num_features`` is not a positive int, ``eps`` is not > 0, ``momentum`` is outside [0, 1],
        {bad_backend}.
    TypeError
        If ``eps`` or ``momentum`` is not a real number (or None for ``momentum``).
"""
_BN_ROLE = ("Floating dtype of the inputs and outputs, and of the parameters and running statistics (float32 for "
            "a float16/bfloat16 layer).")
_NORM_ROLE = "Floating dtype of the inputs, outputs and parameters (float32 parameters for a float16/bfloat16 layer)."


@fill_doc(body=_BATCHNORM_DOC, nd="1", shape="(N, C) or (N, C, L)", over="N (and L)", dtype_role=_BN_ROLE)
class BatchNorm1d(_BatchNorm):
    """{body}
    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> bn = nn.BatchNorm1d(3)
    >>> y = bn(np.array([[1.0, 2.0, 3.0], [3.0, 6.0, 9.0]], dtype=np.float32))
    >>> y.round(3).tolist()
    [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]
    >>> [round(m, 3) for m in bn.running_mean.tolist()], bn(np.ones((4, 3, 5), dtype=np.float32)).shape
    ([0.2, 0.4, 0.6], (4, 3, 5))
    """

    ranks, layout = (2, 3), "(N, {c}) or (N, {c}, L)"


@fill_doc(body=_BATCHNORM_DOC, nd="2", shape="(N, C, H, W)", over="(N, H, W)", dtype_role=_BN_ROLE)
class BatchNorm2d(_BatchNorm):
    """{body}
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
    >>> sorted(nn.BatchNorm2d(2, track_running_stats=False).state_dict())
    ['bias', 'weight']
    """

    ranks, layout = (4,), "(N, {c}, H, W)"


@fill_doc(body=_BATCHNORM_DOC, nd="3", shape="(N, C, D, H, W)", over="(N, D, H, W)", dtype_role=_BN_ROLE)
class BatchNorm3d(_BatchNorm):
    """{body}
    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> bn = nn.BatchNorm3d(2, momentum=None)           # running statistics: the plain average of the batches
    >>> for shift in (0.0, 2.0):
    ...     _ = bn(np.full((1, 2, 2, 2, 2), shift, dtype=np.float32))
    >>> bn.running_mean.tolist(), int(bn.num_batches_tracked)
    ([1.0, 1.0], 2)
    """

    ranks, layout = (5,), "(N, {c}, D, H, W)"


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, across the ranks of ``comm``.

    As ``torch.nn.SyncBatchNorm``: x ``(N, C, *)`` on each rank; in training the mean and the biased variance
    per channel are taken over every rank's batch (two small allreduces: the sums and the count, then the
    squared deviations from the global mean), and backward sums ``g`` and ``g * x_hat`` over every rank (one
    allreduce), so that N ranks compute exactly what one BatchNorm computes on their concatenated batches.
    Eval uses the running statistics, which are updated from the global statistics and therefore stay equal
    on every rank.  Build it from a model's BatchNorm layers with :meth:`convert_sync_batchnorm`.

    Parameters
    ----------
    num_features, eps, momentum, affine, track_running_stats
        As :class:`BatchNorm2d`.
    comm : communicator or None, default None
        Anything with ``size`` and ``allreduce(list_of_arrays) -> list`` (sum), e.g. one from
        :func:`xpconv.distributed.init_communicator`; None (or size 1): the statistics of the local batch,
        exactly as :class:`BatchNorm2d`.
    backend, device, dtype
        As :class:`BatchNorm2d`.

    Raises
    ------
    ValueError
        As :class:`BatchNorm2d`; in training, also when the global batch has one value per channel.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> x = np.arange(16, dtype=np.float32).reshape(2, 2, 2, 2)
    >>> bool(np.array_equal(nn.SyncBatchNorm(2)(x), nn.BatchNorm2d(2)(x)))     # one process: BatchNorm
    True
    """

    ranks, layout = (2, 3, 4, 5), "(N, {c}, *)"

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, *, comm=None,
                 backend=None, device=None, dtype="float32"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, backend=backend, device=device,
                         dtype=dtype)
        self.comm = comm
        self._global_count = 0

    @property
    def _synced(self) -> bool:
        """Statistics across ranks: in training only (as torch: eval without running statistics, where each
        rank may see a different number of batches, uses the local batch's)."""
        return self.training and self.comm is not None and self.comm.size > 1

    def _batch_standardize(self, xp, x, axes: tuple[int, ...]):
        if not self._synced:
            return super()._batch_standardize(xp, x, axes)
        shape = self._param_shape(x)
        local = math.prod(x.shape) // self.num_features
        counted = xp.asarray([float(local)], dtype=x.dtype, device=self.backend.device)
        total, counted = self.comm.allreduce([xp.sum(x, axis=axes), counted])
        count = round(float(counted[0]))                                   # the global values per channel
        self._check_count(count, x)
        mean = xp.reshape(total / count, shape)
        centered = x - mean
        (squares,) = self.comm.allreduce([xp.sum(centered * centered, axis=axes)])
        var = xp.reshape(squares / count, shape)
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        self._global_count = count
        return centered * inv_std, inv_std, mean, var, count

    def _global_sums(self, xp, sum_g, sum_gx, count: int):
        if not self._synced:
            return super()._global_sums(xp, sum_g, sum_gx, count)
        sum_g, sum_gx = self.comm.allreduce([sum_g, sum_gx])
        return sum_g, sum_gx, self._global_count

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, comm=None) -> Module:
        """``module`` with every BatchNorm1d/2d/3d inside it replaced by a SyncBatchNorm on ``comm``.

        The new layers take over the old ones' Parameter objects (an optimizer built before stays valid) and
        running statistics.  Containers are changed in place and returned; a BatchNorm ``module`` itself is
        returned converted.
        """
        if isinstance(module, _BatchNorm) and not isinstance(module, cls):
            sync = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                       comm=comm, backend=module.backend, dtype=module.dtype_name)
            sync.weight, sync.bias = module.weight, module.bias
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(sync, name, getattr(module, name))
            sync.training = module.training
            return sync
        for name, child in list(module._modules.items()):
            converted = cls.convert_sync_batchnorm(child, comm)
            if converted is not child:                      # replaced in place: a Sequential keeps its order
                module._modules[name] = converted
                object.__setattr__(module, name, converted)
        return module


# -- LayerNorm and GroupNorm --------------------------------------------------------------------------
@fill_doc(dtype_role=_NORM_ROLE)
class LayerNorm(_Normalization):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last ``len(normalized_shape)`` axes.

    As ``torch.nn.LayerNorm``: x ``(*, *normalized_shape)``, statistics per leading index, the same in
    training and eval (no running statistics).  ``weight`` starts at 1 and ``bias`` at 0, both of shape
    ``normalized_shape``.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The trailing shape normalized over, each >= 1.
    eps : float, default 1e-5
        Added to the variance before the square root; > 0.
    elementwise_affine : bool, default True
        Whether the layer has the learnable ``weight`` (and ``bias``); else both are None.
    bias : bool, default True
        Whether the affine map has a ``bias`` (with ``elementwise_affine``).
    {backend_device_dtype}

    Raises
    ------
    {raises_unavailable}
    ValueError
        If ``normalized_shape`` is empty or holds a value < 1, ``eps`` is not > 0,
        {bad_backend}.
    TypeError
        If ``normalized_shape`` holds a non-int or ``eps`` is not a real number.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> ln = nn.LayerNorm(4)
    >>> y = ln(np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 6.0]], dtype=np.float32))
    >>> [[round(v, 3) for v in row] for row in y.tolist()]
    [[-1.342, -0.447, 0.447, 1.342], [-0.577, -0.577, -0.577, 1.732]]
    >>> bool(np.allclose(ln.backward(np.ones_like(y)), 0, atol=1e-6)), ln.bias.grad.tolist()
    (True, [2.0, 2.0, 2.0, 2.0])
    >>> nn.LayerNorm((3, 4), bias=False)(np.ones((2, 3, 4), dtype=np.float32)).shape
    (2, 3, 4)
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, *, backend=None, device=None,
                 dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        shape = (normalized_shape,) if not isinstance(normalized_shape, (tuple, list)) else tuple(normalized_shape)
        if not shape:
            raise ValueError("normalized_shape must hold at least one size, got ()")
        self.normalized_shape = int_tuple("normalized_shape", shape, len(shape), 1)
        self.eps = positive_real("eps", eps)
        self.elementwise_affine = bool(elementwise_affine)
        self._make_affine(self.normalized_shape, self.elementwise_affine, self.elementwise_affine and bool(bias))

    def _check_input(self, x) -> None:
        k = len(self.normalized_shape)
        if x.ndim < k or tuple(x.shape[x.ndim - k:]) != self.normalized_shape:
            raise ValueError(f"LayerNorm({self.normalized_shape}) expects x of shape (*, "
                             f"{', '.join(map(str, self.normalized_shape))}), got {tuple(x.shape)}")

    def _param_shape(self, x) -> tuple[int, ...]:
        return (1,) * (x.ndim - len(self.normalized_shape)) + self.normalized_shape

    def _axes(self, x) -> tuple[int, ...]:
        return tuple(range(x.ndim - len(self.normalized_shape), x.ndim))

    def _standardize(self, xp, x):
        x_hat, inv_std, _, _ = _standardize(xp, x, self._axes(x), self.eps)
        return x_hat, inv_std, None

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


@fill_doc(dtype_role=_NORM_ROLE)
class GroupNorm(_Normalization):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, statistics per sample and group of channels.

    As ``torch.nn.GroupNorm``: x ``(N, C, *)``; the C channels are split into ``num_groups`` groups of
    consecutive channels and each (sample, group) is standardized over its channels and positions, the
    same in training and eval.  ``weight`` (C,) starts at 1 and ``bias`` (C,) at 0.

    Parameters
    ----------
    num_groups : int
        Number of groups ``G``; must divide ``num_channels``.
    num_channels : int
        Number of channels ``C``.
    eps : float, default 1e-5
        Added to the variance before the square root; > 0.
    affine : bool, default True
        Whether the layer has the learnable per-channel ``weight`` and ``bias`` (else both are None).
    {backend_device_dtype}

    Raises
    ------
    {raises_unavailable}
    ValueError
        If ``num_groups`` or ``num_channels`` is not a positive int, ``num_groups`` does not divide
        ``num_channels``, ``eps`` is not > 0,
        {bad_backend}.
    TypeError
        If ``eps`` is not a real number.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> gn = nn.GroupNorm(2, 4)
    >>> x = np.array([[1.0, 3.0, 10.0, 30.0]], dtype=np.float32)      # groups (1, 3) and (10, 30)
    >>> gn(x).round(3).tolist()
    [[-1.0, 1.0, -1.0, 1.0]]
    >>> gn(np.ones((2, 4, 3, 3), dtype=np.float32)).shape
    (2, 4, 3, 3)
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, *, backend=None, device=None,
                 dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        self.num_groups = positive_int("num_groups", num_groups)
        self.num_channels = positive_int("num_channels", num_channels)
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_groups={self.num_groups} must divide num_channels={self.num_channels}")
        self.eps = positive_real("eps", eps)
        self.affine = bool(affine)
        self._make_affine((self.num_channels,), self.affine, self.affine)

    def _check_input(self, x) -> None:
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"GroupNorm({self.num_groups}, {self.num_channels}) expects x of shape "
                             f"(N, {self.num_channels}, *), got {tuple(x.shape)}")

    def _param_shape(self, x) -> tuple[int, ...]:
        return (1, self.num_channels) + (1,) * (x.ndim - 2)

    def _axes(self, x) -> tuple[int, ...]:
        return (2,)                                                        # of the (N, G, C/G * prod(*)) view

    def _standardize(self, xp, x):
        view = (x.shape[0], self.num_groups, math.prod(x.shape[1:]) // self.num_groups)
        x_hat, inv_std, _, _ = _standardize(xp, xp.reshape(x, view), (2,), self.eps)
        return xp.reshape(x_hat, tuple(x.shape)), inv_std, view

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
