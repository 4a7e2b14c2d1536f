"""Losses with an explicit backward: CrossEntropyLoss, MSELoss and BCEWithLogitsLoss (PyTorch's semantics).

``loss = loss_fn(input, target)`` computes the loss and keeps dL/dinput's per-element factor;
``loss_fn.backward()`` then returns dL/dinput in the input's library, device, dtype and shape.
With ``reduction="mean"`` or ``"sum"`` the loss is a Python float (one host sync per call; ``on_device``
gives it as a 0-d array without waiting) and ``backward(grad_output=1.0)`` takes dL/dloss as a number;
with ``reduction="none"`` the loss is an array on the device and ``backward(grad_output=None)`` takes an
array of the loss's shape (None: ones).
"""
from __future__ import annotations

import contextlib
import math
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
from array_api_compat import device

from .._docstrings import fill_doc
from .._namespace import namespace
from .._ops import namespace_of
from .._typing import Array
from ..amp import master_dtype
from ..backends import Backend, is_host_data, library_of
from ..validation import check_real

__all__ = ["CrossEntropyLoss", "MSELoss", "BCEWithLogitsLoss"]

_REDUCTIONS = ("mean", "sum", "none")

_LOSS_DOC = {
    "reduction": """
        reduction : {"mean", "sum", "none"}, default "mean"
            ``"mean"``: {mean_of} as a Python float; ``"sum"``: their sum as a Python float; ``"none"``:
            the array of {per_what}, on the input's device.
        """,
    "backward_doc": """
        ``backward(grad_output=None)`` returns dL/dinput for the last call (the cache serves one backward).
        For ``"mean"``/``"sum"``, ``grad_output`` is dL/dloss as a number (None: 1.0); for ``"none"``, an
        array of the loss's shape and dtype on the input's device (None: ones).  It raises RuntimeError
        without a preceding call, TypeError/ValueError for a ``grad_output`` of the wrong kind or shape.
        """,
}


class _Loss:
    """Reduction handling and the backward cache: ``_compute`` returns the per-item loss and its factor.

    The cache is ``(factor, loss_shape, denominator, dtype)``: dL/dinput = factor * grad_output (broadcast from
    the loss's shape, padded with trailing unit axes) / denominator, in the input's ``dtype`` (the factor may
    be wider: CrossEntropyLoss computes float16/bfloat16 logits in float32, so a :class:`~xpconv.amp.GradScaler`'s
    scale multiplies it before it is rounded to float16).
    """

    def __init__(self, reduction: str) -> None:
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self._cache: tuple[Array, tuple[int, ...], Any, Any] | None = None   # denominator: float or 0-d array

    def _compute(self, input: Array, target: Any) -> tuple[Array, Array, Array | None]:  # pragma: no cover
        """(per-item loss, dloss/dinput factor, per-item weight for the mean or None) for validated inputs."""
        raise NotImplementedError

    def __call__(self, input: Array, target: Any) -> Any:
        return self.forward(input, target)

    def forward(self, input: Array, target: Any) -> Any:
        """The reduced loss (float) or the per-item losses (array, ``reduction="none"``); see the class."""
        loss = self.on_device(input, target)
        return loss if self.reduction == "none" else float(loss)

    def on_device(self, input: Array, target: Any) -> Array:
        """The loss as an array on the input's device, without waiting for it: a 0-d array for ``"mean"`` and
        ``"sum"`` (what :meth:`forward` turns into a float), the per-item losses for ``"none"``.

        A training loop that adds these up on the device and reads the sum once per logging interval keeps
        the GPU busy; :meth:`backward` works after either call.
        """
        with _on_device_of(input):
            loss, factor, weights = self._compute(input, target)
            xp = namespace(loss)
            if self.reduction == "none":
                self._cache = (factor, tuple(loss.shape), 1.0, input.dtype)
                return loss
            total = xp.sum(loss)
            denominator: Any = 1.0
            if self.reduction == "mean":              # an empty batch (or zero total weight) gives NaN, as in torch
                if weights is None:
                    denominator = float(math.prod(loss.shape)) or math.nan
                else:
                    denominator = xp.sum(weights)
                    denominator = xp.where(denominator == 0, xp.full_like(denominator, math.nan), denominator)
            self._cache = (factor, (), denominator, input.dtype)
            return total / denominator

    def backward(self, grad_output: Any = None) -> Array:
        """dL/dinput for the last call; ``grad_output`` as in the class's description."""
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward() needs a preceding loss_fn(input, target); "
                               "the cache is cleared after each backward")
        factor, loss_shape, denominator, dtype = self._cache
        with _on_device_of(factor):
            grad = self._backward(factor, loss_shape, denominator, grad_output)
            return namespace(grad).astype(grad, dtype, copy=False)

    def _backward(self, factor: Array, loss_shape: tuple[int, ...], denominator: Any, grad_output: Any) -> Array:
        xp = namespace(factor)
        if self.reduction == "none":
            if grad_output is None:
                grad_output = xp.ones(loss_shape, dtype=factor.dtype, device=device(factor))
            namespace_of(grad_output, factor, names=["grad_output", "the loss"])
            if tuple(grad_output.shape) != loss_shape:
                raise ValueError(f"{type(self).__name__}.backward() expects grad_output of the loss's shape "
                                 f"{loss_shape}, got {tuple(grad_output.shape)}")
            self._cache = None
            return factor * xp.reshape(grad_output, loss_shape + (1,) * (factor.ndim - len(loss_shape)))
        scale = 1.0 if grad_output is None else check_real("grad_output", grad_output)
        self._cache = None
        return factor * (scale / denominator)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reduction={self.reduction!r})"


