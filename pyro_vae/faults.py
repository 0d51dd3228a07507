"""What a run that goes wrong numerically says, in one line, and what it leaves to resume from.

Three checks, each cheap enough for the loop (`steps` never reads the device inside a step):

- `check_steps`: more non-finite (skipped) steps than `train.max_skipped_steps` allows,
  read from the step's device-side counters before every checkpoint and whenever the loss is
  read anyway (the progress bar), so the last good checkpoint stays intact;
- `check_parameters`: a parameter left NaN or infinite (a finite gradient times a huge learning
  rate passes the step's own checks), once per epoch;
- `stopped_if_diverged`: torch refusing NaN or infinite distribution parameters (finite
  parameters can still overflow to NaN outputs), turned into the same line; any other error is
  a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .registry import UserError

if TYPE_CHECKING:
    from .build import TrainingComponents
    from .steps import Step

# What torch says of NaN or infinite distribution parameters (a model that diverged); a guide's
# covariance that overflowed is a LinAlgError ("not positive-definite").
DIVERGED = ("found invalid values", "expects all elements of std >= 0", "not positive-definite")


class Faults:
    """The fault checks of one run: its step's counters, its parameters and its run directory."""

    def __init__(self, step_fn: Step, components: TrainingComponents, train_config: dict[str, Any], out: Path) -> None:
        self.step_fn, self.components, self.train_config, self.out = step_fn, components, train_config, Path(out)

    def checkpoint_kept(self) -> str:
        """What a run stopped by a fault leaves to resume from, in words (the steps are checked
        before every save, so an existing checkpoint is the last good one)."""
        if (self.out / "checkpoint.pt").is_file():
            return f"the last good checkpoint in {self.out} is intact"
        return f"no checkpoint was written yet (the fault came before the first one), so {self.out} holds none to resume"

    def check_steps(self) -> None:
        """Stop with a one-line error if more steps were non-finite (and skipped) than
        `train.max_skipped_steps` allows."""
        skipped, step_number, loss, was_loss = self.step_fn.faults()
        if skipped <= self.train_config["max_skipped_steps"]:
            return
        raise UserError(
            f"non-finite {'loss' if was_loss else 'gradient'} ({loss}) at step {step_number + 1} "
            f"(epoch {step_number // self.components.steps_per_epoch + 1}, "
            f"kl_weight {self.components.kl_schedule(step_number):.3g}); "
            f"likely causes: train.lr = {self.train_config['lr']:g} too high, "
            f"a likelihood scale collapsing (raise its min_scale), or extreme data; {self.checkpoint_kept()}"
        )

    def check_parameters(self, epoch: int, steps: int) -> None:
        """Stop with a one-line error if a parameter is NaN or infinite (one read from the device)."""
        if not torch.stack([p.detach().isfinite().all() for p in self.components.parameters()]).all():
            self.diverged("parameters", epoch, steps)

    def diverged(self, what: str, epoch: int, steps: int) -> None:
        """Stop with the one-line error that names `what` came out NaN or infinite in `epoch`."""
        raise UserError(
            f"non-finite {what} in epoch {epoch} (after {steps} steps); likely causes: "
            f"train.lr = {self.train_config['lr']:g} too high (set train.clip_grad_norm, or a lower rate), "
            f"or extreme data; {self.checkpoint_kept()}"
        )

    @contextlib.contextmanager
    def stopped_if_diverged(self, epoch: int, steps: int) -> Iterator[None]:
        """Torch's refusal of NaN or infinite distribution parameters inside the block, as `diverged`'s
        one line; checked data cannot cause these errors. Any other error is raised as it is."""
        try:
            yield
        except (ValueError, RuntimeError) as error:
            if not isinstance(error, torch.linalg.LinAlgError) and not any(words in str(error) for words in DIVERGED):
                raise
            self.diverged(f"network outputs ({' '.join(str(error).split()[:6])} ...)", epoch, steps)
