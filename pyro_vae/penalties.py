"""KL terms other than KL itself: capacity (Burgess et al. 2018) and free bits (Kingma et al. 2016).

Both keep the reconstruction term and replace the KL term of the loss, summed over a
minibatch of N points, by a function of the minibatch's KL:

    loss = -( sum_n E_q log p(x_n | z_n)  -  w * N * penalty(KL) )

- **capacity**: `penalty = gamma |KLbar - C(t)|`, KLbar = (1/N) sum_n KL(q(z | x_n) || p(z)),
  with C(t) a schedule of the optimizer step (by default a linear ramp): the KL is pulled
  towards a target that rises over training, by a force gamma, instead of towards 0;
- **free bits**: `penalty = sum_j max(lambda, KLbar_j)`, KLbar_j = (1/N) sum_n KL_nj the
  minibatch average of the KL of latent dimension j: a dimension whose average KL is below
  lambda nats costs a constant lambda, so nothing pushes it further towards the prior
  (its gradient through the KL term is exactly 0).

Both take the minibatch *average* KL inside the nonlinearity, as the papers do (Kingma et
al. clamp the minibatch average per group; Burgess et al.'s target is the average KL), so
individual points may sit below lambda or off C. The loss is then no longer a sum of
per-point terms; with data-parallel training each process applies it to its own shard.
KL_nj is whatever KL the estimator computes: closed form for `meanfield`, the Monte Carlo
value log q(z_j | x) - log p(z_j) at the drawn z for `trace` (and, with log q at
detached parameters, for `stl`); free bits needs a prior that factorizes over dimensions.

`w` is the step's KL weight (1 unless `kl_weight` is set: it multiplies whatever the
KL term is, so `reduction = "mean"` keeps its meaning). From config:

```
[objective]
capacity = { start = 0.0, end = 25.0, epochs = 100, gamma = 1000.0 }   # C(t) linear
capacity = { name = "constant", value = 25.0, gamma = 1000.0 }         # any schedule
free_bits = 0.5                                                         # lambda, nats per dimension
```

`build_kl_penalty` gives a function of the step (resume-safe, like the KL weight's
schedule) that returns the penalty in force at that step, or None.
"""

from .annealing import build_schedule
from .checks import number, type_name
from .registry import UserError


class Capacity:
    """gamma |KLbar - C|: the KL term of capacity annealing at one step (target C nats)."""

    per_dimension = False
    name = "capacity"

    def __init__(self, gamma, capacity):
        self.gamma, self.capacity = gamma, capacity

    def __call__(self, kl):
        """`kl`: KL per data point, shape (N,); the minibatch's penalty, N gamma |mean KL - C|."""
        return len(kl) * self.gamma * (kl.mean() - self.capacity).abs()

    def __repr__(self):
        return f"Capacity(gamma={self.gamma}, C={self.capacity})"


class FreeBits:
    """sum_j max(lambda, KLbar_j): the KL term of free bits (lambda nats per latent dimension)."""

    per_dimension = True
    name = "free bits"

    def __init__(self, free_bits):
        self.free_bits = free_bits

    def __call__(self, kl):
        """`kl`: KL per data point and latent dimension, shape (N, d); the minibatch's penalty,
        N sum_j max(lambda, mean_n KL_nj) (clamp: zero gradient for a dimension below lambda)."""
        return len(kl) * kl.mean(0).clamp(min=self.free_bits).sum()

    def __repr__(self):
        return f"FreeBits({self.free_bits})"


CAPACITY_EXAMPLE = "{ start = 0.0, end = 25.0, epochs = 100, gamma = 1000.0 }"


def capacity_schedule(spec, steps_per_epoch, where="objective.capacity"):
    """(gamma, C(step)) from a capacity table: `gamma` and a schedule table (default `linear`)."""
    if not isinstance(spec, dict):
        raise UserError(f"{where} must be a table such as {CAPACITY_EXAMPLE}, got {type_name(spec)} {spec!r}")
    spec = dict(spec)
    if "gamma" not in spec:
        raise UserError(f"{where} needs gamma, the weight of |KL - C|, e.g. {CAPACITY_EXAMPLE}")
    gamma = number(spec.pop("gamma"), f"{where}.gamma", minimum=0, exclusive=True)
    if "name" not in spec:
        spec["name"] = "linear"
    return gamma, build_schedule(spec, steps_per_epoch, where)


def check_free_bits(value, where="objective.free_bits"):
    """lambda >= 0 nats per latent dimension (0: off)."""
    return number(value, where, minimum=0)


def build_kl_penalty(objective, steps_per_epoch):
    """`penalty(step)`: the KL term in force at `step` (a Capacity or FreeBits), or None if
    the config sets neither. A pure function of the step, so a resumed run resumes C(t)."""
    capacity, free_bits = objective.get("capacity") or None, check_free_bits(objective.get("free_bits", 0.0))
    if capacity is not None and free_bits:
        raise UserError("objective.capacity and objective.free_bits are two different KL terms; set only one")
    if capacity is not None:
        gamma, schedule = capacity_schedule(capacity, steps_per_epoch)
        return lambda step: Capacity(gamma, schedule(step))
    if free_bits:
        penalty = FreeBits(free_bits)
        return lambda step: penalty
    return None