@fill_doc(mean_of="the per-sample losses' mean (weighted: divided by the sum of ``weight[labels]``)",
          per_what="per-sample losses (N,)", **_LOSS_DOC)
class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy of logits (N, C) against class labels (N,), as ``torch.nn.CrossEntropyLoss``.

    Per sample, with ``log_p = log_softmax(logits)`` (computed with the log-sum-exp shift), class weights
    ``w`` and smoothing ``eps`` (torch's formula)::

        l[n] = -(1 - eps) * w[y[n]] * log_p[n, y[n]] - (eps / C) * sum_c w[c] * log_p[n, c]

    ``"mean"`` divides the sum by ``sum_n w[y[n]]`` (N without weights); an empty batch gives NaN, as in
    torch.  dL/dlogits = ``softmax * sum_c a[n, c] - a`` per sample, with ``a[n, c] = w[c] * ((1 - eps) *
    one_hot + eps / C)``.  Labels are an integer array of the logits' library, or a NumPy array / list,
    copied to the logits' backend.  Class-index targets only (no probabilities, no ``ignore_index``, no
    extra spatial axes).

    {backward_doc}

    Parameters
    ----------
    weight : array, list or None, default None
        Class weights ``(C,)``: an array of the logits' library and dtype, or a NumPy array / list (copied
        to the logits' backend and dtype).
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"``: {mean_of} as a Python float; ``"sum"``: their sum as a Python float; ``"none"``: the
        array of {per_what}, on the logits' device.
    label_smoothing : float, default 0.0
        ``eps`` in [0, 1]: the target mixes the one-hot label with the uniform distribution.

    Raises
    ------
    ValueError
        If ``reduction`` is unknown, ``label_smoothing`` is outside [0, 1] or ``weight`` is not 1-D.
    TypeError
        If ``label_smoothing`` is not a number or ``weight`` is not an array or list of numbers.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> loss_fn = nn.CrossEntropyLoss()
    >>> loss = loss_fn(np.zeros((2, 3), dtype=np.float32), [0, 1])      # log(3) for uniform logits
    >>> round(loss, 4)
    1.0986
    >>> grad = loss_fn.backward()                       # (softmax - one_hot) / N
    >>> grad.shape, np.round(grad * 6, 4).tolist()
    ((2, 3), [[-2.0, 1.0, 1.0], [1.0, -2.0, 1.0]])

    Weights, smoothing and per-sample losses:

    >>> loss_fn = nn.CrossEntropyLoss(weight=[1.0, 2.0, 0.0], reduction="none", label_smoothing=0.1)
    >>> np.round(loss_fn(np.zeros((2, 3)), [0, 1]), 4).tolist()
    [1.0986, 2.0874]
    >>> loss_fn.backward(np.array([1.0, 0.5])).shape
    (2, 3)

    A training step's backward pass starts from the loss:

    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3, seed=0))
    >>> loss_fn = nn.CrossEntropyLoss()
    >>> loss = loss_fn(model(np.ones((2, 1, 2, 2), dtype=np.float32)), np.array([2, 0]))
    >>> model.backward(loss_fn.backward()).shape
    (2, 1, 2, 2)
    """

    def __init__(self, weight: Any = None, *, reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__(reduction)
        self.weight = _host_or_array("weight", weight, ndim=1)
        self.label_smoothing = check_real("label_smoothing", label_smoothing, 0.0, 1.0)

    def forward(self, logits: Array, labels: Any) -> Any:
        """The cross-entropy of ``logits`` against ``labels``; keeps what :meth:`backward` needs.

        Parameters
        ----------
        logits : array
            ``(N, C)`` unnormalized scores, real floating, C >= 1 (N = 0 is allowed).
        labels : array or list of int
            ``(N,)`` class indices in ``[0, C)``: an integer array of the logits' library and device, or a
            NumPy array or list (copied to the logits' backend).

        Returns
        -------
        loss : float or array
            A float for ``"mean"``/``"sum"`` (NaN for ``"mean"`` of an empty batch), the per-sample losses
            ``(N,)`` for ``"none"``.

        Raises
        ------
        TypeError
            If ``logits`` is not a real floating array, ``labels`` is not integer or comes from another
            library than the logits (other than NumPy or a list), or ``weight`` has another dtype.
        ValueError
            If ``logits`` is not ``(N, C)`` with C >= 1, ``labels`` is not ``(N,)``, is on another device,
            holds a value outside ``[0, C)`` (checked for host labels; labels already on the device are not
            read back, and a sample whose label is out of range gets a NaN loss), or ``weight`` is not ``(C,)``.
        """
        return super().forward(logits, labels)

    def _compute(self, logits, labels):
        xp = namespace_of(logits, names=["logits"])
        if logits.ndim != 2 or logits.shape[1] == 0:
            raise ValueError(f"logits must have shape (N, C) with C >= 1, got {tuple(logits.shape)}")
        logits = xp.astype(logits, master_dtype(xp, logits.dtype), copy=False)   # float16/bfloat16: in float32
        n, c = logits.shape
        labels, checked = _labels_like(logits, labels, n, c)
        z = logits - xp.max(logits, axis=1, keepdims=True)
        log_p = z - xp.log(xp.sum(xp.exp(z), axis=1, keepdims=True))             # (N, C), log-sum-exp
        classes = xp.reshape(xp.arange(c, dtype=labels.dtype, device=device(logits)), (1, c))
        one_hot = xp.astype(xp.expand_dims(labels, axis=1) == classes, logits.dtype)  # (N, C)
        eps = self.label_smoothing
        a = one_hot * (1.0 - eps) + eps / c                                      # (N, C) target weights
        sample_weight = None
        if self.weight is not None:
            w = xp.reshape(_float_like(logits, self.weight, "weight", (c,)), (1, c))
            a = a * w
            sample_weight = xp.sum(one_hot * w, axis=1)                          # w[labels], (N,)
        loss = -xp.sum(a * log_p, axis=1)                                        # (N,)
        if not checked:                          # device labels out of [0, C) give NaN, as a host check would fail
            valid = (labels >= 0) & (labels < c)
            loss = xp.where(valid, loss, xp.full_like(loss, math.nan))
        factor = xp.exp(log_p) * xp.sum(a, axis=1, keepdims=True) - a            # dl[n]/dlogits[n, :]
        return loss, factor, sample_weight

    def __repr__(self) -> str:
        weight = "" if self.weight is None else f"weight={tuple(self.weight.shape)}, "
        return f"CrossEntropyLoss({weight}reduction={self.reduction!r}, label_smoothing={self.label_smoothing})"


@fill_doc(mean_of="the mean over all elements", per_what="squared errors (the input's shape)", **_LOSS_DOC)
class MSELoss(_Loss):
    """Squared error ``(input - target)^2`` per element, as ``torch.nn.MSELoss``.

    dL/dinput = ``2 * (input - target)`` times dL/dloss (divided by the element count for ``"mean"``;
    an empty input gives NaN, as in torch).  Only dL/dinput is returned; dL/dtarget is its negative.

    {backward_doc}

    Parameters
    ----------
    {reduction}

    Raises
    ------
    ValueError
        If ``reduction`` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> loss_fn = nn.MSELoss()
    >>> loss_fn(np.array([1.0, 2.0]), np.array([0.0, 0.0]))
    2.5
    >>> loss_fn.backward().tolist()
    [1.0, 2.0]
    """

    def __init__(self, *, reduction: str = "mean") -> None:
        super().__init__(reduction)

    def forward(self, input: Array, target: Array) -> Any:
        """The squared error of ``input`` against ``target``; keeps what :meth:`backward` needs.

        Parameters
        ----------
        input, target : array
            The same shape, library, device and real floating dtype.

        Returns
        -------
        loss : float or array
            A float for ``"mean"``/``"sum"``, the squared errors (input's shape) for ``"none"``.

        Raises
        ------
        TypeError
            If either is not a real floating array, or they differ in library or dtype.
        ValueError
            If they differ in shape or device.
        """
        return super().forward(input, target)

    def _compute(self, input, target):
        _check_target(input, target)
        diff = input - target
        return diff * diff, 2.0 * diff, None


@fill_doc(mean_of="the mean over all elements", per_what="per-element losses (the input's shape)", **_LOSS_DOC)
class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits, as ``torch.nn.BCEWithLogitsLoss``, in the stable log-sigmoid form.

    Per element, with ``x`` the logit, ``t`` the target and ``lw = 1 + (pos_weight - 1) * t``::

        l = (1 - t) * x + lw * softplus(-x),   softplus(-x) = max(-x, 0) + log1p(exp(-|x|))

    so ``l = -(pos_weight * t * log sigmoid(x) + (1 - t) * log(1 - sigmoid(x)))`` without overflow.
    dL/dx = ``(1 - t) - lw * sigmoid(-x)``.  Targets are floats (soft labels allowed, as in torch); an
    empty input gives NaN for ``"mean"``.  Only dL/dinput is returned.

    {backward_doc}

    Parameters
    ----------
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"``: {mean_of} as a Python float; ``"sum"``: their sum as a Python float; ``"none"``: the
        array of {per_what}, on the input's device.
    pos_weight : array, list or None, default None
        Weight of the positive term, broadcast against the input (e.g. ``(C,)`` for input (N, C)): an array
        of the input's library and dtype, or a NumPy array / list (copied to the input's backend and dtype).

    Raises
    ------
    ValueError
        If ``reduction`` is unknown.
    TypeError
        If ``pos_weight`` is not an array or list of numbers.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    >>> round(loss_fn(np.array([0.0, 1000.0]), np.array([1.0, 1.0])), 4)      # log(2) + 0, no overflow
    0.6931
    >>> loss_fn.backward().tolist()                     # sigmoid(x) - t
    [-0.5, 0.0]
    """

    def __init__(self, *, reduction: str = "mean", pos_weight: Any = None) -> None:
        super().__init__(reduction)
        self.pos_weight = _host_or_array("pos_weight", pos_weight)

    def forward(self, input: Array, target: Array) -> Any:
        """The binary cross-entropy of logits ``input`` against ``target``; keeps what :meth:`backward` needs.

        Parameters
        ----------
        input, target : array
            Logits and targets (usually in [0, 1]): the same shape, library, device and real floating dtype.

        Returns
        -------
        loss : float or array
            A float for ``"mean"``/``"sum"``, the per-element losses (input's shape) for ``"none"``.

        Raises
        ------
        TypeError
            If either is not a real floating array, they differ in library or dtype, or ``pos_weight``
            has another dtype.
        ValueError
            If they differ in shape or device, or ``pos_weight`` does not broadcast to the input's shape.
        """
        return super().forward(input, target)

    def _compute(self, x, t):
        xp = _check_target(x, t)
        e = xp.exp(-xp.abs(x))
        softplus_neg = xp.clip(-x, min=0.0) + xp.log1p(e)                        # -log sigmoid(x)
        sigmoid_neg = xp.where(x >= 0, e / (1.0 + e), 1.0 / (1.0 + e))          # sigmoid(-x)
        lw = 1.0
        if self.pos_weight is not None:
            pw = _float_like(x, self.pos_weight, "pos_weight")
            try:
                fits = np.broadcast_shapes(tuple(pw.shape), tuple(x.shape)) == tuple(x.shape)
            except ValueError:
                fits = False
            if not fits:
                raise ValueError(f"pos_weight of shape {tuple(pw.shape)} does not broadcast to the input's "
                                 f"shape {tuple(x.shape)}")
            lw = 1.0 + (pw - 1.0) * t
        return (1.0 - t) * x + lw * softplus_neg, (1.0 - t) - lw * sigmoid_neg, None

    def __repr__(self) -> str:
        pos = "" if self.pos_weight is None else f", pos_weight={tuple(self.pos_weight.shape)}"
        return f"BCEWithLogitsLoss(reduction={self.reduction!r}{pos})"


def _check_target(input: Array, target: Any) -> Any:
    """The namespace of ``input`` and ``target``, which must agree in library, device, dtype and shape."""
    xp = namespace_of(input, target, names=["input", "target"])
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(f"target must have the input's shape {tuple(input.shape)}, got {tuple(target.shape)}")
    return xp


def _host_or_array(name: str, value: Any, ndim: int | None = None) -> Any:
    """A constructor's weight: None, an array (kept), or a list / NumPy array (a float64 host copy)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.dtype.kind in "biuf"):
        value = np.array(value, dtype=np.float64)
    else:
        try:
            namespace(value)
        except TypeError:
            raise TypeError(f"{name} must be an array or a list of numbers, got {type(value).__name__}") from None
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(value.shape)}")
    return value


def _float_like(ref: Array, value: Any, name: str, shape: tuple[int, ...] | None = None) -> Array:
    """``value`` (a float64 host copy or an array) in ``ref``'s namespace, device and dtype."""
    if isinstance(value, np.ndarray):                        # the host copy the constructor made
        value = Backend.from_array(ref).asarray(value, dtype=ref.dtype)
    namespace_of(value, ref, names=[name, "the input"])
    if shape is not None and tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
    return value


def _on_device_of(a: Any) -> AbstractContextManager[Any]:
    """The device context of array ``a``'s backend (nothing for a non-array, which validation then rejects)."""
    return Backend.from_array(a).activate() if library_of(a) else contextlib.nullcontext()


def _labels_like(logits, labels, n: int, c: int):
    """Validated integer labels (N,) in the logits' namespace and device, and whether their range was checked.

    Host labels (a list or NumPy array) are range-checked on the host, before they are copied; labels already
    on the logits' device are not read back (that would make the host wait for the device).
    """
    xp = namespace(logits)
    backend = Backend.from_array(logits)
    checked = is_host_data(labels)
    if checked:
        labels = np.asarray(labels) if len(labels) else np.zeros((0,), dtype=np.int64)
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers (class indices), got dtype {labels.dtype}")
        if labels.shape == (n,) and n and (labels.min() < 0 or labels.max() >= c):
            raise ValueError(f"labels must lie in [0, {c}) for {c} classes, got values in "
                             f"[{labels.min()}, {labels.max()}]")
        labels = backend.asarray(labels)
    try:
        lxp = namespace(labels)
    except TypeError:
        raise TypeError(f"labels must be an integer array or a list, got {type(labels).__name__}") from None
    if lxp is not xp:
        raise TypeError(f"labels come from {library_of(labels) or type(labels).__name__} but logits "
                        f"from {backend.name}; pass labels of the same library or NumPy")
    if not xp.isdtype(labels.dtype, "integral"):
        raise TypeError(f"labels must be integers (class indices), got dtype {labels.dtype}")
    if tuple(labels.shape) != (n,):
        raise ValueError(f"labels must have shape ({n},) to match logits {(n, c)}, got {tuple(labels.shape)}")
    if device(labels) != device(logits):
        raise ValueError(f"labels are on {device(labels)!r} but logits on {device(logits)!r}")
    return labels, checked
