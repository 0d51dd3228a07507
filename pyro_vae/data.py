"""Named datasets with train / valid / test splits, and minibatches drawn from them.

Every dataset loads as float32 tensors shaped ``(N, *data_shape)``: images are
``(N, channels, height, width)`` with grey levels scaled to [0, 1].

Binarization (``data.binarize``):

- ``none``: the values as they are.
- ``static``: one Bernoulli draw of every image, made once with a fixed seed
  (the Larochelle & Murray convention).
- ``dynamic``: a fresh Bernoulli draw of every training image at every epoch;
  valid and test are binarized once, statically, so their scores are comparable
  across epochs.
"""

import gzip
import shutil
import struct
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .registry import Registry, UserError

DATASETS = Registry("dataset")

BINARIZATIONS = ("none", "static", "dynamic")
# The seed of the fixed Bernoulli draw behind static binarization (and of the
# valid/test draw under dynamic binarization): part of the dataset's definition,
# independent of the training seed.
STATIC_BINARIZATION_SEED = 1234


# The label of a training example whose label is hidden (``data.labeled = N``).
HIDDEN = -1


@dataclass
class Split:
    x: torch.Tensor
    labels: torch.Tensor | None = None  # long, HIDDEN where a label is hidden

    def __len__(self):
        return len(self.x)


