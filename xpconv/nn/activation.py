"""Elementwise activations, Softmax and Identity: layers whose output has the input's shape.

Each layer computes ``y = f(x)`` in ``forward`` and, in training mode, keeps what ``backward`` needs for
``dL/dx = f'(x) * dL/dy`` (for Softmax, the Jacobian-vector product along ``dim``).  All math is written
against the namespace of the input, in numerically stable forms: the sigmoid never exponentiates a
positive number, ELU uses ``expm1``, Softmax subtracts the maximum, and nothing overflows for huge inputs.
The Array API has no ``erf``; :func:`erf` implements it for the exact GELU.
"""
from __future__ import annotations

import math
import textwrap
from typing import Any

from array_api_compat import device

from .._docstrings import STATELESS, fill_doc
from .._ops import namespace_of
from .._typing import Array
from ..amp import master_dtype
from ..backends import zero_where
from ..validation import check_int, check_real
from .module import Module

__all__ = ["erf", "ReLU", "LeakyReLU", "ELU", "GELU", "SiLU", "Sigmoid", "Tanh", "Softmax", "Identity"]

# W. J. Cody, "Rational Chebyshev approximations for the error function", Math. Comp. 23 (1969) 631-637,
# as in his SPECFUN routine CALERF: erf on |x| <= 0.46875, erfc on (0.46875, 4] and on (4, inf).
# Relative error below 1e-16 in float64 (tests/test_activations.py checks it against math.erf).
_ERF_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02, 3.20937758913846947e03,
          1.85777706184603153e-1)
_ERF_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03, 2.84423683343917062e03)
_ERFC_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01, 2.98635138197400131e02,
           8.81952221241769090e02, 1.71204761263407058e03, 2.05107837782607147e03, 1.23033935479799725e03,
           2.15311535474403846e-8)
_ERFC_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02, 1.62138957456669019e03,
           3.29079923573345963e03, 4.36261909014324716e03, 3.43936767414372164e03, 1.23033935480374942e03)
_ERFC_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1, 1.60837851487422766e-2,
           6.58749161529837803e-4, 1.63153871373020978e-2)
_ERFC_Q = (2.56852019228982242e00, 1.87295284992346047e00, 5.27905102951428412e-1, 6.05183413124413191e-2,
           2.33520497626869185e-3)
_ERF_SMALL, _ERFC_MID, _ERFC_ZERO = 0.46875, 4.0, 30.0     # erfc(30) < 1e-392: 0 in float64


def _rational(t: Array, num: tuple[float, ...], den: tuple[float, ...]) -> Array:
    """Cody's ``(num[-1] t^k + num[0] t^(k-1) + ... + num[k-1]) / (t^k + den[0] t^(k-1) + ... + den[k-1])``."""
    p, q = num[-1] * t, t
    for a, b in zip(num[:-2], den[:-1], strict=True):
        p, q = (p + a) * t, (q + b) * t
    return (p + num[-2]) / (q + den[-1])


