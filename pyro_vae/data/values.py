"""What the values of a dataset are: intensities read from stored integers (`as_intensities`),
image layouts (`image_layout`), binarization (`choose_binarization`) and dequantization
(`dequantized`)."""

from __future__ import annotations

import numpy as np
import torch

from ..registry import UserError

# Dequantized values are kept this far inside (0, 1): in float32, (255 + u) / 256 rounds to
# exactly 1 for u > 1 - 2^-16, and u = 0 gives exactly 0, where a Beta density is 0 or infinite.
DEQUANTIZATION_MARGIN = 2.0**-24


def dequantized(x, levels, u):
    """(k + u) / L for data x = k / (L - 1) on L levels and noise u in [0, 1) of x's shape:
    each level k spread uniformly over [k / L, (k + 1) / L), kept inside (0, 1) by
    `DEQUANTIZATION_MARGIN` (which moves a value within its own bin, for any L < 2^23)."""
    k = (x * (levels - 1)).round()
    return ((k + u) / levels).clamp(DEQUANTIZATION_MARGIN, 1 - DEQUANTIZATION_MARGIN)


def is_binary(x):
    return bool(torch.all((x == 0) | (x == 1)))


def choose_binarization(binarize, likelihood, xs):
    """What `data.binarize` means for these splits `xs` under the likelihood named
    `likelihood`: `"auto"` is `"dynamic"` where the likelihood is `"bernoulli"` and
    the data are not already binary {0, 1}, else `"none"`; any other value is itself."""
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


def one_number_per_example(name: str, shape: tuple[int, ...]) -> UserError:
    """The error for examples that are single numbers, an array of shape (N,): ambiguous, so refused."""
    return UserError(f"the {name} array has shape {shape}: one number per example; give it as (N, 1)")


def image_layout(x, name="train"):
    """Examples as images `(N, channels, height, width)` where their shape says they are, and a
    one-line error where it cannot say. The accepted layouts of an array of N examples:

    - `(N, D)`: flat vectors of D features, taken as they are;
    - `(N, H, W)`: one-channel (grey) images;
    - `(N, C, H, W)` with C = 1 or 3, or with C smaller than both H and W (any number of
      channels, channels first, as torch stores images): taken as they are;
    - `(N, H, W, C)` with C = 1 or 3 (and not a channels-first array): channels last, as
      numpy and PIL store images, made `(N, C, H, W)`.

    Anything else is refused, naming the array and its shape: `(N,)` (give `(N, 1)`),
    five or more dimensions, and a four-dimensional array whose channel axis cannot be told
    (`(N, 28, 28, 5)`: 28 channels of 28 x 5 images, or 28 x 28 images of 5 channels?);
    such data are reshaped to `(N, C, H, W)` or flattened to `(N, D)` by the user, who knows.
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
        raise one_number_per_example(name, shape)
    raise UserError(
        f"the {name} examples have shape {shape[1:]}, {x.dim() - 1} dimensions; give images as (N, C, H, W) or "
        "(N, H, W), or flatten the examples to (N, D)"
    )

