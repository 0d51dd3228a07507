"""Guide families q(z | x): what the encoder's output is turned into.

A guide family is a module with `num_params`, the number of outputs per data point it
needs from the encoder, and `forward(params)`, which turns those outputs, shape
`(N, num_params)`, into a distribution over z with batch shape `(N,)` and event shape
`(latent_dim,)`; every draw is reparameterized. The encoder's last layer is sized by
`num_params` as the decoder's is by the likelihood's. Families, by config name:

- `normal`: N(loc, diag scale^2), 2 D numbers (the default, the classic VAE);
- `lowrank`: N(loc, F F^T + diag d^2), F a D x rank matrix, D (rank + 2) numbers;
- `full`: N(loc, L L^T), L lower triangular with a positive diagonal, D + D (D + 1) / 2
  numbers; with a linear-Gaussian decoder it contains the exact posterior;
- `iaf`: an inverse autoregressive flow (Kingma et al. 2016): z_0 ~ N(loc, diag scale^2),
  then K stable affine autoregressive steps z_t = s_t z_{t-1} + (1 - s_t) m_t, with
  (m_t, s_t) = AR_t(z_{t-1}, h) conditioned on a context h the encoder also outputs
  (2 D + context numbers). Sampling and scoring one's own samples cost one pass per step;
  the density at an arbitrary point needs D passes per step (the inverse is sequential).

The KL term KL(q || p) has a closed form only for `normal` against a diagonal Gaussian
prior (`normal`, `learned_normal`). For the other families the `meanfield` estimator
falls back to the Monte Carlo term log q(z | x) - log p(z) at the drawn z, exactly as Pyro's
`TraceMeanField_ELBO` does where torch registers no closed form (it registers none for a
full or low-rank Gaussian against a diagonal one, and a flow has none).
"""

from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

import torch
from pyro import distributions as dist
from pyro.distributions import transforms
from torch import nn
from torch.nn import functional as F

from .checks import integer, sizes
from .registry import Registry, UserError

if TYPE_CHECKING:
    from pyro.distributions.conditional import ConditionalTransformModule

GUIDES = Registry("guide")

# A floor on the guide's standard deviation keeps log q finite when an encoder
# drives a unit's variance toward zero.
MIN_SCALE = 1e-4


def positive(raw):
    """softplus(raw) + MIN_SCALE: a standard deviation from an unconstrained output."""
    return F.softplus(raw) + MIN_SCALE


def gaussian_parameters(output):
    """Split an encoder's output into loc and a positive scale = softplus(.) + floor.

    Networks hand float32 to the distributions even under bf16 autocast: densities and
    KL terms are sums of many small numbers that bf16's 8-bit mantissa would ruin.
    """
    loc, raw_scale = output.float().chunk(2, dim=-1)
    return loc, positive(raw_scale)


class GuideFamily(nn.Module):
    """Base class: `forward(params)` -> q(z | x) from the encoder's `num_params` outputs."""

    context_arguments = ("latent_dim",)
    factorizes = False  # q is a product over latent dimensions (then the KL per dimension exists)
    density_anywhere = True  # log q(z) is cheap at any z, not only at q's own draws (a VampPrior needs it)
    detachable = True  # log q(z) can be evaluated at detached parameters (the stl and dreg estimators)

    def __init__(self, latent_dim):
        super().__init__()
        self.latent_dim = latent_dim

    @property
    def num_params(self) -> int:
        """How many numbers per data point the encoder outputs for this family (each family's own)."""
        raise NotImplementedError

    def forward(self, params):
        raise NotImplementedError

    def mean(self, q):
        """E_q[z] (the code of a data point, for active units and reconstructions)."""
        return q.mean


@GUIDES.register("normal")
class DiagonalNormal(GuideFamily):
    """Diagonal Gaussian N(loc, diag scale^2): the classic VAE guide (the default)."""

    factorizes = True

    @property
    def num_params(self):
        return 2 * self.latent_dim

    def forward(self, params):
        loc, scale = gaussian_parameters(params)
        return dist.Normal(loc, scale).to_event(1)


