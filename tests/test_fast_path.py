"""The fast path computes exactly Pyro's loss and gradients for the standard model/guide pair,
and is used only where it provably does."""

import copy
from unittest import mock

import pyro
import pyro.distributions as dist
import pytest
import torch
from estimator_cases import direct_cases, spec_id
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import VAE, kl_scaled
from pyro_vae.objectives import ESTIMATORS, standard_vae

CASES = [
    ("bernoulli", "normal", "normal"),
    ({"name": "gaussian", "scale": "learned"}, "normal", "normal"),
    ("continuous_bernoulli", {"name": "mog", "components": 3}, "normal"),
    ({"name": "laplace", "scale": "optimal"}, {"name": "vamp", "components": 4}, "normal"),
    ("bernoulli", "flow", "normal"),
    ("bernoulli", "normal", "full"),
    ("bernoulli", {"name": "vamp", "components": 4}, {"name": "lowrank", "rank": 2}),
    ("bernoulli", "learned_normal", {"name": "iaf", "flows": 2, "hidden": [8]}),
]


def make_vae(likelihood, prior, guide="normal"):
    return VAE((1, 4, 4), latent_dim=3, likelihood=likelihood, prior=prior, guide=guide,
               encoder={"name": "mlp", "hidden": [8]}, decoder={"name": "mlp", "hidden": [8]})


def loss_and_grads(vae, compute, seed=11):
    """The loss and gradients of ``compute(vae)`` on a fresh copy of ``vae``: whatever one path
    leaves behind (a running optimal scale, a baseline) cannot reach the path compared with it."""
    vae = copy.deepcopy(vae)
    pyro.set_rng_seed(seed)
    loss = compute(vae)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in vae.parameters() if p.grad is not None]


@pytest.mark.parametrize("likelihood, prior, guide", CASES)
@pytest.mark.parametrize("estimator, pyro_elbo", [("trace", Trace_ELBO), ("meanfield", TraceMeanField_ELBO)])
@pytest.mark.parametrize("weight", [None, 0.25, 0.0])
def test_fast_path_equals_pyro_loss_and_gradients(likelihood, prior, guide, estimator, pyro_elbo, weight):
    vae = make_vae(likelihood, prior, guide)
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4)) if likelihood == "bernoulli" else torch.rand(6, 1, 4, 4) * 0.9 + 0.05
    assert standard_vae(vae.model, vae.guide) is vae  # the fast path is taken
    fast = ESTIMATORS.build(estimator)

    def pyro_loss(vae):
        model, guide = (vae.model, vae.guide) if weight is None else (kl_scaled(vae.model, weight), kl_scaled(vae.guide, weight))
        return pyro_elbo(max_plate_nesting=1).differentiable_loss(model, guide, x)

    with pyro.validation_enabled(False):  # as in training
        fast_loss, fast_grads = loss_and_grads(vae, lambda vae: fast.loss(vae.model, vae.guide, x, kl_weight=weight))
        pyro_loss, pyro_grads = loss_and_grads(vae, pyro_loss)
    assert torch.allclose(fast_loss, pyro_loss, rtol=1e-5, atol=1e-4)
    assert len(fast_grads) == len(pyro_grads) > 0
    for a, b in zip(fast_grads, pyro_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_fast_path_is_not_taken_for_redefined_programs_or_under_handlers():
    class Tempered(VAE):
        @pyro.nn.pyro_method
        def model(self, x):
            with poutine.scale(scale=0.5):
                super().model(x)

    vae = make_vae("bernoulli", "normal")
    tempered = Tempered((1, 4, 4), latent_dim=3)
    assert standard_vae(tempered.model, tempered.guide) is None
    assert standard_vae(vae.model, tempered.guide) is None
    assert standard_vae(kl_scaled(vae.model, 2.0), vae.guide) is None
    with poutine.trace():
        assert standard_vae(vae.model, vae.guide) is None

    # and the estimator then gives Pyro's loss, scale included
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.4))
    pyro.set_rng_seed(0)
    ours = ESTIMATORS.build("trace").loss(tempered.model, tempered.guide, x)
    pyro.set_rng_seed(0)
    reference = Trace_ELBO().differentiable_loss(tempered.model, tempered.guide, x)
    assert torch.allclose(ours, reference)


class LikelihoodWithoutObservation(VAE):
    """A redefined model program: the likelihood is built without the observation, so an
    ``optimal`` scale falls back to its running value instead of fitting the batch."""

    @pyro.nn.pyro_method
    def model(self, x):
        with self.param_store(), pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior_dist())
            pyro.sample("x", self.likelihood_dist(z), obs=x)


class TemperedLikelihood(VAE):
    """A redefined density: every path (the direct loss included) must use it."""

    def likelihood_dist(self, z, x=None):
        base = super().likelihood_dist(z, x)
        return dist.Normal(base.base_dist.loc, 2 * base.base_dist.scale).to_event(base.reinterpreted_batch_ndims)


