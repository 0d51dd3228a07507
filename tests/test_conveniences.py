"""Training conveniences that must tell the truth: early stopping and best.pt agree, the learning
rate is recorded, sample never overwrites the run's figures and bounds its memory, every
unwritable output is one line, no progress bar without a terminal, train.threads, and the
messages (non-finite steps, labelled counts) say what is so."""

import itertools
import math
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import one_line_error, tiny_config

from pyro_vae import cli, files, stopping, train
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.cli import main
from pyro_vae.data import load_data
from pyro_vae.registry import UserError
from pyro_vae.runs import read_metrics

# ---- early stopping: the rules ----

# A run's validation ELBOs (patience 2, min_delta 0.2), up to where it stopped: epoch 16 was the last gain of
# more than 0.2, epoch 18 the best ELBO (epochs numbered from 1, list indices from 0).
STOPPED_RUN = [-30.0 + 0.3 * k for k in range(15)] + [-24.921, -24.95, -24.825]


def test_best_is_the_highest_elbo_and_min_delta_plays_no_part_in_it():
    assert stopping.best_epoch(STOPPED_RUN) == (17, -24.825)
    assert stopping.best_epoch([-3.0, -1.0, -1.0, -2.0]) == (1, -1.0)  # the first of ties, as best.pt is written


def test_patience_counts_from_the_last_gain_of_more_than_min_delta():
    assert stopping.last_improvement(STOPPED_RUN, 0.2) == (15, -24.921)  # -24.825 is only 0.096 better
    assert stopping.last_improvement(STOPPED_RUN, 0.0) == (17, -24.825)
    assert stopping.should_stop(STOPPED_RUN, patience=2, min_delta=0.2)  # epochs 17 and 18 after epoch 16
    assert not stopping.should_stop(STOPPED_RUN[:17], patience=2, min_delta=0.2)  # only epoch 17 after it
    assert not stopping.should_stop(STOPPED_RUN, patience=2, min_delta=0.0)  # epoch 18 itself improved
    # small gains add up: each step gains 0.1 < min_delta, but three of them 0.3 > 0.2
    assert stopping.last_improvement([-1.0, -0.9, -0.8, -0.7], 0.2) == (3, -0.7)


def test_the_stop_message_names_what_best_pt_holds():
    assert stopping.stop_message(STOPPED_RUN, patience=2, min_delta=0.2) == (
        "early stopping after epoch 18: the validation ELBO has not improved by more than 0.2 for 2 epochs "
        "(last improvement -24.921 at epoch 16); best -24.825 at epoch 18, in best.pt")


@pytest.mark.trains
def test_early_stopping_line_best_pt_and_metrics_agree(tmp_path, capsys):
    # min_delta 1000: no epoch after the first counts as an improvement, so patience 2 stops after
    # epoch 3, while the ELBO does improve: the best state is epoch 3's, not epoch 1's.
    config = tiny_config(train={"epochs": 10, "early_stopping": {"patience": 2, "min_delta": 1000.0}})
    run = train(config, out=tmp_path / "run")
    elbos = [row["val_elbo"] for row in read_metrics(run / "metrics.csv")]
    assert len(elbos) == 3
    best = max(range(3), key=lambda i: elbos[i])
    assert best > 0, "this test needs a run whose best epoch is not its first"
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("early stopping"))
    named = re.search(r"best (-?[\d.]+) at epoch (\d+), in best.pt", line)
    assert int(named[2]) == best + 1 == load_checkpoint(run / "best.pt")["epoch"]
    assert float(named[1]) == pytest.approx(elbos[best], abs=5e-4)
    assert load_checkpoint(run / "best.pt")["best_val_elbo"] == pytest.approx(elbos[best])


# ---- the learning rate in metrics.csv ----


