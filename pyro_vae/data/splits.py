"""Cutting arrays into train / valid / test `Split`s: by a seeded shuffle (`split_off`), or as
named in an .npz or a dict like it (`given_splits`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..registry import UserError
from .containers import SPLITS, Split
from .validation import check_factors, check_per_example, num_examples
from .values import one_number_per_example


def factor_names_of(arrays, splits):
    """The factor names an .npz (or a dict like it) gives as `factor_names`, else factor0, factor1, ...
    where its splits carry factors; None where they carry none."""
    given = next((s.factors for s in splits.values() if s.factors is not None), None)
    if given is None:
        return None
    if "factor_names" in arrays:
        return tuple(str(n) for n in np.asarray(arrays["factor_names"]).reshape(-1))
    width = 1 if np.ndim(given) == 1 else np.shape(given)[1]
    return tuple(f"factor{i}" for i in range(width))



def raw_splits(train, valid, test, labels=(None, None, None), factors=(None, None, None)):
    """Splits of the arrays as they are (`make_data` reads them), labels checked
    (`check_per_example`) and made integers."""
    def as_long(name, x, y):
        return None if y is None else check_per_example(f"{name}_labels", y, num_examples(x, name), images=name, low=0)

    return {name: Split(x, as_long(name, x, y), f) for name, x, y, f in zip(SPLITS, (train, valid, test), labels, factors)}


def split_off(x, labels, fractions, seed=0):
    """A fixed, seeded shuffle of (x, labels) cut into train / valid / test (x may be None).
    The shuffle depends on len(x) and the seed alone, so arrays of one length are cut alike."""
    if x is None:
        return [None] * 3, [None] * 3
    order = np.random.RandomState(seed).permutation(len(x))
    n_valid, n_test = (int(round(f * len(x))) for f in fractions)
    parts = np.split(order, [len(x) - n_valid - n_test, len(x) - n_test])
    pick = lambda a: [None if a is None else a[torch.as_tensor(p) if torch.is_tensor(a) else p] for p in parts]
    return pick(x), pick(labels)


def given_splits(arrays: Mapping[str, Any], fractions: Sequence[float], where: str) -> dict[str, Split]:
    """Splits from arrays named like an .npz's: `"train"`, and optionally `"valid"`,
    `"test"` and `"<split>_labels"`. A split not given is cut from a seeded shuffle of
    train by its fraction (`fractions` = valid, test)."""
    if "train" not in arrays:
        raise UserError(f"{where} has no array 'train' (it has: {', '.join(arrays) or 'none'})")
    for name in SPLITS:  # labels line up with their images before any split is cut
        if name in arrays:
            num_examples(arrays[name], name)
            if np.ndim(arrays[name]) == 1:  # refused here, with the shape given, not a split's
                raise one_number_per_example(name, tuple(np.shape(arrays[name])))
        if f"{name}_labels" in arrays:
            if name not in arrays:
                raise UserError(f"{where} has {name}_labels but no {name} array for them to label")
            arrays = {**arrays, f"{name}_labels": check_per_example(
                f"{name}_labels", arrays[f"{name}_labels"], num_examples(arrays[name], name), images=name, low=0)}
    parts = [arrays.get(name) for name in SPLITS]
    labels = [arrays.get(f"{name}_labels") for name in SPLITS]
    factors = [arrays.get(f"{name}_factors") for name in SPLITS]
    if "valid" not in arrays or "test" not in arrays:
        missing = [0.0 if name in arrays else fraction for name, fraction in zip(("valid", "test"), fractions)]
        check_factors("train", arrays["train"], factors[0])  # before cutting both by one shuffle
        cut, cut_labels = split_off(arrays["train"], arrays.get("train_labels"), missing)
        cut_factors, _ = split_off(factors[0], None, missing)  # the same shuffle: it depends on N alone
        for i, name in enumerate(SPLITS):
            if name == "train" or name not in arrays:
                parts[i], labels[i], factors[i] = cut[i], cut_labels[i], cut_factors[i]
    train, valid, test = parts
    return raw_splits(train, valid, test, labels, factors)

