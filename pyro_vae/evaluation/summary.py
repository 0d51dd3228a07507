"""`evaluate`: every diagnostic of a model on one data set, in the units of the data."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from ..checks import integer
from ..data import LabeledBatch
from ..seeding import EVALUATION_SEED
from .elbo import evaluate_elbo
from .likelihood import EVALUATION_BATCH_SIZE, PARTICLES_PER_PASS, log_likelihood
from .units import bits_per_dim, dequantization_offset, has_discrete_data

if TYPE_CHECKING:
    from ..models import VAE


@torch.no_grad()
def evaluate(vae: VAE, x: torch.Tensor, num_samples: int = 5000, seed: int = EVALUATION_SEED,
             batch_size: int = EVALUATION_BATCH_SIZE, chunk_size: int = PARTICLES_PER_PASS, progress: bool = False,
             labels: torch.Tensor | None = None, dequantization_levels: int | None = None) -> dict[str, Any]:
    """Every diagnostic on one data set `x` (a tensor `(N, *data_shape)`).

    `dequantization_levels` = L says that `x` are integer data dequantized as (k + u) / L
    (`data.dequantize`) and the likelihood is a density on them: `log_likelihood`, `elbo`
    and `reconstruction` are then those of the discrete data, the density's figures minus
    D log L (`dequantization_offset`; a bound on log P(k), in expectation over u), and
    `bits_per_dim` is -log P(k) / (D ln 2), comparable with a discretized likelihood's on the
    same images; the density's own figures are kept as `log_likelihood_density` and
    `elbo_density`, and the offset as `dequantization_offset`.

    For a model with labels, `labels` are the data's (long, `(N,)`): a conditional model's
    ELBO and log-likelihood are of p(x | y), and a model with a classifier (M2) adds
    `accuracy`, the fraction of points its q(y | x) puts most mass on the true label.

    Returns the means over data points of `elbo`, `reconstruction`, `kl`
    (`evaluate_elbo`), `kl_per_dimension`, `active_units`, the importance-sampled
    `log_likelihood` with `num_samples` = K and its standard error over data
    points, and `bits_per_dim` (None unless the likelihood is discrete).
    """
    integer(num_samples, "num_samples", minimum=1)
    integer(batch_size, "batch_size", minimum=1)
    parameter = next(vae.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    batches = (x[start : start + batch_size].to(device) for start in range(0, len(x), batch_size))
    if labels is not None:
        batches = (LabeledBatch(batch, labels[i * batch_size : (i + 1) * batch_size].to(device))
                   for i, batch in enumerate(batches))
    result = evaluate_elbo(vae, batches, seed=seed)  # each function runs the model in eval mode
    log_px = log_likelihood(vae, x, num_samples, chunk_size=chunk_size, seed=seed, batch_size=batch_size,
                            progress=progress, labels=labels)
    result["log_likelihood"] = log_px.mean().item()
    result["log_likelihood_standard_error"] = (log_px.std() / math.sqrt(len(log_px))).item() if len(log_px) > 1 else 0.0
    if dequantization_levels is not None:
        integer(dequantization_levels, "dequantization_levels", minimum=2)
        offset = dequantization_offset(vae.num_features, dequantization_levels)
        result.update(log_likelihood_density=result["log_likelihood"], elbo_density=result["elbo"],
                      dequantization_levels=dequantization_levels, dequantization_offset=offset)
        for name in ("log_likelihood", "elbo", "reconstruction"):
            result[name] -= offset
        result["bits_per_dim"] = bits_per_dim(result["log_likelihood"], vae.num_features)
    else:
        result["bits_per_dim"] = (
            bits_per_dim(result["log_likelihood"], vae.num_features)
            if has_discrete_data(vae, x[:1].to(device), labels[:1].to(device) if vae.conditional and labels is not None else None)
            else None
        )
    result["num_samples"] = num_samples
    return result
