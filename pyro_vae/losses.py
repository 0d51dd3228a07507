"""The training losses, one torch module per model family, all in one place.

Each is `forward(batch, kl_weight, kl_penalty)`: the estimator's loss of the model's
`model` and `guide` under that step's KL weight (and KL penalty), per data point (and per
feature under `reduction = "mean"`: `features_per_term` = D). The VAE and the estimator (which may
own a neural baseline) are submodules, so one optimizer, one checkpoint and
`DistributedDataParallel` all see every parameter. A model kind names its loss
(`VAE.training_loss`); the trainer never chooses.
"""

from __future__ import annotations

from torch import nn


class NegativeELBO(nn.Module):
    """The training loss as a torch module: `forward(x, kl_weight, kl_penalty)` is the estimator's
    loss for the VAE's model and guide under that step's KL weight (and KL penalty), per data point (and per
    feature under `reduction = "mean"`: `features_per_term` = D). The VAE and the estimator
    (which may own a neural baseline) are submodules, so one optimizer, one checkpoint and
    DistributedDataParallel all see every parameter."""

    def __init__(self, vae, estimator, features_per_term=1.0):
        super().__init__()
        self.vae, self.estimator, self.features_per_term = vae, estimator, features_per_term

    def forward(self, x, kl_weight=None, kl_penalty=None):
        loss = self.estimator.loss(self.vae.model, self.vae.guide, x, kl_weight=kl_weight, kl_penalty=kl_penalty)
        return loss / (len(x) * self.features_per_term)


class LabeledNegativeELBO(nn.Module):
    """The CVAE's training loss: `forward(batch, kl_weight)` with `batch` a `data.LabeledBatch`,
    the estimator's loss of model(x, y) and guide(x, y), per data point (and per feature: `features_per_term`)."""

    def __init__(self, vae, estimator, features_per_term=1.0):
        super().__init__()
        self.vae, self.estimator, self.features_per_term = vae, estimator, features_per_term

    def forward(self, batch, kl_weight=None, kl_penalty=None):
        loss = self.estimator.loss(self.vae.model, self.vae.guide, batch.x, kl_weight=kl_weight, kl_penalty=kl_penalty,
                                   y=batch.y)
        return loss / (len(batch) * self.features_per_term)


class SemiSupervisedLoss(nn.Module):
    """M2's training loss, -J_alpha per data point, on a `data.SemiSupervisedBatch`:

    ```
    -[ sum_unlabeled U(x) + s * sum_labeled (L(x, y) + (alpha / N_l) log q(y | x)) ] / (B_u + B_l)
    ```

    `alpha / N_l` is the weight of one labeled point's classification term (alpha =
    `classification_weight * N`, an expectation over the N_l labeled points in Kingma's
    J_alpha), and `s = batch.labeled_scale` corrects for labeled points drawn more often
    than once per epoch, so each step's loss is an unbiased estimate of J_alpha / steps.
    The KL weight scales the z terms; the label term only with `kl_weight_labels`.
    """

    def __init__(self, vae, estimator, classification_weight, num_train, num_labeled, features_per_term=1.0,
                 kl_weight_labels=False):
        super().__init__()
        self.vae, self.estimator, self.features_per_term = vae, estimator, features_per_term
        self.per_label_weight = classification_weight * num_train / max(num_labeled, 1)
        self.sites = None if kl_weight_labels else ("z",)

    def forward(self, batch, kl_weight=None, kl_penalty=None):
        vae, estimator = self.vae, self.estimator
        loss = estimator.loss(vae.model, vae.guide, batch.unlabeled, kl_weight=kl_weight, kl_penalty=kl_penalty,
                              sites=self.sites)
        labeled = batch.labeled
        if len(labeled):
            elbo = estimator.loss(vae.model, vae.guide, labeled.x, kl_weight=kl_weight, y=labeled.y, sites=self.sites)
            classification = -vae.label_dist(labeled.x).log_prob(labeled.y).sum()
            loss = loss + batch.labeled_scale * (elbo + self.per_label_weight * classification)
        return loss / (len(batch) * self.features_per_term)
