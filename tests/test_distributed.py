"""Data-parallel training: 2 CPU processes with gloo match one process with the same global batch."""

import shutil
import subprocess

import pytest

from conftest import tiny_config
from pyro_vae import train
from pyro_vae.config import save_config
from pyro_vae.runs import read_metrics


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not installed")
def test_two_gloo_processes_match_one_process(tmp_path):
    config = tiny_config(train={"epochs": 3, "batch_size": 64, "lr": 3e-3})
    save_config(config, tmp_path / "config.toml")
    single = read_metrics(train(config, out=tmp_path / "single") / "metrics.csv")

    done = subprocess.run(
        ["torchrun", "--standalone", "--nproc-per-node=2", "-m", "pyro_vae", "train",
         str(tmp_path / "config.toml"), "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ddp = read_metrics(tmp_path / "ddp" / "metrics.csv")
    # Same data order and global batch; only the Monte Carlo noise differs between the two.
    assert [r["step"] for r in ddp] == [r["step"] for r in single] == [21, 42, 63]
    assert ddp[-1]["val_elbo"] > ddp[0]["val_elbo"] + 3  # it trains
    for a, b in zip(single, ddp):
        assert abs(a["val_elbo"] - b["val_elbo"]) < 0.5
        assert abs(a["train_loss"] - b["train_loss"]) < 0.5
