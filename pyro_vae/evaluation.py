"""Evaluation: the numbers a VAE is judged by.

- ``evaluate_elbo``: the mean ELBO, reconstruction term and KL over a data set,
  with the KL per latent dimension and the number of active units.
- Active units (Burda et al. 2015): dimension d is active when
  ``Cov_x(E_q[z_d | x]) > 0.01 Var_p(z_d)``: the criterion is stated for an N(0, I) prior,
  and a learned prior sets its own scale (``prior_variances``).
- ``log_likelihood``: the importance-sampled estimate of log p(x) for each data
  point (Burda et al. 2015), the figure VAEs are compared by (K = 5000 on the test set).
- ``evaluate``: all of the above for one data set, with bits per dimension where
  the data are discrete: under a mass function, or under a density on dequantized data,
  whose figures are turned into those of the discrete data (``dequantization_offset``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pyro
import torch
from pyro import poutine
from tqdm.auto import tqdm

from .checks import integer
from .data import HIDDEN, LabeledBatch
from .objectives import analytic_kl, direct_log_weights, factors, kl_term, log_weights, sample_sites
from .registry import UserError

if TYPE_CHECKING:
    from .annealing import KLWeight
    from .models import VAE
    from .objectives import Estimator

ACTIVE_UNIT_THRESHOLD = 0.01
# Evaluation draws its noise from this fixed seed, so epochs (and runs) are compared
# on the same draws, and the caller's RNG stream does not depend on whether it evaluates.
EVALUATION_SEED = 2718


def _devices():
    return [torch.cuda.current_device()] if torch.cuda.is_available() else []


@contextlib.contextmanager
def eval_mode(module):
    """Run with ``module`` in eval mode, then restore the mode it had.

    Evaluation must score one fixed density: in training mode a likelihood with
    ``scale = "optimal"`` refits its scale to every chunk it sees (and overwrites its
    running value with the evaluated data)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@torch.no_grad()
