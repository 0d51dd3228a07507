import shutil

import pyro
import pytest
import torch

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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished tiny run per test module (1 epoch on digits), for the CLI tests to read."""
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