@GUIDES.register("lowrank")
class LowRankNormal(GuideFamily):
    """Gaussian with covariance F F^T + diag d^2, F of shape (latent_dim, rank) (LowRankMultivariateNormal)."""

    def __init__(self, latent_dim, rank=1):
        super().__init__(latent_dim)
        self.rank = integer(rank, "model.guide.rank", minimum=1)

    @property
    def num_params(self):
        return self.latent_dim * (self.rank + 2)

    def forward(self, params):
        d, r = self.latent_dim, self.rank
        params = params.float()
        loc, factor, raw_diag = params.split([d, d * r, d], dim=-1)
        factor = factor.reshape(*factor.shape[:-1], d, r)
        return dist.LowRankMultivariateNormal(loc, factor, positive(raw_diag).pow(2))


@GUIDES.register("full")
class FullNormal(GuideFamily):
    """Full-covariance Gaussian N(loc, L L^T), L lower triangular with a positive diagonal.

    L = diag(s) (I + M), M strictly lower triangular: the encoder outputs s (through
    softplus) and M's entries. Every Cholesky factor is of this form (M_ij = L_ij / L_ii),
    and scoring z, a triangular solve with L, is then as accurate for a tiny s as for a
    large one; with L's off-diagonal entries output directly, a collapsing s (early in a
    KL warm-up) made the solve overflow.
    """

    @property
    def num_params(self):
        d = self.latent_dim
        return d + d * (d + 1) // 2

    def forward(self, params):
        d = self.latent_dim
        params = params.float()
        loc, raw_diag, off_diagonal = params.split([d, d, d * (d - 1) // 2], dim=-1)
        rows, cols = torch.tril_indices(d, d, offset=-1, device=params.device)
        unit_tril = torch.eye(d, device=params.device).expand(*params.shape[:-1], d, d).clone()
        unit_tril[..., rows, cols] = off_diagonal
        scale_tril = positive(raw_diag).unsqueeze(-1) * unit_tril  # diag(s) (I + M)
        return dist.MultivariateNormal(loc, scale_tril=scale_tril)


@GUIDES.register("iaf")
class InverseAutoregressiveFlow(GuideFamily):
    """Inverse autoregressive flow (Kingma et al. 2016): a diagonal Gaussian through affine autoregressive steps.

    `flows` steps, each conditioned on a context vector from the encoder.

    Each step is Pyro's `conditional_affine_autoregressive` in its stable form (a gate
    s = sigmoid(.), Kingma et al.'s eq. 14) with its own random variable order; `hidden`
    are its network's widths (each >= latent_dim), `context` the size of the encoder's
    context vector h. E_q[z] has no closed form: `mean` averages `mean_samples` draws.
    """

    density_anywhere = False
    detachable = False
    mean_samples = 64

    def __init__(self, latent_dim, flows=2, hidden=None, context=None):
        super().__init__(latent_dim)
        integer(flows, "model.guide.flows", minimum=1)
        hidden = [max(3 * latent_dim + 1, 16)] if hidden is None else sizes(hidden, "model.guide.hidden")
        if not hidden or min(hidden) < latent_dim:
            raise UserError(f"model.guide.hidden must be a non-empty list of integers >= latent_dim ({latent_dim}), "
                            f"got {hidden!r}")
        self.context = latent_dim if context is None else integer(context, "model.guide.context", minimum=1)
        self.flows = nn.ModuleList(
            transforms.conditional_affine_autoregressive(latent_dim, self.context, hidden_dims=list(hidden), stable=True)
            for _ in range(flows)
        )

    @property
    def num_params(self):
        return 2 * self.latent_dim + self.context

    def forward(self, params):
        base_params, context = params.float().split([2 * self.latent_dim, self.context], dim=-1)
        loc, scale = gaussian_parameters(base_params)
        base = dist.Normal(loc, scale).to_event(1)
        # Conditioned steps are new transforms per call, each caching its last (input, output):
        # scoring the distribution's own draws then needs no inversion.
        steps = cast("Iterable[ConditionalTransformModule]", self.flows)  # a ModuleList's items are Modules to mypy
        return dist.TransformedDistribution(base, [flow.condition(context) for flow in steps])

    def mean(self, q):
        return q.sample((self.mean_samples,)).mean(0)
