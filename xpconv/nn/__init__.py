"""Layers with explicit forward and backward passes."""
from .activation import Dropout, Flatten, ReLU
from .batchnorm import BatchNorm2d
from .container import Sequential
from .conv import Conv1d, Conv2d, Conv3d
from .conv_transpose import ConvTranspose2d
from .linear import Linear
from .loss import CrossEntropyLoss
from .module import Module, Parameter
from .pooling import AvgPool2d, MaxPool2d

__all__ = ["Module", "Parameter", "Conv1d", "Conv2d", "Conv3d", "Linear", "ReLU", "Flatten", "Sequential",
           "CrossEntropyLoss", "MaxPool2d", "AvgPool2d",
           "Dropout", "BatchNorm2d", "ConvTranspose2d"]
