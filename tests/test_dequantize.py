"""data.dequantize: integer data k of L levels as (k + u) / L under a continuous likelihood, and the
log-likelihood of the discrete data, log P(k) >= log p((k + u) / L) - D log L (Theis et al. 2016),
in the units of discretized_logistic's."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_config

from pyro_vae import train
from pyro_vae.build import build, build_data
from pyro_vae.cli import main
from pyro_vae.config import check_config, load_config
from pyro_vae.data import as_data, dequantized
from pyro_vae.evaluation import evaluate
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.registry import UserError
from pyro_vae.runs import load_run


def uint8_images(n=200, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, 4, 4)).astype(np.uint8)


def levels_of(y, levels=256):
    """k = floor(y L): the level a dequantized value came from."""
    return torch.floor(y * levels).long()


def test_valid_and_test_are_one_fixed_draw_of_k_plus_u_over_256():
    x = uint8_images()
    data = as_data({"train": x[:100], "valid": x[100:150], "test": x[150:]}, dequantize=True)
    assert data.dequantize and data.levels == 256 and data.dequantization_levels == 256
    assert "dequantized as (k + u) / 256" in data.summary()
    assert torch.equal(data.train.x[:, 0], torch.from_numpy(x[:100]).float() / 255)  # stored as read; noised per epoch
    for split, k in ((data.valid, x[100:150]), (data.test, x[150:])):
        y = split.x[:, 0]
        assert y.min() >= 0 and y.max() < 1
        assert torch.equal(levels_of(y), torch.from_numpy(k).long())  # each k spread over [k / 256, (k + 1) / 256)
        u = y * 256 - torch.from_numpy(k).float()
        assert abs(u.mean().item() - 0.5) < 0.02 and u.std().item() == pytest.approx(1 / math.sqrt(12), abs=0.01)
    again = as_data({"train": x[:100], "valid": x[100:150], "test": x[150:]}, dequantize=True)
    assert torch.equal(again.test.x, data.test.x)  # a fixed seed: comparable across epochs and runs


def test_the_extreme_draws_stay_inside_the_unit_interval_and_their_bins():
    """In float32 (255 + u) / 256 is exactly 1 for u > 1 - 2^-16, and (0 + 0) / 256 exactly 0, where
    a Beta density is infinite: the values are kept inside (0, 1), in their own bins."""
    x = torch.tensor([0.0, 1.0, 1.0])
    u = torch.tensor([0.0, 1 - 2.0**-24, 1 - 2.0**-17])
    y = dequantized(x, 256, u)
    assert (y > 0).all() and (y < 1).all()
    assert levels_of(y).tolist() == [0, 255, 255]


def test_training_batches_are_redrawn_each_epoch_from_the_noise_generator():
    x = uint8_images()
    data = as_data(x, dequantize=True)
    k = torch.round(data.train.x * 255).long()  # the training images k, in the order of the split
    noise = torch.Generator().manual_seed(5)
    first = next(data.train_batches(len(data.train), epoch_seed=7, noise=noise, device="cpu"))
    second = next(data.train_batches(len(data.train), epoch_seed=7, noise=noise, device="cpu"))
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(7))
    for batch in (first, second):
        assert torch.equal(levels_of(batch), k[order]) and batch.max() < 1
    assert not torch.equal(first, second)  # fresh u each epoch, as dynamic binarization draws afresh
    replay = next(data.train_batches(len(data.train), epoch_seed=7, noise=torch.Generator().manual_seed(5), device="cpu"))
    assert torch.equal(replay, first)  # the noise generator's state (in the checkpoint) fixes the draw
    shown = [next(data.batches("train", 1000, "cpu")) for _ in range(2)]
    assert torch.equal(shown[0], shown[1]) and torch.equal(levels_of(shown[0]), k)  # train scored on one fixed draw


@pytest.mark.parametrize("overrides, message", [
    (["data.binarize=dynamic"], "contradict each other"),
    (["data.binarize=static"], "contradict each other"),
    (["model.likelihood=bernoulli"], "'bernoulli' is a mass function"),
    (["model.likelihood=discretized_logistic"], "'discretized_logistic' is a mass function"),
])
def test_contradictory_combinations_are_refused(overrides, message):
    config = load_config(None, ["data.dequantize=true", *overrides])
    with pytest.raises(UserError, match=message):
        build(config, build_data(config), "cpu")


def test_float_data_of_unknown_levels_cannot_be_dequantized():
    with pytest.raises(UserError, match="needs integer-valued data"):
        as_data(np.random.RandomState(0).rand(20, 4).astype(np.float32), dequantize=True)
    with pytest.raises(UserError, match="data.dequantize must be true or false"):
        check_config({"data": {"dequantize": 256}})


def test_likelihoods_say_whether_they_are_densities():
    continuous = {name for name in LIKELIHOODS.names() if LIKELIHOODS.get(name).continuous}
    assert continuous == {"continuous_bernoulli", "gaussian", "laplace", "beta"}


@pytest.mark.parametrize("overrides, warned", [
    (["model.likelihood=continuous_bernoulli"], True),  # the digits' 17 levels under a density
    (["model.likelihood=continuous_bernoulli", "data.dequantize=true"], False),
    (['model.likelihood={ name = "gaussian", scale = "learned" }'], True),
    (["model.likelihood=discretized_logistic"], False),
    (["model.likelihood=bernoulli"], False),
])
def test_a_density_on_integer_data_without_dequantization_warns_in_one_line(overrides, warned, capsys):
    config = load_config(None, overrides)
    build(config, build_data(config), "cpu")
    err = capsys.readouterr().err.strip().splitlines()
    unbounded = [line for line in err if "unbounded" in line]
    assert len(unbounded) == int(warned)
    if warned:
        assert unbounded[0].startswith("warning: the data take only 17 values") and "data.dequantize = true" in unbounded[0]


def test_float_data_under_a_density_do_not_warn(capsys):
    config = check_config(tiny_config(data={"binarize": "none"}, model={"likelihood": {"name": "gaussian", "scale": "learned"}}))
    build(config, as_data(np.random.RandomState(0).randn(30, 4).astype(np.float32)), "cpu")
    assert "unbounded" not in capsys.readouterr().err


def test_the_discrete_figures_are_the_density_figures_minus_d_log_levels():
    config = check_config(tiny_config(data={"binarize": "none", "dequantize": True},
                                      model={"likelihood": "continuous_bernoulli"}))
    data = as_data(uint8_images(), dequantize=True)
    vae = build(config, data, "cpu").vae
    x, D = data.test.x, 16
    density = evaluate(vae, x, num_samples=7)
    discrete = evaluate(vae, x, num_samples=7, dequantization_levels=256)
    offset = D * math.log(256)
    assert discrete["dequantization_offset"] == offset and discrete["dequantization_levels"] == 256
    assert discrete["log_likelihood_density"] == density["log_likelihood"]
    assert discrete["elbo_density"] == density["elbo"]
    for name in ("log_likelihood", "elbo", "reconstruction"):
        assert discrete[name] == density[name] - offset
    assert discrete["kl"] == density["kl"]
    assert discrete["bits_per_dim"] == -discrete["log_likelihood"] / (D * math.log(2))
    assert density["bits_per_dim"] is None  # a density's nats on [0, 1) are no bits/dim of the images


def test_a_uniform_density_scores_exactly_8_bits_per_dim_on_8_bit_data():
    """A decoder that outputs logits 0 makes the continuous Bernoulli uniform on [0, 1], density 1:
    the reconstruction term of the dequantized data is 0, so that of the discrete data is
    -D log 256, 8 bits per dimension: a uniform guess over 256 levels."""
    config = check_config(tiny_config(data={"binarize": "none", "dequantize": True},
                                      model={"likelihood": "continuous_bernoulli"}))
    data = as_data(uint8_images(), dequantize=True)
    vae = build(config, data, "cpu").vae
    with torch.no_grad():
        last = vae.decoder.net[-1]
        last.weight.zero_()
        last.bias.zero_()
    result = evaluate(vae, data.test.x, num_samples=3, dequantization_levels=256)
    assert result["reconstruction"] == pytest.approx(-16 * math.log(256), abs=1e-4)
    assert -result["reconstruction"] / (16 * math.log(2)) == pytest.approx(8.0, abs=1e-5)


@pytest.mark.trains
def test_dequantized_and_discretized_runs_land_on_one_scale(tmp_path, capsys):
    """The same 8-bit images (the digits' 0..16 scaled to 0..255), a short training under a
    dequantized continuous Bernoulli and under discretized_logistic: both bits/dim below a uniform
    guess's 8 and within a few bits of each other (measured 6.9 and 4.1 after 4 epochs; the
    continuous Bernoulli learns slower), while the density's own nats, read as bits/dim, would be
    negative: the scale dequantization puts them on."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)
    np.savez(tmp_path / "digits8.npz", train=images)
    results = {}
    for name, overrides in (("dequantized", ["data.dequantize=true", "model.likelihood=continuous_bernoulli"]),
                            ("discretized", ["model.likelihood=discretized_logistic"])):
        config = load_config(None, ["data.name=npz", f"data.path={tmp_path / 'digits8.npz'}", "train.epochs=4",
                                    "train.progress=false", "train.batch_size=64", "model.latent_dim=8",
                                    "model.encoder.hidden=[64]", "model.decoder.hidden=[64]", *overrides])
        run = train(config, out=tmp_path / name)
        assert main(["evaluate", str(run), "--samples", "20"]) == 0
        results[name] = json.loads((run / "evaluation.json").read_text())
    out = capsys.readouterr().out
    assert "log-likelihood log p(x) of the 256-level data" in out and "minus D log 256 = 354.891" in out
    dequantized, discretized = results["dequantized"], results["discretized"]
    assert dequantized["log_likelihood_density"] > 0  # a density's nats: no log-probability of the images
    assert dequantized["log_likelihood"] == dequantized["log_likelihood_density"] - 64 * math.log(256)
    for result in (dequantized, discretized):
        assert 1.0 < result["bits_per_dim"] < 7.5, result["bits_per_dim"]
    assert abs(dequantized["bits_per_dim"] - discretized["bits_per_dim"]) < 3.5
    assert -dequantized["log_likelihood_density"] / (64 * math.log(2)) < 0
    assert load_run(tmp_path / "dequantized").likelihood.continuous
