"""Evaluation: the numbers a VAE is judged by.

- ``evaluate_elbo``: the mean ELBO, reconstruction term and KL over a data set,
  with the KL per latent dimension and the number of active units.
- Active units (Burda et al. 2015): dimension d is active when
  ``Cov_x(E_q[z_d | x]) > 0.01``.
"""

import torch

from .objectives import elbo_terms, kl_per_dimension

ACTIVE_UNIT_THRESHOLD = 0.01
# Evaluation draws its noise from this fixed seed, so epochs (and runs) are compared
# on the same draws, and the caller's RNG stream does not depend on whether it evaluates.
EVALUATION_SEED = 2718


def _devices():
    return [torch.cuda.current_device()] if torch.cuda.is_available() else []


@torch.no_grad()
def evaluate_elbo(vae, batches, seed=EVALUATION_SEED):
    """Means over data points of the ELBO and its terms, one z per data point, fixed noise.

    Returns ``elbo``, ``reconstruction`` (E_q log p(x|z)), ``kl``, ``kl_per_dimension``
    (a list, where the KL factorizes over dimensions in closed form, else None),
    ``active_units`` and ``num_examples``.
    """
    totals, count = {}, 0
    kl_dims, codes = None, []
    with torch.random.fork_rng(devices=_devices()):
        torch.manual_seed(seed)
        for x in batches:
            for name, values in elbo_terms(vae, x).items():
                totals[name] = totals.get(name, 0.0) + values.sum().item()
            per_dim = kl_per_dimension(vae, x)
            if per_dim is not None:
                kl_dims = per_dim.sum(0) if kl_dims is None else kl_dims + per_dim.sum(0)
            codes.append(vae.encode(x))
            count += len(x)
    result = {name: total / count for name, total in totals.items()}
    result["kl_per_dimension"] = None if kl_dims is None else (kl_dims / count).tolist()
    result["active_units"] = active_units(torch.cat(codes))
    result["num_examples"] = count
    return result


def active_units(codes, threshold=ACTIVE_UNIT_THRESHOLD):
    """Number of latent dimensions whose mean code varies across data: Var_x(E_q[z_d]) > threshold."""
    if len(codes) < 2:
        return 0
    return int((codes.var(0) > threshold).sum())
