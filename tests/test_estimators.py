"""ELBO estimators: closed-form variances and gradients (the score estimator under a KL weight),
agreement in expectation, exact identities, the JIT KL weight, refusals, and training."""

import math
from unittest import mock

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import small_vae
from estimator_cases import particles, spec_id, specs

from pyro_vae.build import build_estimator
from pyro_vae.config import load_config
from pyro_vae.evaluation import evaluate_elbo, gradient_variance
from pyro_vae.objectives import ESTIMATORS, importance_weighted_bound, log_weights, tail_fraction
from pyro_vae.registry import UserError


def build(name, num_particles=None, **options):
    if num_particles is None:
        num_particles = ESTIMATORS.get(name).minimum_particles
    return ESTIMATORS.build({"name": name, **options}, num_particles=num_particles, data_shape=(1, 8, 8))


# ---- x ~ N(mu, sigma^2), f(x) = (x - k)^2, through the estimators: the score function's and the
# pathwise gradient's variances in closed form ----


def quadratic_problem(mu, sigma, k, n):
    """n independent copies of max_mu E_q[-f(z)], q = N(mu_i, sigma^2), as a model and a guide.

    The model's z site has log-density 0 plus log q(z) held constant, so log p - log q = 0
    for every draw and the ELBO is E_q[-(z - k)^2] exactly; each data point has its own
    mu_i, so one gradient holds n independent per-sample gradients."""
    loc = torch.full((n,), float(mu), requires_grad=True)

    def guide(x):
        with pyro.plate("data", n):
            pyro.sample("z", dist.Normal(loc, sigma))

    def model(x):
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.ImproperUniform(dist.constraints.real, (), ()))
            pyro.factor("f", -(z - k) ** 2 + dist.Normal(loc, sigma).log_prob(z).detach())

    return loc, model, guide


@pytest.mark.parametrize("mu, sigma, k", [(1.0, 1.0, 0.0), (2.0, 0.5, 0.5)])
def test_score_and_pathwise_variances_match_the_closed_form(mu, sigma, k):
    n, a = 200_000, mu - k
    expected = {"score": a**4 / sigma**2 + 14 * a**2 + 15 * sigma**2, "trace": 4 * sigma**2}
    for name, tolerance in (("score", 0.06), ("trace", 0.02)):
        loc, model, guide = quadratic_problem(mu, sigma, k, n)
        (grad,) = torch.autograd.grad(build(name).loss(model, guide, torch.zeros(n)), [loc])
        # d/dmu E[(x - k)^2] = 2a for both estimators (the loss is -ELBO = E[f])
        assert grad.mean().item() == pytest.approx(2 * a, abs=5 * math.sqrt(expected[name] / n))
        assert grad.var().item() == pytest.approx(expected[name], rel=tolerance)


# ---- the score estimator under a KL weight, against the closed-form gradient ----

# z ~ N(0, 1), x | z ~ N(W z + B, SIGMA^2), q(z | x) = N(m, s^2): for each data point
#   E_q[log p(x | z)] = -log(2 pi SIGMA^2) / 2 - ((x - W m - B)^2 + W^2 s^2) / (2 SIGMA^2)
#   KL(q || p)        = (m^2 + s^2 - 1 - log s^2) / 2
W, B, SIGMA, X, M, S = 1.5, 0.2, 1.0, 2.0, 0.5, 0.8


def linear_gaussian_problem(n):
    """n independent copies of the model above, each data point with its own guide parameters
    (m_i, s_i), so one gradient holds n independent per-sample gradients."""
    loc = torch.full((n,), M, requires_grad=True)
    scale = torch.full((n,), S, requires_grad=True)

    def model(x):
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(W * z + B, SIGMA), obs=x)

    def guide(x):
        with pyro.plate("data", n):
            pyro.sample("z", dist.Normal(loc, scale))

    return loc, scale, model, guide


