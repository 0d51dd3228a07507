"""dSprites rendered by the library, and factors of variation carried by every split."""

import hashlib

import numpy as np
import pytest
import torch

from pyro_vae.data import DSprites, as_data, load_data
from pyro_vae.data.sources import dsprites_render as dsprites
from pyro_vae.registry import UserError

# sha256 of np.packbits of the default grid's images (3 x 6 x 10 x 8 x 8 at 32 x 32) in
# grid_factors order: the drawing is a pure function of the factors, the same on every machine.
DEFAULT_GRID_SHA256 = "18579865bf97e8fa1d5fde51986e32994d87b82348aee6a4ad25b11646b2db77"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_CACHE", str(tmp_path))
    return tmp_path


def test_default_grid_images_have_a_fixed_checksum(cache):
    images = DSprites().images()
    assert images.shape == (11520, 32, 32) and images.dtype == np.uint8
    assert hashlib.sha256(np.packbits(images).tobytes()).hexdigest() == DEFAULT_GRID_SHA256


def test_grid_values_are_the_published_ones():
    shapes, scales, orientations, xs, ys = dsprites.grid_values(dsprites.PUBLISHED_GRID)
    assert shapes.tolist() == [0, 1, 2]
    np.testing.assert_allclose(scales, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert len(orientations) == 40 and orientations[0] == 0 and orientations[-1] < 2 * np.pi
    np.testing.assert_allclose(np.diff(orientations), 2 * np.pi / 40)
    assert len(xs) == len(ys) == 32 and xs[0] == 0 and xs[-1] == 1
    assert len(dsprites.grid_factors((3, 6, 40, 32, 32))) == 737280


def test_images_are_generated_once_then_read_from_the_cache(cache, monkeypatch):
    first = load_data("dsprites", grid=[2, 2, 2, 3, 3], image_size=16)
    assert len(list(cache.glob("dsprites-*.npz"))) == 1
    monkeypatch.setattr("pyro_vae.data.sources.dsprites.render_sprites", lambda *a, **k: pytest.fail("rendered again"))
    second = load_data("dsprites", grid=[2, 2, 2, 3, 3], image_size=16)
    assert torch.equal(first.train.x, second.train.x)


def test_every_split_carries_the_factors_that_draw_its_images(cache):
    data = load_data("dsprites", grid=[3, 2, 4, 4, 4], image_size=16)
    assert data.factor_names == ("shape", "scale", "orientation", "x", "y") and data.has_factors
    assert sum(len(data.split(s)) for s in ("train", "valid", "test")) == 3 * 2 * 4 * 4 * 4
    for name in ("train", "valid", "test"):
        split = data.split(name)
        assert split.factors.shape == (len(split), 5)
        assert torch.equal(data.render(split.factors.numpy()), split.x)  # each image is its factors' drawing
    subset = data.train.random_subset(7)
    assert torch.equal(data.render(subset.factors.numpy()), subset.x)
    everything = torch.cat([data.split(s).factors for s in ("train", "valid", "test")])
    assert len(everything.unique(dim=0)) == len(everything)  # the grid, each combination once


def test_factors_change_the_image_as_they_say():
    square = dsprites.render([[0, 1.0, 0.0, 0.5, 0.5]], 32)[0]
    moved = dsprites.render([[0, 1.0, 0.0, 1.0, 0.5]], 32)[0]
    small = dsprites.render([[0, 0.5, 0.0, 0.5, 0.5]], 32)[0]
    quarter_turn = dsprites.render([[0, 1.0, np.pi / 2, 0.5, 0.5]], 32)[0]
    columns = lambda im: np.flatnonzero(im.any(0))
    assert columns(moved).mean() > columns(square).mean() + 5  # x moves the sprite right
    assert 3.5 < square.sum() / small.sum() < 4.5  # area goes as scale^2
    assert np.array_equal(square, quarter_turn)  # a square is symmetric under a quarter turn


def test_split_seed_changes_the_split_not_the_images(cache):
    a = load_data("dsprites", grid=[1, 2, 2, 3, 3], image_size=8)
    b = load_data("dsprites", grid=[1, 2, 2, 3, 3], image_size=8, split_seed=1)
    assert not torch.equal(a.train.factors, b.train.factors)
    assert torch.equal(a.render(b.test.factors.numpy()), b.test.x)


def test_npz_factors_follow_their_examples_through_the_cut(tmp_path):
    x = np.random.RandomState(0).rand(50, 4).astype(np.float32)
    factors = np.stack([np.arange(50), -np.arange(50)], 1)
    np.savez(tmp_path / "d.npz", train=x, train_factors=factors, factor_names=np.array(["a", "b"]))
    data = load_data("npz", path=str(tmp_path / "d.npz"))
    assert data.factor_names == ("a", "b")
    for name in ("train", "valid", "test"):
        split = data.split(name)
        rows = split.factors[:, 0].long()
        assert torch.equal(split.x, torch.from_numpy(x[rows.numpy()]))  # each row kept with its example
        assert torch.equal(split.factors[:, 1], -split.factors[:, 0])


def test_factors_of_another_length_are_one_line_errors():
    with pytest.raises(UserError, match="train_factors has 49 entries but train has 50 examples") as error:
        as_data({"train": np.zeros((50, 4)), "train_factors": np.zeros((49, 2))})
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="valid split has no factors"):
        as_data({"train": np.zeros((5, 4)), "train_factors": np.zeros((5, 2)), "valid": np.zeros((3, 4)),
                 "test": np.zeros((3, 4)), "test_factors": np.zeros((3, 2))})


def test_bad_grid_is_a_user_error():
    with pytest.raises(UserError, match="data.grid"):
        DSprites(grid=[4, 6, 10, 8, 8])
    with pytest.raises(UserError, match="data.image_size"):
        DSprites(image_size=2)
