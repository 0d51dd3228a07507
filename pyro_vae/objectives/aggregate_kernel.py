"""The hand-written autograd kernel of the aggregate posterior's minibatch sums for diagonal
Gaussian guides (`GaussianAggregate`, used by `aggregate.gaussian_minibatch_log_densities`),
and the `Workspace` of arrays it reuses from one training step to the next on a CPU."""

import math

import torch

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Workspace:
    """The three (D, N, M) arrays of `GaussianAggregate`, kept from one training step to the
    next on a CPU, where a fresh array of that size costs more than the pass that fills it (its
    pages are mapped and zeroed anew by the allocator every step); on a GPU the caching allocator
    already reuses memory, and a workspace is not used.

    The arrays are lent to one autograd graph at a time: `take` marks them lent when the graph
    will need them for its backward pass, the backward pass gives them back, and while they are
    lent (two losses built before one backward, or a graph dropped without one) every further
    `take` gets fresh arrays, so no two live graphs ever share memory."""

    def __init__(self):
        self.arrays, self.lent = None, False

    def take(self, shape, like, for_backward):
        """Three arrays of `shape` with `like`'s dtype and device; lent when `for_backward`."""
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
    `logsumexp_m sum_j log q(z_nj | x_m)` (N,) and `logsumexp_m log q(z_nj | x_m)` (N, D), the uniform
    minibatch sums of `aggregate.minibatch_log_densities` before their -log M, with a hand-written
    backward pass. Tested against autograd (`torch.autograd.gradcheck`) and against
    `aggregate.log_density_matrix` with autograd.

    With t = log q(z_nj | x_m) = -a^2 / 2 - log scale_mj - log(2 pi) / 2, a = (z_nj - loc_mj) / scale_mj:
    dt/dz = -a / scale, dt/dloc = a / scale, dt/dscale = (a^2 - 1) / scale. Where the cost goes
    (passes over the N M D values: 5 forward, 7 backward, all memory-bound):

    - the arrays are laid out (D, N, M), data points m innermost, and written into arrays made
      so (left to broadcasting, (z_n - loc_m) comes out with D innermost, and every later pass
      strides): the logsumexp over m reduces the contiguous axis, the sums over n add whole rows;
    - three (D, N, M) arrays are written, a (one `addcmul`) and exp(t - peak) forward and dL/dt
      backward, every other pass works in place in one of them; on a CPU they come from a
      `Workspace` kept by the estimator, since a fresh array there costs several passes;
    - the logsumexp over m is shifted by an upper bound of t per dimension,
      peak_j = max_m (-log scale_mj) - log(2 pi) / 2 >= t_nmj (since -a^2 / 2 <= 0), read from the
      (M, D) scales, instead of the maximum over the (N, M, D) array (a strided pass and a
      subtraction saved); exp(t - peak_j) <= 1 cannot overflow, and the code's own data point
      m = n keeps the sum away from underflow (its term is exp(-eps^2 / 2) scale ratio, eps ~ N(0, 1));
    - t - peak is one `addcmul`, exponentiated in place and kept for the backward pass (no
      second exp); the incoming gradients are combined into dL/dt by another `addcmul`;
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
