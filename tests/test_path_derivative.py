"""STL and DReG with every Gaussian guide: gradients against a hand-written path derivative.

Both estimators score z under log q at *detached* guide parameters, so that the encoder's
gradient flows through z alone (Roeder et al. 2017; Tucker et al. 2018). The reference here
writes log q out from the covariance (full: L L^T; low rank: F F^T + diag d; diagonal), with
every parameter detached, independently of ``objectives.detach_parameters``:

    STL:  grad = -d/d(phi, theta) sum_n mean_k log w_nk,
    DReG: encoder  -sum_n sum_k wt_nk^2 d log w_nk / d phi   (wt: normalized weights, held constant),
          decoder  -d/d theta sum_n log mean_k w_nk           (the IWAE gradient),

with log w_nk = log p(x_n | z_nk) + log p(z_nk) - log q~(z_nk | x_n), z_nk = the guide's
reparameterized draw (the same noise as the estimator's, by seed).
"""

import math

import pyro
import pytest
import torch

from pyro_vae.models import VAE
from pyro_vae.objectives import ESTIMATORS

SMALL = {"name": "mlp", "hidden": [16]}
GUIDES = ["full", {"name": "lowrank", "rank": 2}, "normal"]


def detached_log_q(q, z):
    """log N(z; mu, Sigma) with mu and Sigma cut from the graph, from Sigma's Cholesky factor L:
    -1/2 |L^-1 (z - mu)|^2 - sum log diag L - d/2 log 2 pi."""
    base = getattr(q, "base_dist", q)
    loc = base.loc.detach()
    if isinstance(base, torch.distributions.MultivariateNormal):
        tril = base.scale_tril.detach()
    elif isinstance(base, torch.distributions.LowRankMultivariateNormal):
        factor = base.cov_factor.detach()
        tril = torch.linalg.cholesky(factor @ factor.mT + torch.diag_embed(base.cov_diag.detach()))
    else:  # Normal(loc, scale).to_event(1)
        tril = torch.diag_embed(base.scale.detach())
    d = loc.shape[-1]
    solved = torch.linalg.solve_triangular(tril.expand(*z.shape[:-1], d, d), (z - loc).unsqueeze(-1), upper=False)
    log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * solved.squeeze(-1).pow(2).sum(-1) - log_det - 0.5 * d * math.log(2 * math.pi)


def hand_written_log_weights(vae, x, k):
    """log w (K, N) with log q at detached parameters, z = q(z | x).rsample((K,)) (the estimators' draw)."""
    q = vae.guide_dist(x)
    z = q.rsample((k,))
    repeated = x.expand(k, *x.shape).reshape(k * len(x), *x.shape[1:])
    log_px = vae.likelihood_dist(z.reshape(k * len(x), -1), repeated).log_prob(repeated).view(k, len(x))
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    return log_px + log_pz - detached_log_q(q, z)


def grads(loss, parameters):
    return torch.autograd.grad(loss, parameters, allow_unused=True, retain_graph=True)


def assert_same(first, second):
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.fixture(params=GUIDES, ids=["full", "lowrank", "normal"])
def vae(request, digits):
    torch.manual_seed(0)
    return VAE(digits.shape, latent_dim=3, encoder=SMALL, decoder=SMALL, guide=request.param)


@pytest.mark.parametrize("path", ["direct", "traced"])
@pytest.mark.parametrize("k", [1, 3])
def test_stl_gradient_is_the_hand_written_path_derivative(digits, vae, path, k):
    x = digits.train.x[:6]
    estimator = ESTIMATORS.build("stl", num_particles=k)
    pyro.set_rng_seed(7)
    loss = estimator.loss(vae.model, vae.guide, x) if path == "direct" else estimator.differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(7)
    by_hand = -hand_written_log_weights(vae, x, k).mean(0).sum()
    torch.testing.assert_close(loss, by_hand, rtol=1e-5, atol=1e-4)
    parameters = list(vae.parameters())
    assert_same(grads(loss, parameters), grads(by_hand, parameters))


@pytest.mark.parametrize("path", ["direct", "traced"])
def test_dreg_gradient_is_the_hand_written_doubly_reparameterized_one(digits, vae, path):
    x = digits.train.x[:6]
    estimator = ESTIMATORS.build("dreg", num_particles=4)
    pyro.set_rng_seed(8)
    loss = estimator.loss(vae.model, vae.guide, x) if path == "direct" else estimator.differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(8)
    log_w = hand_written_log_weights(vae, x, 4)
    iwae = -(torch.logsumexp(log_w, 0) - math.log(4)).sum()
    torch.testing.assert_close(loss, iwae, rtol=1e-5, atol=1e-4)  # the value: the IWAE bound
    normalized = torch.softmax(log_w.detach(), 0)
    encoder, decoder = list(vae.encoder.parameters()), list(vae.decoder.parameters())
    assert_same(grads(loss, encoder), grads(-(normalized**2 * log_w).sum(), encoder))
    assert_same(grads(loss, decoder), grads(iwae, decoder))
