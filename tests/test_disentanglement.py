"""Disentanglement metrics and the total-correlation objectives, pinned by closed forms and exact identities."""

import math

import numpy as np
import pyro
import pytest
import torch
from conftest import tiny_config

from pyro_vae import train
from pyro_vae.build import build_estimator, build_model
from pyro_vae.config import check_config
from pyro_vae.data.sources.dsprites_render import grid_factors
from pyro_vae.disentanglement import (
    dci,
    dci_from_importance,
    discretize,
    factor_vae_score,
    gaussian_total_correlation,
    mig,
    mutual_information,
    mutual_information_matrix,
    total_correlation,
)
from pyro_vae.objectives.aggregate import kl_decomposition, log_density_matrix, minibatch_log_densities
from pyro_vae.objectives.factorvae import Discriminator, discriminator_loss
from pyro_vae.registry import UserError

GRID = grid_factors((3, 6, 10, 8, 8))  # every combination once: the factors are independent


def rotation(d, seed=0):
    q, _ = np.linalg.qr(np.random.RandomState(seed).randn(d, d))
    return q


def standardized(a):
    return (a - a.mean(0)) / a.std(0)


# ---- MIG, DCI, FactorVAE score ----


def test_codes_equal_to_the_factors_are_perfectly_disentangled():
    assert mig(GRID, GRID) == pytest.approx(1.0, abs=1e-12)
    result = dci(GRID, GRID)
    assert result["disentanglement"] > 0.99 and result["completeness"] > 0.99


def test_a_rotation_of_the_same_codes_is_much_less_disentangled():
    mixed = standardized(GRID) @ rotation(5)
    assert mig(mixed, GRID) < 0.2
    result = dci(mixed, GRID)
    assert result["disentanglement"] < 0.4 and result["completeness"] < 0.4
    assert result["informativeness"] > 0.9  # the information is all there, only mixed


def test_a_dropped_or_duplicated_factor_costs_its_share_of_mig():
    # On the full grid every other code is independent of a factor: a factor no code holds
    # has gap 0, and one two codes hold alike has gap I - I = 0; the others keep gap 1.
    assert mig(GRID[:, [0, 1, 2, 4]], GRID) == pytest.approx(4 / 5, abs=1e-12)  # x dropped
    assert mig(np.c_[GRID, GRID[:, 2]], GRID) == pytest.approx(4 / 5, abs=1e-12)  # orientation twice
    _, gaps = mig(np.c_[GRID, GRID[:, 2]], GRID, per_factor=True)
    assert gaps[2] == pytest.approx(0.0, abs=1e-12) and np.allclose(np.delete(gaps, 2), 1.0)


def test_dci_of_an_importance_matrix_follows_the_definition():
    assert dci_from_importance(np.eye(3)) == {"disentanglement": 1.0, "completeness": 1.0}
    uniform = dci_from_importance(np.ones((4, 2)))  # every code for every factor alike
    assert uniform["disentanglement"] == pytest.approx(0.0) and uniform["completeness"] == pytest.approx(0.0)
    # one code for both factors: D_0 = 1 - H_2(1/2, 1/2) = 0; each factor is all in code 0: C = 1
    one = dci_from_importance(np.array([[1.0, 1.0], [0.0, 0.0]]))
    assert one["disentanglement"] == pytest.approx(0.0) and one["completeness"] == pytest.approx(1.0)
    # completeness weighted by each factor's share of the importance (disentanglement_lib's):
    # C_0 = 1 - H_2(0.9, 0.1), C_1 = 1 (all in code 1), weights 1.0 / 1.5 and 0.5 / 1.5
    r = np.array([[0.9, 0.0], [0.1, 0.5]])
    c0 = 1 + (0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)
    assert dci_from_importance(r)["completeness"] == pytest.approx(c0 * 2 / 3 + 1 / 3, abs=1e-12)
    assert dci_from_importance(r, completeness="mean")["completeness"] == pytest.approx((c0 + 1) / 2, abs=1e-12)
    # D_0 = 1 (code 0 holds factor 0 only), D_1 = 1 - H_2(1/6, 5/6), weights 0.9 / 1.5 and 0.6 / 1.5
    d1 = 1 + (math.log(1 / 6) / 6 + 5 / 6 * math.log(5 / 6)) / math.log(2)
    assert dci_from_importance(r)["disentanglement"] == pytest.approx(0.6 + 0.4 * d1, abs=1e-12)
    assert dci_from_importance(np.zeros((3, 2))) == {"disentanglement": 0.0, "completeness": 0.0}


