"""Likelihoods: normalized to the last constant, equal to independent closed forms, clear
errors outside their support, and a linear Gaussian VAE that reaches the pPCA optimum."""

import math
import re
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import inverse_softplus
from pyro.infer import TraceMeanField_ELBO
from scipy import integrate, stats

from pyro_vae import VAE
from pyro_vae.build import build_model
from pyro_vae.config import load_config
from pyro_vae.evaluation import evaluate_elbo
from pyro_vae.likelihoods import LIKELIHOODS, continuous_bernoulli_log_normalizer
from pyro_vae.registry import UserError


def build(spec, data_shape=(1,)):
    return LIKELIHOODS.build(spec, data_shape=data_shape).double()


def density_1d(likelihood, params):
    """x -> p(x | params) for one feature (data_shape (1,)), in float64."""
    params = torch.as_tensor(params, dtype=torch.float64).view(1, -1, 1)

    def p(x):
        value = torch.tensor([[x]], dtype=torch.float64)
        return likelihood(params, value).log_prob(value).exp().item()

    return p


def quad(f, a, b, points=None):
    value, error = integrate.quad(f, a, b, points=points, limit=200, epsabs=1e-11, epsrel=1e-10)
    return value


# ---- normalization -----------------------------------------------------------------------

# lambda = sigmoid(eta): eta = -30 (lambda ~ 1e-13), -8, at and around 1/2 (the series region
# ends at |eta| ~ 0.2), 3, 30 (lambda ~ 1 - 1e-13).
CONTINUOUS_BERNOULLI_LOGITS = [-30.0, -8.0, -0.2001, -0.05, -1e-6, 0.0, 1e-4, 0.1999, 0.2001, 3.0, 30.0]


@pytest.mark.parametrize("logit", CONTINUOUS_BERNOULLI_LOGITS)
def test_continuous_bernoulli_integrates_to_one(logit):
    p = density_1d(build("continuous_bernoulli"), [logit])
    assert quad(p, 0.0, 1.0) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
@pytest.mark.parametrize("scale", [1e-4, 0.05, 3.0])
@pytest.mark.parametrize("loc", [-2.0, 0.3])
def test_gaussian_and_laplace_integrate_to_one_even_at_tiny_scale(name, scale, loc):
    p = density_1d(build({"name": name, "scale": scale}), [loc])
    width = 60 * scale
    assert quad(p, loc - width, loc + width, points=[loc]) == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("squeeze", [0.0, 0.01])
@pytest.mark.parametrize("alpha, beta", [(0.5, 0.5), (1.0, 1.0), (2.0, 5.0), (40.0, 3.0), (0.05, 8.0)])
def test_beta_integrates_to_one_with_and_without_squeeze(alpha, beta, squeeze):
    likelihood = build({"name": "beta", "squeeze": squeeze})
    p = density_1d(likelihood, [inverse_softplus(alpha - 1e-3), inverse_softplus(beta - 1e-3)])
    # the squeezed density lives on the image of (0, 1) under x = (x' - eps) / (1 - 2 eps)
    low, high = -squeeze / (1 - 2 * squeeze), (1 - squeeze) / (1 - 2 * squeeze)
    eps = 1e-15
    assert quad(p, low + eps, high - eps) == pytest.approx(1.0, abs=2e-6)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_discretized_logistic_masses_sum_to_one(levels):
    likelihood = build({"name": "discretized_logistic", "components": 3, "levels": levels})
    # per row: mixture logits, locations (inside, at the edge and far outside [0, 1]),
    # log-scales (down to the -7 floor and below it)
    params = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.5, 0.5, 0.5, -1.0, -1.0, -1.0],
            [3.0, -2.0, 0.1, 0.001, 1.0, 0.37, -9.0, -5.0, 0.0],
            [-1.0, 2.0, 0.5, -3.0, 4.0, 0.99, 2.0, -7.0, -3.0],
        ],
        dtype=torch.float64,
    ).view(3, 9, 1)
    grid = (torch.arange(levels, dtype=torch.float64) / (levels - 1)).view(levels, 1, 1)
    log_mass = likelihood(params, None).log_prob(grid)  # (levels, 3)
    assert log_mass.shape == (levels, 3)
    assert torch.allclose(log_mass.exp().sum(0), torch.ones(3, dtype=torch.float64), atol=1e-12)


