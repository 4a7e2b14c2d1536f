"""Layers with explicit forward and backward passes."""
from .conv import Conv1d, Conv2d, Conv3d
from .module import Module, Parameter

__all__ = ["Module", "Parameter", "Conv1d", "Conv2d", "Conv3d"]
