"""The aggregate posterior's mathematics: the KL term split into index-code mutual information, total
correlation and dimension-wise KL, with the aggregate densities estimated from a minibatch.

The ELBO's KL term, averaged over the data, splits three ways (Chen et al. 2018), with
q(z) = (1/N) sum_n q(z | x_n) the aggregate posterior of the N training examples:

    E_n KL(q(z | x_n) || p(z)) = I_q(x; z)                                  index-code mutual information
                               + KL(q(z) || prod_j q(z_j))                  total correlation (TC)
                               + sum_j KL(q(z_j) || p(z_j))                 dimension-wise KL

Per data point (z_n ~ q(z | x_n)) the three terms are
MI_n = log q(z_n | x_n) - log q(z_n), TC_n = log q(z_n) - sum_j log q(z_nj),
DW_n = sum_j log q(z_nj) - log p(z_n), and they add up to log q(z_n | x_n) - log p(z_n), the
Monte Carlo KL term of `trace`, whatever the estimates of log q(z_n) and log q(z_nj) are
(`kl_decomposition`). For diagonal Gaussian guides the minibatch sums go through a hand-written
autograd kernel (`aggregate_kernel`).
"""

import math

import torch

from ..registry import UserError
from .aggregate_kernel import GaussianAggregate

SAMPLINGS = ("mws", "mss")


def diagonal_normal(guide_dist):
    """The Normal factors of a guide that is a diagonal Gaussian (an Independent over the last
    dimension of a Normal, torch's or Pyro's, whose density is Normal's own), else None: for them
    the log-density array has the closed form the fast paths compute. Pyro's `Normal` is a
    subclass of torch's, so the test is on the density, not the exact class."""
    base = getattr(guide_dist, "base_dist", None)
    if (isinstance(base, torch.distributions.Normal) and type(base).log_prob is torch.distributions.Normal.log_prob
            and getattr(guide_dist, "reinterpreted_batch_ndims", 0) == 1 and base.event_shape == ()):
        return base
    return None


def log_density_matrix(guide_dist, z):
    """log q(z_nj | x_m) for every code n, data point m and dimension j, shape (N, M, D), from the
    guide's distribution over the minibatch (an Independent over its last dimension, batch (M,))
    and codes z (N, D)."""
    base = getattr(guide_dist, "base_dist", None)
    if base is None or guide_dist.reinterpreted_batch_ndims != 1 or base.event_shape != ():
        raise UserError(
            "tcvae and factorvae need a guide that factorizes over latent dimensions (model.guide = \"normal\"); "
            f"this guide is a {type(guide_dist).__name__}"
        )
    if diagonal_normal(guide_dist) is not None:
        # The same numbers in three passes over the (N, M, D) array instead of Normal.log_prob's
        # five: a = (z_n - mu_m) / s_m, then -a^2 / 2 - log s_m - log(2 pi) / 2 in one addcmul.
        a = (z.unsqueeze(1) - base.loc) / base.scale
        return torch.addcmul(-base.scale.log() - 0.5 * math.log(2 * math.pi), a, a, value=-0.5)
    return base.log_prob(z.unsqueeze(1))


