"""Checkpoints: written atomically, read safely.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, saved
with `torch.save`. Writing goes to a temporary file in the same directory,
which is flushed, fsynced and renamed over the target, so a crash leaves either
the old checkpoint or the new one, never half of one. Reading uses
`torch.load(weights_only=True)`: a file that carries arbitrary pickled objects
is refused, never executed. `rng_state` / `set_rng_state` carry every random
number generator a run draws from, so a resumed run continues the same streams.
"""

import pickle
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write
from .registry import UserError


def save_checkpoint(state, path):
    """`torch.save` the state to `path` atomically and durably (fsynced file and directory)."""
    with atomic_write(path, "wb", durable=True) as f:
        torch.save(state, f)


def load_checkpoint(path, map_location="cpu"):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UserError(
            f"refusing to load {path}: it holds objects other than tensors and plain data "
            f"({first_line[:160]}); only checkpoints written by pyro-vae are loaded"
        ) from None
    except (RuntimeError, EOFError, OSError, IndexError, KeyError, ValueError, struct.error, UnicodeDecodeError) as error:
        # torch.load reads a file that is no zip archive with its legacy unpickler, whose errors on
        # arbitrary bytes (a CSV given as --checkpoint: IndexError) say nothing but "not a checkpoint"
        raise UserError(f"cannot read checkpoint {path}: it is truncated or corrupt{_detail(error)}; {_fallback(path)}") from None


def _detail(error):
    """The first sentence of torch's message, whole (torch's own messages run to several)."""
    text = " ".join(str(error).split())
    return f" ({text.split('. ')[0].rstrip('.')})" if text else ""


def _fallback(path):
    """Where to turn when `path` cannot be read: the run's other checkpoint, if it has one."""
    if path.name != "best.pt" and (path.parent / "best.pt").is_file():
        return (
            f"{path.parent / 'best.pt'} holds the best validation epoch: use it with --checkpoint best.pt "
            "(evaluate, plot, sample) or load_run(run, checkpoint=\"best.pt\")"
        )
    if path.name == "best.pt" and (path.parent / "checkpoint.pt").is_file():
        return f"{path.parent / 'checkpoint.pt'} holds the last epoch: use it with --checkpoint checkpoint.pt"
    return "the run has no other checkpoint (best.pt) to fall back on; train it again"


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from, as plain tensors and numbers (safe for weights_only)."""
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # legacy form: numpy's global RandomState is always an MT19937
    name, keys, position, has_gauss, cached = state
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": position, "has_gauss": has_gauss, "cached": cached},
        "python": random.getstate(),
    }


def set_rng_state(state):
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached"]))
    random.setstate(state["python"])
