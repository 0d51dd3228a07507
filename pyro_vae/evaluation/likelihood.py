"""The importance-sampled log-likelihood log p(x) (Burda et al. 2015), the figure VAEs are compared by."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pyro
import torch
from tqdm.auto import tqdm

from ..checks import integer
from ..objectives import direct_log_weights, log_weights
from ..registry import UserError
from ..seeding import EVALUATION_SEED, seeded_eval

if TYPE_CHECKING:
    from ..models import VAE

# Particles per pass times data points per batch bounds the memory of one pass: the
# defaults replay the model on 100 x 100 = 10,000 rows at a time whatever K is.
PARTICLES_PER_PASS = 100
EVALUATION_BATCH_SIZE = 100


def log_importance_weights(vae, x, num_particles, y=None):
    """log w_k = log p(x, z_k) - log q(z_k | x) with z_k ~ q(z | x), shape `(num_particles, N)`
    (given labels `y`, for a conditional model: log p(x, z_k | y) - log q(z_k | x, y)).

    For a VAE whose programs are the library's own the weights are computed directly
    (`direct_log_importance_weights`, the same numbers without Pyro's tracing);
    for any other model and guide by tracing them (`traced_log_importance_weights`).
    """
    if getattr(vae, "has_standard_programs", False) and y is None:
        return direct_log_importance_weights(vae, x, num_particles)
    return traced_log_importance_weights(vae, x, num_particles, y)


def direct_log_importance_weights(vae, x, num_particles):
    """`traced_log_importance_weights` for `VAE.model`/`VAE.guide`, computed directly
    (`objectives.direct_log_weights`, the weights the IWAE and Renyi bounds train on): the
    guide's draw `z ~ q(z | x)` for K particles is the same call on the same RNG, and the
    densities are the same distributions' `log_prob` (the guide's own log-density, whatever
    its family)."""
    return direct_log_weights(vae, x, num_particles)[0]


def traced_log_importance_weights(vae, x, num_particles, y=None):
    """log w_k = log p(x, z_k) - log q(z_k | x) with z_k ~ q(z | x), shape `(num_particles, N)`,
    for any model and guide whose sample sites hold one value per data point in a "data" plate:
    `objectives.log_weights`, the weights the particle estimators train on, with the guide run once
    on `x` inside a `"particles"` plate (its encoder sees each data point once and draws
    `num_particles` codes for it) and the model replayed on x repeated `num_particles` times.

    Log-densities are read from each site's distribution, `fn.log_prob(value)`,
    never from the trace's scaled `log_prob`: a KL weight (`ScaleLatents`) or a
    subsampling scale around the model or guide cannot leak into the estimate (the
    training bounds keep that scale on purpose: it is their KL weight).
    Labels `y` (a conditional model's) are passed as the programs' second argument. A
    discrete latent the guide samples (M2's label, without enumeration here) is one more
    importance-sampled site: the estimate is of log p(x) with y and z both sampled.
    """
    labels = () if y is None else (y,)
    log_p, log_q, _ = log_weights(vae.model, vae.guide, x, num_particles, labels=labels, encode_once=True, scaled=False)
    return log_p - log_q


def _minibatches(data, batch_size):
    """(minibatches, number of data points or None): a tensor is cut into minibatches,
    any other iterable is taken to yield them."""
    if torch.is_tensor(data):
        return (data[start : start + batch_size] for start in range(0, len(data), batch_size)), len(data)
    return data, None


@torch.no_grad()
def log_likelihood(
    vae: VAE,
    data: torch.Tensor | Iterable[torch.Tensor],
    num_samples: int = 5000,
    chunk_size: int = PARTICLES_PER_PASS,
    seed: int = EVALUATION_SEED,
    batch_size: int = EVALUATION_BATCH_SIZE,
    progress: bool = False,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """The importance-sampled estimate of log p(x) for each data point, shape `(N,)`:

    ```
    log p(x) ~ logsumexp_k [log p(x, z_k) - log q(z_k | x)] - log K,   z_k ~ q(z | x), k = 1..K
    ```

    (Burda et al. 2015). It is a stochastic lower bound whose expectation rises with K
    to log p(x): K = 1 is the ELBO in expectation, and with the exact posterior as guide
    every weight equals p(x), so the estimate is exact for any K.

    `data` is a tensor `(N, *data_shape)` (cut into minibatches of `batch_size`)
    or an iterable of minibatches. The K particles are drawn `chunk_size` at a time
    and combined with a running logsumexp, so memory is bounded by
    `chunk_size * batch_size` replayed data points whatever K is. Runs on the vae's
    device; the noise comes from `seed` on a forked RNG, so the caller's stream is
    untouched and the result is reproducible. `progress` shows a tqdm bar. `labels` (a
    tensor beside a tensor `data`): for a conditional model (cvae), the estimate is of log p(x | y).
    """
    for value, name in ((num_samples, "num_samples"), (chunk_size, "chunk_size"), (batch_size, "batch_size")):
        integer(value, name, minimum=1)
    parameter = next(vae.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    minibatches, total = _minibatches(data, batch_size)
    conditional = getattr(vae, "conditional", False)
    if conditional and labels is None:
        raise UserError("a conditional model's log-likelihood log p(x | y) needs the labels y")
    label_batches = iter(_minibatches(labels, batch_size)[0]) if conditional else None
    results = []
    bar = tqdm(total=total, disable=not progress, unit="x", dynamic_ncols=True, desc=f"log p(x), K={num_samples}")
    # Pyro's per-site checks cost ~15% here and check nothing the caller cannot check once
    # (the CLI checks the data's support before evaluating).
    with pyro.validation_enabled(False), seeded_eval(vae, seed):
        for x in minibatches:
            x = x.to(device)
            y = None if label_batches is None else next(label_batches).to(device)
            if tuple(x.shape[1:]) != tuple(vae.data_shape):
                raise UserError(
                    f"the data points have shape {tuple(x.shape[1:])} but the model was built for "
                    f"{tuple(vae.data_shape)}; evaluate it on the data it was trained on"
                )
            log_sum = torch.full((len(x),), -math.inf, device=device)
            for start in range(0, num_samples, chunk_size):
                log_weight = log_importance_weights(vae, x, min(chunk_size, num_samples - start), y)
                log_sum = torch.logaddexp(log_sum, torch.logsumexp(log_weight, dim=0))
            results.append(log_sum - math.log(num_samples))  # kept on the device: one read at the end
            bar.update(len(x))
    bar.close()
    return torch.cat(results).cpu()
