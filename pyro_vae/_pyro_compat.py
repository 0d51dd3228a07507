"""Where this library leans on Pyro's internals or works around its bugs: all in one place.

Each item names the Pyro version it was written against (1.9) and what it relies on,
so that a Pyro upgrade is checked here and nowhere else.
"""

import contextlib

import pyro
from pyro import poutine
from pyro.infer import JitTrace_ELBO, JitTraceMeanField_ELBO


def handlers_active():
    """Whether any Pyro handler is on the stack now (`poutine.runtime._PYRO_STACK`, private in 1.9).

    A direct computation of a program's loss is exact only when nothing intercepts the program."""
    return bool(poutine.runtime._PYRO_STACK)


def new_param_store_state():
    """An empty param store's contents, for `own_param_store`."""
    return {"params": {}, "constraints": {}, "param_to_name": {}}


@contextlib.contextmanager
def own_param_store(state):
    """Run with the contents of Pyro's global param store swapped for `state` (from
    `new_param_store_state`, owned by the caller), and swapped back after.

    A `PyroModule` registers its parameters in the global store when its programs run,
    which keeps every model's weights alive after the model is gone. Pyro 1.9's
    alternatives both fall short: the `module_local_params` setting is global, and its
    parameter sites lack the `unconstrained()` that `SVI` with a `pyro.optim`
    optimizer reads; `ParamStoreDict.scope` strips that same attribute from every
    parameter when it exits (`get_state` prepares for pickling). So this swaps the
    store's three private dicts (`_params`, `_constraints`, `_param_to_name`),
    which is all a store holds in 1.9: the sites stay ordinary `pyro.param` sites,
    and the entries live in `state`.
    """
    store = pyro.get_param_store()
    saved = store._params, store._constraints, store._param_to_name
    store._params, store._constraints, store._param_to_name = state["params"], state["constraints"], state["param_to_name"]
    try:
        yield
    finally:
        store._params, store._constraints, store._param_to_name = saved


def value_with_gradient(value, surrogate):
    """A tensor whose value is `value` and whose gradient is that of `surrogate`."""
    return value.detach() + (surrogate - surrogate.detach())


class FixedJitTrace_ELBO(JitTrace_ELBO):
    """Pyro 1.9's `JitTrace_ELBO.differentiable_loss` returns `loss + (surrogate - surrogate.detach())`
    with a `loss` that still carries its graph (eager `Trace_ELBO` takes `.item()` of it), so
    its gradient is the surrogate's plus the loss's: twice the ELBO gradient for reparameterized z."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss, surrogate_loss = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        return value_with_gradient(loss, surrogate_loss)


class FixedJitTraceMeanField_ELBO(JitTraceMeanField_ELBO):
    """Pyro 1.9's `JitTraceMeanField_ELBO` caches its compiled loss as `_differentiable_loss`
    but checks `_loss_and_surrogate_loss`, so it recompiles on every call; set the attribute
    its check reads."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = super().differentiable_loss(model, guide, *args, **kwargs)
        self._loss_and_surrogate_loss = self._differentiable_loss
        return loss
