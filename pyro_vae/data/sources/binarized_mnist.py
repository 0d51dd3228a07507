"""Statically binarized MNIST (Larochelle & Murray 2011)."""

from __future__ import annotations

import numpy as np

from ...registry import UserError
from ..containers import SPLITS
from ..splits import raw_splits
from .base import DATASETS, Source, read_npz
from .download import download_file


@DATASETS.register("binarized-mnist")
class BinarizedMNIST(Source):
    """Statically binarized MNIST (Larochelle & Murray): an .npz with train/valid/test, or the .amat files."""

    urls = ("http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist",)
    # As tensorflow-datasets lists them (url_checksums/binarized_mnist.txt).
    sha256 = {
        "binarized_mnist_train.amat": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
        "binarized_mnist_valid.amat": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
        "binarized_mnist_test.amat": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
    }
    levels = 2

    def load(self):
        if self.path is None:
            raise UserError("data.path must name binarized_mnist.npz or the directory of binarized_mnist_*.amat")
        if self.path.suffix == ".npz":
            arrays = read_npz(self.path, ("train", "valid", "test"))
        else:
            arrays = {}
            for split in ("train", "valid", "test"):
                name = f"binarized_mnist_{split}.amat"
                if not (self.path / name).is_file() and self.download:
                    download_file(self.urls, name, self.path, self.sha256[name])
                if not (self.path / name).is_file():
                    raise UserError(f"no {name} in {self.path}; set data.path to the .npz or the .amat directory")
                arrays[split] = np.loadtxt(self.path / name, dtype=np.float32)
        return raw_splits(*(np.asarray(arrays[s]).reshape(-1, 1, 28, 28) for s in SPLITS))

