"""scikit-learn's 8x8 handwritten digits: the default dataset, shipped with the package."""

from __future__ import annotations

import numpy as np

from ..splits import raw_splits, split_off
from .base import DATASETS, Source


@DATASETS.register("digits")
class Digits(Source):
    """scikit-learn's 1,797 8x8 handwritten digits, ships with the package (1297/250/250 split)."""

    levels = 17  # integer grey levels 0..16, read as k / 16

    def load(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
        (train, valid, test), labels = split_off(images, digits.target, (250 / 1797, 250 / 1797))
        return raw_splits(train, valid, test, labels)

