"""The ELBO's two terms, reconstruction and KL, apart: the one KL function, and the losses built on it.

- `kl_term`: KL(q(z | x) || p(z)) per data point (or per latent dimension), in closed form
  where asked and available, else the Monte Carlo value at the drawn z; `analytic_kl` is
  its closed form alone (None where there is none).
- `reparameterized_loss`: `Trace_ELBO`'s (`TraceMeanField_ELBO`'s) loss for the
  library's own programs, computed directly.
- `elbo_parts` and `penalized_loss`: the terms for any model and guide, and the loss
  with the KL term replaced by a penalty of it (capacity, free bits).

A KL weight multiplies the KL term by `annealing.weighted` (a weight of 0 drops it).
"""

import torch
from torch.distributions import kl_divergence

from ..annealing import weighted
from ..registry import UserError
from .log_weights import particle_traces, sample_sites, standard_vae
from .rewrap import PathDerivative, detach_parameters


def analytic_kl(guide_dist, prior_dist):
    """KL(q || p) per data point in closed form, or None where it has none."""
    try:
        return kl_divergence(guide_dist, prior_dist)
    except NotImplementedError:
        return None


def kl_term(guide_dist, prior_dist, z, analytic=False, per_dimension=False):
    """KL(q(z | x) || p(z)) per data point, shape (N,), or per data point and latent dimension,
    shape (N, d) with `per_dimension`: in closed form under `analytic` where it has one,
    else the Monte Carlo value log q(z | x) - log p(z) at the drawn `z`. A guide marked
    `PathDerivative` (stl) is scored at detached parameters, as its own `log_prob` is."""
    if isinstance(guide_dist, PathDerivative):
        guide_dist = detach_parameters(guide_dist.base)
    if per_dimension:
        guide_dist, prior_dist = factors(guide_dist, "guide"), factors(prior_dist, "prior")
    kl = analytic_kl(guide_dist, prior_dist.expand(guide_dist.batch_shape)) if analytic else None
    return guide_dist.log_prob(z) - prior_dist.log_prob(z) if kl is None else kl


def factors(distribution, what="prior"):
    """The per-dimension factors of a distribution over vectors that factorizes (an Independent
    over the last dimension), whose log_prob gives one value per dimension; else a UserError."""
    base = getattr(distribution, "base_dist", None)
    if base is None or getattr(distribution, "reinterpreted_batch_ndims", None) != 1 or base.event_shape != ():
        raise UserError(
            f"free bits need the KL per latent dimension, so a {what} that factorizes over dimensions "
            f"(e.g. model.prior = \"normal\" or \"learned_normal\"); this {what} is a {type(distribution).__name__}"
        )
    return base


def reparameterized_loss(vae, x, kl_weight=None, analytic=False):
    """`Trace_ELBO`'s loss (`TraceMeanField_ELBO`'s with `analytic`) for `vae.model` and
    `vae.guide`, computed directly: the same noise, value and gradients, without tracing.

        loss = -sum_n [ log p(x_n | z_n) - w (log q(z_n | x_n) - log p(z_n)) ],  z_n ~ q(z | x_n) reparameterized

    with the KL term in closed form under `analytic` where it has one, and every density
    from the VAE's own `guide_dist`, `prior_dist` and `likelihood_dist` (the ones its
    programs sample from). Pyro's trace bookkeeping costs about as much as a small
    network's step on a CPU; this path removes it. A weight of 0 drops the KL term, as the
    masking handler does (a tensor weight: where(w > 0, w KL, 0), with no host read).
    """
    guide = vae.guide_dist(x)
    z = guide.rsample()  # the draw the guide's "z" site makes: same RNG, same shape
    log_likelihood = vae.likelihood_dist(z, x).log_prob(x).sum()
    return -(log_likelihood - weighted(kl_weight, kl_term(guide, vae.prior_dist(), z, analytic).sum()))


def elbo_parts(model, guide, x, analytic=False, per_dimension=False, num_particles=1, guide_wrapper=None):
    """The ELBO's two terms, differentiable (pathwise), for each data point:
    `(reconstruction, kl)` = (E_q log p(x_n | z), KL(q(z | x_n) || p(z))) as `kl_term` computes it,
    shapes (N,) and (N,) or (N, d), averaged over `num_particles` draws of z.

    For the library's own VAE (one particle) they are computed directly from its densities;
    otherwise from a trace of the guide (wrapped in `guide_wrapper`) and the model replayed
    against it, reading each site's unscaled `fn.log_prob`. Every latent site must be
    reparameterized: these terms carry no score-function gradient.
    """
    vae = standard_vae(model, guide)
    if vae is not None and num_particles == 1:
        q = vae.guide_dist(x)
        z = q.rsample()
        reconstruction = vae.likelihood_dist(z, x).log_prob(x)
        return reconstruction, kl_term(q if guide_wrapper is None else guide_wrapper(q), vae.prior_dist(), z,
                                       analytic, per_dimension)
    n = len(x)
    guide_trace, model_trace = particle_traces(model, guide, x, num_particles, guide_wrapper)
    reconstruction, kl = 0.0, 0.0
    for site in sample_sites(model_trace):
        name = site["name"]
        if site["is_observed"]:
            reconstruction = reconstruction + site["fn"].log_prob(site["value"])
            continue
        q = guide_trace.nodes[name]["fn"]
        if not q.has_rsample:
            raise UserError(f"capacity and free bits need a reparameterized guide; site {name!r} is not")
        kl = kl + kl_term(q, site["fn"], site["value"], analytic, per_dimension)
    for term in (reconstruction, kl):
        if not torch.is_tensor(term) or term.shape[:1] != (num_particles * n,):
            raise UserError("capacity and free bits need every sample site to hold one value per data point")
    average = lambda t: t.reshape(num_particles, n, *t.shape[1:]).mean(0)
    return average(reconstruction), average(kl)


def penalized_loss(model, guide, x, kl_penalty, kl_weight=None, analytic=False, num_particles=1, guide_wrapper=None):
    """-(sum_n E_q log p(x_n | z) - w * kl_penalty(KL)): the loss with the KL term replaced by a penalty
    of the minibatch's KL (`penalties.Capacity`, `penalties.FreeBits`), w the KL weight."""
    reconstruction, kl = elbo_parts(model, guide, x, analytic, kl_penalty.per_dimension, num_particles, guide_wrapper)
    return -(reconstruction.sum() - weighted(kl_weight, kl_penalty(kl)))
