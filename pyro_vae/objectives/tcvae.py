"""`tcvae` (beta-TCVAE, Chen et al. 2018): the loss -sum_n [log p(x_n | z_n) - (alpha MI_n +
beta TC_n + gamma DW_n)], the KL term split three ways (`aggregate`), with q(z_n) and q(z_nj)
estimated from the minibatch (`aggregate.minibatch_log_densities`). With alpha = beta = gamma = 1
it is `trace`'s loss exactly (tested); beta > 1 penalizes only the total correlation.
"""

from ..annealing import weighted
from ..checks import number
from ..registry import UserError
from .aggregate import SAMPLINGS, kl_decomposition
from .aggregate_kernel import Workspace
from .estimators import ESTIMATORS
from .total_correlation import TotalCorrelationEstimator


@ESTIMATORS.register("tcvae")
class TCVAE(TotalCorrelationEstimator):
    """beta-TCVAE (Chen et al. 2018): weights alpha, beta, gamma on the KL's MI, total correlation and dimension-wise terms.

    Options: `alpha` (index-code MI, default 1), `beta` (total correlation, default 6),
    `gamma` (dimension-wise KL, default 1), `sampling` ("mws" or "mss": how log q(z) is
    estimated from the minibatch), `dataset_size` (N for "mss"; default: the training split's
    size, supplied by training). The cost is an (M, M, D) array per step: O(M^2 D).
    """

    def __init__(self, *, alpha=1.0, beta=6.0, gamma=1.0, sampling="mws", dataset_size=None, **context):
        super().__init__(**context)
        self.alpha = number(alpha, "objective.estimator.alpha", minimum=0)
        self.beta = number(beta, "objective.estimator.beta", minimum=0)
        self.gamma = number(gamma, "objective.estimator.gamma", minimum=0)
        if sampling not in SAMPLINGS:
            raise UserError(f"objective.estimator.sampling must be one of: {', '.join(SAMPLINGS)}; got {sampling!r}")
        self.sampling = sampling
        if dataset_size is not None and (isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 1):
            raise UserError(f"objective.estimator.dataset_size must be an integer >= 1, got {dataset_size!r}")
        self.dataset_size = dataset_size
        self.workspace = Workspace()  # the (M, M, D) arrays of each step, reused on a CPU
        if sampling == "mss" and dataset_size is None:
            raise UserError("objective.estimator.sampling = \"mss\" needs the data set's size (given by training; "
                            "set dataset_size when building the estimator by hand)")

    def loss(self, model, guide, x, kl_weight=None, kl_penalty=None, y=None, sites=None):
        vae, q, z, kl_weight = self.encoded(model, guide, x, kl_weight, kl_penalty, y)
        reconstruction = vae.likelihood_dist(z, x).log_prob(x).sum()
        mi, tc, dimension_wise = kl_decomposition(q, vae.prior_dist(), z, self.dataset_size or len(x), self.sampling,
                                                  self.workspace)
        penalty = (self.alpha * mi + self.beta * tc + self.gamma * dimension_wise).sum()
        return -(reconstruction - weighted(kl_weight, penalty))
