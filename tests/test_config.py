"""Config checking: every bad key, type or name is one clear line and exit status 2."""

import subprocess
import sys

import pytest

from pyro_vae.cli import main
from pyro_vae.config import check_config, load_config
from pyro_vae.models import VAE
from pyro_vae.registry import UserError

BAD = [
    ('[data]\nname = "mnits"\n', "unknown dataset 'mnits'; choose one of: digits, mnist"),
    ('[model]\nlikelihood = "gausian"\n', "model.likelihood: unknown likelihood 'gausian'"),
    ('[model]\nlikelihood = { name = "gaussian", sigma = 1 }\n',
     "model.likelihood.sigma: unknown option for likelihood 'gaussian'; allowed: scale"),
    ('[train]\nepochs = -1\n', "train.epochs must be >= 1, got -1"),
    ('[train]\nbatch_size = 0\n', "train.batch_size must be >= 1, got 0"),
    ('[train]\nlr = "fast"\n', "train.lr must be a finite number, got string 'fast'"),
    ('[model]\nlatent_dim = 0\n', "model.latent_dim must be >= 1, got 0"),
    ('[train]\nepoch = 3\n', "unknown key train.epoch; allowed in [train]: epochs"),
    ('[trian]\nepochs = 3\n', "unknown config section [trian]"),
    ('[data]\nbinarize = "yes"\n', "data.binarize: unknown value 'yes'; choose one of: auto, none, static, dynamic"),
    ('[model]\nencoder = { name = "resnet" }\n', "model.encoder: unknown encoder 'resnet'; choose one of: mlp, conv"),
    ('[train]\ndevice = "tpu"\n', "train.device: unknown device 'tpu'"),
    ('[train\nepochs = 3\n', "is not valid TOML"),
]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_config_gives_its_message(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError) as error:
        load_config(path)
    assert message in str(error.value)


def test_bad_config_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[model]\nlikelihood = "gausian"\n')
    done = subprocess.run([sys.executable, "-m", "pyro_vae", "train", str(path), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model.likelihood: unknown likelihood")
    assert not (tmp_path / "run").exists()


def test_overrides_are_read_as_toml_and_reach_into_tables():
    config = load_config(None, ["train.epochs=3", "data.name=npz", "model.encoder.hidden=[8, 4]", "train.lr=1e-2"])
    assert config["train"]["epochs"] == 3 and config["train"]["lr"] == 0.01
    assert config["data"]["name"] == "npz"
    assert config["model"]["encoder"] == {"name": "mlp", "hidden": [8, 4], "activation": "elu"}
    with pytest.raises(UserError, match="expected section.key=value"):
        load_config(None, ["train.epochs"])


def test_defaults_are_complete_and_valid():
    config = load_config()
    assert config["data"]["name"] == "digits" and config["data"]["binarize"] == "auto"
    assert config["model"]["likelihood"] == "bernoulli" and config["objective"]["estimator"] == "trace"


def test_changing_a_components_name_starts_from_the_new_classs_defaults():
    # the MLP's hidden sizes mean nothing to a conv decoder
    config = load_config(None, ["data.name=npz", "model.decoder.name=conv"])
    assert config["model"]["decoder"] == {"name": "conv"}
    config = load_config(None, ["model.decoder.name=conv", "model.decoder.channels=[8]"])
    assert config["model"]["decoder"] == {"name": "conv", "channels": [8]}
    # the same name again keeps the options
    config = load_config(None, ["model.decoder.hidden=[7]", "model.decoder.name=mlp"])
    assert config["model"]["decoder"]["hidden"] == [7]
    config = load_config(None, ['model.encoder={name="mlp", hidden=[5]}'])
    assert config["model"]["encoder"] == {"name": "mlp", "hidden": [5]}


MISPLACED_NAMES = [
    ('[model]\nlikelihood = { type = "gaussian" }\n', [],
     'model.likelihood: the key "type" is not read; name the component with name = "gaussian"'),
    ('[model]\nencoder = { type = "mlp", hidden = [5] }\n', [],
     'model.encoder: the key "type" is not read; name the component with name = "mlp"'),
    ('[objective]\nkl_weight = { schedule = "linear", epochs = 2 }\n', [],
     'objective.kl_weight: the key "schedule" is not read; name the component with name = "linear"'),
    ('[objective]\ncapacity = { schedule = "cyclical", epochs = 2, gamma = 10.0 }\n', [],
     'objective.capacity: the key "schedule" is not read; name the component with name = "cyclical"'),
    ("", ["model.decoder.type=conv"],
     'model.decoder: the key "type" is not read; name the component with name = "conv"'),
    ("", ['model.likelihood={type="gaussian"}'],
     'model.likelihood: the key "type" is not read; name the component with name = "gaussian"'),
]


@pytest.mark.parametrize("text, overrides, message", MISPLACED_NAMES)
def test_a_name_under_another_key_is_refused_naming_name(tmp_path, text, overrides, message):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(UserError) as error:
        load_config(path, overrides)
    assert str(error.value) == message


def test_a_name_under_another_key_is_refused_from_python():
    with pytest.raises(UserError) as error:
        check_config({"model": {"encoder": {"type": "conv"}}})
    assert str(error.value) == 'model.encoder: the key "type" is not read; name the component with name = "conv"'
    with pytest.raises(UserError) as error:
        VAE((1, 8, 8), latent_dim=2, likelihood={"type": "gaussian"})
    assert str(error.value) == 'model.likelihood: the key "type" is not read; name the component with name = "gaussian"'
    # an option of another class in the registry is an unknown option, not a misplaced name
    with pytest.raises(UserError, match=r"objective\.kl_weight\.shape: unknown option for schedule 'linear'"):
        check_config({"objective": {"kl_weight": {"name": "linear", "epochs": 2, "shape": "linear"}}})


def test_a_name_under_another_key_on_the_command_line_is_one_line_and_exit_2(tmp_path, capsys):
    code = main(["train", "--set", 'model.likelihood={type="gaussian"}', "--out", str(tmp_path / "run")])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ['error: model.likelihood: the key "type" is not read; name the component with name = "gaussian"']
    assert not (tmp_path / "run").exists()
