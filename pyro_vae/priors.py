"""Priors p(z) over the latent code.

A prior is a module whose ``forward(encoder)`` returns a Pyro distribution with
event shape ``(latent_dim,)`` and empty batch shape; the model's ``"data"`` plate
broadcasts it over the minibatch. The encoder is passed in because some priors
(the VampPrior) are built from it; the others ignore it.
"""

import pyro.distributions as dist
import torch
from torch import nn

from .registry import Registry

PRIORS = Registry("prior")


class Prior(nn.Module):
    """Base class for priors over a ``latent_dim``-dimensional code."""

    context_arguments = ("latent_dim", "data_shape")

    def __init__(self, latent_dim, data_shape=None):
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self, encoder=None):
        raise NotImplementedError


@PRIORS.register("normal")
class StandardNormal(Prior):
    """Standard normal N(0, I): the classic VAE prior; the KL to a Gaussian guide is closed form."""

    def __init__(self, latent_dim, data_shape=None):
        super().__init__(latent_dim)
        # Built once, so no step allocates them (they move with .to(device)).
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self, encoder=None):
        return dist.Normal(self.loc, self.scale).to_event(1)
