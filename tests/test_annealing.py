"""KL weights through a handler on the latent sites, and schedules for them: exact losses."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from conftest import small_vae, tiny_config
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from test_model import hand_terms

from pyro_vae import train
from pyro_vae.annealing import SCHEDULES, ScaleLatents, build_schedule, kl_scaled, sigmoid_rise
from pyro_vae.config import check_config
from pyro_vae.models import VAE
from pyro_vae.objectives import ESTIMATORS
from pyro_vae.registry import UserError
from pyro_vae.runs import read_metrics

BETAS = [0.0, 0.25, 1.0, 4.0]


def terms_at_fixed_noise(elbo_class, model, guide, vae, x, seed=3):
    """Pyro's loss, and the reconstruction and KL written out by hand at the same z."""
    pyro.set_rng_seed(seed)
    loss = elbo_class().differentiable_loss(model, guide, x)
    pyro.set_rng_seed(seed)
    z = poutine.trace(vae.guide).get_trace(x).nodes["z"]["value"]
    logits, log_q, log_p, analytic_kl = hand_terms(vae, x, z)
    reconstruction = -F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="sum")
    kl = analytic_kl if elbo_class is TraceMeanField_ELBO else log_q - log_p
    return loss, reconstruction, kl.sum()


@pytest.mark.parametrize("elbo_class", [Trace_ELBO, TraceMeanField_ELBO])
@pytest.mark.parametrize("beta", BETAS)
def test_loss_is_reconstruction_plus_beta_kl(elbo_class, beta):
    vae = small_vae()
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.3))
    loss, reconstruction, kl = terms_at_fixed_noise(
        elbo_class, kl_scaled(vae.model, beta), kl_scaled(vae.guide, beta), vae, x
    )
    assert kl > 0.1  # the KL term is really there, so a wrong weight shows
    assert torch.allclose(loss, -reconstruction + beta * kl, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("beta", BETAS)
def test_tensor_and_callable_weights_give_the_same_loss_as_a_number(beta):
    vae = small_vae()
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.3))
    losses = []
    for weight in (beta, torch.tensor(beta), lambda: beta):
        loss, _, _ = terms_at_fixed_noise(Trace_ELBO, kl_scaled(vae.model, weight), kl_scaled(vae.guide, weight), vae, x)
        losses.append(loss)
    assert losses[0] == losses[1] == losses[2]


def test_meanfield_reads_only_the_guide_scale_and_trace_elbo_needs_both():
    """Why the handler wraps model *and* guide: each estimator reads a different side."""
    vae = small_vae()
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.3))
    beta = 0.25
    args = (vae, x)
    # TraceMeanField_ELBO: the analytic KL is scaled by the guide site's scale alone.
    loss, rec, kl = terms_at_fixed_noise(TraceMeanField_ELBO, vae.model, kl_scaled(vae.guide, beta), *args)
    assert torch.allclose(loss, -rec + beta * kl, rtol=1e-6, atol=1e-4)
    loss, rec, kl = terms_at_fixed_noise(TraceMeanField_ELBO, kl_scaled(vae.model, beta), vae.guide, *args)
    assert torch.allclose(loss, -rec + kl, rtol=1e-6, atol=1e-4)
    # Trace_ELBO: scaling only the model weights log p(z) but not log q(z | x).
    pyro.set_rng_seed(3)
    z = poutine.trace(vae.guide).get_trace(x).nodes["z"]["value"]
    _, log_q, log_p, _ = hand_terms(vae, x, z)
    loss, rec, _ = terms_at_fixed_noise(Trace_ELBO, kl_scaled(vae.model, beta), vae.guide, *args)
    assert torch.allclose(loss, -rec + log_q.sum() - beta * log_p.sum(), rtol=1e-6, atol=1e-4)


