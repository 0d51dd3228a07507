"""A model kind is one class and one register line: a kind registered at run time trains,
evaluates and samples through the command line, and nothing outside the model classes and the
registry asks a model what it is."""

import json
import math
import re
from pathlib import Path

import pytest
from conftest import tiny_config

from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.cli import main
from pyro_vae.config import save_config
from pyro_vae.models import MODEL_KINDS, VAE
from pyro_vae.registry import UserError
from pyro_vae.runs import load_run

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_vae"


class OneStepVAE(VAE):
    """A VAE that trains on the first minibatch of each epoch only (a toy kind)."""

    def training_steps(self, data, batch_size):
        return 1

    def training_batches(self, data, batch_size, epoch_seed, noise, device, rank=0, world_size=1, skip=0,
                         labeled_batch_size=0):
        return iter(list(super().training_batches(data, batch_size, epoch_seed, noise, device, rank, world_size,
                                                  skip))[:1 - skip])


@pytest.fixture
def toy_kind():
    MODEL_KINDS.register("toy")(OneStepVAE)
    yield "toy"
    MODEL_KINDS.unregister("toy")


@pytest.mark.trains
def test_a_kind_registered_at_run_time_trains_evaluates_and_samples_through_the_cli(toy_kind, tmp_path, capsys):
    config = tmp_path / "toy.toml"
    save_config(tiny_config(train={"epochs": 2}), config)
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "--set", "model.kind=toy"]) == 0
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["step"] == 2  # the kind's own batches: one step per epoch (a plain VAE takes 8 on digits)
    vae = load_run(run)
    assert type(vae) is OneStepVAE and vae.kind == "toy"
    assert main(["evaluate", str(run), "--samples", "3", "--limit", "50"]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    assert result["num_examples"] == 50 and math.isfinite(result["log_likelihood"])
    assert result["log_likelihood"] >= result["elbo"] - 5  # a bound, estimated: K = 3 can be only a little below
    out = tmp_path / "toy.png"
    assert main(["sample", str(run), "--n", "4", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert vae.sample(2).shape == (2, 1, 8, 8)


def test_an_unregistered_kind_is_a_config_error(tmp_path, capsys):
    MODEL_KINDS.register("toy")(OneStepVAE)
    MODEL_KINDS.unregister("toy")
    assert main(["train", "--out", str(tmp_path / "run"), "--set", "model.kind=toy"]) == 2
    assert "model.kind: unknown value 'toy'; choose one of: vae, cvae, m2" in capsys.readouterr().err
    with pytest.raises(KeyError):
        MODEL_KINDS.unregister("toy")


def test_no_caller_dispatches_on_what_a_model_is():
    """hasattr/isinstance on a model and kind strings live in the model classes and the registry only."""
    allowed = {"models", "registry.py"}  # the model kinds' own modules, and the registry
    pattern = re.compile(r'hasattr\((self\.)?vae\b|isinstance\((self\.)?vae\b|(?<!dtype\.)\bkind\b"?\]? *[!=]= *"|'
                         r"hasattr\([^)]*\"(num_classes|classify|data_batches)\"")
    found = [f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*.py")) if path.relative_to(PACKAGE).parts[0] not in allowed
             for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []


def test_the_registry_refuses_a_second_toy_and_a_missing_one():
    MODEL_KINDS.register("toy")(OneStepVAE)
    try:
        with pytest.raises(KeyError, match="registered twice"):
            MODEL_KINDS.register("toy")(OneStepVAE)
    finally:
        MODEL_KINDS.unregister("toy")
    with pytest.raises(UserError, match="unknown model kind 'toy'"):
        MODEL_KINDS.get("toy")
