"""MNIST-format datasets: IDX files (`read_idx`), read from a directory or downloaded
(`download_file`, each file checked against its published SHA-256)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from ...registry import UserError
from ..splits import raw_splits
from .base import DATASETS, Source
from .download import download_file

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
    sha256: dict[str, str] = {}  # the published SHA-256 of each .gz file: a download must match it
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
                download_file(self.urls, stem + ".gz", self.path, self.sha256[stem + ".gz"])
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
        return raw_splits(  # (N, 28, 28) uint8: one-channel images, read as x / 255
            train[:cut], train[cut:], arrays["test_images"],
            (train_labels[:cut], train_labels[cut:], arrays["test_labels"]),
        )


@DATASETS.register("mnist")
class MNIST(IDXImages):
    """MNIST 28x28 grey digits from IDX files in data.path (.gz or not); 50k/10k/10k."""

    urls = (
        "https://ossci-datasets.s3.amazonaws.com/mnist",
        "https://storage.googleapis.com/cvdf-datasets/mnist",
    )
    # As tensorflow-datasets lists them (url_checksums/mnist.txt).
    sha256 = {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    }


@DATASETS.register("fashion-mnist")
class FashionMNIST(IDXImages):
    """Fashion-MNIST 28x28 grey clothing images from IDX files (Debian's copy by default); 50k/10k/10k."""

    urls = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",)
    # As tensorflow-datasets lists them (url_checksums/fashion_mnist.txt). Debian's copy (the
    # default path) was gzipped anew, so its .gz files have other digests; it is read, not
    # downloaded, and so never checked against these.
    sha256 = {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    }
    default_paths = ("/usr/share/datasets/fashion-mnist",)

