"""Likelihoods p(x | z): the decoder's output becomes a normalized distribution over x.

Every likelihood is a properly normalized density (or mass function) over the
data's support, so ELBOs and log-likelihoods are comparable across choices.

A likelihood receives the decoder's output `params` of shape
`(*batch, num_params, *data_shape)` and returns a Pyro distribution whose event
shape is `data_shape`. `num_params` says how many numbers per feature the
decoder must produce (1 for Bernoulli logits or a Gaussian mean).

Which one to use (docs/likelihoods-priors.md has the table):

- binary {0, 1}: `bernoulli`;
- grey levels in [0, 1]: `continuous_bernoulli`, or `beta` (strictly inside (0, 1));
- 8-bit (or any L-level) images k / (L - 1): `discretized_logistic`, a mass function, so
  `-log p / (D log 2)` is bits per dimension;
- real values: `gaussian` or `laplace` (heavier tails), with a fixed, learned or
  `"optimal"` (sigma-VAE) scale.
"""

import math
import numbers

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn
from torch.nn import functional as F

from .registry import Registry, UserError

LIKELIHOODS = Registry("likelihood")


class Likelihood(nn.Module):
    """Base class. Subclasses set `num_params` and implement `forward` and `mean`."""

    num_params = 1
    context_arguments: tuple[str, ...] = ("data_shape",)
    # Whether p(x | z) is a density over continuous values (True) or a mass function (False): a
    # density needs dequantized data where the data are integer-valued (``data.dequantize``).
    continuous = False

    def __init__(self, data_shape):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.event_dim = len(self.data_shape)

    def parameter(self, params, k):
        """The k-th parameter of every feature: `params[..., k, *data_shape]`, whatever batch
        dimensions lead (vectorized particles add one)."""
        return params.select(-1 - self.event_dim, k)

    def forward(self, params, x=None):
        """The distribution of x given the decoder output (`x` is the observation, if any)."""
        raise NotImplementedError

    def mean(self, params):
        """E[x | z], in data space: what figures show."""
        raise NotImplementedError

    def check_support(self, x):
        """Raise a one-line `UserError` if `x` lies outside the support."""

    def warning(self, x):
        """A one-line warning where `x` is valid but likely a mistake for this likelihood, else None."""
        return None


def _span(x):
    return f"[{x.min().item():.4g}, {x.max().item():.4g}]"


@LIKELIHOODS.register("bernoulli")
class Bernoulli(Likelihood):
    """Bernoulli on binary data {0, 1}; the decoder gives logits (BCE is its exact -log p)."""

    def forward(self, params, x=None):
        return dist.Bernoulli(logits=self.parameter(params, 0)).to_event(self.event_dim)

    def mean(self, params):
        return torch.sigmoid(self.parameter(params, 0))

    def check_support(self, x):
        if not torch.all((x == 0) | (x == 1)):
            raise UserError(
                "the bernoulli likelihood needs binary data in {0, 1}, but the data has other values; "
                "binarize it (data.binarize = \"static\" or \"dynamic\") or use "
                "likelihood = \"continuous_bernoulli\" for grey levels in [0, 1]"
            )


# ---------------------------------------------------------------------------------------
# Continuous Bernoulli


# |lambda - 1/2| below which log C(lambda) is taken from its Taylor series in t = lambda - 1/2.
# There the exact form's two terms cancel: in float32 its gradient is 0.7% off at
# |eta| = 0.004 (torch's own cut, |t| < 1e-3) and 5e-5 off at |eta| = 0.1, but only 3e-6 off
# beyond |eta| = 0.2 (|t| = 0.05). Inside, its Taylor series about lambda = 1/2 to t^6,
# log 2 + (4/3) t^2 + (104/45) t^4 + (16064/2835) t^6, is accurate to < 1e-9 in value and
# < 1e-6 relative in gradient.
SERIES_HALF_WIDTH = 0.05