def erf(x: Array) -> Array:
    """The error function ``2/sqrt(pi) * integral_0^x exp(-t^2) dt``, elementwise, in pure Array API.

    W. J. Cody's rational approximations (relative error below 1e-16 in float64); ``x``'s dtype is kept
    (float16/bfloat16 are computed in float32: the coefficients overflow float16), NaN stays NaN and
    ``erf(+-inf) = +-1``.

    Parameters
    ----------
    x : array
        Any shape, real floating.

    Returns
    -------
    array
        ``erf(x)``, ``x``'s shape, dtype, library and device.

    Raises
    ------
    TypeError
        If ``x`` is not an array with a real floating dtype.

    Examples
    --------
    >>> import math
    >>> import numpy as np
    >>> from xpconv.nn.activation import erf
    >>> erf(np.array([0.0, 0.5, -3.0])).tolist() == [0.0, math.erf(0.5), math.erf(-3.0)]
    True
    """
    xp = namespace_of(x, names=["x"])
    dtype, x = x.dtype, xp.astype(x, master_dtype(xp, x.dtype), copy=False)
    y = xp.abs(x)
    ys = xp.clip(y, max=_ERF_SMALL)
    small = ys * _rational(ys * ys, _ERF_A, _ERF_B)                              # erf, |x| <= 0.46875
    mid = xp.clip(y, _ERF_SMALL, _ERFC_MID)
    big = xp.clip(y, _ERFC_MID, _ERFC_ZERO)
    inv = 1.0 / (big * big)
    tail = xp.where(y <= _ERFC_MID, _rational(mid, _ERFC_C, _ERFC_D),          # erfc(y) * exp(y^2)
                    (1.0 / math.sqrt(math.pi) - inv * _rational(inv, _ERFC_P, _ERFC_Q)) / big)
    # exp(-y^2) as exp(-r^2) exp(-(y - r)(y + r)) with r = y rounded down to 1/16: no rounding error in r^2.
    yc = xp.clip(y, _ERF_SMALL, _ERFC_ZERO)
    r = xp.trunc(yc * 16.0) / 16.0
    erfc = xp.exp(-r * r) * xp.exp(-(yc - r) * (yc + r)) * tail
    erfc = xp.where(y > _ERFC_ZERO, xp.zeros_like(erfc), erfc)
    out = xp.where(y <= _ERF_SMALL, small, 1.0 - erfc)
    return xp.astype(xp.where(x < 0, -out, out), dtype, copy=False)


_LAYER_DOC = """
    Parameters
    ----------
    {params}

    Raises
    ------
    {raises_unavailable}
    {raises}

    Notes
    -----
    ``forward(x)`` takes a real floating array of any library and {shape_note}; in training mode it keeps
    what ``backward(grad_output)`` needs, and that returns dL/dx, ``x``'s shape and dtype.  Backward raises
    RuntimeError without a preceding training-mode forward (each forward's cache serves one backward),
    TypeError if ``grad_output`` is not a floating array of the forward's dtype, and ValueError, naming both
    shapes, if it does not have the output's shape (the cache is then kept).
"""


def _zero(xp: Any, like: Array) -> Array:
    """A 0-d zero of ``like``'s dtype and device, for ``where`` (no full-size array of zeros)."""
    return xp.zeros((), dtype=like.dtype, device=device(like))


def _layer_doc(params: str = "", raises: str = "", shape_note: str = "any shape"):
    """fill_doc for this module's layers: the shared Parameters/Raises/Notes sections, the stateless roles,
    and the layer's own ``params`` and ``raises`` entries (numpydoc text, put before the shared ones)."""
    def own(text: str, shared: str) -> str:
        return (textwrap.dedent(text).strip("\n") + "\n" if text else "") + shared

    return fill_doc(body=_LAYER_DOC, params=own(params, "{backend_device_dtype}"),
                    raises=own(raises, "ValueError\n    If {bad_backend}."), shape_note=shape_note, **STATELESS)


class _ShapePreserving(Module):
    """A layer whose output has the input's shape: ``_forward`` computes ``y`` and what backward needs.

    The cache is ``(saved, shape, dtype)``; backward validates ``grad_output`` before it drops the cache.
    """

    def __init__(self, *, backend: Any = None, device: Any = None, dtype: str = "float32") -> None:
        super().__init__(backend=backend, device=device, dtype=dtype)
        self._cache: tuple[Any, tuple[int, ...], Any] | None = None

    def _clear_cache(self) -> None:
        self._cache = None

    def _forward(self, xp: Any, x: Array) -> tuple[Array, Any]:  # pragma: no cover - every layer overrides it
        raise NotImplementedError

    def _backward(self, xp: Any, grad_output: Array, saved: Any) -> Array:  # pragma: no cover - overridden
        raise NotImplementedError

    def forward(self, x):
        """``f(x)``, ``x``'s shape and dtype; TypeError if ``x`` is not a real floating array."""
        xp = namespace_of(x, names=["x"])
        y, saved = self._forward(xp, x)
        self._cache = (saved, tuple(x.shape), x.dtype) if self.training else None
        return y

    def backward(self, grad_output):
        """dL/dx for ``grad_output`` = dL/dy of the output's shape (see the class's Notes)."""
        saved, shape, dtype = self._need_cache(self._cache)
        xp = namespace_of(grad_output, names=["grad_output"])
        if grad_output.dtype != dtype:
            raise TypeError(f"grad_output has dtype {grad_output.dtype} but the forward input had {dtype}")
        self._check_grad_shape(grad_output, shape)
        self._cache = None
        return self._backward(xp, grad_output, saved)


