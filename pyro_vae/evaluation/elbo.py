"""The ELBO on a data set: its mean and terms, the KL per latent dimension and per layer, and active units.

Active units (Burda et al. 2015): dimension d is active when `Cov_x(E_q[z_d | x]) > 0.01 Var_p(z_d)`:
the criterion is stated for an N(0, I) prior, and a learned prior sets its own scale (`prior_variances`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from pyro import poutine

from ..data import HIDDEN, LabeledBatch
from ..objectives import analytic_kl, factors, kl_term, sample_sites
from ..registry import UserError
from ..seeding import EVALUATION_SEED, seeded_eval

if TYPE_CHECKING:
    from ..models import VAE

ACTIVE_UNIT_THRESHOLD = 0.01


@torch.no_grad()
def evaluate_elbo(vae: VAE, batches: Iterable[torch.Tensor | LabeledBatch], seed: int = EVALUATION_SEED,
                  all_reduce: Callable[[torch.Tensor], Any] | None = None) -> dict[str, Any]:
    """Means over data points of the ELBO and its terms, one z per data point, fixed noise.

    Returns `elbo`, `reconstruction` (E_q log p(x|z)), `kl`, `kl_per_dimension`
    (a list, where the KL factorizes over dimensions in closed form, else None),
    `active_units` (summed over latent layers) and `num_examples`; a model with
    several latent layers adds `kl_per_layer` and `active_units_per_layer` (by site).
    Everything is accumulated as sums, so that
    under data-parallel training each process evaluates its shard and `all_reduce`
    (e.g. `torch.distributed.all_reduce`) combines the sums before the means are taken.

    `batches` may yield `data.LabeledBatch` for a model with labels (`labeled_terms`): then
    `kl_per_dimension` is None, and a model with a classifier adds `accuracy` on the points
    whose label is known. A model with a discrete latent (`discrete_latents`: the gmvae) is scored
    on its exact ELBO, the latent summed out (its `elbo_terms`).
    """
    sums: dict[str, torch.Tensor] = {}

    def add(name, value):  # float64 sums kept where the data is: read from the device once, at the end
        value = torch.as_tensor(value, dtype=torch.float64, device=device)
        sums[name] = value if name not in sums else sums[name] + value

    device = next(vae.parameters()).device
    with seeded_eval(vae, seed):
        for batch in batches:
            if not isinstance(batch, LabeledBatch) and vae.takes_labels:
                batch = LabeledBatch(batch, torch.full(batch.shape[:1], HIDDEN, device=batch.device))
            if isinstance(batch, LabeledBatch):  # a model with labels
                x, y, terms, codes = labeled_terms(vae, batch, add)
                if x is None:
                    continue
                layers = {"z": codes}
            elif vae.discrete_latents:  # y summed out exactly: the model's own ELBO, whatever trained it
                x, terms, layers = batch, vae.elbo_terms(batch), vae.encode_layers(batch)
            else:
                x, guide_trace = batch, poutine.trace(vae.guide).get_trace(batch)
                terms = elbo_terms(vae, x, guide_trace)
                if vae.has_standard_programs:  # q(z | x) is the guide's one site: one encoder pass serves all
                    guide = guide_trace.nodes["z"]["fn"]
                    layers, per_dim = {"z": vae.guide_family.mean(guide)}, kl_per_dimension(vae, x, guide)
                else:
                    layers, per_dim = vae.encode_layers(x), kl_per_dimension(vae, x)
                if per_dim is not None:
                    add("kl_per_dimension", per_dim.double().sum(0))
            for name, values in terms.items():
                add(name, values.double().sum())
            for site, codes in layers.items():
                codes = codes.double()
                add(f"code_sum/{site}", codes.sum(0))
                add(f"code_square_sum/{site}", (codes * codes).sum(0))
            add("count", len(x))
    if all_reduce is not None:
        for value in sums.values():
            all_reduce(value)
    if "count" not in sums:
        raise UserError("no data points to score: a conditional model (cvae) scores only points with labels")
    sums = {name: value.cpu() for name, value in sums.items()}
    count = sums["count"].item()
    result: dict[str, Any] = {name: (sums[name] / count).item() for name in ("elbo", "reconstruction", "kl")}
    kl_dims = sums.get("kl_per_dimension")
    result["kl_per_dimension"] = None if kl_dims is None else (kl_dims / count).tolist()
    active = {}
    prior_variance = prior_variances(vae, seed)
    for name in sums:
        if name.startswith("code_sum/"):
            site = name.split("/", 1)[1]
            # Var_x(E_q[z_d | x]) from the sums: (sum c^2 - (sum c)^2 / n) / (n - 1)
            variance = (sums[f"code_square_sum/{site}"] - sums[name] ** 2 / count) / max(count - 1, 1)
            relative = variance / prior_variance[site]
            active[site] = int((relative > ACTIVE_UNIT_THRESHOLD).sum()) if count > 1 else 0
    result["active_units"] = sum(active.values())
    if len(active) > 1:  # a model with several latent layers: each layer's KL and active units
        result["kl_per_layer"] = {site: (sums[f"kl/{site}"] / count).item() for site in active}
        result["active_units_per_layer"] = active
    result["num_examples"] = int(count)
    if "labeled_count" in sums and sums["labeled_count"].item() > 0:
        result["accuracy"] = (sums["correct"] / sums["labeled_count"]).item()
    return result


@torch.no_grad()
def kl_per_dimension(vae, x, guide=None):
    """KL(q(z_d | x) || p(z_d)) for each data point and latent dimension, shape (N, latent_dim),
    where both the guide and the prior factorize over dimensions in closed form; else None.
    `guide` is q(z | x) when the caller has it already (`vae.guide_dist(x)`)."""
    if not vae.has_standard_programs or not vae.guide_family.factorizes:
        return None
    try:
        q, p = factors(vae.guide_dist(x) if guide is None else guide, "guide"), factors(vae.prior_dist(), "prior")
    except UserError:  # a prior that does not factorize over dimensions (a mixture, a flow)
        return None
    return analytic_kl(q, p.expand(q.batch_shape))


@torch.no_grad()
def elbo_terms(vae, x, guide_trace=None):
    """The ELBO and its terms for each data point of `x`, one sample of the latents each.

    Returns a dict of tensors of shape `(N,)`: `reconstruction` = log p(x | z),
    `kl` = KL(q(z | x) || p(z)) (closed form where it exists, else the Monte Carlo
    value log q(z | x) - log p(z) at the drawn z: `objectives.kl_term`), and
    `elbo` = reconstruction - kl.
    With several latent sites (a two-layer model) `kl` is the sum over sites of each
    site's term, KL(q(z_l | ...) || p(z_l | ...)) at the drawn values of the others, and
    `kl/<site>` holds each. Log-densities are read from the sites' distributions
    directly, so no handler's scale (KL weight, subsampling) leaks into them. `guide_trace`
    is a trace of `vae.guide(x)` when the caller has one (it also reads the guide's sites).
    """
    if guide_trace is None:
        guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    reconstruction = model_trace.nodes["x"]["fn"].log_prob(x)
    terms = {}
    for site in sample_sites(guide_trace):
        name = site["name"]
        terms[f"kl/{name}"] = kl_term(site["fn"], model_trace.nodes[name]["fn"], site["value"], analytic=True)
    kl = sum(terms.values())
    result = {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}
    if len(terms) > 1:
        result.update(terms)
    return result


PRIOR_VARIANCE_SAMPLES = 4096


@torch.no_grad()
def prior_variances(vae, seed=EVALUATION_SEED, num_samples=PRIOR_VARIANCE_SAMPLES):
    """{site: Var_p(z_d)} per latent dimension, the prior's marginal variance: in closed form where
    the prior has one (normal, learned normal, mixtures, the VampPrior), else from `num_samples`
    draws on a forked RNG (about 2% relative error; a threshold needs no more), float64 on the CPU.

    Burda et al.'s criterion Cov_x(E_q[z_d | x]) > 0.01 is stated for an N(0, I) prior; a learned
    prior (a VampPrior, a mixture, a learned normal) sets its own scale, so the covariance is
    compared with the prior's variance of z_d, which is 1 under N(0, I)."""
    with seeded_eval(vae, seed):
        variances = vae.prior_variances(num_samples)
    return {site: variance.double().cpu() for site, variance in variances.items()}


def labeled_terms(vae, batch, add):
    """The ELBO terms and codes of a `LabeledBatch` for a model with labels, and the classifier's
    hits (`add("correct")`, `add("labeled_count")`) where it has one. A conditional model (CVAE)
    is scored on its conditional ELBO of the points whose label is known; M2 on its bound on
    log p(x), with y summed out. Returns (x, y, terms, codes), x None when no point is scored."""
    known = batch.y != HIDDEN
    if vae.classifies and known.any():
        add("correct", (vae.classify(batch.x[known]) == batch.y[known]).sum().cpu())
        add("labeled_count", known.sum().cpu())
    if not vae.conditional:
        return batch.x, None, vae.elbo_terms(batch.x), vae.encode(batch.x)
    if not known.any():
        return None, None, None, None
    x, y = batch.x[known], batch.y[known]
    return x, y, vae.elbo_terms(x, y), vae.encode(x, y)
