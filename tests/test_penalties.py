"""Capacity and free bits: the loss against the formulas computed by hand at the same noise,
the direct path against the traced one, zero gradient for clamped dimensions, C(t) in
metrics.csv, and one-line refusals.

The model is linear-Gaussian (linear encoder and decoder, x | z ~ N(W z + b, 0.5^2)), so
every term can be written out: log N(x; mu, s) = -(x - mu)^2 / (2 s^2) - log s - log(2 pi) / 2,
and per latent dimension KL(N(m, s^2) || N(0, 1)) = -log s + (s^2 + m^2) / 2 - 1/2.
"""

import csv
import math

import pytest
import torch
from conftest import tiny_config

from pyro_vae.build import build_estimator
from pyro_vae.config import check_config, load_config
from pyro_vae.models import VAE
from pyro_vae.objectives import ESTIMATORS
from pyro_vae.penalties import Capacity, FreeBits
from pyro_vae.registry import UserError
from pyro_vae.training import train

D, LATENT, N, SIGMA = 6, 4, 10, 0.5
SEED = 11


def metrics_rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def linear_vae():
    vae = VAE((D,), LATENT, encoder={"name": "mlp", "hidden": []}, decoder={"name": "mlp", "hidden": []},
              likelihood={"name": "gaussian", "scale": SIGMA})
    with torch.no_grad():  # spread the dimensions' KLs over two orders of magnitude
        vae.encoder.net[0].weight[:LATENT] *= torch.tensor([0.05, 0.5, 2.0, 4.0])[:, None]
    return vae


def data():
    return torch.randn(N, D, generator=torch.Generator().manual_seed(5))


def log_normal(x, mean, scale):
    return -((x - mean) ** 2) / (2 * scale**2) - torch.log(torch.as_tensor(scale)) - 0.5 * math.log(2 * math.pi)


def by_hand(vae, x, analytic):
    """(reconstruction per point, KL per point and dimension) at the noise of seed SEED."""
    guide = vae.guide_dist(x).base_dist  # q(z | x) = N(loc, diag scale^2)
    loc, scale = guide.loc, guide.scale
    torch.manual_seed(SEED)
    eps = torch.distributions.Normal(torch.zeros_like(loc), torch.ones_like(loc)).sample()
    z = loc + scale * eps
    reconstruction = log_normal(x, vae.decoder(z)[:, 0], SIGMA).sum(-1)
    if analytic:
        kl = -torch.log(scale) + (scale**2 + loc**2) / 2 - 0.5
    else:
        kl = log_normal(z, loc, scale) - log_normal(z, 0.0, 1.0)
    return reconstruction, kl


def library_loss(vae, x, estimator, penalty, kl_weight=None, traced=False):
    model = (lambda x: vae.model(x)) if traced else vae.model  # a lambda is not the VAE's own: traced
    torch.manual_seed(SEED)
    return ESTIMATORS.build(estimator, "objective.estimator").loss(model, vae.guide, x, kl_weight, kl_penalty=penalty)


@pytest.mark.parametrize("estimator, analytic", [("trace", False), ("meanfield", True), ("stl", False)])
@pytest.mark.parametrize("traced", [False, True])
def test_capacity_loss_is_reconstruction_minus_gamma_times_distance_to_c(estimator, analytic, traced):
    vae, x = linear_vae(), data()
    reconstruction, kl = by_hand(vae, x, analytic)
    for gamma, capacity in ((1000.0, 0.0), (3.0, 2.5), (10.0, 1e4)):
        expected = -(reconstruction.sum() - N * gamma * (kl.sum(-1).mean() - capacity).abs())
        loss = library_loss(vae, x, estimator, Capacity(gamma, capacity), traced=traced)
        torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("estimator, analytic", [("trace", False), ("meanfield", True), ("stl", False)])