def weighted_elbo_gradient(likelihood_weight, kl_weight):
    """d/dm and d/ds of  a E_q[log p(x | z)] - b KL(q || p)  in closed form (a = 1, b = beta is L_beta)."""
    d_m = likelihood_weight * W * (X - W * M - B) / SIGMA**2 - kl_weight * M
    d_s = -likelihood_weight * W**2 * S / SIGMA**2 - kl_weight * (S - 1 / S)
    return d_m, d_s


@pytest.mark.parametrize("baseline", ["none", "decaying_average"])
@pytest.mark.parametrize("beta", [0.3, 2.5])
def test_score_gradient_under_a_kl_weight_matches_the_closed_form(beta, baseline):
    """The score estimator's gradient of L_beta = E_q log p(x|z) - beta KL, averaged over 500,000
    independent draws, is the closed form's within 5 standard errors; the gradients of the
    unweighted ELBO (the weight ignored) and of beta E_q log p(x|z) - KL (the weight on the
    likelihood term) are each more than 15 standard errors away."""
    n = 500_000
    loc, scale, model, guide = linear_gaussian_problem(n)
    x = torch.full((n,), X)
    estimator = build("score", baseline=baseline)
    if baseline == "decaying_average":
        estimator.loss(model, guide, x, kl_weight=beta)  # the running average is 0 on the first call
    loss = estimator.loss(model, guide, x, kl_weight=beta)  # -L_beta, summed over the data points
    gradients = torch.autograd.grad(loss, [loc, scale])
    expected = weighted_elbo_gradient(1.0, beta)
    weight_ignored = weighted_elbo_gradient(1.0, 1.0)
    weight_on_likelihood = weighted_elbo_gradient(beta, 1.0)
    for name, grad, right, ignored, misplaced in zip(("m", "s"), gradients, expected, weight_ignored, weight_on_likelihood):
        mean, standard_error = -grad.mean().item(), grad.std().item() / math.sqrt(n)
        assert abs(mean - right) < 5 * standard_error, (name, mean, right, standard_error)
        assert abs(ignored - right) > 15 * standard_error and abs(misplaced - right) > 15 * standard_error  # the test can tell


# ---- agreement in expectation, exact identities ----


def test_all_estimators_estimate_the_same_loss(digits):
    x = digits.train.x[:32]
    vae = small_vae(digits.shape, latent_dim=4, hidden=32)
    draws = 60
    means = {}
    with torch.no_grad():
        for name in ESTIMATORS.names():
            if name in ("tcvae", "factorvae"):  # not the ELBO: they reweight parts of its KL term on purpose
                continue
            estimator = build(name)
            values = torch.tensor([estimator.loss(vae.model, vae.guide, x).item() for _ in range(draws)])
            means[name] = (values.mean().item(), values.std().item() / math.sqrt(draws))
    reference, reference_error = means["meanfield"]  # analytic KL: the least noisy
    for name, (mean, error) in means.items():
        # with K = 1 the importance-weighted bounds are the ELBO; tail_adaptive reports its particles' mean ELBO
        assert abs(mean - reference) < 4 * math.hypot(error, reference_error) + 1e-3, name


@pytest.mark.parametrize("name, reference, num_particles, draws", [
    ("score", "trace", 1, 300), ("stl", "trace", 1, 100), ("meanfield", "trace", 1, 100), ("dreg", "iwae", 5, 100),
])
def test_gradient_means_agree(digits, name, reference, num_particles, draws):
    x = digits.train.x[:16]
    vae = small_vae(digits.shape, latent_dim=4, hidden=32)
    options = {"baseline": "decaying_average"} if name == "score" else {}
    ours = gradient_variance(vae, build(name, num_particles, **options), x, num_draws=draws, params="all", seed=1)
    theirs = gradient_variance(vae, build(reference, num_particles), x, num_draws=draws, params="all", seed=2)
    standard_error = (ours["variance"] / draws + theirs["variance"] / draws).sqrt()
    z = ((ours["mean"] - theirs["mean"]) / standard_error)[standard_error > 0]
    assert 0.6 < z.pow(2).mean().item() < 1.6  # ~1 if both are unbiased for the same gradient
    assert (z.abs() > 4).float().mean().item() < 0.01


