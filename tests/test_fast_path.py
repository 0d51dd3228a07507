"""The fast path computes exactly Pyro's loss and gradients for the standard model/guide pair,
and is used only where it provably does."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import VAE, kl_scaled
from pyro_vae.objectives import ESTIMATORS, standard_vae

CASES = [
    ("bernoulli", "normal"),
    ({"name": "gaussian", "scale": "learned"}, "normal"),
    ("continuous_bernoulli", {"name": "mog", "components": 3}),
    ({"name": "laplace", "scale": "optimal"}, {"name": "vamp", "components": 4}),
    ("bernoulli", "flow"),
]


def make_vae(likelihood, prior):
    return VAE((1, 4, 4), latent_dim=3, likelihood=likelihood, prior=prior,
               encoder={"type": "mlp", "hidden": [8]}, decoder={"type": "mlp", "hidden": [8]})


def loss_and_grads(vae, compute, seed=11):
    vae.zero_grad()
    pyro.set_rng_seed(seed)
    loss = compute()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in vae.parameters() if p.grad is not None]


@pytest.mark.parametrize("likelihood, prior", CASES)
@pytest.mark.parametrize("estimator, pyro_elbo", [("trace", Trace_ELBO), ("meanfield", TraceMeanField_ELBO)])
@pytest.mark.parametrize("weight", [None, 0.25, 0.0])
def test_fast_path_equals_pyro_loss_and_gradients(likelihood, prior, estimator, pyro_elbo, weight):
    vae = make_vae(likelihood, prior)
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4)) if likelihood == "bernoulli" else torch.rand(6, 1, 4, 4) * 0.9 + 0.05
    assert standard_vae(vae.model, vae.guide) is vae  # the fast path is taken
    fast = ESTIMATORS.build(estimator)
    w = None if weight is None else (lambda: weight)
    model, guide = (vae.model, vae.guide) if weight is None else (kl_scaled(vae.model, weight), kl_scaled(vae.guide, weight))
    with pyro.validation_enabled(False):  # as in training
        fast_loss, fast_grads = loss_and_grads(vae, lambda: fast.loss(vae.model, vae.guide, x, kl_weight=w))
        pyro_loss, pyro_grads = loss_and_grads(vae, lambda: pyro_elbo(max_plate_nesting=1).differentiable_loss(model, guide, x))
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
