"""From a dataset's name (`load_data`) or your own arrays (`as_data`) to `Data`: read, shaped,
checked, binarized or dequantized (`make_data`), with some training labels hidden (`keep_labels`)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import torch

from ..registry import UserError
from .containers import HIDDEN, SPLITS, STATIC_BINARIZATION_SEED, Data, Split
from .sources.base import DATASETS
from .splits import factor_names_of, given_splits
from .validation import check_binarize, check_factors, check_fractions, check_split
from .values import as_intensities, choose_binarization, dequantized, image_layout


def load_data(name: str = "digits", path: str | os.PathLike[str] = "", binarize: str = "none", download: bool = False,
              likelihood: str | None = None, labeled: int | str = "all", labeled_seed: int = 0,
              dequantize: bool = False, subset: dict[str, int] | None = None, subset_seed: int = 0,
              **options: Any) -> Data:
    """Load a named dataset, read its intensities, and binarize or dequantize it as asked.

    `likelihood` (a likelihood's name) is what `binarize = "auto"` decides by. `subset`
    (`{"train": N, ...}`) keeps a random subset of those splits, seeded by `subset_seed`
    (`Split.random_subset`: the same examples on every machine, of the binarized data, so a
    subset's images are the full data's). With `labeled = N`, N labels of the (kept) training
    split are kept (`keep_labels`) and the rest hidden.
    """
    check_binarize(binarize)
    source = DATASETS.build({"name": name, **options}, "data", path=path, download=download)
    splits = source.load()
    data = make_data(splits, binarize, likelihood, levels=source.levels, source=f"{name} {path}".strip(),
                     factor_names=source.factor_names, dequantize=dequantize)
    draw = source.renderer()
    if draw is not None:
        data.render = lambda factors: image_layout(as_intensities([draw(np.asarray(factors))])[0][0])
    data = with_subset(data, subset, subset_seed)
    if labeled != "all":
        data.train.labels = keep_labels(data.train.labels, labeled, labeled_seed)
    return data


def with_subset(data: Data, subset: dict[str, int] | None, seed: int = 0) -> Data:
    """`data` with a seeded random subset of each split named in `subset` (`{"train": N, ...}`),
    the others whole; a new `Data` (the given one is left as it was)."""
    if not subset:
        return data
    kept = {split: data.split(split).random_subset(subset.get(split), seed) for split in SPLITS}
    return dataclasses.replace(data, train=kept["train"], valid=kept["valid"], test=kept["test"])


def as_data(data: Data | torch.Tensor | np.ndarray | dict[str, Any], binarize: str = "none",
            likelihood: str | None = None, valid_fraction: float = 0.1, test_fraction: float = 0.1,
            dequantize: bool = False) -> Data:
    """Your own arrays as `Data`, read like a dataset's files.

    `data` is an array or tensor `(N, ...)` (cut into train / valid / test by a seeded
    shuffle and the two fractions), a dict named like an .npz's arrays (`"train"`, and
    optionally `"valid"`, `"test"`, `"<split>_labels"`), or a `Data`, returned
    as it is. Intensities, image shapes and binarization follow `make_data`.
    """
    if isinstance(data, Data):
        return data
    check_binarize(binarize)
    fractions = check_fractions(valid_fraction, test_fraction)
    if torch.is_tensor(data) or isinstance(data, np.ndarray):
        data = {"train": data}
    if not isinstance(data, dict):
        raise UserError(
            f"data must be an array or tensor (N, ...), a dict of them with 'train' (and 'valid', 'test', "
            f"'<split>_labels'), or a Data; got {type(data).__name__}"
        )
    splits = given_splits(data, fractions, "the data dict")
    return make_data(splits, binarize, likelihood, source="arrays given in Python", factor_names=factor_names_of(data, splits),
                     dequantize=dequantize)


def make_data(splits, binarize="none", likelihood=None, levels=None, source="", factor_names=None, dequantize=False):
    """`Data` from `{"train": Split, "valid": Split, "test": Split}` whose `x` are
    arrays or tensors of any numeric dtype (and whose `factors`, where given, are named by
    `factor_names`).

    The values are read by `as_intensities` (`levels`, where given, is the number of
    integer levels of float data that a source knows of, e.g. 17 for the digits' k / 16),
    shaped by `image_layout`, checked, and binarized as `choose_binarization` says,
    or (`dequantize`) dequantized: valid and test once here, train at every epoch.
    """
    check_binarize(binarize)
    if dequantize and binarize in ("static", "dynamic"):
        raise UserError(
            f"data.dequantize = true and data.binarize = {binarize!r} contradict each other: binarization "
            "makes the data {0, 1} for a Bernoulli likelihood, dequantization spreads them over [0, 1) for a "
            "continuous one; choose one"
        )
    xs, found_levels = as_intensities([splits[name].x for name in SPLITS])
    levels = found_levels or levels
    if dequantize and levels is None:
        raise UserError(
            "data.dequantize = true needs integer-valued data (uint8 images, or a dataset of known levels), "
            "but these are float values of unknown levels; store them as uint8 or set data.dequantize = false"
        )
    for name, x in zip(SPLITS, xs):
        x = image_layout(x, name)
        check_split(name, x, splits[name].labels)
        splits[name] = Split(x, splits[name].labels, check_factors(name, x, splits[name].factors, factor_names))
    shapes = {name: tuple(splits[name].x.shape[1:]) for name in SPLITS}
    for name in ("valid", "test"):
        if shapes[name] != shapes["train"]:
            raise UserError(f"the {name} examples have shape {shapes[name]} but the train examples {shapes['train']}")
    binarize = "none" if dequantize else choose_binarization(binarize, likelihood, [splits[name].x for name in SPLITS])
    if dequantize:
        generator = torch.Generator().manual_seed(STATIC_BINARIZATION_SEED)
        for name in ("valid", "test"):
            x = splits[name].x
            splits[name].x = dequantized(x, levels, torch.rand(x.shape, generator=generator))
    if binarize != "none":
        for name in SPLITS:
            x = splits[name].x
            if x.min() < 0 or x.max() > 1:
                raise UserError(
                    f"data.binarize = {binarize!r} needs values in [0, 1], but the {name} "
                    f"split spans [{x.min():.3g}, {x.max():.3g}]"
                )
        generator = torch.Generator().manual_seed(STATIC_BINARIZATION_SEED)
        for name in SPLITS:
            if binarize == "static" or name != "train":
                splits[name].x = torch.bernoulli(splits[name].x, generator=generator)
        levels = 2
    if factor_names is not None and any(splits[name].factors is None for name in SPLITS):
        missing = next(name for name in SPLITS if splits[name].factors is None)
        raise UserError(f"the {missing} split has no factors, but the others have; give '<split>_factors' for every split")
    names = None if factor_names is None else tuple(factor_names)
    return Data(**splits, binarize=binarize, levels=levels, source=source, factor_names=names,
                dequantize=bool(dequantize))



def keep_labels(labels, number, seed=0):
    """`labels` with all but `number` of them set to `HIDDEN`: the kept ones balanced across
    classes (`number // C` of each, the remainder one each to classes drawn at random), drawn
    with `seed`; a class with too few examples gives all it has and the rest come from others."""
    if labels is None:
        raise UserError("data.labeled keeps some of the training labels, but this dataset has no labels")
    if number > len(labels):
        raise UserError(f"data.labeled = {number}, but the training split has only {len(labels)} examples")
    generator = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    quota = torch.full((len(classes),), number // len(classes))
    quota[torch.randperm(len(classes), generator=generator)[: number % len(classes)]] += 1
    members = [(labels == c).nonzero().squeeze(1) for c in classes]
    members = [m[torch.randperm(len(m), generator=generator)] for m in members]
    kept = [m[:q] for m, q in zip(members, quota.tolist())]
    short = number - sum(len(k) for k in kept)
    if short:  # classes with fewer examples than their quota: fill from the others' leftovers
        leftovers = torch.cat([m[q:] for m, q in zip(members, quota.tolist())])
        kept.append(leftovers[torch.randperm(len(leftovers), generator=generator)[:short]])
    hidden = torch.full_like(labels, HIDDEN)
    index = torch.cat(kept)
    hidden[index] = labels[index]
    return hidden