def continuous_bernoulli_log_normalizer(logits):
    """log C(lambda) of the continuous Bernoulli, as a function of eta = logit(lambda).

    C(lambda) = 2 atanh(1 - 2 lambda) / (1 - 2 lambda), C(1/2) = 2 (Loaiza-Ganem &
    Cunningham 2019). With lambda = sigmoid(eta), 1 - 2 lambda = -tanh(eta / 2) and
    atanh(1 - 2 lambda) = -eta / 2, so exactly

        log C = log(eta / tanh(eta / 2)) = log|eta| - log|tanh(eta / 2)|,

    which is exact at every eta != 0, and ~ log|eta| as lambda -> 0 or 1 (no clamping of
    lambda, unlike working in probabilities). Near lambda = 1/2 both terms blow up and
    their difference (and its gradient) cancels, so there, with t = lambda - 1/2 =
    tanh(eta / 2) / 2, the series  log C ~ log 2 + (4/3) t^2 + (104/45) t^4 + (16064/2835) t^6
    is used (the coefficients of log(atanh(s) / s), s = 2t: 1/3, 13/90, 251/2835).
    """
    t = torch.tanh(logits / 2) / 2
    near_half = t.abs() < SERIES_HALF_WIDTH
    # Feed the exact branch a harmless value where the series is used, so neither branch
    # of the where produces a NaN (or a NaN gradient) at eta = 0.
    safe = torch.where(near_half, torch.ones_like(logits), logits)
    exact = safe.abs().log() - torch.tanh(safe / 2).abs().log()
    t2 = t * t
    series = math.log(2.0) + (4.0 / 3.0 + (104.0 / 45.0 + 16064.0 / 2835.0 * t2) * t2) * t2
    return torch.where(near_half, series, exact)


def continuous_bernoulli_mean(logits):
    """E[x] = 1 / (1 - exp(-eta)) - 1 / eta, with its series 1/2 + eta/12 - eta^3/720 + eta^5/30240
    near eta = 0 (error < eta^7 / 1209600 < 1e-11 there)."""
    near_zero = logits.abs() < 4 * SERIES_HALF_WIDTH
    safe = torch.where(near_zero, torch.ones_like(logits), logits)
    exact = -1.0 / torch.expm1(-safe) - 1.0 / safe
    eta2 = logits * logits
    series = 0.5 + logits * (1.0 / 12 - eta2 * (1.0 / 720 - eta2 / 30240))
    return torch.where(near_zero, series, exact)


class StableContinuousBernoulli(dist.ContinuousBernoulli):
    """Pyro's (torch's) continuous Bernoulli with the log-normalizer and mean computed from
    the logits: exact for every lambda in (0, 1), series near 1/2 (see
    `continuous_bernoulli_log_normalizer`). Sampling is torch's inverse CDF."""

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        logits, value = torch.broadcast_tensors(self.logits, value)
        # log p(x | eta) = x log lambda + (1 - x) log(1 - lambda) + log C = -BCE(eta, x) + log C
        bce = F.binary_cross_entropy_with_logits(logits, value, reduction="none")
        return continuous_bernoulli_log_normalizer(logits) - bce

    @property
    def mean(self):
        return continuous_bernoulli_mean(self.logits)


def _check_unit_interval(name, x, fix):
    if x.min() < 0 or x.max() > 1:
        raise UserError(f"the {name} likelihood needs data in [0, 1], but the data spans {_span(x)}; {fix}")


@LIKELIHOODS.register("continuous_bernoulli")
class ContinuousBernoulli(Likelihood):
    """Continuous Bernoulli on grey levels in [0, 1]: Bernoulli with its normalizing constant restored.

    p(x | lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x) on [0, 1]; the decoder gives
    logit(lambda). Unlike a Bernoulli on grey levels, it integrates to 1 over [0, 1].
    Note E[x] != lambda (the mean is what figures show).
    """

    continuous = True

    def forward(self, params, x=None):
        return StableContinuousBernoulli(logits=self.parameter(params, 0)).to_event(self.event_dim)

    def mean(self, params):
        return continuous_bernoulli_mean(self.parameter(params, 0))

    def check_support(self, x):
        _check_unit_interval("continuous_bernoulli", x, "rescale it to [0, 1] or use likelihood = \"gaussian\"")


