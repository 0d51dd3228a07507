"""ELBO estimators, by name, and the ELBO's terms for each data point.

An estimator turns ``(model, guide, x)`` into a differentiable loss, summed over the
minibatch, whose gradient is the chosen estimator of the objective's gradient.
Estimators of the ELBO differ in their gradients, not in what they estimate; the
importance-weighted ones (``iwae``, ``renyi``, ``dreg``) estimate a different bound.

Every estimator says what it can do, so a trainer can refuse what makes no sense:

- ``reports_elbo``: the loss *value* is an estimate of -ELBO (else it is minus the
  estimator's own bound, e.g. the IWAE bound; log the true ELBO from ``evaluate_elbo``).
- ``supports_kl_weight``: whether a KL weight != 1 means what it says (inside an
  importance weight a scale reweights particles instead of weighting a KL term).
- ``supports_kl_penalty``: whether it can replace the KL term by a penalty of it (capacity,
  free bits: ``penalties``), which needs the reconstruction and KL terms apart.
- ``parameters()``: the estimator's own trainable parameters (a neural baseline),
  to be optimized beside the VAE's; ``state_dict()`` holds them and any running average.

The KL weight reaches an estimator as ``loss(model, guide, x, kl_weight=...)``, and the
base class applies it, in one place: model and guide are wrapped in the
``ScaleLatents`` handler (``annealing.kl_scaled``) before the subclass's
``differentiable_loss(model, guide, x)`` sees them. The two exceptions are exact
restatements of that, each tested against it: the direct losses (``reparameterized_loss``
for trace and meanfield, ``direct_log_weights`` for stl and the importance-weighted
estimators: the same numbers without tracing, for the library's own programs) multiply the
latent sites' log-density terms by the weight, and under ``jit = true`` the handler is applied inside the compiled
function, with the weight a tensor *argument* (read from Python while tracing, it would
be frozen into the graph as a constant).

A KL *penalty* (``penalties.Capacity``, ``penalties.FreeBits``) reaches it the same way,
``loss(..., kl_penalty=penalty)``, and is applied in one place too: ``penalized_loss``
computes the reconstruction and KL terms apart (``elbo_parts``: directly for the
library's own VAE, else from traces) and returns -(reconstruction - w * penalty(KL)).
"""

import contextlib
import math
import warnings

import torch
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import kl_divergence

from ._pyro_compat import FixedJitTrace_ELBO, FixedJitTraceMeanField_ELBO, handlers_active, value_with_gradient
from .annealing import kl_scaled
from .checks import number
from .registry import Registry, UserError

ESTIMATORS = Registry("estimator")


# ---- the guide's latent distribution, re-wrapped to change only the gradient ----


class _Rewrapped(TorchDistribution):
    """A distribution that samples and scores like ``base``; subclasses change one gradient path.

    A subclass, not ``base.has_rsample_(False)``: Pyro 1.9 refuses ``has_rsample_`` on
    an ``Independent`` that a plate has already expanded.
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
    """``base`` marked non-reparameterized: z is drawn without a gradient path, so an ELBO
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
    """``base`` with log q(z) evaluated at detached parameters (Roeder et al. 2017).

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
            "estimators stl and dreg score z at detached guide parameters, which a flow guide (iaf) cannot do "
            "without inverting the flow; use trace, meanfield, iwae, renyi, score or tail_adaptive"
        )
    names = [name for name in distribution.arg_constraints if name in distribution.__dict__]
    if not names:
        raise UserError(f"cannot detach the parameters of a {type(distribution).__name__} guide distribution")
    return type(distribution)(**{name: getattr(distribution, name).detach() for name in names})


class RewrapLatents(Messenger):
    """Wrap every unobserved sample site's distribution in ``wrapper`` (a ``_Rewrapped`` class)."""

    def __init__(self, wrapper):
        super().__init__()
        self.wrapper = wrapper

    def _process_message(self, msg):
        # isinstance: a plate's subsample site is a "sample" message too, but not a distribution
        if msg["type"] == "sample" and not msg["is_observed"] and isinstance(msg["fn"], torch.distributions.Distribution):
            msg["fn"] = self.wrapper(msg["fn"])


# ---- per data point log weights, the common ground of the particle estimators ----


