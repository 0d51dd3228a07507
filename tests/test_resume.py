"""Runs that survive: kill and resume bit-identically, clean stops on signals, safe checkpoints."""

import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import tiny_config

from pyro_vae import load_run, train
from pyro_vae.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.config import save_config
from pyro_vae.registry import UserError
from pyro_vae.runs import read_metrics

CLI = [sys.executable, "-m", "pyro_vae"]


def resumable_config(**train_options):
    # 1297 examples / 32 = 41 steps an epoch; every 7th step writes a checkpoint, so a
    # kill lands mid-epoch. Dynamic binarization, a KL warm-up and a cosine learning rate
    # make the data order, the binarization noise and both schedules' positions part of
    # what must resume.
    return tiny_config(
        data={"binarize": "dynamic"},
        objective={"kl_weight": {"name": "linear", "start": 0.0, "end": 1.0, "epochs": 2}},
        train={"epochs": 4, "batch_size": 32, "checkpoint_every": 7, "lr_schedule": "cosine", **train_options},
    )


def same_parameters(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def wait_for(path, process, timeout=60):
    start = time.time()
    while not path.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.time() - start < timeout
        time.sleep(0.005)


@pytest.mark.trains
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    config = tmp_path / "config.toml"
    save_config(resumable_config(), config)
    reference = train(resumable_config(), out=tmp_path / "reference")

    run = tmp_path / "killed"
    process = subprocess.Popen(CLI + ["train", str(config), "--out", str(run)], stderr=subprocess.PIPE, text=True)
    wait_for(run / "checkpoint.pt", process)
    process.kill()  # SIGKILL: no handler runs
    process.communicate()  # reaps it and closes its stderr pipe
    assert process.returncode == -signal.SIGKILL
    state = load_checkpoint(run / "checkpoint.pt")
    assert 0 < state["step"] < 4 * 41

    done = subprocess.run(CLI + ["train", "--resume", str(run)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert same_parameters(load_run(reference), load_run(run))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(read_metrics(run / "metrics.csv")) == strip(read_metrics(reference / "metrics.csv"))


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_exits_cleanly(tmp_path):
    config = tmp_path / "config.toml"
    save_config(resumable_config(epochs=200, checkpoint_every=0), config)
    run = tmp_path / "run"
    process = subprocess.Popen(CLI + ["train", str(config), "--out", str(run)], stderr=subprocess.PIPE, text=True)
    wait_for(run / "config.toml", process)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in stderr and "--resume" in stderr and "Traceback" not in stderr
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["step"] > 0


@pytest.mark.trains
def test_resume_extends_a_finished_run_and_refuses_incompatible_changes(tmp_path):
    run = train(tiny_config(), out=tmp_path / "run")
    train(None, resume=run, overrides=["train.epochs=3"])
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == [1, 2, 3]
    with pytest.raises(UserError, match="cannot resume .* with a different model.latent_dim"):
        train(None, resume=run, overrides=["model.latent_dim=7"])


def test_checkpoint_with_pickled_objects_is_refused_not_executed(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed!",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, path)
    with pytest.raises(UserError, match="refusing to load"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="truncated or corrupt|refusing"):
        load_checkpoint(path)


def test_checkpoints_are_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1}, path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint({"step": 2}, path)
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


@pytest.mark.trains
def test_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    config = tiny_config(train={"lr": 1e30, "epochs": 3, "optimizer": "sgd"})
    with pytest.raises(UserError, match=r"non-finite (loss|gradient) .* at step \d+ \(epoch \d.*train.lr = 1e\+30"):
        train(config, out=run)
    if (run / "checkpoint.pt").exists():
        state = load_checkpoint(run / "checkpoint.pt")
        assert all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.parametrize("model", [
    {"guide": {"name": "iaf", "flows": 2, "hidden": [16]}},
    {"guide": "full"},
    {"latent_dim": [4, 3], "prior": {"name": "vamp", "components": 5}},
])
@pytest.mark.trains
def test_new_guides_and_two_layers_resume_bit_identically(tmp_path, model):
    def config(epochs):
        base = tiny_config(train={"epochs": epochs, "batch_size": 256})
        base["model"].update(model)
        return base

    reference = train(config(2), out=tmp_path / "reference")
    run = train(config(1), out=tmp_path / "resumed")
    train(resume=run, overrides=["train.epochs=2"])
    assert same_parameters(load_run(reference), load_run(run))
    assert read_metrics(reference / "metrics.csv")[-1]["val_elbo"] == read_metrics(run / "metrics.csv")[-1]["val_elbo"]