def test_observed_site_is_never_scaled():
    vae = small_vae()
    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.5))
    for weight, z_scale, z_mask in [(0.25, 0.25, None), (4.0, 4.0, None), (0.0, 1.0, False)]:
        guide = poutine.trace(kl_scaled(vae.guide, weight)).get_trace(x)
        model = poutine.trace(poutine.replay(kl_scaled(vae.model, weight), trace=guide)).get_trace(x)
        for trace in (guide, model):
            assert trace.nodes["z"]["scale"] == z_scale and trace.nodes["z"]["mask"] is z_mask
        assert model.nodes["x"]["scale"] == 1.0 and model.nodes["x"]["mask"] is None
        model.compute_log_prob()
        x_site = model.nodes["x"]
        assert torch.equal(x_site["log_prob"], x_site["fn"].log_prob(x))
    # Inside an outer scale (e.g. subsampling), the weight multiplies it on z only.
    with poutine.scale(scale=10.0):
        model = poutine.trace(kl_scaled(vae.model, 0.5)).get_trace(x)
    assert model.nodes["z"]["scale"] == 5.0 and model.nodes["x"]["scale"] == 10.0


# ---- a Gaussian's fixed sigma is a KL weight (beta = 2 sigma^2 against the squared error) ----

# For N points of D features,
#   loss(sigma, beta) = sum_n |x_n - f(z_n)|^2 / (2 sigma^2) + N (D/2) log(2 pi sigma^2) + beta KL,
# so sigma^2 (loss(sigma, beta) - N (D/2) log(2 pi sigma^2)) = sum_n |x_n - f(z_n)|^2 / 2 + beta sigma^2 KL
# depends on (sigma, beta) only through beta sigma^2: the same objective, up to a constant and a
# factor, hence the same optimum. Each pair below has beta sigma^2 = 2.
SIGMA_BETA = [(1.0, 2.0), (0.5, 8.0), (0.1, 200.0)]


@pytest.mark.parametrize("name, num_particles", [("trace", 1), ("trace", 2), ("meanfield", 1), ("stl", 1)])
def test_a_gaussian_scale_is_a_kl_weight_only_beta_sigma_squared_counts(name, num_particles):
    """At the same noise, sigma^2 (loss - constant) and sigma^2 * gradient are the same for every
    (sigma, beta) with beta sigma^2 = 2 (rtol 1e-5), through the estimator's loss with kl_weight = beta
    and likelihood {"name": "gaussian", "scale": sigma}: the direct loss (trace, meanfield with one
    particle) and Pyro's traced one (two particles; stl). A 1% change of beta is seen."""
    n, d = 16, 10
    x = 0.5 * torch.randn(n, d, generator=torch.Generator().manual_seed(2))
    networks = {"latent_dim": 3, "encoder": {"name": "mlp", "hidden": [16]}, "decoder": {"name": "mlp", "hidden": [16]}}
    reference = VAE(d, **networks)
    estimator = ESTIMATORS.build(name, num_particles=num_particles)

    def scaled_loss_and_gradients(sigma, beta):
        vae = VAE(d, likelihood={"name": "gaussian", "scale": sigma}, **networks)
        vae.encoder.load_state_dict(reference.encoder.state_dict())
        vae.decoder.load_state_dict(reference.decoder.state_dict())
        pyro.set_rng_seed(3)
        loss = estimator.loss(vae.model, vae.guide, x, kl_weight=beta)
        gradients = torch.autograd.grad(loss, list(vae.parameters()))
        constant = n * d / 2 * math.log(2 * math.pi * sigma**2)  # the loss averages over particles
        return sigma**2 * (loss.item() - constant), [sigma**2 * g for g in gradients]

    value, gradients = scaled_loss_and_gradients(*SIGMA_BETA[0])
    for sigma, beta in SIGMA_BETA[1:]:
        other_value, other_gradients = scaled_loss_and_gradients(sigma, beta)
        assert other_value == pytest.approx(value, rel=1e-5), (sigma, beta)
        for g, h in zip(other_gradients, gradients):
            torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-6 * h.abs().max().item())
    sigma, beta = SIGMA_BETA[0]
    assert abs(scaled_loss_and_gradients(sigma, 1.01 * beta)[0] - value) > 1e-3 * abs(value)  # the KL term shows


def toy_model(prior, loc):
    z = pyro.sample("z", prior)
    pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.5))


def toy_guide(prior, loc):
    pyro.sample("z", dist.Normal(loc, 1.0))


