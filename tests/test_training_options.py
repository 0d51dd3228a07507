"""Training conveniences: early stopping, learning-rate warm-up and plateau, TensorBoard, and the
run-directory edges (--force, finished runs, unwritable directories, oversized batches)."""

import math
import os

import pytest
import torch
from conftest import tiny_config

from pyro_vae import train
from pyro_vae.optimizers import LR_SCHEDULES
from pyro_vae.registry import UserError
from pyro_vae.runs import read_metrics


def schedule(spec, total_steps=100, warmup_steps=0):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    return optimizer, LR_SCHEDULES.build(spec, "train.lr_schedule", optimizer=optimizer,
                                         total_steps=total_steps, warmup_steps=warmup_steps)


def rates(optimizer, lr_schedule, steps):
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        lr_schedule.step()
    return seen


@pytest.mark.trains
def test_warm_up_is_linear_then_the_schedule_takes_over():
    optimizer, lr_schedule = schedule("cosine", total_steps=20, warmup_steps=4)
    seen = rates(optimizer, lr_schedule, 20)
    for t, rate in enumerate(seen):
        expected = 0.1 * min(1.0, (t + 1) / 4) * 0.5 * (1 + math.cos(math.pi * t / 20))
        assert rate == pytest.approx(expected, rel=1e-12)


@pytest.mark.trains
def test_plateau_cuts_the_rate_after_patience_epochs_without_improvement_and_resumes():
    optimizer, lr_schedule = schedule({"name": "plateau", "patience": 2, "factor": 0.5})
    for elbo in (-10.0, -9.0, -9.0, -9.5):  # best at epoch 2; two epochs without improvement
        lr_schedule.epoch_end(elbo)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    state = lr_schedule.state_dict()
    fresh_optimizer, fresh = schedule({"name": "plateau", "patience": 2, "factor": 0.5})
    fresh.load_state_dict(state)
    fresh_optimizer.step()  # as in training: the optimizer's step, then the schedule's
    fresh.step()
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)  # the cut survives a resume
    with pytest.raises(UserError, match="train.lr_schedule.factor must be < 1"):
        schedule({"name": "plateau", "factor": 2.0})


@pytest.mark.trains
def test_early_stopping_stops_when_the_validation_elbo_stalls(tmp_path):
    # A learning rate this small cannot improve the ELBO by 1000 nats: patience 2 stops after epoch 3.
    config = tiny_config(train={"epochs": 10, "lr": 1e-9, "early_stopping": {"patience": 2, "min_delta": 1000.0}})
    run = train(config, out=tmp_path / "run")
    assert len(read_metrics(run / "metrics.csv")) == 3
    with pytest.raises(UserError, match=r"train.early_stopping needs patience"):
        train(tiny_config(train={"early_stopping": {"min_delta": 1.0}}), out=tmp_path / "bad")


@pytest.mark.trains
def test_tensorboard_logs_every_metric_the_step_loss_and_the_figures(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(train={"loggers": ["csv", "tensorboard"], "log_every": 5})
    run = train(config, out=tmp_path / "run")
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    rows = read_metrics(run / "metrics.csv")
    assert {f"epoch/{key}" for key in rows[0] if key != "epoch"} <= scalars
    assert [event.value for event in events.Scalars("epoch/val_elbo")] == pytest.approx([row["val_elbo"] for row in rows])
    assert [event.value for event in events.Scalars("epoch/lr")] == pytest.approx([1e-3] * len(rows))
    assert len(events.Scalars("step/train_loss")) == rows[-1]["step"] // 5
    assert {"samples", "reconstructions", "curves"} <= set(events.Tags()["images"])


def test_an_unknown_logger_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError,
                       match=r"train.loggers: unknown logger 'neptune'; choose one of: csv, tensorboard, mlflow, wandb"):
        train(tiny_config(train={"loggers": ["neptune"]}), out=tmp_path / "run")


