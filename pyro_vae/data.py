"""Named datasets with train / valid / test splits, and minibatches drawn from them.

Every dataset loads as float32 tensors shaped ``(N, *data_shape)``: images are
``(N, channels, height, width)``; ``(N, height, width)`` arrays are one-channel
images, and ``(N, height, width, 1 or 3)`` ones channels-last images, made
``(N, channels, height, width)``.

Intensities (:func:`as_intensities`): uint8 arrays (npz, IDX, image files) are 8-bit
intensities 0..255 and are read as x / 255, in [0, 1], as torchvision and every image
library reads them; a uint8 (or bool) array holding only 0 and 1 is binary and is
taken as it is. Float arrays are taken as they are. ``Data.levels`` records the
number of integer levels the values came from (256 for 8-bit images, 17 for the
digits' 0..16, 2 for binary data, None for floats): the discretized likelihood's
bin count.

Binarization (``data.binarize``):

- ``auto`` (the config's default): ``dynamic`` where the likelihood is Bernoulli
  and the data are not already binary, ``none`` otherwise (:func:`choose_binarization`).
- ``none``: the values as they are.
- ``static``: one Bernoulli draw of every image, made once with a fixed seed
  (the Larochelle & Murray convention).
- ``dynamic``: a fresh Bernoulli draw of every training image at every epoch;
  valid and test are binarized once, statically, so their scores are comparable
  across epochs.

Dequantization (``data.dequantize = true``; Theis et al. 2016, "A note on the evaluation of
generative models"): data of L integer levels k = 0..L-1 (stored as k / (L - 1)) are modelled
by a continuous density as y = (k + u) / L, u ~ U[0, 1) per value, in [0, 1). The training
split is redrawn every epoch (like dynamic binarization); valid and test are dequantized once,
with a fixed seed. A density on [0, 1)^D integrated over the cube of side 1 / L that maps to
k gives the probability of k, and by Jensen's inequality

    log P(k) >= E_u[log p((k + u) / L)] - D log L,

so a continuous likelihood's bound on y, minus D log L, is a bound on the log-likelihood of
the discrete data, in the units of a discretized likelihood's (``evaluation.evaluate``).
Without it, a continuous density on data that sit on L values can concentrate on them and
grow without bound.
"""

from __future__ import annotations

import functools
import gzip
import os
import shutil
import struct
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .dsprites import DEFAULT_GRID, DEFAULT_SIZE, FACTOR_NAMES, PUBLISHED_GRID, PUBLISHED_SIZE, grid_factors
from .dsprites import render as render_sprites
from .registry import Registry, UserError

DATASETS = Registry("dataset")

BINARIZATIONS = ("auto", "none", "static", "dynamic")
# The seed of the fixed Bernoulli draw behind static binarization (and of the
# valid/test draw under dynamic binarization): part of the dataset's definition,
# independent of the training seed.
STATIC_BINARIZATION_SEED = 1234
SPLITS = ("train", "valid", "test")
# The default seed of Split.random_subset: evaluation subsets are the same images everywhere.
SUBSET_SEED = 0


# The label of a training example whose label is hidden (``data.labeled = N``).
HIDDEN = -1


@dataclass(repr=False)
class Split:
    x: torch.Tensor
    labels: torch.Tensor | None = None  # long, HIDDEN where a label is hidden
    factors: torch.Tensor | None = None  # float64 (N, K): the known factors of variation (Data.factor_names)

    def __len__(self) -> int:
        return len(self.x)

    def __repr__(self) -> str:
        labelled = ", labelled" if self.labels is not None else ""
        factors = f", {self.factors.shape[1]} factors" if self.factors is not None else ""
        return f"Split({len(self)} examples of shape {tuple(self.x.shape[1:])}{labelled}{factors})"

    def random_subset(self, size: int | None, seed: int = SUBSET_SEED) -> Split:
        """``size`` examples drawn uniformly without replacement by a generator seeded with
        ``seed``, kept in their order in the split; the whole split when ``size`` is None or
        not smaller than it.

        A figure on "the first N" of a split is biased when the split is sorted (the statically
        binarized MNIST test split is sorted by class: its first 1,000 images are nearly all
        zeros); a seeded random subset is unbiased and the same on every machine.
        """
        if size is None or size >= len(self):
            return self
        if size < 1:
            raise UserError(f"a subset needs at least one example, got size {size}")
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(self), generator=generator)[:size].sort().values
        pick = lambda a: None if a is None else a[index.to(a.device)]
        return Split(self.x[index], pick(self.labels), pick(self.factors))


