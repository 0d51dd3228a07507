"""The estimators' base class and registry: what every estimator does the same way.

An estimator turns `(model, guide, x)` into a differentiable loss, summed over the minibatch,
whose gradient is the chosen estimator of the objective's gradient. The registered ones live by
family, as in `pyro.infer`: `elbos` (one of Pyro's ELBOs: trace, meanfield, enum, stl)
and `particles` (built on per data point log weights: score, renyi, iwae, dreg, tail_adaptive).
Adding one is one class and one `@ESTIMATORS.register` line: the messages below and the tests'
parametrizations read the registry and the class attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..annealing import is_unit_weight, kl_scaled
from ..registry import Registry, UserError, listing
from .log_weights import standard_vae
from .terms import penalized_loss

if TYPE_CHECKING:
    from ..annealing import KLWeight
    from ..guides import GuideFamily
    from ..penalties import Capacity, FreeBits
    from .programs import Programs

ESTIMATORS = Registry("estimator")


class Estimator(nn.Module):
    """Base class: `loss(model, guide, x, kl_weight=None)`, a differentiable loss summed over x.

    `loss` applies the KL weight (see the docstring of the package, `pyro_vae.objectives`) and
    calls the subclass's `differentiable_loss(model, guide, x)`; a subclass that can compute the
    loss of the library's own VAE programs without tracing them defines `direct_loss(vae, x, kl_weight)`.
    An `nn.Module` only so that estimators with state (baselines) move, train and
    checkpoint like the VAE; most have none.
    """

    # The library supplies these from the [objective] section; a config table for the
    # estimator itself sets only the options of its own class (alpha, baseline, ...).
    context_arguments: tuple[str, ...] = ("num_particles", "vectorize_particles", "jit", "data_shape")
    reports_elbo = True
    supports_kl_weight = True
    supports_kl_penalty = False
    supports_jit = False
    supports_labels = False  # whether differentiable_loss takes labels: (model, guide, x, y)
    minimum_particles = 1
    # Opt-in: True only where the loss is tensor arithmetic that never reads from the device, so a
    # CUDA graph can capture the step; every estimator declaring it is tested sync-free and captured.
    capturable = False
    # A discrete latent (a model's `discrete_latents`: the gmvae's component y): whether this estimator
    # can train one (enum sums it out, score scores it, relaxed relaxes it), and whether it needs one.
    handles_discrete_latents = False
    needs_discrete_latent = False

    def __init__(
        self,
        num_particles: int = 1,
        vectorize_particles: bool = False,
        jit: bool = False,
        data_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if num_particles < self.minimum_particles:
            raise UserError(
                f"estimator {self.registered_name!r} needs objective.num_particles >= "
                f"{self.minimum_particles}, got {num_particles}"
            )
        if jit and not self.supports_jit:
            jittable = ", ".join(ESTIMATORS.names(supports_jit=True))
            raise UserError(
                f"objective.jit = true is not available for estimator {self.registered_name!r}; "
                f"use it with {jittable}, or set objective.jit = false"
            )
        self.num_particles = num_particles
        self.vectorize_particles = vectorize_particles
        self.jit = jit
        self.data_shape = data_shape

    def loss(
        self,
        model: Callable[..., Any],
        guide: Callable[..., Any],
        x: torch.Tensor,
        kl_weight: KLWeight | None = None,
        kl_penalty: Capacity | FreeBits | None = None,
        y: torch.Tensor | None = None,
        sites: Iterable[str] | None = None,
    ) -> torch.Tensor:
        """The loss of `model`/`guide` on `x` with the latent sites' log-densities scaled by
        `kl_weight` (None or 1: unweighted; a number, 0-dim tensor, or a callable read once);
        with a `kl_penalty`, -(reconstruction - kl_weight * kl_penalty(KL)) instead.

        `y`: labels, passed on as the programs' second argument, `model(x, y)`, by the
        estimators that `support_labels`. `sites`: the latent sites the weight scales
        (None: all of them)."""
        if callable(kl_weight):
            kl_weight = kl_weight()
        if kl_penalty is not None:
            if y is not None or sites is not None:
                raise UserError("capacity and free bits are for models without labels (model.kind = \"vae\")")
            self.check_kl_penalty(kl_penalty.name)
            return penalized_loss(
                model, guide, x, kl_penalty, kl_weight, analytic=self.analytic_kl,
                num_particles=self.num_particles, guide_wrapper=self.guide_wrapper,
            )
        vae = standard_vae(model, guide)
        if vae is not None and self.direct_loss is not None and y is None:
            loss = self.direct_loss(vae, x, kl_weight)
            if loss is not None:
                return loss
        if kl_weight is not None and not is_unit_weight(kl_weight):  # None is a unit weight, spelled out for mypy
            model, guide = kl_scaled(model, kl_weight, sites), kl_scaled(guide, kl_weight, sites)
        if y is None:
            return self.differentiable_loss(model, guide, x)
        if not self.supports_labels:
            raise UserError(f"estimator {self.registered_name!r} cannot pass labels to the model; {label_estimators()}")
        # An estimator that supports labels takes them after x: (model, guide, x, *labels).
        with_labels: Callable[..., torch.Tensor] = self.differentiable_loss
        return with_labels(model, guide, x, y)

    # None, or a method (vae, x, kl_weight) -> the loss (None where it does not apply)
    direct_loss: Callable[[Any, torch.Tensor, Any], torch.Tensor | None] | None = None
    analytic_kl = False  # whether the KL term is taken in closed form where it has one
    guide_wrapper: type | None = None  # a _Rewrapped class applied to the guide's latent sites

    def differentiable_loss(self, model: Callable[..., Any], guide: Callable[..., Any], x: torch.Tensor) -> torch.Tensor:
        """The loss of `model`/`guide` on `x`; an estimator that `supports_labels` takes them
        too, `(model, guide, x, *labels)`."""
        raise NotImplementedError

    def capture_obstacle(self, vae: Programs) -> str | None:
        """Why a CUDA graph cannot capture this estimator's step for `vae`, or None if it can:
        the loss must never read a value from the device (`.item()`, a Python branch on a
        tensor). Capture is opt-in: an estimator declares `capturable = True` (the particle
        estimators' losses are tensor arithmetic on `log_weights`)."""
        if self.jit:
            return "objective.jit = true compiles the loss with torch.jit, which is not captured"
        if not self.capturable:
            return (f"estimator {self.registered_name!r} does not declare its loss capturable "
                    "(capturable = True: it never reads a value from the device)")
        return None

    def set_steps_per_epoch(self, steps_per_epoch: int) -> None:
        """Told by `build.build` once the steps per epoch are known (a schedule in epochs of the
        estimator's own, `relaxed`'s temperature); most estimators have none."""

    def check_model(self, model: Programs) -> None:
        """Refuse, in one line, a model without the discrete latent this estimator needs (`relaxed`)."""
        if self.needs_discrete_latent and not model.discrete_latents:
            raise UserError(
                f"estimator {self.registered_name!r} relaxes a discrete latent, which model.kind = {model.kind!r} does not "
                "have; use it with a model with one (model.kind = \"gmvae\")"
            )

    detaches_guide_parameters = False  # scores z under log q at detached parameters (PathDerivative)

    def check_guide(self, guide_family: GuideFamily) -> None:
        """Refuse a guide family this estimator cannot use (one that cannot be scored at detached parameters)."""
        if self.detaches_guide_parameters and not getattr(guide_family, "detachable", True):
            raise UserError(
                f"estimator {self.registered_name!r} scores z at detached guide parameters, which the "
                f"{guide_family.registered_name!r} guide cannot do without inverting its flow; use "
                f"{listing(ESTIMATORS.names(detaches_guide_parameters=False))}"
            )

    def check_kl_weight(self, constant: float | None = None) -> None:
        """Refuse a KL weight this estimator cannot honour (`constant` None: a schedule)."""
        if not self.supports_kl_weight and constant != 1.0:
            raise UserError(
                f"estimator {self.registered_name!r} cannot weight the KL term: inside an importance "
                "weight a scale reweights the particles instead; use objective.kl_weight = 1"
            )

    def check_kl_penalty(self, what: str = "capacity") -> None:
        """Refuse a KL penalty (`what`: "capacity" or "free bits") this estimator cannot honour."""
        if not self.supports_kl_penalty:
            able = ", ".join(ESTIMATORS.names(supports_kl_penalty=True))
            raise UserError(
                f"estimator {self.registered_name!r} cannot take objective.{what.replace(' ', '_')}: it needs "
                f"the reconstruction and KL terms apart, which this estimator does not have; use {able}"
            )
        if self.jit:
            raise UserError(f"objective.{what.replace(' ', '_')} is not available with objective.jit = true")


def discrete_latents(program: Any) -> tuple[str, ...]:
    """The discrete latent sites the model of `program` (a bound `model` or `guide`) names in its
    `discrete_latents` (none for a function or a model without any)."""
    return tuple(getattr(getattr(program, "__self__", None), "discrete_latents", ()))


def label_estimators() -> str:
    """Which estimators a model with labels trains with, as advice for a message."""
    return f"models with labels train with objective.estimator = {listing(ESTIMATORS.names(supports_labels=True), quote=True)}"
