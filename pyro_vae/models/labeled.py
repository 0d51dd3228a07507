"""The models with labels: their base class `LabeledVAE` and its networks, which see y one-hot.

The kinds built on it (`conditional`: the CVAE, `m2`: M2, `m1m2`: M1+M2) take a class label
y in {0, ..., C-1} beside the data point x; networks see y one-hot, concatenated into their input.

These classes redefine `model` and `guide`, so the library's estimators trace them (no
direct fast path). Their densities are still methods, written once: `prior_dist()`,
`label_prior_dist()` (M2), `classifier_dist(x)` (M2), `likelihood_dist(z, y, x)`,
`guide_dist(x, y)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from ..checks import integer
from ..guides import GUIDES
from ..likelihoods import LIKELIHOODS
from ..losses import LabeledNegativeELBO
from ..nets import DECODERS, ENCODERS
from ..objectives import kl_term, label_estimators
from ..registry import UserError
from .vae import LINK_HIDDEN, VAE, is_two_layer

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any

    from pyro.distributions import TorchDistribution

    from ..data import Data
    from ..objectives import Estimator
    from ..registry import Spec


def one_hot(y, num_classes):
    """Integer labels of any shape -> float one-hot vectors, shape `(*y.shape, num_classes)`."""
    return F.one_hot(y, num_classes).float()



# ---- networks: y one-hot, concatenated into the input ----


class ConditionalEncoder(nn.Module):
    """q(z | x, y)'s network: a registered encoder whose input carries y one-hot.

    An `mlp` encoder (or any encoder of flat data) sees `[flatten(x), onehot(y)]`; any
    other encoder of images (`conv`) sees y as C constant extra image channels. `x` is
    `(N, *data_shape)` and `y` integer labels whose shape broadcasts against `(N,)`:
    `(N,)` for a labeled batch, `(C, 1)` when `TraceEnum_ELBO` enumerates y, which gives
    the guide's `num_params` outputs with shape `(C, N, num_params)` (the encoder runs once
    per pair).
    """

    def __init__(self, spec, data_shape, latent_dim, num_classes, num_params):
        super().__init__()
        name = ENCODERS.split_spec(spec, "model.encoder")[0] if isinstance(spec, (str, dict)) else None
        self.data_shape, self.num_classes = tuple(data_shape), num_classes
        self.as_channels = len(data_shape) == 3 and name != "mlp"
        if self.as_channels:
            input_shape = (data_shape[0] + num_classes, *data_shape[1:])
        else:
            input_shape = (math.prod(data_shape) + num_classes,)
        self.net = ENCODERS.build(spec, "model.encoder", data_shape=input_shape, latent_dim=latent_dim,
                                  num_params=num_params)

    def forward(self, x, y):
        y = one_hot(y, self.num_classes)
        batch = torch.broadcast_shapes(x.shape[:1], y.shape[:-1])
        if self.as_channels:
            planes = y[..., None, None].expand(*batch, self.num_classes, *self.data_shape[1:])
            inputs = torch.cat([x.expand(*batch, *self.data_shape), planes], dim=-3)
        else:
            flat = x.flatten(1)
            inputs = torch.cat([flat.expand(*batch, flat.shape[-1]), y.expand(*batch, self.num_classes)], -1)
        # registered encoders take one batch dimension
        return self.net(inputs.reshape(-1, *inputs.shape[len(batch):])).view(*batch, -1)


class ConditionalDecoder(nn.Module):
    """p(x | z, y)'s network: a registered decoder of the code `[z, onehot(y)]`
    (z and y broadcast against each other's batch dimensions)."""

    def __init__(self, spec, data_shape, latent_dim, num_classes, num_params):
        super().__init__()
        self.num_classes = num_classes
        self.net = DECODERS.build(
            spec, "model.decoder", data_shape=data_shape, latent_dim=latent_dim + num_classes, num_params=num_params
        )

    def forward(self, z, y):
        y = one_hot(y, self.num_classes)
        batch = torch.broadcast_shapes(z.shape[:-1], y.shape[:-1])
        return self.net(torch.cat([z.expand(*batch, z.shape[-1]), y.expand(*batch, self.num_classes)], -1))


# ---- the base of the models with labels ----


class LabeledVAE(VAE):
    """Base of the models with labels: a VAE whose encoder and decoder also see y (one-hot).

    Options as for `VAE`, plus `num_classes`. The prior must not be
    built from the encoder (`vamp`): q(z | x, y) has no single pseudo-input mixture.
    """

    takes_labels = True  # what the trainer feeds it: (x, y) pairs
    conditional = True  # whether its ELBO is conditional on y (a CVAE's is; M2's U(x) is not)

    def __init__(self, data_shape: int | Sequence[int], latent_dim: int = 16, encoder: Spec = "mlp",
                 decoder: Spec = "mlp", likelihood: Spec = "bernoulli", prior: Spec = "normal",
                 num_classes: int = 10, data_levels: int | None = None) -> None:
        data_shape = (data_shape,) if isinstance(data_shape, int) else tuple(data_shape)
        latent_dim = integer(latent_dim, "model.latent_dim", minimum=1)
        num_classes = integer(num_classes, "model.num_classes", minimum=2)
        likelihood = LIKELIHOODS.build(likelihood, "model.likelihood", data_shape=data_shape, data_levels=data_levels)
        guide_family = GUIDES.build("normal", latent_dim=latent_dim)  # q(z | x, y): a diagonal Gaussian
        super().__init__(
            data_shape,
            latent_dim,
            encoder=ConditionalEncoder(encoder, data_shape, latent_dim, num_classes, guide_family.num_params),
            decoder=ConditionalDecoder(decoder, data_shape, latent_dim, num_classes, likelihood.num_params),
            likelihood=likelihood,
            prior=prior,
            guide=guide_family,
        )
        self.num_classes = num_classes
        if getattr(self.prior, "registered_name", None) == "vamp":
            raise UserError(
                f"model.prior = \"vamp\" is built from an unconditional encoder q(z | x); it is not available "
                f"for model.kind = {self.kind!r}"
            )

    # ---- a model kind's interface ----

    @classmethod
    def config_options(cls, model: Mapping[str, Any]) -> dict[str, Any]:
        """`num_classes`; one latent layer with a diagonal Gaussian guide."""
        if GUIDES.split_spec(model["guide"], "model.guide")[0] != "normal" or is_two_layer(model["latent_dim"]):
            raise UserError(f"model.kind = {model['kind']!r} has one latent layer with a diagonal Gaussian guide; "
                            "use guide = \"normal\" and an integer latent_dim")
        if model["link_hidden"] != LINK_HIDDEN:
            raise UserError("model.link_hidden sets the links between two latent layers; "
                            "it needs model.latent_dim = [z1, z2] (and model.kind = \"vae\")")
        cls.refuse_features(model)
        return {"num_classes": model["num_classes"]}

    def check_setup(self, config: Mapping[str, Any], data: Data, estimator: Estimator) -> None:
        """Refuse, in one line, data without labels, or an estimator or JIT that cannot serve a model with labels."""
        kind = self.kind
        data.check_labels(f"model.kind = {kind!r}", self.num_classes)
        if not estimator.supports_labels:
            raise UserError(f"objective.estimator = {estimator.registered_name!r} with model.kind = {kind!r}: "
                            f"{label_estimators()}")
        if config["objective"]["jit"]:
            raise UserError(f"objective.jit = true is not available for model.kind = {kind!r}; set objective.jit = false")

    def training_loss(self, estimator: Estimator, features_per_term: float, objective: Mapping[str, Any],
                      data: Data) -> nn.Module:
        """The conditional negative ELBO of (x, y) pairs (`losses.LabeledNegativeELBO`)."""
        return LabeledNegativeELBO(self, estimator, features_per_term)

    def training_batches(self, data: Data, batch_size: int, epoch_seed: int, noise: torch.Generator | None,
                         device: str | torch.device, rank: int = 0, world_size: int = 1, skip: int = 0,
                         labeled_batch_size: int = 0) -> Iterator[Any]:
        """One epoch of (x, y) pairs of the labeled training examples."""
        return data.labeled_batches(batch_size, epoch_seed, noise, device, rank, world_size, skip=skip)

    def training_steps(self, data: Data, batch_size: int) -> int:
        return math.ceil(data.num_labeled() / batch_size)

    # ---- the densities, written once ----

    def prior_dist(self) -> TorchDistribution:
        """p(z), event shape `(latent_dim,)`."""
        return self.prior(None)

    # The labeled kinds' densities are conditioned on y as well: p(x | z, y), q(z | x, y) take one
    # argument more than VAE's (its callers are this class's own programs and losses).
    def likelihood_dist(self, z: torch.Tensor, y: torch.Tensor,  # type: ignore[override]
                        x: torch.Tensor | None = None) -> TorchDistribution:
        """p(x | z, y); z `(..., latent_dim)` and labels y broadcast against each other."""
        return self.likelihood(self.decoder(z, y), x)

    def guide_dist(self, x: torch.Tensor, y: torch.Tensor) -> TorchDistribution:  # type: ignore[override]
        """q(z | x, y) = N(loc(x, y), diag scale(x, y)^2)."""
        return self.guide_family(self.encoder(x, y))

    # ---- checks ----

    def _check_labels(self, y, x, required=True):
        if y is None:
            if required:
                raise UserError(f"model.kind = {self.kind!r} needs labels: call model(x, y) and guide(x, y)")
            return None
        if not torch.is_tensor(y) or y.shape != x.shape[:1] or y.dtype != torch.long:
            raise UserError(f"labels y must be a long tensor of shape ({len(x)},), got {y!r:.80}")
        if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
            raise UserError(
                f"labels must lie in 0..{self.num_classes - 1} (model.num_classes = {self.num_classes}), "
                f"got {int(y.min())}..{int(y.max())}"
            )
        return y

    # ---- uses of a trained model ----

    def sample_labels(self, num_samples: int, label: int | None = None) -> torch.Tensor:
        """`label` repeated, or (None) every class in turn, sorted: with `num_samples / C`
        columns a grid shows one row per class."""
        if label is None:
            return torch.arange(num_samples) * self.num_classes // num_samples
        if not isinstance(label, int) or not 0 <= label < self.num_classes:
            raise UserError(f"--label must be an integer in 0..{self.num_classes - 1}, got {label!r}")
        return torch.full((num_samples,), label, dtype=torch.long)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """E[x | z, y], the likelihood's mean."""
        return self.likelihood.mean(self.decoder(z, y))

    @torch.no_grad()
    def sample(self, num_samples: int, label: int | None = None) -> torch.Tensor:
        """`num_samples` draws z ~ p(z) shown as E[x | z, y]: y = `label`, or every class in turn."""
        device = next(self.parameters()).device
        y = self.sample_labels(num_samples, label).to(device)
        z = self.prior_dist().sample((num_samples,))
        return self.decode(z, y)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x | z, y] at the guide's mean code."""
        y = self.labels_for(x, y)
        return self.decode(self.encode(x, y), y)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The guide's mean code E_q[z | x, y]."""
        return self.guide_dist(x, self.labels_for(x, y)).mean

    def labels_for(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self._check_labels(y, x)

    @torch.no_grad()
    def elbo_terms(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The conditional ELBO log p(x | y) >= E_q[log p(x | z, y)] - KL(q(z | x, y) || p(z)) per data
        point, one z each: `elbo`, `reconstruction`, `kl` (closed form where it exists)."""
        y = self._check_labels(y, x)
        q = self.guide_dist(x, y)
        z = q.sample()
        reconstruction = self.likelihood_dist(z, y, x).log_prob(x)
        kl = kl_term(q, self.prior_dist(), z, analytic=True)
        return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}