@_layer_doc()
class ReLU(_ShapePreserving):
    """Rectified linear unit, ``y = max(x, 0)`` elementwise, as ``torch.nn.ReLU``.

    As torch.relu, NaN stays NaN; the gradient is 0 where x <= 0 (at 0 too) and passes where x > 0 or x is NaN.
    The sign of the zero that ``-0.0`` gives is the library's ``maximum``'s (NumPy: +0.0, torch: -0.0).

    {body}

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

    def _forward(self, xp, x):
        y = xp.maximum(x, _zero(xp, x))                      # NaN propagates, as in torch
        return y, y

    def _backward(self, xp, grad_output, saved):
        return zero_where(saved <= 0, grad_output)           # torch's threshold_backward on y


@_layer_doc(params="""
    negative_slope : float, default 0.01
        Slope for ``x <= 0`` (any real number, as in torch).
    """, raises="""
    TypeError
        If ``negative_slope`` is not a real number.
    """)
class LeakyReLU(_ShapePreserving):
    """``y = x`` where ``x > 0``, ``negative_slope * x`` elsewhere, as ``torch.nn.LeakyReLU``.

    The gradient at ``x = 0`` is ``negative_slope``, as in torch.

    {body}

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> act = nn.LeakyReLU(0.1)
    >>> x = np.array([-2.0, 0.0, 3.0])
    >>> act(x).tolist(), act.backward(np.ones_like(x)).tolist()
    ([-0.2, 0.0, 3.0], [0.1, 0.1, 1.0])
    """

    def __init__(self, negative_slope: float = 0.01, *, backend=None, device=None, dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        self.negative_slope = check_real("negative_slope", negative_slope)

    def _forward(self, xp, x):
        positive = x > 0
        return xp.where(positive, x, x * self.negative_slope), positive

    def _backward(self, xp, grad_output, saved):
        return xp.where(saved, grad_output, grad_output * self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


@_layer_doc(params="""
    alpha : float, default 1.0
        Scale of the negative branch ``alpha * (exp(x) - 1)`` (any real number, as in torch).
    """, raises="""
    TypeError
        If ``alpha`` is not a real number.
    """)
class ELU(_ShapePreserving):
    """Exponential linear unit, ``y = x`` where ``x > 0``, ``alpha * (exp(x) - 1)`` elsewhere, as ``torch.nn.ELU``.

    Computed with ``expm1``; the gradient is ``alpha * exp(x)`` for ``x <= 0`` (``alpha`` at 0, as in torch).

    {body}

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> act = nn.ELU()
    >>> x = np.array([-1.0, 0.0, 2.0])
    >>> np.round(act(x), 4).tolist(), np.round(act.backward(np.ones_like(x)), 4).tolist()
    ([-0.6321, 0.0, 2.0], [0.3679, 1.0, 1.0])
    """

    def __init__(self, alpha: float = 1.0, *, backend=None, device=None, dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        self.alpha = check_real("alpha", alpha)

    def _forward(self, xp, x):
        positive = x > 0
        negative_part = xp.where(positive, xp.zeros_like(x), x)        # never exponentiates a large x
        return xp.where(positive, x, self.alpha * xp.expm1(negative_part)), (positive, negative_part)

    def _backward(self, xp, grad_output, saved):
        positive, negative_part = saved
        return xp.where(positive, grad_output, grad_output * (self.alpha * xp.exp(negative_part)))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


_GELU_BETA, _GELU_KAPPA = math.sqrt(2.0 / math.pi), 0.044715
# |x| beyond which tanh(beta (x + kappa x^3)) is +-1 (the argument is ~987 at 30; tanh is 1 in float64 from ~19)
# and the slope's second term 0; keeps x^3 finite in float16 (27 000 < 65 504) and every wider dtype.
_GELU_TANH_CLIP = 30.0


@_layer_doc(params="""
    approximate : {"none", "tanh"}, default "none"
        ``"none"``: the exact ``0.5 * x * (1 + erf(x / sqrt(2)))``; ``"tanh"``:
        ``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))``.
    """, raises="""
    ValueError
        If ``approximate`` is not ``"none"`` or ``"tanh"``.
    """)
class GELU(_ShapePreserving):
    """Gaussian error linear unit ``y = x * Phi(x)``, as ``torch.nn.GELU``, with torch's two forms.

    Exact form: ``dy/dx = Phi(x) + x * phi(x)``, with :func:`erf` for the normal CDF ``Phi``.

    {body}

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> x = np.array([-1.0, 0.0, 1.0])
    >>> np.round(nn.GELU()(x), 6).tolist()
    [-0.158655, 0.0, 0.841345]
    >>> np.round(nn.GELU(approximate="tanh")(x), 6).tolist()
    [-0.158808, 0.0, 0.841192]
    """

    def __init__(self, approximate: str = "none", *, backend=None, device=None, dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        if approximate not in ("none", "tanh"):
            raise ValueError(f'approximate must be "none" or "tanh", got {approximate!r}')
        self.approximate = approximate

    def _forward(self, xp, x):
        if self.approximate == "tanh":
            xc = xp.clip(x, -_GELU_TANH_CLIP, _GELU_TANH_CLIP)
            t = xp.tanh(_GELU_BETA * (xc + _GELU_KAPPA * xc * xc * xc))
            return 0.5 * x * (1.0 + t), (x, xc, t)
        cdf = 0.5 * (1.0 + erf(x * math.sqrt(0.5)))
        return x * cdf, (x, cdf)

    def _backward(self, xp, grad_output, saved):
        if self.approximate == "tanh":
            x, xc, t = saved
            slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_BETA * (1.0 + 3.0 * _GELU_KAPPA * xc * xc)
            return grad_output * slope
        x, cdf = saved
        xc = xp.clip(x, -40.0, 40.0)                                   # phi(40) underflows to 0 anyway
        pdf = xp.exp(-0.5 * xc * xc) * (1.0 / math.sqrt(2.0 * math.pi))
        return grad_output * (cdf + x * pdf)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


def _sigmoid(xp: Any, x: Array) -> Array:
    """``1 / (1 + exp(-x))`` without exponentiating a positive number (no overflow for any x)."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@_layer_doc()