# ---- log-densities against independent closed forms ------------------------------------------


def test_continuous_bernoulli_matches_torch_and_the_closed_form():
    x = torch.linspace(0, 1, 11, dtype=torch.float64)
    for lam in [1e-3, 0.2, 0.49, 0.5 + 1e-3, 0.7, 0.999]:
        lam = torch.tensor(lam, dtype=torch.float64)
        logit = torch.log(lam) - torch.log1p(-lam)
        ours = build("continuous_bernoulli")(logit.expand(11, 1, 1), None).log_prob(x.view(11, 1))
        # C(l) l^x (1 - l)^(1 - x), C(l) = 2 atanh(1 - 2l) / (1 - 2l)
        closed = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam)) + x * lam.log() + (1 - x) * (1 - lam).log()
        assert torch.allclose(ours, closed, atol=1e-10)
        if abs(lam - 0.5) > 0.01:  # torch's own series region is |l - 1/2| < 1e-3
            reference = torch.distributions.ContinuousBernoulli(probs=lam.expand(11)).log_prob(x)
            assert torch.allclose(ours, reference, atol=1e-8)
    # at lambda = 1/2 it is the uniform density on [0, 1], in float32 too
    half = LIKELIHOODS.build("continuous_bernoulli", data_shape=(1,))(torch.zeros(11, 1, 1), None)
    assert torch.equal(half.log_prob(x.float().view(11, 1)), torch.zeros(11))


@pytest.mark.parametrize("logit", [0.0, 1e-5, 1e-3, 0.05, 0.19, 0.21, 1.0, 8.0, 25.0, 90.0, -90.0])
def test_continuous_bernoulli_normalizer_and_gradient_are_float32_exact(logit):
    """Near lambda = 1/2 the exact form cancels catastrophically; the series must not."""
    exact = lambda e: e.abs().log() - torch.tanh(e / 2).abs().log()  # log(eta / tanh(eta / 2))
    eta32 = torch.tensor(logit, requires_grad=True)
    value = continuous_bernoulli_log_normalizer(eta32)
    value.backward()
    if logit == 0.0:
        assert value.item() == pytest.approx(math.log(2), abs=1e-7) and eta32.grad.item() == 0.0
        return
    eta64 = torch.tensor(logit, dtype=torch.float64, requires_grad=True)
    reference = exact(eta64)
    reference.backward()
    assert value.item() == pytest.approx(reference.item(), abs=2e-7)
    assert eta32.grad.item() == pytest.approx(eta64.grad.item(), rel=1e-5)


@pytest.mark.parametrize("logit", [-6.0, -0.1, 0.0, 0.15, 2.0])
def test_continuous_bernoulli_mean_is_the_mean_of_its_density(logit):
    likelihood = build("continuous_bernoulli")
    p = density_1d(likelihood, [logit])
    expected = quad(lambda x: x * p(x), 0.0, 1.0)
    assert likelihood.mean(torch.tensor([[[logit]]], dtype=torch.float64)).item() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("name, reference", [("gaussian", torch.distributions.Normal), ("laplace", torch.distributions.Laplace)])
def test_location_scale_log_density_is_the_sum_over_features(name, reference):
    likelihood = LIKELIHOODS.build({"name": name, "scale": 0.3}, data_shape=(2, 3))
    params, x = torch.randn(4, 1, 2, 3), torch.randn(4, 2, 3)
    ours = likelihood(params, x).log_prob(x)
    assert ours.shape == (4,)
    assert torch.allclose(ours, reference(params[:, 0], 0.3).log_prob(x).sum((1, 2)))


