"""dSprites (Matthey et al. 2017), drawn here (`dsprites_render`) and cached."""

from __future__ import annotations

import functools
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ...atomic import atomic_write
from ...registry import UserError
from ..splits import raw_splits, split_off
from ..validation import check_fractions
from .base import DATASETS, Source
from .dsprites_render import DEFAULT_GRID, DEFAULT_SIZE, FACTOR_NAMES, PUBLISHED_GRID, PUBLISHED_SIZE, grid_factors
from .dsprites_render import render as render_sprites

# The version of the dSprites drawing (`dsprites_render`): part of the cache file's name, so a
# changed drawing is never read from an old cache.
DSPRITES_VERSION = 1


def cache_directory(cache_dir=""):
    """Where generated datasets are cached: `cache_dir`, else $PYRO_VAE_CACHE, else ~/.cache/pyro_vae."""
    return Path(cache_dir or os.environ.get("PYRO_VAE_CACHE") or Path.home() / ".cache" / "pyro_vae")


@DATASETS.register("dsprites")
class DSprites(Source):
    """dSprites (Matthey et al. 2017) rendered here: binary sprites from 5 known factors (shape, scale, orientation, x, y).

    `grid`: how many values each factor takes, [shapes, scales, orientations, x, y];
    default [3, 6, 10, 8, 8] (11,520 images) at `image_size` = 32; `grid = "published"`
    is the published 3 x 6 x 40 x 32 x 32 = 737,280 images, at 64 x 64 unless `image_size`
    says otherwise. Every combination is one image (`dsprites_render`); the grid is cut
    into train / valid / test by a shuffle seeded with `split_seed`, and every split carries
    its factor values. The images are generated once and cached in `cache_dir` (default
    $PYRO_VAE_CACHE or ~/.cache/pyro_vae); `Data.render` draws any other factor values.
    """

    levels = 2
    factor_names = FACTOR_NAMES

    def __init__(self, path="", download=False, grid=DEFAULT_GRID, image_size=None, valid_fraction=0.1,
                 test_fraction=0.1, split_seed=0, cache_dir=""):
        super().__init__(path, download)
        published = grid == "published"
        grid = PUBLISHED_GRID if published else grid
        if not (isinstance(grid, (list, tuple)) and len(grid) == 5
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in grid) and grid[0] <= 3):
            raise UserError(f'data.grid must be "published" or 5 integers >= 1 [shapes <= 3, scales, orientations, x, y], '
                            f'got {grid!r}')
        size = (PUBLISHED_SIZE if published else DEFAULT_SIZE) if image_size is None else image_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 4:
            raise UserError(f"data.image_size must be an integer >= 4 (pixels per side), got {size!r}")
        if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
            raise UserError(f"data.split_seed must be an integer >= 0, got {split_seed!r}")
        self.grid, self.image_size, self.split_seed = tuple(grid), size, split_seed
        self.fractions = check_fractions(valid_fraction, test_fraction)
        self.cache_dir = cache_directory(cache_dir)

    @property
    def cache_file(self):
        grid = "x".join(map(str, self.grid))
        return self.cache_dir / f"dsprites-v{DSPRITES_VERSION}-{self.image_size}px-{grid}.npz"

    def images(self):
        """Every image of the grid, uint8 (N, size, size) in {0, 1}, in `grid_factors` order:
        read from the cache, else rendered and cached (written atomically)."""
        n = int(np.prod(self.grid))
        shape = (n, self.image_size, self.image_size)
        try:
            with np.load(self.cache_file, allow_pickle=False) as f:
                packed = f["packed"]
            images = np.unpackbits(packed)[: int(np.prod(shape))].reshape(shape)
            return images
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # not cached yet (or unreadable): render
        images = render_sprites(grid_factors(self.grid), self.image_size)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.cache_file) as f:
                np.savez_compressed(f, packed=np.packbits(images))
        except OSError as error:  # a read-only home: the data are still there, only not cached
            warnings.warn(f"could not cache dSprites in {self.cache_dir}: {error}", stacklevel=2)
        return images

    def load(self):
        factors = grid_factors(self.grid)
        (train, valid, test), factor_splits = split_off(self.images(), factors, self.fractions, seed=self.split_seed)
        return raw_splits(train, valid, test, factors=factor_splits)

    def renderer(self):
        return functools.partial(render_sprites, size=self.image_size)

