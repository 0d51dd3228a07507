"""Objectives that penalize the total correlation of the codes: beta-TCVAE and FactorVAE.

The ELBO's KL term, averaged over the data, splits three ways (Chen et al. 2018), with
q(z) = (1/N) sum_n q(z | x_n) the aggregate posterior of the N training examples:

    E_n KL(q(z | x_n) || p(z)) = I_q(x; z)                                  index-code mutual information
                               + KL(q(z) || prod_j q(z_j))                  total correlation (TC)
                               + sum_j KL(q(z_j) || p(z_j))                 dimension-wise KL

Per data point (z_n ~ q(z | x_n)) the three terms are
MI_n = log q(z_n | x_n) - log q(z_n), TC_n = log q(z_n) - sum_j log q(z_nj),
DW_n = sum_j log q(z_nj) - log p(z_n), and they add up to log q(z_n | x_n) - log p(z_n), the
Monte Carlo KL term of ``trace``, whatever the estimates of log q(z_n) and log q(z_nj) are.

- ``tcvae`` (beta-TCVAE, Chen et al. 2018): the loss -sum_n [log p(x_n | z_n) - (alpha MI_n +
  beta TC_n + gamma DW_n)], with q(z_n) and q(z_nj) estimated from the minibatch
  (:func:`minibatch_log_densities`). With alpha = beta = gamma = 1 it is ``trace``'s loss
  exactly (tested); beta > 1 penalizes only the total correlation.
- ``factorvae`` (Kim & Mnih 2018): the ELBO minus gamma TC, TC estimated by a discriminator
  D(z) that tells codes z ~ q(z) from codes with each dimension permuted across the minibatch
  (draws of prod_j q(z_j)): at its optimum logit D(z) = log q(z) / prod_j q(z_j), so
  TC = E_q(z) logit D(z). The discriminator has its own optimizer (Adam, lr 1e-4, betas
  (0.5, 0.9), as Kim & Mnih) and takes one step per training step, on that step's codes
  (detached), before the VAE's loss reads it.

Both are estimators (``objective.estimator = { name = "tcvae", beta = 6.0 }``): the KL weight
(``objective.kl_weight``) multiplies their KL terms as it does the ELBO's; capacity and free bits
are other KL terms and are refused. Their loss is not the ELBO, so the trainer's true ELBO,
measured every epoch (metrics.csv), is what tells how good a density model they train.
Both need the library's own VAE (``model.kind = "vae"``, one latent layer, a guide that
factorizes over dimensions, e.g. ``normal``).
"""

import math

import torch
from torch import nn

from ..annealing import weighted
from ..checks import number
from ..optimizers import fastest
from ..registry import UserError
from .estimators import ESTIMATORS, Estimator
from .log_weights import standard_vae
from .terms import kl_term

SAMPLINGS = ("mws", "mss")


def diagonal_normal(guide_dist):
    """The Normal factors of a guide that is a diagonal Gaussian (an Independent over the last
    dimension of a Normal, torch's or Pyro's, whose density is Normal's own), else None: for them
    the log-density array has the closed form the fast paths compute. Pyro's ``Normal`` is a
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
    z_n ~ q(z | x_n), from ``log_q`` = log q(z_nj | x_m) (M, M, D) (:func:`log_density_matrix`).

    q(z) = (1/N) sum_{n'} q(z | x_n') over the N = ``dataset_size`` training examples; from a
    minibatch, q(z_n) ~ sum_m w_nm q(z_n | x_m) with weights per row summing to 1:

    - ``mws``, minibatch-weighted sampling: w_nm = 1/M (the minibatch stands for the data set,
      its own point among them; biased towards q(z_n | x_n) by O(1/M)). Chen et al. (2018) print
      the weights 1/(NM), which shifts log q(z) by -log N and the TC by (D - 1) log N:
      constants, so the same gradients, but not the TC's value; here the estimate is of q(z).
    - ``mss``, minibatch-stratified sampling: w_nn = 1/N for the code's own data point (which
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


HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Workspace:
    """The three (D, N, M) arrays of :class:`GaussianAggregate`, kept from one training step to the
    next on a CPU, where a fresh array of that size costs more than the pass that fills it (its
    pages are mapped and zeroed anew by the allocator every step); on a GPU the caching allocator
    already reuses memory, and a workspace is not used.

    The arrays are lent to one autograd graph at a time: ``take`` marks them lent when the graph
    will need them for its backward pass, the backward pass gives them back, and while they are
    lent (two losses built before one backward, or a graph dropped without one) every further
    ``take`` gets fresh arrays, so no two live graphs ever share memory."""

    def __init__(self):
        self.arrays, self.lent = None, False

    def take(self, shape, like, for_backward):
        """Three arrays of ``shape`` with ``like``'s dtype and device; lent when ``for_backward``."""
        if self.lent:
            return self._empty(shape, like)
        kept = self.arrays
        if kept is None or kept[0].shape != shape or kept[0].dtype != like.dtype or kept[0].device != like.device:
            self.arrays = self._empty(shape, like)
        self.lent = for_backward
        return self.arrays

    @staticmethod
    def _empty(shape, like):
        return tuple(torch.empty(shape, dtype=like.dtype, device=like.device) for _ in range(3))

    def give_back(self):
        self.lent = False