def test_pure_noise_codes_are_not_disentangled():
    # The lasso keeps a code or two whose sample correlation with a factor beats alpha by chance
    # (weights of a few thousandths, all others 0); read as relative importances, that one weight
    # alone scored D = 1. The probe predicts nothing held-out (R^2 ~ 0): no importances, D = C = 0.
    noise = np.random.RandomState(0).randn(len(GRID), 10)
    result = dci(noise, GRID)
    assert abs(result["informativeness"]) < 0.01
    assert result["disentanglement"] == 0.0 and result["completeness"] == 0.0
    assert not result["importance"].any()
    with_signal = dci(np.c_[standardized(GRID[:, :1]), noise], GRID)  # shape in code 0, the rest noise
    assert with_signal["disentanglement"] == pytest.approx(1.0) and with_signal["completeness"] == pytest.approx(1.0)
    assert with_signal["importance"][0, 0] > 0.9 and with_signal["importance"][:, 1:].sum() == 0.0
    mig_noise = mig(noise, GRID)
    assert mig_noise < 0.01


def test_factor_vae_score_finds_the_fixed_factor_of_disentangled_codes_only():
    x = torch.as_tensor(GRID)  # the "images" are the factors themselves
    mean, std = x.mean(0), x.std(0)
    identity = lambda images: (images - mean) / std
    assert factor_vae_score(identity, GRID, x, num_train=100, num_eval=100)["eval_accuracy"] == 1.0
    # Codes without x: a batch with x fixed varies in every code alike, so its votes go astray and
    # the majority vote gives x no dimension; 1/5 of the votes are lost. (A rotation of all five
    # codes is no test: each fixed factor still leaves its most aligned code least varied, and
    # the score stays high, which is why MIG is the headline metric.)
    without_x = lambda images: identity(images)[:, [0, 1, 2, 4]]
    assert factor_vae_score(without_x, GRID, x, num_train=300, num_eval=300)["eval_accuracy"] < 0.86


def test_factor_vae_score_with_a_renderer_holds_the_factor_fixed():
    rendered = []

    def render(values):
        rendered.append(values)
        return torch.as_tensor(values)

    std = GRID.std(0)
    score = factor_vae_score(lambda v: v / torch.as_tensor(std), GRID, render=render, num_train=50, num_eval=50, batch_size=16)
    assert score["eval_accuracy"] == 1.0
    batches = rendered[1:]  # the first call draws the data for the codes' standard deviations
    assert all(any(len(np.unique(b[:, k])) == 1 for k in range(5)) for b in batches)


def test_mig_normalizes_by_the_factors_entropy_not_the_codes():
    # v0 (2 values) crossed with a nuisance w (10 values): code z0 = 10 v0 + w holds v0 whole
    # (I(z0; v0) = H(v0) = log 2) but has far more entropy (log 20); z1 = v1 exactly. Chen et al.
    # divide each gap by H(v_k): both gaps are 1. Divided by the code's entropy, v0's would be
    # log 2 / log 20 = 0.23.
    v0, v1, w = np.meshgrid(np.arange(2), np.arange(5), np.arange(10), indexing="ij")
    v0, v1, w = v0.ravel(), v1.ravel(), w.ravel()
    codes, factors = np.c_[10 * v0 + w, v1], np.c_[v0, v1]
    value, gaps = mig(codes, factors, per_factor=True)
    assert value == pytest.approx(1.0, abs=1e-12)
    assert gaps == pytest.approx([1.0, 1.0], abs=1e-12)