@dataclass
class LabeledBatch:
    """A minibatch of data points ``x`` and their labels ``y`` (long, shape (N,))."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self):
        return len(self.x)


@dataclass
class SemiSupervisedBatch:
    """One step of semi-supervised training: unlabeled points and labeled pairs, drawn in
    proportion to their numbers; ``labeled_scale`` = N_l / (labeled draws per epoch) corrects
    for labeled points drawn more than once per epoch (see ``Data.semi_supervised_batches``)."""

    unlabeled: torch.Tensor
    labeled: LabeledBatch
    labeled_scale: float = 1.0

    def __len__(self):
        return len(self.unlabeled) + len(self.labeled)


@dataclass
class Data:
    """Three splits of one dataset, and how the training split is binarized."""

    train: Split
    valid: Split
    test: Split
    dynamic_binarization: bool = False

    @property
    def shape(self):
        return tuple(self.train.x.shape[1:])

    def split(self, name):
        if name not in ("train", "valid", "test"):
            raise UserError(f"unknown split {name!r}; choose one of: train, valid, test")
        return getattr(self, name)

    def to(self, device):
        """Keep every split on ``device``, so batches are taken by index with no copies."""
        for split in (self.train, self.valid, self.test):
            split.x = split.x.to(device)
            if split.labels is not None:
                split.labels = split.labels.to(device)
        return self

    # ---- labels ----

    def check_labels(self, what, num_classes=None):
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

    def labeled_index(self):
        """Positions of the training examples whose label is known."""
        return (self.train.labels != HIDDEN).nonzero().squeeze(1).cpu()

    def num_labeled(self):
        return 0 if self.train.labels is None else len(self.labeled_index())

    def _binarized(self, x, noise):
        if self.dynamic_binarization:
            x = (torch.rand(x.shape, generator=noise).to(x.device) < x).to(x.dtype)
        return x

    def labeled_batches(self, batch_size, epoch_seed, noise, device, rank=0, world_size=1, skip=0):
        """One epoch of shuffled ``LabeledBatch`` minibatches of the labeled training examples
        (as ``train_batches``: the order a pure function of ``epoch_seed``)."""
        labeled = self.labeled_index()
        order = labeled[torch.randperm(len(labeled), generator=torch.Generator().manual_seed(epoch_seed))]
        for start in range(skip * batch_size, len(order), batch_size):
            index = order[start : start + batch_size][rank::world_size].to(self.train.x.device)
            x = self._binarized(self.train.x[index], noise)
            yield LabeledBatch(x.to(device, non_blocking=True), self.train.labels[index].to(device))

    def semi_supervised_steps(self, batch_size):
        """Steps per epoch of ``semi_supervised_batches``: one pass over the unlabeled examples."""
        return max(1, -(-(len(self.train) - self.num_labeled()) // batch_size))

    def semi_supervised_batches(self, batch_size, epoch_seed, noise, device, rank=0, world_size=1, skip=0):
        """One epoch of ``SemiSupervisedBatch``: every step ``batch_size`` unlabeled examples and
        B_l = ceil(N_l / steps) labeled ones, so that both sets are seen once an epoch in the same
        number of steps: the proportion N_l : N_u of Kingma et al.'s (2014) minibatches. Where
        steps * B_l exceeds N_l the labeled permutations are concatenated (a point may be drawn
        twice), and ``labeled_scale`` = N_l / (steps * B_l) keeps the labeled terms' weight exact.
        """
        generator = torch.Generator().manual_seed(epoch_seed)
        labeled = self.labeled_index()
        unlabeled = (self.train.labels == HIDDEN).nonzero().squeeze(1).cpu()
        steps = self.semi_supervised_steps(batch_size)
        per_step = -(-len(labeled) // steps)
        order = unlabeled[torch.randperm(len(unlabeled), generator=generator)]
        repeats = -(-steps * per_step // max(len(labeled), 1))
        labeled_order = torch.cat([labeled[torch.randperm(len(labeled), generator=generator)] for _ in range(repeats)])
        scale = len(labeled) / (steps * per_step) if per_step else 1.0
        device_of = self.train.x.device
        for step in range(skip, steps):
            u = order[step * batch_size : (step + 1) * batch_size][rank::world_size].to(device_of)
            l = labeled_order[step * per_step : (step + 1) * per_step][rank::world_size].to(device_of)
            x_u = self._binarized(self.train.x[u], noise).to(device, non_blocking=True)
            x_l = self._binarized(self.train.x[l], noise).to(device, non_blocking=True)
            yield SemiSupervisedBatch(x_u, LabeledBatch(x_l, self.train.labels[l].to(device)), scale)

    def train_batches(self, batch_size, epoch_seed, noise, device, rank=0, world_size=1, skip=0):
        """One epoch of shuffled training minibatches on ``device``.

        The order is a pure function of ``epoch_seed``; dynamic binarization draws from
        the generator ``noise``. Together with ``skip`` (batches already done) this lets
        a resumed run continue an epoch exactly where it stopped. With ``world_size`` > 1
        each rank takes every ``world_size``-th example of each global batch.
        """
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(epoch_seed))
        for start in range(skip * batch_size, len(order), batch_size):
            index = order[start : start + batch_size][rank::world_size]
            x = self._binarized(self.train.x[index.to(self.train.x.device)], noise)
            yield x.to(device, non_blocking=True)

    def batches(self, split, batch_size, device, limit=None, rank=0, world_size=1, labels=False):
        """The (first ``limit``) examples of a split, in order, in minibatches on ``device``;
        with ``world_size`` > 1, every ``world_size``-th example from the ``rank``-th.
        With ``labels``, ``LabeledBatch`` minibatches (a hidden label is ``HIDDEN``).

        Under dynamic binarization the training split is shown through one fixed
        Bernoulli draw, so that its scores are comparable across epochs.
        """
        x = self.split(split).x[:limit]
        y = self.split(split).labels[:limit] if labels else None
        if len(x) < world_size:
            raise UserError(f"the {split} split has {len(x)} examples, fewer than the {world_size} processes")
        x = x[rank::world_size]
        y = None if y is None else y[rank::world_size]
        generator = None
        if split == "train" and self.dynamic_binarization:
            generator = torch.Generator().manual_seed(STATIC_BINARIZATION_SEED + rank)
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size]
            if generator is not None:
                batch = (torch.rand(batch.shape, generator=generator).to(batch.device) < batch).to(batch.dtype)
            batch = batch.to(device, non_blocking=True)
            yield batch if y is None else LabeledBatch(batch, y[start : start + batch_size].to(device))


def load_data(name="digits", path="", binarize="none", download=False, labeled="all", labeled_seed=0, **options):
    """Load a named dataset and binarize it as asked; with ``labeled = N``, keep N labels of the
    training split (``keep_labels``) and hide the rest."""
    if binarize not in BINARIZATIONS:
        raise UserError(f"data.binarize: unknown value {binarize!r}; choose one of: {', '.join(BINARIZATIONS)}")
    source = DATASETS.build({"name": name, **options}, "data", path=path, download=download)
    splits = source.load()
    for split_name, split in splits.items():
        check_split(split_name, split.x)
    if binarize != "none":
        for split_name, split in splits.items():
            if split.x.min() < 0 or split.x.max() > 1:
                raise UserError(
                    f"data.binarize = {binarize!r} needs values in [0, 1], but the {split_name} "
                    f"split spans [{split.x.min():.3g}, {split.x.max():.3g}]"
                )
        generator = torch.Generator().manual_seed(STATIC_BINARIZATION_SEED)
        for split_name, split in splits.items():
            if binarize == "static" or split_name != "train":
                split.x = torch.bernoulli(split.x, generator=generator)
    if labeled != "all":
        splits["train"].labels = keep_labels(splits["train"].labels, labeled, labeled_seed)
    return Data(**splits, dynamic_binarization=binarize == "dynamic")


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


def check_split(name, x):
    if len(x) == 0:
        raise UserError(f"the {name} split is empty; every split needs at least one example")
    if not torch.all(torch.isfinite(x)):
        raise UserError(f"the {name} split has NaN or inf values; clean the data before training")


def _tensor_splits(train, valid, test, labels=(None, None, None)):
    as_float = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)
    as_long = lambda a: None if a is None else torch.as_tensor(np.asarray(a), dtype=torch.long)
    return {
        name: Split(as_float(x), as_long(y))
        for name, x, y in zip(("train", "valid", "test"), (train, valid, test), labels)
    }


def _split_off(x, labels, fractions, seed=0):
    """A fixed, seeded shuffle of (x, labels) cut into train / valid / test."""
    order = np.random.RandomState(seed).permutation(len(x))
    n_valid, n_test = (int(round(f * len(x))) for f in fractions)
    parts = np.split(order, [len(x) - n_valid - n_test, len(x) - n_test])
    pick = lambda a: [None if a is None else a[p] for p in parts]
    return pick(x), pick(labels)


class Source:
    """Base class: ``load()`` returns ``{"train": Split, "valid": Split, "test": Split}``."""

    context_arguments = ("path", "download")

    def __init__(self, path="", download=False):
        self.path = Path(path) if path else None
        self.download = download

    def load(self):
        raise NotImplementedError


@DATASETS.register("digits")
class Digits(Source):
    """scikit-learn's 1,797 8x8 handwritten digits, ships with the package (1297/250/250 split)."""

    def load(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
        (train, valid, test), labels = _split_off(images, digits.target, (250 / 1797, 250 / 1797))
        return _tensor_splits(train, valid, test, labels)


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

    urls = ()  # mirrors holding the four files, tried in order
    default_paths = ()

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
        images = lambda a: (a.astype(np.float32) / 255.0)[:, None]
        train, train_labels = images(arrays["train_images"]), arrays["train_labels"]
        n_valid = min(10000, len(train) // 6)  # 60,000 -> the standard 50,000 / 10,000
        cut = len(train) - n_valid
        return _tensor_splits(
            train[:cut], train[cut:], images(arrays["test_images"]),
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
        shaped = [np.asarray(arrays[s], np.float32).reshape(-1, 1, 28, 28) for s in ("train", "valid", "test")]
        return _tensor_splits(*shaped)


@DATASETS.register("npz")
class NPZ(Source):
    """Your own arrays: an .npz with 'train' (and optionally 'valid', 'test', '<split>_labels')."""

    def __init__(self, path="", download=False, valid_fraction=0.1, test_fraction=0.1):
        super().__init__(path, download)
        self.fractions = (valid_fraction, test_fraction)

    def load(self):
        if self.path is None:
            raise UserError("data.path must name the .npz file for data.name = \"npz\"")
        arrays = _read_npz(self.path, ("train",))
        if "valid" in arrays and "test" in arrays:
            parts = [arrays[s] for s in ("train", "valid", "test")]
            labels = [arrays.get(f"{s}_labels") for s in ("train", "valid", "test")]
        else:
            parts, labels = _split_off(arrays["train"], arrays.get("train_labels"), self.fractions)
        return _tensor_splits(*parts, labels)


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