class Sigmoid(_ShapePreserving):
    """Logistic sigmoid ``y = 1 / (1 + exp(-x))``, as ``torch.nn.Sigmoid``; ``dy/dx = y * (1 - y)``.

    Stable for any ``x``: only ``exp(-|x|)`` is evaluated.

    {body}

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> act = nn.Sigmoid()
    >>> x = np.array([-1000.0, 0.0, 1000.0])
    >>> act(x).tolist(), act.backward(np.ones_like(x)).tolist()
    ([0.0, 0.5, 1.0], [0.0, 0.25, 0.0])
    """

    def _forward(self, xp, x):
        y = _sigmoid(xp, x)
        return y, y

    def _backward(self, xp, grad_output, saved):
        return grad_output * saved * (1.0 - saved)


@_layer_doc()
class SiLU(_ShapePreserving):
    """Sigmoid linear unit (swish) ``y = x * sigmoid(x)``, as ``torch.nn.SiLU``.

    ``dy/dx = s * (1 + x * (1 - s))`` with ``s = sigmoid(x)``.

    {body}

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> act = nn.SiLU()
    >>> x = np.array([-1.0, 0.0, 1.0])
    >>> np.round(act(x), 4).tolist(), np.round(act.backward(np.ones_like(x)), 4).tolist()
    ([-0.2689, 0.0, 0.7311], [0.0723, 0.5, 0.9277])
    """

    def _forward(self, xp, x):
        s = _sigmoid(xp, x)
        return x * s, (x, s)

    def _backward(self, xp, grad_output, saved):
        x, s = saved
        return grad_output * (s * (1.0 + x * (1.0 - s)))


