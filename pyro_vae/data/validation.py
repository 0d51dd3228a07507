"""One-line errors for malformed data: empty or non-finite splits, per-example arrays (labels,
factors) that do not line up with their images, and out-of-range options."""

from __future__ import annotations

import numpy as np
import torch

from ..registry import UserError

BINARIZATIONS = ("auto", "none", "static", "dynamic")


def check_binarize(binarize):
    if binarize not in BINARIZATIONS:
        raise UserError(f"data.binarize: unknown value {binarize!r}; choose one of: {', '.join(BINARIZATIONS)}")



def check_split(name, x, labels=None):
    if len(x) == 0:
        raise UserError(f"the {name} split is empty; every split needs at least one example")
    if not torch.all(torch.isfinite(x)):
        raise UserError(f"the {name} split has NaN or inf values; clean the data before training")
    if labels is not None:
        check_per_example(f"{name}_labels", labels, len(x), images=name, low=0)


def num_examples(array, name):
    """The number of examples in `array` (its first axis); a one-line error for a scalar."""
    shape = tuple(array.shape) if hasattr(array, "shape") else np.shape(array)
    if not shape:
        raise UserError(f"the {name} array must hold examples along its first axis, but it is a single number")
    return shape[0]


def check_per_example(name, array, num_images, integer=True, low=None, high=None, ndim=1, images="the images"):
    """One value (or, with `ndim` = 2, one row of values) per image: labels, a dataset's factor
    values. Returns the array as a CPU tensor, long where `integer`, else float64; raises a
    one-line `UserError` naming the arrays where

    - it is not numeric, or has not `ndim` dimensions (None: any number >= 1);
    - its length differs from `num_images`, the number of examples in `images` (a label
      per image, in the same order: 150 labels for 200 images cannot be lined up, and 250
      labels for 200 images would be lined up wrongly);
    - it holds NaN or inf, or (`integer`) a value that is not a whole number (3.5 is no
      label; 3.0 is taken as 3), or a value outside `low`..`high` (inclusive; None: no bound).
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
    (`check_per_example`, the one validator of per-example arrays) and one column per
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



def check_fractions(valid_fraction, test_fraction):
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise UserError(f"data.{name} must be a number in [0, 1), got {value!r}")
    if valid_fraction + test_fraction >= 1:
        raise UserError(f"data.valid_fraction + data.test_fraction must be < 1, got {valid_fraction + test_fraction:g}")
    return valid_fraction, test_fraction

