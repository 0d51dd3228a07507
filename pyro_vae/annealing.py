"""Weighting the KL term from outside the model: a handler on the latent sites.

The beta-weighted objective (Higgins et al. 2017)

    L_beta(x) = E_q[log p(x | z)] - beta * KL(q(z | x) || p(z))

is obtained without touching the model by scaling the log-densities of the
*unobserved* sample sites (``"z"``) by beta in both model and guide: the
Monte Carlo KL term ``log q(z | x) - log p(z)`` is then multiplied by beta,
while the observed site ``"x"`` is never scaled. ``TraceMeanField_ELBO`` reads the
scale of the guide's site for its analytic KL, which this handler sets too.
"""

from pyro.poutine.messenger import Messenger


class ScaleLatents(Messenger):
    """Multiply the log-probability of every unobserved sample site by ``weight``.

    ``weight`` is a number, a tensor, or a zero-argument callable read at every
    site (so a schedule can change it between steps without rebuilding anything).
    """

    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def current_weight(self):
        return self.weight() if callable(self.weight) else self.weight

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.current_weight() * msg["scale"]


def kl_scaled(fn, weight):
    """``fn`` (a model or guide) with its latent sites' log-densities scaled by ``weight``.

    Use the same weight for model and guide::

        SVI(kl_scaled(vae.model, beta), kl_scaled(vae.guide, beta), optim, Trace_ELBO())
    """
    return ScaleLatents(weight)(fn)
