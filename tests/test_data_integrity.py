"""Data that do not line up never train: labels and other per-example arrays match
their images one to one and are integers in range; image layouts are read by a stated rule,
and a shape that rule cannot read is refused in one line."""

import numpy as np
import pytest
import torch

from pyro_vae.data import as_data, check_per_example, image_layout, load_data
from pyro_vae.registry import UserError


def images(n, *shape, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, *(shape or (4, 4)))).astype(np.uint8)


# ---- check_per_example: the one validator of labels and factor arrays ----


def test_per_example_values_come_back_as_long_or_float_tensors():
    labels = check_per_example("train_labels", np.array([3.0, 0.0, 9.0]), 3)  # whole numbers stored as floats
    assert labels.dtype == torch.long and labels.tolist() == [3, 0, 9]
    assert check_per_example("y", torch.tensor([True, False]), 2).tolist() == [1, 0]
    factors = check_per_example("train_factors", np.arange(12).reshape(4, 3), 4, ndim=2, low=0, high=11)
    assert factors.shape == (4, 3) and factors.dtype == torch.long
    positions = check_per_example("pos", np.array([[0.25], [0.5]]), 2, integer=False, ndim=2)
    assert positions.dtype == torch.float64 and positions[:, 0].tolist() == [0.25, 0.5]


@pytest.mark.parametrize("array, kwargs, message", [
    (np.arange(150), {}, "train_labels has 150 entries but train has 200 examples"),
    (np.arange(250), {}, "train_labels has 250 entries but train has 200 examples"),
    (np.r_[np.zeros(199), 3.5], {}, "must hold integers, but it has 3.5"),
    (np.r_[np.zeros(199), np.nan], {}, "NaN or inf"),
    (np.r_[np.zeros(199), -1], {"low": 0}, "has values -1..0, but they must be >= 0"),
    (np.r_[np.zeros(199), 7], {"low": 0, "high": 5}, "has values 0..7, but they must be in 0..5"),
    (np.zeros((200, 1)), {}, "has shape (200, 1), but it must be (N,)"),
    (np.zeros(200), {"ndim": 2}, "has shape (200,), but it must be 2 dimensions"),
    (np.array(["a"] * 200), {}, "must hold numbers"),
])
def test_per_example_problems_are_one_line_naming_both_arrays(array, kwargs, message):
    with pytest.raises(UserError) as error:
        check_per_example("train_labels", array, 200, images="train", **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_labels_are_checked_before_a_split_is_cut(tmp_path):
    """With no valid/test arrays, train and its labels are shuffled together and cut: 150 labels for
    200 images would be an IndexError there, 250 labels a silent misalignment."""
    x = images(200)
    for labels, found in ((np.arange(150) % 10, 150), (np.arange(250) % 10, 250)):
        np.savez(tmp_path / "d.npz", train=x, train_labels=labels)
        with pytest.raises(UserError, match=f"train_labels has {found} entries but train has 200 examples"):
            load_data("npz", path=str(tmp_path / "d.npz"))
    with pytest.raises(UserError, match="test_labels has 3 entries but test has 5 examples"):
        as_data({"train": x, "test": x[:5], "test_labels": np.arange(3)})
    with pytest.raises(UserError, match="has valid_labels but no valid array"):
        as_data({"train": x, "valid_labels": np.arange(3)})
    with pytest.raises(UserError, match="train_labels has values -2..9"):
        as_data({"train": x, "train_labels": np.r_[np.arange(199) % 10, -2]})


def test_whole_float_labels_train_with_their_own_images(tmp_path):
    """Labels stored as floats 0.0, 1.0, ... are accepted, and stay with their images through the cut."""
    x = np.repeat(np.arange(50, dtype=np.uint8)[:, None, None], 4, axis=1).repeat(4, axis=2)  # image i is all i
    data = as_data({"train": x, "train_labels": np.arange(50).astype(np.float64)})
    for split in (data.train, data.valid, data.test):
        assert split.labels.dtype == torch.long
        assert torch.equal(torch.round(split.x[:, 0, 0, 0] * 255).long(), split.labels)


def test_idx_labels_of_the_wrong_length_are_refused(tmp_path):
    from test_data import write_idx, write_mnist

    arrays = write_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", arrays["t10k-labels-idx1-ubyte"][:-1])
    with pytest.raises(UserError, match="test_labels has .* entries but test has .* examples"):
        load_data("mnist", path=str(tmp_path))


# ---- image layouts ----


@pytest.mark.parametrize("shape, read", [
    ((5, 12), (12,)),  # flat vectors
    ((5, 6, 7), (1, 6, 7)),  # grey images
    ((5, 1, 6, 7), (1, 6, 7)),  # channels first
    ((5, 3, 6, 7), (3, 6, 7)),
    ((5, 4, 6, 7), (4, 6, 7)),  # channels first, fewer channels than rows and columns (RGBA, multispectral)
    ((5, 6, 7, 1), (1, 6, 7)),  # channels last, as numpy and PIL store images
    ((5, 6, 7, 3), (3, 6, 7)),
])
def test_accepted_layouts(shape, read):
    x = torch.arange(float(np.prod(shape))).reshape(shape)
    assert tuple(image_layout(x).shape[1:]) == read
    if len(shape) == 4 and shape[-1] in (1, 3):
        assert torch.equal(image_layout(x)[:, :, 2, 3], x[:, 2, 3, :])  # moved, not reshaped


@pytest.mark.parametrize("shape, message", [
    ((5, 28, 28, 5), "the train examples have shape (28, 28, 5)"),  # 28 channels of 28 x 5, or 5 of 28 x 28?
    ((5, 8, 8, 8), "neither (C, H, W)"),
    ((5,), "one number per example; give it as (N, 1)"),
    ((5, 2, 3, 4, 5), "4 dimensions"),
])
def test_layouts_that_cannot_be_told_are_one_line(shape, message):
    with pytest.raises(UserError) as error:
        image_layout(torch.zeros(shape))
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("array", [np.arange(100.0), torch.arange(100.0)])
def test_one_number_per_example_names_the_shape_given_not_a_splits(array):
    with pytest.raises(UserError) as error:
        as_data(array)
    assert str(error.value) == "the train array has shape (100,): one number per example; give it as (N, 1)"


def test_moving_the_channels_first_makes_an_ambiguous_array_readable():
    x = images(10, 28, 28, 5)
    with pytest.raises(UserError, match=r"np.moveaxis\(x, -1, 1\)"):
        as_data(x)
    assert as_data(np.moveaxis(x, -1, 1)).shape == (5, 28, 28)
