"""Dropout and Dropout2d: random masks drawn on the layer's device by its library's seeded generator.

Both draw one uniform number per mask entry (``backend.random(generator, mask_shape) >= p``) where the input
lives, so nothing is copied to the device per forward.  One seed gives the same masks every run on the same
backend, but different masks on different backends (NumPy's PCG64, torch's generators, CuPy's cuRAND): each
library has its own generator.  Dropout's mask has the input's shape, Dropout2d's one entry per channel
(N, C, 1, 1), broadcast over H and W.  The generator's state is saved and restored with a checkpoint
(:meth:`Dropout.random_state`).
"""
from __future__ import annotations

from typing import Any

from array_api_compat import device

from .._docstrings import STATELESS, fill_doc
from .._ops import namespace_of
from ..backends import library_of
from ..validation import check_int, check_real
from .module import Module

__all__ = ["Dropout", "Dropout2d"]

_DROPOUT_SECTIONS = """
    Parameters
    ----------
    p : float, default 0.5
        Probability of zeroing {unit}, in [0, 1] (``p = 1`` zeroes everything).
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
"""


@fill_doc(sections=_DROPOUT_SECTIONS, unit="an element",
          backend_role="Where the masks are put; training inputs must live there:",
          dtype_role=STATELESS["dtype_role"])
class Dropout(Module):
    """In training, zero each element with probability ``p`` and scale the rest by 1/(1-p); identity in eval.

    As ``torch.nn.Dropout``.  Masks are drawn on the backend's device by the library's generator seeded by
    ``seed``: the same seed gives the same masks on the same backend, different masks on another library.
    Backward multiplies the gradient by the same mask.

    {sections}

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
        self.seed = seed if seed is None else check_int("seed", seed, 0)
        self._generator = (self.backend, self.backend.generator(self.seed))
        self._cache: tuple[Any, tuple[int, ...]] | None = None

    @property
    def generator(self) -> Any:
        """The mask generator, on the layer's backend (after ``.to(...)``, a new one seeded by ``seed``)."""
        if self._generator[0] != self.backend:
            self._generator = (self.backend, self.backend.generator(self.seed))
        return self._generator[1]

    def random_state(self) -> Any:
        """The mask generator's state as plain values (what a checkpoint saves)."""
        return self.backend.generator_state(self.generator)

    def set_random_state(self, state: Any) -> None:
        """Restore a :meth:`random_state`."""
        self.backend.set_generator_state(self.generator, state)

    def _clear_cache(self) -> None:
        self._cache = None

    def _mask_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the mask for an input of ``shape`` (one entry per element)."""
        return shape

    def forward(self, x):
        """``x`` times a fresh scaled keep-mask in training mode; ``x`` itself in eval mode.

        Raises TypeError if ``x`` is not a floating array, ValueError (training only) if it is not on the
        layer's backend and device or (Dropout2d) has the wrong rank.
        """
        xp = namespace_of(x, names=["x"])
        if not self.training:
            return x
        if xp is not self.backend.xp or device(x) != self.backend.device:
            raise ValueError(f"x is a {library_of(x)} array on {device(x)!r} but this {type(self).__name__} "
                             f"draws its masks on {self.backend}; move the model with .to(...)")
        shape = tuple(x.shape)
        keep = self.backend.random(self.generator, self._mask_shape(shape), x.dtype) >= self.p
        mask = xp.astype(keep, x.dtype) * (1.0 / (1.0 - self.p) if self.p < 1 else 0.0)
        self._cache = (mask, shape)
        return x * mask

    def backward(self, grad_output):
        """dL/dx: ``grad_output`` (the output's shape) times the last forward's mask.

        Raises RuntimeError if no forward in training mode precedes the call, TypeError/ValueError if
        ``grad_output`` is not a floating array of the mask's library, dtype and device, ValueError (keeping
        the cache) if it does not have the output's shape.
        """
        mask, shape = self._need_cache(self._cache)
        namespace_of(grad_output, mask, names=["grad_output", "the dropout mask"])
        self._check_grad_shape(grad_output, shape)
        self._cache = None
        return grad_output * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


@fill_doc(sections=_DROPOUT_SECTIONS, unit="a channel",
          backend_role="Where the masks are put; training inputs must live there:",
          dtype_role=STATELESS["dtype_role"])
class Dropout2d(Dropout):
    """In training, zero each whole channel with probability ``p`` and scale the rest by 1/(1-p).

    As ``torch.nn.Dropout2d``, for x (N, C, H, W) or unbatched (C, H, W): the mask is (N, C, 1, 1) or
    (C, 1, 1), drawn like :class:`Dropout`'s.  (torch 2.x still treats a 3-D input as (N, C, L), with a
    warning that this will change; xpconv takes the documented (C, H, W).)  Identity in eval.

    {sections}

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> drop = nn.Dropout2d(0.5, seed=0)
    >>> y = drop(np.ones((2, 3, 4, 4), dtype=np.float32))
    >>> sorted(set(y[..., 0, 0].ravel().tolist()))      # per channel: dropped, or kept and scaled
    [0.0, 2.0]
    >>> bool((y == y[..., :1, :1]).all())               # a whole channel shares its fate
    True
    """

    def _mask_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """(N, C, 1, 1) for x (N, C, H, W), (C, 1, 1) for x (C, H, W)."""
        if len(shape) not in (3, 4):
            raise ValueError(f"Dropout2d expects x of shape (N, C, H, W) or (C, H, W), got {shape}")
        return (*shape[:-2], 1, 1)