def test_beta_matches_scipy_including_the_squeeze_jacobian():
    eps = 0.01
    likelihood = build({"name": "beta", "squeeze": eps}, data_shape=(5,))
    params = torch.randn(1, 2, 5, dtype=torch.float64)
    x = torch.tensor([[0.0, 0.2, 0.5, 0.93, 1.0]], dtype=torch.float64)
    alpha = torch.nn.functional.softplus(params[0, 0]) + 1e-3
    beta = torch.nn.functional.softplus(params[0, 1]) + 1e-3
    squeezed = eps + (1 - 2 * eps) * x[0]
    expected = stats.beta.logpdf(squeezed.numpy(), alpha.numpy(), beta.numpy()).sum() + 5 * math.log(1 - 2 * eps)
    assert likelihood(params, x).log_prob(x).item() == pytest.approx(expected, abs=1e-10)
    unsqueezed = build("beta", data_shape=(5,))
    inside = torch.tensor([[0.01, 0.2, 0.5, 0.93, 0.99]], dtype=torch.float64)
    expected = stats.beta.logpdf(inside[0].numpy(), alpha.numpy(), beta.numpy()).sum()
    assert unsqueezed(params, inside).log_prob(inside).item() == pytest.approx(expected, abs=1e-10)


def test_discretized_logistic_single_component_is_a_difference_of_logistic_cdfs():
    levels, loc, scale = 17, 0.4, 0.08
    likelihood = build({"name": "discretized_logistic", "components": 1, "levels": levels})
    params = torch.tensor([0.0, loc, math.log(scale)], dtype=torch.float64).view(1, 3, 1)
    grid = torch.arange(levels, dtype=torch.float64) / (levels - 1)
    ours = likelihood(params.expand(levels, 3, 1), None).log_prob(grid.view(levels, 1)).exp()
    cdf = lambda v: stats.logistic.cdf(v, loc=loc, scale=scale)
    h = 0.5 / (levels - 1)
    edges = np.concatenate([[-np.inf], grid.numpy()[:-1] + h, [np.inf]])
    expected = cdf(edges[1:]) - cdf(edges[:-1])
    assert np.allclose(ours.numpy(), expected, rtol=1e-10, atol=1e-15)


def test_discretized_logistic_is_discrete_so_bits_per_dim_apply():
    likelihood = LIKELIHOODS.build({"name": "discretized_logistic", "levels": 256}, data_shape=(1, 2, 2))
    assert likelihood.num_params == 15
    distribution = likelihood(torch.zeros(3, 15, 1, 2, 2), None)
    assert distribution.support.is_discrete and distribution.event_shape == (1, 2, 2)
    sample = distribution.sample()
    assert torch.equal(sample * 255, (sample * 255).round()) and sample.min() >= 0 and sample.max() <= 1
    # a logistic much wider than [0, 1] spreads its mass evenly: each interior level gets
    # about (1 / 255) * density(1/2) = 1 / (255 * 4 s), i.e. log2(255 * 4 s) bits per dimension,
    # and an end level gets the whole tail beyond it, about half the mass: 1 bit
    s = math.exp(4.0)
    wide = torch.cat([torch.zeros(3, 5), torch.full((3, 5), 0.5), torch.full((3, 5), 4.0)], 1).view(3, 15, 1, 1, 1)
    wide = wide.expand(3, 15, 1, 2, 2)
    interior = torch.randint(100, 156, (3, 1, 2, 2)) / 255.0
    bits = -likelihood(wide, interior).log_prob(interior) / (4 * math.log(2))
    assert torch.allclose(bits, torch.tensor(math.log2(255 * 4 * s)), atol=1e-3)
    ends = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(1, 1, 2, 2).expand(3, 1, 2, 2)
    bits = -likelihood(wide, ends).log_prob(ends) / (4 * math.log(2))
    assert torch.allclose(bits, torch.tensor(1.0), atol=0.01)


# ---- scales ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, statistic", [("gaussian", lambda r: r.pow(2).mean().sqrt()),
                                             ("laplace", lambda r: r.abs().mean())])
