"""The model and guide as Pyro programs: exact losses, plain SVI, no shared parameters; and the
library's networks without hidden layers make a linear autoencoder that spans the principal subspace."""

import gc
import math
import weakref

import numpy as np
import pyro
import pytest
import torch
import torch.nn.functional as F
from conftest import small_vae
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import VAE
from pyro_vae.guides import gaussian_parameters
from pyro_vae.nets import DECODERS, ENCODERS
from pyro_vae.registry import UserError


def hand_terms(vae, x, z):
    """Encoder/decoder outputs and the log-densities written out by hand."""
    loc, scale = gaussian_parameters(vae.encoder(x))
    out = vae.decoder(z)[:, 0].flatten(1)
    log_q = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_p = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    analytic_kl = -0.5 * (1 + (scale**2).log() - loc**2 - scale**2).sum(-1)
    return out, log_q, log_p, analytic_kl


def loss_and_z(elbo, vae, x, seed=3):
    """The Pyro loss, and the z the guide drew for it (the same noise, replayed by seed)."""
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(seed)
    z = poutine.trace(vae.guide).get_trace(x).nodes["z"]["value"]
    return loss, z


@pytest.mark.parametrize("elbo_class", [Trace_ELBO, TraceMeanField_ELBO])
def test_gaussian_loss_is_half_squared_error_plus_kl_plus_constant(elbo_class):
    vae = small_vae(likelihood={"name": "gaussian", "scale": 1.0})
    x = torch.rand(5, 1, 8, 8)
    loss, z = loss_and_z(elbo_class(), vae, x)
    mu, log_q, log_p, analytic_kl = hand_terms(vae, x, z)
    kl = analytic_kl if elbo_class is TraceMeanField_ELBO else log_q - log_p
    D = 64
    expected = (0.5 * (x.flatten(1) - mu) ** 2).sum() + kl.sum() + 5 * D / 2 * math.log(2 * math.pi)
    assert torch.allclose(loss, expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("elbo_class", [Trace_ELBO, TraceMeanField_ELBO])
def test_bernoulli_loss_is_bce_plus_kl(elbo_class):
    vae = small_vae(likelihood="bernoulli")
    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.3))
    loss, z = loss_and_z(elbo_class(), vae, x)
    logits, log_q, log_p, analytic_kl = hand_terms(vae, x, z)
    kl = analytic_kl if elbo_class is TraceMeanField_ELBO else log_q - log_p
    bce = F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="sum")
    assert torch.allclose(loss, bce + kl.sum(), rtol=1e-6, atol=1e-4)


def test_sites_and_plate_names():
    vae = small_vae()
    x = torch.bernoulli(torch.full((7, 1, 8, 8), 0.5))
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    assert guide.nodes["z"]["fn"].has_rsample
    assert model.nodes["x"]["is_observed"] and not model.nodes["z"]["is_observed"]
    assert model.nodes["z"]["cond_indep_stack"][0].name == "data"
    assert model.nodes["x"]["fn"].event_shape == (1, 8, 8)
    assert guide.nodes["z"]["value"].shape == (7, 3)


def svi_losses(vae, x, steps, seed=0):
    pyro.set_rng_seed(seed)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    return [svi.step(x) for _ in range(steps)]


@pytest.mark.trains
def test_plain_pyro_svi_script_trains_the_vae():
    vae = small_vae()
    x = torch.bernoulli(torch.full((64, 1, 8, 8), 0.3))
    before = [p.detach().clone() for p in vae.parameters()]
    losses = svi_losses(vae, x, 150)
    assert all(not torch.equal(b, p) for b, p in zip(before, vae.parameters()))
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 5 * 64 * 0.05


@pytest.mark.trains
def test_two_vaes_share_no_parameters_through_the_param_store():
    x = torch.bernoulli(torch.full((32, 1, 8, 8), 0.3))
    first = small_vae()
    svi_losses(first, x, 5)
    first_weights = {k: v.clone() for k, v in first.state_dict().items()}

    second = small_vae()
    twin = small_vae()
    twin.load_state_dict(second.state_dict())
    second_losses = svi_losses(second, x, 5, seed=1)

    assert all(torch.equal(first_weights[k], v) for k, v in first.state_dict().items())
    pyro.clear_param_store()  # the twin trains as if no other VAE ever existed
    assert svi_losses(twin, x, 5, seed=1) == second_losses
    assert all(torch.equal(a, b) for a, b in zip(second.parameters(), twin.parameters()))


@pytest.mark.trains
def test_a_vae_owns_its_parameters_nothing_stays_in_the_global_store():
    x = torch.bernoulli(torch.full((16, 1, 8, 8), 0.3))
    pyro.get_param_store().clear()
    user_param = pyro.param("users_own", torch.ones(2))  # the user's entries are left alone
    references = []
    for _ in range(5):
        vae = small_vae()
        svi_losses(vae, x, 2)
        with poutine.trace(param_only=True) as capture:
            Trace_ELBO().loss(vae.model, vae.guide, x)
        assert {site["value"] for site in capture.trace.nodes.values()} == set(vae.parameters())
        references.append(weakref.ref(vae))
        del vae, capture
    gc.collect()
    assert list(pyro.get_param_store().keys()) == ["users_own"]
    assert torch.equal(pyro.param("users_own"), user_param)
    assert all(reference() is None for reference in references)  # every VAE (and its weights) is gone
    pyro.get_param_store().clear()  # leave the global store empty, as the next test may check it is


