"""A researcher's own data: uint8 intensities, binarize = "auto", the data's levels, image
folders read with Pillow, and arrays or tensors handed to train(config, data=...)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_config

from pyro_vae import load_run, train
from pyro_vae.build import build_data, build_model
from pyro_vae.cli import main
from pyro_vae.config import load_config
from pyro_vae.data import as_data, choose_binarization, given_splits, load_data, make_data
from pyro_vae.registry import UserError

Image = pytest.importorskip("PIL.Image")


def grey_uint8(n=40, h=6, w=5, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, h, w)).astype(np.uint8)


# ---- 1. intensities, auto binarization, levels ----


def test_uint8_arrays_are_read_as_x_over_255_and_floats_as_they_are(tmp_path):
    images = grey_uint8()
    np.savez(tmp_path / "grey.npz", train=images[:30], valid=images[30:35], test=images[35:])
    data = load_data("npz", path=str(tmp_path / "grey.npz"))
    assert data.shape == (1, 6, 5) and data.levels == 256 and data.train.x.dtype == torch.float32
    assert torch.equal(data.train.x[:, 0], torch.from_numpy(images[:30]).float() / 255)
    assert torch.equal(data.test.x[:, 0], torch.from_numpy(images[35:]).float() / 255)
    assert "8-bit intensities 0..255 read as x / 255" in data.summary()

    floats = images.astype(np.float64)  # the same numbers as floats: taken as they are
    np.savez(tmp_path / "floats.npz", train=floats[:30], valid=floats[30:35], test=floats[35:])
    data = load_data("npz", path=str(tmp_path / "floats.npz"))
    assert data.levels is None and torch.equal(data.train.x[:, 0], torch.from_numpy(images[:30]).float())
    assert "taken as they are" in data.summary()


def test_uint8_holding_only_0_and_1_is_binary_not_divided():
    """Binarized MNIST ships as uint8 {0, 1}: read as x / 255 it would be {0, 1/255}."""
    bits = (np.random.RandomState(1).rand(50, 16) < 0.4).astype(np.uint8)
    data = as_data(bits)
    assert data.levels == 2 and set(data.train.x.unique().tolist()) == {0.0, 1.0}
    assert data.train.x.sum() + data.valid.x.sum() + data.test.x.sum() == bits.sum()


def test_idx_files_record_256_levels(tmp_path):
    from test_data import write_mnist

    arrays = write_mnist(tmp_path / "mnist")
    data = load_data("mnist", path=str(tmp_path / "mnist"))
    assert data.levels == 256
    assert torch.equal(data.test.x[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255)


def test_auto_binarizes_only_for_bernoulli_on_data_that_are_not_binary():
    grey, binary = [torch.rand(10, 4)], [torch.bernoulli(torch.full((10, 4), 0.5))]
    assert choose_binarization("auto", "bernoulli", grey) == "dynamic"
    assert choose_binarization("auto", "bernoulli", binary) == "none"
    assert choose_binarization("auto", "gaussian", grey) == "none"
    assert choose_binarization("auto", None, grey) == "none"
    assert choose_binarization("static", "gaussian", grey) == "static"


def test_the_default_job_is_unchanged_by_auto():
    config = load_config()
    auto = build_data(config)
    dynamic = load_data("digits", binarize="dynamic")
    assert config["data"]["binarize"] == "auto" and auto.binarize == "dynamic"
    for name in ("train", "valid", "test"):
        assert torch.equal(auto.split(name).x, dynamic.split(name).x)
    continuous = build_data(load_config(None, ["model.likelihood=continuous_bernoulli"]))
    assert continuous.binarize == "none" and continuous.levels == 17
    assert torch.equal(continuous.valid.x, load_data("digits").valid.x)


def test_discretized_logistic_takes_its_levels_from_the_data(tmp_path):
    images = grey_uint8()
    np.savez(tmp_path / "grey.npz", train=images)
    config = load_config(None, [f"data.path={tmp_path / 'grey.npz'}", "data.name=npz",
                                'model.likelihood={ name = "discretized_logistic", components = 2 }'])
    data = build_data(config)
    assert build_model(config, data.shape, data.levels).likelihood.levels == 256
    digits_config = load_config(None, ['model.likelihood={ name = "discretized_logistic", components = 2 }'])
    digits = build_data(digits_config)
    vae = build_model(digits_config, digits.shape, digits.levels)
    assert vae.likelihood.levels == 17
    vae.likelihood.check_support(digits.train.x)  # k / 16 is on the grid of 17 levels, not on that of 256
    with pytest.raises(UserError, match="levels = 256"):
        build_model(digits_config, digits.shape, None).likelihood.check_support(digits.train.x)
    explicit = load_config(None, ['model.likelihood={ name = "discretized_logistic", levels = 5 }'])
    assert build_model(explicit, digits.shape, digits.levels).likelihood.levels == 5


@pytest.mark.trains
def test_a_run_keeps_the_data_levels_through_load_run(tmp_path):
    config = tiny_config(data={"binarize": "none"}, model={"likelihood": {"name": "discretized_logistic", "components": 2}},
                         train={"epochs": 1})
    run = train(config, out=tmp_path / "run")
    assert load_run(run).likelihood.levels == 17


@pytest.mark.trains
def test_a_grey_uint8_npz_trains_under_a_continuous_likelihood_from_the_cli(tmp_path):
    images = grey_uint8(n=60, h=8, w=8)
    np.savez(tmp_path / "grey.npz", train=images)
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "train", "--out", str(run), "--set", "data.name=npz",
         "--set", f"data.path={tmp_path / 'grey.npz'}", "--set", "model.likelihood=continuous_bernoulli",
         "--set", "train.epochs=1", "--set", "train.progress=false", "--set", "model.encoder.hidden=[8]",
         "--set", "model.decoder.hidden=[8]"],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    summary = [line for line in done.stdout.splitlines() if line.startswith("data: ")]
    assert len(summary) == 1 and "48 / 6 / 6 examples" in summary[0] and "read as x / 255" in summary[0]
    assert (run / "samples.png").is_file()


# ---- 2. image folders ----


def write_images(directory, arrays, suffix=".png", mode="L"):
    directory.mkdir(parents=True, exist_ok=True)
    for i, array in enumerate(arrays):
        Image.fromarray(array, mode=None).convert(mode).save(directory / f"img{i:03d}{suffix}")


def test_class_subfolders_become_sorted_labels_and_pixels_x_over_255(tmp_path):
    rng = np.random.RandomState(0)
    cats, dogs = rng.randint(0, 256, (12, 7, 5)).astype(np.uint8), rng.randint(0, 256, (8, 7, 5)).astype(np.uint8)
    write_images(tmp_path / "imgs" / "dogs", dogs)  # written first; "cats" still sorts first
    write_images(tmp_path / "imgs" / "cats", cats)
    (tmp_path / "imgs" / "cats" / ".DS_Store").write_bytes(b"\0junk")  # hidden: skipped
    data = load_data("folder", path=str(tmp_path / "imgs"), valid_fraction=0.25, test_fraction=0.25)
    assert data.shape == (1, 7, 5) and data.levels == 256
    assert (len(data.train), len(data.valid), len(data.test)) == (10, 5, 5)
    every = torch.cat([data.train.x, data.valid.x, data.test.x])[:, 0]
    labels = torch.cat([data.train.labels, data.valid.labels, data.test.labels])
    expected = {(0, a.tobytes()) for a in cats} | {(1, a.tobytes()) for a in dogs}
    found = {(int(y), (x * 255).round().to(torch.uint8).numpy().tobytes()) for x, y in zip(every, labels)}
    assert found == expected
    assert torch.equal(every, (every * 255).round() / 255)  # exactly k / 255
    again = load_data("folder", path=str(tmp_path / "imgs"), valid_fraction=0.25, test_fraction=0.25)
    assert torch.equal(again.test.x, data.test.x)  # a seeded split


def test_rgb_resize_and_split_subfolders(tmp_path):
    rng = np.random.RandomState(1)
    rgb = rng.randint(0, 256, (6, 4, 3, 3)).astype(np.uint8)
    write_images(tmp_path / "f" / "train", rgb[:4], mode="RGB")
    write_images(tmp_path / "f" / "test", rgb[4:], mode="RGB")
    data = load_data("folder", path=str(tmp_path / "f"), channels=3, valid_fraction=0.25)
    assert data.shape == (3, 4, 3) and (len(data.train), len(data.valid), len(data.test)) == (3, 1, 2)
    assert torch.equal(data.test.x * 255, torch.from_numpy(rgb[4:]).permute(0, 3, 1, 2).float())
    grey = load_data("folder", path=str(tmp_path / "f"), channels=1, size=[8, 6], valid_fraction=0.25)
    assert grey.shape == (1, 8, 6)


def test_images_of_different_sizes_name_the_first_that_differs(tmp_path):
    write_images(tmp_path / "f", [np.zeros((5, 5), np.uint8)] * 10)
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(tmp_path / "f" / "img001.png")
    with pytest.raises(UserError, match=r"img001.png is 6x5 \(height x width\) but .*img000.png is 5x5.*data.size"):
        load_data("folder", path=str(tmp_path / "f"))
    assert load_data("folder", path=str(tmp_path / "f"), size=[4, 4]).shape == (1, 4, 4)


def test_jpeg_is_read(tmp_path):
    flat = np.full((3, 8, 8), 200, np.uint8)
    write_images(tmp_path / "f", flat, suffix=".jpg")
    data = load_data("folder", path=str(tmp_path / "f"), valid_fraction=0.34, test_fraction=0.34)
    assert torch.allclose(torch.cat([data.train.x, data.valid.x, data.test.x]), torch.tensor(200 / 255), atol=2 / 255)


@pytest.mark.parametrize("name, content, message", [
    ("broken.png", b"\x89PNG\r\n\x1a\n truncated", "cannot read image .*broken.png"),
    ("notes.txt", b"hello", "notes.txt is not a PNG or JPEG file"),
])
def test_corrupt_or_non_image_files_name_the_file(tmp_path, name, content, message):
    write_images(tmp_path / "f", [np.zeros((4, 4), np.uint8)] * 3)
    (tmp_path / "f" / name).write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_data("folder", path=str(tmp_path / "f"))


def test_folder_options_are_config_keys_and_are_checked(tmp_path):
    write_images(tmp_path / "f", [np.zeros((4, 4), np.uint8)] * 10)
    config = load_config(None, ["data.name=folder", f"data.path={tmp_path / 'f'}", "data.size=[2, 3]", "data.channels=3"])
    assert build_data(config).shape == (3, 2, 3)
    for override, message in [("data.channels=2", "data.channels must be 1 \\(grey\\) or 3 \\(RGB\\)"),
                              ("data.size=[2]", "data.size must be \\[height, width\\]"),
                              ("data.valid_fraction=1.5", "data.valid_fraction must be a number in \\[0, 1\\)")]:
        with pytest.raises(UserError, match=message):
            build_data(load_config(None, ["data.name=folder", f"data.path={tmp_path / 'f'}", override]))
    with pytest.raises(UserError, match="no such directory"):
        load_data("folder", path=str(tmp_path / "nowhere"))


def test_missing_pillow_names_the_extra(tmp_path, monkeypatch):
    write_images(tmp_path / "f", [np.zeros((4, 4), np.uint8)] * 3)
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    with pytest.raises(UserError, match=r'pip install "pyro-vae\[images\]"'):
        load_data("folder", path=str(tmp_path / "f"))


# ---- 4. own arrays from Python ----


def test_as_data_reads_arrays_tensors_dicts_and_passes_data_through():
    images = grey_uint8(n=20)
    data = as_data(torch.from_numpy(images))
    assert data.shape == (1, 6, 5) and data.levels == 256 and (len(data.train), len(data.valid), len(data.test)) == (16, 2, 2)
    same = as_data(images)
    assert torch.equal(same.test.x, data.test.x)  # the same seeded split for an array and a tensor
    channels_last = np.random.RandomState(0).rand(10, 4, 5, 3).astype(np.float32)
    given = as_data({"train": channels_last[:6], "valid": channels_last[6:8], "test": channels_last[8:],
                     "test_labels": np.array([3, 4])})
    assert given.shape == (3, 4, 5) and given.test.labels.tolist() == [3, 4]
    assert torch.equal(given.train.x[2, 1], torch.from_numpy(channels_last[2, :, :, 1]))
    assert as_data(given) is given
    with pytest.raises(UserError, match="got list"):
        as_data([[1, 2]])
    with pytest.raises(UserError, match="no array 'train'"):
        as_data({"valid": images})
    with pytest.raises(UserError, match="train split is empty"):
        make_data(given_splits({"train": images[:0], "valid": images, "test": images}, (0.1, 0.1), "x"))


def test_print_data_is_a_short_summary():
    text = repr(load_data("digits", binarize="static"))
    assert len(text.splitlines()) == 1 and len(text) < 300
    assert "1297 / 250 / 250 examples" in text and "(1, 8, 8)" in text and "static" in text and "tensor" not in text
    assert repr(load_data("digits").train) == "Split(1297 examples of shape (1, 8, 8), labelled)"


@pytest.mark.trains
def test_train_on_h_w_arrays_makes_image_figures_and_samples(tmp_path, capsys):
    images = grey_uint8(n=60, h=8, w=8)
    config = tiny_config(model={"likelihood": "continuous_bernoulli"}, train={"epochs": 1})
    run = train(config, out=tmp_path / "run", data=images)
    assert (run / "samples.png").is_file() and (run / "reconstructions.png").is_file()
    assert 'name = "arrays"' in (run / "config.toml").read_text()
    assert load_run(run).data_shape == (1, 8, 8)
    assert main(["sample", str(run), "--n", "5", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["evaluate", str(run), "--samples", "2"]) == 2  # the arrays are not in the config
    assert "arrays given in Python" in capsys.readouterr().err
    resumed = train(resume=run, overrides=["train.epochs=2"], data=images)
    assert len((resumed / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs
