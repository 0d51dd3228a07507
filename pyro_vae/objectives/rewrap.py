"""The guide's latent distributions, re-wrapped to change only a gradient path.

`ScoreFunctionOnly` cuts the reparameterized path (the score estimator), `PathDerivative`
scores z at detached parameters (stl, dreg); `RewrapLatents` applies either to every latent
site of a program.
"""

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.poutine.messenger import Messenger

from ..registry import UserError


class _Rewrapped(TorchDistribution):
    """A distribution that samples and scores like `base`; subclasses change one gradient path.

    A subclass, not `base.has_rsample_(False)`: Pyro 1.9 refuses `has_rsample_` on
    an `Independent` that a plate has already expanded.
    """

    arg_constraints = {}

    def __init__(self, base):
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    def sample(self, sample_shape=torch.Size()):
        return self.base.sample(sample_shape)

    def log_prob(self, value):
        return self.base.log_prob(value)

    def expand(self, batch_shape, _instance=None):
        return type(self)(self.base.expand(batch_shape))


class ScoreFunctionOnly(_Rewrapped):
    """`base` marked non-reparameterized: z is drawn without a gradient path, so an ELBO
    differentiates it only through the score, E_q[f(z) d/dphi log q(z)]."""

    has_rsample = False

    def sample(self, sample_shape=torch.Size()):
        # The reparameterized draw, cut from the graph: the same distribution as base.sample(),
        # drawn with the standard-normal kernel that a CUDA graph can capture (torch.normal with
        # tensor arguments, which Normal.sample calls, could not be).
        if self.base.has_rsample:
            return self.base.rsample(sample_shape).detach()
        return self.base.sample(sample_shape)


class PathDerivative(_Rewrapped):
    """`base` with log q(z) evaluated at detached parameters (Roeder et al. 2017).

    The pathwise gradient of log q(z(phi); phi) is the path term (through z) plus the
    score term d/dphi log q, whose expectation is 0; dropping the score term leaves an
    unbiased gradient with zero variance when q equals the posterior.
    """

    has_rsample = True

    def rsample(self, sample_shape=torch.Size()):
        return self.base.rsample(sample_shape)

    def log_prob(self, value):
        return detach_parameters(self.base).log_prob(value)


def detach_parameters(distribution):
    """The same distribution with its parameters cut from the autograd graph."""
    if isinstance(distribution, torch.distributions.Independent):
        return type(distribution)(detach_parameters(distribution.base_dist), distribution.reinterpreted_batch_ndims)
    if isinstance(distribution, torch.distributions.MultivariateNormal):  # its other parameters are derived
        return type(distribution)(distribution.loc.detach(), scale_tril=distribution.scale_tril.detach())
    if isinstance(distribution, torch.distributions.TransformedDistribution):
        raise UserError(
            "this estimator scores z at detached guide parameters, which a flow guide (iaf) cannot do without "
            "inverting the flow; use an estimator that scores z at the guide's own parameters "
            "(Estimator.detaches_guide_parameters = False)"
        )
    names = [name for name in distribution.arg_constraints if name in distribution.__dict__]
    if not names:
        raise UserError(f"cannot detach the parameters of a {type(distribution).__name__} guide distribution")
    return type(distribution)(**{name: getattr(distribution, name).detach() for name in names})


class RewrapLatents(Messenger):
    """Wrap every unobserved sample site's distribution in `wrapper` (a `_Rewrapped` class)."""

    def __init__(self, wrapper):
        super().__init__()
        self.wrapper = wrapper

    def _process_message(self, msg):
        # isinstance: a plate's subsample site is a "sample" message too, but not a distribution
        if msg["type"] == "sample" and not msg["is_observed"] and isinstance(msg["fn"], torch.distributions.Distribution):
            msg["fn"] = self.wrapper(msg["fn"])
