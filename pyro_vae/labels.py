"""Labels: a conditional VAE and Kingma et al.'s (2014) semi-supervised M2, as Pyro programs.

Both take a class label y in {0, ..., C-1} beside the data point x; networks see y one-hot,
concatenated into their input.

**Conditional VAE** (``[model] kind = "cvae"``), y always observed::

    z ~ p(z)                               site "z"
    x ~ p(x | decoder(z, y))               site "x" (observed)
    guide: z ~ N(loc(x, y), scale(x, y)^2) site "z"

**M2** (``[model] kind = "m2"``), y observed where known and a latent otherwise::

    y ~ Categorical(1/C)                   site "y" (observed on labeled data)
    z ~ p(z)                               site "z"
    x ~ p(x | decoder(z, y))               site "x" (observed)
    guide: y ~ q(y | x) = Categorical(classifier(x))   only where y is not given,
                                                      infer={"enumerate": "parallel"}
           z ~ q(z | x, y)

On a labeled pair the ELBO is L(x, y) = E_q(z|x,y)[log p(x | y, z) + log p(y) + log p(z) - log q(z | x, y)];
on an unlabeled x, ``TraceEnum_ELBO`` sums y out exactly instead of sampling it:

    U(x) = sum_y q(y | x) L(x, y) + H(q(y | x)).

Kingma's objective adds the classifier's log-likelihood on the labeled data, which U(x) alone
would train only indirectly:

    J_alpha = sum_labeled L(x, y) + sum_unlabeled U(x) + alpha * E_labeled[log q(y | x)],  alpha = c N

(``SemiSupervisedLoss``; N is the number of training points, labeled or not; c =
``objective.classification_weight``, 100 by default, 0.1 in the paper: docs/semi-supervised.md).

**M1+M2** (``StackedM2``, ``model.features``): M2 on the codes z1 ~ q(z1 | x) of a trained,
frozen VAE, as one stacked Pyro program. ``model`` and
``guide`` stay Pyro programs: ``SVI(m2.model, m2.guide, optim, TraceEnum_ELBO(max_plate_nesting=1))``
trains M2 on ``svi.step(x)`` and ``svi.step(x, y)`` (without the classification term unless
added by hand).

These classes redefine ``model`` and ``guide``, so the library's estimators trace them (no
direct fast path). Their densities are still methods, written once: ``prior_dist()``,
``label_prior_dist()`` (M2), ``classifier_dist(x)`` (M2), ``likelihood_dist(z, y, x)``,
``guide_dist(x, y)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import pyro_method
from torch import nn
from torch.nn import functional as F

from .checks import integer, sizes
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .losses import LabeledNegativeELBO, SemiSupervisedLoss
from .model import LINK_HIDDEN, MODEL_KINDS, VAE, is_two_layer
from .nets import DECODERS, ENCODERS, mlp
from .objectives import kl_term, label_estimators
from .registry import Registry, UserError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any

    from pyro.distributions import TorchDistribution

    from .data import Data
    from .objectives import Estimator
    from .registry import Spec

CLASSIFIERS = Registry("classifier")


def one_hot(y, num_classes):
    """Integer labels of any shape -> float one-hot vectors, shape ``(*y.shape, num_classes)``."""
    return F.one_hot(y, num_classes).float()


# ---- networks: y one-hot, concatenated into the input ----


class ConditionalEncoder(nn.Module):
    """q(z | x, y)'s network: a registered encoder whose input carries y one-hot.

    An ``mlp`` encoder (or any encoder of flat data) sees ``[flatten(x), onehot(y)]``; any
    other encoder of images (``conv``) sees y as C constant extra image channels. ``x`` is
    ``(N, *data_shape)`` and ``y`` integer labels whose shape broadcasts against ``(N,)``:
    ``(N,)`` for a labeled batch, ``(C, 1)`` when ``TraceEnum_ELBO`` enumerates y, which gives
    the guide's ``num_params`` outputs with shape ``(C, N, num_params)`` (the encoder runs once
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
    """p(x | z, y)'s network: a registered decoder of the code ``[z, onehot(y)]``
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


@CLASSIFIERS.register("mlp")
class MLPClassifier(nn.Module):
    """Fully connected classifier: flatten, hidden layers, then the logits of q(y | x)."""

    context_arguments = ("data_shape", "num_classes")

    def __init__(self, data_shape, num_classes, hidden=(256, 256), activation="elu"):
        super().__init__()
        hidden = sizes(hidden, "model.classifier.hidden")
        self.net = mlp([math.prod(data_shape), *hidden, num_classes], activation)

    def forward(self, x):
        return self.net(x.flatten(1)).float()


# ---- the models ----


class LabeledVAE(VAE):
    """Base of the models with labels: a VAE whose encoder and decoder also see y (one-hot).

    Options as for :class:`~pyro_vae.model.VAE`, plus ``num_classes``. The prior must not be
    built from the encoder (``vamp``): q(z | x, y) has no single pseudo-input mixture.
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
        """``num_classes``; one latent layer with a diagonal Gaussian guide."""
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
        """The conditional negative ELBO of (x, y) pairs (``losses.LabeledNegativeELBO``)."""
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
        """p(z), event shape ``(latent_dim,)``."""
        return self.prior(None)

    # The labeled kinds' densities are conditioned on y as well: p(x | z, y), q(z | x, y) take one
    # argument more than VAE's (its callers are this class's own programs and losses).
    def likelihood_dist(self, z: torch.Tensor, y: torch.Tensor,  # type: ignore[override]
                        x: torch.Tensor | None = None) -> TorchDistribution:
        """p(x | z, y); z ``(..., latent_dim)`` and labels y broadcast against each other."""
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
        """``label`` repeated, or (None) every class in turn, sorted: with ``num_samples / C``
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
        """``num_samples`` draws z ~ p(z) shown as E[x | z, y]: y = ``label``, or every class in turn."""
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
        point, one z each: ``elbo``, ``reconstruction``, ``kl`` (closed form where it exists)."""
        y = self._check_labels(y, x)
        q = self.guide_dist(x, y)
        z = q.sample()
        reconstruction = self.likelihood_dist(z, y, x).log_prob(x)
        kl = kl_term(q, self.prior_dist(), z, analytic=True)
        return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}


