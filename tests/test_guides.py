"""Guide families: exactness where the family holds the posterior, the flow's density, the CLI.

pPCA (a linear-Gaussian decoder x = W z + b + sigma eps, z ~ N(0, I)) has the posterior
N(mu(x), S) with S = (I + W^T W / sigma^2)^-1 and mu(x) = S W^T (x - b) / sigma^2: linear
in x with a constant, full covariance (W's columns are not orthogonal). A linear encoder
can therefore output the exact posterior for the "full" and full-rank "lowrank" guides,
and then log p(x, z) - log q(z | x) = log p(x) at every z: the ELBO is exact. The best
diagonal guide (mean mu(x), variances 1 / Lambda_dd with Lambda = S^-1) misses it by
KL(q || p(z | x)) = (sum_d log Lambda_dd - log det Lambda) / 2 > 0.
"""

import math

import numpy as np
import pyro
import pytest
import torch
from conftest import inverse_softplus
from pyro.distributions import MultivariateNormal
from pyro.infer import Trace_ELBO

from pyro_vae import VAE, load_run
from pyro_vae.build import build_model
from pyro_vae.cli import main
from pyro_vae.config import load_config
from pyro_vae.evaluation import direct_log_importance_weights
from pyro_vae.guides import GUIDES, MIN_SCALE
from pyro_vae.objectives import ESTIMATORS
from pyro_vae.registry import UserError

D, LATENT, SIGMA = 5, 3, 0.4


def exact_posterior(W, b, sigma, x):
    """(posterior means (N, d), posterior covariance (d, d), log p(x) (N,)) of pPCA."""
    d = W.shape[1]
    precision = torch.eye(d, dtype=W.dtype) + W.T @ W / sigma**2
    covariance = torch.linalg.inv(precision)
    means = (x - b) @ (covariance @ W.T / sigma**2).T
    marginal = MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(len(b), dtype=W.dtype))
    return means, covariance, marginal.log_prob(x)


class PPCA:
    """A pPCA VAE with the given guide; ``set_best_guide`` writes the guide's optimum into the encoder."""

    def __init__(self, guide):
        generator = torch.Generator().manual_seed(5)
        self.W = torch.randn(D, LATENT, generator=generator)  # generic: columns not orthogonal
        self.b = torch.randn(D, generator=generator)
        self.vae = VAE((D,), LATENT, guide=guide, encoder={"name": "mlp", "hidden": []},
                       decoder={"name": "mlp", "hidden": []}, likelihood={"name": "gaussian", "scale": SIGMA})
        with torch.no_grad():
            self.vae.decoder.net[0].weight.copy_(self.W)
            self.vae.decoder.net[0].bias.copy_(self.b)
        self.x = MultivariateNormal(self.b, self.W @ self.W.T + SIGMA**2 * torch.eye(D)).sample((64,))

    def set_best_guide(self):
        """The encoder's constant outputs (the covariance's) as biases, the mean as a linear map."""
        W, b = self.W.double(), self.b.double()
        _, covariance, _ = exact_posterior(W, b, SIGMA, b[None])
        projection = covariance @ W.T / SIGMA**2  # mu(x) = projection (x - b)
        family = self.vae.guide_family
        d = LATENT
        if family.registered_name == "normal":
            constant = torch.cat([inverse_softplus(torch.linalg.inv(covariance).diagonal().rsqrt() - MIN_SCALE)])
        elif family.registered_name == "full":
            tril = torch.linalg.cholesky(covariance)
            rows, cols = torch.tril_indices(d, d, offset=-1)
            unit = tril / tril.diagonal()[:, None]  # L = diag(s) (I + M)
            constant = torch.cat([inverse_softplus(tril.diagonal() - MIN_SCALE), unit[rows, cols]])
        else:  # lowrank, rank = d: S = F F^T + delta^2 I with delta^2 half the smallest eigenvalue
            delta = (0.5 * torch.linalg.eigvalsh(covariance)[0]).sqrt()
            factor = torch.linalg.cholesky(covariance - delta**2 * torch.eye(d, dtype=W.dtype))
            constant = torch.cat([factor.reshape(-1), inverse_softplus(delta - MIN_SCALE).expand(d)])
        encoder = self.vae.encoder.net[0]
        with torch.no_grad():
            encoder.weight.zero_()
            encoder.weight[:d] = projection
            encoder.bias[:d] = -projection @ b
            encoder.bias[d:] = constant

    def exact(self):
        return exact_posterior(self.W.double(), self.b.double(), SIGMA, self.x.double())


FULL_GUIDES = ["full", {"name": "lowrank", "rank": LATENT}]


