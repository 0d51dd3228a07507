"""ELBO estimators, by name, and the ELBO's terms for each data point.

An estimator turns `(model, guide, x)` into a differentiable loss, summed over the
minibatch, whose gradient is the chosen estimator of the objective's gradient.
Estimators of the ELBO differ in their gradients, not in what they estimate; the
importance-weighted ones (`iwae`, `renyi`, `dreg`) estimate a different bound.

Every estimator says what it can do, so a trainer can refuse what makes no sense:

- `reports_elbo`: the loss *value* is an estimate of -ELBO (else it is minus the
  estimator's own bound, e.g. the IWAE bound; log the true ELBO from `evaluate_elbo`).
- `supports_kl_weight`: whether a KL weight != 1 means what it says (inside an
  importance weight a scale reweights particles instead of weighting a KL term).
- `supports_kl_penalty`: whether it can replace the KL term by a penalty of it (capacity,
  free bits: `penalties`), which needs the reconstruction and KL terms apart.
- `supports_labels`: whether it passes labels to the programs (a model with labels).
- `capturable`: whether a CUDA graph can capture its step (opt-in; `capture_obstacle`).
- `parameters()`: the estimator's own trainable parameters (a neural baseline),
  to be optimized beside the VAE's; `state_dict()` holds them and any running average.

The KL weight reaches an estimator as `loss(model, guide, x, kl_weight=...)`, and the
base class applies it, in one place: model and guide are wrapped in the
`ScaleLatents` handler (`annealing.kl_scaled`) before the subclass's
`differentiable_loss(model, guide, x)` sees them. The two exceptions are exact
restatements of that, each tested against it: the direct losses (`reparameterized_loss`
for trace and meanfield, `direct_log_weights` for stl and the importance-weighted
estimators: the same numbers without tracing, for the library's own programs) multiply the
latent sites' log-density terms by the weight (`annealing.weighted`, the handler's rule),
and under `jit = true` the handler is applied inside the compiled
function, with the weight a tensor *argument* (read from Python while tracing, it would
be frozen into the graph as a constant).

A KL *penalty* (`penalties.Capacity`, `penalties.FreeBits`) reaches it the same way,
`loss(..., kl_penalty=penalty)`, and is applied in one place too: `penalized_loss`
computes the reconstruction and KL terms apart (`elbo_parts`: directly for the
library's own VAE, else from traces) and returns -(reconstruction - w * penalty(KL)).

The package, one module per concern:

- `rewrap`: the guide's latent distributions re-wrapped to change one gradient path
  (`ScoreFunctionOnly`, `PathDerivative`, `RewrapLatents`);
- `log_weights`: per data point log weights, traced (`log_weights`) and direct
  (`direct_log_weights`), and the importance-weighted bound;
- `terms`: the ELBO's reconstruction and KL terms apart: the one KL function (`kl_term`),
  the direct ELBO loss, `elbo_parts` and `penalized_loss`;
- `programs`: `Programs`, what an estimator reads of a model (its two programs and its densities),
  so that the estimators need not know the model classes;
- `estimators`: the base class `Estimator` and the registry `ESTIMATORS`; the registered
  estimators by family: `elbos` (trace, meanfield, enum, stl) and `particles`
  (score, renyi, iwae, dreg, tail_adaptive); `discrete` (relaxed: a discrete latent relaxed to a
  Concrete / Gumbel-softmax vector); `tcvae` and `factorvae`, the estimators that penalize
  the total correlation (their base: `total_correlation`), on the KL term split into index-code
  mutual information, total correlation and dimension-wise KL (`aggregate`, with its hand-written
  autograd kernel `aggregate_kernel`).
"""

# registers the estimators, in this order: the listing's
# isort: off
from . import elbos, particles, tcvae, factorvae, discrete  # noqa: F401
# isort: on
from .discrete import RelaxDiscrete, Relaxed, RelaxedOneHot
from .elbos import Enumerated, MeanFieldEstimator, PyroELBO, StickingTheLanding, TraceEstimator
from .estimators import ESTIMATORS, Estimator, discrete_latents, label_estimators
from .log_weights import (
    direct_log_weights,
    importance_weighted_bound,
    log_weights,
    particle_traces,
    sample_sites,
    standard_vae,
)
from .particles import IWAE, DReG, ParticleEstimator, Renyi, ScoreFunction, TailAdaptive, tail_fraction
from .programs import Programs
from .rewrap import PathDerivative, RewrapLatents, ScoreFunctionOnly, detach_parameters
from .terms import analytic_kl, elbo_parts, factors, kl_term, penalized_loss, reparameterized_loss

__all__ = [
    "ESTIMATORS",
    "DReG",
    "Enumerated",
    "Estimator",
    "IWAE",
    "MeanFieldEstimator",
    "ParticleEstimator",
    "RelaxDiscrete",
    "Relaxed",
    "RelaxedOneHot",
    "PathDerivative",
    "Programs",
    "PyroELBO",
    "Renyi",
    "RewrapLatents",
    "ScoreFunction",
    "ScoreFunctionOnly",
    "StickingTheLanding",
    "TailAdaptive",
    "TraceEstimator",
    "analytic_kl",
    "detach_parameters",
    "discrete_latents",
    "direct_log_weights",
    "elbo_parts",
    "factors",
    "importance_weighted_bound",
    "kl_term",
    "label_estimators",
    "log_weights",
    "particle_traces",
    "penalized_loss",
    "reparameterized_loss",
    "sample_sites",
    "standard_vae",
    "tail_fraction",
]
