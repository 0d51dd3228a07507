"""The registry of datasets (`DATASETS`: `data.name` -> a `Source`) and the base class every
source derives from, with `read_npz`, the one reader of .npz files.

A new dataset is one module in this package, a `Source` subclass under
`@DATASETS.register("name")`, and one import line in `sources/__init__.py`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ...registry import Registry, UserError

DATASETS = Registry("dataset")


class Source:
    """Base class: `load()` returns `{"train": Split, "valid": Split, "test": Split}` of
    arrays as stored (uint8 images stay uint8: `make_data` reads them)."""

    context_arguments = ("path", "download")
    levels: int | None = None  # the integer levels of float data, where the source knows them
    factor_names: tuple[str, ...] | None = None  # the names of the splits' factors of variation, where it has them
    registered_name: str  # set by `DATASETS.register`

    def __init__(self, path="", download=False):
        self.path = Path(path) if path else None
        self.download = download

    def load(self):
        raise NotImplementedError

    def renderer(self):
        """A function from factor values (N, K) to images (N, ...) as stored, where the source
        can draw any factor values (a generative process, not a file); else None."""
        return None


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
