import math
import shutil

import pyro
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

# Small networks gain nothing from intra-op threads, and on a shared 2-core machine
# the threads of parallel jobs thrash each other.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_validate():
    """Every test starts from the same seed, with Pyro's input checks on."""
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(True):
        yield


def tiny_config(tmp_path=None, **sections):
    """A config that trains in about a second on digits."""
    config = {
        "data": {"name": "digits", "binarize": "static"},
        "model": {
            "latent_dim": 4,
            "encoder": {"name": "mlp", "hidden": [32]},
            "decoder": {"name": "mlp", "hidden": [32]},
        },
        "train": {"epochs": 2, "batch_size": 128, "progress": False, "device": "cpu"},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


class UnmarkedTraining(BaseException):
    """An optimizer step in a test not marked `trains` (a `BaseException`, so no `except Exception`
    in the code under test turns it into a one-line error)."""


_current_test: pytest.Item | None = None  # the test being set up, run or torn down


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _current_test
    _current_test = item
    try:
        return (yield)
    finally:
        _current_test = None


def _forbid_unmarked_training(optimizer, args, kwargs):
    """Keeps the `trains` marker complete, so `pytest -m "not trains"` is the fast loop it claims:
    every optimizer step (SVI, `train()`, a classifier's fit; also inside a module fixture a test
    sets up) fails a test without the marker. Training in a subprocess is not seen: mark it by hand."""
    if _current_test is not None and _current_test.get_closest_marker("trains") is None:
        raise UnmarkedTraining(f"{_current_test.nodeid} trains (takes an optimizer step) but is not marked `trains`")


register_optimizer_step_pre_hook(_forbid_unmarked_training)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished tiny run per test module (1 epoch on digits), for the CLI tests to read; it
    trains, so a test using it (or `run`) is marked `trains`."""
    from pyro_vae import train

    return train(tiny_config(train={"epochs": 1}), out=tmp_path_factory.mktemp("trained") / "run")


@pytest.fixture
def run(trained, tmp_path):
    """A fresh copy of the module's trained run, for a test to break."""
    return shutil.copytree(trained, tmp_path / "run")


def one_line_error(capsys):
    """The CLI's stderr, asserted to be one line starting "error: " (a user mistake), and returned."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def cli_error(capsys, argv):
    """The one-line error `pyro-vae argv` (run in this process) stops with, asserted to exit with status 2."""
    from pyro_vae.cli import main

    assert main(argv) == 2, capsys.readouterr()
    return one_line_error(capsys)


def small_vae(data_shape=(1, 8, 8), latent_dim=3, hidden=16, **options):
    """A `VAE` whose encoder and decoder are MLPs with one hidden layer of `hidden` units;
    `options` (likelihood, prior, guide, ...) go to `VAE` unchanged."""
    from pyro_vae.models import VAE

    return VAE(data_shape, latent_dim=latent_dim, encoder={"name": "mlp", "hidden": [hidden]},
               decoder={"name": "mlp", "hidden": [hidden]}, **options)


def inverse_softplus(y):
    """The x with softplus(x) = y > 0: a tensor for a tensor, a float for a number."""
    if isinstance(y, torch.Tensor):
        return y + torch.log(-torch.expm1(-y))
    return math.log(math.expm1(y))


@pytest.fixture(scope="module")
def digits():
    """The digits data set, statically binarized, loaded once per test module."""
    from pyro_vae.data import load_data

    return load_data("digits", binarize="static")
