"""Optimizers and learning-rate schedules, by name (`train.optimizer`, `train.lr_schedule`).

An optimizer entry is a function `(parameters, lr) -> torch.optim.Optimizer`; a
learning-rate schedule entry is an `LRSchedule` (a torch `LambdaLR` stepped once
per optimizer step, with an optional warm-up). Adding one is one function or class and one line.
"""

import math

import torch

from .checks import integer, number
from .registry import Registry, UserError

OPTIMIZERS = Registry("optimizer")
LR_SCHEDULES = Registry("learning-rate schedule")


def fastest(optimizer_class, parameters, lr, **options):
    """`optimizer_class` (with `options`) in the fastest implementation this torch has for these
    parameters: fused (one kernel over all parameters: about 4x faster for Adam on CPU), else
    foreach (one call per group), else the loop over tensors, which always exists."""
    parameters = list(parameters)
    for implementation in ({"fused": True}, {"foreach": True}):
        try:
            return optimizer_class(parameters, lr=lr, **options, **implementation)
        except (TypeError, RuntimeError, ValueError):  # no such kernel for this optimizer/device
            continue
    return optimizer_class(parameters, lr=lr, **options)


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


for _optimizer in (adam, adamw, sgd, rmsprop):
    # the library passes both: no config options (an attribute on a function: mypy needs the ignore)
    _optimizer.context_arguments = ("parameters", "lr")  # type: ignore[attr-defined]


class LRSchedule(torch.optim.lr_scheduler.LambdaLR):
    """The learning rate train.lr times a factor of the step count, after a linear warm-up.

    factor(t) = min(1, (t + 1) / W) * shape(t) for W = `train.lr_warmup_steps` > 0, else
    shape(t); stepped once per optimizer step. `epoch_end(val_elbo)` is called after each
    epoch's evaluation (`plateau` reacts to it). Everything a schedule remembers is a
    number in its `__dict__`, which `state_dict` saves, so resumed runs continue it.
    """

    context_arguments = ("optimizer", "total_steps", "warmup_steps")

    def __init__(self, optimizer, total_steps, warmup_steps=0):
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        super().__init__(optimizer, lambda step: self.factor(step))

    def factor(self, step):
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return warmup * self.shape(step)

    def shape(self, step):
        return 1.0

    def rate(self, step):
        """The learning rate of optimizer step `step` (from 0): train.lr * factor(step), with the
        schedule's present state (a `plateau` cut applies from the step after `epoch_end`)."""
        return float(self.base_lrs[0]) * self.factor(step)

    def last_rate(self):
        """The learning rate the last optimizer step used (`metrics.csv`'s `lr`; before any
        step, the first step's)."""
        return self.rate(max(self.last_epoch - 1, 0))

    def epoch_end(self, val_elbo):
        pass


@LR_SCHEDULES.register("constant")
class Constant(LRSchedule):
    """The learning rate train.lr throughout (after any warm-up)."""


@LR_SCHEDULES.register("cosine")
class Cosine(LRSchedule):
    """Cosine decay from train.lr to 0 over all steps of the run: (1 + cos(pi t / T)) / 2."""

    def shape(self, step):
        return 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))


@LR_SCHEDULES.register("plateau")
class Plateau(LRSchedule):
    """Reduce on plateau: the rate times `factor` after `patience` epochs without a better validation ELBO.

    Better means above the best so far by more than `min_delta`."""

    def __init__(self, optimizer, total_steps, warmup_steps=0, patience=5, factor=0.5, min_delta=0.0):
        self.patience = integer(patience, "train.lr_schedule.patience", minimum=1)
        self.reduction = number(factor, "train.lr_schedule.factor", minimum=0, exclusive=True)
        if self.reduction >= 1:
            raise UserError(f"train.lr_schedule.factor must be < 1, got {factor}")
        self.min_delta = number(min_delta, "train.lr_schedule.min_delta", minimum=0)
        self.scale, self.best, self.epochs_without_improvement = 1.0, -math.inf, 0
        super().__init__(optimizer, total_steps, warmup_steps)

    def shape(self, step):
        return self.scale

    def epoch_end(self, val_elbo):
        if val_elbo > self.best + self.min_delta:
            self.best, self.epochs_without_improvement = val_elbo, 0
            return
        self.epochs_without_improvement += 1
        if self.epochs_without_improvement >= self.patience:
            self.scale *= self.reduction
            self.epochs_without_improvement = 0
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):  # from the next step on
                rate = base * self.factor(self.last_epoch)
                if torch.is_tensor(group["lr"]):
                    group["lr"].fill_(rate)
                else:
                    group["lr"] = rate
