"""Softmax cross-entropy on logits, with an explicit backward."""
from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace, device

from .._ops import namespace_of
from ..backends import Backend, library_of

__all__ = ["CrossEntropyLoss"]


class CrossEntropyLoss:
    """Mean of ``-log softmax(logits)[n, labels[n]]`` over the batch, as ``torch.nn.CrossEntropyLoss()``.

    ``loss = loss_fn(logits, labels)`` takes logits (N, C) and integer labels (N,) in [0, C) and
    returns a Python float; ``loss_fn.backward()`` then returns dL/dlogits (N, C).  Labels are an
    integer array of the logits' library, or a NumPy array / list, which is copied to the logits'
    backend explicitly.  The constructor takes no arguments (no weights, reduction ``"mean"``).

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

    A training step's backward pass starts from the loss:

    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3, seed=0))
    >>> loss = loss_fn(model(np.ones((2, 1, 2, 2), dtype=np.float32)), np.array([2, 0]))
    >>> model.backward(loss_fn.backward()).shape
    (2, 1, 2, 2)
    >>> model[1].weight.grad.shape
    (3, 4)
    """

    def __init__(self):
        self._cache = None

    def __call__(self, logits, labels) -> float:
        return self.forward(logits, labels)

    def forward(self, logits, labels) -> float:
        """The mean cross-entropy of ``logits`` against ``labels``; keeps what :meth:`backward` needs.

        Parameters
        ----------
        logits : array
            ``(N, C)`` unnormalized scores, real floating, N, C >= 1.
        labels : array or list of int
            ``(N,)`` class indices in ``[0, C)``: an integer array of the logits' library and device, or a
            NumPy array or list (copied to the logits' backend).

        Returns
        -------
        loss : float
            ``mean_n(-log softmax(logits)[n, labels[n]])``.

        Raises
        ------
        TypeError
            If ``logits`` is not a real floating array, or ``labels`` is not integer or comes from another
            library than the logits (other than NumPy or a list).
        ValueError
            If ``logits`` is not ``(N, C)`` with N, C >= 1, ``labels`` is not ``(N,)``, is on another device,
            or holds a value outside ``[0, C)``.
        """
        xp = namespace_of(logits, names=["logits"])
        if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
            raise ValueError(f"logits must have shape (N, C) with N, C >= 1, got {tuple(logits.shape)}")
        n, c = logits.shape
        labels = _labels_like(logits, labels, n, c)
        z = logits - xp.max(logits, axis=1, keepdims=True)
        log_p = z - xp.log(xp.sum(xp.exp(z), axis=1, keepdims=True))             # (N, C), log-sum-exp
        classes = xp.reshape(xp.arange(c, dtype=labels.dtype, device=device(logits)), (1, c))
        one_hot = xp.astype(xp.expand_dims(labels, axis=1) == classes, logits.dtype)  # (N, C)
        self._cache = (xp.exp(log_p), one_hot)
        return float(-xp.sum(one_hot * log_p) / n)

    def backward(self):
        """dL/dlogits (N, C) = (softmax(logits) - one_hot(labels)) / N for the last call.

        Returns
        -------
        grad_logits : array
            ``(N, C)``, in the logits' namespace, device and dtype; feed it to the model's ``backward``.

        Raises
        ------
        RuntimeError
            If no forward call precedes it (the cache is cleared after each backward).
        """
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss.backward() needs a preceding loss_fn(logits, labels)")
        p, one_hot = self._cache
        self._cache = None
        return (p - one_hot) / p.shape[0]

    def __repr__(self) -> str:
        return "CrossEntropyLoss()"


def _labels_like(logits, labels, n: int, c: int):
    """Validated integer labels (N,) in the logits' namespace and device."""
    xp = array_namespace(logits)
    backend = Backend.from_array(logits)
    if isinstance(labels, (list, tuple)) or (isinstance(labels, np.ndarray) and library_of(labels) != backend.name):
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers (class indices), got dtype {labels.dtype}")
        labels = backend.asarray(labels)
    try:
        lxp = array_namespace(labels)
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
    lo, hi = int(xp.min(labels)), int(xp.max(labels))
    if lo < 0 or hi >= c:
        raise ValueError(f"labels must lie in [0, {c}) for {c} classes, got values in [{lo}, {hi}]")
    return labels