def same_noise_loss_and_gradients(estimator, vae, x, seed=3):
    pyro.set_rng_seed(seed)
    loss = estimator.loss(vae.model, vae.guide, x)
    return loss, torch.autograd.grad(loss, list(vae.parameters()))


@pytest.mark.parametrize("name, reference", [("iwae", "trace"), ("renyi", "trace"), ("dreg", "stl")])
def test_one_particle_bounds_equal_their_single_sample_estimator(digits, name, reference):
    x = digits.train.x[:20]
    vae = small_vae(digits.shape, latent_dim=4, hidden=32)
    options = {"alpha": 0.5} if name == "renyi" else {}
    loss, grads = same_noise_loss_and_gradients(build(name, 1, **options), vae, x)
    expected_loss, expected_grads = same_noise_loss_and_gradients(build(reference), vae, x)
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-6)
    for g, h in zip(grads, expected_grads):
        torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-6)


def test_iwae_bound_rises_with_the_number_of_particles(digits):
    x = digits.train.x[:50]
    vae = small_vae(digits.shape, latent_dim=4, hidden=32)
    with torch.no_grad():
        bounds = [
            sum(-build("iwae", k).loss(vae.model, vae.guide, x).item() for _ in range(20)) / 20 / len(x)
            for k in (1, 5, 50)
        ]
        # and the bound is Renyi's at alpha = 0 on the same log weights
        log_p, log_q, _ = log_weights(vae.model, vae.guide, x, num_particles=7)
        log_w = log_p - log_q
        torch.testing.assert_close(importance_weighted_bound(log_w), torch.logsumexp(log_w, 0) - math.log(7))
    assert bounds[0] < bounds[1] < bounds[2]


def test_tail_fraction_counts_particles_at_least_as_heavy():
    log_w = torch.tensor([[3.0, 0.0], [1.0, 0.0], [2.0, 5.0]])  # 3 particles, 2 data points
    expected = torch.tensor([[1 / 3, 1.0], [1.0, 1.0], [2 / 3, 1 / 3]])  # ties count
    torch.testing.assert_close(tail_fraction(log_w), expected)


# ---- the score estimator's baseline ----


def test_decaying_average_baseline_is_one_number_and_survives_a_short_batch(digits):
    vae = small_vae(digits.shape, latent_dim=4, hidden=32)
    estimator = build("score", baseline="decaying_average", decay=0.9)
    with torch.no_grad():
        first = -estimator.loss(vae.model, vae.guide, digits.train.x[:64]).item() / 64  # mean log w
        assert estimator.average.item() == pytest.approx(first, rel=1e-6)
        second = -estimator.loss(vae.model, vae.guide, digits.train.x[64:74]).item() / 10
    assert estimator.average.item() == pytest.approx(0.9 * first + 0.1 * second, rel=1e-6)


def test_neural_baseline_is_trained_by_the_loss(digits):
    vae = small_vae(digits.shape, latent_dim=4, hidden=32)
    estimator = build("score", baseline="neural")
    x = digits.train.x[:64]
    estimator.loss(vae.model, vae.guide, x).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in estimator.parameters())


# ---- JIT: the KL weight is a graph input ----


def count_compilations():
    calls = []
    trace = torch.jit.trace

    def counting(*args, **kwargs):
        calls.append(1)
        return trace(*args, **kwargs)

    return calls, mock.patch("torch.jit.trace", counting)