class GaussianAggregate(torch.autograd.Function):
    """For diagonal Gaussians q(z | x_m) = N(loc_m, diag scale_m^2) and codes z_n:
    ``logsumexp_m sum_j log q(z_nj | x_m)`` (N,) and ``logsumexp_m log q(z_nj | x_m)`` (N, D), the uniform
    minibatch sums of :func:`minibatch_log_densities` before their -log M, with a hand-written
    backward pass. Tested against autograd (``torch.autograd.gradcheck``) and against
    :func:`log_density_matrix` with autograd.

    With t = log q(z_nj | x_m) = -a^2 / 2 - log scale_mj - log(2 pi) / 2, a = (z_nj - loc_mj) / scale_mj:
    dt/dz = -a / scale, dt/dloc = a / scale, dt/dscale = (a^2 - 1) / scale. Where the cost goes
    (passes over the N M D values: 5 forward, 7 backward, all memory-bound):

    - the arrays are laid out (D, N, M), data points m innermost, and written into arrays made
      so (left to broadcasting, (z_n - loc_m) comes out with D innermost, and every later pass
      strides): the logsumexp over m reduces the contiguous axis, the sums over n add whole rows;
    - three (D, N, M) arrays are written, a (one ``addcmul``) and exp(t - peak) forward and dL/dt
      backward, every other pass works in place in one of them; on a CPU they come from a
      :class:`Workspace` kept by the estimator, since a fresh array there costs several passes;
    - the logsumexp over m is shifted by an upper bound of t per dimension,
      peak_j = max_m (-log scale_mj) - log(2 pi) / 2 >= t_nmj (since -a^2 / 2 <= 0), read from the
      (M, D) scales, instead of the maximum over the (N, M, D) array (a strided pass and a
      subtraction saved); exp(t - peak_j) <= 1 cannot overflow, and the code's own data point
      m = n keeps the sum away from underflow (its term is exp(-eps^2 / 2) scale ratio, eps ~ N(0, 1));
    - t - peak is one ``addcmul``, exponentiated in place and kept for the backward pass (no
      second exp); the incoming gradients are combined into dL/dt by another ``addcmul``;
    - the sum over m of dL/dt a / scale_m (z's gradient) is a batched matrix product with the
      (D, M) reciprocals, which reads the array, not a product that rewrites it first.
    """

    @staticmethod
    def forward(ctx, z, loc, scale, workspace=None):
        shape = (z.shape[1], z.shape[0], loc.shape[0])  # (D, N, M)
        tracked = any(ctx.needs_input_grad[:3])
        # written into arrays of exactly this layout: left to broadcasting, a would come out with D innermost
        a_out, t_out, grad_out = (Workspace() if workspace is None else workspace).take(shape, z, tracked)
        inv = scale.reciprocal().T  # (D, M)
        # a = z_n / scale_m - loc_m / scale_m: one pass (a subtraction, then a product, would be two)
        a = torch.addcmul((-loc.T * inv).unsqueeze(1), z.T.unsqueeze(2), inv.unsqueeze(1), out=a_out)  # (D, N, M)
        neg_log_scale = -scale.log().T  # (D, M)
        top = neg_log_scale.amax(1, keepdim=True)  # (D, 1)
        t = torch.addcmul((neg_log_scale - top).unsqueeze(1), a, a, value=-0.5, out=t_out)  # t - peak <= 0
        peak = top.squeeze(1) - HALF_LOG_2PI  # (D,)
        joint_t = t.sum(0) + peak.sum()  # sum_j log q(z_nj | x_m), (N, M)
        joint = torch.logsumexp(joint_t, 1)
        e = t.exp_()  # exp(t - peak); t is not needed again: reuse its memory
        total = e.sum(2)  # (D, N)
        marginals = (total.log() + peak.unsqueeze(1)).T
        ctx.save_for_backward(a, e, total, joint_t, joint, inv)
        ctx.grad_out, ctx.workspace = grad_out, workspace if tracked else None
        return joint, marginals

    @staticmethod
    def backward(ctx, grad_joint, grad_marginals):
        a, e, total, joint_t, joint, inv = ctx.saved_tensors
        # dL/dt: the softmax over m of the marginals' logsumexp times their gradient, plus the joint's
        w = torch.exp(joint_t - joint.unsqueeze(1)) * grad_joint.unsqueeze(1)  # (N, M)
        gt = torch.addcmul(w, e, (grad_marginals.T / total).unsqueeze(2), out=ctx.grad_out)  # (D, N, M)
        gt_sum = gt.sum(1)
        u = gt.mul_(a)  # u = dL/dt a = -dL/da, in place from here on
        u_sum = u.sum(1)
        # sum_m u / scale_m: a product with the (D, M) reciprocals, read from the array without writing it
        grad_z = -torch.bmm(inv.unsqueeze(1), u.transpose(1, 2)).squeeze(1).T
        ua_sum = u.mul_(a).sum(1)  # sum_n u a
        grad_loc, grad_scale = (u_sum * inv).T, ((ua_sum - gt_sum) * inv).T
        if ctx.workspace is not None:
            ctx.workspace.give_back()
        return grad_z, grad_loc, grad_scale, None


