"""What an estimator reads of a model, as a `typing.Protocol`: the estimators depend on this, not
on the model classes (which depend on the estimators: a model kind names the estimators it
refuses), so the two packages do not import each other."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from pyro.distributions import TorchDistribution


class Programs(Protocol):
    """A model as the estimators see it: its Pyro programs `model` and `guide` (what every
    estimator traces), whether they are its class's own, unmodified ones (`has_standard_programs`:
    only then may an estimator compute their loss directly, without tracing), and the densities
    the direct computations read: `prior_dist()` p(z), `likelihood_dist(z, x)` p(x | z) and
    `guide_dist(x)` q(z | x). Its `discrete_latents` (the discrete sites an estimator must be
    able to train) and `kind` (its `model.kind`, for messages) are read by `Estimator.check_model`.
    The library's `models.VAE` is one."""

    discrete_latents: tuple[str, ...]  # the discrete latent sites its guide samples (the gmvae's "y")

    @property
    def kind(self) -> str: ...  # its `model.kind`, for messages

    def model(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> None: ...

    def guide(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> None: ...

    @property
    def has_standard_programs(self) -> bool: ...

    def prior_dist(self) -> TorchDistribution: ...

    def likelihood_dist(self, z: torch.Tensor, x: torch.Tensor | None = None) -> TorchDistribution: ...

    def guide_dist(self, x: torch.Tensor) -> TorchDistribution: ...