def particle_traces(model, guide, x, num_particles=1, guide_wrapper=None):
    """The guide's trace on x repeated K times (row k * N + i is particle k of data point i), and
    the model's replayed against it; ``guide_wrapper`` re-wraps the guide's latent sites."""
    xs = x.repeat(num_particles, *([1] * (x.dim() - 1))) if num_particles > 1 else x
    if guide_wrapper is not None:
        guide = RewrapLatents(guide_wrapper)(guide)
    guide_trace = poutine.trace(guide).get_trace(xs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(xs)
    return guide_trace, model_trace


def log_weights(model, guide, x, num_particles=1, guide_wrapper=None):
    """log p(x_i, z_ki) and log q(z_ki | x_i) for K particles z_ki ~ q(z | x_i), each (K, N).

    The K particles are drawn by repeating the minibatch K times (row k * N + i is
    particle k of data point i), so networks and plates see an ordinary batch of K * N
    and no extra batch dimension. Each site's log-density carries its handlers' scale
    and mask (a KL weight). Every sample site must be one per data point (in the plate).
    Also returns the guide's trace.
    """
    n = len(x)
    guide_trace, model_trace = particle_traces(model, guide, x, num_particles, guide_wrapper)
    log_p = _sum_sites(model_trace, num_particles * n).view(num_particles, n)
    log_q = _sum_sites(guide_trace, num_particles * n).view(num_particles, n)
    return log_p, log_q, guide_trace


def _sum_sites(trace, size):
    trace.compute_log_prob()
    total = 0.0
    for name, site in trace.nodes.items():
        if site["type"] == "sample":
            log_prob = site["log_prob"]
            if log_prob.shape not in ((size,), ()):
                raise UserError(
                    f"site {name!r} has log-density shape {tuple(log_prob.shape)}; the particle "
                    "estimators need every sample site to hold one value per data point"
                )
            total = total + log_prob
    return total.expand(size) if total.dim() == 0 else total


def importance_weighted_bound(log_w, alpha=0.0):
    """Renyi's bound per data point (Li & Turner 2016), from log weights of shape (K, N):

        L_alpha(x) = 1 / (1 - alpha) log (1/K) sum_k w_k^(1 - alpha),   w_k = p(x, z_k) / q(z_k | x)

    alpha = 0 is the IWAE bound (Burda et al. 2015); alpha -> 1 is the ELBO.
    """
    k = log_w.shape[0]
    return (torch.logsumexp((1.0 - alpha) * log_w, 0) - math.log(k)) / (1.0 - alpha)


# ---- estimators ----


class Estimator(nn.Module):
    """Base class: ``loss(model, guide, x, kl_weight=None)``, a differentiable loss summed over x.

    ``loss`` applies the KL weight (see the module docstring) and calls the subclass's
    ``differentiable_loss(model, guide, x)``; a subclass that can compute the loss of the
    library's own VAE programs without tracing them defines ``direct_loss(vae, x, kl_weight)``.
    An ``nn.Module`` only so that estimators with state (baselines) move, train and
    checkpoint like the VAE; most have none.
    """

    # The library supplies these from the [objective] section; a config table for the
    # estimator itself sets only the options of its own class (alpha, baseline, ...).
    context_arguments = ("num_particles", "vectorize_particles", "jit", "data_shape")
    reports_elbo = True
    supports_kl_weight = True
    supports_kl_penalty = False
    supports_jit = False
    supports_labels = False  # whether differentiable_loss takes labels: (model, guide, x, y)
    minimum_particles = 1

    def __init__(self, num_particles=1, vectorize_particles=False, jit=False, data_shape=None):
        super().__init__()
        if num_particles < self.minimum_particles:
            raise UserError(
                f"estimator {self.registered_name!r} needs objective.num_particles >= "
                f"{self.minimum_particles}, got {num_particles}"
            )
        if jit and not self.supports_jit:
            jittable = ", ".join(name for name in ESTIMATORS if ESTIMATORS.get(name).supports_jit)
            raise UserError(
                f"objective.jit = true is not available for estimator {self.registered_name!r}; "
                f"use it with {jittable}, or set objective.jit = false"
            )
        self.num_particles = num_particles
        self.vectorize_particles = vectorize_particles
        self.jit = jit
        self.data_shape = data_shape

    def loss(self, model, guide, x, kl_weight=None, kl_penalty=None, y=None, sites=None):
        """The loss of ``model``/``guide`` on ``x`` with the latent sites' log-densities scaled by
        ``kl_weight`` (None or 1: unweighted; a number, 0-dim tensor, or a callable read once);
        with a ``kl_penalty``, -(reconstruction - kl_weight * kl_penalty(KL)) instead.

        ``y``: labels, passed on as the programs' second argument, ``model(x, y)``, by the
        estimators that ``support_labels``. ``sites``: the latent sites the weight scales
        (None: all of them)."""
        if callable(kl_weight):
            kl_weight = kl_weight()
        if kl_penalty is not None:
            if y is not None or sites is not None:
                raise UserError("capacity and free bits are for models without labels (model.kind = \"vae\")")
            self.check_kl_penalty(kl_penalty.name)
            return penalized_loss(
                model, guide, x, kl_penalty, kl_weight, analytic=self.analytic_kl,
                num_particles=self.num_particles, guide_wrapper=self.guide_wrapper,
            )
        vae = standard_vae(model, guide)
        if vae is not None and self.direct_loss is not None and y is None:
            loss = self.direct_loss(vae, x, kl_weight)
            if loss is not None:
                return loss
        if not is_unit_weight(kl_weight):
            model, guide = kl_scaled(model, kl_weight, sites), kl_scaled(guide, kl_weight, sites)
        if y is None:
            return self.differentiable_loss(model, guide, x)
        if not self.supports_labels:
            raise UserError(f"estimator {self.registered_name!r} cannot pass labels to the model; {LABEL_ESTIMATORS}")
        return self.differentiable_loss(model, guide, x, y)

    direct_loss = None  # or a method (vae, x, kl_weight) -> the loss, or None where it does not apply
    analytic_kl = False  # whether the KL term is taken in closed form where it has one
    guide_wrapper = None  # a _Rewrapped class applied to the guide's latent sites

    def differentiable_loss(self, model, guide, x):
        raise NotImplementedError

    def capture_obstacle(self, vae):
        """Why a CUDA graph cannot capture this estimator's step for ``vae``, or None if it can:
        the loss must never read a value from the device (``.item()``, a Python branch on a
        tensor). The particle estimators' losses are tensor arithmetic on ``log_weights``."""
        if self.jit:
            return "objective.jit = true compiles the loss with torch.jit, which is not captured"
        return None

    detaches_guide_parameters = False  # scores z under log q at detached parameters (PathDerivative)

    def check_guide(self, guide_family):
        """Refuse a guide family this estimator cannot use (one that cannot be scored at detached parameters)."""
        if self.detaches_guide_parameters and not getattr(guide_family, "detachable", True):
            raise UserError(
                f"estimator {self.registered_name!r} scores z at detached guide parameters, which the "
                f"{guide_family.registered_name!r} guide cannot do without inverting its flow; use trace, "
                "meanfield, iwae, renyi, score or tail_adaptive"
            )

    def check_kl_weight(self, constant=None):
        """Refuse a KL weight this estimator cannot honour (``constant`` None: a schedule)."""
        if not self.supports_kl_weight and constant != 1.0:
            raise UserError(
                f"estimator {self.registered_name!r} cannot weight the KL term: inside an importance "
                "weight a scale reweights the particles instead; use objective.kl_weight = 1"
            )

    def check_kl_penalty(self, what="capacity"):
        """Refuse a KL penalty (``what``: "capacity" or "free bits") this estimator cannot honour."""
        if not self.supports_kl_penalty:
            able = ", ".join(name for name in ESTIMATORS if ESTIMATORS.get(name).supports_kl_penalty)
            raise UserError(
                f"estimator {self.registered_name!r} cannot take objective.{what.replace(' ', '_')}: it needs "
                f"the reconstruction and KL terms apart, which this estimator does not have; use {able}"
            )
        if self.jit:
            raise UserError(f"objective.{what.replace(' ', '_')} is not available with objective.jit = true")


LABEL_ESTIMATORS = "models with labels train with objective.estimator = \"trace\", \"meanfield\", \"stl\" or \"enum\""


def is_unit_weight(kl_weight):
    """Whether ``kl_weight`` leaves the ELBO as it is (None or the number 1); a tensor always counts
    as a weight, since reading its value would synchronize with its device."""
    return kl_weight is None or (not torch.is_tensor(kl_weight) and kl_weight == 1)


def _weight_as_argument(fn):
    """``fn(x)`` as ``fn(x, kl_weight, batch_size=...)``: under ``torch.jit.trace`` the weight is
    then a graph input, so a changing schedule changes the compiled loss. ``batch_size`` is
    a keyword only so that Pyro's JIT cache compiles once per batch size (a short last batch).

    Why an argument: Pyro's ``JitTrace_ELBO`` runs the programs once under ``torch.jit.trace``
    and replays the recorded graph on every later call, so a weight the handler reads from
    Python (a number, or ``kl_scaled(vae.model, lambda: weight)``) is read once, while tracing,
    and recorded as a constant. With Pyro 1.9.2, ``JitTrace_ELBO`` on ``kl_scaled`` programs
    whose callable weight changed from 1 to 4 between calls returned the same loss at the same
    seed, bit for bit: the change is silently ignored. As a tensor argument the weight is an
    input of the graph (tested: the JIT loss equals the eager one at every weight, one compilation)."""

    def weighted(x, kl_weight, batch_size=None):
        return kl_scaled(fn, kl_weight)(x)

    return weighted


class PyroELBO(Estimator):
    """Base class for estimators that are one of Pyro's ELBOs (and its JIT twin)."""

    elbo_class, jit_class = Trace_ELBO, FixedJitTrace_ELBO
    supports_jit = True
    supports_kl_penalty = True  # pathwise gradients of reconstruction and KL, each computable apart
    supports_labels = True

    def __init__(self, **context):
        super().__init__(**context)
        num_particles, vectorize_particles, jit = self.num_particles, self.vectorize_particles, self.jit
        # max_plate_nesting is known (one "data" plate), which spares Pyro a guessing run.
        options = {"num_particles": num_particles, "vectorize_particles": vectorize_particles, "max_plate_nesting": 1}
        if jit:
            options["ignore_jit_warnings"] = True
        self.elbo = (self.jit_class if jit else self.elbo_class)(**options)
        self._options = options
        self._compiled = {}  # (model, guide) -> (its own JIT ELBO, weighted model, weighted guide)

    def _guide(self, guide):
        return guide if self.guide_wrapper is None else RewrapLatents(self.guide_wrapper)(guide)

    def loss(self, model, guide, x, kl_weight=None, kl_penalty=None, y=None, sites=None):
        if self.jit:
            if y is not None or sites is not None:
                raise UserError("objective.jit = true compiles programs of x alone; set objective.jit = false for models with labels")
            if kl_penalty is None:
                return self._jit_loss(model, guide, x, kl_weight)
        return super().loss(model, guide, x, kl_weight, kl_penalty, y, sites)

    def differentiable_loss(self, model, guide, x, *labels):
        return self.elbo.differentiable_loss(model, self._guide(guide), x, *labels)

    def capture_obstacle(self, vae):
        if self.jit:
            return super().capture_obstacle(vae)
        if self.direct_loss is not None and self.num_particles == 1 and vae.has_standard_programs:
            return None  # the direct loss: tensor arithmetic only
        return (f"estimator {self.registered_name!r} runs Pyro's {type(self.elbo).__name__} here (a model that "
                "redefines its programs, or num_particles > 1), which reads every site's log-density "
                "with .item()")

    def _jit_loss(self, model, guide, x, kl_weight):
        if callable(kl_weight):
            kl_weight = kl_weight()
        weight = torch.as_tensor(1.0 if kl_weight is None else kl_weight, dtype=x.dtype, device=x.device)
        key = (model, guide)
        if key not in self._compiled:
            # Pyro's JIT ELBO closes over the first model and guide it sees: one per pair.
            elbo = self.elbo if not self._compiled else self.jit_class(**self._options)
            self._compiled[key] = (elbo, _weight_as_argument(model), _weight_as_argument(self._guide(guide)))
        elbo, weighted_model, weighted_guide = self._compiled[key]
        # The compiled loss looks its parameters up in Pyro's global store by name.
        owner = getattr(model, "__self__", None)
        with owner.param_store() if hasattr(owner, "param_store") else contextlib.nullcontext():
            return elbo.differentiable_loss(weighted_model, weighted_guide, x, weight, batch_size=len(x))


class ReparameterizedELBO(PyroELBO):
    """A Pyro ELBO whose loss for the library's own programs (one particle) is computed directly."""

    def direct_loss(self, vae, x, kl_weight):
        if self.num_particles != 1:
            return None
        return reparameterized_loss(vae, x, kl_weight, analytic=self.analytic_kl)


@ESTIMATORS.register("trace")
class TraceEstimator(ReparameterizedELBO):
    """Trace_ELBO: Monte Carlo ELBO with pathwise (reparameterized) gradients for z (the default)."""


@ESTIMATORS.register("meanfield")
class MeanFieldEstimator(ReparameterizedELBO):
    """TraceMeanField_ELBO: the KL term in closed form where it exists (normal prior)."""

    elbo_class, jit_class = TraceMeanField_ELBO, FixedJitTraceMeanField_ELBO
    analytic_kl = True


@ESTIMATORS.register("enum")
class Enumerated(PyroELBO):
    """TraceEnum_ELBO: discrete latents marked for enumeration (M2's label) summed out exactly; else Trace_ELBO.

    A guide site with ``infer={"enumerate": "parallel"}`` is not sampled but taken at all its
    values at once, on a tensor dimension left of the plates (``max_plate_nesting = 1``:
    the "data" plate), and the ELBO sums them weighted by q: for M2's label,
    sum_y q(y | x) [log p(x, y, z_y) - log q(z_y | x, y)] + H(q(y | x)), exactly.
    """

    elbo_class = TraceEnum_ELBO
    supports_jit = False

    def differentiable_loss(self, model, guide, x, *labels):
        with warnings.catch_warnings():  # a labeled batch has nothing to enumerate, rightly
            warnings.filterwarnings("ignore", "TraceEnum_ELBO found no sample sites", UserWarning)
            if not torch.is_grad_enabled():  # TraceEnum_ELBO refuses to differentiate without autograd
                return torch.as_tensor(self.elbo.loss(model, self._guide(guide), x, *labels), device=x.device)
            return super().differentiable_loss(model, guide, x, *labels)


@ESTIMATORS.register("stl")
class StickingTheLanding(PyroELBO):
    """Sticking the landing (Roeder et al. 2017): pathwise ELBO gradient without the score term of log q.

    Computed from the per data point log weights (``log_weights``, the guide wrapped in
    ``PathDerivative``; ``direct_log_weights`` for the library's own programs): loss =
    -sum_n mean_k [log p(x_n, z_nk) - log q~(z_nk | x_n)], with q~ at detached parameters. For a guide whose sites are all reparameterized this is Pyro's
    ``Trace_ELBO`` surrogate (tested equal), without its ``.item()`` per site, so it never
    reads from the device (a CUDA graph can capture it). ``jit = true`` uses Pyro's JIT ELBO.
    """

    guide_wrapper = PathDerivative
    detaches_guide_parameters = True

    def differentiable_loss(self, model, guide, x):
        log_p, log_q, _ = log_weights(model, guide, x, self.num_particles, self.guide_wrapper)
        return -(log_p - log_q).mean(0).sum()

    def direct_loss(self, vae, x, kl_weight):
        """The same, from :func:`direct_log_weights` (the library's own programs, not under ``jit``)."""
        if self.jit:
            return None
        log_w, _ = direct_log_weights(vae, x, self.num_particles, kl_weight, self.guide_wrapper)
        return -log_w.mean(0).sum()

    def capture_obstacle(self, vae):
        return Estimator.capture_obstacle(self, vae)


class ParticleEstimator(Estimator):
    """Base class for estimators built on per data point log weights (``log_weights``).

    The K particles are always drawn as one batch of K * N, whatever ``vectorize_particles`` says.
    """


@ESTIMATORS.register("score")
class ScoreFunction(ParticleEstimator):
    """REINFORCE: score-function gradients for z, with a baseline (none, decaying_average, neural).

    For each data point and particle, with w = p(x, z) / q(z | x) and z drawn with no
    gradient path, the surrogate

        log p(x, z) + (log w - b(x)) log q(z | x)       (log w - b held constant)

    has the gradient E_q[d log p] + E_q[(log w - b) d log q], unbiased for any b that
    does not depend on z. The baseline is one number per data point:

    - ``decaying_average``: one scalar, the running mean of log w over past steps
      (b <- decay b + (1 - decay) mean(log w)), the same for every data point, so a
      short last batch is neither a crash nor a mix-up of positions (Pyro's is kept
      per batch position);
    - ``neural``: b(x) from a small MLP of x, fitted by least squares to log w.

    The score term uses the *unscaled* log q: under a KL weight beta the objective is
    E_q[log p(x|z)] + beta E_q[log p(z) - log q], whose score gradient is
    E_q[(log p(x|z) + beta (log p(z) - log q)) d log q], not beta times it.
    """

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

    def differentiable_loss(self, model, guide, x):
        log_p, log_q, guide_trace = log_weights(model, guide, x, self.num_particles, ScoreFunctionOnly)
        log_w = (log_p - log_q).detach()
        unscaled_log_q = sum(
            site["unscaled_log_prob"] for site in guide_trace.nodes.values() if site["type"] == "sample"
        ).view_as(log_w)
        baseline, baseline_loss = self._baseline(x, log_w)
        surrogate = log_p + (log_w - baseline).detach() * unscaled_log_q
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
        """The same bound from :func:`direct_log_weights` (the library's own programs). Training
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
        """The same, from :func:`direct_log_weights` (z of shape (K, N, d))."""
        log_w, z = direct_log_weights(vae, x, self.num_particles, kl_weight, PathDerivative)
        return self._loss(log_w, [z], particle_dims=2)

    @staticmethod
    def _loss(log_w, codes, particle_dims):
        """The surrogate from log weights (K, N) and the draws ``codes``, whose first
        ``particle_dims`` dimensions hold the K * N (particle, data point) pairs, particle-major."""
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
    K-particle average ELBO. Unlike Pyro's ``TraceTailAdaptive_ELBO`` (which ranks the
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
        """The same, from :func:`direct_log_weights`."""
        return self._loss(direct_log_weights(vae, x, self.num_particles, kl_weight)[0])

    def _loss(self, log_w):
        gamma = tail_fraction(log_w.detach()).pow(self.beta)
        surrogate = (gamma / gamma.sum(0) * log_w).sum()
        return -value_with_gradient(log_w.mean(0).sum(), surrogate)


def tail_fraction(log_w):
    """F(w_k) = (1/K) #{j : w_j >= w_k} along dim 0 (particles), for each data point."""
    return (log_w.unsqueeze(0) >= log_w.unsqueeze(1)).float().mean(1)


# ---- the fast path: the same loss as Pyro's, without tracing ----


def direct_log_weights(vae, x, num_particles, kl_weight=None, guide_wrapper=None):
    """log w_k = log p(x, z_k) - log q(z_k | x) for ``VAE.model``/``VAE.guide``, shape ``(K, N)``,
    computed directly: what the traced particle path (:func:`log_weights`, x repeated K times)
    computes for those programs, without tracing them and with the encoder run once per data point.
    Under a KL weight w, as under the handler that scales the latent sites,
    log w_k = log p(x | z_k) - w (log q(z_k | x) - log p(z_k)); ``guide_wrapper`` wraps q as
    :class:`RewrapLatents` wraps the guide's site (``PathDerivative``: log q at detached parameters).
    Also returns the draws z, shape ``(K, N, latent_dim)``.

    The guide's draw for K particles, ``q(z | x).rsample((K,))``, takes the same standard normals
    in the same order as the traced path's draw for x repeated K times (row k * N + n is
    particle k of data point n), and every density is the VAE's own (``guide_dist``,
    ``prior_dist``, ``likelihood_dist``), so values and gradients are the same.
    """
    n = x.shape[0]
    guide = vae.guide_dist(x)
    if guide_wrapper is not None:
        guide = guide_wrapper(guide)
    z = guide.rsample((num_particles,))  # (K, N, latent_dim)
    repeated = x.expand(num_particles, *x.shape).reshape(num_particles * n, *x.shape[1:])
    log_px = vae.likelihood_dist(z.reshape(num_particles * n, -1), repeated).log_prob(repeated).reshape(num_particles, n)
    return log_px - weighted(kl_weight, guide.log_prob(z) - vae.prior_dist().log_prob(z)), z


def standard_vae(model, guide):
    """The VAE whose own, unmodified ``model`` and ``guide`` these are, run under no handler; else None.

    Only then does :func:`reparameterized_loss` compute exactly what Pyro would: a
    subclass may redefine the programs, a wrapper or an enclosing handler may change them.
    """
    vae = getattr(model, "__self__", None)
    if vae is None or not getattr(vae, "has_standard_programs", False) or handlers_active():
        return None
    return vae if model == vae.model and guide == vae.guide else None


def reparameterized_loss(vae, x, kl_weight=None, analytic=False):
    """``Trace_ELBO``'s loss (``TraceMeanField_ELBO``'s with ``analytic``) for ``vae.model`` and
    ``vae.guide``, computed directly: the same noise, value and gradients, without tracing.

        loss = -sum_n [ log p(x_n | z_n) - w (log q(z_n | x_n) - log p(z_n)) ],  z_n ~ q(z | x_n) reparameterized

    with the KL term in closed form under ``analytic`` where it has one, and every density
    from the VAE's own ``guide_dist``, ``prior_dist`` and ``likelihood_dist`` (the ones its
    programs sample from). Pyro's trace bookkeeping costs about as much as a small
    network's step on a CPU; this path removes it. A weight of 0 drops the KL term, as the
    masking handler does (a tensor weight: where(w > 0, w KL, 0), with no host read).
    """
    guide = vae.guide_dist(x)
    z = guide.rsample()  # the draw the guide's "z" site makes: same RNG, same shape
    log_likelihood = vae.likelihood_dist(z, x).log_prob(x).sum()
    if not torch.is_tensor(kl_weight) and kl_weight == 0:
        return -log_likelihood
    return -(log_likelihood - weighted(kl_weight, kl_term(guide, vae.prior_dist(), z, analytic).sum()))


def weighted(kl_weight, kl):
    """w * kl for a KL weight w (None or 1: kl itself; a tensor: where(w > 0, w kl, 0), no host read)."""
    if torch.is_tensor(kl_weight):
        return torch.where(kl_weight > 0, kl_weight * kl, torch.zeros_like(kl))
    return kl if is_unit_weight(kl_weight) else kl_weight * kl


def kl_term(guide_dist, prior_dist, z, analytic=False, per_dimension=False):
    """KL(q(z | x) || p(z)) per data point, shape (N,), or per data point and latent dimension,
    shape (N, d) with ``per_dimension``: in closed form under ``analytic`` where it has one,
    else the Monte Carlo value log q(z | x) - log p(z) at the drawn ``z``. A guide marked
    ``PathDerivative`` (stl) is scored at detached parameters, as its own ``log_prob`` is."""
    if isinstance(guide_dist, PathDerivative):
        guide_dist = detach_parameters(guide_dist.base)
    if per_dimension:
        guide_dist, prior_dist = factors(guide_dist, "guide"), factors(prior_dist, "prior")
    kl = analytic_kl(guide_dist, prior_dist.expand(guide_dist.batch_shape)) if analytic else None
    return guide_dist.log_prob(z) - prior_dist.log_prob(z) if kl is None else kl


def factors(distribution, what="prior"):
    """The per-dimension factors of a distribution over vectors that factorizes (an Independent
    over the last dimension), whose log_prob gives one value per dimension; else a UserError."""
    base = getattr(distribution, "base_dist", None)  # a TransformedDistribution (a flow prior) has one too
    if base is None or getattr(distribution, "reinterpreted_batch_ndims", None) != 1 or base.event_shape != ():
        raise UserError(
            f"free bits need the KL per latent dimension, so a {what} that factorizes over dimensions "
            f"(e.g. model.prior = \"normal\" or \"learned_normal\"); this {what} is a {type(distribution).__name__}"
        )
    return base


def elbo_parts(model, guide, x, analytic=False, per_dimension=False, num_particles=1, guide_wrapper=None):
    """The ELBO's two terms, differentiable (pathwise), for each data point:
    ``(reconstruction, kl)`` = (E_q log p(x_n | z), KL(q(z | x_n) || p(z))) as ``kl_term`` computes it,
    shapes (N,) and (N,) or (N, d), averaged over ``num_particles`` draws of z.

    For the library's own VAE (one particle) they are computed directly from its densities;
    otherwise from a trace of the guide (wrapped in ``guide_wrapper``) and the model replayed
    against it, reading each site's unscaled ``fn.log_prob``. Every latent site must be
    reparameterized: these terms carry no score-function gradient.
    """
    vae = standard_vae(model, guide)
    if vae is not None and num_particles == 1:
        q = vae.guide_dist(x)
        z = q.rsample()
        reconstruction = vae.likelihood_dist(z, x).log_prob(x)
        return reconstruction, kl_term(q if guide_wrapper is None else guide_wrapper(q), vae.prior_dist(), z,
                                       analytic, per_dimension)
    n = len(x)
    guide_trace, model_trace = particle_traces(model, guide, x, num_particles, guide_wrapper)
    reconstruction, kl = 0.0, 0.0
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["is_observed"]:
            reconstruction = reconstruction + site["fn"].log_prob(site["value"])
            continue
        q = guide_trace.nodes[name]["fn"]
        if not q.has_rsample:
            raise UserError(f"capacity and free bits need a reparameterized guide; site {name!r} is not")
        kl = kl + kl_term(q, site["fn"], site["value"], analytic, per_dimension)
    for term in (reconstruction, kl):
        if not torch.is_tensor(term) or term.shape[:1] != (num_particles * n,):
            raise UserError("capacity and free bits need every sample site to hold one value per data point")
    average = lambda t: t.reshape(num_particles, n, *t.shape[1:]).mean(0)
    return average(reconstruction), average(kl)


def penalized_loss(model, guide, x, kl_penalty, kl_weight=None, analytic=False, num_particles=1, guide_wrapper=None):
    """-(sum_n E_q log p(x_n | z) - w * kl_penalty(KL)): the loss with the KL term replaced by a penalty
    of the minibatch's KL (``penalties.Capacity``, ``penalties.FreeBits``), w the KL weight."""
    reconstruction, kl = elbo_parts(model, guide, x, analytic, kl_penalty.per_dimension, num_particles, guide_wrapper)
    if not torch.is_tensor(kl_weight) and kl_weight == 0:
        return -reconstruction.sum()
    return -(reconstruction.sum() - weighted(kl_weight, kl_penalty(kl)))


def analytic_kl(guide_dist, prior_dist):
    """KL(q || p) per data point in closed form, or None where it has none."""
    try:
        return kl_divergence(guide_dist, prior_dist)
    except NotImplementedError:
        return None


@torch.no_grad()
def kl_per_dimension(vae, x, guide=None):
    """KL(q(z_d | x) || p(z_d)) for each data point and latent dimension, shape (N, latent_dim),
    where both the guide and the prior factorize over dimensions in closed form; else None.
    ``guide`` is q(z | x) when the caller has it already (``vae.guide_dist(x)``)."""
    if not vae.has_standard_programs or not vae.guide_family.factorizes:
        return None
    guide, prior = vae.guide_dist(x) if guide is None else guide, vae.prior_dist()
    base = getattr(prior, "base_dist", None)
    if base is None or not isinstance(guide, torch.distributions.Independent):
        return None
    try:
        return kl_divergence(guide.base_dist, base.expand(guide.base_dist.batch_shape))
    except (NotImplementedError, RuntimeError):
        return None


@torch.no_grad()
def elbo_terms(vae, x, guide_trace=None):
    """The ELBO and its terms for each data point of ``x``, one sample of the latents each.

    Returns a dict of tensors of shape ``(N,)``: ``reconstruction`` = log p(x | z),
    ``kl`` = KL(q(z | x) || p(z)) (closed form where it exists, else the Monte Carlo
    value log q(z | x) - log p(z) at the drawn z), and ``elbo`` = reconstruction - kl.
    With several latent sites (a two-layer model) ``kl`` is the sum over sites of each
    site's term, KL(q(z_l | ...) || p(z_l | ...)) at the drawn values of the others, and
    ``kl/<site>`` holds each. Log-densities are read from the sites' distributions
    directly, so no handler's scale (KL weight, subsampling) leaks into them. ``guide_trace``
    is a trace of ``vae.guide(x)`` when the caller has one (it also reads the guide's sites).
    """
    if guide_trace is None:
        guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    reconstruction = model_trace.nodes["x"]["fn"].log_prob(x)
    terms = {}
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        q, p, z = site["fn"], model_trace.nodes[name]["fn"], site["value"]
        kl = analytic_kl(q, p)
        terms[f"kl/{name}"] = q.log_prob(z) - p.log_prob(z) if kl is None else kl
    kl = sum(terms.values())
    result = {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}
    if len(terms) > 1:
        result.update(terms)
    return result
