"""How noisy an estimator's gradient is: a diagnostic of the estimators, for tests of one against another."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ..checks import integer
from ..registry import UserError
from ..seeding import EVALUATION_SEED, forked_rng
from .programs import Programs

if TYPE_CHECKING:
    from ..annealing import KLWeight
    from .estimators import Estimator


class TrainableVAE(Programs, Protocol):
    """A model whose gradients can be taken: its programs (`Programs`), its parameters, and the
    two networks the `params` groups name. The library's `models.VAE` is one."""

    encoder: torch.nn.Module
    decoder: torch.nn.Module

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

# "classifier": q(y | x)'s own parameters, in a model with one (the gmvae's discrete latent, M2's label)
GRADIENT_GROUPS = ("encoder", "decoder", "all", "classifier")


def gradient_variance(vae: TrainableVAE, estimator: Estimator, x: torch.Tensor, num_draws: int = 100, params: str = "encoder",
                      kl_weight: KLWeight | None = None, seed: int = EVALUATION_SEED) -> dict[str, Any]:
    """How noisy an estimator's gradient is, for a fixed minibatch `x` and fixed parameters.

    Draws `num_draws` gradients g_1..g_n of the per data point loss
    `estimator.loss(vae.model, vae.guide, x) / len(x)` with respect to the `params`
    group ("encoder", "decoder", "all", or "classifier": q(y | x)'s own parameters, in a model
    with a discrete latent or a label) and returns

    - `trace_covariance`: tr Cov[g] = sum_j Var[g_j] (unbiased, over the draws),
    - `mean_norm_squared`: ||E[g]||^2 (from the sample mean),
    - `snr`: ||E[g]|| / sqrt(tr Cov[g]), the signal-to-noise ratio of one draw,

    with `num_draws`, `num_parameters`, and the flat float64 tensors `mean` and
    `variance` (per coordinate, unbiased), for tests of one estimator against another. Parameters are not changed; an estimator
    with state (a decaying-average baseline) updates it as in training. The noise comes
    from `seed` on a forked RNG.
    """
    if params not in GRADIENT_GROUPS:
        raise UserError(f"params must be one of: {', '.join(GRADIENT_GROUPS)}; got {params!r}")
    integer(num_draws, "num_draws", minimum=1)
    if num_draws < 2:
        raise UserError("num_draws must be at least 2 to estimate a variance")
    if params == "classifier" and not isinstance(getattr(vae, "classifier", None), torch.nn.Module):
        raise UserError("params = \"classifier\" is q(y | x)'s parameters, which this model does not have "
                        "(model.kind = \"gmvae\" and \"m2\" do)")
    module = vae if params == "all" else getattr(vae, params)
    parameters = [p for p in module.parameters() if p.requires_grad]
    total = squares = None
    with forked_rng(seed):
        for _ in range(num_draws):
            loss = estimator.loss(vae.model, vae.guide, x, kl_weight=kl_weight) / len(x)
            grads = torch.autograd.grad(loss, parameters, allow_unused=True)
            g = torch.cat([
                (torch.zeros_like(p) if grad is None else grad).reshape(-1) for p, grad in zip(parameters, grads)
            ]).double()
            total = g if total is None else total + g
            squares = g * g if squares is None else squares + g * g
    assert total is not None and squares is not None  # num_draws >= 2 was checked
    mean = total / num_draws
    variance = ((squares - num_draws * mean * mean) / (num_draws - 1)).clamp(min=0)
    trace_covariance = variance.sum().item()
    mean_norm_squared = (mean * mean).sum().item()
    return {
        "trace_covariance": trace_covariance,
        "mean_norm_squared": mean_norm_squared,
        "snr": math.sqrt(mean_norm_squared / trace_covariance) if trace_covariance > 0 else math.inf,
        "num_draws": num_draws,
        "num_parameters": int(mean.numel()),
        "mean": mean,
        "variance": variance,
    }
