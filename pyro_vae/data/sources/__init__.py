"""The datasets `data.name` chooses: one module each, registered in `DATASETS` on import.

A new dataset is one module here (a `Source` under `@DATASETS.register("name")`) and one
import line below.
"""

from .base import DATASETS, Source
from .download import download_file

# isort: off
# The import order is the registration order: how `pyro-vae list`, messages and the config
# reference list the datasets (the embedded default first, files of one's own after the public sets).
from .digits import Digits
from .idx import MNIST, FashionMNIST, IDXImages, read_idx
from .binarized_mnist import BinarizedMNIST
from .arrays import NPZ, Arrays
from .dsprites import DSprites
from .folder import Folder
# isort: on

__all__ = ["DATASETS", "MNIST", "NPZ", "Arrays", "BinarizedMNIST", "DSprites", "Digits", "FashionMNIST", "Folder",
           "IDXImages", "Source", "download_file", "read_idx"]
