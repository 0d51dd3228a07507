"""A discrete latent relaxed: the Concrete / Gumbel-softmax estimator (`relaxed`) and its pieces.

A model with a discrete latent (the Gaussian-mixture VAE's component y, `models.gmvae`) samples it
as a `OneHotCategorical` in guide and model and names it in `discrete_latents`. The three
estimators that can train it differ only in how they treat that site:

- `enum` (`elbos.Enumerated`): summed out exactly, `TraceEnum_ELBO`'s parallel enumeration;
- `score` (`particles.ScoreFunction`): sampled, its gradient by the score function with a baseline,
  every continuous latent kept pathwise;
- `relaxed` (here): replaced by a relaxed one-hot vector (Maddison et al. 2017, Jang et al. 2017),
  reparameterized, in guide and model alike (`RelaxDiscrete`), under `Trace_ELBO`.

The relaxed site's log-density is the categorical log-mass extended linearly over the simplex,
log p(y) = sum_k y_k log p_k (`RelaxedOneHot.log_prob`): at a vertex (a hard sample) it is the
categorical's own, so as the temperature goes to 0 the relaxed objective becomes the objective of
the hard sample drawn with the same Gumbel noise (tested), and at any temperature the networks
downstream see a point of the simplex. Its expectation is not the ELBO (a relaxed bound: biased,
which is why the library reports the exact enumerated ELBO beside it).
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.distributions import TorchDistribution, constraints
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message
from torch.nn import functional as F

from ..annealing import Schedule, build_schedule
from ..checks import boolean
from ..registry import UserError
from .elbos import PyroELBO
from .estimators import ESTIMATORS


class RelaxedOneHot(TorchDistribution):
    """A relaxed one-hot vector: y = softmax((logits + g) / temperature), g standard Gumbel noise.

    `straight_through`: the sample is the hard one-hot vector of the same draw (its argmax, the
    Gumbel-max sample of the categorical) with the relaxed vector's gradient (Bengio et al. 2013).
    `log_prob(y)` = sum_k y_k log p_k, the categorical's log-mass at a vertex (see the module).
    """

    arg_constraints = {"logits": constraints.real_vector}
    support = constraints.simplex
    has_rsample = True

    def __init__(self, logits: torch.Tensor, temperature: float | torch.Tensor, straight_through: bool = False,
                 validate_args: bool | None = None) -> None:
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        self.temperature, self.straight_through = temperature, straight_through
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=False)

    def expand(self, batch_shape: Any, _instance: Any = None) -> RelaxedOneHot:
        logits = self.logits.expand(*batch_shape, *self.event_shape)
        return RelaxedOneHot(logits, self.temperature, self.straight_through)

    def rsample(self, sample_shape: Any = torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.logits.shape
        tiny = torch.finfo(self.logits.dtype).tiny
        uniform = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device).clamp(tiny, 1 - 1e-7)
        soft = torch.softmax((self.logits - torch.log(-torch.log(uniform))) / self.temperature, -1)
        if not self.straight_through:
            return soft
        hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
        return hard + soft - soft.detach()

    def sample(self, sample_shape: Any = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return (value * self.logits).sum(-1)


class RelaxDiscrete(Messenger):
    """Replace every unobserved one-hot categorical site's distribution by its `RelaxedOneHot`
    at `temperature` (the same logits), and drop its mark for enumeration: what `relaxed` wraps
    both programs in."""

    def __init__(self, temperature: float | torch.Tensor, straight_through: bool = False) -> None:
        super().__init__()
        self.temperature, self.straight_through = temperature, straight_through

    def _process_message(self, msg: Message) -> None:
        fn = msg["fn"]
        if msg["type"] == "sample" and not msg["is_observed"] and isinstance(fn, torch.distributions.OneHotCategorical):
            msg["fn"] = RelaxedOneHot(fn.logits, self.temperature, self.straight_through)
            msg["infer"] = {k: v for k, v in (msg["infer"] or {}).items() if k != "enumerate"}  # type: ignore[typeddict-item]


@ESTIMATORS.register("relaxed")
class Relaxed(PyroELBO):
    """Concrete / Gumbel-softmax: a discrete latent relaxed to a reparameterized one-hot vector (a relaxed bound).

    Options: `temperature` (a number > 0, or a schedule table as `objective.kl_weight` takes, e.g.
    `{ name = "linear", start = 1.0, end = 0.3, epochs = 20 }`: annealed over the optimizer steps,
    counted by the estimator and kept in its checkpointed state) and `straight_through` (hard
    one-hot samples with the relaxed gradient). Needs a model with a discrete latent; its loss is a
    relaxed bound, not the ELBO (`evaluate` reports the exact enumerated ELBO).
    """

    reports_elbo = False
    supports_jit = False
    supports_kl_penalty = False
    handles_discrete_latents = True
    needs_discrete_latent = True

    def __init__(self, *, temperature: Any = 1.0, straight_through: bool = False, **context: Any) -> None:
        super().__init__(**context)
        self.straight_through = boolean(straight_through, "objective.estimator.straight_through")
        if isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature <= 0:
            raise UserError(f"objective.estimator.temperature must be > 0, got {temperature!r}")
        self.temperature_spec = temperature
        self.schedule: Schedule = build_schedule(temperature, 1, "objective.estimator.temperature")
        self.steps: torch.Tensor
        self.register_buffer("steps", torch.tensor(0))  # optimizer steps taken: where the schedule is

    def set_steps_per_epoch(self, steps_per_epoch: int) -> None:
        """Rebuild the temperature schedule for epochs of `steps_per_epoch` steps (`build.build` tells it)."""
        self.schedule = build_schedule(self.temperature_spec, steps_per_epoch, "objective.estimator.temperature")

    def temperature(self) -> float:
        """The temperature in force for the next step."""
        value = float(self.schedule(int(self.steps)))
        if not value > 0:
            raise UserError(f"objective.estimator.temperature must stay > 0; its schedule gives {value} "
                            f"at step {int(self.steps)}")
        return value

    def differentiable_loss(self, model, guide, x, *labels):
        relax = RelaxDiscrete(self.temperature(), self.straight_through)
        if self.training and torch.is_grad_enabled():
            self.steps += 1
        return self.elbo.differentiable_loss(relax(model), relax(self._guide(guide)), x, *labels)
