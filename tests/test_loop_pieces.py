"""The pieces the training loop is made of, each on its own: the epoch's metrics row and line
(pure functions), the stop requests (a context manager over SIGINT and SIGTERM), the console
(the progress bar as a logger, reading the loss only when it shows it), the trackers' cadence,
and ``build_training``'s decisions."""

import os
import signal
import sys
import threading

import pytest
import torch
from conftest import tiny_config

from pyro_vae import train
from pyro_vae.epoch_metrics import epoch_summary, metrics_row
from pyro_vae.loggers import Console, Logger
from pyro_vae.signals import StopRequests

TRAIN = {"elbo": -100.5, "reconstruction": -90.25, "kl": 10.25}
VAL = {"elbo": -101.0, "reconstruction": -91.0, "kl": 10.0, "active_units": 3, "kl_per_dimension": [4.0, 6.0]}


def test_the_metrics_row_holds_each_number_under_its_column():
    row = metrics_row(3, 150, 0.5, 392.0, 1e-3, None, (300.0, 4), TRAIN, VAL, 12.5)
    assert row == {"epoch": 3, "step": 150, "kl_weight": 0.5, "effective_kl_weight": 392.0, "lr": 1e-3,
                   "train_loss": 75.0, "train_elbo": -100.5, "train_reconstruction": -90.25, "train_kl": 10.25,
                   "val_elbo": -101.0, "val_reconstruction": -91.0, "val_kl": 10.0, "active_units": 3,
                   "seconds": 12.5, "kl_0": 4.0, "kl_1": 6.0}


def test_the_metrics_row_adds_capacity_accuracy_and_layers_only_where_they_exist():
    val = {**VAL, "kl_per_dimension": None, "accuracy": 0.75, "kl_per_layer": {"z1": 8.0, "z2": 2.0},
           "active_units_per_layer": {"z1": 3, "z2": 1}}
    row = metrics_row(1, 10, 1.0, 1.0, 1e-3, 2.5, (0.0, 0), TRAIN, val, 1.0)
    assert row["capacity"] == 2.5 and row["val_accuracy"] == 0.75 and row["train_loss"] == 0.0  # no steps: no NaN
    assert [key for key in row if key.startswith(("kl_", "val_kl_", "active_units_")) and key != "kl_weight"] == [
        "val_kl_z1", "val_kl_z2", "active_units_z1", "active_units_z2"]
    assert "capacity" not in metrics_row(1, 10, 1.0, 1.0, 1e-3, None, (1.0, 1), TRAIN, VAL, 1.0)


def test_the_epoch_line_reads_the_row():
    row = metrics_row(2, 20, 1.0, 1.0, 1e-3, None, (150.0, 2), TRAIN, {**VAL, "accuracy": 0.8125}, 3.0)
    assert epoch_summary(row) == ("epoch 2: training loss 75.000, train ELBO -100.500, validation ELBO -101.000 "
                                  "(KL 10.00, 3 active units), validation accuracy 0.8125")


def test_a_stop_signal_is_recorded_and_the_previous_handler_restored():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with StopRequests() as requests:
            assert requests.received is None
            os.kill(os.getpid(), signal.SIGTERM)  # would end the process without the handler
            assert requests.received == signal.SIGTERM and seen == []
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]  # the handler before the block is back
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_signals_are_left_alone_and_requests_still_work():
    before = signal.getsignal(signal.SIGINT)
    outcome = {}

    def body():
        with StopRequests() as requests:
            outcome["handler"] = signal.getsignal(signal.SIGINT)
            requests.request(signal.SIGINT)
            outcome["received"] = requests.received

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert outcome == {"handler": before, "received": signal.SIGINT}


def test_the_console_reads_the_loss_only_when_its_bar_shows_it(tmp_path, monkeypatch, capsys):
    config = tiny_config(train={"progress": True})
    reads = []

    def loss():
        reads.append(1)
        return 1.0

    hidden = Console(tmp_path, config, 30, 0, "-ELBO", lambda value: f"loss {value}")
    for step in range(1, 31):
        hidden.step(step, loss)
    hidden.close()
    assert reads == []  # no terminal: no bar, no read from the device
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    shown = Console(tmp_path, config, 30, 0, "-ELBO", lambda value: f"loss {value}")
    for step in range(1, 31):
        shown.step(step, loss)
    shown.epoch([metrics_row(1, 30, 1.0, 1.0, 1e-3, None, (3.0, 3), TRAIN, VAL, 1.0)])
    shown.step(31, loss)
    shown.close()
    assert len(reads) == 5  # steps 1 (an epoch's first), 10, 20, 30, and 31 (the next epoch's first)
    assert capsys.readouterr().out.startswith("epoch 1: training loss 1.000")


def test_trackers_are_due_every_log_every_steps(tmp_path):
    logger = Logger(tmp_path, tiny_config(train={"log_every": 25}))
    assert [step for step in range(1, 101) if logger.due(step)] == [25, 50, 75, 100]


@pytest.mark.trains
def test_training_without_a_bar_or_tracker_never_reads_the_loss(tmp_path, monkeypatch):
    from pyro_vae.training import Trainer

    reads = []
    read_loss = Trainer.read_loss
    monkeypatch.setattr(Trainer, "read_loss", lambda self: (reads.append(self.step), read_loss(self))[1])
    train(tiny_config(train={"epochs": 2}), out=tmp_path / "quiet")
    assert reads == []
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    train(tiny_config(train={"epochs": 2, "progress": True}), out=tmp_path / "bar")
    assert reads == [1, 10, 12, 20]  # 11 steps an epoch: the first of each epoch and every tenth


def test_build_training_says_why_the_step_is_eager(tmp_path):
    from pyro_vae.build import build_data, build_training
    from pyro_vae.config import check_config
    from pyro_vae.steps import CapturedStep

    for cuda_graph, reason in (("auto", "the training device is cpu"), (False, "train.cuda_graph = false")):
        config = check_config(tiny_config(train={"cuda_graph": cuda_graph}))
        training = build_training(config, build_data(config), torch.device("cpu"))
        assert training.capture_obstacle.startswith(reason) and not training.captured
        assert not isinstance(training.step, CapturedStep)
