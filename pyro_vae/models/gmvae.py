"""The Gaussian-mixture VAE (`[model] kind = "gmvae"`): a discrete latent y, the component, and z given y.

Dilokthanakul et al. (2016), in Rui Shu's formulation:

```
y ~ Cat(pi)                            site "y" (one-hot; pi uniform or learned: model.component_prior)
z ~ N(mu_y, diag sigma_y^2)            site "z" (mu_y, sigma_y learned, one pair per component)
x ~ p(x | decoder(z))                  site "x" (observed; any likelihood)
guide: y ~ q(y | x)                    site "y", marked for parallel enumeration
       z ~ q(z | x, y)                 site "z", a diagonal Gaussian
```

It clusters without labels: argmax q(y | x) is a data point's cluster (`cluster`). The exact ELBO
sums y out,

    ELBO(x) = sum_y q(y | x) [ E_q(z|x,y) [log p(x | z) + log p(z | y) - log q(z | x, y)] + log pi_y - log q(y | x) ],

which `elbo_terms` computes (one z per y, the KL of z in closed form) and `evaluate` reports whatever
estimator trained the model. The estimators that can train it (`objective.estimator`) differ in
how they treat y: `enum` sums it out (`TraceEnum_ELBO`), `score` scores it with a baseline, `relaxed`
relaxes it to a Concrete / Gumbel-softmax vector (`objectives.discrete`); the others are refused.

The networks: the encoder (`model.encoder`) reads x once into `FEATURES` features h(x); q(y | x) is
a linear layer of them (`classifier`, q(y | x)'s own parameters), and q(z | x, y) a linear layer of
elu(h(x) + E y), E a learned embedding of the one-hot y. So the encoder runs once per data point and
only the embedding, one layer and the decoder see the K x N pairs (x, y) of enumeration, in one
batched pass: no loop over the components.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import pyro_method
from torch import nn
from torch.nn import functional as F

from ..checks import integer
from ..guides import GUIDES
from ..nets import ENCODERS
from ..objectives import ESTIMATORS, kl_term
from ..priors import DiagonalNormalMixture
from ..registry import UserError, listing
from .vae import LINK_HIDDEN, MODEL_KINDS, VAE, is_two_layer

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from pyro.distributions import TorchDistribution

    from ..data import Data
    from ..objectives import Estimator
    from ..registry import Spec

FEATURES = 256  # the encoder's features h(x), which q(y | x) and q(z | x, y) share
COMPONENT_PRIORS = ("uniform", "learned")


@MODEL_KINDS.register("gmvae")
class GMVAE(VAE):
    """Gaussian-mixture VAE: p(y) p(z | y) p(x | z), guide q(y | x) q(z | x, y); y a discrete latent.

    ```
    GMVAE(data_shape=(1, 28, 28), latent_dim=16, components=10, component_prior="uniform")
    ```
    """

    discrete_latents = ("y",)
    clusters = True
    default_estimator = "enum"  # y summed out exactly: no variance from y, and the true ELBO

    def __init__(self, data_shape: int | Sequence[int], latent_dim: int = 16, encoder: Spec = "mlp",
                 decoder: Spec = "mlp", likelihood: Spec = "bernoulli", prior: Spec = "normal", components: int = 10,
                 component_prior: str = "uniform", data_levels: int | None = None) -> None:
        if prior != "normal":
            raise UserError("model.kind = \"gmvae\" has its own prior, the mixture p(y) p(z | y) "
                            "(model.components, model.component_prior); leave model.prior = \"normal\"")
        data_shape = (data_shape,) if isinstance(data_shape, int) else tuple(data_shape)
        latent_dim = integer(latent_dim, "model.latent_dim", minimum=1)
        num_components = integer(components, "model.components", minimum=2)
        if component_prior not in COMPONENT_PRIORS:
            raise UserError(f"model.component_prior must be {listing(COMPONENT_PRIORS, quote=True)}, "
                            f"got {component_prior!r}")
        guide_family = GUIDES.build("normal", latent_dim=latent_dim)  # q(z | x, y): a diagonal Gaussian
        features = ENCODERS.build(encoder, "model.encoder", data_shape=data_shape, latent_dim=latent_dim,
                                  num_params=FEATURES)
        super().__init__(data_shape, latent_dim, encoder=features, decoder=decoder, likelihood=likelihood,
                         prior="normal", data_levels=data_levels, guide=guide_family)
        self.components, self.component_prior = num_components, component_prior
        self.classifier = nn.Linear(FEATURES, self.components)  # q(y | x)'s logits from h(x)
        self.embedding = nn.Linear(self.components, FEATURES, bias=False)  # E y
        self.head = nn.Linear(FEATURES, guide_family.num_params)  # q(z | x, y)'s parameters
        # p(z | y): means spread as N(0, I) draws (distinct, so the components can separate), scales 1
        self.component_loc = nn.Parameter(torch.randn(self.components, latent_dim))
        self.component_log_scale = nn.Parameter(torch.zeros(self.components, latent_dim))
        logits = torch.zeros(self.components)
        if component_prior == "learned":
            self.component_logits = nn.Parameter(logits)
        else:
            self.register_buffer("component_logits", logits)

    # ---- a model kind's interface ----

    @classmethod
    def config_options(cls, model: Mapping[str, Any]) -> dict[str, Any]:
        """`components` and `component_prior`; one latent layer, a diagonal Gaussian guide, and the
        prior the mixture itself (`model.prior` left at "normal")."""
        if GUIDES.split_spec(model["guide"], "model.guide")[0] != "normal" or is_two_layer(model["latent_dim"]):
            raise UserError("model.kind = \"gmvae\" has one latent layer with a diagonal Gaussian guide q(z | x, y); "
                            "use guide = \"normal\" and an integer latent_dim")
        if model["link_hidden"] != LINK_HIDDEN:
            raise UserError("model.link_hidden sets the links between two latent layers; "
                            "it needs model.latent_dim = [z1, z2] (and model.kind = \"vae\")")
        cls.refuse_features(model)
        return {"components": model["components"], "component_prior": model["component_prior"]}

    @classmethod
    def refuse_features(cls, model: Mapping[str, Any]) -> None:
        """`model.features` is M2's; the components are this kind's own."""
        if model["features"]:
            raise UserError("model.features (M1+M2: M2 on a trained VAE's codes) is for model.kind = \"m2\", "
                            "not 'gmvae'")

    def check_setup(self, config: Mapping[str, Any], data: Data, estimator: Estimator) -> None:
        """Refuse an estimator that cannot train y, a KL penalty, and JIT."""
        if not estimator.handles_discrete_latents:
            raise UserError(
                f"model.kind = \"gmvae\" has a discrete latent y, which estimator {estimator.registered_name!r} "
                f"cannot train; set objective.estimator = "
                f"{listing(ESTIMATORS.names(handles_discrete_latents=True), quote=True)} (enum: exact)"
            )
        objective = config["objective"]
        if objective["capacity"] or objective["free_bits"]:
            raise UserError("objective.capacity and objective.free_bits are for models without a discrete latent, "
                            "not model.kind = \"gmvae\"")
        if objective["jit"]:
            raise UserError("objective.jit = true is not available for model.kind = \"gmvae\"; set objective.jit = false")

    # ---- the densities ----

    def component_prior_dist(self) -> TorchDistribution:
        """p(y) = Cat(pi), one-hot."""
        return dist.OneHotCategorical(logits=self.component_logits)

    def component_dist(self, y: torch.Tensor) -> TorchDistribution:
        """p(z | y) = N(mu_y, diag sigma_y^2) for one-hot (or relaxed) y of shape `(..., K)`."""
        loc, log_scale = y @ self.component_loc, y @ self.component_log_scale
        return dist.Normal(loc, log_scale.exp()).to_event(1)

    def prior_dist(self) -> TorchDistribution:
        """p(z) = sum_y pi_y N(z; mu_y, diag sigma_y^2), the marginal (`prior_variances`, `sample`)."""
        return DiagonalNormalMixture(self.component_logits, self.component_loc, self.component_log_scale.exp())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """h(x), shape `(N, FEATURES)`: the encoder's output, shared by q(y | x) and q(z | x, y)."""
        return F.elu(self.encoder(x))

    def classifier_dist(self, x: torch.Tensor, h: torch.Tensor | None = None) -> TorchDistribution:
        """q(y | x), one-hot; `h` the features of x where the caller has them."""
        return dist.OneHotCategorical(logits=self.classifier(self.features(x) if h is None else h))

    def guide_dist(self, x: torch.Tensor, y: torch.Tensor,  # type: ignore[override]
                   h: torch.Tensor | None = None) -> TorchDistribution:
        """q(z | x, y) for one-hot y of shape `(..., K)` broadcasting against `(N, K)`: batch shape
        the broadcast one, `(K, N)` for y enumerated."""
        h = self.features(x) if h is None else h
        return self.guide_family(self.head(F.elu(h + self.embedding(y))))

    def likelihood_dist(self, z: torch.Tensor, x: torch.Tensor | None = None) -> TorchDistribution:
        """p(x | z) for z of shape `(..., latent_dim)`: the decoder sees every row in one pass."""
        params = self.decoder(z.reshape(-1, z.shape[-1]))
        return self.likelihood(params.reshape(*z.shape[:-1], *params.shape[1:]), x)

    # ---- the programs ----

    @pyro_method
    def model(self, x: torch.Tensor) -> None:
        """p(y) p(z | y) p(x | z)."""
        x = self._check_batch(x)
        with self.param_store(), pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", self.component_prior_dist(), infer={"enumerate": "parallel"})
            z = pyro.sample("z", self.component_dist(y))
            pyro.sample("x", self.likelihood_dist(z, x), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor) -> None:
        """q(y | x) (enumerated under `TraceEnum_ELBO`), then q(z | x, y), reparameterized."""
        x = self._check_batch(x)
        with self.param_store(), pyro.plate("data", x.shape[0]):
            h = self.features(x)
            y = pyro.sample("y", self.classifier_dist(x, h), infer={"enumerate": "parallel"})
            pyro.sample("z", self.guide_dist(x, y, h))

    def enumerated_loss(self, x: torch.Tensor) -> torch.Tensor:
        """-ELBO summed over the minibatch, y summed out and one z drawn per (x, y), shape `(K, N, d)`:
        what `TraceEnum_ELBO` computes for these programs, the same draw, value and gradients (tested),
        without tracing them (the `enum` estimator asks for it: `elbos.Enumerated.loss`)."""
        x = self._check_batch(x)
        h = self.features(x)
        log_q_y = torch.log_softmax(self.classifier(h), -1)  # (N, K)
        every = self._every_component(x.device)
        q_z = self.guide_dist(x, every, h)
        z = q_z.rsample()  # (K, N, d)
        log_w = self.likelihood_dist(z, x).log_prob(x) + self.component_dist(every).log_prob(z) - q_z.log_prob(z)
        log_pi = torch.log_softmax(self.component_logits, -1)
        q_y = log_q_y.exp()
        return -((q_y.T * log_w).sum() + (q_y * (log_pi - log_q_y)).sum())

    # ---- uses ----

    def _every_component(self, device: torch.device) -> torch.Tensor:
        return torch.eye(self.components, device=device).unsqueeze(1)  # (K, 1, K): y enumerated

    @torch.no_grad()
    def elbo_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The exact ELBO per data point, y summed out (see the module), one z per (x, y):
        `reconstruction` = sum_y q(y | x) log p(x | z_y) and `kl` = the rest, negated:
        sum_y q(y | x) KL(q(z | x, y) || p(z | y)) (closed form) + KL(q(y | x) || p(y))."""
        h = self.features(x)
        q_y = self.classifier_dist(x, h)
        every = self._every_component(x.device)
        q_z = self.guide_dist(x, every, h)  # batch shape (K, N)
        z = q_z.sample()
        probs = q_y.probs.T  # (K, N)
        reconstruction = (probs * self.likelihood_dist(z, x).log_prob(x)).sum(0)
        kl_z = (probs * kl_term(q_z, self.component_dist(every), z, analytic=True)).sum(0)
        log_pi = torch.log_softmax(self.component_logits, -1)
        kl_y = (q_y.probs * (q_y.logits - log_pi)).sum(-1)
        kl = kl_z + kl_y
        return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}

    @torch.no_grad()
    def cluster_probs(self, x: torch.Tensor) -> torch.Tensor:
        """q(y | x), shape `(N, K)`."""
        return self.classifier_dist(x).probs

    @torch.no_grad()
    def cluster(self, x: torch.Tensor) -> torch.Tensor:
        """Each data point's cluster, argmax_y q(y | x)."""
        return self.classifier(self.features(x)).argmax(-1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """E_q[z | x] = sum_y q(y | x) E_q[z | x, y]."""
        h = self.features(x)
        means = self.guide_dist(x, self._every_component(x.device), h).mean  # (K, N, d)
        return (self.classifier_dist(x, h).probs.T.unsqueeze(-1) * means).sum(0)

    @torch.no_grad()
    def sample(self, num_samples: int, component: int | None = None) -> torch.Tensor:
        """`num_samples` draws shown as E[x | z]: z ~ p(z), or z ~ p(z | y) for y = `component`."""
        if component is None:
            return super().sample(num_samples)
        if not isinstance(component, int) or not 0 <= component < self.components:
            raise UserError(f"--component must be an integer in 0..{self.components - 1}, got {component!r}")
        y = torch.zeros(self.components, device=self.component_loc.device)
        y[component] = 1
        z = self.component_dist(y).sample((num_samples,))
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def sample_by_component(self, per_component: int) -> torch.Tensor:
        """`per_component` draws of every component in turn: with that many columns, one row per component."""
        return torch.cat([self.sample(per_component, k) for k in range(self.components)])
