"""`factorvae` (Kim & Mnih 2018): the ELBO minus gamma TC, TC estimated by a discriminator
D(z) that tells codes z ~ q(z) from codes with each dimension permuted across the minibatch
(draws of prod_j q(z_j)): at its optimum logit D(z) = log q(z) / prod_j q(z_j), so
TC = E_q(z) logit D(z). The discriminator has its own optimizer (Adam, lr 1e-4, betas
(0.5, 0.9), as Kim & Mnih) and takes one step per training step, on that step's codes
(detached), before the VAE's loss reads it.
"""

from typing import Any

import torch
from torch import nn

from ..annealing import weighted
from ..checks import number
from ..optimizers import fastest
from ..registry import UserError
from .estimators import ESTIMATORS
from .terms import kl_term
from .total_correlation import TotalCorrelationEstimator


class Discriminator(nn.Module):
    """An MLP from codes (N, D) to one logit each: log D(z) / (1 - D(z)), D the probability that z is a
    draw of q(z) rather than of prod_j q(z_j) (leaky ReLU, as Kim & Mnih)."""

    def __init__(self, latent_dim, hidden=(256, 256)):
        super().__init__()
        layers, width = [], latent_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            width = h
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, z):
        return self.net(z).squeeze(-1)


def permute_dimensions(z, generator=None):
    """Each column of z (N, D) shuffled across the rows by its own permutation: draws of
    prod_j q(z_j) when the rows are draws of q(z) (Kim & Mnih 2018, Algorithm 1)."""
    n, d = z.shape
    index = torch.argsort(torch.rand(n, d, generator=generator, device=z.device), dim=0)
    return torch.gather(z, 0, index)


def discriminator_loss(discriminator, z):
    """The discriminator's loss on codes z (N, D) of q(z) (detached): the logistic loss of telling
    them (label 1) from their dimension-wise permutation (label 0), summed over both, averaged over N."""
    z = z.detach()
    real, permuted = discriminator(torch.cat([z, permute_dimensions(z)])).chunk(2)  # one pass for both
    return nn.functional.softplus(-real).mean() + nn.functional.softplus(permuted).mean()


def density_ratio_tc(discriminator, z):
    """The discriminator's estimate of the total correlation of the codes z (N, D) ~ q(z):
    TC = E_q(z) log q(z) / prod_j q(z_j) ~ mean_n logit D(z_n), per data point (N,)."""
    return discriminator(z)


@ESTIMATORS.register("factorvae")
class FactorVAE(TotalCorrelationEstimator):
    """FactorVAE (Kim & Mnih 2018): the ELBO minus gamma times the total correlation, estimated by a discriminator.

    Options: `gamma` (weight of the total correlation, default 10), `hidden` (the
    discriminator's hidden widths, default [256, 256]; Kim & Mnih: six layers of 1000),
    `lr` (its Adam learning rate, default 1e-4, betas (0.5, 0.9)). Its parameters and its
    optimizer's state are checkpointed with the estimator; it is trained by its own optimizer, not the VAE's.
    """

    context_arguments = (*TotalCorrelationEstimator.context_arguments, "latent_dim")
    discriminator: Discriminator | None  # built with the optimizer once the latent dimension is known
    optimizer: torch.optim.Optimizer | None
    _pending_state: dict[str, Any] | None  # an optimizer state loaded before the optimizer was built

    def __init__(self, *, gamma=10.0, hidden=(256, 256), lr=1e-4, latent_dim=None, dataset_size=None, **context):
        super().__init__(**context)
        self.gamma = number(gamma, "objective.estimator.gamma", minimum=0)
        self.lr = number(lr, "objective.estimator.lr", minimum=0, exclusive=True)
        if not isinstance(hidden, (list, tuple)) or not all(isinstance(h, int) and h >= 1 for h in hidden):
            raise UserError(f"objective.estimator.hidden must be a list of widths, e.g. [256, 256]; got {hidden!r}")
        self.hidden = tuple(hidden)
        self.discriminator, self.optimizer = None, None
        if latent_dim is not None:
            self._build(latent_dim)

    def _build(self, latent_dim, device=None):
        self.discriminator = Discriminator(latent_dim, self.hidden).to(device)
        self.optimizer = fastest(torch.optim.Adam, self.discriminator.parameters(), self.lr, betas=(0.5, 0.9))
        pending = getattr(self, "_pending_state", None)  # set only by set_extra_state
        if pending is not None:
            self.optimizer.load_state_dict(pending)
            self._pending_state = None

    def parameters(self, recurse=True):
        """None for the VAE's optimizer: the discriminator is trained by its own (`self.optimizer`)."""
        return iter(())

    def get_extra_state(self):
        return {"optimizer": None if self.optimizer is None else self.optimizer.state_dict()}

    def set_extra_state(self, state):
        if state["optimizer"] is None:
            return
        if self.optimizer is None:
            self._pending_state = state["optimizer"]
        else:
            self.optimizer.load_state_dict(state["optimizer"])

    def capture_obstacle(self, vae):
        return "estimator 'factorvae' steps its discriminator's own optimizer inside the loss"

    def loss(self, model, guide, x, kl_weight=None, kl_penalty=None, y=None, sites=None):
        vae, q, z, kl_weight = self.encoded(model, guide, x, kl_weight, kl_penalty, y)
        if self.discriminator is None:
            self._build(z.shape[-1], z.device)
        # The discriminator's step first, on this step's codes: then its parameters are not
        # changed in place while the VAE's loss below still needs them for its backward pass.
        assert self.discriminator is not None and self.optimizer is not None  # built just above, if not before
        if self.training:  # a loss evaluated for analysis (estimator.eval()) leaves D as it is
            with torch.enable_grad():
                self.optimizer.zero_grad(set_to_none=True)
                discriminator_loss(self.discriminator, z).backward()
                self.optimizer.step()
        reconstruction = vae.likelihood_dist(z, x).log_prob(x).sum()
        kl = kl_term(q, vae.prior_dist(), z, analytic=True).sum()
        # The VAE's gradient reaches z through D, not D's parameters (those are its optimizer's).
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        tc = torch.func.functional_call(self.discriminator, frozen, (z,)).sum()
        return -(reconstruction - weighted(kl_weight, kl) - self.gamma * tc)