def evaluate_elbo(vae: VAE, batches: Iterable[torch.Tensor | LabeledBatch], seed: int = EVALUATION_SEED,
                  all_reduce: Callable[[torch.Tensor], Any] | None = None) -> dict[str, Any]:
    """Means over data points of the ELBO and its terms, one z per data point, fixed noise.

    Returns ``elbo``, ``reconstruction`` (E_q log p(x|z)), ``kl``, ``kl_per_dimension``
    (a list, where the KL factorizes over dimensions in closed form, else None),
    ``active_units`` (summed over latent layers) and ``num_examples``; a model with
    several latent layers adds ``kl_per_layer`` and ``active_units_per_layer`` (by site).
    Everything is accumulated as sums, so that
    under data-parallel training each process evaluates its shard and ``all_reduce``
    (e.g. ``torch.distributed.all_reduce``) combines the sums before the means are taken.

    ``batches`` may yield ``data.LabeledBatch`` for a model with labels (``labeled_terms``): then
    ``kl_per_dimension`` is None, and a model with a classifier adds ``accuracy`` on the points
    whose label is known.
    """
    sums: dict[str, torch.Tensor] = {}

    def add(name, value):  # float64 sums kept where the data is: read from the device once, at the end
        value = torch.as_tensor(value, dtype=torch.float64, device=device)
        sums[name] = value if name not in sums else sums[name] + value

    device = next(vae.parameters()).device
    with torch.random.fork_rng(devices=_devices()), eval_mode(vae):
        torch.manual_seed(seed)
        for batch in batches:
            if not isinstance(batch, LabeledBatch) and vae.takes_labels:
                batch = LabeledBatch(batch, torch.full(batch.shape[:1], HIDDEN, device=batch.device))
            if isinstance(batch, LabeledBatch):  # a model with labels
                x, y, terms, codes = labeled_terms(vae, batch, add)
                if x is None:
                    continue
                layers = {"z": codes}
            else:
                x, guide_trace = batch, poutine.trace(vae.guide).get_trace(batch)
                terms = elbo_terms(vae, x, guide_trace)
                if vae.has_standard_programs:  # q(z | x) is the guide's one site: one encoder pass serves all
                    guide = guide_trace.nodes["z"]["fn"]
                    layers, per_dim = {"z": vae.guide_family.mean(guide)}, kl_per_dimension(vae, x, guide)
                else:
                    layers, per_dim = vae.encode_layers(x), kl_per_dimension(vae, x)
                if per_dim is not None:
                    add("kl_per_dimension", per_dim.double().sum(0))
            for name, values in terms.items():
                add(name, values.double().sum())
            for site, codes in layers.items():
                codes = codes.double()
                add(f"code_sum/{site}", codes.sum(0))
                add(f"code_square_sum/{site}", (codes * codes).sum(0))
            add("count", len(x))
    if all_reduce is not None:
        for value in sums.values():
            all_reduce(value)
    if "count" not in sums:
        raise UserError("no data points to score: a conditional model (cvae) scores only points with labels")
    sums = {name: value.cpu() for name, value in sums.items()}
    count = sums["count"].item()
    result: dict[str, Any] = {name: (sums[name] / count).item() for name in ("elbo", "reconstruction", "kl")}
    kl_dims = sums.get("kl_per_dimension")
    result["kl_per_dimension"] = None if kl_dims is None else (kl_dims / count).tolist()
    active = {}
    prior_variance = prior_variances(vae, seed)
    for name in sums:
        if name.startswith("code_sum/"):
            site = name.split("/", 1)[1]
            # Var_x(E_q[z_d | x]) from the sums: (sum c^2 - (sum c)^2 / n) / (n - 1)
            variance = (sums[f"code_square_sum/{site}"] - sums[name] ** 2 / count) / max(count - 1, 1)
            relative = variance / prior_variance[site]
            active[site] = int((relative > ACTIVE_UNIT_THRESHOLD).sum()) if count > 1 else 0
    result["active_units"] = sum(active.values())
    if len(active) > 1:  # a model with several latent layers: each layer's KL and active units
        result["kl_per_layer"] = {site: (sums[f"kl/{site}"] / count).item() for site in active}
        result["active_units_per_layer"] = active
    result["num_examples"] = int(count)
    if "labeled_count" in sums and sums["labeled_count"].item() > 0:
        result["accuracy"] = (sums["correct"] / sums["labeled_count"]).item()
    return result


@torch.no_grad()
def kl_per_dimension(vae, x, guide=None):
    """KL(q(z_d | x) || p(z_d)) for each data point and latent dimension, shape (N, latent_dim),
    where both the guide and the prior factorize over dimensions in closed form; else None.
    ``guide`` is q(z | x) when the caller has it already (``vae.guide_dist(x)``)."""
    if not vae.has_standard_programs or not vae.guide_family.factorizes:
        return None
    try:
        q, p = factors(vae.guide_dist(x) if guide is None else guide, "guide"), factors(vae.prior_dist(), "prior")
    except UserError:  # a prior that does not factorize over dimensions (a mixture, a flow)
        return None
    return analytic_kl(q, p.expand(q.batch_shape))


