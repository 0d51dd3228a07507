"""Your own arrays: an .npz file (`data.name = "npz"`), or arrays given in Python (`"arrays"`)."""

from __future__ import annotations

from ...registry import UserError
from ..splits import factor_names_of, given_splits
from ..validation import check_fractions
from .base import DATASETS, Source, read_npz


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
