"""Estimators that are one of Pyro's ELBOs (and its JIT twin): trace, meanfield, enum, stl.

For the library's own programs trace and meanfield compute the same loss directly
(`terms.reparameterized_loss`) and stl from the direct log weights, without tracing; under
`jit = true` the KL weight is an argument of the compiled function (`_weight_as_argument`).
"""

import contextlib
import warnings
from typing import Any

import torch
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from .._pyro_compat import FixedJitTrace_ELBO, FixedJitTraceMeanField_ELBO, handlers_active
from ..annealing import is_unit_weight, kl_scaled
from ..registry import UserError
from .estimators import ESTIMATORS, Estimator
from .log_weights import direct_log_weights, log_weights
from .rewrap import PathDerivative, RewrapLatents
from .terms import reparameterized_loss


def _weight_as_argument(fn):
    """`fn(x)` as `fn(x, kl_weight, batch_size=...)`: under `torch.jit.trace` the weight is
    then a graph input, so a changing schedule changes the compiled loss. `batch_size` is
    a keyword only so that Pyro's JIT cache compiles once per batch size (a short last batch).

    Why an argument: Pyro's `JitTrace_ELBO` runs the programs once under `torch.jit.trace`
    and replays the recorded graph on every later call, so a weight the handler reads from
    Python (a number, or `kl_scaled(vae.model, lambda: weight)`) is read once, while tracing,
    and recorded as a constant. With Pyro 1.9.2, `JitTrace_ELBO` on `kl_scaled` programs
    whose callable weight changed from 1 to 4 between calls returned the same loss at the same
    seed, bit for bit: the change is silently ignored. As a tensor argument the weight is an
    input of the graph (tested: the JIT loss equals the eager one at every weight, one compilation)."""

    def weighted(x, kl_weight, batch_size=None):
        return kl_scaled(fn, kl_weight)(x)

    return weighted


class PyroELBO(Estimator):
    """Base class for estimators that are one of Pyro's ELBOs (and its JIT twin)."""

    elbo_class: type[ELBO] = Trace_ELBO
    jit_class: type[ELBO] = FixedJitTrace_ELBO
    supports_jit = True
    supports_kl_penalty = True  # pathwise gradients of reconstruction and KL, each computable apart
    supports_labels = True

    def __init__(self, **context):
        super().__init__(**context)
        num_particles, vectorize_particles, jit = self.num_particles, self.vectorize_particles, self.jit
        # max_plate_nesting is known (one "data" plate), which spares Pyro a guessing run.
        options = {"num_particles": num_particles, "vectorize_particles": vectorize_particles, "max_plate_nesting": 1}
        if jit:
            options["ignore_jit_warnings"] = True
        # Any: loss and differentiable_loss are each Pyro ELBO subclass's own, not the ELBO base's
        self.elbo: Any = (self.jit_class if jit else self.elbo_class)(**options)
        self._options = options
        self._compiled = {}  # (model, guide) -> (its own JIT ELBO, weighted model, weighted guide)

    def _guide(self, guide):
        return guide if self.guide_wrapper is None else RewrapLatents(self.guide_wrapper)(guide)

    def loss(self, model, guide, x, kl_weight=None, kl_penalty=None, y=None, sites=None):
        if self.jit:
            if y is not None or sites is not None:
                raise UserError("objective.jit = true compiles programs of x alone; "
                                "set objective.jit = false for models with labels")
            if kl_penalty is None:
                return self._jit_loss(model, guide, x, kl_weight)
        return super().loss(model, guide, x, kl_weight, kl_penalty, y, sites)

    def differentiable_loss(self, model, guide, x, *labels):
        return self.elbo.differentiable_loss(model, self._guide(guide), x, *labels)

    def capture_obstacle(self, vae):
        if self.jit or not self.capturable:
            return super().capture_obstacle(vae)
        if self.direct_loss is not None and self.num_particles == 1 and vae.has_standard_programs:
            return None  # the direct loss: tensor arithmetic only
        return (f"estimator {self.registered_name!r} runs Pyro's {type(self.elbo).__name__} here (a model that "
                "redefines its programs, or num_particles > 1), which reads every site's log-density "
                "with .item()")

    def _jit_loss(self, model, guide, x, kl_weight):
        if callable(kl_weight):
            kl_weight = kl_weight()
        weight = torch.as_tensor(1.0 if kl_weight is None else kl_weight, dtype=x.dtype, device=x.device)
        key = (model, guide)
        if key not in self._compiled:
            # Pyro's JIT ELBO closes over the first model and guide it sees: one per pair.
            elbo = self.elbo if not self._compiled else self.jit_class(**self._options)
            self._compiled[key] = (elbo, _weight_as_argument(model), _weight_as_argument(self._guide(guide)))
        elbo, weighted_model, weighted_guide = self._compiled[key]
        # The compiled loss looks its parameters up in Pyro's global store by name.
        owner: Any = getattr(model, "__self__", None)  # a bound method's object, if it is one
        with owner.param_store() if hasattr(owner, "param_store") else contextlib.nullcontext():
            return elbo.differentiable_loss(weighted_model, weighted_guide, x, weight, batch_size=len(x))


