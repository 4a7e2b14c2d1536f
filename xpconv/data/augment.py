"""Data augmentation that runs on the batch's own device: random crop, random horizontal flip, normalization.

Written once against the Array API, so a CuPy batch is augmented on the GPU.  The random decisions are
few and are drawn on the host from one seeded ``np.random.Generator`` per transform (for a batch of N
images: N crop offsets, or N flip bits; never a pixel); only those small arrays travel to the device, where
the pixels move with slicing, one ``take`` and one ``where``, without a Python loop over the images:

- ``RandomCrop(size, padding)``: zero padding is one slice assignment into a zeros array; the N windows
  are gathered with one ``take`` on the flattened padded batch, at flat indices built on the device from
  the offsets (index legend: ``n*C*Hp*Wp + c*Hp*Wp + (top[n] + i)*Wp + left[n] + j``);
- ``RandomHorizontalFlip(p)``: ``where(flip[n], flip(x, axis=-1), x)``;
- ``Normalize(mean, std)``: ``(x - mean[c]) / std[c]``.

Shapes: a batch is ``(N, C, H, W)``.  Draw order, per call: a crop draws ``top`` (N,) then ``left`` (N,)
with ``generator.integers``; a flip draws ``generator.random(N) < p``.  A transform's ``state_dict()``
holds ``generator.bit_generator.state`` (a plain dict), so a checkpoint can save and restore it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from array_api_compat import device as device_of

from .._ops import namespace_of
from .._typing import Array
from ..validation import check_real, int_tuple, non_negative_int

__all__ = ["RandomCrop", "RandomHorizontalFlip", "Normalize", "Compose", "pad2d", "crop", "hflip", "normalize",
           "channel_stats", "augmentation", "CIFAR10_MEAN", "CIFAR10_STD"]

# Per-channel (R, G, B) mean and standard deviation (population, over every pixel) of the CIFAR-10 *training*
# set, as published with torchvision's CIFAR recipes; normalization statistics must come from the training
# set only (never the test set).  channel_stats() computes them for any data set.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _batch(x: Array, name: str = "x") -> tuple[Any, tuple[int, int, int, int]]:
    xp = namespace_of(x, names=[name])
    if x.ndim != 4:
        raise ValueError(f"{name} must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    return xp, tuple(int(s) for s in x.shape)  # type: ignore[return-value]


def _host_ints(name: str, values: Any, n: int, high: int) -> list[int]:
    a = np.asarray(values)
    if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer) or (n and (a.min() < 0 or a.max() > high)):
        raise ValueError(f"{name} must be {n} integers in 0..{high}, got {values!r}")
    return [int(v) for v in a]


def pad2d(x: Array, padding: int) -> Array:
    """Zero-pad the two spatial axes of a batch by ``padding`` on every side.

    Parameters
    ----------
    x : array
        ``(N, C, H, W)`` on any backend.
    padding : int
        Border width, >= 0.

    Returns
    -------
    array
        ``(N, C, H + 2*padding, W + 2*padding)``, same dtype and device (``x`` itself for 0).

    Raises
    ------
    ValueError
        For a negative ``padding`` or an ``x`` that is not 4-D.

    Examples
    --------
    >>> import numpy as np
    >>> pad2d(np.ones((1, 1, 1, 2), np.float32), 1)[0, 0]
    array([[0., 0., 0., 0.],
           [0., 1., 1., 0.],
           [0., 0., 0., 0.]], dtype=float32)
    """
    xp, (n, c, h, w) = _batch(x)
    p = non_negative_int("padding", padding)
    if p == 0:
        return x
    out = xp.zeros((n, c, h + 2 * p, w + 2 * p), dtype=x.dtype, device=device_of(x))
    out[:, :, p:p + h, p:p + w] = x
    return out


def crop(x: Array, top: Sequence[int] | np.ndarray, left: Sequence[int] | np.ndarray,
         size: int | tuple[int, int]) -> Array:
    """Cut one window of ``size`` out of each image: image ``n`` from row ``top[n]`` and column ``left[n]``.

    Parameters
    ----------
    x : array
        ``(N, C, H, W)`` on any backend.
    top, left : sequence of int or numpy.ndarray
        ``(N,)`` host integers, ``0 <= top[n] <= H - h`` and ``0 <= left[n] <= W - w``.
    size : int or tuple of 2 ints
        ``(h, w)`` of the windows (one int: square).

    Returns
    -------
    array
        ``(N, C, h, w)``, same dtype and device: one ``take`` at flat indices computed on the device.

    Raises
    ------
    ValueError
        For a window larger than the image, or offsets that are not N integers in range.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(2 * 9, dtype=np.float32).reshape(2, 1, 3, 3)
    >>> crop(x, [0, 1], [1, 0], 2)[:, 0]
    array([[[ 1.,  2.],
            [ 4.,  5.]],
    <BLANKLINE>
           [[12., 13.],
            [15., 16.]]], dtype=float32)
    """
    xp, (n, c, h, w) = _batch(x)
    th, tw = int_tuple("size", size, 2, 1)
    if th > h or tw > w:
        raise ValueError(f"crop size {(th, tw)} is larger than the images {(h, w)}")
    dev = device_of(x)

    def column(values: list[int] | range, shape: tuple[int, ...]) -> Array:
        return xp.reshape(xp.asarray(list(values), dtype=xp.int64, device=dev), shape)

    tops = column(_host_ints("top", top, n, h - th), (n, 1, 1, 1))
    lefts = column(_host_ints("left", left, n, w - tw), (n, 1, 1, 1))
    index = (column(range(0, n * c * h * w, c * h * w), (n, 1, 1, 1)) + column(range(0, c * h * w, h * w),
                                                                                  (1, c, 1, 1))
             + (tops + column(range(th), (1, 1, th, 1))) * w + lefts + column(range(tw), (1, 1, 1, tw)))
    return xp.reshape(xp.take(xp.reshape(x, (-1,)), xp.reshape(index, (-1,)), axis=0), (n, c, th, tw))


def hflip(x: Array, flip: Sequence[bool] | np.ndarray) -> Array:
    """Mirror the images whose ``flip`` bit is set left to right; keep the others.

    Parameters
    ----------
    x : array
        ``(N, C, H, W)`` on any backend.
    flip : sequence of bool or numpy.ndarray
        ``(N,)`` host booleans.

    Returns
    -------
    array
        ``(N, C, H, W)``, same dtype and device.

    Raises
    ------
    ValueError
        For ``flip`` that is not N booleans.

    Examples
    --------
    >>> import numpy as np
    >>> hflip(np.array([[[[1.0, 2.0]]], [[[3.0, 4.0]]]]), [True, False])[:, 0, 0]
    array([[2., 1.],
           [3., 4.]])
    """
    xp, (n, *_) = _batch(x)
    bits = np.asarray(flip)
    if bits.shape != (n,) or bits.dtype != np.bool_:
        raise ValueError(f"flip must be {n} booleans, got {flip!r}")
    mask = xp.reshape(xp.asarray(bits.tolist(), dtype=xp.bool, device=device_of(x)), (n, 1, 1, 1))
    return xp.where(mask, xp.flip(x, axis=-1), x)


def _channel_values(name: str, values: Sequence[float], positive: bool = False) -> tuple[float, ...]:
    if isinstance(values, (int, float)) or len(values) == 0:
        raise ValueError(f"{name} must be a sequence of one number per channel, got {values!r}")
    return tuple(check_real(name, v, 0.0 if positive else -math.inf, low_open=positive) for v in values)


def normalize(x: Array, mean: Sequence[float], std: Sequence[float]) -> Array:
    """``(x - mean[c]) / std[c]`` for each channel ``c``, as torchvision's ``Normalize``.

    Parameters
    ----------
    x : array
        ``(N, C, H, W)`` floating, on any backend.
    mean, std : sequence of float
        ``C`` numbers each; every ``std`` > 0.

    Returns
    -------
    array
        ``(N, C, H, W)``, same dtype and device.

    Raises
    ------
    ValueError
        For ``mean``/``std`` without one value per channel, or a ``std`` <= 0.

    Examples
    --------
    >>> import numpy as np
    >>> normalize(np.ones((1, 2, 1, 1), np.float32), [0.5, 0.0], [0.5, 2.0]).ravel()
    array([1. , 0.5], dtype=float32)
    """
    xp, (_, c, _, _) = _batch(x)
    m, s = _channel_values("mean", mean), _channel_values("std", std, positive=True)
    if len(m) != c or len(s) != c:
        raise ValueError(f"mean and std need one value per channel ({c}), got {len(m)} and {len(s)}")
    dev = device_of(x)
    m_arr = xp.reshape(xp.asarray(m, dtype=x.dtype, device=dev), (1, c, 1, 1))
    s_arr = xp.reshape(xp.asarray(s, dtype=x.dtype, device=dev), (1, c, 1, 1))
    return (x - m_arr) / s_arr


class _Random:
    """A transform that draws its decisions from its own ``np.random.Generator``."""

    def __init__(self, seed: int | Sequence[int] | np.random.Generator | None) -> None:
        self.generator = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def state_dict(self) -> dict[str, Any]:
        """``{"generator": generator.bit_generator.state}``: a plain dict a checkpoint can store."""
        return {"generator": self.generator.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the generator from :meth:`state_dict`, so the next draws repeat those of the saved run."""
        self.generator.bit_generator.state = state["generator"]


