"""The importance-sampled log-likelihood against closed forms, Pyro's RenyiELBO, and the CLI.

Probabilistic PCA is a VAE whose marginal is known: with z ~ N(0, I) and
x | z ~ N(W z + b, sigma^2 I), p(x) = N(b, W W^T + sigma^2 I). With orthogonal
columns of W the posterior p(z | x) = N(M^-1 W^T (x - b), sigma^2 M^-1),
M = W^T W + sigma^2 I, is diagonal, so a linear encoder can be set to it exactly.
"""

import json
import math

import pyro
import pytest
import torch
from conftest import inverse_softplus, tiny_config
from pyro import poutine
from pyro.infer import RenyiELBO
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from pyro_vae.annealing import ScaleLatents
from pyro_vae.cli import main
from pyro_vae.evaluation import (
    bits_per_dim,
    direct_log_importance_weights,
    evaluate,
    evaluate_elbo,
    log_likelihood,
    traced_log_importance_weights,
)
from pyro_vae.guides import MIN_SCALE
from pyro_vae.models import VAE
from pyro_vae.registry import UserError
from pyro_vae.training import train

D, LATENT, SIGMA = 5, 2, 0.5


class PPCA:
    """A pPCA VAE with known W, b, sigma; its encoder is the exact posterior, optionally
    shifted by ``loc_shift`` and with its scale multiplied by ``scale_factor``."""

    def __init__(self, loc_shift=0.0, scale_factor=1.0):
        generator = torch.Generator().manual_seed(3)
        q, _ = torch.linalg.qr(torch.randn(D, LATENT, generator=generator))
        self.W = q * torch.tensor([2.0, 1.0])  # W^T W = diag(4, 1)
        self.b = torch.randn(D, generator=generator)
        precision = (self.W**2).sum(0) + SIGMA**2  # diag of M
        self.posterior_projection = self.W.T / precision[:, None]  # M^-1 W^T
        self.posterior_std = SIGMA / precision.sqrt()
        self.vae = VAE(
            (D,), LATENT,
            encoder={"name": "mlp", "hidden": []},
            decoder={"name": "mlp", "hidden": []},
            likelihood={"name": "gaussian", "scale": SIGMA},
        )
        self.guide_loc_shift = loc_shift
        self.guide_std = self.posterior_std * scale_factor
        with torch.no_grad():
            decoder, encoder = self.vae.decoder.net[0], self.vae.encoder.net[0]
            decoder.weight.copy_(self.W)
            decoder.bias.copy_(self.b)
            encoder.weight.zero_()
            encoder.weight[:LATENT] = self.posterior_projection
            encoder.bias[:LATENT] = -self.posterior_projection @ self.b + loc_shift
            encoder.bias[LATENT:] = inverse_softplus(self.guide_std - MIN_SCALE)

    def sample(self, n):
        return self.marginal().sample((n,))

    def marginal(self):
        return MultivariateNormal(self.b, self.W @ self.W.T + SIGMA**2 * torch.eye(D))

    def log_marginal(self, x):
        return self.marginal().log_prob(x)

    def elbo(self, x):
        """log p(x) - KL(q(z | x) || p(z | x)), in closed form."""
        posterior_loc = (x - self.b) @ self.posterior_projection.T
        q = Normal(posterior_loc + self.guide_loc_shift, self.guide_std)
        kl = kl_divergence(q, Normal(posterior_loc, self.posterior_std)).sum(-1)
        return self.log_marginal(x) - kl


def test_exact_posterior_gives_the_exact_marginal_for_any_k_chunk_and_batch_size():
    ppca = PPCA()
    x = ppca.sample(50)
    exact = ppca.log_marginal(x)
    for k, chunk, batch in ((1, 1, 50), (7, 3, 8), (64, 64, 1)):
        estimate = log_likelihood(ppca.vae, x, num_samples=k, chunk_size=chunk, batch_size=batch)
        assert estimate.shape == (50,)
        torch.testing.assert_close(estimate, exact, atol=1e-4, rtol=1e-5)