def minibatch_log_densities(log_q, dataset_size, sampling="mws"):
    """Estimates of log q(z_n) and sum_j log q(z_nj), each shape (M,), for the minibatch's own codes
    z_n ~ q(z | x_n), from `log_q` = log q(z_nj | x_m) (M, M, D) (`log_density_matrix`).

    q(z) = (1/N) sum_{n'} q(z | x_n') over the N = `dataset_size` training examples; from a
    minibatch, q(z_n) ~ sum_m w_nm q(z_n | x_m) with weights per row summing to 1:

    - `mws`, minibatch-weighted sampling: w_nm = 1/M (the minibatch stands for the data set,
      its own point among them; biased towards q(z_n | x_n) by O(1/M)). Chen et al. (2018) print
      the weights 1/(NM), which shifts log q(z) by -log N and the TC by (D - 1) log N:
      constants, so the same gradients, but not the TC's value; here the estimate is of q(z).
    - `mss`, minibatch-stratified sampling: w_nn = 1/N for the code's own data point (which
      q(z_n) holds with weight 1/N exactly) and (N - 1) / (N (M - 1)) for each other one (which
      stand for the other N - 1): unbiased for q(z_n) at any M. (Chen et al.'s published code
      builds this matrix with a misplaced diagonal; these are the weights it means.)

    The same weights estimate each marginal q(z_nj) from log q(z_nj | x_m).
    """
    m = log_q.shape[1]
    if sampling not in SAMPLINGS:
        raise UserError(f"unknown sampling {sampling!r}; choose one of: {', '.join(SAMPLINGS)}")
    joint = torch.logsumexp(log_q.sum(2), 1) - math.log(m)  # uniform weights 1/M
    marginals = torch.logsumexp(log_q, 1) - math.log(m)
    if sampling == "mss" and m > 1:
        own = torch.diagonal(log_q, dim1=0, dim2=1).T  # log q(z_nj | x_n), (M, D)
        joint, marginals = _stratified(joint, own.sum(1), m, dataset_size), _stratified(marginals, own, m, dataset_size)
    return joint, marginals.sum(1)


def gaussian_minibatch_log_densities(loc, scale, z, dataset_size, sampling="mws", workspace=None):
    """`minibatch_log_densities` for diagonal Gaussian posteriors, through `aggregate_kernel.GaussianAggregate`
    (`workspace`: its arrays, reused on a CPU; see `aggregate_kernel.Workspace`)."""
    m = len(loc)
    joint, marginals = GaussianAggregate.apply(z, loc, scale, workspace if z.device.type == "cpu" else None)
    joint, marginals = joint - math.log(m), marginals - math.log(m)
    if sampling == "mss" and m > 1:
        own = torch.distributions.Normal(loc, scale).log_prob(z)  # log q(z_nj | x_n), (M, D)
        joint, marginals = _stratified(joint, own.sum(1), m, dataset_size), _stratified(marginals, own, m, dataset_size)
    return joint, marginals.sum(1)


def _stratified(log_uniform, log_own, m, dataset_size):
    """From the uniform minibatch estimate (weights 1/M) and the own term log q(z_n | x_n), the
    stratified one: sum_m w_nm q_nm = w_off sum_m q_nm - (w_off - w_own) q_nn, without a weighted
    copy of the (M, M, D) array. With w_own < w_off (M < N) the argument of log1p stays above -1,
    since w_off sum_m q_nm >= w_off q_nn."""
    n = max(dataset_size, m)
    log_off = math.log(n - 1) - math.log(n * (m - 1))
    shrink = 1.0 - (m - 1) / (n - 1)  # (w_off - w_own) / w_off
    log_sum = log_uniform + math.log(m)
    return log_off + log_sum + torch.log1p(-shrink * torch.exp(log_own - log_sum))


def kl_decomposition(guide_dist, prior_dist, z, dataset_size, sampling="mws", workspace=None):
    """The three terms of the KL per data point (Chen et al. 2018), each shape (M,):
    `(mi, tc, dimension_wise)`, with log q(z) and log q(z_j) from `minibatch_log_densities`;
    they add up to log q(z_n | x_n) - log p(z_n) exactly."""
    base = diagonal_normal(guide_dist)
    if base is not None:
        log_qz, log_prod_qzj = gaussian_minibatch_log_densities(base.loc, base.scale, z, dataset_size, sampling,
                                                                workspace)
    else:
        log_qz, log_prod_qzj = minibatch_log_densities(log_density_matrix(guide_dist, z), dataset_size, sampling)
    log_qz_given_x = guide_dist.log_prob(z)
    log_pz = prior_dist.log_prob(z)
    return log_qz_given_x - log_qz, log_qz - log_prod_qzj, log_prod_qzj - log_pz
