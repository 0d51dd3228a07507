"""Estimators built on per data point log weights (`log_weights`): score, renyi, iwae, dreg, tail_adaptive.

Each computes its loss from log w_k = log p(x, z_k) - log q(z_k | x) for K particles per data
point, traced (`log_weights`) or, for the library's own programs, direct
(`direct_log_weights`): tensor arithmetic only, so a CUDA graph can capture every one.
"""

import math

import torch
from torch import nn

from .._pyro_compat import value_with_gradient
from ..checks import number
from ..registry import UserError
from .estimators import ESTIMATORS, Estimator, discrete_latents
from .log_weights import direct_log_weights, importance_weighted_bound, log_weights
from .rewrap import PathDerivative, ScoreFunctionOnly


class ParticleEstimator(Estimator):
    """Base class for estimators built on per data point log weights (`log_weights`).

    The K particles are always drawn as one batch of K * N, whatever `vectorize_particles` says.
    """

    capturable = True  # tensor arithmetic on the log weights, whatever the model


@ESTIMATORS.register("score")
class ScoreFunction(ParticleEstimator):
    """REINFORCE: score-function gradients for z, with a baseline (none, decaying_average, neural).

    On a model with discrete latents (`discrete_latents`: the gmvae's y) only those are scored and
    the continuous ones keep their pathwise gradient: the surrogate is Pyro's `Trace_ELBO`'s,
    log p(x, y, z) - log q(z | x, y) + (log w - b) log q(y | x), plus the baseline.

    For each data point and particle, with w = p(x, z) / q(z | x) and z drawn with no
    gradient path, the surrogate

        log p(x, z) + (log w - b(x)) log q(z | x)       (log w - b held constant)

    has the gradient E_q[d log p] + E_q[(log w - b) d log q], unbiased for any b that
    does not depend on z. The baseline is one number per data point:

    - `decaying_average`: one scalar, the running mean of log w over past steps
      (b <- decay b + (1 - decay) mean(log w)), the same for every data point, so a
      short last batch is neither a crash nor a mix-up of positions (Pyro's is kept
      per batch position);
    - `neural`: b(x) from a small MLP of x, fitted by least squares to log w.

    The score term uses the *unscaled* log q: under a KL weight beta the objective is
    E_q[log p(x|z)] + beta E_q[log p(z) - log q], whose score gradient is
    E_q[(log p(x|z) + beta (log p(z) - log q)) d log q], not beta times it.
    """

    average: torch.Tensor  # a buffer (register_buffer): a tensor to mypy, not nn.Module's Tensor | Module
    net: nn.Module | None

    def __init__(self, *, baseline="none", decay=0.9, hidden=64, **context):
        super().__init__(**context)
        data_shape = self.data_shape
        if baseline not in ("none", "decaying_average", "neural"):
            raise UserError(
                f"objective.estimator.baseline: unknown baseline {baseline!r}; choose one of: none, decaying_average, neural"
            )
        if not 0 <= decay < 1:
            raise UserError(f"objective.estimator.decay must be in [0, 1), got {decay!r}")
        self.baseline, self.decay = baseline, decay
        self.register_buffer("average", torch.tensor(float("nan")))  # NaN: no step seen yet
        self.net = None
        if baseline == "neural":
            if data_shape is None:
                raise UserError("the neural baseline needs the data shape: build the estimator with data_shape")
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(data_shape), hidden), nn.ELU(), nn.Linear(hidden, 1))

    handles_discrete_latents = True
    _scored: tuple[str, ...] = ()  # the model's discrete latents (`loss` reads them): scored alone

    def loss(self, model, guide, x, kl_weight=None, kl_penalty=None, y=None, sites=None):
        # read from the model before a KL weight wraps its programs (`discrete.discrete_latents`)
        self._scored = discrete_latents(model)
        return super().loss(model, guide, x, kl_weight, kl_penalty, y, sites)

    def differentiable_loss(self, model, guide, x):
        scored = self._scored
        # A model with discrete latents: the score function for those alone, the rest pathwise.
        wrapper = None if scored else ScoreFunctionOnly
        log_p, log_q, guide_trace = log_weights(model, guide, x, self.num_particles, wrapper)
        log_w = (log_p - log_q).detach()
        sites = [site for site in guide_trace.nodes.values()
                 if site["type"] == "sample" and (not scored or site["name"] in scored)]
        unscaled_log_q = sum(site["unscaled_log_prob"] for site in sites).view_as(log_w)
        baseline, baseline_loss = self._baseline(x, log_w)
        if scored:
            # as Trace_ELBO's surrogate (tested equal): the continuous latents' log q pathwise, the scored
            # ones' only through the score term (their direct gradient has mean 0)
            pathwise = log_p - (log_q - sum(site["log_prob"] for site in sites).view_as(log_w))
        else:
            pathwise = log_p
        surrogate = pathwise + (log_w - baseline).detach() * unscaled_log_q
        elbo = log_w.mean(0).sum()
        return -value_with_gradient(elbo, surrogate.mean(0).sum() - baseline_loss)

    def _baseline(self, x, log_w):
        if self.baseline == "decaying_average":
            # Tensor selects, not Python branches on the value: no read from the device.
            mean = log_w.mean().detach()
            previous = self.average.clone()
            first = previous.isnan()
            with torch.no_grad():
                self.average.copy_(torch.where(first, mean, self.decay * previous + (1 - self.decay) * mean))
            return torch.where(first, torch.zeros_like(previous), previous), 0.0
        if self.baseline == "neural":
            assert self.net is not None  # built in __init__ for the neural baseline
            b = self.net(x).squeeze(-1)
            return b, (log_w - b).pow(2).mean(0).sum()  # least squares: b(x) -> E_q[log w]
        return 0.0, 0.0