def test_mutual_information_is_scikit_learns_on_the_same_bins():
    from sklearn.metrics import mutual_info_score

    rng = np.random.RandomState(3)
    a = rng.randint(6, size=5000)
    b = (a + rng.randint(4, size=5000)) % 9  # dependent on a, with classes a lacks
    assert mutual_information(a, b) == pytest.approx(mutual_info_score(a, b), abs=1e-12)
    c = rng.randint(3, size=5000)  # independent of a: a small positive estimate
    assert mutual_information(a, c) == pytest.approx(mutual_info_score(a, c), abs=1e-12)
    # and the whole matrix MIG is made of, on the bins it cuts the codes into
    codes = standardized(GRID) @ rotation(5) + 0.1 * rng.randn(len(GRID), 5)
    info, h = mutual_information_matrix(codes, GRID)
    for j in range(5):
        z = discretize(codes[:, j], max_classes=0)  # always the 20 equal-width bins
        for k in range(5):
            v = discretize(GRID[:, k])
            assert info[j, k] == pytest.approx(mutual_info_score(z, v), abs=1e-12)
            assert h[k] == pytest.approx(mutual_info_score(v, v), abs=1e-12)  # H(v) = I(v; v)


def test_factor_vae_score_does_not_depend_on_the_scale_of_a_dimension():
    # Noisy disentangled codes: with a factor fixed, its own dimension varies least, once each
    # dimension is divided by its standard deviation. Unnormalized, the dimension of smallest
    # scale would vary least in every batch and take every vote.
    rng = np.random.RandomState(0)
    codes = standardized(GRID) + 0.3 * rng.randn(len(GRID), 5)
    scores = []
    for scales in ([1.0] * 5, [1.0, 3.0, 10.0, 30.0, 100.0]):
        x = torch.as_tensor(codes * np.array(scales))  # the "images" are the codes
        scores.append(factor_vae_score(lambda images: images, GRID, x, num_train=200, num_eval=200))
    assert scores[0]["eval_accuracy"] > 0.95
    assert scores[1] == scores[0]


def test_factors_of_another_length_are_refused():
    with pytest.raises(UserError, match="10 codes but 9 rows"):
        mig(np.zeros((10, 2)), np.zeros((9, 2)))


# ---- total correlation ----


def correlated_gaussian_codes(n, rho=0.8, posterior_scale=0.3, seed=12345):
    """Posterior means and scales whose aggregate q(z) = N(0, Sigma), Sigma = [[1, rho], [rho, 1]]:
    means drawn from N(0, Sigma - s^2 I), every posterior N(mean, s^2 I). (A seed of its own: the
    draws of z from the global generator must be independent of the means.)"""
    g = torch.Generator().manual_seed(seed)
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64) - posterior_scale ** 2 * torch.eye(2, dtype=torch.float64)
    loc = torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    return loc, torch.full_like(loc, posterior_scale), -0.5 * math.log(1 - rho ** 2)