def test_converges_to_the_marginal_as_k_grows():
    ppca = PPCA(loc_shift=0.6, scale_factor=1.6)
    x = ppca.sample(200)
    exact = ppca.log_marginal(x)
    gaps = {
        k: (exact - log_likelihood(ppca.vae, x, num_samples=k, seed=1, chunk_size=500, batch_size=200)).mean().item()
        for k in (1, 10, 1000)
    }
    closed_form_gap = (exact - ppca.elbo(x)).mean().item()  # E[KL(q || p(z | x))], the K = 1 gap
    assert closed_form_gap > 0.5
    assert gaps[1] > gaps[10] > gaps[1000] > 0  # a lower bound in expectation, tightening with K
    assert gaps[1000] < 0.05 * closed_form_gap


def test_k_equal_1_is_the_elbo_in_expectation():
    ppca = PPCA(loc_shift=0.6, scale_factor=1.6)
    x = ppca.sample(4000)
    difference = log_likelihood(ppca.vae, x, num_samples=1, batch_size=1000) - ppca.elbo(x)
    standard_error = difference.std() / math.sqrt(len(x))
    assert abs(difference.mean()) < 4 * standard_error
    # and the library's own ELBO (closed-form KL to the prior) agrees with the closed form too
    library_elbo = evaluate_elbo(ppca.vae, [x])["elbo"]
    assert library_elbo == pytest.approx(ppca.elbo(x).mean().item(), abs=0.05)


def test_log_likelihood_is_at_least_the_elbo_on_average():
    ppca = PPCA(loc_shift=0.6, scale_factor=1.6)
    x = ppca.sample(500)
    estimate = log_likelihood(ppca.vae, x, num_samples=50).mean().item()
    elbo = evaluate_elbo(ppca.vae, [x])["elbo"]
    assert estimate > elbo + 0.5 * (ppca.log_marginal(x) - ppca.elbo(x)).mean().item()
    assert estimate <= ppca.log_marginal(x).mean().item() + 0.05


def test_agrees_with_renyi_elbo_alpha_0_per_data_point_and_summed():
    """RenyiELBO(alpha=0, num_particles=K).loss is minus the K-sample IWAE bound summed over
    the data plate (it keeps the plate's dim, logsumexps over particles, then sums), so per
    data point it is reached by giving it one data point at a time. With one particle per
    pass both draw the same normals from the same seed, so the values agree exactly."""
    ppca = PPCA(loc_shift=0.6, scale_factor=1.6)
    x = ppca.sample(4)
    k, seed = 20, 5
    renyi = RenyiELBO(alpha=0, num_particles=k, max_plate_nesting=1)
    for i in range(len(x)):
        ours = log_likelihood(ppca.vae, x[i : i + 1], num_samples=k, chunk_size=1, seed=seed)
        pyro.set_rng_seed(seed)
        assert ours.item() == pytest.approx(-renyi.loss(ppca.vae.model, ppca.vae.guide, x[i : i + 1]), abs=1e-4)
    ours = log_likelihood(ppca.vae, x, num_samples=k, chunk_size=1, seed=seed)
    pyro.set_rng_seed(seed)
    assert ours.sum().item() == pytest.approx(-renyi.loss(ppca.vae.model, ppca.vae.guide, x), abs=1e-3)


def test_no_kl_weight_or_scale_leaks_in():
    ppca = PPCA(loc_shift=0.6, scale_factor=1.6)
    x = ppca.sample(30)
    plain = log_likelihood(ppca.vae, x, num_samples=40, seed=2)
    with ScaleLatents(0.1):  # the handler kl_scaled wraps around model and guide while training
        kl_weighted = log_likelihood(ppca.vae, x, num_samples=40, seed=2)
    with poutine.scale(scale=7.0):  # a subsampling scale
        scaled = log_likelihood(ppca.vae, x, num_samples=40, seed=2)
    assert torch.equal(plain, kl_weighted) and torch.equal(plain, scaled)
    # and on the traced path, which general models and guides take
    pyro.set_rng_seed(3)
    traced = traced_log_importance_weights(ppca.vae, x, 40)
    pyro.set_rng_seed(3)
    with ScaleLatents(0.1), poutine.scale(scale=7.0):
        assert torch.equal(traced, traced_log_importance_weights(ppca.vae, x, 40))