@torch.no_grad()
def elbo_terms(vae, x, guide_trace=None):
    """The ELBO and its terms for each data point of ``x``, one sample of the latents each.

    Returns a dict of tensors of shape ``(N,)``: ``reconstruction`` = log p(x | z),
    ``kl`` = KL(q(z | x) || p(z)) (closed form where it exists, else the Monte Carlo
    value log q(z | x) - log p(z) at the drawn z: ``objectives.kl_term``), and
    ``elbo`` = reconstruction - kl.
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
    for site in sample_sites(guide_trace):
        name = site["name"]
        terms[f"kl/{name}"] = kl_term(site["fn"], model_trace.nodes[name]["fn"], site["value"], analytic=True)
    kl = sum(terms.values())
    result = {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}
    if len(terms) > 1:
        result.update(terms)
    return result


PRIOR_VARIANCE_SAMPLES = 4096


@torch.no_grad()
def prior_variances(vae, seed=EVALUATION_SEED, num_samples=PRIOR_VARIANCE_SAMPLES):
    """{site: Var_p(z_d)} per latent dimension, the prior's marginal variance: in closed form where
    the prior has one (normal, learned normal, mixtures, the VampPrior), else from ``num_samples``
    draws on a forked RNG (about 2% relative error; a threshold needs no more), float64 on the CPU.

    Burda et al.'s criterion Cov_x(E_q[z_d | x]) > 0.01 is stated for an N(0, I) prior; a learned
    prior (a VampPrior, a mixture, a learned normal) sets its own scale, so the covariance is
    compared with the prior's variance of z_d, which is 1 under N(0, I)."""
    with torch.random.fork_rng(devices=_devices()), eval_mode(vae):
        torch.manual_seed(seed)
        variances = vae.prior_variances(num_samples)
    return {site: variance.double().cpu() for site, variance in variances.items()}


def labeled_terms(vae, batch, add):
    """The ELBO terms and codes of a ``LabeledBatch`` for a model with labels, and the classifier's
    hits (``add("correct")``, ``add("labeled_count")``) where it has one. A conditional model (CVAE)
    is scored on its conditional ELBO of the points whose label is known; M2 on its bound on
    log p(x), with y summed out. Returns (x, y, terms, codes), x None when no point is scored."""
    known = batch.y != HIDDEN
    if vae.classifies and known.any():
        add("correct", (vae.classify(batch.x[known]) == batch.y[known]).sum().cpu())
        add("labeled_count", known.sum().cpu())
    if not vae.conditional:
        return batch.x, None, vae.elbo_terms(batch.x), vae.encode(batch.x)
    if not known.any():
        return None, None, None, None
    x, y = batch.x[known], batch.y[known]
    return x, y, vae.elbo_terms(x, y), vae.encode(x, y)


# Particles per pass times data points per batch bounds the memory of one pass: the
# defaults replay the model on 100 x 100 = 10,000 rows at a time whatever K is.
PARTICLES_PER_PASS = 100
EVALUATION_BATCH_SIZE = 100


def log_importance_weights(vae, x, num_particles, y=None):
    """log w_k = log p(x, z_k) - log q(z_k | x) with z_k ~ q(z | x), shape ``(num_particles, N)``
    (given labels ``y``, for a conditional model: log p(x, z_k | y) - log q(z_k | x, y)).

    For a VAE whose programs are the library's own the weights are computed directly
    (:func:`direct_log_importance_weights`, the same numbers without Pyro's tracing);
    for any other model and guide by tracing them (:func:`traced_log_importance_weights`).
    """
    if getattr(vae, "has_standard_programs", False) and y is None:
        return direct_log_importance_weights(vae, x, num_particles)
    return traced_log_importance_weights(vae, x, num_particles, y)


def direct_log_importance_weights(vae, x, num_particles):
    """:func:`traced_log_importance_weights` for ``VAE.model``/``VAE.guide``, computed directly
    (``objectives.direct_log_weights``, the weights the IWAE and Renyi bounds train on): the
    guide's draw ``z ~ q(z | x)`` for K particles is the same call on the same RNG, and the
    densities are the same distributions' ``log_prob`` (the guide's own log-density, whatever
    its family)."""
    return direct_log_weights(vae, x, num_particles)[0]


def traced_log_importance_weights(vae, x, num_particles, y=None):
    """log w_k = log p(x, z_k) - log q(z_k | x) with z_k ~ q(z | x), shape ``(num_particles, N)``,
    for any model and guide whose sample sites hold one value per data point in a "data" plate:
    ``objectives.log_weights``, the weights the particle estimators train on, with the guide run once
    on ``x`` inside a ``"particles"`` plate (its encoder sees each data point once and draws
    ``num_particles`` codes for it) and the model replayed on x repeated ``num_particles`` times.

    Log-densities are read from each site's distribution, ``fn.log_prob(value)``,
    never from the trace's scaled ``log_prob``: a KL weight (``ScaleLatents``) or a
    subsampling scale around the model or guide cannot leak into the estimate (the
    training bounds keep that scale on purpose: it is their KL weight).
    Labels ``y`` (a conditional model's) are passed as the programs' second argument. A
    discrete latent the guide samples (M2's label, without enumeration here) is one more
    importance-sampled site: the estimate is of log p(x) with y and z both sampled.
    """
    labels = () if y is None else (y,)
    log_p, log_q, _ = log_weights(vae.model, vae.guide, x, num_particles, labels=labels, encode_once=True, scaled=False)
    return log_p - log_q


