"""Active units are counted relative to the prior's scale (Burda et al.'s criterion is stated for N(0, I)),
and the KL per latent dimension and the active units of a known encoder are their closed forms."""

import pytest
import torch

from pyro_vae import VAE
from pyro_vae.evaluation import evaluate, evaluate_elbo, kl_per_dimension, prior_variances
from pyro_vae.guides import MIN_SCALE


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


# ---- the KL per dimension and the active units of a known linear encoder, in closed form ----

N, FEATURES = 1000, 3
# q(z | x) = N(A x + c, diag s^2) with x of sample mean 0 and sample covariance I (exactly), so
# Cov_x(E_q[z_j | x]) = |A_j|^2: 0.5 and 0.0105 are active (> 0.01), 0.0095 and 0 are not. The
# offsets c are large enough that a variance taken without centring would call every unit active.
CODE_VARIANCES = [0.5, 0.0105, 0.0095, 0.0]
OFFSETS = [0.3, -1.0, 2.0, 0.7]
SCALES = [0.5, 1.0, 0.2, 1.3]


def whitened_data():
    x = torch.randn(N, FEATURES, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x = x - x.mean(0)
    x = x @ torch.linalg.inv(torch.linalg.cholesky(x.T @ x / (N - 1))).T  # sample covariance exactly I
    return x.float()


def linear_encoder_vae():
    """A VAE whose linear encoder gives q(z | x) = N(A x + c, diag s^2), and A."""
    generator = torch.Generator().manual_seed(5)
    directions = torch.nn.functional.normalize(torch.randn(len(CODE_VARIANCES), FEATURES, generator=generator), dim=1)
    A = directions * torch.tensor(CODE_VARIANCES).sqrt()[:, None]
    vae = VAE((FEATURES,), latent_dim=len(CODE_VARIANCES), encoder={"name": "mlp", "hidden": []},
              decoder={"name": "mlp", "hidden": []}, likelihood={"name": "gaussian", "scale": 1.0})
    latent = len(CODE_VARIANCES)
    with torch.no_grad():
        layer = vae.encoder.net[0]
        layer.weight.zero_()
        layer.weight[:latent] = A
        layer.bias[:latent] = torch.tensor(OFFSETS)
        scales = torch.tensor(SCALES, dtype=torch.float64) - MIN_SCALE  # softplus(raw) + MIN_SCALE = s
        layer.bias[latent:] = (scales + torch.log(-torch.expm1(-scales))).float()  # softplus^-1
    return vae, A


def test_kl_per_dimension_and_active_units_match_the_closed_form():
    """KL_j = mean_x (mu_j(x)^2 + s_j^2 - 1 - log s_j^2) / 2 under N(0, I), per data point, averaged
    over the data set (rtol 1e-5), and active units = #{j : Cov_x(mu_j(x)) > 0.01} = 2, from
    ``kl_per_dimension``, ``evaluate_elbo`` over uneven batches, and ``evaluate``."""
    vae, A = linear_encoder_vae()
    x = whitened_data()
    mu = x.double() @ A.double().T + torch.tensor(OFFSETS, dtype=torch.float64)
    s2 = torch.tensor(SCALES, dtype=torch.float64) ** 2
    per_point = 0.5 * (mu**2 + s2 - 1 - s2.log())  # (N, latent)
    expected = per_point.mean(0)

    torch.testing.assert_close(kl_per_dimension(vae, x).double(), per_point, rtol=1e-5, atol=1e-6)
    from_batches = evaluate_elbo(vae, [x[:300], x[300:301], x[301:]])
    full = evaluate(vae, x, num_samples=2, batch_size=128)
    for result in (from_batches, full):
        torch.testing.assert_close(torch.tensor(result["kl_per_dimension"], dtype=torch.float64), expected, rtol=1e-5, atol=0)
        assert result["kl"] == pytest.approx(expected.sum().item(), rel=1e-5)  # a normal guide: the closed-form KL
        assert result["active_units"] == 2
        assert result["num_examples"] == N