@pytest.mark.parametrize("likelihood, prior, guide", [
    ("bernoulli", {"name": "vamp", "components": 3}, "normal"),
    ({"name": "gaussian", "scale": "optimal"}, "flow", "normal"),
    ("bernoulli", {"name": "vamp", "components": 3}, "full"),
    ("bernoulli", "normal", {"name": "lowrank", "rank": 2}),
    ("bernoulli", "mog", {"name": "iaf", "flows": 2, "hidden": [8]}),
])
def test_direct_weights_equal_the_traced_ones(likelihood, prior, guide):
    vae = VAE((1, 4, 4), latent_dim=2, likelihood=likelihood, prior=prior, guide=guide,
              encoder={"name": "mlp", "hidden": [8]}, decoder={"name": "mlp", "hidden": [8]})
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.4))
    pyro.set_rng_seed(1)
    direct = direct_log_importance_weights(vae, x, 7)
    pyro.set_rng_seed(1)
    traced = traced_log_importance_weights(vae, x, 7)
    assert direct.shape == (7, 5)
    assert torch.allclose(direct, traced, rtol=1e-5, atol=1e-4)


def test_batch_size_changes_only_the_monte_carlo_noise():
    ppca = PPCA(loc_shift=0.6, scale_factor=1.6)
    x = ppca.sample(300)
    one, many = (log_likelihood(ppca.vae, x, num_samples=200, batch_size=b) for b in (1, 300))
    difference = one - many
    assert not torch.equal(one, many)
    assert abs(difference.mean()) < 4 * difference.std() / math.sqrt(len(x))


def test_deterministic_under_a_seed_and_leaves_the_callers_rng_alone():
    ppca = PPCA(loc_shift=0.6, scale_factor=1.6)
    x = ppca.sample(10)
    torch.manual_seed(123)
    first = log_likelihood(ppca.vae, x, num_samples=30, seed=9)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(first, log_likelihood(ppca.vae, x, num_samples=30, seed=9))
    assert torch.equal(after, torch.rand(3))
    assert not torch.equal(first, log_likelihood(ppca.vae, x, num_samples=30, seed=10))


def test_bad_arguments_are_one_line_user_errors():
    ppca = PPCA()
    x = ppca.sample(3)
    with pytest.raises(UserError, match="num_samples"):
        log_likelihood(ppca.vae, x, num_samples=0)
    with pytest.raises(UserError, match="chunk_size"):
        log_likelihood(ppca.vae, x, chunk_size=-1)
    with pytest.raises(UserError, match="shape"):
        log_likelihood(ppca.vae, torch.zeros(3, D + 1), num_samples=2)


def test_evaluate_reports_bits_per_dim_only_for_discrete_data():
    ppca = PPCA()
    assert evaluate(ppca.vae, ppca.sample(20), num_samples=5)["bits_per_dim"] is None
    vae = VAE((1, 8, 8), 3, encoder={"name": "mlp", "hidden": [16]}, decoder={"name": "mlp", "hidden": [16]})
    x = torch.bernoulli(torch.full((20, 1, 8, 8), 0.3))
    result = evaluate(vae, x, num_samples=5)
    assert result["bits_per_dim"] == pytest.approx(-result["log_likelihood"] / (64 * math.log(2)))
    assert bits_per_dim(-64 * math.log(2), 64) == pytest.approx(1.0)


@pytest.mark.parametrize("latent_dim, figures", [(2, ["manifold.png", "latent_space.png"]),
                                                 (4, ["traversals.png", "codes_pca.png"])])