@ESTIMATORS.register("renyi")
class Renyi(ParticleEstimator):
    """Renyi's alpha bound with K particles per data point (alpha = 0: IWAE); needs kl_weight = 1."""

    reports_elbo = False
    supports_kl_weight = False

    def __init__(self, *, alpha=0.0, **context):
        super().__init__(**context)
        self.alpha = number(alpha, "objective.estimator.alpha")
        if self.alpha == 1:
            raise UserError("objective.estimator.alpha = 1 is the ELBO itself; use estimator = \"trace\"")

    def differentiable_loss(self, model, guide, x):
        log_p, log_q, _ = log_weights(model, guide, x, self.num_particles)
        return -importance_weighted_bound(log_p - log_q, self.alpha).sum()

    def direct_loss(self, vae, x, kl_weight):
        """The same bound from `direct_log_weights` (the library's own programs). Training
        passes the weight as a tensor (1 here: a config refuses any other for this estimator)."""
        log_w, _ = direct_log_weights(vae, x, self.num_particles, kl_weight)
        return -importance_weighted_bound(log_w, self.alpha).sum()


@ESTIMATORS.register("iwae")
class IWAE(Renyi):
    """Importance-weighted bound (Burda et al. 2015): Renyi alpha = 0, K particles per data point."""

    def __init__(self, **context):
        super().__init__(alpha=0.0, **context)


@ESTIMATORS.register("dreg")
class DReG(ParticleEstimator):
    """Doubly reparameterized IWAE gradients (Tucker et al. 2018): IWAE bound, lower-variance encoder gradient.

    With normalized weights wt_k = w_k / sum_j w_j (held constant), the IWAE gradient is
    sum_k wt_k d log w_k; DReG keeps it for the decoder and uses, for the encoder,
    sum_k wt_k^2 (d log w_k / d z_k) (d z_k / d phi), with log q at detached parameters.
    One pass: the surrogate sum_k wt_k log w_k (log q with detached parameters), with a
    hook that multiplies the gradient reaching each z_k by wt_k.
    """

    reports_elbo = False
    supports_kl_weight = False
    detaches_guide_parameters = True

    def differentiable_loss(self, model, guide, x):
        log_p, log_q, guide_trace = log_weights(model, guide, x, self.num_particles, PathDerivative)
        codes = [site["value"] for site in guide_trace.nodes.values() if site["type"] == "sample"]
        return self._loss(log_p - log_q, codes, particle_dims=1)  # a site's rows: k * N + n

    def direct_loss(self, vae, x, kl_weight):
        """The same, from `direct_log_weights` (z of shape (K, N, d))."""
        log_w, z = direct_log_weights(vae, x, self.num_particles, kl_weight, PathDerivative)
        return self._loss(log_w, [z], particle_dims=2)

    @staticmethod
    def _loss(log_w, codes, particle_dims):
        """The surrogate from log weights (K, N) and the draws `codes`, whose first
        `particle_dims` dimensions hold the K * N (particle, data point) pairs, particle-major."""
        normalized = torch.softmax(log_w.detach(), 0)
        for z in codes:
            if z.requires_grad:
                factor = normalized.reshape(*z.shape[:particle_dims], *([1] * (z.dim() - particle_dims)))
                z.register_hook(lambda grad, factor=factor: grad * factor)
        surrogate = (normalized * log_w).sum(0).sum()
        return -value_with_gradient(importance_weighted_bound(log_w.detach()).sum(), surrogate)


@ESTIMATORS.register("tail_adaptive")
class TailAdaptive(ParticleEstimator):
    """Tail-adaptive f-divergence (Wang et al. 2018), per data point; needs K >= 2 and kl_weight = 1.

    For each data point, particle k gets the weight gamma_k = F(w_k)^beta, F(w_k) the
    fraction of particles j with w_j >= w_k (so beta < 0 favours heavy-tailed w), and
    the gradient is sum_k gamma_k d log w_k / sum_k gamma_k. The loss value is the
    K-particle average ELBO. Unlike Pyro's `TraceTailAdaptive_ELBO` (which ranks the
    whole minibatch jointly and needs vectorized particles), weights are per data point,
    so minibatches are an unbiased sum of per data point objectives.
    """

    minimum_particles = 2
    supports_kl_weight = False

    def __init__(self, *, beta=-1.0, num_particles=2, **context):
        super().__init__(num_particles=num_particles, **context)
        self.beta = number(beta, "objective.estimator.beta")

    def differentiable_loss(self, model, guide, x):
        log_p, log_q, _ = log_weights(model, guide, x, self.num_particles)
        return self._loss(log_p - log_q)

    def direct_loss(self, vae, x, kl_weight):
        """The same, from `direct_log_weights`."""
        return self._loss(direct_log_weights(vae, x, self.num_particles, kl_weight)[0])

    def _loss(self, log_w):
        gamma = tail_fraction(log_w.detach()).pow(self.beta)
        surrogate = (gamma / gamma.sum(0) * log_w).sum()
        return -value_with_gradient(log_w.mean(0).sum(), surrogate)


def tail_fraction(log_w):
    """F(w_k) = (1/K) #{j : w_j >= w_k} along dim 0 (particles), for each data point."""
    return (log_w.unsqueeze(0) >= log_w.unsqueeze(1)).float().mean(1)
