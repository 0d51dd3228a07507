"""Priors p(z) over the latent code.

A prior is a module whose `forward(posterior)` returns a Pyro distribution with
event shape `(latent_dim,)` and empty batch shape; the model's `"data"` plate
broadcasts it over the minibatch. `posterior` is the guide, x -> q(z | x), passed in
because some priors (the VampPrior) are built from it; the others ignore it.

Learned priors hold plain `nn.Parameter` s, so `vae.parameters()` includes them
and the trainer's optimizer fits them with the networks (maximizing the ELBO over
the prior is maximizing the aggregate posterior's expected log p(z)).

The KL term KL(q(z | x) || p(z)) has a closed form only for `normal` and
`learned_normal`. For `mog`, `vamp` and `flow` the `meanfield` estimator
(Pyro's `TraceMeanField_ELBO`) falls back to the Monte Carlo term
log q(z | x) - log p(z) at the sampled z, exactly as `trace` does.
"""

import math
import numbers

import pyro.distributions as dist
import torch
from pyro.distributions import transforms
from torch import nn

from .checks import integer
from .registry import Registry, UserError

PRIORS = Registry("prior")


class Prior(nn.Module):
    """Base class for priors over a `latent_dim`-dimensional code."""

    context_arguments = ("latent_dim", "data_shape")

    def __init__(self, latent_dim, data_shape=None):
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self, posterior=None):
        raise NotImplementedError


class DiagonalNormalMixture(dist.TorchDistribution):
    """p(z) = sum_k pi_k N(z; m_k, diag s_k^2), with log p(z) computed by matrix products.

    Expanding the square, sum_d (z_d - m_kd)^2 / s_kd^2 = z^2 . (1/s_k^2) - 2 z . (m_k/s_k^2)
    + sum_d m_kd^2 / s_kd^2: two (M x D) @ (D x K) products instead of an (M, K, D)
    intermediate, which at K = 500 components made the VampPrior ten times slower than
    the rest of the model. The expansion cancels large terms when z is far out and s
    small, so it is evaluated in float64 (error ~1e-16 of the terms instead of ~1e-7).
    The same density as `MixtureSameFamily(Categorical(logits), Normal(loc, scale).to_event(1))`.
    """

    arg_constraints = {}
    support = dist.constraints.real_vector
    has_rsample = False

    def __init__(self, logits, loc, scale, validate_args=None):
        self.logits, self.loc, self.scale = logits, loc, scale
        super().__init__(torch.Size(), loc.shape[-1:], validate_args=validate_args)

    @property
    def mean(self):
        return (self.logits.softmax(-1).unsqueeze(-1) * self.loc).sum(-2)

    @property
    def variance(self):
        """Var(z_d) = sum_k pi_k (s_kd^2 + m_kd^2) - (sum_k pi_k m_kd)^2."""
        weights = self.logits.softmax(-1).unsqueeze(-1)
        return (weights * (self.scale**2 + self.loc**2)).sum(-2) - self.mean**2

    def log_prob(self, value):
        # The cancellation is over in log_joint; the logsumexp is safe (and twice as fast) in the value's precision.
        return torch.logsumexp(self._log_joint(value), -1)

    def responsibilities(self, value):
        """p(k | z) for each component k, shape `(*value.shape[:-1], K)`: how VaDE clusters by a mixture prior."""
        return torch.softmax(self._log_joint(value), -1)

    def _log_joint(self, value):
        """log pi_k + log N(z; m_k, s_k) for each component, shape `(*value.shape[:-1], K)`, in the value's dtype."""
        shape, dim = value.shape[:-1], value.shape[-1]
        z = value.reshape(-1, dim).double()
        precision = self.scale.double().pow(-2)
        loc = self.loc.double()
        # log pi_k + log N(z; m_k, s_k) = bias_k - z^2 . (1/s_k^2) / 2 + z . (m_k/s_k^2), where
        # bias_k = log pi_k - sum_d m_kd^2 / (2 s_kd^2) - sum_d log s_kd - (D/2) log 2 pi
        bias = (
            torch.log_softmax(self.logits.double(), -1)
            - 0.5 * (loc * loc * precision).sum(-1)
            - self.scale.double().log().sum(-1)
            - 0.5 * dim * math.log(2 * math.pi)
        )
        log_joint = torch.addmm(bias, z * z, precision.T, alpha=-0.5)
        log_joint = torch.addmm(log_joint, z, (loc * precision).T)
        return log_joint.to(value.dtype).reshape(*shape, -1)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            k = dist.Categorical(logits=self.logits).sample(sample_shape)
            return dist.Normal(self.loc[k], self.scale[k]).sample()


@PRIORS.register("normal")
class StandardNormal(Prior):
    """Standard normal N(0, I): the classic VAE prior; the KL to a Gaussian guide is closed form."""

    loc: torch.Tensor  # buffers (register_buffer): a tensor to mypy, not nn.Module's Tensor | Module
    scale: torch.Tensor

    def __init__(self, latent_dim, data_shape=None):
        super().__init__(latent_dim)
        # Built once, so no step allocates them (they move with .to(device)).
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self, posterior=None):
        return dist.Normal(self.loc, self.scale).to_event(1)