@pytest.mark.trains
def test_the_learning_rate_of_each_epochs_last_step_is_in_metrics_csv(tmp_path):
    config = tiny_config(train={"epochs": 3, "lr": 2e-3, "lr_warmup_steps": 15, "lr_schedule": "cosine"})
    rows = read_metrics(train(config, out=tmp_path / "run") / "metrics.csv")
    total = 3 * 11  # 1297 training images, batches of 128: 11 steps an epoch
    expected = [2e-3 * min(1.0, step / 15) * 0.5 * (1 + math.cos(math.pi * (step - 1) / total))
                for step in (row["step"] for row in rows)]
    assert [row["step"] for row in rows] == [11, 22, 33]
    assert [row["lr"] for row in rows] == pytest.approx(expected, rel=1e-12)


@pytest.mark.trains
def test_a_plateau_cut_shows_from_the_next_epochs_row(tmp_path):
    # min_delta 1000: every epoch after the first is a plateau; patience 1 halves the rate each time
    config = tiny_config(train={"epochs": 4, "lr_schedule": {"name": "plateau", "patience": 1, "min_delta": 1000.0}})
    rows = read_metrics(train(config, out=tmp_path / "run") / "metrics.csv")
    assert [row["lr"] for row in rows] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4], rel=1e-12)


# ---- progress without a terminal ----


@pytest.mark.trains
def test_without_a_terminal_progress_is_one_line_per_epoch(tmp_path, capsys):
    train(tiny_config(train={"epochs": 3, "progress": True}), out=tmp_path / "run")
    out, err = capsys.readouterr()
    assert "\r" not in out + err  # no bar: pytest's captured streams are not terminals
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("epoch ")] == ["epoch 1", "epoch 2", "epoch 3"]


@pytest.mark.trains
def test_on_a_terminal_the_bar_is_drawn(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    train(tiny_config(train={"epochs": 1, "progress": True}), out=tmp_path / "run")
    assert "\r" in capsys.readouterr().err


# ---- train.threads ----


@pytest.mark.parametrize("threads", [0, 3])
@pytest.mark.trains
def test_train_threads_sets_torchs_threads_while_training_and_restores_them(tmp_path, monkeypatch, threads):
    from pyro_vae.training import Trainer

    seen, fit = [], Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self: (seen.append(torch.get_num_threads()), fit(self)))
    before = torch.get_num_threads()  # 1: conftest's
    train(tiny_config(train={"epochs": 1, "threads": threads}), out=tmp_path / "run")
    assert seen == [threads or before]
    assert torch.get_num_threads() == before
    with pytest.raises(UserError, match="train.threads must be"):
        train(tiny_config(train={"threads": -1}), out=tmp_path / "bad")


# ---- messages that say what is so ----


@pytest.mark.trains
def test_a_fault_before_the_first_checkpoint_says_there_is_none(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"no checkpoint was written yet") as error:
        train(tiny_config(train={"lr": 1e30, "epochs": 3, "optimizer": "sgd"}), out=run)
    assert "intact" not in str(error.value)
    assert not (run / "checkpoint.pt").exists()


def test_the_data_summary_counts_the_kept_labels():
    assert "; " in load_data("digits", binarize="static").summary()
    assert "(1, 8, 8), labelled;" in load_data("digits", binarize="static").summary()
    assert "(1, 8, 8), 50 of 1297 labelled;" in load_data("digits", binarize="static", labeled=50).summary()


@pytest.mark.trains
def test_the_readmes_m2_loop_runs_without_a_warning():
    """The README's M2 example, verbatim but for fewer epochs and batches: the labeled step (y observed,
    nothing to enumerate) must not make TraceEnum_ELBO warn that it found no sites to enumerate."""
    import pyro
    from pyro.infer import SVI, TraceEnum_ELBO

    from pyro_vae import M2
    from pyro_vae.data import load_data as load

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load("digits", binarize="static", labeled=100)
        m2 = M2(data.shape, latent_dim=2, classifier={"name": "mlp", "hidden": [64]})
        svi = SVI(m2.model, m2.guide, pyro.optim.Adam({"lr": 3e-3}), TraceEnum_ELBO(max_plate_nesting=1))
        for epoch in range(1):
            for batch in itertools.islice(data.semi_supervised_batches(64, epoch, None, "cpu"), 3):
                svi.step(batch.unlabeled)                   # y enumerated: -U(x)
                svi.step(batch.labeled.x, batch.labeled.y)  # y observed: -L(x, y)
        predicted = m2.classify(data.test.x)
    assert predicted.shape == (250,)