@pytest.mark.parametrize("elbo_class", [Trace_ELBO, TraceMeanField_ELBO])
@pytest.mark.parametrize("zero", [0.0, torch.tensor(0.0)])
def test_zero_weight_masks_so_minus_infinity_log_densities_give_no_nan(elbo_class, zero):
    """A prior with bounded support puts log p(z) = -inf at guide draws outside it.
    A scale of 0 would compute 0 * -inf = NaN; the mask drops the term: the loss is
    exactly -log p(x | z) and its gradient is the reconstruction gradient."""
    loc = torch.tensor(2.0, requires_grad=True)
    prior = dist.Uniform(0.0, 1.0)  # the guide's draws near 2 lie outside (0, 1)
    with pyro.validation_enabled(False):  # validation would refuse the out-of-support value
        pyro.set_rng_seed(0)
        loss = elbo_class().differentiable_loss(kl_scaled(toy_model, zero), kl_scaled(toy_guide, zero), prior, loc)
        pyro.set_rng_seed(0)
        z = poutine.trace(toy_guide).get_trace(prior, loc).nodes["z"]["value"]
        assert prior.log_prob(z) == -math.inf
        with pytest.warns(UserWarning, match="NaN"):
            scaled = elbo_class().differentiable_loss(_SetScale(0.0)(toy_model), _SetScale(0.0)(toy_guide), prior, loc)
    assert torch.isnan(scaled)  # the trap: a plain scale of exactly 0
    expected = -dist.Normal(z, 1.0).log_prob(torch.tensor(0.5))
    assert torch.allclose(loss, expected)
    (gradient,) = torch.autograd.grad(loss, loc)
    assert torch.allclose(gradient, (z - 0.5).detach())  # d/dloc of (z - x)^2 / 2 with z = loc + eps