@dataclass
class LabeledBatch:
    """A minibatch of data points ``x`` and their labels ``y`` (long, shape (N,))."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class SemiSupervisedBatch:
    """One step of semi-supervised training: unlabeled points and labeled pairs, drawn in
    proportion to their numbers; ``labeled_scale`` = N_l / (labeled draws per epoch) corrects
    for labeled points drawn more than once per epoch (see ``Data.semi_supervised_batches``)."""

    unlabeled: torch.Tensor
    labeled: LabeledBatch
    labeled_scale: float = 1.0

    def __len__(self) -> int:
        return len(self.unlabeled) + len(self.labeled)


@dataclass(repr=False)
class Data:
    """Three splits of one dataset, how they were binarized, and the integer levels they came from.

    ``binarize`` is what was done: "none", "static", or "dynamic" (the training split is
    drawn afresh each epoch by :meth:`train_batches`). ``levels`` is the number of integer
    levels L the values came from, x = k / (L - 1) (256 for uint8 images read as x / 255,
    2 once binarized), or None for float data. ``source`` names where the data came from.
    """

    train: Split
    valid: Split
    test: Split
    binarize: str = "none"
    levels: int | None = None
    source: str = ""
    factor_names: tuple | None = None
    # factor values (N, K) -> images as the splits hold them (float32 (N, *shape)), where the
    # dataset is a generative process that can draw any factor values (dsprites); else None
    render: object = None
    dequantize: bool = False  # training x redrawn as (k + u) / levels each epoch; valid, test: one fixed draw

    @property
    def has_factors(self) -> bool:
        """Whether every split carries its factors of variation (``split.factors``)."""
        return self.factor_names is not None and all(self.split(s).factors is not None for s in SPLITS)

    @property
    def dynamic_binarization(self) -> bool:
        return self.binarize == "dynamic"

    @property
    def redrawn(self) -> bool:
        """Whether the training split is shown through fresh noise each epoch (dynamic binarization
        or dequantization): its stored values are then not what the model sees."""
        return self.dynamic_binarization or self.dequantize

    @property
    def dequantization_levels(self) -> int | None:
        """L where the data are dequantized ((k + u) / L), else None."""
        return self.levels if self.dequantize else None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def __repr__(self) -> str:
        return f"Data({self.summary()})"

    def summary(self) -> str:
        """One line: sizes, shape, what the values are and how they were binarized."""
        x = self.train.x
        sizes = f"{len(self.train)} / {len(self.valid)} / {len(self.test)} examples (train / valid / test)"
        labelled = ""
        if self.train.labels is not None:  # data.labeled = N hides the rest: say how many are kept
            kept = self.num_labeled()
            labelled = ", labelled" if kept == len(self.train) else f", {kept} of {len(self.train)} labelled"
        if self.factor_names is not None:
            labelled += f", factors {', '.join(self.factor_names)}"
        span = f"[{x.min().item():.4g}, {x.max().item():.4g}]"
        if self.binarize == "static":
            values = "binary {0, 1}: one fixed Bernoulli draw of the grey levels (static binarization)"
        elif self.binarize == "dynamic":
            values = f"grey levels in {span}, binarized by a fresh Bernoulli draw each epoch (valid, test: one fixed draw)"
        elif self.dequantize and self.levels is not None:  # make_data gives dequantized data its levels
            values = (f"integers 0..{self.levels - 1} dequantized as (k + u) / {self.levels}, u ~ U[0, 1), in [0, 1), "
                      "redrawn each epoch (valid, test: one fixed draw)")
        elif self.levels == 256:
            values = "8-bit intensities 0..255 read as x / 255, in [0, 1]"
        elif self.levels == 2:
            values = "binary {0, 1}"
        elif self.levels:
            values = f"integers 0..{self.levels - 1} read as x / {self.levels - 1}, in [0, 1]"
        else:
            values = f"{str(x.dtype).removeprefix('torch.')} values in {span}, taken as they are"
        source = f"{self.source}: " if self.source else ""
        return f"{source}{sizes} of shape {self.shape}{labelled}; {values}"

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise UserError(f"unknown split {name!r}; choose one of: train, valid, test")
        return getattr(self, name)

    def to(self, device: str | torch.device) -> Data:
        """Keep every split on ``device``, so batches are taken by index with no copies."""
        for split in (self.train, self.valid, self.test):
            split.x = split.x.to(device)
            if split.labels is not None:
                split.labels = split.labels.to(device)
        return self

    # ---- labels ----

    def check_labels(self, what: str, num_classes: int | None = None) -> None:
        """Refuse, in one line, data without the labels ``what`` (a model kind) needs, or with
        labels outside 0..num_classes-1."""
        for name in ("train", "valid", "test"):
            labels = self.split(name).labels
            if labels is None:
                raise UserError(
                    f"{what} needs labels, but the {name} split has none; use a dataset with labels "
                    "(digits, mnist, fashion-mnist, or npz with '<split>_labels')"
                )
            known = labels[labels != HIDDEN]
            if num_classes is not None and len(known) and (known.min() < 0 or known.max() >= num_classes):
                raise UserError(
                    f"the {name} split has labels {int(known.min())}..{int(known.max())}, outside "
                    f"0..{num_classes - 1}; set model.num_classes"
                )
        if self.num_labeled() == 0:
            raise UserError(f"{what} needs labeled training examples, and data.labeled hides them all")

    def training_labels(self) -> torch.Tensor:
        """The training split's labels, HIDDEN where hidden (a one-line error for data without labels)."""
        if self.train.labels is None:
            raise UserError("these data carry no labels (a model with labels needs them)")
        return self.train.labels

    def labeled_index(self) -> torch.Tensor:
        """Positions of the training examples whose label is known."""
        return (self.training_labels() != HIDDEN).nonzero().squeeze(1).cpu()

    def num_labeled(self) -> int:
        return 0 if self.train.labels is None else len(self.labeled_index())

    def _binarized(self, x, noise):
        """Under dynamic binarization, a fresh Bernoulli draw of ``x``; under dequantization, a fresh
        (k + u) / L; the noise is drawn where the generator ``noise`` lives (the training device)."""
        if self.dynamic_binarization:
            x = (torch.rand(x.shape, generator=noise, device=noise.device).to(x.device) < x).to(x.dtype)
        elif self.dequantize:
            x = dequantized(x, self.levels, torch.rand(x.shape, generator=noise, device=noise.device).to(x.device))
        return x

    def labeled_batches(self, batch_size: int, epoch_seed: int, noise: torch.Generator | None, device: str | torch.device,
                        rank: int = 0, world_size: int = 1, skip: int = 0) -> Iterator[LabeledBatch]:
        """One epoch of shuffled ``LabeledBatch`` minibatches of the labeled training examples
        (as ``train_batches``: the order a pure function of ``epoch_seed``)."""
        labels, labeled = self.training_labels(), self.labeled_index()
        order = labeled[torch.randperm(len(labeled), generator=torch.Generator().manual_seed(epoch_seed))]
        for start in range(skip * batch_size, len(order), batch_size):
            index = order[start : start + batch_size][rank::world_size].to(self.train.x.device)
            x = self._binarized(self.train.x[index], noise)
            yield LabeledBatch(x.to(device, non_blocking=True), labels[index].to(device))

    def semi_supervised_steps(self, batch_size: int) -> int:
        """Steps per epoch of ``semi_supervised_batches``: one pass over the unlabeled examples."""
        return max(1, -(-(len(self.train) - self.num_labeled()) // batch_size))

    def semi_supervised_batches(self, batch_size: int, epoch_seed: int, noise: torch.Generator | None,
                                device: str | torch.device, rank: int = 0, world_size: int = 1,
                                skip: int = 0, labeled_batch_size: int = 0) -> Iterator[SemiSupervisedBatch]:
        """One epoch of ``SemiSupervisedBatch``: every step ``batch_size`` unlabeled examples and
        B_l labeled ones. B_l = ``labeled_batch_size``, or (0) ceil(N_l / steps), so that both sets
        are seen once an epoch in the same number of steps: the proportion N_l : N_u of Kingma et
        al.'s (2014) minibatches. Where steps * B_l exceeds N_l the labeled set is revisited:
        its seeded permutations are concatenated, and ``labeled_scale`` = N_l / (steps * B_l)
        keeps the labeled terms' weight in the epoch's loss exact (the expected gradient does not
        depend on B_l; its variance does).
        """
        generator = torch.Generator().manual_seed(epoch_seed)
        labeled = self.labeled_index()
        labels = self.training_labels()
        unlabeled = (labels == HIDDEN).nonzero().squeeze(1).cpu()
        steps = self.semi_supervised_steps(batch_size)
        per_step = labeled_batch_size or -(-len(labeled) // steps)
        order = unlabeled[torch.randperm(len(unlabeled), generator=generator)]
        repeats = -(-steps * per_step // max(len(labeled), 1))
        labeled_order = torch.cat([labeled[torch.randperm(len(labeled), generator=generator)] for _ in range(repeats)])
        scale = len(labeled) / (steps * per_step) if per_step else 1.0
        device_of = self.train.x.device
        for step in range(skip, steps):
            unlabeled = order[step * batch_size : (step + 1) * batch_size][rank::world_size].to(device_of)
            labeled_step = labeled_order[step * per_step : (step + 1) * per_step][rank::world_size].to(device_of)
            x_u = self._binarized(self.train.x[unlabeled], noise).to(device, non_blocking=True)
            x_l = self._binarized(self.train.x[labeled_step], noise).to(device, non_blocking=True)
            yield SemiSupervisedBatch(x_u, LabeledBatch(x_l, labels[labeled_step].to(device)), scale)

    def train_batches(self, batch_size: int, epoch_seed: int, noise: torch.Generator | None, device: str | torch.device,
                      rank: int = 0, world_size: int = 1, skip: int = 0) -> Iterator[torch.Tensor]:
        """One epoch of shuffled training minibatches on ``device``.

        The order is a pure function of ``epoch_seed``; dynamic binarization draws from
        the generator ``noise``. Together with ``skip`` (batches already done) this lets
        a resumed run continue an epoch exactly where it stopped. With ``world_size`` > 1
        each rank takes every ``world_size``-th example of each global batch.
        """
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(epoch_seed))
        for start in range(skip * batch_size, len(order), batch_size):
            index = order[start : start + batch_size][rank::world_size]
            x = self._binarized(self.train.x[index.to(self.train.x.device)].to(device, non_blocking=True), noise)
            yield x

    def batches(self, split: str, batch_size: int, device: str | torch.device, limit: int | None = None, rank: int = 0,
                world_size: int = 1, labels: bool = False) -> Iterator[torch.Tensor | LabeledBatch]:
        """The examples of a split (``limit`` of them drawn at random with a fixed seed, the
        same every epoch: a sorted split's first N would be biased), in order, in minibatches on
        ``device``; with ``world_size`` > 1, every ``world_size``-th example from the ``rank``-th.
        With ``labels``, ``LabeledBatch`` minibatches (a hidden label is ``HIDDEN``).

        Under dynamic binarization (dequantization) the training split is shown through one fixed
        Bernoulli draw (one fixed u), so that its scores are comparable across epochs.
        """
        part = self.split(split).random_subset(limit)
        x = part.x
        y = part.labels if labels else None
        if len(x) < world_size:
            raise UserError(f"the {split} split has {len(x)} examples, fewer than the {world_size} processes")
        x = x[rank::world_size]
        y = None if y is None else y[rank::world_size]
        generator = None
        if split == "train" and self.redrawn:
            generator = torch.Generator().manual_seed(STATIC_BINARIZATION_SEED + rank)
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size]
            if generator is not None:
                u = torch.rand(batch.shape, generator=generator).to(batch.device)
                batch = dequantized(batch, self.levels, u) if self.dequantize else (u < batch).to(batch.dtype)
            batch = batch.to(device, non_blocking=True)
            yield batch if y is None else LabeledBatch(batch, y[start : start + batch_size].to(device))


def load_data(name: str = "digits", path: str | os.PathLike[str] = "", binarize: str = "none", download: bool = False,
              likelihood: str | None = None, labeled: int | str = "all", labeled_seed: int = 0,
              dequantize: bool = False,
              **options: Any) -> Data:
    """Load a named dataset, read its intensities, and binarize or dequantize it as asked.

    ``likelihood`` (a likelihood's name) is what ``binarize = "auto"`` decides by. With
    ``labeled = N``, N labels of the training split are kept (``keep_labels``) and the rest hidden.
    """
    check_binarize(binarize)
    source = DATASETS.build({"name": name, **options}, "data", path=path, download=download)
    splits = source.load()
    data = make_data(splits, binarize, likelihood, levels=source.levels, source=f"{name} {path}".strip(),
                     factor_names=source.factor_names, dequantize=dequantize)
    draw = source.renderer()
    if draw is not None:
        data.render = lambda factors: image_layout(as_intensities([draw(np.asarray(factors))])[0][0])
    if labeled != "all":
        data.train.labels = keep_labels(data.train.labels, labeled, labeled_seed)
    return data


def as_data(data: Data | torch.Tensor | np.ndarray | dict[str, Any], binarize: str = "none",
            likelihood: str | None = None, valid_fraction: float = 0.1, test_fraction: float = 0.1,
            dequantize: bool = False) -> Data:
    """Your own arrays as :class:`Data`, read like a dataset's files.

    ``data`` is an array or tensor ``(N, ...)`` (cut into train / valid / test by a seeded
    shuffle and the two fractions), a dict named like an .npz's arrays (``"train"``, and
    optionally ``"valid"``, ``"test"``, ``"<split>_labels"``), or a :class:`Data`, returned
    as it is. Intensities, image shapes and binarization follow :func:`make_data`.
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


def check_binarize(binarize):
    if binarize not in BINARIZATIONS:
        raise UserError(f"data.binarize: unknown value {binarize!r}; choose one of: {', '.join(BINARIZATIONS)}")


def make_data(splits, binarize="none", likelihood=None, levels=None, source="", factor_names=None, dequantize=False):
    """:class:`Data` from ``{"train": Split, "valid": Split, "test": Split}`` whose ``x`` are
    arrays or tensors of any numeric dtype (and whose ``factors``, where given, are named by
    ``factor_names``).

    The values are read by :func:`as_intensities` (``levels``, where given, is the number of
    integer levels of float data that a source knows of, e.g. 17 for the digits' k / 16),
    shaped by :func:`image_layout`, checked, and binarized as :func:`choose_binarization` says,
    or (``dequantize``) dequantized: valid and test once here, train at every epoch.
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


# Dequantized values are kept this far inside (0, 1): in float32, (255 + u) / 256 rounds to
# exactly 1 for u > 1 - 2^-16, and u = 0 gives exactly 0, where a Beta density is 0 or infinite.
DEQUANTIZATION_MARGIN = 2.0**-24


def dequantized(x, levels, u):
    """(k + u) / L for data x = k / (L - 1) on L levels and noise u in [0, 1) of x's shape:
    each level k spread uniformly over [k / L, (k + 1) / L), kept inside (0, 1) by
    ``DEQUANTIZATION_MARGIN`` (which moves a value within its own bin, for any L < 2^23)."""
    k = (x * (levels - 1)).round()
    return ((k + u) / levels).clamp(DEQUANTIZATION_MARGIN, 1 - DEQUANTIZATION_MARGIN)


def is_binary(x):
    return bool(torch.all((x == 0) | (x == 1)))


def choose_binarization(binarize, likelihood, xs):
    """What ``data.binarize`` means for these splits ``xs`` under the likelihood named
    ``likelihood``: ``"auto"`` is ``"dynamic"`` where the likelihood is ``"bernoulli"`` and
    the data are not already binary {0, 1}, else ``"none"``; any other value is itself."""
    if binarize != "auto":
        return binarize
    return "dynamic" if likelihood == "bernoulli" and not all(is_binary(x) for x in xs) else "none"


def _as_tensor(array):
    """A CPU tensor of the array's own dtype; a one-line error for non-numbers."""
    if torch.is_tensor(array):
        array = array.detach().cpu()
        return array.float() if array.dtype in (torch.float16, torch.bfloat16) else array
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise UserError(f"data arrays must hold numbers, but one has dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("=")))


def as_intensities(arrays):
    """The splits' arrays as float32 tensors, and the number of integer levels they came from.

    uint8 arrays are 8-bit intensities 0..255, read as x / 255 in [0, 1] (256 levels), as
    torchvision and every image library reads them; but uint8 (or bool) arrays holding only
    0 and 1 are binary data, taken as they are (2 levels). Any other array is taken as it
    is (levels None). The rule is applied to the splits together, so they are read alike.
    """
    tensors = [_as_tensor(a) for a in arrays]
    dtypes = {t.dtype for t in tensors}
    if dtypes <= {torch.uint8, torch.bool} and all(t.numel() == 0 or t.max() <= 1 for t in tensors):
        return [t.float() for t in tensors], 2
    scaled = [t.float() / 255 if t.dtype == torch.uint8 else t.float() for t in tensors]
    return scaled, 256 if dtypes == {torch.uint8} else None


IMAGE_CHANNELS = (1, 3)  # grey and RGB: the channel counts a channels-last array is recognized by


def image_layout(x, name="train"):
    """Examples as images ``(N, channels, height, width)`` where their shape says they are, and a
    one-line error where it cannot say. The accepted layouts of an array of N examples:

    - ``(N, D)``: flat vectors of D features, taken as they are;
    - ``(N, H, W)``: one-channel (grey) images;
    - ``(N, C, H, W)`` with C = 1 or 3, or with C smaller than both H and W (any number of
      channels, channels first, as torch stores images): taken as they are;
    - ``(N, H, W, C)`` with C = 1 or 3 (and not a channels-first array): channels last, as
      numpy and PIL store images, made ``(N, C, H, W)``.

    Anything else is refused, naming the array and its shape: ``(N,)`` (give ``(N, 1)``),
    five or more dimensions, and a four-dimensional array whose channel axis cannot be told
    (``(N, 28, 28, 5)``: 28 channels of 28 x 5 images, or 28 x 28 images of 5 channels?);
    such data are reshaped to ``(N, C, H, W)`` or flattened to ``(N, D)`` by the user, who knows.
    """
    shape = tuple(x.shape)
    if x.dim() == 2:
        return x
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 4:
        _, first, height, last = shape
        if first in IMAGE_CHANNELS or first < min(height, last):
            return x
        if last in IMAGE_CHANNELS:
            return x.permute(0, 3, 1, 2).contiguous()
        raise UserError(
            f"the {name} examples have shape {shape[1:]}, which is neither (C, H, W) with C = 1, 3 or fewer channels "
            f"than rows and columns, nor (H, W, C) with C = 1 or 3; if the last axis holds {last} channels, "
            f"move it first (np.moveaxis(x, -1, 1)), or flatten non-image data to (N, D)"
        )
    if x.dim() == 1:
        raise UserError(f"the {name} array has shape {shape}: one number per example; give it as (N, 1)")
    raise UserError(
        f"the {name} examples have shape {shape[1:]}, {x.dim() - 1} dimensions; give images as (N, C, H, W) or "
        "(N, H, W), or flatten the examples to (N, D)"
    )


def keep_labels(labels, number, seed=0):
    """``labels`` with all but ``number`` of them set to ``HIDDEN``: the kept ones balanced across
    classes (``number // C`` of each, the remainder one each to classes drawn at random), drawn
    with ``seed``; a class with too few examples gives all it has and the rest come from others."""
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


def check_split(name, x, labels=None):
    if len(x) == 0:
        raise UserError(f"the {name} split is empty; every split needs at least one example")
    if not torch.all(torch.isfinite(x)):
        raise UserError(f"the {name} split has NaN or inf values; clean the data before training")
    if labels is not None:
        check_per_example(f"{name}_labels", labels, len(x), images=name, low=0)


def num_examples(array, name):
    """The number of examples in ``array`` (its first axis); a one-line error for a scalar."""
    shape = tuple(array.shape) if hasattr(array, "shape") else np.shape(array)
    if not shape:
        raise UserError(f"the {name} array must hold examples along its first axis, but it is a single number")
    return shape[0]


def check_per_example(name, array, num_images, integer=True, low=None, high=None, ndim=1, images="the images"):
    """One value (or, with ``ndim`` = 2, one row of values) per image: labels, a dataset's factor
    values. Returns the array as a CPU tensor, long where ``integer``, else float64; raises a
    one-line :class:`UserError` naming the arrays where

    - it is not numeric, or has not ``ndim`` dimensions (None: any number >= 1);
    - its length differs from ``num_images``, the number of examples in ``images`` (a label
      per image, in the same order: 150 labels for 200 images cannot be lined up, and 250
      labels for 200 images would be lined up wrongly);
    - it holds NaN or inf, or (``integer``) a value that is not a whole number (3.5 is no
      label; 3.0 is taken as 3), or a value outside ``low``..``high`` (inclusive; None: no bound).
    """
    if torch.is_tensor(array):
        array = array.detach().cpu()
        array = (array.float() if array.is_floating_point() else array).numpy()
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise UserError(f"{name} must hold numbers, but it has dtype {array.dtype}")
    if array.ndim == 0 or (ndim is not None and array.ndim != ndim):
        wanted = "(N,)" if ndim == 1 else f"{ndim} dimensions (N, ...)" if ndim else "(N, ...)"
        raise UserError(f"{name} has shape {array.shape}, but it must be {wanted}, one entry per example of {images}")
    if len(array) != num_images:
        raise UserError(
            f"{name} has {len(array)} entries but {images} has {num_images} examples; "
            f"they must match one to one, in the same order"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise UserError(f"{name} has NaN or inf values")
    if integer and array.dtype.kind == "f" and array.size and not (array == np.round(array)).all():
        bad = array[array != np.round(array)].flat[0]
        raise UserError(f"{name} must hold integers, but it has {bad:g}; whole numbers stored as floats (3.0) are fine")
    if array.size:
        smallest, largest = array.min(), array.max()
        if (low is not None and smallest < low) or (high is not None and largest > high):
            allowed = f">= {low}" if high is None else f"<= {high}" if low is None else f"in {low}..{high}"
            raise UserError(f"{name} has values {smallest:g}..{largest:g}, but they must be {allowed}")
    if integer:
        return torch.from_numpy(array.astype(np.int64))
    return torch.from_numpy(array.astype(np.float64))


def check_factors(name, x, factors, factor_names=None):
    """A split's factors of variation as a float64 tensor (N, K): one row per example
    (:func:`check_per_example`, the one validator of per-example arrays) and one column per
    factor name; a 1-D array is one factor. None stays None."""
    if factors is None:
        return None
    factors = check_per_example(f"{name}_factors", factors, len(x), integer=False, ndim=None, images=name)
    if factors.dim() == 1:
        factors = factors[:, None]
    if factors.dim() != 2 or (factor_names is not None and factors.shape[1] != len(factor_names)):
        names = "" if factor_names is None else f" for {len(factor_names)} factor names"
        raise UserError(f"{name}_factors has shape {tuple(factors.shape)}, but it must be (N, K){names}, one row per example")
    return factors


def factor_names_of(arrays, splits):
    """The factor names an .npz (or a dict like it) gives as ``factor_names``, else factor0, factor1, ...
    where its splits carry factors; None where they carry none."""
    given = next((s.factors for s in splits.values() if s.factors is not None), None)
    if given is None:
        return None
    if "factor_names" in arrays:
        return tuple(str(n) for n in np.asarray(arrays["factor_names"]).reshape(-1))
    width = 1 if np.ndim(given) == 1 else np.shape(given)[1]
    return tuple(f"factor{i}" for i in range(width))


def check_fractions(valid_fraction, test_fraction):
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise UserError(f"data.{name} must be a number in [0, 1), got {value!r}")
    if valid_fraction + test_fraction >= 1:
        raise UserError(f"data.valid_fraction + data.test_fraction must be < 1, got {valid_fraction + test_fraction:g}")
    return valid_fraction, test_fraction


def _raw_splits(train, valid, test, labels=(None, None, None), factors=(None, None, None)):
    """Splits of the arrays as they are (:func:`make_data` reads them), labels checked
    (:func:`check_per_example`) and made integers."""
    def as_long(name, x, y):
        return None if y is None else check_per_example(f"{name}_labels", y, num_examples(x, name), images=name, low=0)

    return {name: Split(x, as_long(name, x, y), f) for name, x, y, f in zip(SPLITS, (train, valid, test), labels, factors)}


def _split_off(x, labels, fractions, seed=0):
    """A fixed, seeded shuffle of (x, labels) cut into train / valid / test (x may be None).
    The shuffle depends on len(x) and the seed alone, so arrays of one length are cut alike."""
    if x is None:
        return [None] * 3, [None] * 3
    order = np.random.RandomState(seed).permutation(len(x))
    n_valid, n_test = (int(round(f * len(x))) for f in fractions)
    parts = np.split(order, [len(x) - n_valid - n_test, len(x) - n_test])
    pick = lambda a: [None if a is None else a[torch.as_tensor(p) if torch.is_tensor(a) else p] for p in parts]
    return pick(x), pick(labels)


def given_splits(arrays, fractions, where):
    """Splits from arrays named like an .npz's: ``"train"``, and optionally ``"valid"``,
    ``"test"`` and ``"<split>_labels"``. A split not given is cut from a seeded shuffle of
    train by its fraction (``fractions`` = valid, test)."""
    if "train" not in arrays:
        raise UserError(f"{where} has no array 'train' (it has: {', '.join(arrays) or 'none'})")
    for name in SPLITS:  # labels line up with their images before any split is cut
        if name in arrays:
            num_examples(arrays[name], name)
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
        cut, cut_labels = _split_off(arrays["train"], arrays.get("train_labels"), missing)
        cut_factors, _ = _split_off(factors[0], None, missing)  # the same shuffle: it depends on N alone
        for i, name in enumerate(SPLITS):
            if name == "train" or name not in arrays:
                parts[i], labels[i], factors[i] = cut[i], cut_labels[i], cut_factors[i]
    return _raw_splits(*parts, labels, factors)


class Source:
    """Base class: ``load()`` returns ``{"train": Split, "valid": Split, "test": Split}`` of
    arrays as stored (uint8 images stay uint8: :func:`make_data` reads them)."""

    context_arguments = ("path", "download")
    levels: int | None = None  # the integer levels of float data, where the source knows them
    factor_names: tuple[str, ...] | None = None  # the names of the splits' factors of variation, where it has them

    def __init__(self, path="", download=False):
        self.path = Path(path) if path else None
        self.download = download

    def load(self):
        raise NotImplementedError

    def renderer(self):
        """A function from factor values (N, K) to images (N, ...) as stored, where the source
        can draw any factor values (a generative process, not a file); else None."""
        return None


@DATASETS.register("digits")
class Digits(Source):
    """scikit-learn's 1,797 8x8 handwritten digits, ships with the package (1297/250/250 split)."""

    levels = 17  # integer grey levels 0..16, read as k / 16

    def load(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
        (train, valid, test), labels = _split_off(images, digits.target, (250 / 1797, 250 / 1797))
        return _raw_splits(train, valid, test, labels)


IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """Read an IDX file (the MNIST format), gzipped or not, into a numpy array.

    Layout: two zero bytes, a dtype code, the number of dimensions n, then n
    big-endian uint32 sizes, then the values in row-major order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:
        raise UserError(f"cannot read IDX file {path}: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number); re-download it")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise UserError(
            f"{path} is truncated or corrupt: header says {shape} ({expected} bytes), "
            f"found {len(raw) - header} bytes; re-download it"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).copy()  # writable, for torch


class IDXImages(Source):
    """Base for MNIST-format datasets: four IDX files; valid = the last sixth of train."""

    urls: tuple[str, ...] = ()  # mirrors holding the four files, tried in order
    default_paths: tuple[str, ...] = ()

    def _find(self, stem):
        directories = [self.path] if self.path else [Path(p) for p in self.default_paths]
        for directory in directories:
            for name in (stem, stem + ".gz"):
                if (directory / name).is_file():
                    return directory / name
        return None

    def load(self):
        files = {key: self._find(stem) for key, stem in IDX_FILES.items()}
        missing = [IDX_FILES[key] for key, f in files.items() if f is None]
        if missing and self.download:
            if not self.path:
                raise UserError(f"data.download needs data.path: the directory to download {self.registered_name} into")
            for stem in missing:
                download_file(self.urls, stem + ".gz", self.path)
            files = {key: self._find(stem) for key, stem in IDX_FILES.items()}
            missing = [IDX_FILES[key] for key, f in files.items() if f is None]
        if missing:
            where = self.path or " or ".join(map(str, self.default_paths)) or "(no data.path given)"
            raise UserError(
                f"no {missing[0]}[.gz] in {where}; point data.path at the {self.registered_name} "
                "IDX files, or set data.download = true"
            )
        arrays = {key: read_idx(f) for key, f in files.items()}
        train, train_labels = arrays["train_images"], arrays["train_labels"]
        n_valid = min(10000, len(train) // 6)  # 60,000 -> the standard 50,000 / 10,000
        cut = len(train) - n_valid
        return _raw_splits(  # (N, 28, 28) uint8: one-channel images, read as x / 255
            train[:cut], train[cut:], arrays["test_images"],
            (train_labels[:cut], train_labels[cut:], arrays["test_labels"]),
        )


def download_file(base_urls, name, directory):
    """Fetch ``name`` from the first base URL that has it, atomically, into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    errors = []
    for base in base_urls:
        url = base.rstrip("/") + "/" + name
        try:
            with urllib.request.urlopen(url, timeout=60) as response, tempfile.NamedTemporaryFile(
                dir=directory, delete=False
            ) as tmp:
                shutil.copyfileobj(response, tmp)
            Path(tmp.name).replace(directory / name)
            return directory / name
        except OSError as error:
            errors.append(f"{url}: {error}")
    raise UserError(f"could not download {name}: " + "; ".join(errors))


@DATASETS.register("mnist")
class MNIST(IDXImages):
    """MNIST 28x28 grey digits from IDX files in data.path (.gz or not); 50k/10k/10k."""

    urls = (
        "https://ossci-datasets.s3.amazonaws.com/mnist",
        "https://storage.googleapis.com/cvdf-datasets/mnist",
    )


@DATASETS.register("fashion-mnist")
class FashionMNIST(IDXImages):
    """Fashion-MNIST 28x28 grey clothing images from IDX files (Debian's copy by default); 50k/10k/10k."""

    urls = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",)
    default_paths = ("/usr/share/datasets/fashion-mnist",)


@DATASETS.register("binarized-mnist")
class BinarizedMNIST(Source):
    """Statically binarized MNIST (Larochelle & Murray): an .npz with train/valid/test, or the .amat files."""

    urls = ("http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist",)
    levels = 2

    def load(self):
        if self.path is None:
            raise UserError("data.path must name binarized_mnist.npz or the directory of binarized_mnist_*.amat")
        if self.path.suffix == ".npz":
            arrays = _read_npz(self.path, ("train", "valid", "test"))
        else:
            arrays = {}
            for split in ("train", "valid", "test"):
                name = f"binarized_mnist_{split}.amat"
                if not (self.path / name).is_file() and self.download:
                    download_file(self.urls, name, self.path)
                if not (self.path / name).is_file():
                    raise UserError(f"no {name} in {self.path}; set data.path to the .npz or the .amat directory")
                arrays[split] = np.loadtxt(self.path / name, dtype=np.float32)
        return _raw_splits(*(np.asarray(arrays[s]).reshape(-1, 1, 28, 28) for s in SPLITS))


@DATASETS.register("npz")
class NPZ(Source):
    """Your own arrays: an .npz with 'train' (and optionally 'valid', 'test', '<split>_labels', '<split>_factors').

    ``<split>_factors`` (N, K) are known factors of variation (named by an array
    ``factor_names``, else factor0, factor1, ...): the disentanglement metrics read them.

    A split not given is cut from a seeded shuffle of train by its fraction.
    """

    def __init__(self, path="", download=False, valid_fraction=0.1, test_fraction=0.1):
        super().__init__(path, download)
        self.fractions = check_fractions(valid_fraction, test_fraction)

    def load(self):
        if self.path is None:
            raise UserError("data.path must name the .npz file for data.name = \"npz\"")
        arrays = _read_npz(self.path, ("train",))
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


# The version of the dSprites drawing (pyro_vae.dsprites): part of the cache file's name, so a
# changed drawing is never read from an old cache.
DSPRITES_VERSION = 1


def cache_directory(cache_dir=""):
    """Where generated datasets are cached: ``cache_dir``, else $PYRO_VAE_CACHE, else ~/.cache/pyro_vae."""
    import os

    return Path(cache_dir or os.environ.get("PYRO_VAE_CACHE") or Path.home() / ".cache" / "pyro_vae")


@DATASETS.register("dsprites")
class DSprites(Source):
    """dSprites (Matthey et al. 2017) rendered here: binary sprites from 5 known factors (shape, scale, orientation, x, y).

    ``grid``: how many values each factor takes, [shapes, scales, orientations, x, y];
    default [3, 6, 10, 8, 8] (11,520 images) at ``image_size`` = 32; ``grid = "published"``
    is the published 3 x 6 x 40 x 32 x 32 = 737,280 images, at 64 x 64 unless ``image_size``
    says otherwise. Every combination is one image (``pyro_vae.dsprites``); the grid is cut
    into train / valid / test by a shuffle seeded with ``split_seed``, and every split carries
    its factor values. The images are generated once and cached in ``cache_dir`` (default
    $PYRO_VAE_CACHE or ~/.cache/pyro_vae); ``Data.render`` draws any other factor values.
    """

    levels = 2
    factor_names = FACTOR_NAMES

    def __init__(self, path="", download=False, grid=DEFAULT_GRID, image_size=None, valid_fraction=0.1,
                 test_fraction=0.1, split_seed=0, cache_dir=""):
        super().__init__(path, download)
        published = grid == "published"
        grid = PUBLISHED_GRID if published else grid
        if not (isinstance(grid, (list, tuple)) and len(grid) == 5
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in grid) and grid[0] <= 3):
            raise UserError(f'data.grid must be "published" or 5 integers >= 1 [shapes <= 3, scales, orientations, x, y], '
                            f'got {grid!r}')
        size = (PUBLISHED_SIZE if published else DEFAULT_SIZE) if image_size is None else image_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 4:
            raise UserError(f"data.image_size must be an integer >= 4 (pixels per side), got {size!r}")
        if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
            raise UserError(f"data.split_seed must be an integer >= 0, got {split_seed!r}")
        self.grid, self.image_size, self.split_seed = tuple(grid), size, split_seed
        self.fractions = check_fractions(valid_fraction, test_fraction)
        self.cache_dir = cache_directory(cache_dir)

    @property
    def cache_file(self):
        grid = "x".join(map(str, self.grid))
        return self.cache_dir / f"dsprites-v{DSPRITES_VERSION}-{self.image_size}px-{grid}.npz"

    def images(self):
        """Every image of the grid, uint8 (N, size, size) in {0, 1}, in ``grid_factors`` order:
        read from the cache, else rendered and cached (written atomically)."""
        n = int(np.prod(self.grid))
        shape = (n, self.image_size, self.image_size)
        try:
            with np.load(self.cache_file, allow_pickle=False) as f:
                packed = f["packed"]
            images = np.unpackbits(packed)[: int(np.prod(shape))].reshape(shape)
            return images
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # not cached yet (or unreadable): render
        images = render_sprites(grid_factors(self.grid), self.image_size)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.cache_dir, suffix=".npz", delete=False) as tmp:
                np.savez_compressed(tmp, packed=np.packbits(images))
            Path(tmp.name).replace(self.cache_file)
        except OSError as error:  # a read-only home: the data are still there, only not cached
            import warnings

            warnings.warn(f"could not cache dSprites in {self.cache_dir}: {error}", stacklevel=2)
        return images

    def load(self):
        factors = grid_factors(self.grid)
        (train, valid, test), factor_splits = _split_off(self.images(), factors, self.fractions, seed=self.split_seed)
        return _raw_splits(train, valid, test, factors=factor_splits)

    def renderer(self):
        return functools.partial(render_sprites, size=self.image_size)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise UserError('data.name = "folder" reads images with Pillow, which is not installed: '
                        'pip install "pyro-vae[images]"') from None
    return Image


def _visible(paths):
    return sorted(p for p in paths if not p.name.startswith("."))


def _image_files(directory):
    """``(path, class name or None)`` for every image under ``directory``: the files in it
    (unlabelled), or those in its class subfolders (torchvision's ImageFolder layout: the
    subfolder's name is the label). Hidden files (.DS_Store) are skipped; any other file
    that is not a PNG or JPEG is an error."""
    entries = _visible(directory.iterdir())
    folders, files = [p for p in entries if p.is_dir()], [p for p in entries if not p.is_dir()]
    if folders and files:
        raise UserError(
            f"{directory} holds both files ({files[0].name}) and class subfolders ({folders[0].name}/); "
            "put every image in a class subfolder, or none"
        )
    found = [(p, None) for p in files]
    for folder in folders:
        found += [(p, folder.name) for p in _visible(folder.rglob("*")) if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(folder).parts)]
    for path, _ in found:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError(f"{path} is not a PNG or JPEG file (.png, .jpg, .jpeg); move it out of {directory}")
    if not found:
        raise UserError(f"no PNG or JPEG files in {directory}")
    return found, [f.name for f in folders]


@DATASETS.register("folder")
class Folder(Source):
    """Your images: PNG/JPEG files in data.path (Pillow); class subfolders are labels, train/valid/test subfolders splits.

    ``channels`` = 1 reads every image as grey, 3 as RGB; ``size = [H, W]`` resizes each
    (bilinear), else all must share one size. Pixels are 8-bit, read as x / 255. Without
    ``train/``, ``valid/``, ``test/`` subfolders the images are split by a seeded shuffle
    and the two fractions; with ``train/`` (and either of the others), a missing split is
    cut from train.
    """

    def __init__(self, path="", download=False, channels=1, size=None, valid_fraction=0.1, test_fraction=0.1):
        super().__init__(path, download)
        if channels not in (1, 3) or isinstance(channels, bool):
            raise UserError(f"data.channels must be 1 (grey) or 3 (RGB), got {channels!r}")
        if size is not None and not (
            isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)
        ):
            raise UserError(f"data.size must be [height, width], two integers >= 1, got {size!r}")
        self.channels, self.size = channels, None if size is None else tuple(size)
        self.fractions = check_fractions(valid_fraction, test_fraction)

    def load(self):
        Image = _pillow()
        if self.path is None:
            raise UserError('data.path must name the image folder for data.name = "folder"')
        if not self.path.is_dir():
            raise UserError(f"data.path: no such directory {self.path}")
        given = [name for name in SPLITS if (self.path / name).is_dir()]
        if given and "train" not in given:
            raise UserError(f"{self.path} has {given[0]}/ but no train/ subfolder")
        folders = {name: self.path / name for name in given} or {"train": self.path}
        files, classes = {}, set()
        for name, folder in folders.items():
            files[name], folder_classes = _image_files(folder)
            classes.update(folder_classes)
        classes = sorted(classes)
        labelled = {name: bool(fs[0][1] is not None) for name, fs in files.items()}
        if len(set(labelled.values())) > 1:
            raise UserError(f"{self.path}: train/ and the other splits must all have class subfolders, or none")
        first = []  # (path, (H, W)) of the first image read: every other must match it
        arrays = {}
        for name, fs in files.items():
            arrays[name] = np.stack([self._read(Image, path, first) for path, _ in fs])
            if labelled[name]:
                arrays[f"{name}_labels"] = np.array([classes.index(c) for _, c in fs])
        return given_splits(arrays, self.fractions, str(self.path))

    def _read(self, Image, path, first):
        """One image as uint8 ``(channels, H, W)``; a one-line error naming the file if it cannot be."""
        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.channels == 1 else "RGB")
                if self.size:
                    image = image.resize((self.size[1], self.size[0]), Image.BILINEAR)
                array = np.asarray(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise UserError(f"cannot read image {path}: "
                            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
        if not first:
            first.append((path, array.shape[:2]))
        elif array.shape[:2] != first[0][1]:
            (h, w), (first_h, first_w) = array.shape[:2], first[0][1]
            raise UserError(
                f"{path} is {h}x{w} (height x width) but {first[0][0]} is {first_h}x{first_w}; "
                "set data.size = [height, width] to resize every image"
            )
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _read_npz(path, required):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data.path: no such file {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(f"cannot read {path} as .npz: {error}") from None
    missing = [key for key in required if key not in arrays]
    if missing:
        raise UserError(f"{path} has no array {missing[0]!r} (it has: {', '.join(arrays) or 'none'})")
    return arrays