# ---------------------------------------------------------------------------------------
# Location-scale likelihoods: Gaussian and Laplace

SCALE_CHOICES = ("learned", "learned_per_feature", "optimal")
# Weight of the newest batch in the running average behind the "optimal" scale at evaluation.
RUNNING_MOMENTUM = 0.05


class LocationScale(Likelihood):
    """Base for p(x | z) = f((x - mu) / s) / s with mu from the decoder and a scale s that is

    - a number: fixed;
    - `"learned"`: one shared s = min_scale + exp(log_scale), trained with the networks;
    - `"learned_per_feature"`: one such s per feature (shape `data_shape`);
    - `"optimal"`: in training mode, the maximum-likelihood s for the current batch's
      residuals x - mu, detached (the sigma-VAE of Rybkin et al. 2020). At that s the
      gradient of the loss with respect to s is zero, so detaching it leaves the gradient
      for mu unchanged. Like batch normalization, it keeps a running average of the
      batch values (of s^2 for the Gaussian, of s for the Laplace; bias-corrected), and
      in eval mode, or without an observation, uses that fixed value, so that validation
      and test log-likelihoods are those of one normalized density that does not depend
      on which other points share the batch.

    `min_scale` floors the learned and optimal scales: without it a perfectly fitted
    (or constant) feature sends s -> 0 and log p -> +infinity.
    """

    distribution: type[TorchDistribution] | None = None  # a Pyro location-scale distribution class
    continuous = True
    # buffers (register_buffer), present by `scale`: tensors to mypy, not nn.Module's Tensor | Module
    fixed_scale: torch.Tensor
    running_statistic: torch.Tensor
    running_weight: torch.Tensor

    def __init__(self, data_shape, scale=1.0, min_scale=1e-3):
        super().__init__(data_shape)
        name = self.registered_name
        if not isinstance(min_scale, numbers.Real) or isinstance(min_scale, bool) or not float(min_scale) > 0:
            raise UserError(f"{name} min_scale must be a positive number, got {min_scale!r}")
        self.scale = scale
        self.min_scale = float(min_scale)
        if isinstance(scale, numbers.Real) and not isinstance(scale, bool):
            if not (math.isfinite(scale) and float(scale) > 0):
                raise UserError(f"{name} scale must be a positive number, got {scale!r}")
            self.register_buffer("fixed_scale", torch.tensor(float(scale)))
        elif scale == "learned":
            self.log_scale = nn.Parameter(torch.zeros(()))
        elif scale == "learned_per_feature":
            self.log_scale = nn.Parameter(torch.zeros(self.data_shape))
        elif scale == "optimal":
            # running average of optimal_statistic over training batches, and its total weight
            self.register_buffer("running_statistic", torch.tensor(0.0))
            self.register_buffer("running_weight", torch.tensor(0.0))
        else:
            raise UserError(
                f"{name} scale must be a positive number or one of: {', '.join(SCALE_CHOICES)}; got {scale!r}"
            )

    def warning(self, x):
        # A fixed scale is an absolute noise level: 1.0 on data spanning [0, 255] is a weight of
        # about 1/65000 on the KL term (beta = 2 sigma^2 relative to the squared error).
        low, high = x.min().item(), x.max().item()
        if self.scale in ("learned", "learned_per_feature", "optimal") or (low >= -2 and high <= 2):
            return None
        return (f"the data span [{low:.4g}, {high:.4g}] but the {self.registered_name} likelihood has the fixed "
                f"scale {self.scale}; rescale images to [0, 1] (uint8 arrays are read as x / 255) or set "
                f'scale = "learned" or "optimal"')

    @staticmethod
    def optimal_statistic(residual):
        """The batch statistic whose value gives the maximum-likelihood shared scale."""
        raise NotImplementedError

    @staticmethod
    def scale_from_statistic(statistic):
        raise NotImplementedError

    def running_scale(self):
        """The scale from the running average of the training batches' statistics (1 before any)."""
        if self.running_weight == 0:
            return torch.ones_like(self.running_statistic)
        statistic = self.running_statistic / self.running_weight
        return self.scale_from_statistic(statistic).clamp(min=self.min_scale)

    def scale_for(self, loc, x=None):
        """The scale s, broadcastable against `loc` of shape (N, *data_shape)."""
        if self.scale == "optimal":
            if x is None or not self.training:
                return self.running_scale()
            statistic = self.optimal_statistic((x - loc).detach())
            with torch.no_grad():  # exponential average, bias-corrected by its total weight
                self.running_statistic.mul_(1 - RUNNING_MOMENTUM).add_(RUNNING_MOMENTUM * statistic)
                self.running_weight.mul_(1 - RUNNING_MOMENTUM).add_(RUNNING_MOMENTUM)
            return self.scale_from_statistic(statistic).clamp(min=self.min_scale)
        if isinstance(self.scale, str):
            return self.min_scale + self.log_scale.exp()
        return self.fixed_scale

    def forward(self, params, x=None):
        loc = self.parameter(params, 0)
        scale = self.scale_for(loc, x).expand_as(loc)
        assert self.distribution is not None  # LocationScale is a base: each registered subclass sets it
        return self.distribution(loc, scale).to_event(self.event_dim)

    def mean(self, params):
        return self.parameter(params, 0)


