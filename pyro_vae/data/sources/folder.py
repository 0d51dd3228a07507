"""Your images: a folder of PNG / JPEG files, read with Pillow (`data.name = "folder"`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...registry import UserError
from ..containers import SPLITS
from ..splits import given_splits
from ..validation import check_fractions
from .base import DATASETS, Source

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise UserError('data.name = "folder" reads images with Pillow, which is not installed: '
                        'pip install "pyro-vae[images]"') from None
    return Image


def _visible(paths):
    return sorted(p for p in paths if not p.name.startswith("."))


def _image_files(directory):
    """`(path, class name or None)` for every image under `directory`: the files in it
    (unlabelled), or those in its class subfolders (torchvision's ImageFolder layout: the
    subfolder's name is the label). Hidden files (.DS_Store) are skipped; any other file
    that is not a PNG or JPEG is an error."""
    entries = _visible(directory.iterdir())
    folders, files = [p for p in entries if p.is_dir()], [p for p in entries if not p.is_dir()]
    if folders and files:
        raise UserError(
            f"{directory} holds both files ({files[0].name}) and class subfolders ({folders[0].name}/); "
            "put every image in a class subfolder, or none"
        )
    found = [(p, None) for p in files]
    for folder in folders:
        found += [(p, folder.name) for p in _visible(folder.rglob("*")) if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(folder).parts)]
    for path, _ in found:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError(f"{path} is not a PNG or JPEG file (.png, .jpg, .jpeg); move it out of {directory}")
    if not found:
        raise UserError(f"no PNG or JPEG files in {directory}")
    return found, [f.name for f in folders]


@DATASETS.register("folder")
class Folder(Source):
    """Your images: PNG/JPEG files in data.path (Pillow); class subfolders are labels, train/valid/test subfolders splits.

    `channels` = 1 reads every image as grey, 3 as RGB; `size = [H, W]` resizes each
    (bilinear), else all must share one size. Pixels are 8-bit, read as x / 255. Without
    `train/`, `valid/`, `test/` subfolders the images are split by a seeded shuffle
    and the two fractions; with `train/` (and either of the others), a missing split is
    cut from train.
    """

    def __init__(self, path="", download=False, channels=1, size=None, valid_fraction=0.1, test_fraction=0.1):
        super().__init__(path, download)
        if channels not in (1, 3) or isinstance(channels, bool):
            raise UserError(f"data.channels must be 1 (grey) or 3 (RGB), got {channels!r}")
        if size is not None and not (
            isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)
        ):
            raise UserError(f"data.size must be [height, width], two integers >= 1, got {size!r}")
        self.channels, self.size = channels, None if size is None else tuple(size)
        self.fractions = check_fractions(valid_fraction, test_fraction)

    def load(self):
        Image = _pillow()
        if self.path is None:
            raise UserError('data.path must name the image folder for data.name = "folder"')
        if not self.path.is_dir():
            raise UserError(f"data.path: no such directory {self.path}")
        given = [name for name in SPLITS if (self.path / name).is_dir()]
        if given and "train" not in given:
            raise UserError(f"{self.path} has {given[0]}/ but no train/ subfolder")
        folders = {name: self.path / name for name in given} or {"train": self.path}
        files, classes = {}, set()
        for name, folder in folders.items():
            files[name], folder_classes = _image_files(folder)
            classes.update(folder_classes)
        classes = sorted(classes)
        labelled = {name: bool(fs[0][1] is not None) for name, fs in files.items()}
        if len(set(labelled.values())) > 1:
            raise UserError(f"{self.path}: train/ and the other splits must all have class subfolders, or none")
        first: list[tuple[Path, tuple[int, ...]]] = []  # (path, (H, W)) of the first image read: every other must match it
        arrays = {}
        for name, fs in files.items():
            arrays[name] = np.stack([self._read(Image, path, first) for path, _ in fs])
            if labelled[name]:
                arrays[f"{name}_labels"] = np.array([classes.index(c) for _, c in fs])
        return given_splits(arrays, self.fractions, str(self.path))

    def _read(self, Image, path, first):
        """One image as uint8 `(channels, H, W)`; a one-line error naming the file if it cannot be."""
        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.channels == 1 else "RGB")
                if self.size:
                    image = image.resize((self.size[1], self.size[0]), Image.BILINEAR)
                array = np.asarray(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise UserError(f"cannot read image {path}: "
                            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
        if not first:
            first.append((path, array.shape[:2]))
        elif array.shape[:2] != first[0][1]:
            (h, w), (first_h, first_w) = array.shape[:2], first[0][1]
            raise UserError(
                f"{path} is {h}x{w} (height x width) but {first[0][0]} is {first_h}x{first_w}; "
                "set data.size = [height, width] to resize every image"
            )
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)