@pytest.mark.parametrize("guide", FULL_GUIDES)
def test_the_best_full_covariance_guide_makes_the_elbo_exact(guide):
    ppca = PPCA(guide)
    ppca.set_best_guide()
    _, _, log_px = ppca.exact()
    pyro.set_rng_seed(0)
    # every importance weight is p(x): the ELBO integrand is log p(x) at every draw
    log_w = direct_log_importance_weights(ppca.vae, ppca.x, 50)
    assert torch.allclose(log_w, log_px.float().expand_as(log_w), atol=2e-4)
    # and the training losses (one draw each, direct and traced) are -sum log p(x)
    for name in ("trace", "meanfield"):
        loss = ESTIMATORS.build(name).loss(ppca.vae.model, ppca.vae.guide, ppca.x)
        assert loss.item() == pytest.approx(-log_px.sum().item(), abs=5e-3)
    traced = Trace_ELBO(max_plate_nesting=1).loss(ppca.vae.model, ppca.vae.guide, ppca.x)
    assert traced == pytest.approx(-log_px.sum().item(), abs=5e-3)


def test_the_best_diagonal_guide_stays_below_by_the_closed_form_gap():
    ppca = PPCA("normal")
    ppca.set_best_guide()
    _, covariance, log_px = ppca.exact()
    precision = torch.linalg.inv(covariance)
    gap = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision)).item()
    assert gap > 0.1  # W's columns are far from orthogonal
    pyro.set_rng_seed(0)
    log_w = direct_log_importance_weights(ppca.vae, ppca.x, 4000).double()  # ELBO integrand, (K, N)
    elbo = log_w.mean(0)
    standard_error = (log_w.std(0) / math.sqrt(len(log_w))).max().item()
    assert torch.allclose(elbo, log_px - gap, atol=5 * standard_error)
    assert standard_error < gap / 10  # the test resolves the gap


@pytest.mark.trains
def test_cli_training_of_a_full_guide_reaches_the_exact_marginal_of_its_decoder(tmp_path):
    generator = torch.Generator().manual_seed(0)
    W = torch.randn(D, 2, generator=generator) * torch.tensor([1.5, 1.0]) + 0.8  # correlated columns
    x = torch.randn(3000, 2, generator=generator) @ W.T + SIGMA * torch.randn(3000, D, generator=generator)
    np.savez(tmp_path / "linear.npz", train=x.numpy())
    config = tmp_path / "full.toml"
    config.write_text(
        f'[data]\nname = "npz"\npath = "{tmp_path / "linear.npz"}"\nbinarize = "none"\n'
        '[model]\nlatent_dim = 2\nguide = "full"\nencoder = { name = "mlp", hidden = [] }\n'
        f'decoder = {{ name = "mlp", hidden = [] }}\nlikelihood = {{ name = "gaussian", scale = {SIGMA} }}\n'
        '[train]\nepochs = 40\nbatch_size = 100\nlr = 0.02\nlr_schedule = "cosine"\nprogress = false\ndevice = "cpu"\n'
    )
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 0
    vae = load_run(run)  # the checkpoint, rebuilt from the run's config
    decoder = vae.decoder.net[0]
    W_trained, b_trained = decoder.weight.detach().double(), decoder.bias.detach().double()
    test = x[:500].double()
    _, covariance, log_px = exact_posterior(W_trained, b_trained, SIGMA, test)
    pyro.set_rng_seed(0)
    elbo = direct_log_importance_weights(vae, test.float(), 200).double().mean(0)
    precision = torch.linalg.inv(covariance)
    diagonal_gap = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision)).item()
    gap = (log_px - elbo).mean().item()
    assert abs(gap) < 0.01  # the trained full guide is the posterior of the trained decoder
    assert diagonal_gap > 5 * abs(gap)  # no diagonal guide comes as close to this decoder's marginal


# ---- the inverse autoregressive flow ----


def iaf_in_two_dimensions(seed=0):
    torch.manual_seed(seed)
    family = GUIDES.build({"name": "iaf", "flows": 2, "hidden": [16], "context": 3}, latent_dim=2)
    with torch.no_grad():
        for p in family.parameters():  # a flow far from the identity
            p.normal_(0, 0.4)
    params = torch.tensor([[0.3, -0.2, 0.5, -0.5, 1.0, -1.0, 0.5]])  # loc, raw scale, context
    return family(params)


