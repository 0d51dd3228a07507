"""Optimizers and learning-rate schedules, by name (``train.optimizer``, ``train.lr_schedule``).

An optimizer entry is a function ``(parameters, lr) -> torch.optim.Optimizer``; a
learning-rate schedule entry is a function ``(optimizer, total_steps) -> LRScheduler``
stepped once per optimizer step. Adding one is one function and one line.
"""

import torch

from .registry import Registry

OPTIMIZERS = Registry("optimizer")
LR_SCHEDULES = Registry("learning-rate schedule")


def fastest(optimizer_class, parameters, lr):
    """``optimizer_class`` with the fastest implementation this torch has for these parameters:
    fused (one kernel over all parameters: about 4x faster for Adam on CPU), else foreach
    (one call per group), else the loop over tensors, which always exists."""
    parameters = list(parameters)
    for options in ({"fused": True}, {"foreach": True}):
        try:
            return optimizer_class(parameters, lr=lr, **options)
        except (TypeError, RuntimeError, ValueError):  # no such kernel for this optimizer/device
            continue
    return optimizer_class(parameters, lr=lr)


@OPTIMIZERS.register("adam")
def adam(parameters, lr):
    """Adam (Kingma & Ba 2015), the default."""
    return fastest(torch.optim.Adam, parameters, lr)


@OPTIMIZERS.register("adamw")
def adamw(parameters, lr):
    """AdamW: Adam with decoupled weight decay (torch's default 0.01)."""
    return fastest(torch.optim.AdamW, parameters, lr)


@OPTIMIZERS.register("sgd")
def sgd(parameters, lr):
    """Plain stochastic gradient descent."""
    return fastest(torch.optim.SGD, parameters, lr)


@OPTIMIZERS.register("rmsprop")
def rmsprop(parameters, lr):
    """RMSprop."""
    return fastest(torch.optim.RMSprop, parameters, lr)


@LR_SCHEDULES.register("constant")
def constant(optimizer, total_steps):
    """The learning rate train.lr throughout."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


@LR_SCHEDULES.register("cosine")
def cosine(optimizer, total_steps):
    """Cosine decay from train.lr to 0 over all steps of the run."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