class ReparameterizedELBO(PyroELBO):
    """A Pyro ELBO whose loss for the library's own programs (one particle) is computed directly."""

    capturable = True  # with one particle on the library's own programs (``capture_obstacle``)

    def direct_loss(self, vae, x, kl_weight):
        if self.num_particles != 1:
            return None
        return reparameterized_loss(vae, x, kl_weight, analytic=self.analytic_kl)


@ESTIMATORS.register("trace")
class TraceEstimator(ReparameterizedELBO):
    """Trace_ELBO: Monte Carlo ELBO with pathwise (reparameterized) gradients for z (the default)."""


@ESTIMATORS.register("meanfield")
class MeanFieldEstimator(ReparameterizedELBO):
    """TraceMeanField_ELBO: the KL term in closed form where it exists (normal prior)."""

    elbo_class, jit_class = TraceMeanField_ELBO, FixedJitTraceMeanField_ELBO
    analytic_kl = True


@ESTIMATORS.register("enum")
class Enumerated(PyroELBO):
    """TraceEnum_ELBO: discrete latents marked for enumeration (M2's label) summed out exactly; else Trace_ELBO.

    A guide site with `infer={"enumerate": "parallel"}` is not sampled but taken at all its
    values at once, on a tensor dimension left of the plates (`max_plate_nesting = 1`:
    the "data" plate), and the ELBO sums them weighted by q: for M2's label,
    sum_y q(y | x) [log p(x, y, z_y) - log q(z_y | x, y)] + H(q(y | x)), exactly.
    """

    elbo_class = TraceEnum_ELBO
    supports_jit = False
    handles_discrete_latents = True

    def loss(self, model, guide, x, kl_weight=None, kl_penalty=None, y=None, sites=None):
        """A model that computes its enumerated loss itself (`enumerated_loss(x)`, the gmvae's: the same
        value and gradients as `TraceEnum_ELBO`, tested, without tracing) is asked for it where nothing
        else changes the programs: its own, unweighted, one particle, no labels, no enclosing handler."""
        owner: Any = getattr(model, "__self__", None)  # a bound method's object, if it is one
        direct = getattr(owner, "enumerated_loss", None)
        if callable(kl_weight):
            kl_weight = kl_weight()
        if (direct is not None and model == owner.model and guide == owner.guide and is_unit_weight(kl_weight)
                and kl_penalty is None and y is None and sites is None and self.num_particles == 1
                and not handlers_active()):
            return direct(x)
        return super().loss(model, guide, x, kl_weight, kl_penalty, y, sites)

    def differentiable_loss(self, model, guide, x, *labels):
        with warnings.catch_warnings():  # a labeled batch has nothing to enumerate, rightly
            warnings.filterwarnings("ignore", "TraceEnum_ELBO found no sample sites", UserWarning)
            if not torch.is_grad_enabled():  # TraceEnum_ELBO refuses to differentiate without autograd
                return torch.as_tensor(self.elbo.loss(model, self._guide(guide), x, *labels), device=x.device)
            return super().differentiable_loss(model, guide, x, *labels)


@ESTIMATORS.register("stl")
class StickingTheLanding(PyroELBO):
    """Sticking the landing (Roeder et al. 2017): pathwise ELBO gradient without the score term of log q.

    Computed from the per data point log weights (`log_weights`, the guide wrapped in
    `PathDerivative`; `direct_log_weights` for the library's own programs): loss =
    -sum_n mean_k [log p(x_n, z_nk) - log q~(z_nk | x_n)], with q~ at detached parameters.
    For a guide whose sites are all reparameterized this is Pyro's
    `Trace_ELBO` surrogate (tested equal), without its `.item()` per site, so it never
    reads from the device (a CUDA graph can capture it). `jit = true` uses Pyro's JIT ELBO.
    """

    guide_wrapper = PathDerivative
    detaches_guide_parameters = True
    capturable = True

    def differentiable_loss(self, model, guide, x, *labels):
        log_p, log_q, _ = log_weights(model, guide, x, self.num_particles, self.guide_wrapper, labels)
        return -(log_p - log_q).mean(0).sum()

    def direct_loss(self, vae, x, kl_weight):
        """The same, from `direct_log_weights` (the library's own programs, not under `jit`)."""
        if self.jit:
            return None
        log_w, _ = direct_log_weights(vae, x, self.num_particles, kl_weight, self.guide_wrapper)
        return -log_w.mean(0).sum()

    def capture_obstacle(self, vae):
        return Estimator.capture_obstacle(self, vae)