@PRIORS.register("learned_normal")
class LearnedNormal(Prior):
    """Diagonal Gaussian N(m, diag s^2) with learned m and s; the KL is still closed form.

    Starts at N(0, I). With a Gaussian guide the ELBO-optimal m and s are the mean and
    per-dimension variance of the aggregate posterior, so this prior mostly absorbs
    shifts and scalings of the code.
    """

    def __init__(self, latent_dim, data_shape=None):
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, posterior=None):
        return dist.Normal(self.loc, self.log_scale.exp()).to_event(1)


@PRIORS.register("mog")
class MixtureOfGaussians(Prior):
    """Learned mixture of K diagonal Gaussians: p(z) = sum_k pi_k N(z; m_k, diag s_k^2).

    Means start at K draws from N(0, I) (distinct, so the components can separate),
    scales at 1, weights pi = softmax(logits) at uniform.
    """

    def __init__(self, latent_dim, data_shape=None, components=10):
        super().__init__(latent_dim)
        integer(components, "model.prior.components", minimum=1)
        self.loc = nn.Parameter(torch.randn(components, latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(components))

    def forward(self, posterior=None):
        return DiagonalNormalMixture(self.logits, self.loc, self.log_scale.exp())


@PRIORS.register("vamp")
class VampPrior(Prior):
    """VampPrior: the guide's posteriors at K learned pseudo-inputs, p(z) = (1/K) sum_k q(z | u_k).

    Tomczak & Welling 2018. The pseudo-inputs u_k have the data's shape and are learned
    with everything else; each call runs the guide on them, so the prior follows the
    guide as it trains. Pseudo-inputs start uniform in [0, 1] (the range of image data).
    With a diagonal Gaussian guide the mixture is scored by matrix products
    (`DiagonalNormalMixture`); with a low-rank or full one, as a `MixtureSameFamily`.
    """

    built_from_guide = True

    logits: torch.Tensor  # a buffer (register_buffer): a tensor to mypy, not nn.Module's Tensor | Module

    def __init__(self, latent_dim, data_shape=None, components=50):
        super().__init__(latent_dim)
        integer(components, "model.prior.components", minimum=1)
        if data_shape is None:
            raise UserError("the vamp prior needs the data's shape for its pseudo-inputs")
        self.pseudo_inputs = nn.Parameter(torch.rand(components, *data_shape))
        self.register_buffer("logits", torch.zeros(components))  # equal weights 1/K

    def forward(self, posterior=None):
        if posterior is None:
            raise UserError("the vamp prior is built from the guide; call prior(posterior), posterior: x -> q(z | x)")
        q = posterior(self.pseudo_inputs)  # batch shape (components,)
        if isinstance(q, dist.Independent) and isinstance(q.base_dist, dist.Normal):
            return DiagonalNormalMixture(self.logits, q.base_dist.loc, q.base_dist.scale)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), q)


FLOW_TRANSFORMS = ("affine_autoregressive", "spline_autoregressive")


@PRIORS.register("flow")
class FlowPrior(Prior):
    """Normalizing-flow prior: N(0, I) pushed through learned Pyro autoregressive transforms.

    p(z) = N(f(z); 0, I) |det df/dz| with f = f_1 o ... o f_T, each f_t a Pyro
    `affine_autoregressive` or `spline_autoregressive` transform (its own random
    variable order). The flow is used in the masked-autoregressive direction: the
    density of the guide's z, needed every step, costs one network pass per transform;
    sampling from the prior (figures only) costs latent_dim passes.
    """

    loc: torch.Tensor  # buffers (register_buffer): a tensor to mypy, not nn.Module's Tensor | Module
    scale: torch.Tensor

    def __init__(self, latent_dim, data_shape=None, num_transforms=2, transform="affine_autoregressive", hidden=None):
        super().__init__(latent_dim)
        integer(num_transforms, "model.prior.num_transforms", minimum=1)
        if transform not in FLOW_TRANSFORMS:
            raise UserError(f"flow transform must be one of: {', '.join(FLOW_TRANSFORMS)}; got {transform!r}")
        if hidden is None:
            hidden = [max(3 * latent_dim + 1, 16)]
        if not isinstance(hidden, (list, tuple)) or not all(
            isinstance(h, numbers.Integral) and not isinstance(h, bool) and h >= latent_dim for h in hidden
        ):
            raise UserError(f"flow hidden must be a list of integers >= latent_dim ({latent_dim}), got {hidden!r}")
        if transform == "spline_autoregressive":
            make = lambda: transforms.spline_autoregressive(latent_dim, hidden_dims=list(hidden))
        else:
            make = lambda: transforms.affine_autoregressive(latent_dim, hidden_dims=list(hidden))
        self.flows = nn.ModuleList(make() for _ in range(num_transforms))
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self, posterior=None):
        base = dist.Normal(self.loc, self.scale).to_event(1)
        # Each Pyro autoregressive transform is fast in its forward direction; as the
        # data-to-noise map f (inverted here) that direction evaluates log p(z) in one pass.
        return dist.TransformedDistribution(base, [flow.inv for flow in self.flows])