@pytest.mark.parametrize("name", ESTIMATORS.names(supports_jit=True))
def test_changing_weight_changes_the_jit_loss_exactly_as_the_eager_loss(digits, name):
    vae = small_vae(digits.shape, latent_dim=4, hidden=32)
    x = digits.train.x[:32]
    jit, eager = ESTIMATORS.build(name, jit=True), ESTIMATORS.build(name)
    weights = [1.0, 0.5, 0.0, 2.0, torch.tensor(0.25)]
    calls, patch = count_compilations()
    with patch:
        jit.loss(vae.model, vae.guide, x, kl_weight=1.0)  # compiles (its first call draws extra noise)
        for weight in weights:
            pyro.set_rng_seed(7)
            jit_loss = jit.loss(vae.model, vae.guide, x, kl_weight=weight)
            jit_grads = torch.autograd.grad(jit_loss, list(vae.parameters()))
            pyro.set_rng_seed(7)
            eager_loss = eager.loss(vae.model, vae.guide, x, kl_weight=weight)
            eager_grads = torch.autograd.grad(eager_loss, list(vae.parameters()))
            assert jit_loss.item() == pytest.approx(eager_loss.item(), rel=1e-5), weight
            for g, h in zip(jit_grads, eager_grads):
                torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-5)
        assert len(calls) == 1  # once for all weights
        jit.loss(vae.model, vae.guide, x[:5], kl_weight=0.5)  # a short last batch: its own graph
        jit.loss(vae.model, vae.guide, x[:5], kl_weight=0.7)
    assert len(calls) == 2


# ---- refusals: one line, naming the fix ----


@pytest.mark.parametrize("overrides, message", [
    (["objective.estimator=iwae", "objective.jit=true"], "objective.jit = true is not available"),
    (["objective.estimator=score", "objective.jit=true"], "objective.jit = true is not available"),
    (["objective.estimator=tail_adaptive"], "num_particles >= 2"),
    (['objective.estimator={name="renyi", alpha=1.0}'], "alpha = 1 is the ELBO"),
    (['objective.estimator={name="score", baseline="mean"}'], "unknown baseline"),
    (['objective.estimator={name="trace", alpha=0.5}'], "unknown option"),
])
def test_invalid_combinations_are_refused_in_one_line(overrides, message):
    with pytest.raises(UserError, match=message) as error:
        build_estimator(load_config(overrides=overrides), data_shape=(1, 8, 8))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ESTIMATORS.names())
def test_kl_weight_support_is_declared_and_checked(name):
    estimator = build(name)
    estimator.check_kl_weight(1.0)
    if not estimator.supports_kl_weight:
        for weight in (0.5, None):  # None: a schedule
            with pytest.raises(UserError, match="kl_weight = 1"):
                estimator.check_kl_weight(weight)
    else:
        estimator.check_kl_weight(0.5)
        estimator.check_kl_weight(None)


def test_the_importance_weighted_estimators_declare_what_they_cannot_do():
    """Inside an importance weight a KL weight reweights the particles, and the loss is minus another bound."""
    for name in ("iwae", "renyi", "dreg", "tail_adaptive"):
        assert not ESTIMATORS.get(name).supports_kl_weight
    # the importance-weighted bounds, and the total-correlation objectives (beta-TCVAE, FactorVAE)
    for name in ("iwae", "renyi", "dreg", "tcvae", "factorvae"):
        assert not ESTIMATORS.get(name).reports_elbo
    for name in ("trace", "meanfield", "enum", "stl", "score", "tail_adaptive"):
        assert ESTIMATORS.get(name).reports_elbo


def test_neural_baseline_needs_the_data_shape():
    config = load_config(overrides=['objective.estimator={name="score", baseline="neural"}'])
    with pytest.raises(UserError, match="data shape"):
        build_estimator(config)


# ---- each estimator trains ----


@pytest.mark.parametrize("spec", list(specs()), ids=spec_id)
@pytest.mark.trains
def test_each_estimator_trains_a_small_model(digits, spec):
    """Every registered estimator (each option variant), read from the registry."""
    vae = small_vae(digits.shape, latent_dim=4, hidden=32)
    estimator = ESTIMATORS.build(spec, num_particles=particles(spec, 3), data_shape=(1, 8, 8))
    optimizer = torch.optim.Adam([*vae.parameters(), *estimator.parameters()], lr=3e-3)
    before = evaluate_elbo(vae, digits.batches("valid", 500, "cpu"))["elbo"]
    for epoch in range(2):  # batches of 200: the last one is short
        order = torch.randperm(len(digits.train), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(order), 200):
            x = digits.train.x[order[start : start + 200]]
            loss = estimator.loss(vae.model, vae.guide, x) / len(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    after = evaluate_elbo(vae, digits.batches("valid", 500, "cpu"))["elbo"]
    assert after > before + 3, (before, after)