def gaussian_minibatch_log_densities(loc, scale, z, dataset_size, sampling="mws", workspace=None):
    """:func:`minibatch_log_densities` for diagonal Gaussian posteriors, through :class:`GaussianAggregate`
    (``workspace``: its arrays, reused on a CPU; see :class:`Workspace`)."""
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
    ``(mi, tc, dimension_wise)``, with log q(z) and log q(z_j) from :func:`minibatch_log_densities`;
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


@ESTIMATORS.register("tcvae")
class TCVAE(TotalCorrelationEstimator):
    """beta-TCVAE (Chen et al. 2018): weights alpha, beta, gamma on the KL's MI, total correlation and dimension-wise terms.

    Options: ``alpha`` (index-code MI, default 1), ``beta`` (total correlation, default 6),
    ``gamma`` (dimension-wise KL, default 1), ``sampling`` ("mws" or "mss": how log q(z) is
    estimated from the minibatch), ``dataset_size`` (N for "mss"; default: the training split's
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


class Discriminator(nn.Module):
    """An MLP from codes (N, D) to one logit each: log D(z) / (1 - D(z)), D the probability that z is a
    draw of q(z) rather than of prod_j q(z_j) (leaky ReLU, as Kim & Mnih)."""

    def __init__(self, latent_dim, hidden=(256, 256)):
        super().__init__()
        layers, width = [], latent_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            width = h
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, z):
        return self.net(z).squeeze(-1)


def permute_dimensions(z, generator=None):
    """Each column of z (N, D) shuffled across the rows by its own permutation: draws of
    prod_j q(z_j) when the rows are draws of q(z) (Kim & Mnih 2018, Algorithm 1)."""
    n, d = z.shape
    index = torch.argsort(torch.rand(n, d, generator=generator, device=z.device), dim=0)
    return torch.gather(z, 0, index)


def discriminator_loss(discriminator, z):
    """The discriminator's loss on codes z (N, D) of q(z) (detached): the logistic loss of telling
    them (label 1) from their dimension-wise permutation (label 0), summed over both, averaged over N."""
    z = z.detach()
    real, permuted = discriminator(torch.cat([z, permute_dimensions(z)])).chunk(2)  # one pass for both
    return nn.functional.softplus(-real).mean() + nn.functional.softplus(permuted).mean()


def density_ratio_tc(discriminator, z):
    """The discriminator's estimate of the total correlation of the codes z (N, D) ~ q(z):
    TC = E_q(z) log q(z) / prod_j q(z_j) ~ mean_n logit D(z_n), per data point (N,)."""
    return discriminator(z)


@ESTIMATORS.register("factorvae")
class FactorVAE(TotalCorrelationEstimator):
    """FactorVAE (Kim & Mnih 2018): the ELBO minus gamma times the total correlation, estimated by a discriminator.

    Options: ``gamma`` (weight of the total correlation, default 10), ``hidden`` (the
    discriminator's hidden widths, default [256, 256]; Kim & Mnih: six layers of 1000),
    ``lr`` (its Adam learning rate, default 1e-4, betas (0.5, 0.9)). Its parameters and its
    optimizer's state are checkpointed with the estimator; it is trained by its own optimizer, not the VAE's.
    """

    context_arguments = (*TotalCorrelationEstimator.context_arguments, "latent_dim")

    def __init__(self, *, gamma=10.0, hidden=(256, 256), lr=1e-4, latent_dim=None, dataset_size=None, **context):
        super().__init__(**context)
        self.gamma = number(gamma, "objective.estimator.gamma", minimum=0)
        self.lr = number(lr, "objective.estimator.lr", minimum=0, exclusive=True)
        if not isinstance(hidden, (list, tuple)) or not all(isinstance(h, int) and h >= 1 for h in hidden):
            raise UserError(f"objective.estimator.hidden must be a list of widths, e.g. [256, 256]; got {hidden!r}")
        self.hidden = tuple(hidden)
        self.discriminator, self.optimizer = None, None
        if latent_dim is not None:
            self._build(latent_dim)

    def _build(self, latent_dim, device=None):
        self.discriminator = Discriminator(latent_dim, self.hidden).to(device)
        self.optimizer = fastest(torch.optim.Adam, self.discriminator.parameters(), self.lr, betas=(0.5, 0.9))
        if getattr(self, "_pending_state", None) is not None:
            self.optimizer.load_state_dict(self._pending_state)
            self._pending_state = None

    def parameters(self, recurse=True):
        """None for the VAE's optimizer: the discriminator is trained by its own (``self.optimizer``)."""
        return iter(())

    def get_extra_state(self):
        return {"optimizer": None if self.optimizer is None else self.optimizer.state_dict()}

    def set_extra_state(self, state):
        if state["optimizer"] is None:
            return
        if self.optimizer is None:
            self._pending_state = state["optimizer"]
        else:
            self.optimizer.load_state_dict(state["optimizer"])

    def capture_obstacle(self, vae):
        return "estimator 'factorvae' steps its discriminator's own optimizer inside the loss"

    def loss(self, model, guide, x, kl_weight=None, kl_penalty=None, y=None, sites=None):
        vae, q, z, kl_weight = self.encoded(model, guide, x, kl_weight, kl_penalty, y)
        if self.discriminator is None:
            self._build(z.shape[-1], z.device)
        # The discriminator's step first, on this step's codes: then its parameters are not
        # changed in place while the VAE's loss below still needs them for its backward pass.
        if self.training:  # a loss evaluated for analysis (estimator.eval()) leaves D as it is
            with torch.enable_grad():
                self.optimizer.zero_grad(set_to_none=True)
                discriminator_loss(self.discriminator, z).backward()
                self.optimizer.step()
        reconstruction = vae.likelihood_dist(z, x).log_prob(x).sum()
        kl = kl_term(q, vae.prior_dist(), z, analytic=True).sum()
        # The VAE's gradient reaches z through D, not D's parameters (those are its optimizer's).
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        tc = torch.func.functional_call(self.discriminator, frozen, (z,)).sum()
        return -(reconstruction - weighted(kl_weight, kl) - self.gamma * tc)