@LIKELIHOODS.register("gaussian")
class Gaussian(LocationScale):
    """Gaussian N(mu, sigma^2) on real data; scale = a number, "learned", "learned_per_feature" or "optimal".

    -log p(x | z) = sum_i (x_i - mu_i)^2 / (2 sigma^2) + D log sigma + (D / 2) log 2 pi,
    so plain summed squared error is this likelihood at sigma^2 = 1/2, up to a constant;
    the "optimal" shared sigma is sigma^2 = mean squared error.
    """

    distribution = dist.Normal

    @staticmethod
    def optimal_statistic(residual):
        # d/dsigma [sum r^2 / (2 sigma^2) + D log sigma] = 0  =>  sigma^2 = mean(r^2)
        return residual.pow(2).mean()

    @staticmethod
    def scale_from_statistic(mean_squared_error):
        return mean_squared_error.sqrt()


@LIKELIHOODS.register("laplace")
class Laplace(LocationScale):
    """Laplace(mu, b) on real data, heavier-tailed than a Gaussian; same scale options.

    -log p(x | z) = sum_i |x_i - mu_i| / b + D log(2 b) (an L1 loss at fixed b); the
    "optimal" shared b is the mean absolute error.
    """

    distribution = dist.Laplace

    @staticmethod
    def optimal_statistic(residual):
        # d/db [sum |r| / b + D log b] = 0  =>  b = mean(|r|)
        return residual.abs().mean()

    @staticmethod
    def scale_from_statistic(mean_absolute_error):
        return mean_absolute_error


# ---------------------------------------------------------------------------------------
# Beta

# The floor on each concentration keeps the density finite when a decoder output goes to -inf.
MIN_CONCENTRATION = 1e-3