@pytest.mark.parametrize("traced", [False, True])
def test_free_bits_loss_is_reconstruction_minus_sum_of_clamped_dimension_kls(estimator, analytic, traced):
    vae, x = linear_vae(), data()
    reconstruction, kl = by_hand(vae, x, analytic)
    per_dimension = kl.mean(0)  # the minibatch average KL of each dimension
    free_bits = per_dimension.median().item()  # some dimensions below it, some above
    expected = -(reconstruction.sum() - N * torch.maximum(per_dimension, torch.tensor(free_bits)).sum())
    loss = library_loss(vae, x, estimator, FreeBits(free_bits), traced=traced)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-4)
    # a KL weight multiplies the KL term, whatever it is
    loss = library_loss(vae, x, estimator, FreeBits(free_bits), kl_weight=0.25, traced=traced)
    expected = -(reconstruction.sum() - 0.25 * N * torch.maximum(per_dimension, torch.tensor(free_bits)).sum())
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("estimator, analytic", [("trace", False), ("meanfield", True)])
def test_free_bits_gives_no_kl_gradient_to_dimensions_below_lambda(estimator, analytic):
    """The gradient of the KL term (the loss minus its reconstruction part, at the same noise)
    with respect to the encoder rows of dimension j is 0 exactly where KLbar_j < lambda."""
    vae, x = linear_vae(), data()
    _, kl = by_hand(vae, x, analytic)
    per_dimension = kl.mean(0).detach()
    free_bits = per_dimension.median().item()
    weight = vae.encoder.net[0].weight  # rows j (loc_j) and LATENT + j (scale_j) belong to dimension j

    def gradient(kl_weight):
        return torch.autograd.grad(library_loss(vae, x, estimator, FreeBits(free_bits), kl_weight), weight)[0]

    kl_gradient = gradient(1.0) - gradient(0.0)  # weight 0: the reconstruction alone
    for j in range(LATENT):
        rows = kl_gradient[[j, LATENT + j]]
        if per_dimension[j] < free_bits:
            assert torch.all(rows == 0), j
        else:
            assert rows.abs().max() > 1e-3, j


def test_particles_average_the_terms_per_data_point():
    """With K particles (traced), the terms are averaged over the K draws before the penalty."""
    vae, x = linear_vae(), data()
    estimator = ESTIMATORS.build("trace", "objective.estimator", num_particles=3)
    torch.manual_seed(SEED)
    loss = estimator.loss(vae.model, vae.guide, x, kl_penalty=Capacity(2.0, 1.0))
    guide = vae.guide_dist(x).base_dist  # q(z | x) = N(loc, diag scale^2)
    loc, scale = guide.loc, guide.scale
    torch.manual_seed(SEED)
    repeated = x.repeat(3, 1)
    eps = torch.distributions.Normal(torch.zeros(3 * N, LATENT), torch.ones(3 * N, LATENT)).sample()
    loc, scale = loc.repeat(3, 1), scale.repeat(3, 1)
    z = loc + scale * eps
    reconstruction = log_normal(repeated, vae.decoder(z)[:, 0], SIGMA).sum(-1).view(3, N).mean(0)
    kl = (log_normal(z, loc, scale) - log_normal(z, 0.0, 1.0)).sum(-1).view(3, N).mean(0)
    torch.testing.assert_close(loss, -(reconstruction.sum() - N * 2.0 * (kl.mean() - 1.0).abs()), rtol=1e-6, atol=1e-4)


@pytest.mark.trains
def test_metrics_log_c_of_t_and_the_true_elbo(tmp_path):
    capacity = {"start": 0.0, "end": 6.0, "epochs": 2, "gamma": 50.0}
    run = train(tiny_config(objective={"capacity": capacity}, train={"epochs": 3}), out=tmp_path / "run")
    rows = metrics_rows(run)
    steps_per_epoch = int(rows[0]["step"])
    for row in rows:  # C in force at the epoch's last step: 6 * min(step / (2 * steps per epoch), 1)
        last_step = int(row["step"]) - 1
        assert float(row["capacity"]) == pytest.approx(6.0 * min(last_step / (2 * steps_per_epoch), 1.0))
        assert float(row["val_elbo"]) == pytest.approx(float(row["val_reconstruction"]) - float(row["val_kl"]), abs=1e-3)


