"""Priors: normalized, equal to their defining formulas, trained with everything else,
swappable without touching anything but the "z" site; and every likelihood x prior pair
trains (SVI step, and the CLI for one epoch)."""

import csv
import math

import pyro
import pytest
import torch
from conftest import small_vae
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import VAE
from pyro_vae.cli import main
from pyro_vae.guides import gaussian_parameters
from pyro_vae.objectives import ESTIMATORS, analytic_kl
from pyro_vae.registry import UserError

PRIOR_SPECS = [
    "normal",
    "learned_normal",
    {"name": "mog", "components": 3},
    {"name": "vamp", "components": 4},
    {"name": "flow", "num_transforms": 2},
    {"name": "flow", "transform": "spline_autoregressive", "num_transforms": 1},
]
LIKELIHOOD_SPECS = [
    "bernoulli",
    "continuous_bernoulli",
    {"name": "gaussian", "scale": 0.2},
    {"name": "gaussian", "scale": "learned"},
    {"name": "gaussian", "scale": "optimal"},
    {"name": "laplace", "scale": "learned_per_feature"},
    {"name": "beta", "squeeze": 1e-3},
    {"name": "discretized_logistic", "components": 2, "levels": 17},  # noise_images are k / 16
]
CLOSED_FORM_KL = ("normal", "learned_normal")


def name_of(spec):
    return spec if isinstance(spec, str) else spec["name"]


def noise_images(likelihood, n=32):
    """`n` seeded uniform-noise 8x8 images on the digits data's grid k / 16 (binary draws from them
    for `bernoulli`): inputs of the digits' shape and values, not digits."""
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = (x * 16).round() / 16
    return torch.bernoulli(x) if likelihood == "bernoulli" else x


