"""Layers that only move values around: Flatten and nearest-neighbour Upsample."""
from __future__ import annotations

import math
import numbers

from .._docstrings import STATELESS, fill_doc
from .._ops import namespace_of
from ..validation import check_int, positive_int
from .module import Module

__all__ = ["Flatten", "Upsample"]


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
        self._shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def _clear_cache(self) -> None:
        self._shapes = None

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
        out = (*shape[:start], math.prod(shape[start:end + 1]), *shape[end + 1:])
        self._shapes = (shape, out) if self.training else None
        return xp.reshape(x, out)

    def backward(self, grad_output):
        """dL/dx: ``grad_output`` (the output's shape) reshaped to the forward input's shape.

        Raises RuntimeError if no forward in training mode precedes the call, TypeError if ``grad_output``
        is not a floating array, ValueError (keeping the cache) if it does not have the output's shape.
        """
        shape, out = self._need_cache(self._shapes)
        xp = namespace_of(grad_output, names=["grad_output"])
        self._check_grad_shape(grad_output, out)
        self._shapes = None
        return xp.reshape(grad_output, shape)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


_UPSAMPLE_MODES = ("nearest", "nearest-exact")   # the same for integer factors: output i reads input i // f


def _integer_factor(name: str, value) -> int:
    """A factor >= 1 that is an integer (``2`` or ``2.0``); ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value).is_integer() \
            or value < 1:
        raise ValueError(f"{name} must be an integer >= 1 (only integer scales are supported), got {value!r}")
    return int(float(value))


def _per_axis(name: str, value, integer=_integer_factor) -> tuple[int, ...]:
    """One factor or size, or a tuple/list of them, each checked by ``integer``, as a tuple."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not values:
        raise ValueError(f"{name} must not be empty")
    return tuple(integer(name, v) for v in values)


@fill_doc(**STATELESS)
class Upsample(Module):
    """Nearest-neighbour upsampling by integer factors, as ``torch.nn.Upsample(mode="nearest")``.

    x (N, C, *spatial) with 1, 2 or 3 spatial axes -> (N, C, *(s * f)): each value is repeated ``f`` times
    along each spatial axis.  Backward sums the gradient over each ``f``-block.  Only integer factors are
    supported (there ``"nearest"`` and ``"nearest-exact"`` agree); torch's interpolating modes are not.

    Parameters
    ----------
    size : int, tuple of int or None, default None
        Output spatial size (one for all axes or one per axis); each must be a multiple of the input's
        size, checked at forward.  Give exactly one of ``size`` and ``scale_factor``.
    scale_factor : int, float or tuple of them, default None
        Factor per spatial axis (one for all axes or one per axis), each an integer >= 1 (``2.0`` is 2).
    mode : {"nearest", "nearest-exact"}, default "nearest"
        The only modes supported.
    {backend_device_dtype}

    Raises
    ------
    {raises_unavailable}
    ValueError
        If neither or both of ``size`` and ``scale_factor`` are given, a factor is not an integer >= 1,
        a size is not a positive int, ``mode`` is another mode,
        {bad_backend}.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> up = nn.Upsample(scale_factor=2)
    >>> y = up(np.array([[[[1.0, 2.0]]]]))                  # (1, 1, 1, 2) -> (1, 1, 2, 4)
    >>> y.tolist()
    [[[[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]]]]
    >>> up.backward(np.ones_like(y)).tolist()              # each input value fed 2 x 2 outputs
    [[[[4.0, 4.0]]]]
    """

    def __init__(self, size=None, scale_factor=None, mode: str = "nearest", *, backend=None, device=None,
                 dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        if (size is None) == (scale_factor is None):
            raise ValueError("Upsample needs exactly one of size and scale_factor")
        if mode not in _UPSAMPLE_MODES:
            raise ValueError(f"Upsample supports mode 'nearest' (and 'nearest-exact') only, got {mode!r}")
        self.mode = mode
        self.size = None if size is None else _per_axis("size", size, positive_int)
        self.scale_factor = None if scale_factor is None else _per_axis("scale_factor", scale_factor)
        self._shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def _factors(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The factor per spatial axis for an input of ``shape`` (N, C, *spatial); ValueError if none fits."""
        nd = len(shape) - 2
        if nd not in (1, 2, 3):
            raise ValueError(f"Upsample expects x of shape (N, C, *spatial) with 1 to 3 spatial axes, got {shape}")
        given = self.size or self.scale_factor or ()
        if len(given) not in (1, nd):
            raise ValueError(f"Upsample({self.extra_repr()}) needs 1 or {nd} values for an input of shape {shape}")
        given = given * nd if len(given) == 1 else given
        if self.size is None:
            return given
        if any(o % s for o, s in zip(given, shape[2:], strict=True)):
            raise ValueError(f"Upsample(size={self.size}) needs sizes that are multiples of the input's "
                             f"{shape[2:]} (only integer scales are supported)")
        return tuple(o // s for o, s in zip(given, shape[2:], strict=True))

    def _clear_cache(self) -> None:
        self._shapes = None

    def forward(self, x):
        """y (N, C, *(s * f)): ``x`` (N, C, *s) with each value repeated f times along each spatial axis.

        Raises TypeError if ``x`` is not a floating array, ValueError if it does not have 1 to 3 spatial
        axes or the factors or sizes do not fit it.
        """
        xp = namespace_of(x, names=["x"])
        shape = tuple(x.shape)
        factors = self._factors(shape)
        spread = [shape[0], shape[1]]                                   # (N, C, s1, 1, s2, 1, ...)
        blocks = [shape[0], shape[1]]                                   # (N, C, s1, f1, s2, f2, ...)
        for s, f in zip(shape[2:], factors, strict=True):
            spread += [s, 1]
            blocks += [s, f]
        out = (shape[0], shape[1], *(s * f for s, f in zip(shape[2:], factors, strict=True)))
        self._shapes = (shape, tuple(blocks)) if self.training else None
        return xp.reshape(xp.broadcast_to(xp.reshape(x, tuple(spread)), tuple(blocks)), out)

    def backward(self, grad_output):
        """dL/dx (N, C, *s): ``grad_output`` (N, C, *(s * f)) summed over each f-block.

        Raises RuntimeError if no forward in training mode precedes the call, TypeError if ``grad_output``
        is not a floating array, ValueError (keeping the cache) if it does not have the output's shape.
        """
        shape, blocks = self._need_cache(self._shapes)
        xp = namespace_of(grad_output, names=["grad_output"])
        self._check_grad_shape(grad_output, (*shape[:2], *(blocks[i] * blocks[i + 1]
                                                           for i in range(2, len(blocks), 2))))
        self._shapes = None
        return xp.sum(xp.reshape(grad_output, blocks), axis=tuple(range(3, len(blocks), 2)))

    def extra_repr(self) -> str:
        given = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        return f"{given}, mode={self.mode!r}"
