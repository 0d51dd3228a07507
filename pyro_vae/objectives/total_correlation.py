"""The base of the estimators that penalize the total correlation of the codes (`tcvae`: beta-TCVAE,
`factorvae`: FactorVAE), which split the KL term (`aggregate`).

Both are estimators (`objective.estimator = { name = "tcvae", beta = 6.0 }`): the KL weight
(`objective.kl_weight`) multiplies their KL terms as it does the ELBO's; capacity and free bits
are other KL terms and are refused. Their loss is not the ELBO, so the trainer's true ELBO,
measured every epoch (metrics.csv), is what tells how good a density model they train.
Both need the library's own VAE (`model.kind = "vae"`, one latent layer, a guide that
factorizes over dimensions, e.g. `normal`).
"""

from ..registry import UserError
from .estimators import Estimator
from .log_weights import standard_vae


def _own_vae(model, guide, name):
    vae = standard_vae(model, guide)
    if vae is None:
        raise UserError(f"estimator {name!r} needs the library's own VAE programs (model.kind = \"vae\", "
                        "one latent layer) run under no other handler")
    return vae


class TotalCorrelationEstimator(Estimator):
    """Base: the library's own VAE only; capacity, free bits, labels and JIT refused; the loss is not the ELBO."""

    reports_elbo = False
    context_arguments = (*Estimator.context_arguments, "dataset_size")

    def differentiable_loss(self, model, guide, x):
        raise UserError(f"estimator {self.registered_name!r} needs the library's own VAE programs "
                        "(model.kind = \"vae\", one latent layer) run under no other handler")

    def encoded(self, model, guide, x, kl_weight, kl_penalty, y):
        """What both losses start from, after refusing what they cannot take: the library's VAE,
        q(z | x), one reparameterized draw z ~ q, and the step's KL weight (a schedule read now)."""
        if kl_penalty is not None:
            self.check_kl_penalty(kl_penalty.name)
        if y is not None:
            raise UserError(f"estimator {self.registered_name!r} is for model.kind = \"vae\"")
        if callable(kl_weight):
            kl_weight = kl_weight()
        vae = _own_vae(model, guide, self.registered_name)
        q = vae.guide_dist(x)
        return vae, q, q.rsample(), kl_weight
