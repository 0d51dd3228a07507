"""Kingma et al.'s (2014) semi-supervised M2 (`[model] kind = "m2"`), y observed where known and a latent otherwise:

```
y ~ Categorical(1/C)                   site "y" (observed on labeled data)
z ~ p(z)                               site "z"
x ~ p(x | decoder(z, y))               site "x" (observed)
guide: y ~ q(y | x) = Categorical(classifier(x))   only where y is not given,
                                                  infer={"enumerate": "parallel"}
       z ~ q(z | x, y)
```

On a labeled pair the ELBO is L(x, y) = E_q(z|x,y)[log p(x | y, z) + log p(y) + log p(z) - log q(z | x, y)];
on an unlabeled x, `TraceEnum_ELBO` sums y out exactly instead of sampling it:

    U(x) = sum_y q(y | x) L(x, y) + H(q(y | x)).

Kingma's objective adds the classifier's log-likelihood on the labeled data, which U(x) alone
would train only indirectly:

    J_alpha = sum_labeled L(x, y) + sum_unlabeled U(x) + alpha * E_labeled[log q(y | x)],  alpha = c N

(`losses.SemiSupervisedLoss`; N is the number of training points, labeled or not; c =
`objective.classification_weight`, 100 by default, 0.1 in the paper: docs/semi-supervised.md).

`model` and `guide` stay Pyro programs: `SVI(m2.model, m2.guide, optim, TraceEnum_ELBO(max_plate_nesting=1))`
trains M2 on `svi.step(x)` and `svi.step(x, y)` (without the classification term unless
added by hand). With `model.features`, M2 sits on a trained VAE's codes: M1+M2 (`m1m2`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import pyro_method

from ..losses import SemiSupervisedLoss
from ..objectives import kl_term
from ..registry import UserError
from .classifier import CLASSIFIERS
from .labeled import LabeledVAE
from .vae import MODEL_KINDS, refuse_components

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any

    from pyro.distributions import TorchDistribution
    from torch import nn

    from ..data import Data
    from ..objectives import Estimator
    from ..registry import Spec


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
        """`LabeledVAE`'s options plus the classifier q(y | x); `model.features` makes M1+M2
        (`m1m2.StackedM2`, `build.build_model`)."""
        return {**super().config_options(model), "classifier": model["classifier"]}

    @classmethod
    def refuse_features(cls, model: Mapping[str, Any]) -> None:
        """M2 takes `model.features` (M1+M2), not the gmvae's components."""
        refuse_components(model)

    def check_setup(self, config: Mapping[str, Any], data: Data, estimator: Estimator) -> None:
        """`LabeledVAE`'s checks, then M2's: a sum reduction, y summed out exactly by `enum`."""
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
        """-J_alpha (`losses.SemiSupervisedLoss`) with the `[objective]` section's weights."""
        return SemiSupervisedLoss(
            self, estimator, objective["classification_weight"], len(data.train), data.num_labeled(),
            features_per_term, objective["kl_weight_labels"],
        )

    def training_batches(self, data: Data, batch_size: int, epoch_seed: int, noise: torch.Generator | None,
                         device: str | torch.device, rank: int = 0, world_size: int = 1, skip: int = 0,
                         labeled_batch_size: int = 0) -> Iterator[Any]:
        """One epoch of unlabeled minibatches, each with a labeled one (`data.SemiSupervisedBatch`)."""
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
        """q(y | x) of data points x, as J_alpha's classification term scores the labels: `classifier_dist`."""
        return self.classifier_dist(x)

    # ---- the programs ----

    @pyro_method
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """p(y) p(z) p(x | y, z); y observed where given, else a latent (the guide enumerates it).

        y's site is marked for enumeration here too: where y is observed Pyro enumerates nothing
        (an observed site is never enumerated), but `TraceEnum_ELBO` then still finds a site
        configured for enumeration and does not warn that it found none, so one `SVI` with
        `TraceEnum_ELBO` trains both the labeled and the unlabeled steps silently."""
        x = self._check_batch(x)
        y = self._check_labels(y, x, required=False)
        with self.param_store(), pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", self.label_prior_dist(), obs=y, infer={"enumerate": "parallel"})
            z = pyro.sample("z", self.prior_dist())
            pyro.sample("x", self.likelihood_dist(z, y, x), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """q(y | x) (enumerated in parallel under `TraceEnum_ELBO`) where y is not given, then q(z | x, y)."""
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

        split as `reconstruction` = sum_y q(y | x) log p(x | y, z_y) and `kl` = the rest, negated
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

