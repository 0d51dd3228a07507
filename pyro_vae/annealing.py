"""Weighting the KL term from outside the model: a handler on the latent sites, and schedules.

The beta-weighted objective (Higgins et al. 2017)

    L_beta(x) = E_q[log p(x | z)] - beta * KL(q(z | x) || p(z))

is obtained without touching the model by scaling the log-densities of the
*unobserved* sample sites (`"z"`) by beta in both model and guide: the
Monte Carlo KL term `log q(z | x) - log p(z)` is then multiplied by beta,
while the observed site `"x"` is never scaled. `TraceMeanField_ELBO` reads only
the scale of the *guide's* site for its analytic KL, which this handler sets too.

A weight of exactly 0 is not a scale: `poutine.scale` refuses it, and setting
`msg["scale"] = 0` directly computes `0 * log p`, which is NaN wherever a
log-density is -inf. A weight of 0 therefore *masks* the latent sites
(`msg["mask"] = False`): Pyro then drops their terms, and the loss is exactly the
reconstruction term -log p(x | z), with no NaN and no tiny-epsilon approximation. That rule
is `kept`, which the handler and `weighted` (for terms computed without Pyro) share.

A schedule gives the weight as a pure function of the optimizer step (the number
of steps already taken), so resuming a run at step `t` resumes the schedule at
`t`. Built from config by `build_schedule`:

```
kl_weight = 0.5                                                     # constant
kl_weight = { name = "linear", start = 0.0, end = 1.0, epochs = 10 }
kl_weight = { name = "cyclical", cycles = 4, ratio = 0.5, shape = "cosine", epochs = 40 }
```

Capacity annealing's target C(t) is one of these schedules too; it and free bits change the KL
term itself rather than its weight (`penalties`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

import torch
from pyro.poutine.messenger import Messenger

from .checks import integer as _integer
from .checks import number as _number
from .registry import Registry, UserError

SCHEDULES = Registry("schedule")
# A KL weight: a number >= 0, a 0-dim tensor, or a zero-argument callable read at every site.
KLWeight: TypeAlias = "float | torch.Tensor | Callable[[], float | torch.Tensor]"
UNITS = ("step", "epoch")
SHAPES = ("linear", "sigmoid", "cosine")


# ---- the handler ----


class ScaleLatents(Messenger):
    """Multiply the log-probability of every unobserved sample site (of those named in
    `sites`, when given) by `weight`.

    `weight` is a number >= 0, a 0-dim tensor, or a zero-argument callable read at
    every site (so a schedule can change it between steps without rebuilding
    anything). A weight of 0 masks the sites instead of scaling them (see the module
    docstring); a tensor weight also masks where it is 0, with tensor operations
    only, so it stays a graph input under `torch.jit`.
    """

    def __init__(self, weight, sites=None):
        super().__init__()
        if not callable(weight):
            _check_weight(weight)
        self.weight = weight
        self.sites = None if sites is None else frozenset(sites)  # None: every latent site

    def current_weight(self):
        if not callable(self.weight):
            return self.weight
        return _check_weight(self.weight())

    def _process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        if self.sites is not None and msg["name"] not in self.sites:
            return
        weight = self.current_weight()
        keep = kept(weight)
        if keep is False:
            msg["mask"] = False
            return
        if keep is not None:
            msg["mask"] = keep if msg["mask"] is None else msg["mask"] & keep
        msg["scale"] = weight * msg["scale"]


def kept(weight):
    """Where a KL weight keeps the term it weights: the rule that a weight of 0 drops the term.

    False for the number 0 (the term is dropped, not multiplied: 0 * -inf would be NaN); for a
    tensor weight the boolean tensor `weight > 0` (a mask, so the term becomes
    where(weight > 0, weight * term, 0) without reading the tensor's value: it stays a graph input
    under `torch.jit` and a CUDA graph); None (kept everywhere) for any other number or None.
    `ScaleLatents` masks the latent sites by it, `weighted` the terms computed directly.
    """
    if isinstance(weight, torch.Tensor):
        return weight > 0
    return False if weight is not None and weight == 0 else None


def is_unit_weight(weight):
    """Whether a KL weight leaves the ELBO as it is (None or the number 1); a tensor always counts
    as a weight, since reading its value would synchronize with its device."""
    return weight is None or (not torch.is_tensor(weight) and weight == 1)


def weighted(weight, term):
    """`weight * term` for a KL weight (None or 1: `term` itself), under the rule of `kept`:
    zeros where the weight is 0, exactly (no 0 * -inf), and no host read of a tensor weight."""
    keep = kept(weight)
    if keep is False:
        return torch.zeros_like(term)
    if is_unit_weight(weight):
        return term
    return weight * term if keep is None else torch.where(keep, weight * term, torch.zeros_like(term))


def _check_weight(weight):
    if isinstance(weight, torch.Tensor):
        if weight.dim() != 0:
            raise ValueError(f"a KL weight tensor must be 0-dimensional, got shape {tuple(weight.shape)}")
        return weight
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError(f"a KL weight must be a number, a 0-dim tensor or a callable, got {weight!r}")
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"a KL weight must be a finite number >= 0, got {weight!r}")
    return weight


def kl_scaled(
    fn: Callable[..., Any], weight: KLWeight, sites: Iterable[str] | None = None
) -> Callable[..., Any]:
    """`fn` (a model or guide) with its latent sites' log-densities scaled by `weight`
    (only the sites named in `sites`, if given: M2 weights `("z",)` and not its label).

    Wrap model *and* guide with the same weight (a number, a 0-dim tensor or a
    zero-argument callable such as `lambda: schedule(step)`):

    ```
    SVI(kl_scaled(vae.model, beta), kl_scaled(vae.guide, beta), optim, Trace_ELBO())
    ```
    """
    return ScaleLatents(weight, sites)(fn)


# ---- schedules: weight = schedule(step), a pure function of the step count ----


def build_schedule(spec, steps_per_epoch, where="objective.kl_weight"):
    """A callable `schedule(step) -> float` from a number (a constant) or a table.

    `step` is the number of optimizer steps already taken (0 for the first step);
    `steps_per_epoch` converts `epochs` lengths and per-epoch stepping to steps.
    Raises a one-line `UserError` naming `where.<key>` for bad input.
    """
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return Constant(_number(spec, f"{where}", minimum=0))
    if isinstance(spec, Schedule):
        return spec
    if not isinstance(spec, dict):
        raise UserError(
            f"{where} must be a number >= 0 or a schedule table such as "
            f'{{ name = "linear", start = 0.0, end = 1.0, epochs = 10 }}, got {spec!r}'
        )
    return SCHEDULES.build(spec, where, steps_per_epoch=steps_per_epoch, config_key=where)


class Schedule:
    """Base class: `__call__(step)` is the weight in force for the step after `step` steps."""

    context_arguments = ("steps_per_epoch", "config_key")

    def __call__(self, step):
        raise NotImplementedError


@SCHEDULES.register("constant")
class Constant(Schedule):
    """The same weight at every step: beta * KL (beta-VAE)."""

    def __init__(self, value=1.0, steps_per_epoch=1, config_key="objective.kl_weight"):
        self.value = _number(value, f"{config_key}.value", minimum=0)

    def __call__(self, step):
        return self.value

    def __repr__(self):
        return f"Constant({self.value})"


class Ramp(Schedule):
    """A schedule that is a function of the fraction of its length gone by.

    The length is `epochs` (times steps per epoch) or `steps`; with `unit = "epoch"`
    the position only advances at epoch boundaries (the weight is constant within an
    epoch), with `unit = "step"` at every optimizer step.
    """

    def __init__(self, start, end, epochs, steps, unit, steps_per_epoch, config_key):
        self.start = _number(start, f"{config_key}.start", minimum=0)
        self.end = _number(end, f"{config_key}.end", minimum=0)
        if (epochs is None) == (steps is None):
            raise UserError(f"{config_key}: give the schedule's length as exactly one of epochs = N or steps = N")
        if unit not in UNITS:
            raise UserError(f"{config_key}.unit: unknown value {unit!r}; choose one of: {', '.join(UNITS)}")
        self.steps_per_epoch = _integer(steps_per_epoch, "steps_per_epoch", minimum=1)
        self.unit = unit
        if epochs is not None:
            self.length = _integer(epochs, f"{config_key}.epochs", minimum=1) * self.steps_per_epoch
        else:
            self.length = _integer(steps, f"{config_key}.steps", minimum=1)

    def position(self, step):
        """Steps counted by the schedule: all of them, or those before this epoch began."""
        step = _integer(step, "step", minimum=0)
        if self.unit == "epoch":
            return step - step % self.steps_per_epoch
        return step

    def between(self, fraction):
        """start + (end - start) * fraction."""
        return self.start + (self.end - self.start) * fraction


@SCHEDULES.register("linear")
class Linear(Ramp):
    """Linear warm-up from start to end over the length, then hold at end (Bowman et al. 2015)."""

    def __init__(self, start=0.0, end=1.0, epochs=None, steps=None, unit="step", steps_per_epoch=1,
                 config_key="objective.kl_weight"):
        super().__init__(start, end, epochs, steps, unit, steps_per_epoch, config_key)

    def __call__(self, step):
        # w(t) = start + (end - start) * min(t / T, 1)
        return self.between(min(self.position(step) / self.length, 1.0))


@SCHEDULES.register("sigmoid")
class Sigmoid(Ramp):
    """Logistic warm-up from start (exactly, at step 0) to end (exactly, at the length), then hold."""

    def __init__(self, start=0.0, end=1.0, epochs=None, steps=None, steepness=10.0, unit="step",
                 steps_per_epoch=1, config_key="objective.kl_weight"):
        super().__init__(start, end, epochs, steps, unit, steps_per_epoch, config_key)
        self.steepness = _number(steepness, f"{config_key}.steepness", minimum=0, exclusive=True)

    def __call__(self, step):
        return self.between(sigmoid_rise(min(self.position(step) / self.length, 1.0), self.steepness))


@SCHEDULES.register("cyclical")
class Cyclical(Ramp):
    """Cyclical annealing (Fu et al. 2019): `cycles` rises from start to end over the length, repeating."""

    def __init__(self, start=0.0, end=1.0, epochs=None, steps=None, cycles=4, ratio=0.5, shape="linear",
                 unit="step", steps_per_epoch=1, config_key="objective.kl_weight"):
        super().__init__(start, end, epochs, steps, unit, steps_per_epoch, config_key)
        self.cycles = _integer(cycles, f"{config_key}.cycles", minimum=1)
        self.ratio = _number(ratio, f"{config_key}.ratio", minimum=0, exclusive=True)
        if self.ratio > 1:
            raise UserError(f"{config_key}.ratio must be in (0, 1] (the rising fraction of each cycle), got {ratio}")
        if shape not in SHAPES:
            raise UserError(f"{config_key}.shape: unknown value {shape!r}; choose one of: {', '.join(SHAPES)}")
        self.shape = shape

    def __call__(self, step):
        # tau = ((t * M) mod T) / T is the phase in [0, 1) of cycle length T / M, computed in
        # integers so cycle boundaries are exact; the weight rises over the first `ratio`
        # of each cycle and holds at `end` for the rest. The formula is periodic in t.
        phase = (self.position(step) * self.cycles) % self.length / self.length
        rise = min(phase / self.ratio, 1.0)
        if self.shape == "sigmoid":
            rise = sigmoid_rise(rise, 10.0)
        elif self.shape == "cosine":
            rise = 0.5 * (1.0 - math.cos(math.pi * rise))
        return self.between(rise)


def sigmoid_rise(u, steepness):
    """The logistic s(k (u - 1/2)) rescaled to run from exactly 0 at u = 0 to exactly 1 at u = 1."""
    low, high = _logistic(-steepness / 2), _logistic(steepness / 2)
    return (_logistic(steepness * (u - 0.5)) - low) / (high - low)


def _logistic(a):
    return 1.0 / (1.0 + math.exp(-a))