@LIKELIHOODS.register("beta")
class Beta(Likelihood):
    """Beta(alpha, beta) on data strictly inside (0, 1); the decoder gives both concentrations.

    alpha, beta = softplus(decoder outputs) + 1e-3. Grey-level images have exact 0s and 1s
    where the Beta density is 0 or infinite, so they are *squeezed* first: set
    `squeeze = eps` (e.g. 1e-3) and x in [0, 1] is modelled as x' = eps + (1 - 2 eps) x
    ~ Beta(alpha, beta). The change of variables adds D log(1 - 2 eps) to log p, so the
    result is a normalized density of x itself (on a support slightly wider than [0, 1])
    and stays comparable with the other likelihoods.
    """

    num_params = 2
    continuous = True

    def __init__(self, data_shape, squeeze=0.0):
        super().__init__(data_shape)
        if not isinstance(squeeze, numbers.Real) or isinstance(squeeze, bool) or not 0 <= float(squeeze) < 0.5:
            raise UserError(f"beta squeeze must be a number in [0, 0.5), got {squeeze!r}")
        self.squeeze = float(squeeze)
        # x = (x' - eps) / (1 - 2 eps): the map from Beta's (0, 1) to the data
        width = 1.0 - 2.0 * self.squeeze
        self.to_data = dist.transforms.AffineTransform(-self.squeeze / width, 1.0 / width)

    def concentrations(self, params):
        return (F.softplus(self.parameter(params, 0)) + MIN_CONCENTRATION,
                F.softplus(self.parameter(params, 1)) + MIN_CONCENTRATION)

    def forward(self, params, x=None):
        base = dist.Beta(*self.concentrations(params))
        if self.squeeze:
            base = dist.TransformedDistribution(base, [self.to_data])
        return base.to_event(self.event_dim)

    def mean(self, params):
        alpha, beta = self.concentrations(params)
        return (alpha / (alpha + beta) - self.squeeze) / (1.0 - 2.0 * self.squeeze)

    def check_support(self, x):
        if self.squeeze:
            _check_unit_interval("beta", x, "rescale it to [0, 1]")
        elif x.min() <= 0 or x.max() >= 1:
            raise UserError(
                f"the beta likelihood needs data strictly inside (0, 1), but the data spans {_span(x)}; "
                "set likelihood = { name = \"beta\", squeeze = 1e-3 } to model eps + (1 - 2 eps) x, "
                "or use \"continuous_bernoulli\""
            )


# ---------------------------------------------------------------------------------------
# Discretized logistic mixture


def _log_sigmoid(a):
    return -F.softplus(-a)


class _Grid(constraints.Constraint):
    """The L points k / (L - 1), k = 0..L-1, of [0, 1] (within float round-off)."""

    is_discrete = True

    def __init__(self, levels):
        self.levels = levels
        super().__init__()

    def check(self, value):
        k = value * (self.levels - 1)
        return (value >= 0) & (value <= 1) & ((k - k.round()).abs() < 1e-3)


