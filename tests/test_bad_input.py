"""Every kind of bad input: one line naming the problem, exit status 2, no traceback,
and an existing run directory left exactly as it was. The cases run `main` in this process;
one test runs the real entry point (`python -m pyro_vae`) in a subprocess."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import cli_error

from pyro_vae.cli import main

TRAIN = ["train"]
SMALL = ["--set", "train.epochs=1", "--set", "train.progress=false", "--set", "model.decoder.hidden=[8]"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    rng = np.random.RandomState(0)
    np.savez(root / "nan.npz", train=np.where(rng.rand(50, 4) < 0.1, np.nan, 0.5))
    np.savez(root / "flat.npz", train=(rng.rand(50, 16) < 0.5).astype(float))
    np.savez(root / "grey.npz", train=rng.rand(50, 16))
    np.savez(root / "empty.npz", train=np.zeros((0, 4)), valid=np.zeros((3, 4)), test=np.zeros((3, 4)))
    (root / "corrupt.npz").write_bytes(b"PK\x03\x04 this is no zip")
    images = rng.randint(0, 256, (200, 4, 4)).astype(np.uint8)
    np.savez(root / "short_labels.npz", train=images, train_labels=np.arange(150) % 10)
    np.savez(root / "long_labels.npz", train=images, train_labels=np.arange(250) % 10)
    np.savez(root / "float_labels.npz", train=images, train_labels=np.arange(200) % 10 + 0.5)
    np.savez(root / "five_channels.npz", train=rng.randint(0, 256, (20, 28, 28, 5)).astype(np.uint8))
    return root


CASES = {
    "nan in data": (["--set", "data.name=npz", "--set", "data.path={root}/nan.npz", "--set", "data.binarize=none"], "NaN or inf"),
    "wrong shape for network": (["--set", "data.name=npz", "--set", "data.path={root}/flat.npz", "--set", "data.binarize=none",
                                 "--set", 'model.encoder={{name="conv"}}'], "needs images shaped (channels, height, width)"),
    "outside the support": (["--set", "data.name=npz", "--set", "data.path={root}/grey.npz", "--set", "data.binarize=none"],
                            "continuous_bernoulli"),
    "empty split": (["--set", "data.name=npz", "--set", "data.path={root}/empty.npz"], "train split is empty"),
    "missing data file": (["--set", "data.name=npz", "--set", "data.path={root}/nowhere.npz"], "no such file"),
    "corrupt data file": (["--set", "data.name=npz", "--set", "data.path={root}/corrupt.npz"], "is not an .npz file"),
    # labels that do not line up with their images never train
    "fewer labels than images": (["--set", "data.name=npz", "--set", "data.path={root}/short_labels.npz"],
                                 "train_labels has 150 entries but train has 200 examples"),
    "more labels than images": (["--set", "data.name=npz", "--set", "data.path={root}/long_labels.npz"],
                                "train_labels has 250 entries but train has 200 examples"),
    "fractional labels": (["--set", "data.name=npz", "--set", "data.path={root}/float_labels.npz"],
                          "train_labels must hold integers, but it has 0.5"),
    "ambiguous channels": (["--set", "data.name=npz", "--set", "data.path={root}/five_channels.npz"],
                           "the train examples have shape (28, 28, 5)"),
    "dequantize with binarize": (["--set", "data.dequantize=true", "--set", "data.binarize=static"], "contradict"),
    "dequantize float data": (["--set", "data.name=npz", "--set", "data.path={root}/grey.npz", "--set", "data.dequantize=true",
                               "--set", "model.likelihood=gaussian"], "data.dequantize = true needs integer-valued data"),
    "dequantize a mass function": (["--set", "data.dequantize=true", "--set", "model.likelihood=discretized_logistic"],
                                   "is a mass function"),
    "missing mnist": (["--set", "data.name=mnist", "--set", "data.path={root}"], "set data.download = true"),
    "unknown likelihood": (["--set", "model.likelihood=gausian"], "unknown likelihood 'gausian'"),
    "unknown estimator": (["--set", "objective.estimator=magic"], "unknown estimator 'magic'"),
    "unknown prior": (["--set", "model.prior=uniform"], "unknown prior 'uniform'"),
    "negative epochs": (["--set", "train.epochs=-3"], "train.epochs must be >= 1"),
    "zero batch size": (["--set", "train.batch_size=0"], "train.batch_size must be >= 1"),
    "latent_dim < 1": (["--set", "model.latent_dim=0"], "model.latent_dim must be >= 1"),
    "wrong type": (["--set", "train.lr=[1]"], "train.lr must be a finite number"),
    "missing config file": (["{root}/none.toml"], "no such config file"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(tmp_path, capsys, files, case):
    arguments, message = CASES[case]
    existing = tmp_path / "run"
    existing.mkdir()
    (existing / "metrics.csv").write_text("epoch\n1\n")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in existing.iterdir()}
    case_arguments = [a.format(root=files) for a in arguments]
    config = [a for a in case_arguments if a.endswith(".toml")]
    options = [a for a in case_arguments if not a.endswith(".toml")]
    assert message in cli_error(capsys, TRAIN + config + SMALL + options + ["--out", str(existing), "--force"])
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in existing.iterdir()} == before


@pytest.mark.trains
def test_non_empty_out_without_force_and_incompatible_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(TRAIN + SMALL + ["--out", str(run)]) == 0
    capsys.readouterr()
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    for argv, message in [
        (TRAIN + SMALL + ["--out", str(run)], "already holds files"),
        (TRAIN + ["--resume", str(run), "--set", "model.latent_dim=3"], "cannot resume"),
        (TRAIN + ["--resume", str(tmp_path / "nothing")], "not a run directory"),
    ]:
        assert message in cli_error(capsys, argv)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_the_real_entry_point_prints_one_line_and_exits_2(tmp_path):
    """`python -m pyro_vae` (what the `pyro-vae` script runs): a user mistake is one line on stderr and exit status 2."""
    command = [sys.executable, "-m", "pyro_vae", "train", "--set", "model.likelihood=gausian", "--out", str(tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "unknown likelihood 'gausian'" in lines[0], done.stderr
    assert not (tmp_path / "run").exists()
