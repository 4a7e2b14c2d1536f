"""xpconv: convolutional-network layers with explicit backward passes, written once against the Array API."""
from .backends import (
    Backend,
    BackendUnavailableError,
    available_backends,
    get_backend,
    get_default_backend,
    set_default_backend,
    to_numpy,
)
from .functional import conv1d, conv1d_backward, conv2d, conv2d_backward, conv3d, conv3d_backward
from .io import load, save
from .tuning import autotune, autotune_choices, autotune_enabled, clear_autotune_cache, set_autotune

__version__ = "0.1.0"

__all__ = [
    "Backend", "BackendUnavailableError", "available_backends", "get_backend", "get_default_backend",
    "set_default_backend", "to_numpy",
    "conv1d", "conv2d", "conv3d", "conv1d_backward", "conv2d_backward", "conv3d_backward",
    "save", "load",
    "set_autotune", "autotune", "autotune_enabled", "autotune_choices", "clear_autotune_cache",
]
