"""Utilities on a model's parameters: gradient clipping by total norm, as ``torch.nn.utils``."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .._namespace import namespace
from .._typing import Array
from ..validation import check_real
from .module import Parameter

__all__ = ["clip_grad_norm_"]


def clip_grad_norm_(parameters: Parameter | Iterable[Parameter], max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> Array | float:
    """Scale the gradients so that their total norm is at most ``max_norm``, as ``torch.nn.utils.clip_grad_norm_``.

    The total norm is the ``norm_type``-norm of the vector of every gradient's ``norm_type``-norm (the norm of
    all gradients concatenated).  Every ``p.grad`` is multiplied by ``min(1, max_norm / (total + 1e-6))``,
    computed on the device: like torch, this never waits for the device unless ``error_if_nonfinite`` is set.
    The gradients are rebound to new arrays (the old ones are not modified).

    Parameters
    ----------
    parameters : Parameter or iterable of Parameter
        Whose ``.grad`` to clip (``model.parameters()``), all on one backend.
    max_norm : float
        The largest total norm allowed, >= 0.
    norm_type : float, default 2.0
        Order of the norms: any real number or ``float("inf")`` (the largest absolute value).
    error_if_nonfinite : bool, default False
        Raise if the total norm is NaN or infinite (this reads it back to the host).

    Returns
    -------
    total_norm : array or float
        The total norm before clipping: a 0-d array on the gradients' backend, or 0.0 without parameters.

    Raises
    ------
    TypeError
        If ``parameters`` holds something other than Parameters, the gradients' libraries differ, or
        ``max_norm``/``norm_type`` is not a number.
    ValueError
        If ``max_norm`` is negative or NaN, or ``norm_type`` is NaN.
    RuntimeError
        If ``error_if_nonfinite`` is set and the total norm is NaN or infinite.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv.nn import Parameter
    >>> from xpconv.nn.utils import clip_grad_norm_
    >>> a, b = Parameter(np.zeros(2)), Parameter(np.zeros(1))
    >>> a.grad, b.grad = np.array([3.0, 0.0]), np.array([4.0])
    >>> float(clip_grad_norm_([a, b], max_norm=1.0))     # sqrt(3² + 4²)
    5.0
    >>> a.grad.round(6).tolist(), b.grad.round(6).tolist()
    ([0.6, 0.0], [0.8])
    >>> round(float(clip_grad_norm_([a, b], max_norm=1.0, norm_type=float("inf"))), 6)  # the largest |entry|
    0.8
    """
    params = [parameters] if isinstance(parameters, Parameter) else list(parameters)
    for p in params:
        if not isinstance(p, Parameter):
            raise TypeError(f"parameters must be xpconv Parameters (model.parameters()), got {type(p).__name__}")
    max_norm = check_real("max_norm", max_norm, 0.0)
    norm_type = check_real("norm_type", norm_type)
    if not params:
        return 0.0
    grads = [p.grad for p in params]
    xp: Any = namespace(*grads)
    norms = [xp.linalg.vector_norm(g, ord=norm_type) for g in grads]
    total = xp.linalg.vector_norm(xp.stack(norms), ord=norm_type)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is non-finite, so it cannot be "
                           "clipped; pass error_if_nonfinite=False to scale by it anyway")
    coef = xp.clip(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        p.grad = p.grad * xp.astype(coef, p.grad.dtype)
    return total

