"""The VAE as a pair of Pyro programs.

Generative model, for each data point in the ``"data"`` plate::

    z ~ p(z)                       site "z"  (the prior)
    x ~ p(x | decoder(z))          site "x"  (the likelihood, observed)

Amortized guide::

    z ~ N(loc(x), diag scale(x)^2) site "z"  (loc, scale = encoder(x); reparameterized)

``SVI(vae.model, vae.guide, optim, Trace_ELBO())`` then maximizes
ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z)). The model knows nothing of KL
weights: those are handlers wrapped around it from outside (``annealing``).
"""

import itertools
import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, pyro_method

from .likelihoods import LIKELIHOODS
from .nets import DECODERS, ENCODERS
from .priors import PRIORS
from .registry import UserError

# Each VAE gets its own Pyro name, so the names its parameters take in Pyro's global
# param store ("vae3.encoder$$$net.0.weight") never collide with another VAE's: two
# models in one process never share or overwrite each other's weights.
_instance_numbers = itertools.count()


class VAE(PyroModule):
    """A variational autoencoder whose ``model`` and ``guide`` are Pyro programs.

    Every component is given by a registry name, a table ``{"name": ..., options}``
    (``{"type": ...}`` for networks), or an already built module::

        VAE(data_shape=(1, 28, 28), latent_dim=16,
            encoder={"type": "mlp", "hidden": [256, 256]},
            likelihood={"name": "gaussian", "scale": 0.1}, prior="normal")
    """

    def __init__(
        self,
        data_shape,
        latent_dim=16,
        encoder="mlp",
        decoder="mlp",
        likelihood="bernoulli",
        prior="normal",
    ):
        super().__init__(name=f"vae{next(_instance_numbers)}")
        data_shape = (data_shape,) if isinstance(data_shape, int) else tuple(data_shape)
        if not isinstance(latent_dim, int) or isinstance(latent_dim, bool) or latent_dim < 1:
            raise UserError(f"model.latent_dim must be an integer >= 1, got {latent_dim!r}")
        self.data_shape = data_shape
        self.latent_dim = latent_dim
        self.likelihood = LIKELIHOODS.build(likelihood, "model.likelihood", data_shape=data_shape)
        self.prior = PRIORS.build(prior, "model.prior", latent_dim=latent_dim, data_shape=data_shape)
        self.encoder = ENCODERS.build(
            encoder, "model.encoder", data_shape=data_shape, latent_dim=latent_dim
        )
        self.decoder = DECODERS.build(
            decoder,
            "model.decoder",
            data_shape=data_shape,
            latent_dim=latent_dim,
            num_params=self.likelihood.num_params,
        )

    @property
    def has_standard_programs(self):
        """Whether ``model`` and ``guide`` are this class's own (a subclass may redefine them);
        only then may an estimator compute their loss without tracing them."""
        return type(self).model is VAE.model and type(self).guide is VAE.guide

    @property
    def num_features(self):
        """D, the number of numbers in one data point."""
        return math.prod(self.data_shape)

    @pyro_method
    def model(self, x):
        """p(z) p(x | z) for a minibatch ``x`` of shape ``(N, *data_shape)``."""
        prior = self.prior(self.encoder)
        decoder, likelihood = self.decoder, self.likelihood
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", prior)
            pyro.sample("x", likelihood(decoder(z), x), obs=x)

    @pyro_method
    def guide(self, x):
        """q(z | x) = N(loc(x), diag scale(x)^2), reparameterized."""
        encoder = self.encoder
        with pyro.plate("data", x.shape[0]):
            loc, scale = encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    @torch.no_grad()
    def sample(self, num_samples):
        """``num_samples`` draws z ~ p(z), shown as E[x | z] (the likelihood's mean)."""
        z = self.prior(self.encoder).sample((num_samples,))
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x):
        """E[x | z] at the guide's mean code z = loc(x)."""
        loc, _ = self.encoder(x)
        return self.likelihood.mean(self.decoder(loc))

    @torch.no_grad()
    def encode(self, x):
        """The guide's mean code E_q[z | x]."""
        return self.encoder(x)[0]
