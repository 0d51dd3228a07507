"""The datasets `data.name` chooses: one module each, registered in `DATASETS` on import.

A new dataset is one module here (a `Source` under `@DATASETS.register("name")`) and one
import line below.
"""

from .arrays import NPZ, Arrays
from .base import DATASETS, Source
from .binarized_mnist import BinarizedMNIST
from .digits import Digits
from .download import download_file
from .dsprites import DSprites
from .folder import Folder
from .idx import MNIST, FashionMNIST, IDXImages, read_idx

__all__ = ["DATASETS", "MNIST", "NPZ", "Arrays", "BinarizedMNIST", "DSprites", "Digits", "FashionMNIST", "Folder",
           "IDXImages", "Source", "download_file", "read_idx"]