@_layer_doc()
class Tanh(_ShapePreserving):
    """Hyperbolic tangent ``y = tanh(x)``, as ``torch.nn.Tanh``; ``dy/dx = 1 - y^2``.

    {body}

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> act = nn.Tanh()
    >>> x = np.array([0.0, 1.0])
    >>> np.round(act(x), 4).tolist(), np.round(act.backward(np.ones_like(x)), 4).tolist()
    ([0.0, 0.7616], [1.0, 0.42])
    """

    def _forward(self, xp, x):
        y = xp.tanh(x)
        return y, y

    def _backward(self, xp, grad_output, saved):
        return grad_output * (1.0 - saved * saved)


@_layer_doc(params="""
    dim : int
        The axis the outputs sum to 1 along (negative counts from the end).  Required: torch's implicit
        choice when it is omitted is deprecated.
    """, raises="""
    ValueError
        If ``dim`` is not an int (the forward raises ValueError if it does not fit the input's rank).
    """, shape_note="rank >= 1")
class Softmax(_ShapePreserving):
    """``y = exp(x) / sum(exp(x), dim)``, as ``torch.nn.Softmax(dim)``; the maximum is subtracted first.

    Backward: ``dL/dx = y * (g - sum(g * y, dim))`` for ``g = dL/dy``.

    {body}

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> sm = nn.Softmax(dim=1)
    >>> y = sm(np.array([[0.0, 0.0], [1000.0, 0.0]]))
    >>> y.tolist()
    [[0.5, 0.5], [1.0, 0.0]]
    >>> sm.backward(np.array([[1.0, 0.0], [0.0, 0.0]])).tolist()
    [[0.25, -0.25], [0.0, 0.0]]
    """

    def __init__(self, dim: int, *, backend=None, device=None, dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        self.dim = check_int("dim", dim)

    def _forward(self, xp, x):
        if not -x.ndim <= self.dim < x.ndim:
            raise ValueError(f"Softmax(dim={self.dim}) does not fit an input of shape {tuple(x.shape)}")
        e = xp.exp(x - xp.max(x, axis=self.dim, keepdims=True))
        y = e / xp.sum(e, axis=self.dim, keepdims=True)
        return y, y

    def _backward(self, xp, grad_output, saved):
        return saved * (grad_output - xp.sum(grad_output * saved, axis=self.dim, keepdims=True))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


@_layer_doc(params="""
    *args, **kwargs
        Ignored, as in torch (so a layer's arguments can be kept when it is swapped for Identity).
    """)
class Identity(_ShapePreserving):
    """``y = x``, as ``torch.nn.Identity``: a placeholder layer; backward passes the gradient through.

    {body}

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> layer = nn.Identity(54, unused_argument=0.1)
    >>> x = np.ones((2, 3), dtype=np.float32)
    >>> layer(x) is x, layer.backward(2 * x).tolist()
    (True, [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]])
    """

    def __init__(self, *args: Any, backend=None, device=None, dtype="float32", **kwargs: Any):
        super().__init__(backend=backend, device=device, dtype=dtype)

    def _forward(self, xp, x):
        return x, None

    def _backward(self, xp, grad_output, saved):
        return grad_output
