"""The VAE as a pair of Pyro programs.

Generative model, for each data point in the `"data"` plate:

```
z ~ p(z)                       site "z"  (the prior)
x ~ p(x | decoder(z))          site "x"  (the likelihood, observed)
```

Amortized guide:

```
z ~ q(z | encoder(x))          site "z"  (reparameterized; a diagonal Gaussian by default)
```

The guide's family (`guides`: diagonal, low-rank or full Gaussian, or an inverse
autoregressive flow) decides how many numbers the encoder outputs.

`SVI(vae.model, vae.guide, optim, Trace_ELBO())` then maximizes
ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z)). The model knows nothing of KL
weights: those are handlers wrapped around it from outside (`annealing`).

The three densities are written once, as methods that return distributions
(`prior_dist`, `likelihood_dist`, `guide_dist`). `model` and `guide` are
built from them, and so is everything that computes the same numbers without
tracing (the direct losses and log weights in `objectives`, which `evaluation`'s
importance weights use too): a subclass that changes a density changes every path at once, and
one that redefines `model` or `guide` themselves is traced (`has_standard_programs`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import pyro
import torch
from pyro.nn import PyroModule, pyro_method

from .._pyro_compat import new_param_store_state, own_param_store
from ..checks import integer
from ..guides import GUIDES
from ..likelihoods import LIKELIHOODS
from ..losses import NegativeELBO
from ..nets import DECODERS, ENCODERS
from ..priors import PRIORS
from ..registry import Registry, UserError, listing

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from typing import Any

    from pyro.distributions import TorchDistribution
    from torch import nn

    from ..data import Data
    from ..guides import GuideFamily
    from ..objectives import Estimator
    from ..registry import Spec

# model.kind -> the model's class: a kind is one class (the interface below) and one register line.
# The two rules outside the classes (``build.build_model``): ``model.latent_dim = [z1, z2]`` makes the
# "vae" kind the two-layer ``hierarchical.HierarchicalVAE``, and ``model.features`` makes the "m2" kind
# M1+M2, ``m1m2.StackedM2`` (a subclass of M2: M2 naming it would import in a circle).
MODEL_KINDS = Registry("model kind")

# The gmvae's default number of components (config: model.components).
COMPONENTS = 10

# The hidden widths of a two-layer model's two z2 -> z1 links (config: model.link_hidden).
LINK_HIDDEN = [256]


def is_two_layer(latent_dim: object) -> bool:
    """Whether `model.latent_dim` asks for two latent layers (a list `[z1, z2]`)."""
    return isinstance(latent_dim, (list, tuple))


@MODEL_KINDS.register("vae")
class VAE(PyroModule):
    """A variational autoencoder whose `model` and `guide` are Pyro programs.

    Every component is given by a registry name, a table `{"name": ..., options}`,
    or an already built module:

    ```
    VAE(data_shape=(1, 28, 28), latent_dim=16,
        encoder={"name": "mlp", "hidden": [256, 256]},
        likelihood={"name": "gaussian", "scale": 0.1}, prior="normal", guide="full")
    ```

    The VAE owns its parameters: while its programs run, Pyro's param store is its own
    (`_pyro_compat.own_param_store`), so parameter sites appear in traces as usual
    (`SVI` with a `pyro.optim` optimizer trains them) but nothing is left in the
    global store, and two VAEs never share weights. Code that looks parameters up in the
    global store by name between program runs (Pyro's JIT ELBOs do) runs inside
    `with vae.param_store():`.

    **A model kind's interface.** What the library asks of a model it asks of the model's class,
    never of its type: `takes_labels` (it trains and is scored on (x, y) pairs), `conditional`
    (its ELBO is conditional on y), `classifies` (it has a classifier q(y | x): `classify`),
    `config_options` and `from_config` (its constructor from the `[model]` section, with the
    section's checks), `check_setup` (what it refuses of the data, estimator and objective),
    `training_loss`, `training_batches` and `training_steps` (what it trains with and on),
    `discrete_latents` and `clusters` (a discrete latent, and clustering by it: the gmvae),
    `default_estimator` (the `objective.estimator` of a config that names none).
    A new kind subclasses `VAE`, overrides what differs and adds one
    `@MODEL_KINDS.register("name")` line, in a module of its own in `pyro_vae.models`.
    """

    takes_labels = False  # trains on (x, y) pairs, and is evaluated and plotted with the true labels
    conditional = False  # whether its ELBO is conditional on y (a CVAE's is)
    classifies = False  # whether it has a classifier q(y | x) (``classify``), scored by its accuracy
    # the discrete latent sites its guide samples (the gmvae's "y"): an estimator must be able to train
    # them (`Estimator.handles_discrete_latents`), and `elbo_terms(x)` sums them out exactly
    discrete_latents: tuple[str, ...] = ()
    clusters = False  # whether it assigns data points to clusters (`cluster`, `sample(n, component=k)`)
    default_estimator = "trace"  # `objective.estimator` where the config names none

    def __init__(
        self,
        data_shape: int | Sequence[int],
        latent_dim: int = 16,
        encoder: Spec = "mlp",
        decoder: Spec = "mlp",
        likelihood: Spec = "bernoulli",
        prior: Spec = "normal",
        data_levels: int | None = None,
        guide: Spec = "normal",
    ) -> None:
        data_shape = self._start(data_shape)
        self.latent_dim = integer(latent_dim, "model.latent_dim", minimum=1)
        self.likelihood = LIKELIHOODS.build(likelihood, "model.likelihood", data_shape=data_shape, data_levels=data_levels)
        self.prior = PRIORS.build(prior, "model.prior", latent_dim=latent_dim, data_shape=data_shape)
        self.guide_family = GUIDES.build(guide, "model.guide", latent_dim=latent_dim)
        check_prior_fits_guide(self.prior, self.guide_family)
        self.encoder = ENCODERS.build(
            encoder,
            "model.encoder",
            data_shape=data_shape,
            latent_dim=latent_dim,
            num_params=self.guide_family.num_params,
        )
        self.decoder = DECODERS.build(
            decoder,
            "model.decoder",
            data_shape=data_shape,
            latent_dim=latent_dim,
            num_params=self.likelihood.num_params,
        )

    def _start(self, data_shape: int | Sequence[int]) -> tuple[int, ...]:
        """What every model's constructor does first (the shared construction; a kind that builds
        its own components, `HierarchicalVAE`, calls this instead of `VAE.__init__`): an empty
        module named "vae" with its own param store, and `data_shape` as a tuple, which it returns."""
        PyroModule.__init__(self, name="vae")
        self.data_shape = (data_shape,) if isinstance(data_shape, int) else tuple(data_shape)
        self._param_state = new_param_store_state()  # this model's param store
        return self.data_shape

    # ---- a model kind's interface: what the library asks of a model ----

    @property
    def kind(self) -> str:
        """The `model.kind` this model is of (its class's registered name)."""
        return self.registered_name

    @classmethod
    def config_options(cls, model: Mapping[str, Any]) -> dict[str, Any]:
        """The constructor's options of this kind from the checked `[model]` section, refusing in one
        line the section's keys the kind has no use for."""
        if model["link_hidden"] != LINK_HIDDEN:
            raise UserError("model.link_hidden sets the links between two latent layers; "
                            "it needs model.latent_dim = [z1, z2] (and model.kind = \"vae\")")
        cls.refuse_features(model)
        return {"guide": model["guide"]}

    @classmethod
    def refuse_features(cls, model: Mapping[str, Any]) -> None:
        """`model.features` (M1+M2) is M2's, `model.components` and `model.component_prior` the gmvae's;
        every other kind refuses them in one line."""
        refuse_components(model)
        if model["features"]:
            raise UserError(f"model.features (M1+M2: M2 on a trained VAE's codes) is for model.kind = \"m2\", "
                            f"not {model['kind']!r}")

    @classmethod
    def from_config(cls, model: Mapping[str, Any], data_shape: int | Sequence[int], data_levels: int | None = None,
                    load_features: Callable[[str, int | Sequence[int]], VAE] | None = None) -> VAE:
        """The model the checked `[model]` section describes, for data of shape `data_shape` (and
        `data_levels`); `load_features(run, data_shape)` loads M1 of M1+M2 (`model.features`)."""
        options = cls.config_options(model)
        return cls(data_shape, latent_dim=model["latent_dim"], encoder=model["encoder"], decoder=model["decoder"],
                   likelihood=model["likelihood"], prior=model["prior"], data_levels=data_levels, **options)

    def check_setup(self, config: Mapping[str, Any], data: Data, estimator: Estimator) -> None:
        """Refuse, in one line, data, an estimator or an objective this model cannot train with (none here)."""

    def training_loss(self, estimator: Estimator, features_per_term: float, objective: Mapping[str, Any],
                      data: Data) -> nn.Module:
        """The loss module this model trains with (`losses`): the negative ELBO of minibatches x."""
        return NegativeELBO(self, estimator, features_per_term)

    def training_batches(self, data: Data, batch_size: int, epoch_seed: int, noise: torch.Generator | None,
                         device: str | torch.device, rank: int = 0, world_size: int = 1, skip: int = 0,
                         labeled_batch_size: int = 0) -> Iterator[Any]:
        """One epoch of what this model trains on: minibatches x of the training split."""
        return data.train_batches(batch_size, epoch_seed, noise, device, rank, world_size, skip=skip)

    def training_steps(self, data: Data, batch_size: int) -> int:
        """Optimizer steps in one epoch of `training_batches`."""
        return math.ceil(len(data.train) / batch_size)

    @property
    def has_standard_programs(self) -> bool:
        """Whether `model` and `guide` are this class's own (a subclass may redefine them);
        only then may their loss be computed from the densities without tracing them."""
        return type(self).model is VAE.model and type(self).guide is VAE.guide

    @property
    def num_features(self) -> int:
        """D, the number of numbers in one data point."""
        return math.prod(self.data_shape)

    def param_store(self) -> AbstractContextManager[None]:
        """A context in which Pyro's global param store holds this VAE's parameters (and only them)."""
        return own_param_store(self._param_state)

    # ---- the densities, written once ----

    def prior_dist(self) -> TorchDistribution:
        """p(z), event shape `(latent_dim,)` (a VampPrior is built from the guide, `guide_dist`)."""
        return self.prior(self.guide_dist)

    def likelihood_dist(self, z: torch.Tensor, x: torch.Tensor | None = None) -> TorchDistribution:
        """p(x | z) for codes `z` of shape `(..., latent_dim)`; `x` is the observation, if any
        (the `optimal` Gaussian scale is fitted to it)."""
        return self.likelihood(self.decoder(z), x)

    def guide_dist(self, x: torch.Tensor) -> TorchDistribution:
        """q(z | x), the guide family's distribution at the encoder's output; event shape `(latent_dim,)`."""
        return self.guide_family(self.encoder(x))

    # ---- the programs ----

    @pyro_method
    def model(self, x: torch.Tensor) -> None:
        """p(z) p(x | z) for a minibatch `x` of shape `(N, *data_shape)`."""
        x = self._check_batch(x)
        with self.param_store(), pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior_dist())
            pyro.sample("x", self.likelihood_dist(z, x), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor) -> None:
        """q(z | x) (`guide_dist`), reparameterized."""
        x = self._check_batch(x)
        with self.param_store(), pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.guide_dist(x))

    def _check_batch(self, x: object) -> torch.Tensor:
        if not torch.is_tensor(x):
            raise UserError(
                f"the model and guide take a minibatch tensor of shape (N, {', '.join(map(str, self.data_shape))}), "
                f"got {type(x).__name__}"
            )
        return x

    # ---- uses of a trained model ----

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """`num_samples` draws z ~ p(z), shown as E[x | z] (the likelihood's mean)."""
        return self.likelihood.mean(self.decoder(self.sample_latents(num_samples)["z"]))

    @torch.no_grad()
    def prior_variances(self, num_samples: int) -> dict[str, torch.Tensor]:
        """{site: Var_p(z_d) per dimension}: in closed form where the prior has one, else from
        `num_samples` draws (a flow)."""
        try:
            return {"z": self.prior_dist().variance}
        except NotImplementedError:
            return {site: z.var(0) for site, z in self.sample_latents(num_samples).items()}

    @torch.no_grad()
    def sample_latents(self, num_samples: int) -> dict[str, torch.Tensor]:
        """{site: draws from the prior}, `num_samples` of each latent site ("z" here)."""
        return {"z": self.prior_dist().sample((num_samples,))}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z] at the guide's mean code z = E_q[z | x]."""
        return self.likelihood.mean(self.decoder(self.encode(x)))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The guide's mean code E_q[z | x] (a Monte Carlo average for a flow guide)."""
        return self.guide_family.mean(self.guide_dist(x))

    @torch.no_grad()
    def encode_layers(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{site: E_q[code | x]} for every latent site (one, "z", here)."""
        return {"z": self.encode(x)}


def refuse_components(model: Mapping[str, Any]) -> None:
    """`model.components` and `model.component_prior` set the gmvae's mixture; any other kind refuses them."""
    for key, default in (("components", COMPONENTS), ("component_prior", "uniform")):
        if key in model and model[key] != default:
            raise UserError(f"model.{key} sets the components of model.kind = \"gmvae\", not {model['kind']!r}")


def check_prior_fits_guide(prior: nn.Module, guide_family: GuideFamily) -> None:
    """A prior built from the guide's density (the VampPrior) needs that density cheap at any point."""
    if getattr(prior, "built_from_guide", False) and not guide_family.density_anywhere:
        raise UserError(
            f"prior {prior.registered_name!r} is a mixture of the guide's densities at pseudo-inputs, which "
            f"the {guide_family.registered_name!r} guide cannot score cheaply; use guide "
            f"{listing(GUIDES.names(density_anywhere=True))}"
        )
