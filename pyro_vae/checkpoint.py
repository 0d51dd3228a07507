"""Checkpoints: written atomically, read safely.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, saved
with ``torch.save``. Writing goes to a temporary file in the same directory,
which is flushed, fsynced and renamed over the target, so a crash leaves either
the old checkpoint or the new one, never half of one. Reading uses
``torch.load(weights_only=True)``: a file that carries arbitrary pickled objects
is refused, never executed.
"""

import os
import pickle
import tempfile
from pathlib import Path

import torch

from .registry import UserError


def save_checkpoint(state, path):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


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
    except (RuntimeError, EOFError, OSError) as error:
        raise UserError(f"cannot read checkpoint {path}: it is truncated or corrupt ({str(error).splitlines()[0][:160]})") from None