def test_conv_networks_on_images():
    vae = VAE(
        (1, 8, 8), latent_dim=2,
        encoder={"name": "conv", "channels": [4, 8]},
        decoder={"name": "conv", "channels": [8, 4]},
    )
    x = torch.bernoulli(torch.full((3, 1, 8, 8), 0.5))
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    assert torch.isfinite(loss)
    assert vae.decoder(torch.zeros(3, 2)).shape == (3, 1, 1, 8, 8)
    assert vae.sample(5).shape == (5, 1, 8, 8)


def test_conv_rejects_flat_data_and_odd_sizes():
    with pytest.raises(UserError, match="needs images"):
        VAE(64, encoder={"name": "conv"})
    with pytest.raises(UserError, match="divisible by 8"):
        VAE((1, 12, 12), encoder={"name": "conv", "channels": [4, 4, 4]})


def test_names_tables_and_instances_are_accepted():
    from pyro_vae.likelihoods import Gaussian

    vae = VAE(10, likelihood=Gaussian((10,), scale=0.5), prior={"name": "normal"})
    assert float(vae.likelihood.scale) == 0.5
    with pytest.raises(UserError, match="unknown likelihood 'gausian'"):
        VAE(10, likelihood="gausian")


@pytest.mark.parametrize("net", [{"name": "mlp", "hidden": [8]}, {"name": "conv", "channels": [8, 4]}])
@pytest.mark.parametrize("likelihood", ["bernoulli", {"name": "discretized_logistic", "components": 2}])
def test_decoders_and_likelihoods_take_leading_particle_dimensions(net, likelihood):
    encoder = {"name": "conv", "channels": [4, 8]} if net["name"] == "conv" else net
    vae = VAE((1, 8, 8), latent_dim=3, encoder=encoder, decoder=net, likelihood=likelihood)
    z = torch.randn(4, 5, 3)  # (particles, data points, latent)
    params = vae.decoder(z)
    assert torch.allclose(params, torch.stack([vae.decoder(z_k) for z_k in z]), atol=1e-6)
    x = torch.randint(0, 2, (5, 1, 8, 8)).float()
    log_p = vae.likelihood(params, x).log_prob(x)
    assert log_p.shape == (4, 5)
    assert torch.allclose(log_p[2], vae.likelihood(params[2], x).log_prob(x))


def test_vectorized_particles_give_the_same_expected_loss():
    vae = small_vae()
    x = torch.bernoulli(torch.full((8, 1, 8, 8), 0.3))
    with torch.no_grad():
        vectorized = Trace_ELBO(num_particles=4000, vectorize_particles=True, max_plate_nesting=1).loss(vae.model, vae.guide, x)
        sequential = torch.stack([Trace_ELBO().differentiable_loss(vae.model, vae.guide, x) for _ in range(400)])
    assert abs(vectorized - sequential.mean().item()) < 4 * sequential.std().item() / 400**0.5 + 0.05


# ---- a linear autoencoder with squared error spans the principal subspace (Baldi & Hornik 1989) ----


@pytest.mark.trains
def test_linear_autoencoder_spans_the_principal_subspace():
    """The library's encoder and decoder with no hidden layer (linear maps) trained on squared error:
    the decoder's columns span the top-k eigenvectors of the data covariance (every principal
    cosine > 0.9999, numpy's SVD of the centred data), and the error is the sum of the discarded
    eigenvalues (Eckart-Young, rtol 1e-3)."""
    d, k, n = 8, 2, 500
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=generator))
    stds = torch.tensor([3.0, 2.0] + [0.3] * (d - k))  # a clear 2-dimensional principal subspace
    x = (torch.randn(n, d, generator=generator) * stds) @ basis.T + torch.linspace(-1.0, 1.0, d)
    linear = {"name": "mlp", "hidden": []}
    encoder = ENCODERS.build(linear, data_shape=(d,), latent_dim=k, num_params=k)  # k outputs: the code itself
    decoder = DECODERS.build(linear, data_shape=(d,), latent_dim=k, num_params=1)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=0.02)
    for _ in range(600):  # full batch, well converged after about 500 steps
        loss = (decoder(encoder(x))[:, 0] - x).pow(2).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    centred = (x - x.mean(0)).double().numpy()
    _, singular_values, vt = np.linalg.svd(centred, full_matrices=False)
    principal = vt[:k].T  # (d, k), orthonormal
    columns, _ = np.linalg.qr(decoder.net[0].weight.detach().double().numpy())  # (d, k), orthonormal
    cosines = np.linalg.svd(columns.T @ principal, compute_uv=False)  # cosines of the principal angles
    assert cosines.min() > 0.9999, cosines
    discarded = (singular_values[k:] ** 2).sum() / n
    assert loss.item() == pytest.approx(discarded, rel=1e-3)
