"""The registry of datasets (`DATASETS`: `data.name` -> a `Source`) and the base class every
source derives from.

A new dataset is one module in this package, a `Source` subclass under
`@DATASETS.register("name")`, and one import line in `sources/__init__.py`.
"""

from __future__ import annotations

from pathlib import Path

from ...registry import Registry

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