@pytest.mark.parametrize("estimator", ["trace", "meanfield"])
def test_a_redefined_model_program_is_traced_never_replaced_by_the_direct_loss(estimator):
    options = dict(latent_dim=3, likelihood={"name": "gaussian", "scale": "optimal"},
                   encoder={"name": "mlp", "hidden": [8]}, decoder={"name": "mlp", "hidden": [8]})
    x = torch.rand(6, 1, 4, 4)
    pyro.set_rng_seed(3)
    changed = LikelihoodWithoutObservation((1, 4, 4), **options)
    standard = VAE((1, 4, 4), **options)
    standard.load_state_dict(changed.state_dict())
    assert standard_vae(changed.model, changed.guide) is None
    elbo = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO}[estimator](max_plate_nesting=1)
    ours, _ = loss_and_grads(changed, lambda vae: ESTIMATORS.build(estimator).loss(vae.model, vae.guide, x))
    pyro_loss, _ = loss_and_grads(changed, lambda vae: elbo.differentiable_loss(vae.model, vae.guide, x))
    unchanged, _ = loss_and_grads(standard, lambda vae: ESTIMATORS.build(estimator).loss(vae.model, vae.guide, x))
    assert torch.allclose(ours, pyro_loss, rtol=1e-5)  # the subclass's own program was run
    assert not torch.allclose(ours, unchanged, rtol=1e-3)  # and it differs from the library's


def test_a_redefined_density_reaches_the_direct_loss_and_the_traced_one_alike():
    options = dict(latent_dim=3, likelihood={"name": "gaussian", "scale": 0.3},
                   encoder={"name": "mlp", "hidden": [8]}, decoder={"name": "mlp", "hidden": [8]})
    vae = TemperedLikelihood((1, 4, 4), **options)
    x = torch.rand(6, 1, 4, 4)
    assert standard_vae(vae.model, vae.guide) is vae  # programs unchanged: the direct loss is used
    direct, direct_grads = loss_and_grads(vae, lambda vae: ESTIMATORS.build("trace").loss(vae.model, vae.guide, x))
    traced, traced_grads = loss_and_grads(vae, lambda vae: Trace_ELBO(max_plate_nesting=1).differentiable_loss(vae.model,
                                                                                                               vae.guide, x))
    plain = VAE((1, 4, 4), **options)
    plain.load_state_dict(vae.state_dict())
    untempered, _ = loss_and_grads(plain, lambda vae: ESTIMATORS.build("trace").loss(vae.model, vae.guide, x))
    assert torch.allclose(direct, traced, rtol=1e-5)
    for a, b in zip(direct_grads, traced_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(direct, untempered, rtol=1e-3)


class SameProgramsTraced(VAE):
    """The library's programs, redefined as themselves: the estimators must trace them."""

    @pyro.nn.pyro_method
    def model(self, x):
        return VAE.model(self, x)

    @pyro.nn.pyro_method
    def guide(self, x):
        return VAE.guide(self, x)


@pytest.mark.parametrize("likelihood, prior, guide", CASES)
@pytest.mark.parametrize("estimator, num_particles", list(direct_cases(4, (1, 4, 4))), ids=spec_id)
@pytest.mark.parametrize("weight", [None, "tensor 1", 0.5])
def test_direct_losses_equal_the_traced_ones(likelihood, prior, guide, estimator, num_particles, weight):
    """Every estimator with a direct loss (read from the registry: trace, meanfield, stl, iwae, renyi,
    dreg, tail_adaptive), on the library's own programs, takes it (no tracing; for the particle
    estimators the encoder runs once per data point); on a subclass that redefines the programs as
    themselves it traces them (x repeated K times). Same initial state, same seed: same loss and
    gradients (DReG's reweighted encoder gradient included), also under the tensor weight training
    passes (and a weight of 0.5, which a config refuses for the importance-weighted estimators but the
    handler defines)."""
    if ESTIMATORS.get(estimator["name"]).detaches_guide_parameters and isinstance(guide, dict) and guide["name"] == "iaf":
        pytest.skip(f"{estimator['name']} refuses a flow guide (it cannot score z at detached parameters)")
    weight = torch.tensor(1.0) if weight == "tensor 1" else weight
    options = dict(latent_dim=3, likelihood=likelihood, prior=prior, guide=guide,
                   encoder={"name": "mlp", "hidden": [8]}, decoder={"name": "mlp", "hidden": [8]})
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4)) if likelihood == "bernoulli" else torch.rand(6, 1, 4, 4) * 0.9 + 0.05
    pyro.set_rng_seed(5)
    standard = VAE((1, 4, 4), **options)
    traced = SameProgramsTraced((1, 4, 4), **options)
    traced.load_state_dict(standard.state_dict())
    assert standard_vae(standard.model, standard.guide) is standard
    assert standard_vae(traced.model, traced.guide) is None
    bound = ESTIMATORS.build(estimator, num_particles=num_particles)
    with pyro.validation_enabled(False):
        with mock.patch("pyro.poutine.trace", side_effect=AssertionError("the direct loss traced the programs")):
            direct_loss, direct_grads = loss_and_grads(standard, lambda vae: bound.loss(vae.model, vae.guide, x, weight))
        traced_loss, traced_grads = loss_and_grads(traced, lambda vae: bound.loss(vae.model, vae.guide, x, weight))
    assert torch.allclose(direct_loss, traced_loss, rtol=1e-5, atol=1e-5)
    assert len(direct_grads) == len(traced_grads) > 0
    for a, b in zip(direct_grads, traced_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