def perturb(module, size=0.3):
    """Move every learned parameter off its initial value, so the checks see a non-trivial prior."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(size * torch.randn_like(parameter))


# ---- each prior is a normalized density with the right shape -------------------------------


@pytest.mark.parametrize("spec", PRIOR_SPECS, ids=lambda s: str(s))
def test_prior_integrates_to_one_in_two_dimensions(spec):
    vae = small_vae(latent_dim=2, prior=spec, likelihood="continuous_bernoulli")
    perturb(vae.prior, 0.1)  # larger moves give the spline kinks this grid no longer resolves
    prior = vae.prior_dist()
    assert prior.batch_shape == () and prior.event_shape == (2,)
    # trapezoid rule on a 401 x 401 grid over [-9, 9]^2 (the mass outside is < 1e-6)
    axis = torch.linspace(-9, 9, 401)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = prior.log_prob(grid).exp().reshape(401, 401).double()
    total = torch.trapezoid(torch.trapezoid(density, axis.double(), dim=1), axis.double())
    assert total.item() == pytest.approx(1.0, abs=2e-3)


def test_mixture_of_gaussians_is_its_formula():
    vae = small_vae(latent_dim=4, prior={"name": "mog", "components": 3}, likelihood="continuous_bernoulli")
    perturb(vae.prior)
    z = torch.randn(10, 4)
    prior = vae.prior
    log_weights = torch.log_softmax(prior.logits, 0)
    scale = prior.log_scale.exp()
    log_normal = (-0.5 * ((z[:, None] - prior.loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    expected = torch.logsumexp(log_weights + log_normal, -1)
    assert torch.allclose(prior(vae.guide_dist).log_prob(z), expected, atol=1e-5)


def test_vamp_prior_is_the_mean_of_the_guides_posteriors_at_the_pseudo_inputs():
    vae = small_vae(latent_dim=3, prior={"name": "vamp", "components": 5}, likelihood="continuous_bernoulli")
    z = torch.randn(7, 3)
    loc, scale = gaussian_parameters(vae.encoder(vae.prior.pseudo_inputs))  # (5, 3) each
    log_q = torch.distributions.Normal(loc, scale).log_prob(z[:, None]).sum(-1)  # (7, 5)
    expected = torch.logsumexp(log_q, -1) - math.log(5)
    assert vae.prior.pseudo_inputs.shape == (5, 1, 8, 8)
    assert torch.allclose(vae.prior_dist().log_prob(z), expected, atol=1e-5)
    # the prior follows the encoder: change the encoder and the prior changes with it
    perturb(vae.encoder)
    assert not torch.allclose(vae.prior_dist().log_prob(z), expected, atol=1e-3)


def test_flow_prior_is_a_change_of_variables_of_a_standard_normal():
    vae = small_vae(latent_dim=3, prior={"name": "flow", "num_transforms": 2}, likelihood="continuous_bernoulli")
    perturb(vae.prior)
    prior = vae.prior_dist()
    z = torch.randn(6, 3)
    # map z back to the base with the inverse transforms, adding their log |det Jacobian|
    base, log_det = z, torch.zeros(6)
    for transform in reversed(prior.transforms):
        u = transform.inv(base)
        log_det = log_det - transform.log_abs_det_jacobian(u, base)
        base = u
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(base).sum(-1) + log_det
    assert torch.allclose(prior.log_prob(z), expected, atol=1e-5)
    assert not torch.allclose(prior.log_prob(z), torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1), atol=1e-2)
    samples = prior.sample((5,))
    assert samples.shape == (5, 3) and torch.all(torch.isfinite(prior.log_prob(samples)))


def test_learned_normal_starts_standard_and_keeps_the_closed_form_kl():
    vae = small_vae(latent_dim=3, prior="learned_normal", likelihood="continuous_bernoulli")
    z = torch.randn(4, 3)
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(vae.prior_dist().log_prob(z), standard)
    loc, scale = gaussian_parameters(vae.encoder(noise_images("continuous_bernoulli", 4)))
    guide = pyro.distributions.Normal(loc, scale).to_event(1)
    assert analytic_kl(guide, vae.prior_dist()) is not None


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "mog", "components": 0}, "model.prior.components must be >= 1"),
        ({"name": "flow", "transform": "glow"}, "flow transform must be one of: affine_autoregressive, spline_autoregressive"),
        ({"name": "flow", "hidden": [1]}, "flow hidden must be a list of integers >= latent_dim"),
        ({"name": "vamp", "pseudo": 3}, "unknown option for prior 'vamp'; allowed: components"),
    ],
)
def test_bad_prior_options_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        small_vae(latent_dim=2, prior=spec, likelihood="continuous_bernoulli")


# ---- swapping, estimators, training --------------------------------------------------------


def test_swapping_the_prior_changes_only_the_z_sites_distribution():
    encoder = VAE((1, 8, 8), 2, encoder={"name": "mlp", "hidden": [16]}).encoder
    decoder = VAE((1, 8, 8), 2, decoder={"name": "mlp", "hidden": [16]}, likelihood="continuous_bernoulli").decoder
    x = noise_images("continuous_bernoulli", 5)
    traces = {}
    guide_trace = None
    for spec in PRIOR_SPECS:
        vae = VAE((1, 8, 8), 2, encoder=encoder, decoder=decoder, likelihood="continuous_bernoulli", prior=spec)
        if guide_trace is None:
            guide_trace = poutine.trace(vae.guide).get_trace(x)
        traces[str(spec)] = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    reference = traces["normal"]
    z = guide_trace.nodes["z"]["value"]
    sample_sites = lambda trace: [name for name, site in trace.nodes.items() if site["type"] == "sample"]
    assert sample_sites(reference) == ["data", "z", "x"]  # the plate's subsample site, then z and x
    for key, trace in traces.items():
        assert sample_sites(trace) == ["data", "z", "x"]  # same sites, same order (param sites are each prior's own)
        assert torch.equal(trace.nodes["data"]["value"], reference.nodes["data"]["value"])
        for name in ("z", "x"):
            site, same = trace.nodes[name], reference.nodes[name]
            assert site["cond_indep_stack"] == same["cond_indep_stack"]  # the same "data" plate
            assert torch.equal(site["value"], same["value"])
            if name == "z":
                assert site["fn"].event_shape == (2,) and site["fn"].batch_shape in ((), (5,))
                if key != "normal" and key != "learned_normal":  # learned_normal starts at N(0, I)
                    assert not torch.allclose(site["fn"].log_prob(z), same["fn"].log_prob(z))
            else:
                assert torch.equal(site["fn"].log_prob(site["value"]), same["fn"].log_prob(same["value"]))


@pytest.mark.parametrize("spec", PRIOR_SPECS, ids=lambda s: str(s))
def test_meanfield_uses_the_closed_form_kl_or_falls_back_to_monte_carlo(spec):
    vae = small_vae(latent_dim=2, prior=spec, likelihood="continuous_bernoulli")
    perturb(vae.prior)
    x = noise_images("continuous_bernoulli", 8)
    losses = {}
    for elbo in (Trace_ELBO(max_plate_nesting=1), TraceMeanField_ELBO(max_plate_nesting=1)):
        pyro.set_rng_seed(5)
        losses[type(elbo).__name__] = elbo.differentiable_loss(vae.model, vae.guide, x).item()
    pyro.set_rng_seed(5)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    q, p = guide_trace.nodes["z"]["fn"], model_trace.nodes["z"]["fn"]
    z = guide_trace.nodes["z"]["value"]
    reconstruction = model_trace.nodes["x"]["fn"].log_prob(x).sum()
    monte_carlo_kl = (q.log_prob(z) - p.log_prob(z)).sum()
    assert losses["Trace_ELBO"] == pytest.approx((monte_carlo_kl - reconstruction).item(), rel=1e-5)
    if name_of(spec) in CLOSED_FORM_KL:
        closed_form = torch.distributions.kl_divergence(q, p).sum()
        assert losses["TraceMeanField_ELBO"] == pytest.approx((closed_form - reconstruction).item(), rel=1e-5)
    else:  # no closed form: the same Monte Carlo term as Trace_ELBO
        assert analytic_kl(q, p) is None
        assert losses["TraceMeanField_ELBO"] == pytest.approx(losses["Trace_ELBO"], rel=1e-6)


@pytest.mark.parametrize("prior", PRIOR_SPECS, ids=lambda s: str(s))
@pytest.mark.parametrize("estimator", ESTIMATORS.names())
@pytest.mark.trains
def test_every_estimator_works_with_every_prior(estimator, prior):
    vae = small_vae(latent_dim=2, prior=prior, likelihood="continuous_bernoulli")
    loss = ESTIMATORS.build(estimator).loss(vae.model, vae.guide, noise_images("continuous_bernoulli", 8))
    loss.backward()
    assert torch.isfinite(loss)
    for name, parameter in vae.prior.named_parameters():  # the prior is trained by every estimator
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("prior", PRIOR_SPECS, ids=lambda s: str(s))
@pytest.mark.parametrize("likelihood", LIKELIHOOD_SPECS, ids=lambda s: str(s))
@pytest.mark.trains
def test_every_likelihood_and_prior_pair_takes_an_svi_step(likelihood, prior):
    vae = small_vae(latent_dim=2, prior=prior, likelihood=likelihood)
    x = noise_images(name_of(likelihood) if isinstance(likelihood, dict) else likelihood, 16)
    vae.likelihood.check_support(x)
    learned = {name: p.detach().clone() for name, p in vae.named_parameters() if not name.startswith(("encoder", "decoder"))}
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO(max_plate_nesting=1))
    loss = svi.step(x)
    assert math.isfinite(loss)
    for name, before in learned.items():  # the prior's and likelihood's own parameters are trained
        assert not torch.equal(dict(vae.named_parameters())[name], before), name


def cli_pairs():
    """Every likelihood once and every prior at least once, paired in turn."""
    return [(likelihood, PRIOR_SPECS[i % len(PRIOR_SPECS)]) for i, likelihood in enumerate(LIKELIHOOD_SPECS)]


def toml(value):
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"
    return repr(value)


@pytest.mark.parametrize("likelihood, prior", cli_pairs(), ids=lambda s: str(s))
@pytest.mark.trains
def test_likelihood_and_prior_pairs_train_for_an_epoch_from_the_cli(tmp_path, likelihood, prior):
    binarize = "static" if likelihood == "bernoulli" else "none"
    args = ["train", "--out", str(tmp_path / "run")]
    for setting in [
        f"model.likelihood={toml(likelihood)}", f"model.prior={toml(prior)}", f"data.binarize={binarize}",
        "model.latent_dim=2", "model.encoder.hidden=[16]", "model.decoder.hidden=[16]",
        "train.epochs=1", "train.batch_size=256", "train.progress=false", "train.device=cpu",
    ]:
        args += ["--set", setting]
    assert main(args) == 0
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["val_elbo"]))
