"""Named datasets with train / valid / test splits, and minibatches drawn from them.

The package: `containers` (`Split`, the batches, `Data`), `values` (intensities, image layouts,
binarization, dequantization), `validation` (one-line errors for malformed data), `splits`
(cutting arrays into splits), `loading` (`load_data`, `as_data`, `make_data`), and `sources`:
one module per dataset, each registered in `DATASETS` when this package is imported.

Every dataset loads as float32 tensors shaped `(N, *data_shape)`: images are
`(N, channels, height, width)`; `(N, height, width)` arrays are one-channel
images, and `(N, height, width, 1 or 3)` ones channels-last images, made
`(N, channels, height, width)`.

Intensities (`as_intensities`): uint8 arrays (npz, IDX, image files) are 8-bit
intensities 0..255 and are read as x / 255, in [0, 1], as torchvision and every image
library reads them; a uint8 (or bool) array holding only 0 and 1 is binary and is
taken as it is. Float arrays are taken as they are. `Data.levels` records the
number of integer levels the values came from (256 for 8-bit images, 17 for the
digits' 0..16, 2 for binary data, None for floats): the discretized likelihood's
bin count.

Binarization (`data.binarize`):

- `auto` (the config's default): `dynamic` where the likelihood is Bernoulli
  and the data are not already binary, `none` otherwise (`choose_binarization`).
- `none`: the values as they are.
- `static`: one Bernoulli draw of every image, made once with a fixed seed
  (the Larochelle & Murray convention).
- `dynamic`: a fresh Bernoulli draw of every training image at every epoch;
  valid and test are binarized once, statically, so their scores are comparable
  across epochs.

Dequantization (`data.dequantize = true`; Theis et al. 2016, "A note on the evaluation of
generative models"): data of L integer levels k = 0..L-1 (stored as k / (L - 1)) are modelled
by a continuous density as y = (k + u) / L, u ~ U[0, 1) per value, in [0, 1). The training
split is redrawn every epoch (like dynamic binarization); valid and test are dequantized once,
with a fixed seed. A density on [0, 1)^D integrated over the cube of side 1 / L that maps to
k gives the probability of k, and by Jensen's inequality

    log P(k) >= E_u[log p((k + u) / L)] - D log L,

so a continuous likelihood's bound on y, minus D log L, is a bound on the log-likelihood of
the discrete data, in the units of a discretized likelihood's (`evaluation.evaluate`).
Without it, a continuous density on data that sit on L values can concentrate on them and
grow without bound.
"""

from .containers import HIDDEN, SPLITS, STATIC_BINARIZATION_SEED, SUBSET_SEED, Data, LabeledBatch, SemiSupervisedBatch, Split
from .loading import as_data, keep_labels, load_data, make_data, with_subset
from .sources import (
    DATASETS,
    MNIST,
    NPZ,
    Arrays,
    BinarizedMNIST,
    Digits,
    DSprites,
    FashionMNIST,
    Folder,
    IDXImages,
    Source,
    download_file,
    read_idx,
)
from .splits import factor_names_of, given_splits, raw_splits, split_off
from .validation import (
    BINARIZATIONS,
    check_binarize,
    check_factors,
    check_fractions,
    check_per_example,
    check_split,
    num_examples,
)
from .values import (
    DEQUANTIZATION_MARGIN,
    IMAGE_CHANNELS,
    as_intensities,
    choose_binarization,
    dequantized,
    image_layout,
    is_binary,
)

__all__ = [
    "BINARIZATIONS", "DATASETS", "DEQUANTIZATION_MARGIN", "HIDDEN", "IMAGE_CHANNELS", "MNIST", "NPZ", "SPLITS",
    "STATIC_BINARIZATION_SEED", "SUBSET_SEED", "Arrays", "BinarizedMNIST", "DSprites", "Data", "Digits",
    "FashionMNIST", "Folder", "IDXImages", "LabeledBatch", "SemiSupervisedBatch", "Source", "Split", "as_data",
    "as_intensities", "check_binarize", "check_factors", "check_fractions", "check_per_example", "check_split",
    "choose_binarization", "dequantized", "download_file", "factor_names_of", "given_splits", "image_layout",
    "is_binary", "keep_labels", "load_data", "make_data", "num_examples", "raw_splits", "read_idx", "split_off", "with_subset",
]