def test_gaussian_total_correlation_is_the_closed_form():
    loc, _, _ = correlated_gaussian_codes(200000)
    sigma = np.cov(loc.numpy(), rowvar=False)
    expected = 0.5 * (np.log(np.diag(sigma)).sum() - np.linalg.slogdet(sigma)[1])
    assert gaussian_total_correlation(loc) == pytest.approx(expected, rel=1e-9)
    assert gaussian_total_correlation(loc @ torch.tensor([[1.0, 0], [0, 2.0]],
                                                         dtype=torch.float64)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("sampling", ["mws", "mss"])
def test_minibatch_total_correlation_matches_the_closed_form(sampling):
    loc, scale, closed = correlated_gaussian_codes(2000)  # a minibatch of a large data set
    q = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    z = q.sample()
    log_qz, log_prod = minibatch_log_densities(log_density_matrix(q, z), dataset_size=10 ** 6, sampling=sampling)
    assert (log_qz - log_prod).mean().item() == pytest.approx(closed, abs=0.05)  # 0.511 nats


def test_a_minibatch_of_the_whole_data_set_gives_the_exact_aggregate_density():
    loc, scale, _ = correlated_gaussian_codes(50)
    q = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    z = q.sample()
    exact = torch.logsumexp(q.base_dist.log_prob(z[:, None]).sum(2), 1) - math.log(50)
    for sampling in ("mws", "mss"):
        log_qz, _ = minibatch_log_densities(log_density_matrix(q, z), dataset_size=50, sampling=sampling)
        assert torch.allclose(log_qz, exact, atol=1e-12)


def test_aggregate_posterior_total_correlation_matches_the_closed_form():
    loc, scale, closed = correlated_gaussian_codes(4000)
    assert total_correlation(loc, scale, num_samples=4000) == pytest.approx(closed, abs=0.04)
    assert total_correlation(loc[:, :1], scale[:, :1]) == 0.0  # one dimension: nothing to correlate


@pytest.mark.trains
def test_discriminator_density_ratio_estimates_the_total_correlation():
    torch.manual_seed(0)
    rho = 0.8
    closed = -0.5 * math.log(1 - rho ** 2)
    sample = lambda n: torch.randn(n, 2) @ torch.linalg.cholesky(torch.tensor([[1.0, rho], [rho, 1.0]])).T
    discriminator = Discriminator(2, hidden=(32, 32))
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=3e-3)
    for _ in range(300):
        optimizer.zero_grad()
        discriminator_loss(discriminator, sample(256)).backward()
        optimizer.step()
    with torch.no_grad():
        estimate = discriminator(sample(20000)).mean().item()
    assert estimate == pytest.approx(closed, abs=0.1)  # 0.511 nats


# ---- the beta-TCVAE decomposition and loss ----


def tiny_vae(latent_dim=3):
    config = check_config(tiny_config(model={"latent_dim": latent_dim}))
    return build_model(config, (1, 8, 8))


def test_the_three_terms_add_up_to_the_kl_term_exactly():
    vae = tiny_vae()
    x = torch.rand(64, 1, 8, 8).round()
    q = vae.guide_dist(x)
    z = q.rsample()
    for sampling in ("mws", "mss"):
        mi, tc, dimension_wise = kl_decomposition(q, vae.prior_dist(), z, dataset_size=1000, sampling=sampling)
        expected = q.log_prob(z) - vae.prior_dist().log_prob(z)
        assert torch.allclose(mi + tc + dimension_wise, expected, atol=1e-5)


def tcvae_and_trace(**options):
    config = check_config(tiny_config(objective={"estimator": {"name": "tcvae", **options}}))
    return build_estimator(config, (1, 8, 8), dataset_size=1000), build_estimator(check_config(tiny_config()), (1, 8, 8))


def test_tcvae_with_unit_weights_is_the_elbo_exactly():
    vae = tiny_vae()
    x = torch.rand(32, 1, 8, 8).round()
    tcvae, trace = tcvae_and_trace(alpha=1.0, beta=1.0, gamma=1.0)
    losses, grads = [], []
    for estimator in (tcvae, trace):
        pyro.set_rng_seed(1)  # the same draw of z
        loss = estimator.loss(vae.model, vae.guide, x)
        vae.zero_grad()
        loss.backward()
        losses.append(loss.item())
        grads.append([p.grad.clone() for p in vae.parameters()])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-4, rtol=1e-4) for a, b in zip(*grads))


def test_tcvae_weights_each_term_as_it_says():
    vae = tiny_vae()
    x = torch.rand(32, 1, 8, 8).round()
    weighted, trace = tcvae_and_trace(alpha=2.0, beta=5.0, gamma=0.5, sampling="mss")
    pyro.set_rng_seed(2)
    loss = weighted.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(2)
    elbo_loss = trace.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(2)
    q = vae.guide_dist(x)
    mi, tc, dimension_wise = kl_decomposition(q, vae.prior_dist(), q.rsample(), 1000, "mss")
    extra = (1.0 * mi + 4.0 * tc - 0.5 * dimension_wise).sum()
    assert loss.item() == pytest.approx(elbo_loss.item() + extra.item(), rel=1e-5)