def grid(limit=4.0, n=400):
    axis = torch.linspace(-limit, limit, n + 1, dtype=torch.float64)
    centers = (axis[1:] + axis[:-1]) / 2
    zz = torch.stack(torch.meshgrid(centers, centers, indexing="ij"), -1).reshape(-1, 2)
    return zz.float(), (axis[1] - axis[0]).item() ** 2


def test_iaf_density_integrates_to_one_and_is_not_its_base():
    q = iaf_in_two_dimensions()
    points, area = grid()
    with torch.no_grad():
        density = q.log_prob(points).double().exp()  # inverts the flow: Jacobian included
        base = q.base_dist.log_prob(points).double().exp()
    assert (density.sum() * area).item() == pytest.approx(1.0, abs=2e-3)
    assert ((density - base).abs().sum() * area).item() > 0.2  # the flow changes the density


def test_iaf_samples_follow_its_density():
    q = iaf_in_two_dimensions()
    points, area = grid(n=400)
    with torch.no_grad():
        probability = (q.log_prob(points).double().exp() * area).reshape(400, 400)
        torch.manual_seed(1)
        samples = q.sample((20000,)).reshape(-1, 2)
    # 16 x 16 bins of 25 x 25 grid cells each over [-4, 4]^2: expected counts from the density
    # (by quadrature), observed counts from the draws; Pearson's chi^2 over the bins expecting > 5
    index = ((samples + 4.0) / 8.0 * 16).floor().long()
    inside = ((index >= 0) & (index < 16)).all(-1)
    observed = torch.bincount(index[inside, 0] * 16 + index[inside, 1], minlength=256).double()

    def chi_square(probability):
        expected = probability.reshape(16, 25, 16, 25).sum((1, 3)).reshape(-1) * len(samples)
        keep = expected > 5
        assert keep.sum() > 20 and observed[~keep].sum() < 100
        return ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum().item(), int(keep.sum())

    statistic, bins = chi_square(probability)
    assert statistic < bins + 4 * math.sqrt(2 * bins)  # chi^2(bins - 1): mean bins - 1, sd sqrt(2 (bins - 1))
    # the same check refuses a wrong density (the base's, without the flow)
    with torch.no_grad():
        wrong = (q.base_dist.log_prob(points).double().exp() * area).reshape(400, 400)
    assert chi_square(wrong)[0] > 10 * bins


def test_iaf_guide_refuses_the_detached_parameter_estimators_and_the_vamp_prior():
    vae = VAE((6,), 2, guide="iaf", encoder={"name": "mlp", "hidden": [8]}, decoder={"name": "mlp", "hidden": [8]})
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    for name in ("stl", "dreg"):
        estimator = ESTIMATORS.build(name, num_particles=2)
        with pytest.raises(UserError, match="'iaf' guide cannot"):
            estimator.check_guide(vae.guide_family)  # what build() asks before training
        with pytest.raises(ValueError, match="flow guide"):  # a direct call refuses too (Pyro re-raises it)
            estimator.loss(vae.model, vae.guide, x)
    with pytest.raises(UserError, match="iaf"):
        VAE((6,), 2, guide="iaf", prior="vamp")


@pytest.mark.parametrize("guide, num_params", [("normal", 8), ({"name": "lowrank", "rank": 2}, 16),
                                               ("full", 14), ({"name": "iaf", "context": 5}, 13)])
def test_the_encoder_outputs_what_the_guide_needs(guide, num_params):
    vae = VAE((6,), 4, guide=guide, encoder={"name": "mlp", "hidden": [8]})
    x = torch.rand(3, 6)
    assert vae.encoder(x).shape == (3, num_params)
    q = vae.guide_dist(x)
    assert q.batch_shape == (3,) and q.event_shape == (4,)
    assert vae.encode(x).shape == (3, 4)



def test_config_names_the_guide_and_refuses_bad_ones():
    vae = build_model(load_config(overrides=["model.guide={name='lowrank', rank=2}", "model.latent_dim=3"]), (6,))
    assert vae.guide_family.registered_name == "lowrank" and vae.encoder(torch.rand(2, 6)).shape == (2, 12)
    with pytest.raises(UserError, match="unknown guide 'bogus'"):
        load_config(overrides=["model.guide=bogus"])
    with pytest.raises(UserError, match="unknown option for guide 'full'"):
        load_config(overrides=["model.guide={name='full', rank=2}"])
    with pytest.raises(UserError, match="model.guide.rank must be >= 1"):
        build_model(load_config(overrides=["model.guide={name='lowrank', rank=0}"]), (6,))
    with pytest.raises(UserError, match="model.guide.hidden"):
        build_model(load_config(overrides=["model.guide={name='iaf', hidden=[2]}", "model.latent_dim=4"]), (6,))
