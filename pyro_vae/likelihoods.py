"""Likelihoods p(x | z): the decoder's output becomes a normalized distribution over x.

Every likelihood is a properly normalized density (or mass function) over the
data's support, so ELBOs and log-likelihoods are comparable across choices.

A likelihood receives the decoder's output ``params`` of shape
``(batch, num_params, *data_shape)`` and returns a Pyro distribution whose event
shape is ``data_shape``. ``num_params`` says how many numbers per feature the
decoder must produce (1 for Bernoulli logits or a Gaussian mean).
"""

import pyro.distributions as dist
import torch
from torch import nn

from .registry import Registry, UserError

LIKELIHOODS = Registry("likelihood")


class Likelihood(nn.Module):
    """Base class. Subclasses set ``num_params`` and implement ``forward`` and ``mean``."""

    num_params = 1
    context_arguments = ("data_shape",)

    def __init__(self, data_shape):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.event_dim = len(self.data_shape)

    def forward(self, params, x=None):
        """The distribution of x given the decoder output (``x`` is the observation, if any)."""
        raise NotImplementedError

    def mean(self, params):
        """E[x | z], in data space: what figures show."""
        raise NotImplementedError

    def check_support(self, x):
        """Raise a one-line :class:`UserError` if ``x`` lies outside the support."""


@LIKELIHOODS.register("bernoulli")
class Bernoulli(Likelihood):
    """Bernoulli on binary data {0, 1}; the decoder gives logits (BCE is its exact -log p)."""

    def forward(self, params, x=None):
        return dist.Bernoulli(logits=params[:, 0]).to_event(self.event_dim)

    def mean(self, params):
        return torch.sigmoid(params[:, 0])

    def check_support(self, x):
        if not torch.all((x == 0) | (x == 1)):
            raise UserError(
                "the bernoulli likelihood needs binary data in {0, 1}, but the data has other values; "
                "binarize it (data.binarize = \"static\" or \"dynamic\") or use "
                "likelihood = \"continuous_bernoulli\" for grey levels in [0, 1]"
            )


@LIKELIHOODS.register("gaussian")
class Gaussian(Likelihood):
    """Gaussian N(mu, sigma^2) on real data; the decoder gives mu, sigma is fixed.

    -log p(x | z) = sum_i (x_i - mu_i)^2 / (2 sigma^2) + D log sigma + (D / 2) log 2 pi,
    so plain summed squared error is this likelihood at sigma^2 = 1/2, up to a constant.
    """

    def __init__(self, data_shape, scale=1.0):
        super().__init__(data_shape)
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale <= 0:
            raise UserError(f"gaussian scale must be a positive number, got {scale!r}")
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, params, x=None):
        loc = params[:, 0]
        return dist.Normal(loc, self.scale.expand_as(loc)).to_event(self.event_dim)

    def mean(self, params):
        return params[:, 0]
