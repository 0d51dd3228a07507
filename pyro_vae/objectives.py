"""ELBO estimators, by name, and the ELBO's terms for each data point.

An estimator turns ``(model, guide, x)`` into a differentiable loss: the negative
ELBO summed over the minibatch, whose gradient is the chosen estimator of the
ELBO's gradient. Estimators differ in their gradients, not in what they estimate.
"""

import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

from .registry import Registry

ESTIMATORS = Registry("estimator")


class Estimator:
    """Base class: wraps one of Pyro's ELBOs; ``loss`` is the negative ELBO summed over x."""

    elbo_class = Trace_ELBO

    def __init__(self, num_particles=1, vectorize_particles=False):
        self.num_particles = num_particles
        # max_plate_nesting is known (one "data" plate), which spares Pyro a guessing run.
        self.elbo = self.elbo_class(
            num_particles=num_particles, vectorize_particles=vectorize_particles, max_plate_nesting=1
        )

    def loss(self, model, guide, x):
        return self.elbo.differentiable_loss(model, guide, x)


@ESTIMATORS.register("trace")
class TraceEstimator(Estimator):
    """Trace_ELBO: Monte Carlo ELBO with pathwise (reparameterized) gradients for z (the default)."""

    elbo_class = Trace_ELBO


@ESTIMATORS.register("meanfield")
class MeanFieldEstimator(Estimator):
    """TraceMeanField_ELBO: the KL term in closed form where it exists (normal prior)."""

    elbo_class = TraceMeanField_ELBO


def analytic_kl(guide_dist, prior_dist):
    """KL(q || p) per data point in closed form, or None where it has none."""
    try:
        return kl_divergence(guide_dist, prior_dist)
    except NotImplementedError:
        return None


@torch.no_grad()
def kl_per_dimension(vae, x):
    """KL(q(z_d | x) || p(z_d)) for each data point and latent dimension, shape (N, latent_dim),
    where the prior factorizes over dimensions in closed form; else None."""
    loc, scale = vae.encoder(x)
    prior = vae.prior(vae.encoder)
    base = getattr(prior, "base_dist", None)
    if base is None:
        return None
    try:
        return kl_divergence(torch.distributions.Normal(loc, scale), base.expand(loc.shape))
    except (NotImplementedError, RuntimeError):
        return None


@torch.no_grad()
def elbo_terms(vae, x):
    """The ELBO and its two terms for each data point of ``x``, one sample of z each.

    Returns a dict of tensors of shape ``(N,)``: ``reconstruction`` = log p(x | z),
    ``kl`` = KL(q(z | x) || p(z)) (closed form where it exists, else the Monte Carlo
    value log q(z | x) - log p(z) at the drawn z), and ``elbo`` = reconstruction - kl.
    Log-densities are read from the sites' distributions directly, so no handler's
    scale (KL weight, subsampling) leaks into them.
    """
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    q, p = guide_trace.nodes["z"]["fn"], model_trace.nodes["z"]["fn"]
    z = guide_trace.nodes["z"]["value"]
    reconstruction = model_trace.nodes["x"]["fn"].log_prob(x)
    kl = analytic_kl(q, p)
    if kl is None:
        kl = q.log_prob(z) - p.log_prob(z)
    return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}