# ---- sample ----


@pytest.mark.trains
def test_sample_leaves_the_runs_own_figures_alone_unless_forced(run, capsys):
    figure = (run / "samples.png").read_bytes()
    assert main(["sample", str(run), "--n", "9", "--seed", "1"]) == 0
    written = run / "sampled" / "samples-n9-seed1.png"
    assert capsys.readouterr().out.strip() == str(written) and written.is_file()
    assert (run / "samples.png").read_bytes() == figure
    assert main(["sample", str(run), "--n", "9", "--out", str(run / "samples.png")]) == 2
    assert "--force" in one_line_error(capsys)
    assert (run / "samples.png").read_bytes() == figure
    assert main(["sample", str(run), "--n", "9", "--out", str(run / "checkpoint.pt")]) == 2
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "9", "--out", str(run / "samples.png"), "--force"]) == 0
    assert (run / "samples.png").read_bytes() != figure


@pytest.mark.trains
def test_sample_refuses_more_than_one_grid_holds_at_once(run, capsys):
    assert main(["sample", str(run), "--n", "100000000"]) == 2
    assert f"at most {cli.MAX_SAMPLES}" in one_line_error(capsys)
    assert not (run / "sampled").exists()


def test_samples_are_drawn_a_batch_at_a_time(monkeypatch):
    class Prior:
        def __init__(self):
            self.sizes = []

        def sample(self, n, **options):
            self.sizes.append(n)
            return torch.zeros(n, 4)

    monkeypatch.setattr(cli, "SAMPLE_BATCH", 3)
    vae = Prior()
    assert len(cli.draw_in_batches(vae, 7)) == 7
    assert vae.sizes == [3, 3, 1]


@pytest.mark.parametrize("name", ["grid.txt", "grid"])
@pytest.mark.trains
def test_sample_refuses_an_out_that_names_no_image_format(run, tmp_path, capsys, name):
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / name)]) == 2
    assert "name an image file ending in one of" in one_line_error(capsys)
    assert not (tmp_path / name).exists()


def unwritable(tmp_path, monkeypatch):
    """Paths no output can go to: under /proc, under a file, in a folder without permission (faked
    with os.access: root may write anywhere)."""
    (tmp_path / "file").write_text("")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = files.os.access
    monkeypatch.setattr(files.os, "access",
                        lambda path, mode: real_access(path, mode) and locked not in (Path(path), *Path(path).parents))
    return [Path("/proc/x/y.png"), Path("/proc/y.png"), tmp_path / "file" / "y.png", locked / "y.png"]


@pytest.mark.parametrize("which", range(4))
@pytest.mark.trains
def test_every_unwritable_out_is_one_line(run, tmp_path, monkeypatch, capsys, which):
    out = unwritable(tmp_path, monkeypatch)[which]
    assert main(["sample", str(run), "--n", "4", "--out", str(out)]) == 2
    assert str(out.parent) in one_line_error(capsys) or "/proc" in str(out)
    assert main(["plot", str(run), "--limit", "50", "--out", str(out.parent)]) == 2
    one_line_error(capsys)
    assert not (tmp_path / "locked" / "y.png").exists()


@pytest.mark.trains
def test_evaluate_into_a_run_folder_without_permission_is_one_line(run, monkeypatch, capsys):
    real_access = files.os.access
    monkeypatch.setattr(files.os, "access", lambda path, mode: real_access(path, mode) and Path(path) != run)
    assert main(["evaluate", str(run), "--samples", "2", "--limit", "10"]) == 2
    assert "permission denied" in one_line_error(capsys)
    assert not (run / "evaluation.json").exists()
