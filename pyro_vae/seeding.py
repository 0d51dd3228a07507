"""Fixed noise for measurements: a forked RNG seeded apart from the caller's stream, and eval mode.

Evaluation and the estimators' diagnostics (`objectives.gradient_variance`) draw their noise from
`EVALUATION_SEED` on a forked RNG, so epochs (and runs) are compared on the same draws, and the
caller's RNG stream does not depend on whether it measures anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

# Evaluation draws its noise from this fixed seed, so epochs (and runs) are compared
# on the same draws, and the caller's RNG stream does not depend on whether it evaluates.
EVALUATION_SEED = 2718


def rng_devices() -> list[int]:
    """The CUDA devices whose RNG a fork must save and restore: the current one, if any."""
    return [torch.cuda.current_device()] if torch.cuda.is_available() else []


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run with `module` in eval mode, then restore the mode it had.

    Evaluation must score one fixed density: in training mode a likelihood with
    `scale = "optimal"` refits its scale to every chunk it sees (and overwrites its
    running value with the evaluated data)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@contextlib.contextmanager
def forked_rng(seed: int | None = None) -> Iterator[None]:
    """Draw from a fork of torch's RNGs (the CPU's and the current CUDA device's), seeded with
    `seed` (None: left as it is); the caller's streams are restored afterwards."""
    with torch.random.fork_rng(devices=rng_devices()):
        if seed is not None:
            torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def seeded_eval(module: torch.nn.Module, seed: int | None = None) -> Iterator[torch.nn.Module]:
    """`forked_rng(seed)` with `module` in eval mode: how every evaluation function measures."""
    with forked_rng(seed), eval_mode(module):
        yield module