@pytest.mark.trains
def test_resumed_run_resumes_c_of_t(tmp_path):
    config = tiny_config(objective={"capacity": {"start": 0.0, "end": 6.0, "epochs": 3, "gamma": 50.0}},
                         train={"epochs": 3, "seed": 3})
    straight = train(config, out=tmp_path / "straight")
    halfway = train(config, out=tmp_path / "resumed", overrides=["train.epochs=1"])
    train(resume=halfway, overrides=["train.epochs=3"])
    for a, b in zip(metrics_rows(straight), metrics_rows(halfway)):
        for key in ("capacity", "train_loss", "val_elbo"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5), key


@pytest.mark.parametrize("objective, message", [
    ({"capacity": 5.0}, "objective.capacity must be a table"),
    ({"capacity": {"start": 0.0, "end": 25.0, "epochs": 10}}, "objective.capacity needs gamma"),
    ({"capacity": {"end": 25.0, "epochs": 10, "gamma": -1.0}}, "objective.capacity.gamma must be > 0"),
    ({"capacity": {"end": 25.0, "epochs": 10, "gamma": 1.0, "slope": 2}}, "objective.capacity.slope: unknown option"),
    ({"capacity": {"end": -1.0, "epochs": 10, "gamma": 1.0}}, "objective.capacity.end must be >= 0"),
    ({"free_bits": -0.5}, "objective.free_bits must be >= 0"),
    ({"free_bits": "lots"}, "objective.free_bits must be a finite number"),
])
def test_bad_config_is_a_one_line_error(objective, message):
    with pytest.raises(UserError, match=message) as error:
        check_config({"objective": objective})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("overrides, message", [
    (["objective.estimator=iwae", "objective.num_particles=2"], "estimator 'iwae' cannot take objective.free_bits"),
    (["objective.estimator=dreg", "objective.num_particles=2"], "estimator 'dreg' cannot take objective.free_bits"),
    (["objective.estimator=renyi", "objective.num_particles=2"], "estimator 'renyi' cannot take objective.free_bits"),
    (["objective.estimator=tail_adaptive", "objective.num_particles=2"],
     "estimator 'tail_adaptive' cannot take objective.free_bits"),
    (["objective.estimator=score"], "estimator 'score' cannot take objective.free_bits"),
    (["objective.jit=true"], "not available with objective.jit = true"),
    (["model.prior=mog"], "free bits need the KL per latent dimension"),
    (["objective.capacity={ end = 5.0, epochs = 1, gamma = 1.0 }"], "two different KL terms"),
])
def test_what_cannot_be_honoured_is_refused_before_training(tmp_path, overrides, message):
    config = load_config(None, ["data.name=digits", "data.binarize=static", "objective.free_bits=0.5", *overrides])
    with pytest.raises(UserError, match=message) as error:
        train(config, out=tmp_path / "run")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_capacity_is_refused_by_an_estimator_without_separate_terms():
    estimator = build_estimator(check_config({"objective": {"estimator": "iwae", "num_particles": 2}}))
    vae = linear_vae()
    with pytest.raises(UserError, match="estimator 'iwae' cannot take objective.capacity"):
        estimator.loss(vae.model, vae.guide, data(), kl_penalty=Capacity(1.0, 0.0))


@pytest.mark.trains
def test_a_run_written_before_these_keys_existed_still_resumes(tmp_path):
    """Its config has no objective.capacity or objective.free_bits: they count as their defaults (off)."""
    from pyro_vae.checkpoint import load_checkpoint, save_checkpoint
    from pyro_vae.config import save_config

    run = train(tiny_config(train={"epochs": 1}), out=tmp_path / "old")
    state = load_checkpoint(run / "checkpoint.pt")
    del state["config"]["objective"]["capacity"], state["config"]["objective"]["free_bits"]
    save_checkpoint(state, run / "checkpoint.pt")
    save_config(state["config"], run / "config.toml")
    train(resume=run, overrides=["train.epochs=2"])
    assert len(metrics_rows(run)) == 2
