"""Kingma et al.'s (2014) M1+M2 (`StackedM2`, `[model] kind = "m2"` with `model.features`): M2 on
the codes z1 ~ q(z1 | x) of a trained, frozen VAE, as one stacked Pyro program."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import pyro_method

from ..checks import integer
from ..guides import GUIDES
from ..likelihoods import LIKELIHOODS
from ..registry import UserError
from .classifier import CLASSIFIERS
from .labeled import ConditionalDecoder, ConditionalEncoder
from .m2 import M2
from .vae import VAE

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from pyro.distributions import TorchDistribution


class StackedM2(M2):
    """Kingma et al.'s (2014) M1+M2: M2 on the codes z1 of a trained, frozen VAE (M1), `model.features`.

    One generative model, whose M1 half is fixed:

    ```
    y ~ p(y), z ~ p(z)                     sites "y", "z" (z: M2's z2)
    z1 ~ p(z1 | z, y) = likelihood(decoder(z, y))    site "z1" (`model.likelihood`: a continuous one)
    x ~ p(x | z1)                          site "x" (observed): M1's decoder and likelihood, frozen
    guide: z1 ~ q(z1 | x)                  M1's guide, frozen: a fresh draw every step (the paper's)
           y ~ q(y | z1)                   enumerated where not given
           z ~ q(z | z1, y)
    ```

    Its bound on log p(x) is M1's terms, log p(x | z1) - log q(z1 | x), whose gradients vanish
    (frozen), plus M2's bound with z1 in the place of x: training it is training M2 on codes
    drawn from q(z1 | x), and `evaluate` reports a bound on log p(x) of the images. The
    classifier sees M1's mean code E_q[z1 | x] (`classify`); `sample` and `reconstruct`
    go through both decoders (z -> E[z1 | z, y] -> E[x | z1]). `likelihood` is the data's
    (M1's), `code_likelihood` M2's p(z1 | z, y).
    """

    def __init__(self, features, latent_dim=16, encoder="mlp", decoder="mlp", likelihood="gaussian", prior="normal",
                 num_classes=10, classifier="mlp"):
        code_shape = (features.latent_dim,)
        latent_dim = integer(latent_dim, "model.latent_dim", minimum=1)
        num_classes = integer(num_classes, "model.num_classes", minimum=2)
        code_likelihood = LIKELIHOODS.build(likelihood, "model.likelihood", data_shape=code_shape)
        guide_family = GUIDES.build("normal", latent_dim=latent_dim)  # q(z | z1, y): a diagonal Gaussian
        VAE.__init__(  # not M2's: its networks see the codes z1, its data are M1's
            self,
            features.data_shape,
            latent_dim,
            encoder=ConditionalEncoder(encoder, code_shape, latent_dim, num_classes, guide_family.num_params),
            decoder=ConditionalDecoder(decoder, code_shape, latent_dim, num_classes, code_likelihood.num_params),
            likelihood=features.likelihood,
            prior=prior,
            guide=guide_family,
        )
        self.features = features.requires_grad_(False).eval()
        self.code_likelihood = code_likelihood
        self.code_shape, self.num_classes = code_shape, num_classes
        self.classifier = CLASSIFIERS.build(classifier, "model.classifier", data_shape=code_shape, num_classes=num_classes)
        if getattr(self.prior, "registered_name", None) == "vamp":
            raise UserError("model.prior = \"vamp\" is not available for model.kind = \"m2\"")

    @classmethod
    def from_config(cls, model: Mapping[str, Any], data_shape: int | Sequence[int], data_levels: int | None = None,
                    load_features: Callable[[str, int | Sequence[int]], VAE] | None = None) -> VAE:
        """M1+M2 on the trained VAE `load_features(model.features, data_shape)`, with M2's options."""
        options = cls.config_options(model)
        if load_features is None:
            raise UserError("model.features names a run, and building M1+M2 needs a loader of runs (build.load_features)")
        features = load_features(model["features"], data_shape)
        return StackedM2(features, latent_dim=model["latent_dim"], encoder=model["encoder"], decoder=model["decoder"],
                         likelihood=model["likelihood"], prior=model["prior"], **options)

    def train(self, mode=True):
        super().train(mode)
        self.features.eval()  # frozen: M1 stays as it was trained
        return self

    # ---- the densities: M2's on codes, M1's on data ----

    # Conditioned on y, as LabeledVAE's (whose signature these keep): one argument more than VAE's.
    def likelihood_dist(self, z: torch.Tensor, y: torch.Tensor,  # type: ignore[override]
                        x: torch.Tensor | None = None) -> TorchDistribution:
        """p(z1 | z, y); `x` here is the code z1 observed, if any."""
        return self.code_likelihood(self.decoder(z, y), x)

    def classifier_dist(self, codes: torch.Tensor) -> TorchDistribution:
        """q(y | z1), for codes of shape `(..., code_dim)` (the importance-sampled evaluation adds a particle dimension)."""
        logits = self.classifier(codes.reshape(-1, codes.shape[-1]))
        return dist.Categorical(logits=logits.view(*codes.shape[:-1], self.num_classes))

    def label_dist(self, x: torch.Tensor) -> TorchDistribution:
        """q(y | z1) at a draw z1 ~ q(z1 | x): J_alpha's classification term on a code, as M2 sees them."""
        return self.classifier_dist(self.features.guide_dist(x).sample())

    def guide_dist(self, codes: torch.Tensor, y: torch.Tensor) -> TorchDistribution:  # type: ignore[override]
        """q(z | z1, y), codes `(..., code_dim)` with labels of shape `codes.shape[:-1]` or
        broadcasting against its one batch dimension (enumerated y: `(C, 1)`)."""
        if codes.dim() > 2:  # extra batch dimensions (particles): flatten them for the networks
            batch = codes.shape[:-1]
            params = self.encoder(codes.reshape(-1, codes.shape[-1]), y.expand(batch).reshape(-1))
            return self.guide_family(params.view(*batch, -1))
        return self.guide_family(self.encoder(codes, y))

    # ---- the programs ----

    @pyro_method
    def model(self, x, y=None):
        """p(y) p(z) p(z1 | z, y) p(x | z1), x observed, y where given."""
        x = self._check_batch(x)
        y = self._check_labels(y, x, required=False)
        with self.param_store(), pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", self.label_prior_dist(), obs=y)
            z = pyro.sample("z", self.prior_dist())
            z1 = pyro.sample("z1", self.likelihood_dist(z, y))
            pyro.sample("x", self.features.likelihood_dist(z1, x), obs=x)

    @pyro_method
    def guide(self, x, y=None):
        """q(z1 | x) (M1's), then q(y | z1) (enumerated where y is not given) and q(z | z1, y)."""
        x = self._check_batch(x)
        y = self._check_labels(y, x, required=False)
        with self.param_store(), pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", self.features.guide_dist(x))
            if y is None:
                y = pyro.sample("y", self.classifier_dist(z1), infer={"enumerate": "parallel"})
            pyro.sample("z", self.guide_dist(z1, y))

    # ---- uses: images in, images out ----

    @torch.no_grad()
    def codes(self, x):
        """M1's mean code E_q[z1 | x]: what the classifier and the other deterministic uses see."""
        return self.features.encode(x)

    @torch.no_grad()
    def classify(self, x):
        return self.classifier(self.codes(x)).argmax(-1)

    @torch.no_grad()
    def encode(self, x, y=None):
        """M2's mean code E_q[z | z1, y] at z1 = E_q[z1 | x]."""
        return self.guide_dist(self.codes(x), self.labels_for(x, y)).mean

    @torch.no_grad()
    def decode(self, z, y):
        """E[x | z1] at z1 = E[z1 | z, y]: through both decoders."""
        return self.features.likelihood.mean(self.features.decoder(self.code_likelihood.mean(self.decoder(z, y))))

    @torch.no_grad()
    def elbo_terms(self, x, y=None):
        """M2's `elbo_terms` on a draw z1 ~ q(z1 | x), plus M1's log p(x | z1) - log q(z1 | x): the
        stacked model's bound on log p(x) (on log p(x, y) with y), one draw of each latent.
        `reconstruction` = log p(x | z1); `kl` = the rest, negated."""
        q_z1 = self.features.guide_dist(x)
        z1 = q_z1.sample()
        m2_terms = super().elbo_terms(z1, y)  # M2 with z1 in the place of x
        reconstruction = self.features.likelihood_dist(z1, x).log_prob(x)
        elbo = reconstruction - q_z1.log_prob(z1) + m2_terms["elbo"]
        return {"elbo": elbo, "reconstruction": reconstruction, "kl": reconstruction - elbo}