def test_factorvae_loss_adds_gamma_times_the_discriminators_total_correlation():
    # Kim & Mnih (2018) maximize ELBO - gamma TC, TC = E logit D(z): the loss is
    # -log p(x | z) + KL + gamma sum_n logit D(z_n). A discriminator whose every logit is 0.7
    # (last layer's weights 0, bias 0.7) makes the TC term known: gamma * 32 * 0.7 = 112 nats.
    vae = tiny_vae(latent_dim=4)
    x = torch.rand(32, 1, 8, 8).round()
    config = check_config(tiny_config(objective={"estimator": {"name": "factorvae", "gamma": 5.0, "hidden": [8]}}))
    estimator = build_estimator(config, (1, 8, 8), dataset_size=1000)
    estimator.eval()  # no discriminator step: its weights stay as set
    last = estimator.discriminator.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(0.7)
    pyro.set_rng_seed(4)
    loss = estimator.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(4)  # the same draw of z
    q = vae.guide_dist(x)
    z = q.rsample()
    reconstruction = vae.likelihood_dist(z, x).log_prob(x).sum()
    kl = torch.distributions.kl_divergence(q, vae.prior_dist()).sum()
    assert loss.item() == pytest.approx((-reconstruction + kl + 5.0 * 32 * 0.7).item(), rel=1e-6)


def test_tcvae_and_factorvae_refuse_what_they_cannot_do(tmp_path):
    with pytest.raises(UserError, match="sampling must be one of"):
        build_estimator(check_config(tiny_config(objective={"estimator": {"name": "tcvae", "sampling": "iid"}})))
    capacity = {"start": 0.0, "end": 5.0, "epochs": 1, "gamma": 10.0}
    for name in ("tcvae", "factorvae"):
        with pytest.raises(UserError, match=f"estimator '{name}' cannot take objective.capacity"):
            train(tiny_config(objective={"estimator": name, "capacity": capacity}), out=tmp_path / name)
    with pytest.raises(UserError, match="dataset_size"):  # the data's size is the library's to give
        check_config(tiny_config(objective={"estimator": {"name": "tcvae", "dataset_size": 5}}))


# ---- training through Python ----


@pytest.mark.trains
def test_factorvae_trains_its_discriminator_and_checkpoints_it(tmp_path):
    config = tiny_config(objective={"estimator": {"name": "factorvae", "gamma": 5.0, "hidden": [16]}})
    run = train(config, out=tmp_path / "run")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    weights = state["estimator"]["discriminator.net.0.weight"]
    assert weights.shape == (16, 4)
    fresh = build_estimator(check_config(config), (1, 8, 8), dataset_size=1000)
    assert not torch.equal(fresh.discriminator.net[0].weight, weights)  # it was trained
    assert state["estimator"]["_extra_state"]["optimizer"]["state"]  # and so was its optimizer's state
    fresh.load_state_dict(state["estimator"])
    assert fresh.optimizer.state_dict()["state"][0]["step"] == state["estimator"]["_extra_state"]["optimizer"]["state"][0]["step"]
    rows = (run / "metrics.csv").read_text().splitlines()
    assert {"train_loss", "train_elbo", "val_elbo"} <= set(rows[0].split(","))
    assert len(rows) == 3  # two epochs: the true ELBO beside the trained loss


def test_factorvae_discriminator_is_not_in_the_vaes_optimizer(tmp_path):
    from pyro_vae.build import build
    from pyro_vae.data import load_data

    config = check_config(tiny_config(objective={"estimator": {"name": "factorvae", "hidden": [16]}}))
    parts = build(config, load_data("digits", binarize="static"), "cpu")
    ids = {id(p) for p in parts.parameters()}
    assert not any(id(p) in ids for p in parts.estimator.discriminator.parameters())


# ---- through the command line ----