class DiscretizedLogisticMixture(TorchDistribution):
    """A mixture of K logistics discretized to L levels x = k / (L - 1), k = 0..L-1.

    Level k gets the logistic mass of its bin [x - h, x + h], h = 1 / (2 (L - 1)), with the
    bins of the end levels extended to -inf and +inf (PixelCNN++, Salimans et al. 2017),
    so the masses of the L levels sum to exactly 1. Parameters have shape
    `(*batch_shape, K)`: mixture logits, locations and log-scales.
    """

    arg_constraints = {}

    def __init__(self, logits, loc, log_scale, levels=256, validate_args=None):
        self.logits, self.loc, self.log_scale = torch.broadcast_tensors(logits, loc, log_scale)
        self.levels = levels
        super().__init__(self.loc.shape[:-1], validate_args=validate_args)

    @property
    def support(self):
        return _Grid(self.levels)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.loc.shape[-1:]
        return DiscretizedLogisticMixture(
            self.logits.expand(shape), self.loc.expand(shape), self.log_scale.expand(shape), self.levels
        )

    def log_prob(self, value):
        half_bin = 0.5 / (self.levels - 1)
        x = value.unsqueeze(-1)
        inv_scale = torch.exp(-self.log_scale)
        upper = (x + half_bin - self.loc) * inv_scale
        lower = (x - half_bin - self.loc) * inv_scale
        upper = torch.where(x > 1 - half_bin, torch.full_like(upper, math.inf), upper)  # top bin: to +inf
        lower = torch.where(x < half_bin, torch.full_like(lower, -math.inf), lower)  # bottom bin: from -inf
        # sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(-(a - b))), a > b: no
        # cancellation even for bins far in the tails, and exact at the infinite ends.
        log_mass = _log_sigmoid(upper) + _log_sigmoid(-lower) + torch.log(-torch.expm1(lower - upper))
        return torch.logsumexp(torch.log_softmax(self.logits, -1) + log_mass, -1)

    @property
    def mean(self):
        """The mixture's continuous mean sum_k pi_k mu_k, clamped to [0, 1] (for figures)."""
        return (torch.softmax(self.logits, -1) * self.loc).sum(-1).clamp(0, 1)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            component = torch.distributions.Categorical(logits=self.logits).sample(sample_shape).unsqueeze(-1)
            loc = self.loc.expand(shape + self.loc.shape[-1:]).gather(-1, component).squeeze(-1)
            log_scale = self.log_scale.expand(shape + self.loc.shape[-1:]).gather(-1, component).squeeze(-1)
            u = torch.rand(shape, device=loc.device).clamp(1e-6, 1 - 1e-6)
            continuous = loc + log_scale.exp() * (u.log() - (-u).log1p())  # logistic inverse CDF
            return (continuous.clamp(0, 1) * (self.levels - 1)).round() / (self.levels - 1)


# The floor on each component's log-scale (PixelCNN++ uses -7): a bin's mass stays < 1 per component.
MIN_LOG_SCALE = -7.0


@LIKELIHOODS.register("discretized_logistic")
class DiscretizedLogistic(Likelihood):
    """Mixture of discretized logistics over L levels k / (L - 1) (8-bit images: L = 256); bits/dim meaningful.

    A probability mass function: -log p(x | z) / (D log 2) is in bits per dimension, and
    the masses of the L levels of every feature sum to 1. The decoder gives, per feature
    and component, a mixture logit, a location and a log-scale (3 K numbers). Data must be
    on the grid k / (L - 1). `levels` unset takes the data's (`data_levels`, given by
    whoever builds the model from a dataset: 256 for uint8 images, 17 for the 8x8 digits,
    whose values are k / 16), or 256 where the data do not say (float arrays).
    """

    context_arguments = ("data_shape", "data_levels")

    def __init__(self, data_shape, components=5, levels=None, data_levels=None):
        super().__init__(data_shape)
        levels = levels if levels is not None else data_levels or 256
        for name, value, minimum in (("components", components, 1), ("levels", levels, 2)):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise UserError(f"discretized_logistic {name} must be an integer >= {minimum}, got {value!r}")
        self.components = components
        self.levels = levels
        self.num_params = 3 * components

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3K, *data_shape) -> logits, loc, log_scale, each (N, *data_shape, K)."""
        logits, loc, log_scale = params.movedim(-1 - self.event_dim, -1).chunk(3, dim=-1)
        return logits, loc, log_scale.clamp(min=MIN_LOG_SCALE)

    def forward(self, params, x=None):
        return DiscretizedLogisticMixture(*self.split(params), levels=self.levels).to_event(self.event_dim)

    def mean(self, params):
        return DiscretizedLogisticMixture(*self.split(params), levels=self.levels).mean

    def check_support(self, x):
        _check_unit_interval("discretized_logistic", x, "rescale it to k / (levels - 1)")
        if not _Grid(self.levels).check(x).all():
            raise UserError(
                f"the discretized_logistic likelihood with levels = {self.levels} needs data on the grid "
                f"k / {self.levels - 1}, but the data has values between grid points; set levels to the "
                "number of grey levels (256 for 8-bit images) or use \"continuous_bernoulli\""
            )
