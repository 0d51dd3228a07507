"""Your own arrays: an .npz file (`data.name = "npz"`), or arrays given in Python (`"arrays"`)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ...registry import UserError
from ..splits import factor_names_of, given_splits
from ..validation import check_fractions
from .base import DATASETS, Source


@DATASETS.register("npz")
class NPZ(Source):
    """Your own arrays: an .npz with 'train' (and optionally 'valid', 'test', '<split>_labels', '<split>_factors').

    `<split>_factors` (N, K) are known factors of variation (named by an array
    `factor_names`, else factor0, factor1, ...): the disentanglement metrics read them.

    A split not given is cut from a seeded shuffle of train by its fraction.
    """

    def __init__(self, path="", download=False, valid_fraction=0.1, test_fraction=0.1):
        super().__init__(path, download)
        self.fractions = check_fractions(valid_fraction, test_fraction)

    def load(self):
        if self.path is None:
            raise UserError("data.path must name the .npz file for data.name = \"npz\"")
        arrays = read_npz(self.path, ("train",))
        splits = given_splits(arrays, self.fractions, str(self.path))
        self.factor_names = factor_names_of(arrays, splits)
        return splits


@DATASETS.register("arrays")
class Arrays(Source):
    """Arrays given in Python, train(config, data=...): a config cannot load them; runs on them record this name."""

    def __init__(self, path="", download=False, valid_fraction=0.1, test_fraction=0.1):
        super().__init__(path, download)
        check_fractions(valid_fraction, test_fraction)

    def load(self):
        raise UserError(
            'data.name = "arrays": this run was trained on arrays given in Python, which a config cannot '
            "load; pass them again: train(config, data=...) or train(resume=RUN, data=...)"
        )


def read_npz(path, required):
    """The arrays of the .npz file `path`, which must hold those named in `required`; a one-line
    error for a directory, a file that is not an .npz, or an array of Python objects (never
    unpickled: loading one can run any code)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"data.path: {path} is a directory, not a file; give the path of an .npz file")
    if not path.is_file():
        raise UserError(f"data.path: no such file {path}")
    if not zipfile.is_zipfile(path):  # else numpy takes it for a pickle, and advises allow_pickle
        raise UserError(f"{path} is not an .npz file (a zip archive of .npy arrays, as np.savez writes)")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as f:
            for key in f.files:
                try:
                    arrays[key] = f[key]
                except ValueError as error:
                    if "allow_pickle" not in str(error):
                        raise
                    raise UserError(
                        f"{path}: array {key!r} holds Python objects, which are not read (unpickling can run "
                        "any code); store it as numbers, e.g. np.asarray(x, dtype=np.float32)"
                    ) from None
    except UserError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(f"cannot read {path} as .npz: {error}") from None
    missing = [key for key in required if key not in arrays]
    if missing:
        raise UserError(f"{path} has no array {missing[0]!r} (it has: {', '.join(arrays) or 'none'})")
    return arrays