@pytest.mark.trains
def test_force_removes_what_an_earlier_run_wrote_and_keeps_other_files(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(train={"epochs": 1}), out=run)
    (run / "evaluation.json").write_text("{}")  # an old model's evaluation
    (run / "notes.txt").write_text("mine")
    train(tiny_config(train={"epochs": 1}, model={"latent_dim": 2}), out=run, force=True)
    assert not (run / "evaluation.json").exists()
    assert (run / "notes.txt").read_text() == "mine"
    # resuming a finished run does nothing and says so
    before = {path.name: path.stat().st_mtime_ns for path in run.iterdir()}
    capsys.readouterr()
    train(None, resume=run)
    assert "nothing to do" in capsys.readouterr().err
    assert {path.name: path.stat().st_mtime_ns for path in run.iterdir()} == before


@pytest.mark.trains
def test_a_batch_larger_than_the_training_split_is_announced(tmp_path, capsys):
    train(tiny_config(train={"epochs": 1, "batch_size": 5000}), out=tmp_path / "run")
    assert ("train.batch_size (5000) is larger than the training split (1297 examples): one step per epoch"
            in capsys.readouterr().err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_out_fails_before_any_work(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UserError, match="cannot write to"):
            train(tiny_config(), out=locked / "run")
    finally:
        locked.chmod(0o700)


def test_the_python_api_names_force_true_for_an_existing_out(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("")
    with pytest.raises(UserError, match=r"force=True in Python"):
        train(tiny_config(), out=tmp_path / "run")


@pytest.mark.trains
def test_a_fixed_gaussian_scale_on_data_far_outside_the_unit_interval_is_warned_about(tmp_path, capsys):
    import numpy as np

    x = np.random.default_rng(0).uniform(0, 255, size=(200, 4)).astype(np.float32)
    np.savez(tmp_path / "wide.npz", train=x)
    config = tiny_config(data={"name": "npz", "path": str(tmp_path / "wide.npz"), "binarize": "none"},
                         model={"likelihood": {"name": "gaussian", "scale": 1.0}}, train={"epochs": 1})
    train(config, out=tmp_path / "run")
    assert "the data span [" in capsys.readouterr().err
    config["model"]["likelihood"] = {"name": "gaussian", "scale": "learned"}
    train(config, out=tmp_path / "learned")
    assert "the data span" not in capsys.readouterr().err


# ---- train.threads = "auto" ----


@pytest.mark.parametrize("busy, expected", [(0.1, 2), (0.6, 1), (1.0, 1), (4.5, 1)])
def test_auto_threads_are_the_cores_others_leave_free_at_most_torchs_default(monkeypatch, busy, expected):
    from pyro_vae.devices import resolve_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # torch's default on two cores
    assert resolve_threads("auto", busy) == expected
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # OMP_NUM_THREADS=1: never more
    assert resolve_threads("auto", busy) == 1
    assert resolve_threads(3) == 3 and resolve_threads(0) == 0


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux's /proc/stat")
def test_busy_cores_count_the_cpu_time_of_the_other_processes(monkeypatch, tmp_path):
    from pyro_vae import devices

    # two snapshots of /proc/stat's first line, 100 ticks apart on 2 cores: 50 busy (user 30,
    # system 15, irq 5), 50 idle (idle 40, iowait 10): one core's worth of work
    snapshots = iter(["cpu  100 0 50 1000 20 5 0 0 0 0\n", "cpu  130 0 65 1040 30 10 0 0 0 0\n"])
    stat = tmp_path / "stat"

    def next_snapshot(seconds):
        stat.write_text(next(snapshots))

    stat.write_text(next(snapshots))
    monkeypatch.setattr(devices, "PROC_STAT", str(stat))
    monkeypatch.setattr(devices.time, "sleep", next_snapshot)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert devices.busy_cores() == pytest.approx(1.0)


def test_without_proc_stat_auto_reads_the_load_average_and_without_that_torchs_default(monkeypatch, tmp_path):
    from pyro_vae import devices

    monkeypatch.setattr(devices, "PROC_STAT", str(tmp_path / "nowhere"))
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 1.0, 0.5))
    assert devices.busy_cores() == 1.5

    def unavailable():
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", unavailable)
    assert devices.busy_cores() is None
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert devices.resolve_threads("auto") == 4


