"""Layers without parameters that act elementwise or on the shape: ReLU, Flatten, Dropout."""
from __future__ import annotations

import math

import numpy as np
from array_api_compat import device

from .._docstrings import STATELESS, fill_doc
from .._ops import namespace_of
from ..backends import library_of
from ..validation import check_int, check_real
from .module import Module

__all__ = ["ReLU", "Flatten", "Dropout"]


@fill_doc(**STATELESS)
class ReLU(Module):
    """Rectified linear unit, ``y = max(x, 0)`` elementwise, as ``torch.nn.ReLU``.

    y = max(x, 0), any shape, as torch.relu: NaN stays NaN; the gradient is 0 where x <= 0 (at 0 too)
    and passes where x > 0 or x is NaN.

    Parameters
    ----------
    {backend_device_dtype}

    Raises
    ------
    {raises_unavailable}
    ValueError
        If {bad_backend}.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> relu = nn.ReLU()
    >>> x = np.array([[-1.0, 0.0, 2.0]], dtype=np.float32)
    >>> relu(x).tolist()
    [[0.0, 0.0, 2.0]]
    >>> relu.backward(np.ones_like(x)).tolist()
    [[0.0, 0.0, 1.0]]
    """

    def __init__(self, *, backend=None, device=None, dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        self._mask = None

    def _clear_cache(self) -> None:
        self._mask = None

    def forward(self, x):
        """``max(x, 0)``, ``x``'s shape; in training mode keep where the gradient passes.

        Raises TypeError if ``x`` is not an array with a real floating dtype.
        """
        xp = namespace_of(x, names=["x"])
        self._mask = xp.logical_not(x <= 0) if self.training else None
        return xp.where(x < 0, xp.zeros_like(x), x)

    def backward(self, grad_output):
        """dL/dx: ``grad_output`` where the forward input was > 0 (or NaN), 0 elsewhere.

        Raises RuntimeError if no forward in training mode precedes the call, TypeError if
        ``grad_output`` is not a floating array.
        """
        mask = self._need_cache(self._mask)
        self._mask = None
        xp = namespace_of(grad_output, names=["grad_output"])
        return xp.where(mask, grad_output, xp.zeros_like(grad_output))


@fill_doc(**STATELESS)
class Flatten(Module):
    """Merge axes ``start_dim..end_dim`` into one: (N, C, H, W) -> (N, C*H*W) by default.

    As ``torch.nn.Flatten``; backward reshapes the gradient back to the input's shape.

    Parameters
    ----------
    start_dim : int, default 1
        First axis to merge (negative counts from the end).
    end_dim : int, default -1
        Last axis to merge, inclusive (negative counts from the end).
    {backend_device_dtype}

    Raises
    ------
    {raises_unavailable}
    ValueError
        If ``start_dim`` or ``end_dim`` is not an int,
        {bad_backend}.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> flat = nn.Flatten()
    >>> y = flat(np.ones((2, 3, 4, 5), dtype=np.float32))
    >>> y.shape
    (2, 60)
    >>> flat.backward(np.ones_like(y)).shape
    (2, 3, 4, 5)
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1, *, backend=None, device=None, dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        self.start_dim, self.end_dim = check_int("start_dim", start_dim), check_int("end_dim", end_dim)
        self._shape: tuple[int, ...] | None = None

    def _clear_cache(self) -> None:
        self._shape = None

    def forward(self, x):
        """``x`` with axes ``start_dim..end_dim`` merged.

        Raises TypeError if ``x`` is not a floating array, ValueError if the axes do not fit its rank.
        """
        xp = namespace_of(x, names=["x"])
        shape = tuple(x.shape)
        start, end = (d + len(shape) if d < 0 else d for d in (self.start_dim, self.end_dim))
        if not 0 <= start <= end < len(shape):
            raise ValueError(f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) does not fit an "
                             f"input of shape {shape}")
        self._shape = shape if self.training else None
        return xp.reshape(x, (*shape[:start], math.prod(shape[start:end + 1]), *shape[end + 1:]))

    def backward(self, grad_output):
        """dL/dx: ``grad_output`` reshaped to the forward input's shape.

        Raises RuntimeError if no forward in training mode precedes the call.
        """
        shape = self._need_cache(self._shape)
        self._shape = None
        return namespace_of(grad_output, names=["grad_output"]).reshape(grad_output, shape)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


@fill_doc(backend_role="Where the masks are put; training inputs must live there:",
          dtype_role=STATELESS["dtype_role"])
class Dropout(Module):
    """In training, zero each element with probability ``p`` and scale the rest by 1/(1-p); identity in eval.

    As ``torch.nn.Dropout``.  Masks come from a NumPy generator seeded by ``seed`` and are copied to the
    backend, so one seed gives the same masks on every backend (at the cost of one host-to-device copy
    per forward on a GPU).  Backward multiplies the gradient by the same mask.

    Parameters
    ----------
    p : float, default 0.5
        Probability of zeroing an element, in [0, 1] (``p = 1`` zeroes everything).
    {backend_device_dtype}
    seed : int or None, default None
        Seed of the mask generator; None: fresh entropy.

    Raises
    ------
    {raises_unavailable}
    TypeError
        If ``p`` is not a real number.
    ValueError
        If ``p`` is outside [0, 1],
        {bad_backend}.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> drop = nn.Dropout(0.5, seed=0)
    >>> y = drop(np.ones((4, 8), dtype=np.float32))
    >>> sorted(set(y.ravel().tolist()))                 # dropped, or kept and scaled by 1 / (1 - p)
    [0.0, 2.0]
    >>> bool((drop.backward(np.ones_like(y)) == y).all())
    True
    >>> drop.eval()(np.ones((2, 3), dtype=np.float32)).tolist()
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """

    def __init__(self, p: float = 0.5, *, backend=None, device=None, dtype="float32", seed=None):
        super().__init__(backend=backend, device=device, dtype=dtype)
        self.p = check_real("dropout probability p", p, 0.0, 1.0)
        self.rng = np.random.default_rng(seed)
        self._mask = None

    def _clear_cache(self) -> None:
        self._mask = None

    def forward(self, x):
        """``x`` times a fresh scaled keep-mask in training mode; ``x`` itself in eval mode.

        Raises TypeError if ``x`` is not a floating array, ValueError (training only) if it is not on the
        layer's backend and device.
        """
        xp = namespace_of(x, names=["x"])
        if not self.training:
            return x
        if xp is not self.backend.xp or device(x) != self.backend.device:
            raise ValueError(f"x is a {library_of(x)} array on {device(x)!r} but this Dropout "
                             f"draws its masks on {self.backend}; move the model with .to(...)")
        keep = self.backend.asarray(self.rng.random(tuple(x.shape)) >= self.p)   # bool, x's shape
        self._mask = xp.astype(keep, x.dtype) * (1.0 / (1.0 - self.p) if self.p < 1 else 0.0)
        return x * self._mask

    def backward(self, grad_output):
        """dL/dx: ``grad_output`` times the last forward's mask.

        Raises RuntimeError if no forward in training mode precedes the call, TypeError/ValueError if
        ``grad_output`` is not a floating array of the mask's library, dtype and device.
        """
        mask = self._need_cache(self._mask)
        self._mask = None
        namespace_of(grad_output, mask, names=["grad_output", "the dropout mask"])
        return grad_output * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"