@pytest.mark.trains
def test_cli_trains_tcvae_on_dsprites_and_evaluates_and_plots_the_factors(tmp_path, monkeypatch):
    import json

    from pyro_vae.cli import main

    monkeypatch.setenv("PYRO_VAE_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    overrides = ["data.name=dsprites", "data.grid=[3, 2, 4, 4, 4]", "data.image_size=12", "model.latent_dim=3",
                 "model.encoder.hidden=[16]", "model.decoder.hidden=[16]", "objective.estimator.name=tcvae",
                 "objective.estimator.beta=4.0", "objective.estimator.sampling=mss", "train.epochs=1",
                 "train.batch_size=64", "train.progress=false", "train.device=cpu"]
    args = ["train", "--out", str(run)]
    for override in overrides:
        args += ["--set", override]
    assert main(args) == 0
    assert main(["evaluate", str(run), "--samples", "2"]) == 0
    result = json.loads((run / "evaluation.json").read_text())["disentanglement"]
    assert result["factor_names"] == ["shape", "scale", "orientation", "x", "y"]
    assert result["num_examples"] == round(0.1 * 3 * 2 * 4 * 4 * 4)  # the test split
    assert 0 <= result["mig"] <= 1 and 0 <= result["factor_vae_score"] <= 1
    assert set(result["dci"]) == {"disentanglement", "completeness", "informativeness"}
    assert main(["plot", str(run)]) == 0
    assert (run / "factor_traversals.png").is_file()


@pytest.mark.trains
def test_evaluate_without_factors_writes_no_disentanglement(tmp_path):
    import json

    from pyro_vae.cli import main

    run = train(tiny_config(train={"epochs": 1}), out=tmp_path / "run")
    assert main(["evaluate", str(run), "--samples", "2", "--limit", "20"]) == 0
    assert "disentanglement" not in json.loads((run / "evaluation.json").read_text())


def test_the_hand_written_backward_pass_is_autograds():
    from pyro_vae.objectives.aggregate_kernel import GaussianAggregate

    g = torch.Generator().manual_seed(0)
    loc = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    scale = (torch.rand(6, 3, generator=g, dtype=torch.float64) + 0.3).requires_grad_()
    z = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(GaussianAggregate.apply, (z, loc, scale))
    q = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    log_q = log_density_matrix(q, z)
    joint, marginals = GaussianAggregate.apply(z, loc, scale)
    assert torch.allclose(joint, torch.logsumexp(log_q.sum(2), 1)) and torch.allclose(marginals, torch.logsumexp(log_q, 1))


@pytest.mark.parametrize("name", ["tcvae", "factorvae"])
def test_two_latent_layers_are_refused_in_one_line(name):
    from pyro_vae.models import HierarchicalVAE
    from pyro_vae.objectives import ESTIMATORS

    vae = HierarchicalVAE((6,), [3, 2], encoder={"name": "mlp", "hidden": [8]}, decoder={"name": "mlp", "hidden": [8]})
    with pytest.raises(UserError, match="one latent layer"):
        ESTIMATORS.build(name).loss(vae.model, vae.guide, torch.rand(4, 6).round())


def reference_log_densities(guide_dist, z, dataset_size, sampling):
    """log q(z) and sum_j log q(z_j) by autograd through the guide's own ``Normal.log_prob`` on the
    (M, M, D) array: the computation the hand-written path replaces."""
    log_q = guide_dist.base_dist.log_prob(z.unsqueeze(1))
    return minibatch_log_densities(log_q, dataset_size, sampling)


@pytest.mark.parametrize("sampling", ["mws", "mss"])
def test_the_library_guide_takes_the_hand_written_path_with_the_reference_numbers(sampling, monkeypatch):
    from pyro_vae.objectives.aggregate_kernel import GaussianAggregate

    calls = []
    apply = GaussianAggregate.apply
    monkeypatch.setattr(GaussianAggregate, "apply", lambda *a: calls.append(1) or apply(*a))
    vae = tiny_vae(latent_dim=4)
    x = torch.rand(48, 1, 8, 8).round()
    results = []
    for fast in (True, False):  # the same fresh state and draw for both
        pyro.set_rng_seed(3)
        q = vae.guide_dist(x)  # Pyro's Normal, a subclass of torch's
        z = q.rsample()
        if fast:
            mi, tc, dw = kl_decomposition(q, vae.prior_dist(), z, dataset_size=1000, sampling=sampling)
        else:
            log_qz, log_prod = reference_log_densities(q, z, 1000, sampling)
            mi, tc, dw = q.log_prob(z) - log_qz, log_qz - log_prod, log_prod - vae.prior_dist().log_prob(z)
        loss = (mi + 6.0 * tc + 0.5 * dw).sum()
        vae.zero_grad()
        loss.backward()
        results.append((torch.stack([mi, tc, dw]), [p.grad.clone() for p in vae.parameters() if p.grad is not None]))
    assert len(calls) == 1  # the library's own guide is a diagonal Gaussian: the hand-written path
    (terms, grads), (ref_terms, ref_grads) = results
    assert torch.allclose(terms, ref_terms, atol=1e-4)
    assert len(grads) == len(ref_grads) > 0
    assert all(torch.allclose(a, b, atol=1e-4, rtol=1e-4) for a, b in zip(grads, ref_grads))