def test_optimal_scale_is_the_batch_maximum_likelihood_scale_and_is_detached(name, statistic):
    likelihood = LIKELIHOODS.build({"name": name, "scale": "optimal"}, data_shape=(3, 4)).train()
    loc = torch.randn(6, 1, 3, 4, requires_grad=True)
    x = torch.randn(6, 3, 4)
    distribution = likelihood(loc, x)
    scale = distribution.base_dist.scale
    expected = statistic(x - loc[:, 0].detach())  # Gaussian: sqrt(MSE); Laplace: mean |x - mu|
    assert torch.allclose(scale, expected.expand(6, 3, 4)) and not scale.requires_grad
    # it is the maximum: the batch log-likelihood is lower at 0.99 and 1.01 times that scale
    family = type(distribution.base_dist)
    total = lambda s: family(loc[:, 0], s).log_prob(x).sum().item()
    assert total(expected) > max(total(0.99 * expected), total(1.01 * expected))
    # a perfect fit is floored at min_scale, not driven to zero
    assert likelihood(loc, loc[:, 0].detach()).base_dist.scale.max().item() == pytest.approx(1e-3)


def test_optimal_scale_in_eval_mode_is_the_running_average_of_training_batches():
    likelihood = LIKELIHOODS.build({"name": "gaussian", "scale": "optimal"}, data_shape=(50,))
    x = torch.zeros(20, 50)
    assert likelihood.eval()(torch.zeros(20, 1, 50), x).base_dist.scale[0, 0].item() == 1.0  # before training
    likelihood.train()
    for sigma in (0.5, 0.5, 0.5):
        likelihood(torch.full((20, 1, 50), sigma), x)  # residual sigma everywhere: MSE = sigma^2
    likelihood.eval()
    scale = likelihood(torch.zeros(20, 1, 50), torch.randn(20, 50)).base_dist.scale
    assert torch.allclose(scale, torch.tensor(0.5))  # bias-corrected: exact after any number of equal batches
    assert torch.allclose(likelihood(torch.zeros(2, 1, 50), None).base_dist.scale, torch.tensor(0.5))


def test_learned_scales_are_parameters_of_the_vae():
    shared = VAE((2, 3), latent_dim=2, likelihood={"name": "gaussian", "scale": "learned"})
    per_feature = VAE((2, 3), latent_dim=2, likelihood={"name": "laplace", "scale": "learned_per_feature"})
    assert any(p is shared.likelihood.log_scale for p in shared.parameters())
    assert shared.likelihood.log_scale.shape == () and per_feature.likelihood.log_scale.shape == (2, 3)
    scale = per_feature.likelihood(torch.zeros(4, 1, 2, 3), None).base_dist.scale
    assert scale.shape == (4, 2, 3) and torch.allclose(scale, torch.tensor(1.001))  # min_scale + exp(0)


# ---- errors --------------------------------------------------------------------------------


SUPPORT_ERRORS = [
    ("bernoulli", torch.tensor([0.0, 0.5, 1.0]), ["continuous_bernoulli", "binarize"]),
    ("continuous_bernoulli", torch.tensor([0.0, 1.5]), ["[0, 1]", "[0, 1.5]"]),
    ("beta", torch.tensor([0.0, 0.5, 0.9]), ["strictly inside (0, 1)", "squeeze = 1e-3"]),
    ({"name": "beta", "squeeze": 1e-3}, torch.tensor([-0.1, 0.5]), ["[0, 1]"]),
    ({"name": "discretized_logistic", "levels": 256}, torch.tensor([0.0, 0.5, 1.0]), ["k / 255", "levels"]),
]


@pytest.mark.parametrize("spec, x, phrases", SUPPORT_ERRORS)
def test_data_outside_the_support_is_one_clear_line(spec, x, phrases):
    with pytest.raises(UserError) as error:
        LIKELIHOODS.build(spec, data_shape=x.shape).check_support(x.unsqueeze(0))
    message = str(error.value)
    assert "\n" not in message and all(phrase in message for phrase in phrases)


def test_data_inside_the_support_passes():
    grey = torch.tensor([[0.0, 0.25, 1.0]])
    for spec in ["continuous_bernoulli", "gaussian", {"name": "beta", "squeeze": 1e-3},
                 {"name": "discretized_logistic", "levels": 5}]:
        LIKELIHOODS.build(spec, data_shape=(3,)).check_support(grey)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "gaussian", "scale": "learnt"},
         "gaussian scale must be a positive number or one of: learned, learned_per_feature, optimal"),
        ({"name": "laplace", "scale": -1.0}, "laplace scale must be a positive number"),
        ({"name": "gaussian", "min_scale": 0}, "gaussian min_scale must be a positive number"),
        ({"name": "beta", "squeeze": 0.5}, "beta squeeze must be a number in [0, 0.5)"),
        ({"name": "discretized_logistic", "levels": 1}, "levels must be an integer >= 2"),
    ],
)
def test_bad_options_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        LIKELIHOODS.build(spec, "model.likelihood", data_shape=(3,))


