"""Per data point log weights, log w_k = log p(x, z_k) - log q(z_k | x), traced and direct, side by side.

The traced weights (`log_weights`) work for any model and guide whose sample sites hold one
value per data point; the direct ones (`direct_log_weights`) compute the same numbers for the
library's own `VAE.model`/`VAE.guide` (`standard_vae`) without tracing them. The particle
estimators train on them, evaluation's importance-sampled log-likelihood estimates log p(x) from them,
and `importance_weighted_bound` turns them into the IWAE and Renyi bounds.
"""

import math

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from .._pyro_compat import handlers_active
from ..annealing import weighted
from ..registry import UserError
from .rewrap import RewrapLatents

# ---- traced: any model and guide ----


def repeat_particles(x, num_particles):
    """`x` repeated K times along its first dimension: row k * N + n is particle k of data point n."""
    return x.repeat(num_particles, *([1] * (x.dim() - 1))) if num_particles > 1 else x


def particle_traces(model, guide, x, num_particles=1, guide_wrapper=None, labels=(), encode_once=False):
    """The guide's trace for K particles per data point of x, and the model's replayed against it on x
    repeated K times (row k * N + n is particle k of data point n, the model's networks and plates
    seeing an ordinary batch of K * N). `guide_wrapper` re-wraps the guide's latent sites
    (`RewrapLatents`); `labels` are the programs' further arguments (a conditional model's
    y), repeated likewise.

    The guide runs on x repeated K times too, or, with `encode_once`, once on x inside a
    `"particles"` plate (dim -2, left of the `"data"` plate), so its encoder sees each data point
    once and draws K codes for it, shape (K, N, ...); the model is then replayed against those codes
    flattened particle-major.
    """
    if guide_wrapper is not None:
        guide = RewrapLatents(guide_wrapper)(guide)
    repeated = (repeat_particles(x, num_particles), *(repeat_particles(y, num_particles) for y in labels))
    if not encode_once:
        guide_trace = poutine.trace(guide).get_trace(*repeated)
        return guide_trace, poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*repeated)
    with pyro.plate("particles", num_particles, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x, *labels)
    flat = poutine.Trace()
    for site in sample_sites(guide_trace):
        value = site["value"]
        flat.add_node(site["name"], **{**site, "value": value.reshape(num_particles * len(x), *value.shape[2:])})
    return guide_trace, poutine.trace(poutine.replay(model, trace=flat)).get_trace(*repeated)


def log_weights(model, guide, x, num_particles=1, guide_wrapper=None, labels=(), encode_once=False, scaled=True):
    """log p(x_i, z_ki) and log q(z_ki | x_i) for K particles z_ki ~ q(z | x_i), each (K, N), and the
    guide's trace (`particle_traces` draws them: `guide_wrapper`, `labels`, `encode_once`).

    `scaled`: each site's log-density carries its handlers' scale and mask (a KL weight: what the
    training bounds optimize); else it is read from the site's distribution, `fn.log_prob(value)`,
    so no KL weight or subsampling scale around the programs can leak into the numbers (evaluation's
    estimate of log p(x)). Every sample site must hold one value per data point (in the plate).
    """
    n = len(x)
    guide_trace, model_trace = particle_traces(model, guide, x, num_particles, guide_wrapper, labels, encode_once)
    log_p = _sum_sites(model_trace, num_particles, n, scaled)
    log_q = _sum_sites(guide_trace, num_particles, n, scaled)
    return log_p, log_q, guide_trace


def sample_sites(trace):
    """The trace's sample sites, without the plates' subsample sites."""
    return [site for site in trace.nodes.values() if site["type"] == "sample" and not site_is_subsample(site)]


def _sum_sites(trace, num_particles, n, scaled):
    """The sum of the sample sites' log-densities, shape (K, N)."""
    if scaled:
        trace.compute_log_prob()
    total: torch.Tensor | float = 0.0
    for site in sample_sites(trace):
        log_prob = site["log_prob"] if scaled else site["fn"].log_prob(site["value"])
        if log_prob.shape not in ((num_particles * n,), (num_particles, n), ()):
            raise UserError(
                f"site {site['name']!r} has log-density shape {tuple(log_prob.shape)}; the particle "
                "estimators need every sample site to hold one value per data point"
            )
        total = total + (log_prob if log_prob.dim() == 0 else log_prob.reshape(num_particles, n))
    assert isinstance(total, torch.Tensor)  # a model and its guide each have a sample site (z)
    return total.expand(num_particles, n) if total.dim() == 0 else total


def importance_weighted_bound(log_w, alpha=0.0):
    """Renyi's bound per data point (Li & Turner 2016), from log weights of shape (K, N):

        L_alpha(x) = 1 / (1 - alpha) log (1/K) sum_k w_k^(1 - alpha),   w_k = p(x, z_k) / q(z_k | x)

    alpha = 0 is the IWAE bound (Burda et al. 2015); alpha -> 1 is the ELBO.
    """
    k = log_w.shape[0]
    return (torch.logsumexp((1.0 - alpha) * log_w, 0) - math.log(k)) / (1.0 - alpha)


# ---- direct: the library's own programs, the same numbers without tracing ----


def standard_vae(model, guide):
    """The VAE whose own, unmodified `model` and `guide` these are, run under no handler; else None.

    Only then do the direct computations (`direct_log_weights`, `terms.reparameterized_loss`)
    compute exactly what Pyro would: a subclass may redefine the programs, a wrapper or an enclosing
    handler may change them.
    """
    vae = getattr(model, "__self__", None)
    if vae is None or not getattr(vae, "has_standard_programs", False) or handlers_active():
        return None
    return vae if model == vae.model and guide == vae.guide else None


def direct_log_weights(vae, x, num_particles, kl_weight=None, guide_wrapper=None):
    """log w_k = log p(x, z_k) - log q(z_k | x) for `VAE.model`/`VAE.guide`, shape `(K, N)`,
    computed directly: what the traced particle path (`log_weights`, x repeated K times)
    computes for those programs, without tracing them and with the encoder run once per data point.
    Under a KL weight w, as under the handler that scales the latent sites,
    log w_k = log p(x | z_k) - w (log q(z_k | x) - log p(z_k)); `guide_wrapper` wraps q as
    `RewrapLatents` wraps the guide's site (`PathDerivative`: log q at detached parameters).
    Also returns the draws z, shape `(K, N, latent_dim)`.

    The guide's draw for K particles, `q(z | x).rsample((K,))`, takes the same standard normals
    in the same order as the traced path's draw for x repeated K times (row k * N + n is
    particle k of data point n), and every density is the VAE's own (`guide_dist`,
    `prior_dist`, `likelihood_dist`), so values and gradients are the same.
    """
    n = x.shape[0]
    guide = vae.guide_dist(x)
    if guide_wrapper is not None:
        guide = guide_wrapper(guide)
    z = guide.rsample((num_particles,))  # (K, N, latent_dim)
    repeated = x.expand(num_particles, *x.shape).reshape(num_particles * n, *x.shape[1:])
    log_px = vae.likelihood_dist(z.reshape(num_particles * n, -1), repeated).log_prob(repeated).reshape(num_particles, n)
    return log_px - weighted(kl_weight, guide.log_prob(z) - vae.prior_dist().log_prob(z)), z