def test_the_hand_written_path_is_exact_for_scales_far_apart():
    # the logsumexp's shift is an upper bound read from the scales, not the maximum: scales spanning
    # four orders of magnitude within one dimension must give the reference's numbers all the same
    g = torch.Generator().manual_seed(4)
    loc = torch.randn(40, 3, generator=g, dtype=torch.float64, requires_grad=True)
    scale = torch.logspace(-3, 1, 40, dtype=torch.float64).repeat(3, 1).T.contiguous().requires_grad_()
    z = (loc + scale * torch.randn(40, 3, generator=g, dtype=torch.float64)).detach().requires_grad_()
    q = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    weights = torch.randn(2, 40, generator=g, dtype=torch.float64)
    from pyro_vae.objectives.aggregate import gaussian_minibatch_log_densities

    outs = []
    for compute in (lambda: gaussian_minibatch_log_densities(loc, scale, z, 1000, "mss"),
                    lambda: reference_log_densities(q, z, 1000, "mss")):
        log_qz, log_prod = compute()
        grads = torch.autograd.grad((weights[0] * log_qz + weights[1] * log_prod).sum(), (z, loc, scale))
        outs.append((log_qz, log_prod, *grads))
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-10) for a, b in zip(*outs))


def test_the_workspace_is_reused_across_steps_and_never_shared_by_two_live_graphs():
    from pyro_vae.objectives.aggregate import gaussian_minibatch_log_densities
    from pyro_vae.objectives.aggregate_kernel import Workspace

    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(16, 3, generator=g), torch.rand(16, 3, generator=g) + 0.2, torch.randn(16, 3, generator=g))
               for _ in range(3)]
    weights = torch.randn(2, 16, generator=g)

    def gradients(workspace, together):
        """d/d(loc, scale, z) of a weighted sum of log q(z) and sum_j log q(z_j), one backward per
        batch (as training steps) or one backward of all three losses summed (three live graphs)."""
        leaves = [[t.clone().requires_grad_() for t in batch] for batch in batches]
        losses = []
        for loc, scale, z in leaves:
            log_qz, log_prod = gaussian_minibatch_log_densities(loc, scale, z, 100, "mws", workspace)
            losses.append((weights[0] * log_qz + weights[1] * log_prod).sum())
            if not together:
                losses[-1].backward()
        if together:
            sum(losses).backward()
        return [t.grad for batch in leaves for t in batch]

    reference = gradients(None, together=False)
    workspace = Workspace()
    assert all(torch.equal(a, b) for a, b in zip(gradients(workspace, together=False), reference))
    kept = workspace.arrays[0].data_ptr()
    assert all(torch.equal(a, b) for a, b in zip(gradients(workspace, together=False), reference))
    assert workspace.arrays[0].data_ptr() == kept and not workspace.lent  # reused, given back
    assert all(torch.equal(a, b) for a, b in zip(gradients(workspace, together=True), reference))
    with torch.no_grad():  # nothing kept for a backward pass: nothing lent
        gaussian_minibatch_log_densities(*batches[0], 100, "mws", Workspace())
    fresh = Workspace()
    with torch.no_grad():
        gaussian_minibatch_log_densities(*batches[0], 100, "mws", fresh)
    assert not fresh.lent
