"""Active units are counted relative to the prior's scale (Burda et al.'s criterion is stated for N(0, I))."""

import torch

from pyro_vae import VAE
from pyro_vae.evaluation import evaluate_elbo, prior_variances


class FixedMeans(torch.nn.Module):
    """An encoder whose means for data point i are codes[i] (x holds the index), with a fixed scale."""

    def __init__(self, codes, scale):
        super().__init__()
        self.codes, self.scale = codes, scale
        self.unused = torch.nn.Parameter(torch.zeros(()))  # so the VAE has a device

    def forward(self, x):
        loc = self.codes[x[:, 0].long()]
        raw_scale = torch.full_like(loc, self.scale)
        return torch.cat([loc, torch.log(torch.expm1(raw_scale))], -1)  # softplus^-1: the guide's scale ~ scale


def vae_with_prior_scale(prior_scale, codes):
    vae = VAE((1,), latent_dim=codes.shape[1], prior="learned_normal", likelihood={"name": "gaussian", "scale": 1.0})
    with torch.no_grad():
        vae.prior.log_scale.fill_(torch.log(torch.tensor(prior_scale)).item())
    vae.encoder = FixedMeans(codes, 0.5)
    return vae


def test_activity_is_relative_to_the_priors_variance():
    n = 2000
    generator = torch.Generator().manual_seed(0)
    # dimension 0 varies with std 0.05 (variance 0.0025), dimension 1 with std 0.5 (variance 0.25)
    codes = torch.randn(n, 2, generator=generator) * torch.tensor([0.05, 0.5])
    x = torch.arange(n, dtype=torch.float32)[:, None]
    # Under a prior of scale 0.1 (variance 0.01) both are active: 0.0025 / 0.01 = 0.25 > 0.01,
    # though the absolute criterion would call dimension 0 inactive.
    small = vae_with_prior_scale(0.1, codes)
    assert evaluate_elbo(small, [x])["active_units"] == 2
    # Under a prior of scale 10 (variance 100) neither is: 0.25 / 100 = 0.0025 < 0.01, though the
    # absolute criterion would call dimension 1 active. This is the learned-prior case in which
    # every unit counted as active while the reconstructions did not depend on the code.
    wide = vae_with_prior_scale(10.0, codes)
    assert evaluate_elbo(wide, [x])["active_units"] == 0
    # Under N(0, I) the criterion is Burda et al.'s, exactly
    unit = vae_with_prior_scale(1.0, codes)
    assert torch.equal(prior_variances(unit)["z"], torch.ones(2, dtype=torch.float64))
    assert evaluate_elbo(unit, [x])["active_units"] == 1


def test_prior_variances_are_closed_form_for_mixtures_and_sampled_for_flows():
    mixture = VAE((1, 4, 4), latent_dim=3, prior={"name": "mog", "components": 4})
    exact = prior_variances(mixture)["z"]
    drawn = mixture.prior_dist().sample((200000,)).double().var(0)
    assert torch.allclose(exact, drawn, rtol=0.03)
    flow = VAE((1, 4, 4), latent_dim=3, prior="flow")
    variances = prior_variances(flow)["z"]
    assert variances.shape == (3,) and torch.all(variances > 0)