def test_likelihood_tables_work_from_config_overrides():
    config = load_config(None, ["model.likelihood.name=laplace", "model.likelihood.scale=learned_per_feature"])
    vae = build_model(config, (1, 8, 8))
    assert vae.likelihood.registered_name == "laplace" and vae.likelihood.log_scale.shape == (1, 8, 8)
    config = load_config(None, ['model.likelihood={ name = "discretized_logistic", components = 2, levels = 17 }'])
    assert build_model(config, (1, 8, 8)).decoder.output_shape == (6, 1, 8, 8)


# ---- the linear VAE is probabilistic PCA --------------------------------------------------------


def ppca_optimum(x, q):
    """Tipping & Bishop's maximal log-likelihood per data point and sigma^2 (Tipping & Bishop 1999)."""
    x = x.double()
    d = x.shape[1]
    centred = x - x.mean(0)
    eigenvalues = torch.linalg.eigvalsh(centred.T @ centred / len(x)).flip(0)
    sigma2 = eigenvalues[q:].mean()
    log_likelihood = -0.5 * (d * math.log(2 * math.pi) + eigenvalues[:q].log().sum() + (d - q) * sigma2.log() + d)
    return log_likelihood.item(), sigma2.item()


@pytest.mark.trains
def test_linear_gaussian_vae_reaches_the_ppca_optimum():
    d, q, n = 8, 2, 3000
    generator = torch.Generator().manual_seed(1)
    W = torch.randn(d, q, generator=generator) * torch.tensor([2.0, 1.0])
    x = torch.randn(n, q, generator=generator) @ W.T + 0.5 * torch.randn(n, d, generator=generator) + 1.0
    best_log_likelihood, best_sigma2 = ppca_optimum(x, q)

    vae = VAE(d, latent_dim=q, encoder={"name": "mlp", "hidden": []}, decoder={"name": "mlp", "hidden": []},
              likelihood={"name": "gaussian", "scale": "learned"})
    elbo = TraceMeanField_ELBO(max_plate_nesting=1)  # closed-form KL: less noise per full-batch step
    optimizer = torch.optim.Adam(vae.parameters(), lr=0.03)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 if step < 900 else 0.1)
    for _ in range(1200):  # ~6 s: full-batch Adam, then a tenth of the rate to settle
        loss = elbo.differentiable_loss(vae.model, vae.guide, x) / n
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()

    sigma2 = vae.likelihood.scale_for(None).item() ** 2
    mean_elbo = sum(evaluate_elbo(vae, [x], seed=seed)["elbo"] for seed in range(5)) / 5
    assert sigma2 == pytest.approx(best_sigma2, rel=0.05)
    assert mean_elbo <= best_log_likelihood + 0.01  # a lower bound (up to Monte Carlo noise)
    assert abs(mean_elbo - best_log_likelihood) < 0.005 * abs(best_log_likelihood)


@pytest.mark.parametrize("spec, message", [
    ({"name": "gaussian", "min_scale": Fraction(1, 10**400)}, "min_scale must be a positive number"),
    ({"name": "laplace", "scale": Fraction(1, 10**400)}, "scale must be a positive number"),
    ({"name": "beta", "squeeze": Fraction(1, 2) - Fraction(1, 10**30)}, "squeeze must be a number in [0, 0.5)"),
])
def test_a_number_is_checked_as_the_float_that_is_stored(spec, message):
    # Each is in range as an exact Fraction but not as the float the likelihood keeps: a zero
    # scale floor, a zero fixed scale (log p = nan), a squeeze of 0.5 (a division by zero).
    with pytest.raises(UserError, match=re.escape(message)):
        LIKELIHOODS.build(spec, data_shape=(1,))