@pytest.mark.trains
def test_threads_default_to_auto_and_a_resumed_run_may_change_them(tmp_path, monkeypatch):
    from pyro_vae import devices
    from pyro_vae.config import load_config
    from pyro_vae.training import Trainer

    assert load_config()["train"]["threads"] == "auto"
    with pytest.raises(UserError, match=r"train.threads must be \"auto\" or an integer >= 0, got string 'many'"):
        load_config(None, ["train.threads='many'"])
    seen, fit = [], Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self: (seen.append(torch.get_num_threads()), fit(self)))
    monkeypatch.setattr(devices, "busy_cores", lambda: 9.0)  # a busy machine: auto is 1
    run = train(tiny_config(train={"epochs": 1, "threads": 2}), out=tmp_path / "run")
    train(resume=run, overrides=["train.epochs=2", "train.threads='auto'"])
    assert seen == [2, 1]
    assert load_config(run / "config.toml")["train"]["threads"] == "auto"


class TickingClock:
    """`time` for `pyro_vae.training` whose `perf_counter` advances one second a call: the trainer
    reads it once a step (the time budget) and once an epoch, so a budget in seconds is a budget
    in reads, the same on every machine."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 1.0
        return self.now


@pytest.mark.trains
def test_max_time_ends_the_run_at_the_step_that_reaches_it_and_closes_the_epoch(tmp_path, monkeypatch, capsys):
    from pyro_vae import training
    from pyro_vae.checkpoint import load_checkpoint
    from pyro_vae.runs import load_run

    monkeypatch.setattr(training, "time", TickingClock())
    # digits: 1,297 training images, 11 steps of 128 an epoch. The clock reads 1 at the start, then
    # at each epoch's start, each step and each epoch's end: epoch 1 ends at 13 s (row 1), epoch 2
    # starts at 14 s, and its 8th step (step 19) reads 22 s, the first >= 21.5: the epoch closes
    # there (23 s, row 2), and epoch 3's start (24 s) ends the run.
    run = train(tiny_config(train={"epochs": 100, "max_time": 21.5}), out=tmp_path / "run")
    rows = read_metrics(run / "metrics.csv")
    assert [row["step"] for row in rows] == [11, 19]
    assert [row["seconds"] for row in rows] == [13.0, 23.0]
    assert "train.max_time (21.5 s) reached after 24.0 s of training, at step 19" in capsys.readouterr().out
    state = load_checkpoint(run / "checkpoint.pt")
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (19, 2, 0)  # an epoch's end
    assert (run / "best.pt").is_file() and (run / "samples.png").is_file()
    load_run(run)

    # resumed with the same budget it trains nothing; a larger one (a resumable key) trains on from there
    training.time.now = 0.0
    train(resume=run)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 19
    # from 23 s: epoch 3 (11 steps) ends at 36 s, epoch 4's 3rd step reads 40 s
    train(resume=run, overrides=["train.max_time=40"])
    rows = read_metrics(run / "metrics.csv")
    assert [row["step"] for row in rows] == [11, 19, 30, 33] and rows[-1]["seconds"] == 41.0


@pytest.mark.trains
def test_max_time_stops_a_real_run_early_and_zero_changes_nothing(tmp_path):
    from pyro_vae.checkpoint import load_checkpoint

    run = train(tiny_config(train={"epochs": 10000, "max_time": 1.0}), out=tmp_path / "budget")
    # the last row is the epoch in whose step (or, counting its evaluation, before whose successor) 1 s passed
    rows = read_metrics(run / "metrics.csv")
    assert all(row["seconds"] < 1.0 for row in rows[:-1]) and len(rows) < 10000
    assert load_checkpoint(run / "checkpoint.pt")["step"] == rows[-1]["step"]

    without = load_checkpoint(train(tiny_config(), out=tmp_path / "without") / "checkpoint.pt")["model"]
    zero = load_checkpoint(train(tiny_config(train={"max_time": 0}), out=tmp_path / "zero") / "checkpoint.pt")["model"]
    assert without.keys() == zero.keys() and all(torch.equal(without[k], zero[k]) for k in without)


@pytest.mark.parametrize("value, message", [(-1, r"train.max_time must be >= 0, got -1$"),
                                            ("300", r"train.max_time must be a finite number, got string '300'$")])
def test_a_bad_max_time_is_a_one_line_error(tmp_path, value, message):
    with pytest.raises(UserError, match=message):
        train(tiny_config(train={"max_time": value}), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