class RandomCrop(_Random):
    """Zero-pad each image by ``padding`` and cut a window of ``size`` at a random place, as torchvision's.

    ``RandomCrop(32, padding=4)`` is the usual CIFAR-10 augmentation.  Each call draws ``top`` (N,) then
    ``left`` (N,) uniformly from ``0 .. H + 2*padding - h`` (and the same for widths) on the host.

    Parameters
    ----------
    size : int or tuple of 2 ints
        ``(h, w)`` of the output (one int: square).
    padding : int, default 0
        Zero border added on every side before cropping.
    seed : int, sequence of int, numpy.random.Generator or None, default None
        Seed of the generator (or the generator itself).

    Raises
    ------
    ValueError
        For a size < 1, a negative padding, or (when called) images smaller than ``size`` after padding.

    Examples
    --------
    >>> import numpy as np
    >>> out = RandomCrop(32, padding=4, seed=0)(np.ones((8, 3, 32, 32), np.float32))
    >>> out.shape
    (8, 3, 32, 32)
    """

    def __init__(self, size: int | tuple[int, int], padding: int = 0, *,
                 seed: int | Sequence[int] | np.random.Generator | None = None) -> None:
        super().__init__(seed)
        self.size: tuple[int, int] = int_tuple("size", size, 2, 1)  # type: ignore[assignment]
        self.padding = non_negative_int("padding", padding)

    def __call__(self, x: Array) -> Array:
        """Images ``(N, C, H, W)`` -> ``(N, C, h, w)`` on the same device."""
        _, (n, _, h, w) = _batch(x)
        hp, wp = h + 2 * self.padding, w + 2 * self.padding
        if self.size[0] > hp or self.size[1] > wp:
            raise ValueError(f"crop size {self.size} is larger than the padded images {(hp, wp)}")
        top = self.generator.integers(0, hp - self.size[0] + 1, size=n)
        left = self.generator.integers(0, wp - self.size[1] + 1, size=n)
        return crop(pad2d(x, self.padding), top, left, self.size)

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip(_Random):
    """Mirror each image left to right with probability ``p``, as torchvision's.

    Parameters
    ----------
    p : float, default 0.5
        Probability of a flip, in [0, 1]; each call draws ``generator.random(N) < p``.
    seed : int, sequence of int, numpy.random.Generator or None, default None
        Seed of the generator (or the generator itself).

    Raises
    ------
    ValueError
        For ``p`` outside [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([1.0, 2.0, 3.0]).reshape(1, 1, 1, 3)
    >>> RandomHorizontalFlip(p=1.0)(x).ravel()
    array([3., 2., 1.])
    """

    def __init__(self, p: float = 0.5, *, seed: int | Sequence[int] | np.random.Generator | None = None) -> None:
        super().__init__(seed)
        self.p = check_real("p", p, 0.0, 1.0)

    def __call__(self, x: Array) -> Array:
        """Images ``(N, C, H, W)`` -> the same shape, on the same device."""
        _, (n, *_) = _batch(x)
        return hflip(x, self.generator.random(n) < self.p)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """Subtract a per-channel mean and divide by a per-channel standard deviation, as torchvision's.

    Use statistics of the training set (:func:`channel_stats`; :data:`CIFAR10_MEAN`, :data:`CIFAR10_STD`).

    Parameters
    ----------
    mean, std : sequence of float
        One value per channel; every ``std`` > 0.

    Raises
    ------
    ValueError
        For an empty ``mean``/``std``, a ``std`` <= 0, or (when called) a batch with another channel count.

    Examples
    --------
    >>> import numpy as np
    >>> Normalize(CIFAR10_MEAN, CIFAR10_STD)(np.zeros((2, 3, 4, 4), np.float32)).shape
    (2, 3, 4, 4)
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = _channel_values("mean", mean), _channel_values("std", std, positive=True)

    def __call__(self, x: Array) -> Array:
        """Images ``(N, C, H, W)`` -> the same shape, dtype and device."""
        return normalize(x, self.mean, self.std)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class Compose:
    """Apply ``transforms`` one after another, as torchvision's ``Compose``.

    Parameters
    ----------
    transforms : sequence of callables
        Each takes and returns a batch ``(N, C, H, W)``.

    Raises
    ------
    TypeError
        If an entry is not callable.

    Examples
    --------
    >>> import numpy as np
    >>> t = Compose([RandomCrop(32, padding=4, seed=0), RandomHorizontalFlip(seed=1),
    ...              Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    >>> t(np.zeros((4, 3, 32, 32), np.float32)).shape
    (4, 3, 32, 32)
    >>> state = t.state_dict()             # every generator's state, e.g. for a checkpoint
    >>> a = t(np.ones((4, 3, 32, 32), np.float32)); t.load_state_dict(state)
    >>> bool(np.array_equal(a, t(np.ones((4, 3, 32, 32), np.float32))))
    True
    """

    def __init__(self, transforms: Sequence[Callable[[Array], Array]]) -> None:
        for t in transforms:
            if not callable(t):
                raise TypeError(f"transforms must be callables, got {type(t).__name__}")
        self.transforms = list(transforms)

    def __call__(self, x: Array) -> Array:
        for t in self.transforms:
            x = t(x)
        return x

    def state_dict(self) -> dict[str, Any]:
        """``{"transforms": [state or None, ...]}``: the state of every transform that has one."""
        return {"transforms": [t.state_dict() if hasattr(t, "state_dict") else None for t in self.transforms]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore every transform's state from :meth:`state_dict`."""
        states = state["transforms"]
        if len(states) != len(self.transforms):
            raise ValueError(f"the state holds {len(states)} transforms, this Compose has {len(self.transforms)}")
        for t, s in zip(self.transforms, states, strict=True):
            if s is not None:
                t.load_state_dict(s)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def channel_stats(x: np.ndarray, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of host images, for :class:`Normalize`.

    Compute them on the training split only.  Two passes in float64, ``chunk`` images at a time, so no
    float64 copy of the whole set is made.

    Parameters
    ----------
    x : numpy.ndarray
        ``(N, C, H, W)`` images.
    chunk : int, default 1024
        Images per pass step.

    Returns
    -------
    mean, std : tuple of float
        ``C`` values each.

    Raises
    ------
    ValueError
        For an empty or non-4-D ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> channel_stats(np.array([0.0, 1.0, 2.0, 2.0]).reshape(2, 2, 1, 1))
    ((1.0, 1.5), (1.0, 0.5))
    """
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch of images (N, C, H, W), got shape {x.shape}")
    count = x.shape[0] * x.shape[2] * x.shape[3]
    steps = range(0, x.shape[0], chunk)
    mean = sum(x[i:i + chunk].sum(axis=(0, 2, 3), dtype=np.float64) for i in steps) / count
    var = sum((((x[i:i + chunk] - mean[:, None, None]) ** 2).sum(axis=(0, 2, 3))) for i in steps) / count
    return tuple(float(m) for m in mean), tuple(float(math.sqrt(v)) for v in var)


# The usual training augmentation of each data set: random crops (a pad of 1/8 of the side, as for CIFAR-10's
# 32 + 4), and mirror images only where a mirrored image is still one of its class (not for digits).
_RECIPES = {"cifar10": (32, 4, True), "mnist": (28, 2, False), "mnist5k": (28, 2, False), "digits": (8, 1, False)}


def augmentation(name: str, *, seed: int = 0) -> Compose:
    """The usual training augmentation of data set ``name``, seeded: random crop, and flip where it fits.

    ``cifar10``: ``RandomCrop(32, padding=4)`` then ``RandomHorizontalFlip()``; ``mnist``/``mnist5k``:
    ``RandomCrop(28, padding=2)``; ``digits``: ``RandomCrop(8, padding=1)`` (digits are not mirrored).
    No normalization: it must treat the train and the test images alike, so it belongs to the model or to
    the data set (:func:`normalize` on both splits), not to a train-only transform.

    Parameters
    ----------
    name : {"cifar10", "mnist", "mnist5k", "digits"}
    seed : int, default 0
        The crop draws from ``default_rng([seed, 2])``, the flip from ``default_rng([seed, 3])``.

    Returns
    -------
    Compose
        With ``state_dict()``/``load_state_dict()`` for checkpoints.

    Raises
    ------
    ValueError
        For an unknown data set name or a bad seed.

    Examples
    --------
    >>> augmentation("cifar10", seed=0)
    Compose([RandomCrop(size=(32, 32), padding=4), RandomHorizontalFlip(p=0.5)])
    """
    if name not in _RECIPES:
        raise ValueError(f"no augmentation is defined for data set {name!r}; choose one of {', '.join(_RECIPES)}")
    seed = non_negative_int("seed", seed)
    size, padding, flip = _RECIPES[name]
    steps: list[Callable[[Array], Array]] = [RandomCrop(size, padding, seed=[seed, 2])]
    if flip:
        steps.append(RandomHorizontalFlip(seed=[seed, 3]))
    return Compose(steps)