def _minibatches(data, batch_size):
    """(minibatches, number of data points or None): a tensor is cut into minibatches,
    any other iterable is taken to yield them."""
    if torch.is_tensor(data):
        return (data[start : start + batch_size] for start in range(0, len(data), batch_size)), len(data)
    return data, None


@torch.no_grad()
def log_likelihood(
    vae: VAE,
    data: torch.Tensor | Iterable[torch.Tensor],
    num_samples: int = 5000,
    chunk_size: int = PARTICLES_PER_PASS,
    seed: int = EVALUATION_SEED,
    batch_size: int = EVALUATION_BATCH_SIZE,
    progress: bool = False,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """The importance-sampled estimate of log p(x) for each data point, shape ``(N,)``::

        log p(x) ~ logsumexp_k [log p(x, z_k) - log q(z_k | x)] - log K,   z_k ~ q(z | x), k = 1..K

    (Burda et al. 2015). It is a stochastic lower bound whose expectation rises with K
    to log p(x): K = 1 is the ELBO in expectation, and with the exact posterior as guide
    every weight equals p(x), so the estimate is exact for any K.

    ``data`` is a tensor ``(N, *data_shape)`` (cut into minibatches of ``batch_size``)
    or an iterable of minibatches. The K particles are drawn ``chunk_size`` at a time
    and combined with a running logsumexp, so memory is bounded by
    ``chunk_size * batch_size`` replayed data points whatever K is. Runs on the vae's
    device; the noise comes from ``seed`` on a forked RNG, so the caller's stream is
    untouched and the result is reproducible. ``progress`` shows a tqdm bar. ``labels`` (a
    tensor beside a tensor ``data``): for a conditional model (cvae), the estimate is of log p(x | y).
    """
    for value, name in ((num_samples, "num_samples"), (chunk_size, "chunk_size"), (batch_size, "batch_size")):
        integer(value, name, minimum=1)
    parameter = next(vae.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    minibatches, total = _minibatches(data, batch_size)
    conditional = getattr(vae, "conditional", False)
    if conditional and labels is None:
        raise UserError("a conditional model's log-likelihood log p(x | y) needs the labels y")
    label_batches = iter(_minibatches(labels, batch_size)[0]) if conditional else None
    results = []
    bar = tqdm(total=total, disable=not progress, unit="x", dynamic_ncols=True, desc=f"log p(x), K={num_samples}")
    # Pyro's per-site checks cost ~15% here and check nothing the caller cannot check once
    # (the CLI checks the data's support before evaluating).
    with torch.random.fork_rng(devices=_devices()), pyro.validation_enabled(False), eval_mode(vae):
        torch.manual_seed(seed)
        for x in minibatches:
            x = x.to(device)
            y = None if label_batches is None else next(label_batches).to(device)
            if tuple(x.shape[1:]) != tuple(vae.data_shape):
                raise UserError(
                    f"the data points have shape {tuple(x.shape[1:])} but the model was built for "
                    f"{tuple(vae.data_shape)}; evaluate it on the data it was trained on"
                )
            log_sum = torch.full((len(x),), -math.inf, device=device)
            for start in range(0, num_samples, chunk_size):
                log_weight = log_importance_weights(vae, x, min(chunk_size, num_samples - start), y)
                log_sum = torch.logaddexp(log_sum, torch.logsumexp(log_weight, dim=0))
            results.append(log_sum - math.log(num_samples))  # kept on the device: one read at the end
            bar.update(len(x))
    bar.close()
    return torch.cat(results).cpu()


def has_discrete_data(vae, x, y=None):
    """Whether the model's likelihood p(x | z) is a mass function (then bits per dimension apply)."""
    labels = () if y is None else (y[:1],)
    with torch.random.fork_rng(devices=_devices()), eval_mode(vae):  # the trace draws a z; leave the caller's stream be
        trace = poutine.trace(vae.model).get_trace(x[:1], *labels)
    return bool(trace.nodes["x"]["fn"].support.is_discrete)


def bits_per_dim(log_likelihood_nats, num_features):
    """-log p(x) / (D ln 2): the negative log-likelihood in bits per data dimension."""
    return -log_likelihood_nats / (num_features * math.log(2))


def dequantization_offset(num_features, levels):
    """D log L: what turns a density's log p on data dequantized as y = (k + u) / L into a bound on
    the log-probability of the discrete data k (Theis et al. 2016).

    The L^D cubes [k / L, (k + 1) / L)^D tile [0, 1)^D, each of volume L^-D, so
    P(k) = integral over the cube of p(y) dy = L^-D E_u[p((k + u) / L)] >= L^-D exp E_u[log p((k + u) / L)]
    (Jensen), i.e. log P(k) >= E_u[log p((k + u) / L)] - D log L. It is the same units as a
    discretized likelihood's log-mass of k / (L - 1): nats per image of L-level values, and
    -(log p - D log L) / (D ln 2) is bits per dimension in the usual 8-bit sense (L = 256).
    """
    return num_features * math.log(levels)


@torch.no_grad()
def evaluate(vae: VAE, x: torch.Tensor, num_samples: int = 5000, seed: int = EVALUATION_SEED,
             batch_size: int = EVALUATION_BATCH_SIZE, chunk_size: int = PARTICLES_PER_PASS, progress: bool = False,
             labels: torch.Tensor | None = None, dequantization_levels: int | None = None) -> dict[str, Any]:
    """Every diagnostic on one data set ``x`` (a tensor ``(N, *data_shape)``).

    ``dequantization_levels`` = L says that ``x`` are integer data dequantized as (k + u) / L
    (``data.dequantize``) and the likelihood is a density on them: ``log_likelihood``, ``elbo``
    and ``reconstruction`` are then those of the discrete data, the density's figures minus
    D log L (:func:`dequantization_offset`; a bound on log P(k), in expectation over u), and
    ``bits_per_dim`` is -log P(k) / (D ln 2), comparable with a discretized likelihood's on the
    same images; the density's own figures are kept as ``log_likelihood_density`` and
    ``elbo_density``, and the offset as ``dequantization_offset``.

    For a model with labels, ``labels`` are the data's (long, ``(N,)``): a conditional model's
    ELBO and log-likelihood are of p(x | y), and a model with a classifier (M2) adds
    ``accuracy``, the fraction of points its q(y | x) puts most mass on the true label.

    Returns the means over data points of ``elbo``, ``reconstruction``, ``kl``
    (``evaluate_elbo``), ``kl_per_dimension``, ``active_units``, the importance-sampled
    ``log_likelihood`` with ``num_samples`` = K and its standard error over data
    points, and ``bits_per_dim`` (None unless the likelihood is discrete).
    """
    integer(num_samples, "num_samples", minimum=1)
    integer(batch_size, "batch_size", minimum=1)
    parameter = next(vae.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    batches = (x[start : start + batch_size].to(device) for start in range(0, len(x), batch_size))
    if labels is not None:
        batches = (LabeledBatch(batch, labels[i * batch_size : (i + 1) * batch_size].to(device))
                   for i, batch in enumerate(batches))
    result = evaluate_elbo(vae, batches, seed=seed)  # each function runs the model in eval mode
    log_px = log_likelihood(vae, x, num_samples, chunk_size=chunk_size, seed=seed, batch_size=batch_size,
                            progress=progress, labels=labels)
    result["log_likelihood"] = log_px.mean().item()
    result["log_likelihood_standard_error"] = (log_px.std() / math.sqrt(len(log_px))).item() if len(log_px) > 1 else 0.0
    if dequantization_levels is not None:
        integer(dequantization_levels, "dequantization_levels", minimum=2)
        offset = dequantization_offset(vae.num_features, dequantization_levels)
        result.update(log_likelihood_density=result["log_likelihood"], elbo_density=result["elbo"],
                      dequantization_levels=dequantization_levels, dequantization_offset=offset)
        for name in ("log_likelihood", "elbo", "reconstruction"):
            result[name] -= offset
        result["bits_per_dim"] = bits_per_dim(result["log_likelihood"], vae.num_features)
    else:
        result["bits_per_dim"] = (
            bits_per_dim(result["log_likelihood"], vae.num_features)
            if has_discrete_data(vae, x[:1].to(device), labels[:1].to(device) if vae.conditional and labels is not None else None)
            else None
        )
    result["num_samples"] = num_samples
    return result


GRADIENT_GROUPS = ("encoder", "decoder", "all")


def gradient_variance(vae: VAE, estimator: Estimator, x: torch.Tensor, num_draws: int = 100, params: str = "encoder",
                      kl_weight: KLWeight | None = None, seed: int = EVALUATION_SEED) -> dict[str, Any]:
    """How noisy an estimator's gradient is, for a fixed minibatch ``x`` and fixed parameters.

    Draws ``num_draws`` gradients g_1..g_n of the per data point loss
    ``estimator.loss(vae.model, vae.guide, x) / len(x)`` with respect to the ``params``
    group ("encoder", "decoder" or "all") and returns

    - ``trace_covariance``: tr Cov[g] = sum_j Var[g_j] (unbiased, over the draws),
    - ``mean_norm_squared``: ||E[g]||^2 (from the sample mean),
    - ``snr``: ||E[g]|| / sqrt(tr Cov[g]), the signal-to-noise ratio of one draw,

    with ``num_draws``, ``num_parameters``, and the flat float64 tensors ``mean`` and
    ``variance`` (per coordinate, unbiased), for tests of one estimator against another. Parameters are not changed; an estimator
    with state (a decaying-average baseline) updates it as in training. The noise comes
    from ``seed`` on a forked RNG.
    """
    if params not in GRADIENT_GROUPS:
        raise UserError(f"params must be one of: {', '.join(GRADIENT_GROUPS)}; got {params!r}")
    integer(num_draws, "num_draws", minimum=1)
    if num_draws < 2:
        raise UserError("num_draws must be at least 2 to estimate a variance")
    module = vae if params == "all" else getattr(vae, params)
    parameters = [p for p in module.parameters() if p.requires_grad]
    total = squares = None
    with torch.random.fork_rng(devices=_devices()):
        torch.manual_seed(seed)
        for _ in range(num_draws):
            loss = estimator.loss(vae.model, vae.guide, x, kl_weight=kl_weight) / len(x)
            grads = torch.autograd.grad(loss, parameters, allow_unused=True)
            g = torch.cat([
                (torch.zeros_like(p) if grad is None else grad).reshape(-1) for p, grad in zip(parameters, grads)
            ]).double()
            total = g if total is None else total + g
            squares = g * g if squares is None else squares + g * g
    assert total is not None and squares is not None  # num_draws >= 2 was checked
    mean = total / num_draws
    variance = ((squares - num_draws * mean * mean) / (num_draws - 1)).clamp(min=0)
    trace_covariance = variance.sum().item()
    mean_norm_squared = (mean * mean).sum().item()
    return {
        "trace_covariance": trace_covariance,
        "mean_norm_squared": mean_norm_squared,
        "snr": math.sqrt(mean_norm_squared / trace_covariance) if trace_covariance > 0 else math.inf,
        "num_draws": num_draws,
        "num_parameters": int(mean.numel()),
        "mean": mean,
        "variance": variance,
    }
