"""Optimizers (``SGD``, ``Adam``, ``AdamW``) and learning-rate schedulers (:mod:`xpconv.optim.lr_scheduler`),
with PyTorch's names, update rules and state dicts."""
from . import lr_scheduler
from .optimizer import SGD, Adam, AdamW, Optimizer

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler"]
