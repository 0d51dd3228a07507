"""What a dataset is once loaded: its three splits (`Split`), the minibatches drawn from them
(`LabeledBatch`, `SemiSupervisedBatch`), and `Data`, which holds the splits, says how their
values were binarized or dequantized, and draws the batches of an epoch."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..registry import UserError
from .values import dequantized

# The seed of the fixed Bernoulli draw behind static binarization (and of the
# valid/test draw under dynamic binarization): part of the dataset's definition,
# independent of the training seed.
STATIC_BINARIZATION_SEED = 1234
SPLITS = ("train", "valid", "test")
# The default seed of Split.random_subset: evaluation subsets are the same images everywhere.
SUBSET_SEED = 0


# The label of a training example whose label is hidden (`data.labeled = N`).
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
        """`size` examples drawn uniformly without replacement by a generator seeded with
        `seed`, kept in their order in the split; the whole split when `size` is None or
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
    """A minibatch of data points `x` and their labels `y` (long, shape (N,))."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class SemiSupervisedBatch:
    """One step of semi-supervised training: unlabeled points and labeled pairs, drawn in
    proportion to their numbers; `labeled_scale` = N_l / (labeled draws per epoch) corrects
    for labeled points drawn more than once per epoch (see `Data.semi_supervised_batches`)."""

    unlabeled: torch.Tensor
    labeled: LabeledBatch
    labeled_scale: float = 1.0

    def __len__(self) -> int:
        return len(self.unlabeled) + len(self.labeled)


@dataclass(repr=False)
class Data:
    """Three splits of one dataset, how they were binarized, and the integer levels they came from.

    `binarize` is what was done: "none", "static", or "dynamic" (the training split is
    drawn afresh each epoch by `train_batches`). `levels` is the number of integer
    levels L the values came from, x = k / (L - 1) (256 for uint8 images read as x / 255,
    2 once binarized), or None for float data. `source` names where the data came from.
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
        """Whether every split carries its factors of variation (`split.factors`)."""
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
        """Keep every split on `device`, so batches are taken by index with no copies."""
        for split in (self.train, self.valid, self.test):
            split.x = split.x.to(device)
            if split.labels is not None:
                split.labels = split.labels.to(device)
        return self

    # ---- labels ----

    def check_labels(self, what: str, num_classes: int | None = None) -> None:
        """Refuse, in one line, data without the labels `what` (a model kind) needs, or with
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

    def _redraw(self, x, noise):
        """Training examples `x` as this epoch shows them: under dynamic binarization a fresh
        Bernoulli draw of `x`, under dequantization a fresh (k + u) / L, else `x` itself; the noise
        is drawn where the generator `noise` lives (the training device)."""
        if self.dynamic_binarization:
            x = (torch.rand(x.shape, generator=noise, device=noise.device).to(x.device) < x).to(x.dtype)
        elif self.dequantize:
            x = dequantized(x, self.levels, torch.rand(x.shape, generator=noise, device=noise.device).to(x.device))
        return x

    def labeled_batches(self, batch_size: int, epoch_seed: int, noise: torch.Generator | None, device: str | torch.device,
                        rank: int = 0, world_size: int = 1, skip: int = 0) -> Iterator[LabeledBatch]:
        """One epoch of shuffled `LabeledBatch` minibatches of the labeled training examples
        (as `train_batches`: the order a pure function of `epoch_seed`)."""
        labels, labeled = self.training_labels(), self.labeled_index()
        order = labeled[torch.randperm(len(labeled), generator=torch.Generator().manual_seed(epoch_seed))]
        for start in range(skip * batch_size, len(order), batch_size):
            index = order[start : start + batch_size][rank::world_size].to(self.train.x.device)
            x = self._redraw(self.train.x[index], noise)
            yield LabeledBatch(x.to(device, non_blocking=True), labels[index].to(device))

    def semi_supervised_steps(self, batch_size: int) -> int:
        """Steps per epoch of `semi_supervised_batches`: one pass over the unlabeled examples."""
        return max(1, -(-(len(self.train) - self.num_labeled()) // batch_size))

    def semi_supervised_batches(self, batch_size: int, epoch_seed: int, noise: torch.Generator | None,
                                device: str | torch.device, rank: int = 0, world_size: int = 1,
                                skip: int = 0, labeled_batch_size: int = 0) -> Iterator[SemiSupervisedBatch]:
        """One epoch of `SemiSupervisedBatch`: every step `batch_size` unlabeled examples and
        B_l labeled ones. B_l = `labeled_batch_size`, or (0) ceil(N_l / steps), so that both sets
        are seen once an epoch in the same number of steps: the proportion N_l : N_u of Kingma et
        al.'s (2014) minibatches. Where steps * B_l exceeds N_l the labeled set is revisited:
        its seeded permutations are concatenated, and `labeled_scale` = N_l / (steps * B_l)
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
            x_u = self._redraw(self.train.x[unlabeled], noise).to(device, non_blocking=True)
            x_l = self._redraw(self.train.x[labeled_step], noise).to(device, non_blocking=True)
            yield SemiSupervisedBatch(x_u, LabeledBatch(x_l, labels[labeled_step].to(device)), scale)

    def train_batches(self, batch_size: int, epoch_seed: int, noise: torch.Generator | None, device: str | torch.device,
                      rank: int = 0, world_size: int = 1, skip: int = 0) -> Iterator[torch.Tensor]:
        """One epoch of shuffled training minibatches on `device`.

        The order is a pure function of `epoch_seed`; dynamic binarization draws from
        the generator `noise`. Together with `skip` (batches already done) this lets
        a resumed run continue an epoch exactly where it stopped. With `world_size` > 1
        each rank takes every `world_size`-th example of each global batch.
        """
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(epoch_seed))
        for start in range(skip * batch_size, len(order), batch_size):
            index = order[start : start + batch_size][rank::world_size]
            x = self._redraw(self.train.x[index.to(self.train.x.device)].to(device, non_blocking=True), noise)
            yield x

    def batches(self, split: str, batch_size: int, device: str | torch.device, limit: int | None = None, rank: int = 0,
                world_size: int = 1, labels: bool = False) -> Iterator[torch.Tensor | LabeledBatch]:
        """The examples of a split (`limit` of them drawn at random with a fixed seed, the
        same every epoch: a sorted split's first N would be biased), in order, in minibatches on
        `device`; with `world_size` > 1, every `world_size`-th example from the `rank`-th.
        With `labels`, `LabeledBatch` minibatches (a hidden label is `HIDDEN`).

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