@MODEL_KINDS.register("cvae")
class CVAE(LabeledVAE):
    """Conditional VAE: p(x | z, y) and q(z | x, y), y a class label, always observed."""

    @pyro_method
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """p(z) p(x | z, y) for a minibatch x ``(N, *data_shape)`` and its labels y ``(N,)``."""
        x = self._check_batch(x)
        y = self._check_labels(y, x)
        with self.param_store(), pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior_dist())
            pyro.sample("x", self.likelihood_dist(z, y, x), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """q(z | x, y), reparameterized."""
        x = self._check_batch(x)
        y = self._check_labels(y, x)
        with self.param_store(), pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.guide_dist(x, y))


@MODEL_KINDS.register("m2")
class M2(LabeledVAE):
    """Kingma et al.'s (2014) M2: p(y) p(z) p(x | y, z), guide q(y | x) q(z | x, y), y enumerated where unlabeled."""

    conditional = False
    classifies = True

    def __init__(self, data_shape: int | Sequence[int], latent_dim: int = 16, encoder: Spec = "mlp",
                 decoder: Spec = "mlp", likelihood: Spec = "bernoulli", prior: Spec = "normal",
                 num_classes: int = 10, classifier: Spec = "mlp", data_levels: int | None = None) -> None:
        super().__init__(data_shape, latent_dim, encoder, decoder, likelihood, prior, num_classes, data_levels)
        self.classifier = CLASSIFIERS.build(
            classifier, "model.classifier", data_shape=self.data_shape, num_classes=num_classes
        )

    # ---- a model kind's interface: unlabeled and labeled minibatches together ----

    @classmethod
    def config_options(cls, model: Mapping[str, Any]) -> dict[str, Any]:
        """``LabeledVAE``'s options plus the classifier q(y | x); ``model.features`` makes M1+M2."""
        return {**super().config_options(model), "classifier": model["classifier"]}

    @classmethod
    def refuse_features(cls, model: Mapping[str, Any]) -> None:
        """M2 takes ``model.features`` (M1+M2)."""

    @classmethod
    def from_config(cls, model: Mapping[str, Any], data_shape: int | Sequence[int], data_levels: int | None = None,
                    load_features: Callable[[str, int | Sequence[int]], VAE] | None = None) -> VAE:
        """M2, or M1+M2 (``StackedM2``) on the trained VAE ``load_features(model.features, data_shape)``."""
        if not model["features"]:
            return super().from_config(model, data_shape, data_levels, load_features)
        options = cls.config_options(model)
        if load_features is None:
            raise UserError("model.features names a run, and building M1+M2 needs a loader of runs (build.load_features)")
        features = load_features(model["features"], data_shape)
        return StackedM2(features, latent_dim=model["latent_dim"], encoder=model["encoder"], decoder=model["decoder"],
                         likelihood=model["likelihood"], prior=model["prior"], **options)

    def check_setup(self, config: Mapping[str, Any], data: Data, estimator: Estimator) -> None:
        """``LabeledVAE``'s checks, then M2's: a sum reduction, y summed out exactly by ``enum``."""
        super().check_setup(config, data, estimator)
        if config["objective"]["reduction"] == "mean":
            raise UserError(
                "objective.reduction = \"mean\" is not available for model.kind = \"m2\": per feature, the label's "
                "terms would need a weight of their own; use reduction = \"sum\" (and kl_weight for beta)"
            )
        if config["model"]["features"] and config["objective"]["kl_weight_labels"]:
            raise UserError("objective.kl_weight_labels = true would also weight M1+M2's site z1 (M2's likelihood "
                            "of the codes); use it without model.features")
        if estimator.registered_name != "enum":
            raise UserError(
                "model.kind = \"m2\" sums its label out exactly with objective.estimator = \"enum\" "
                "(TraceEnum_ELBO); set it"
            )

    def training_loss(self, estimator: Estimator, features_per_term: float, objective: Mapping[str, Any],
                      data: Data) -> nn.Module:
        """-J_alpha (``losses.SemiSupervisedLoss``) with the ``[objective]`` section's weights."""
        return SemiSupervisedLoss(
            self, estimator, objective["classification_weight"], len(data.train), data.num_labeled(),
            features_per_term, objective["kl_weight_labels"],
        )

    def training_batches(self, data: Data, batch_size: int, epoch_seed: int, noise: torch.Generator | None,
                         device: str | torch.device, rank: int = 0, world_size: int = 1, skip: int = 0,
                         labeled_batch_size: int = 0) -> Iterator[Any]:
        """One epoch of unlabeled minibatches, each with a labeled one (``data.SemiSupervisedBatch``)."""
        return data.semi_supervised_batches(batch_size, epoch_seed, noise, device, rank, world_size, skip=skip,
                                            labeled_batch_size=labeled_batch_size)

    def training_steps(self, data: Data, batch_size: int) -> int:
        return data.semi_supervised_steps(batch_size)

    # ---- the densities ----

    def label_prior_dist(self) -> TorchDistribution:
        """p(y), uniform over the C classes."""
        return dist.Categorical(logits=torch.zeros(self.num_classes, device=next(self.parameters()).device))

    def classifier_dist(self, x: torch.Tensor) -> TorchDistribution:
        """q(y | x) = Categorical(softmax(classifier(x)))."""
        return dist.Categorical(logits=self.classifier(x))

    def label_dist(self, x: torch.Tensor) -> TorchDistribution:
        """q(y | x) of data points x, as J_alpha's classification term scores the labels: ``classifier_dist``."""
        return self.classifier_dist(x)

    # ---- the programs ----

    @pyro_method
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """p(y) p(z) p(x | y, z); y observed where given, else a latent (the guide enumerates it).

        y's site is marked for enumeration here too: where y is observed Pyro enumerates nothing
        (an observed site is never enumerated), but ``TraceEnum_ELBO`` then still finds a site
        configured for enumeration and does not warn that it found none, so one ``SVI`` with
        ``TraceEnum_ELBO`` trains both the labeled and the unlabeled steps silently."""
        x = self._check_batch(x)
        y = self._check_labels(y, x, required=False)
        with self.param_store(), pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", self.label_prior_dist(), obs=y, infer={"enumerate": "parallel"})
            z = pyro.sample("z", self.prior_dist())
            pyro.sample("x", self.likelihood_dist(z, y, x), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """q(y | x) (enumerated in parallel under ``TraceEnum_ELBO``) where y is not given, then q(z | x, y)."""
        x = self._check_batch(x)
        y = self._check_labels(y, x, required=False)
        with self.param_store(), pyro.plate("data", x.shape[0]):
            if y is None:
                y = pyro.sample("y", self.classifier_dist(x), infer={"enumerate": "parallel"})
            pyro.sample("z", self.guide_dist(x, y))

    # ---- uses ----

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class under q(y | x)."""
        return self.classifier(x).argmax(-1)

    def labels_for(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """y where given, else the classifier's guess."""
        return self.classify(x) if y is None else self._check_labels(y, x)

    @torch.no_grad()
    def elbo_terms(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per data point, one z per (x, y) pair: with y given the labeled bound L(x, y) on log p(x, y);
        without, the unlabeled bound on log p(x) with y summed out exactly,

            U(x) = sum_y q(y | x) [log p(x | y, z_y) + log p(y) + log p(z_y) - log q(z_y | x, y)] + H(q(y | x)),

        split as ``reconstruction`` = sum_y q(y | x) log p(x | y, z_y) and ``kl`` = the rest, negated
        (KL of z in closed form where it exists, plus KL(q(y | x) || p(y)))."""
        if y is not None:
            y = self._check_labels(y, x)
            q = self.guide_dist(x, y)
            z = q.sample()
            reconstruction = self.likelihood_dist(z, y, x).log_prob(x)
            kl = kl_term(q, self.prior_dist(), z, analytic=True) - self.label_prior_dist().log_prob(y)
            return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}
        every = torch.arange(self.num_classes, device=x.device).unsqueeze(-1)  # (C, 1): y enumerated
        q_z = self.guide_dist(x, every)  # batch shape (C, N)
        z = q_z.sample()
        q_y = self.classifier_dist(x)
        probs = q_y.probs.T  # (C, N)
        reconstruction = (probs * self.likelihood_dist(z, every, x).log_prob(x)).sum(0)
        kl_z = (probs * kl_term(q_z, self.prior_dist(), z, analytic=True)).sum(0)
        kl_y = torch.distributions.kl_divergence(q_y, self.label_prior_dist().expand(q_y.batch_shape))
        kl = kl_z + kl_y
        return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}


class StackedM2(M2):
    """Kingma et al.'s (2014) M1+M2: M2 on the codes z1 of a trained, frozen VAE (M1), ``model.features``.

    One generative model, whose M1 half is fixed::

        y ~ p(y), z ~ p(z)                     sites "y", "z" (z: M2's z2)
        z1 ~ p(z1 | z, y) = likelihood(decoder(z, y))    site "z1" (``model.likelihood``: a continuous one)
        x ~ p(x | z1)                          site "x" (observed): M1's decoder and likelihood, frozen
        guide: z1 ~ q(z1 | x)                  M1's guide, frozen: a fresh draw every step (the paper's)
               y ~ q(y | z1)                   enumerated where not given
               z ~ q(z | z1, y)

    Its bound on log p(x) is M1's terms, log p(x | z1) - log q(z1 | x), whose gradients vanish
    (frozen), plus M2's bound with z1 in the place of x: training it is training M2 on codes
    drawn from q(z1 | x), and ``evaluate`` reports a bound on log p(x) of the images. The
    classifier sees M1's mean code E_q[z1 | x] (``classify``); ``sample`` and ``reconstruct``
    go through both decoders (z -> E[z1 | z, y] -> E[x | z1]). ``likelihood`` is the data's
    (M1's), ``code_likelihood`` M2's p(z1 | z, y).
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

    def train(self, mode=True):
        super().train(mode)
        self.features.eval()  # frozen: M1 stays as it was trained
        return self

    # ---- the densities: M2's on codes, M1's on data ----

    def likelihood_dist(self, z, y, x=None):
        """p(z1 | z, y); ``x`` here is the code z1 observed, if any."""
        return self.code_likelihood(self.decoder(z, y), x)

    def classifier_dist(self, codes: torch.Tensor) -> TorchDistribution:
        """q(y | z1), for codes of shape ``(..., code_dim)`` (the importance-sampled evaluation adds a particle dimension)."""
        logits = self.classifier(codes.reshape(-1, codes.shape[-1]))
        return dist.Categorical(logits=logits.view(*codes.shape[:-1], self.num_classes))

    def label_dist(self, x: torch.Tensor) -> TorchDistribution:
        """q(y | z1) at a draw z1 ~ q(z1 | x): J_alpha's classification term on a code, as M2 sees them."""
        return self.classifier_dist(self.features.guide_dist(x).sample())

    def guide_dist(self, codes, y):
        """q(z | z1, y), codes ``(..., code_dim)`` with labels of shape ``codes.shape[:-1]`` or
        broadcasting against its one batch dimension (enumerated y: ``(C, 1)``)."""
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
        """M2's ``elbo_terms`` on a draw z1 ~ q(z1 | x), plus M1's log p(x | z1) - log q(z1 | x): the
        stacked model's bound on log p(x) (on log p(x, y) with y), one draw of each latent.
        ``reconstruction`` = log p(x | z1); ``kl`` = the rest, negated."""
        q_z1 = self.features.guide_dist(x)
        z1 = q_z1.sample()
        upper = super().elbo_terms(z1, y)  # M2 with z1 in the place of x
        reconstruction = self.features.likelihood_dist(z1, x).log_prob(x)
        elbo = reconstruction - q_z1.log_prob(z1) + upper["elbo"]
        return {"elbo": elbo, "reconstruction": reconstruction, "kl": reconstruction - elbo}


# ---- the supervised baseline ----


def fit_classifier(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 1000, batch_size: int = 100,
                   lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """Fit a classifier network to the labeled pairs (x, y) alone: Adam on the mean cross-entropy,
    ``steps`` minibatches of ``batch_size`` drawn from a seeded shuffle. The baseline M2 is measured
    against (the same network as its q(y | x), without the unlabeled data). Returns ``classifier``."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(classifier.parameters(), lr)
    classifier.train()
    order, position = torch.randperm(len(x), generator=generator), 0
    for _ in range(steps):
        if position >= len(order):
            order, position = torch.randperm(len(x), generator=generator), 0
        index = order[position : position + batch_size]
        position += batch_size
        loss = F.cross_entropy(classifier(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return classifier.eval()