class _SetScale(poutine.messenger.Messenger):
    """Set the latent sites' scale directly (what poutine.scale refuses to do for 0)."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.scale * msg["scale"]


def test_poutine_scale_refuses_zero_and_the_handler_refuses_bad_weights():
    with pytest.raises(ValueError, match="scale > 0"):
        poutine.scale(toy_model, 0.0)
    for bad in (-0.5, math.nan, math.inf, "1", torch.ones(2)):
        with pytest.raises(ValueError):
            ScaleLatents(bad)
    with pytest.raises(ValueError, match=">= 0"):
        poutine.trace(kl_scaled(toy_model, lambda: -1.0)).get_trace(dist.Normal(0.0, 1.0), None)


# ---- schedules ----


def test_linear_warm_up_then_hold():
    schedule = build_schedule({"name": "linear", "start": 0.1, "end": 0.9, "steps": 8}, steps_per_epoch=5)
    assert [schedule(t) for t in (0, 2, 4, 8, 9, 1000)] == pytest.approx([0.1, 0.3, 0.5, 0.9, 0.9, 0.9])
    # epochs count steps_per_epoch steps each: T = 2 * 5 = 10 steps
    schedule = build_schedule({"name": "linear", "epochs": 2}, steps_per_epoch=5)
    assert [schedule(t) for t in (0, 1, 5, 7, 10, 11)] == pytest.approx([0.0, 0.1, 0.5, 0.7, 1.0, 1.0])


def test_per_epoch_stepping_is_constant_within_an_epoch():
    schedule = build_schedule({"name": "linear", "epochs": 4, "unit": "epoch"}, steps_per_epoch=3)
    values = [schedule(t) for t in range(15)]
    assert values == pytest.approx([0.0] * 3 + [0.25] * 3 + [0.5] * 3 + [0.75] * 3 + [1.0] * 3)
    cyclical = build_schedule(
        {"name": "cyclical", "epochs": 4, "cycles": 2, "ratio": 1.0, "unit": "epoch"}, steps_per_epoch=3
    )
    assert [cyclical(t) for t in range(12)] == pytest.approx([0.0] * 3 + [0.5] * 3 + [0.0] * 3 + [0.5] * 3)


def test_sigmoid_runs_exactly_from_start_to_end_through_the_logistic():
    k = 6.0
    schedule = build_schedule({"name": "sigmoid", "start": 0.0, "end": 2.0, "steps": 10, "steepness": k}, 1)
    logistic = lambda a: 1 / (1 + math.exp(-a))  # noqa: E731
    for t in (0, 3, 5, 7, 10, 20):
        u = min(t / 10, 1.0)
        expected = 2.0 * (logistic(k * (u - 0.5)) - logistic(-k / 2)) / (logistic(k / 2) - logistic(-k / 2))
        assert schedule(t) == pytest.approx(expected, abs=1e-12)
    assert schedule(0) == 0.0 and schedule(10) == 2.0 and schedule(5) == pytest.approx(1.0)


@pytest.mark.parametrize("shape", ["linear", "sigmoid", "cosine"])
def test_cyclical_follows_fu_et_al_and_repeats(shape):
    # 4 cycles over 40 steps: period 10; rising over the first 5 steps (ratio 0.5), then hold.
    schedule = build_schedule(
        {"name": "cyclical", "steps": 40, "cycles": 4, "ratio": 0.5, "shape": shape, "start": 0.2, "end": 1.2}, 1
    )
    rise = {
        "linear": lambda r: r,
        "sigmoid": lambda r: sigmoid_rise(r, 10.0),
        "cosine": lambda r: (1 - math.cos(math.pi * r)) / 2,
    }[shape]
    for t in range(10):
        r = min((t % 10) / 10 / 0.5, 1.0)
        assert schedule(t) == pytest.approx(0.2 + 1.0 * rise(r), abs=1e-12)
    assert schedule(0) == 0.2 and schedule(5) == schedule(9) == 1.2
    assert all(schedule(t) == schedule(t + 10) == schedule(t + 40) for t in range(40))
    assert schedule(25) == 1.2 and schedule(30) == 0.2


def test_constant_and_numbers():
    assert build_schedule(0.3, 7)(12345) == 0.3
    assert build_schedule({"name": "constant", "value": 2}, 7)(0) == 2.0
    assert build_schedule(0, 7)(0) == 0.0


def test_schedules_are_pure_functions_of_the_step():
    """Resuming at step t restores the position: the value depends on t alone."""
    for spec in (
        {"name": "linear", "epochs": 3},
        {"name": "cyclical", "epochs": 3, "cycles": 3, "shape": "cosine"},
        {"name": "sigmoid", "steps": 17, "unit": "epoch"},
    ):
        first, second = build_schedule(spec, 7), build_schedule(spec, 7)
        forward = [first(t) for t in range(30)]
        assert [second(t) for t in reversed(range(30))] == forward[::-1]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "linear"}, r"objective\.kl_weight: give the schedule's length as exactly one of"),
        ({"name": "linear", "epochs": 2, "steps": 3}, "exactly one of"),
        ({"name": "linaer", "epochs": 2},
         r"objective\.kl_weight: unknown schedule 'linaer'; choose one of: constant, linear"),
        ({"epochs": 2}, r"objective\.kl_weight: a table needs a 'name' key"),
        ({"name": "linear", "epochs": 0}, r"objective\.kl_weight\.epochs must be >= 1"),
        ({"name": "linear", "epochs": 2.5}, r"objective\.kl_weight\.epochs must be an integer"),
        ({"name": "linear", "epochs": 2, "start": -1}, r"objective\.kl_weight\.start must be >= 0"),
        ({"name": "linear", "epochs": 2, "unit": "batch"}, r"objective\.kl_weight\.unit: unknown value 'batch'"),
        ({"name": "linear", "epochs": 2, "cycles": 2}, r"objective\.kl_weight\.cycles: unknown option"),
        ({"name": "cyclical", "epochs": 2, "ratio": 0}, r"objective\.kl_weight\.ratio must be > 0"),
        ({"name": "cyclical", "epochs": 2, "ratio": 1.5}, r"objective\.kl_weight\.ratio must be in \(0, 1\]"),
        ({"name": "cyclical", "epochs": 2, "shape": "saw"}, r"objective\.kl_weight\.shape: unknown value 'saw'"),
        ({"name": "constant", "value": -2}, r"objective\.kl_weight\.value must be >= 0"),
        ("linear", r"objective\.kl_weight must be a number >= 0 or a schedule table"),
        (-0.5, r"objective\.kl_weight must be >= 0"),
        (True, r"objective\.kl_weight must be a number >= 0 or a schedule table"),
    ],
)
def test_bad_kl_weights_are_one_line_user_errors(spec, message):
    with pytest.raises(UserError, match=message) as error:
        check_config({"objective": {"kl_weight": spec}})
    assert "\n" not in str(error.value)


def test_config_keeps_tables_and_checks_reduction():
    spec = {"name": "cyclical", "epochs": 8, "cycles": 2, "shape": "cosine"}
    objective = check_config({"objective": {"kl_weight": spec}})["objective"]
    assert objective["kl_weight"] == spec and objective["reduction"] == "sum"
    assert check_config({"objective": {"reduction": "mean"}})["objective"]["reduction"] == "mean"
    with pytest.raises(UserError, match=r"objective\.reduction: unknown value 'avg'; choose one of: sum, mean"):
        check_config({"objective": {"reduction": "avg"}})
    assert set(SCHEDULES) == {"constant", "linear", "sigmoid", "cyclical"}


# ---- a schedule in a plain Pyro SVI script ----


@pytest.mark.trains
def test_svi_script_with_a_schedule_from_zero_trains():
    """The script of docs/kl-annealing.md ("In your own SVI script"): the weight is read from the schedule at every step."""
    vae = small_vae()
    x = torch.bernoulli(torch.full((32, 1, 8, 8), 0.3))
    schedule = build_schedule({"name": "linear", "start": 0.0, "end": 1.0, "steps": 20}, steps_per_epoch=1)
    step = 0
    weight = lambda: schedule(step)  # noqa: E731
    svi = SVI(kl_scaled(vae.model, weight), kl_scaled(vae.guide, weight), pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())

    # At step 0 the weight is exactly 0: the loss is the reconstruction term alone.
    loss, reconstruction, _ = terms_at_fixed_noise(Trace_ELBO, svi.model, svi.guide, vae, x)
    assert torch.allclose(loss, -reconstruction, rtol=1e-6)

    before = [p.detach().clone() for p in vae.parameters()]
    losses = []
    for step in range(60):  # noqa: B007  (the schedule's weight() above reads step)
        losses.append(svi.step(x))
    assert all(math.isfinite(v) for v in losses)
    assert all(not torch.equal(b, p) for b, p in zip(before, vae.parameters()))
    assert sum(losses[-10:]) / 10 < sum(losses[:5]) / 5 - 32 * 0.5
    # and by the end the weight is 1: the loss is the negative ELBO again
    loss, reconstruction, kl = terms_at_fixed_noise(Trace_ELBO, svi.model, svi.guide, vae, x)
    assert torch.allclose(loss, -reconstruction + kl, rtol=1e-6, atol=1e-4)


# ---- the trainer, from config ----


@pytest.mark.trains
def test_trainer_follows_a_schedule_from_zero_per_epoch(tmp_path):
    schedule = {"name": "linear", "start": 0.0, "end": 1.0, "epochs": 2, "unit": "epoch"}
    config = tiny_config(objective={"kl_weight": schedule}, train={"epochs": 3, "lr": 3e-3})
    rows = read_metrics(train(config, out=tmp_path / "run") / "metrics.csv")
    assert [r["kl_weight"] for r in rows] == [0.0, 0.5, 1.0]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_elbo"]) for r in rows)
    assert rows[-1]["val_elbo"] > rows[0]["val_elbo"] + 1


@pytest.mark.trains
def test_mean_reduction_reports_an_effective_kl_weight_of_d(tmp_path):
    config = tiny_config(objective={"kl_weight": 0.5, "reduction": "mean"}, train={"epochs": 1})
    (row,) = read_metrics(train(config, out=tmp_path / "run") / "metrics.csv")
    assert row["kl_weight"] == 0.5 and row["effective_kl_weight"] == 0.5 * 64  # digits: D = 8 x 8
