"""A VAE with two stochastic layers (`model.latent_dim = [z1, z2]`).

Generative model, for each data point in the `"data"` plate:

```
z2 ~ p(z2)                          site "z2"  (any prior: normal, mog, vamp, flow, ...)
z1 ~ N(mu(z2), diag s(z2)^2)        site "z1"  (the prior link, an MLP of z2)
x  ~ p(x | decoder(z1))             site "x"   (the likelihood, observed)
```

Guide, top-down (Tomczak & Welling 2018's HVAE):

```
z2 ~ N(encoder_top(x))                                  site "z2"
z1 ~ N(encoder_bottom(x) + guide_link(z2))              site "z1"
```

Why top-down, q(z2 | x) q(z1 | x, z2), rather than Burda et al.'s bottom-up
q(z1 | x) q(z2 | z1): the VampPrior p(z2) = (1/K) sum_k q(z2 | u_k) needs q(z2 | x) in
closed form, which the bottom-up guide has only as an integral over z1; and q(z1 | .)
here sees both x and z2, so it can follow the posterior's dependence on both.

The ELBO is E_q[log p(x | z1)] - E_q[KL(q(z2 | x) || p(z2))] - E_q[KL(q(z1 | x, z2) || p(z1 | z2))].
Both latent sites are unobserved sample sites of one plate, so every estimator, the KL
weight (`ScaleLatents` scales every latent site) and the importance-sampled
log-likelihood treat them as one latent variable: the particle estimators sum their
log-densities. The programs are this class's own, not `VAE`'s, so the direct loss and
the direct importance weights never apply (`has_standard_programs` is False): every
path traces them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import pyro_method

from ..checks import latent_dims, sizes
from ..guides import GUIDES, gaussian_parameters
from ..likelihoods import LIKELIHOODS
from ..nets import DECODERS, ENCODERS, mlp
from ..priors import PRIORS
from ..registry import UserError
from .vae import LINK_HIDDEN, VAE, is_two_layer

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from pyro.distributions import TorchDistribution

    from ..registry import Spec

LINK_ACTIVATION = "elu"


class HierarchicalVAE(VAE):
    """A VAE with latent layers z1 (next to x) and z2 (on top), sites "z1" and "z2".

    `latent_dim = [z1, z2]`; `encoder`, `decoder`, `likelihood` and `prior` are
    specs as for `VAE` (the prior sits on z2; the encoder spec builds both the
    x-networks of the guide). `link_hidden` are the hidden widths of the two links from
    z2 (p(z1 | z2) and the guide's z2 -> z1 term); `[]` makes them linear. The guide
    is diagonal Gaussian in both layers: `guide` must be `"normal"`.

    It shares `VAE`'s plumbing (its start, `VAE._start`: its own param store; the batch check)
    but builds its own components, so `VAE.__init__` is not run.
    """

    @classmethod
    def config_options(cls, model: Mapping[str, Any]) -> dict[str, Any]:
        """`VAE`'s options plus `link_hidden`, the widths of the links between the two layers."""
        cls.refuse_features(model)
        return {"guide": model["guide"], "link_hidden": model["link_hidden"]}

    def __init__(
        self,
        data_shape: int | Sequence[int],
        latent_dim: Sequence[int] = (32, 32),
        encoder: Spec = "mlp",
        decoder: Spec = "mlp",
        likelihood: Spec = "bernoulli",
        prior: Spec = "normal",
        guide: Spec = "normal",
        link_hidden: Sequence[int] = tuple(LINK_HIDDEN),
        data_levels: int | None = None,
    ) -> None:
        data_shape = self._start(data_shape)
        self.latent_dim = latent_dims(latent_dim, "model.latent_dim")
        if not is_two_layer(self.latent_dim):
            raise UserError(f"a two-layer model needs model.latent_dim = [z1, z2], got {latent_dim!r}")
        bottom, top = self.latent_dim
        if GUIDES.split_spec(guide, "model.guide")[0] != "normal":
            raise UserError("a two-layer model (model.latent_dim = [z1, z2]) has diagonal Gaussian guides; "
                            "use guide = \"normal\"")
        link_hidden = sizes(link_hidden, "link_hidden")
        self.likelihood = LIKELIHOODS.build(likelihood, "model.likelihood", data_shape=data_shape, data_levels=data_levels)
        self.prior = PRIORS.build(prior, "model.prior", latent_dim=top, data_shape=data_shape)
        self.guide_family = GUIDES.build("normal", latent_dim=top)  # q(z2 | x), which a VampPrior is built from
        self.encoder = ENCODERS.build(
            encoder, "model.encoder", data_shape=data_shape, latent_dim=top, num_params=2 * top
        )
        self.encoder_bottom = ENCODERS.build(
            encoder, "model.encoder", data_shape=data_shape, latent_dim=bottom, num_params=2 * bottom
        )
        self.guide_link = mlp([top, *link_hidden, 2 * bottom], LINK_ACTIVATION)
        self.prior_link = mlp([top, *link_hidden, 2 * bottom], LINK_ACTIVATION)
        self.decoder = DECODERS.build(
            decoder, "model.decoder", data_shape=data_shape, latent_dim=bottom,
            num_params=self.likelihood.num_params,
        )

    # ---- the densities, written once ----

    def prior_dist(self) -> TorchDistribution:
        """p(z2), event shape `(z2,)` (a VampPrior is built from `guide_dist`, q(z2 | x))."""
        return self.prior(self.guide_dist)

    def conditional_prior_dist(self, z2: torch.Tensor) -> TorchDistribution:
        """p(z1 | z2) = N(mu(z2), diag s(z2)^2)."""
        loc, scale = gaussian_parameters(self.prior_link(z2))
        return dist.Normal(loc, scale).to_event(1)

    def guide_dist(self, x: torch.Tensor) -> TorchDistribution:
        """q(z2 | x), the top layer's guide."""
        return self.guide_family(self.encoder(x))

    def bottom_guide_dist(self, x: torch.Tensor, z2: torch.Tensor) -> TorchDistribution:
        """q(z1 | x, z2) = N(loc, diag scale^2) from encoder_bottom(x) + guide_link(z2)."""
        loc, scale = gaussian_parameters(self.encoder_bottom(x) + self.guide_link(z2))
        return dist.Normal(loc, scale).to_event(1)

    # ---- the programs ----

    @pyro_method
    def model(self, x: torch.Tensor) -> None:
        """p(z2) p(z1 | z2) p(x | z1) for a minibatch `x` of shape `(N, *data_shape)`."""
        x = self._check_batch(x)
        with self.param_store(), pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", self.prior_dist())
            z1 = pyro.sample("z1", self.conditional_prior_dist(z2))
            pyro.sample("x", self.likelihood_dist(z1, x), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor) -> None:
        """q(z2 | x) q(z1 | x, z2), reparameterized."""
        x = self._check_batch(x)
        with self.param_store(), pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", self.guide_dist(x))
            pyro.sample("z1", self.bottom_guide_dist(x, z2))

    # ---- uses of a trained model ----

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """`num_samples` draws z2 ~ p(z2), z1 ~ p(z1 | z2), shown as E[x | z1]."""
        return self.likelihood.mean(self.decoder(self.sample_latents(num_samples)["z1"]))

    @torch.no_grad()
    def prior_variances(self, num_samples: int) -> dict[str, torch.Tensor]:
        """{site: Var_p per dimension}, from `num_samples` ancestral draws (z1's marginal has no closed form)."""
        return {site: z.var(0) for site, z in self.sample_latents(num_samples).items()}

    @torch.no_grad()
    def sample_latents(self, num_samples: int) -> dict[str, torch.Tensor]:
        """{"z1": ..., "z2": ...}: ancestral draws z2 ~ p(z2), z1 ~ p(z1 | z2)."""
        z2 = self.prior_dist().sample((num_samples,))
        return {"z1": self.conditional_prior_dist(z2).sample(), "z2": z2}

    # Codes: E_q[z2 | x] is the top guide's mean; E_q[z1 | x] = E_{q(z2 | x)} loc(x, z2) has no
    # closed form and is averaged over this many draws of z2.
    code_samples = 64

    @torch.no_grad()
    def encode_layers(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"z1": E_q[z1 | x], "z2": E_q[z2 | x]}, E_q[z1 | x] averaged over draws of z2."""
        q2 = self.guide_dist(x)
        z2 = q2.sample((self.code_samples,))
        return {"z1": self.bottom_guide_dist(x, z2).mean.mean(0), "z2": q2.mean}

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """E_q[z1 | x], the code the decoder reads."""
        return self.encode_layers(x)["z1"]

