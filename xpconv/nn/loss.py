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
    backend explicitly.
    """

    def __init__(self):
        self._cache = None

    def __call__(self, logits, labels) -> float:
        return self.forward(logits, labels)

    def forward(self, logits, labels) -> float:
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
        """dL/dlogits (N, C) = (softmax(logits) - one_hot(labels)) / N for the last call."""
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