@pytest.mark.trains
def test_cli_evaluate_and_plot_on_a_trained_run(tmp_path, capsys, latent_dim, figures):
    run = train(tiny_config(model={"latent_dim": latent_dim}, train={"epochs": 1}), out=tmp_path / "run")
    assert main(["evaluate", str(run), "--samples", "20", "--split", "valid", "--batch-size", "64"]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    for key in ("elbo", "log_likelihood", "reconstruction", "kl", "active_units", "kl_per_dimension", "bits_per_dim"):
        assert key in result
    assert (result["num_samples"], result["split"], result["num_examples"]) == (20, "valid", 250)
    assert result["log_likelihood"] > result["elbo"]
    assert result["elbo"] == pytest.approx(result["reconstruction"] - result["kl"], abs=1e-3)
    assert "log-likelihood" in capsys.readouterr().out
    assert main(["plot", str(run)]) == 0
    for name in figures:
        assert (run / name).stat().st_size > 1000


def test_cli_evaluate_rejects_a_bad_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_evaluation_runs_in_eval_mode_and_restores_the_mode():
    """With scale = "optimal", a VAE in training mode refits sigma to every batch it sees and
    overwrites its running sigma; every evaluation function must score the fixed running
    sigma instead (eval mode), leave it unchanged, and hand the module back in its own mode."""
    vae = VAE((D,), LATENT, encoder={"name": "mlp", "hidden": [8]}, decoder={"name": "mlp", "hidden": [8]},
              likelihood={"name": "gaussian", "scale": "optimal"})
    with torch.no_grad():  # a running sigma of 0.2, as if trained; the test data are 15x wider
        vae.likelihood.running_statistic.fill_(0.04)
        vae.likelihood.running_weight.fill_(1.0)
    x = 3.0 * torch.randn(40, D, generator=torch.Generator().manual_seed(1))
    stored = {name: value.clone() for name, value in vae.likelihood.named_buffers()}

    def run_all(training):
        calls = {
            "log_likelihood": lambda: log_likelihood(vae, x, num_samples=20, batch_size=16),
            "evaluate_elbo": lambda: evaluate_elbo(vae, [x[:16], x[16:]]),
            "evaluate": lambda: evaluate(vae, x, num_samples=20, batch_size=16),
        }
        results = {}
        for function, call in calls.items():
            vae.train(training)
            results[function] = call()
            assert vae.training is training, function  # the mode it was given back in
            for name, value in vae.likelihood.named_buffers():
                assert torch.equal(value, stored[name]), (function, name)  # the running sigma is untouched
        return results

    in_training, in_eval = run_all(True), run_all(False)
    assert torch.equal(in_training["log_likelihood"], in_eval["log_likelihood"])
    for key in ("elbo", "reconstruction", "kl", "active_units"):
        assert in_training["evaluate_elbo"][key] == in_eval["evaluate_elbo"][key]
    for key in ("elbo", "reconstruction", "kl", "log_likelihood", "log_likelihood_standard_error"):
        assert in_training["evaluate"][key] == in_eval["evaluate"][key]
    # and the numbers are those of sigma = 0.2, not of a sigma refitted to the data (~3):
    # the reconstruction term is far below what a fitted sigma would give
    assert in_eval["evaluate"]["reconstruction"] < -100


class RedefinedGuide(VAE):
    """The same guide program, redefined: evaluation then encodes through ``encode_layers`` and
    ``kl_per_dimension``, not through the guide's trace."""

    def guide(self, x):
        return VAE.guide(self, x)


@pytest.mark.parametrize("prior, guide", [
    ("normal", "normal"),
    ({"name": "vamp", "components": 3}, "full"),
    ("mog", {"name": "iaf", "flows": 2, "hidden": [8]}),
])
def test_one_encoder_pass_gives_what_separate_passes_give(prior, guide):
    """evaluate_elbo reads the codes and the KL per dimension off the guide's trace for the
    standard programs; a redefined guide takes the separate passes. Both from one state."""
    kwargs = dict(latent_dim=3, prior=prior, guide=guide, encoder={"name": "mlp", "hidden": [8]},
                  decoder={"name": "mlp", "hidden": [8]})
    pyro.set_rng_seed(0)
    standard = VAE((1, 4, 4), **kwargs)
    redefined = RedefinedGuide((1, 4, 4), **kwargs)
    redefined.load_state_dict(standard.state_dict())
    assert standard.has_standard_programs and not redefined.has_standard_programs
    x = torch.bernoulli(torch.full((40, 1, 4, 4), 0.4))
    batches = [x[:15], x[15:]]
    one, separate = evaluate_elbo(standard, batches), evaluate_elbo(redefined, batches)
    for key in ("elbo", "reconstruction", "kl", "active_units", "num_examples"):
        assert one[key] == pytest.approx(separate[key], rel=1e-6), key
    assert (one["kl_per_dimension"] is None) == (guide != "normal")
    if guide == "normal":  # the redefined guide has no closed-form per-dimension KL (it may not factorize)
        assert separate["kl_per_dimension"] is None
        expected = torch.tensor(one["kl_per_dimension"]).sum().item()
        assert expected == pytest.approx(one["kl"], rel=1e-5)
