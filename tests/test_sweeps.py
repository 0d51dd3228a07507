"""Sweeps (`pyro_vae.sweeps`): the spec's checks, the study's queue, workers that race and die.

The multi-process tests start real `pyro-vae sweep` processes on one study, on SQLite and on a
real PostgreSQL server (a cluster made in a temporary directory), kill one with SIGKILL while
its trial trains, and check that every grid point was trained once and that the killed trial,
resumed by the other worker, ends with exactly the parameters of an uninterrupted run.
"""

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import tomllib
import torch

from pyro_vae import train
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.cli import main
from pyro_vae.registry import UserError
from pyro_vae.sweeps import load_spec
from pyro_vae.sweeps.study import storage_url
from tests.conftest import one_line_error, tiny_config

optuna = pytest.importorskip("optuna", reason='the sweep extra: pip install "pyro-vae[sweep]"')

ROOT = Path(__file__).resolve().parent.parent

def postgres_binaries():
    """The folder of PostgreSQL's initdb and pg_ctl: Debian's newest, else the PATH's; None if absent."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    found = debian[-1] if debian else shutil.which("initdb")
    return Path(found).parent if found else None


PG_BIN = postgres_binaries()


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def spec_table(**sweep):
    return {**tiny_config(), "sweep": {"heartbeat": 2, **sweep}}


def write_spec(path, table):
    import tomli_w

    path.write_text(tomli_w.dumps(table))
    return path


@pytest.mark.parametrize("sweep, message", [
    ({"grid": {"model.latent_dimm": [2, 4]}}, "unknown key model.latent_dimm"),
    ({"grid": {"model.latent_dim": []}}, "expected a non-empty list"),
    ({"grid": {"model.latent_dim": [2, 0]}}, 'sweep point {"model.latent_dim": 0}: model.latent_dim must be'),
    ({"grid": {"train.lr": [0.1]}, "search": {"train.lr": {"low": 0.1, "high": 1}}}, "exactly one of grid"),
    ({"search": {"train.lr": {"low": 1.0, "high": 0.1}}}, "low (1.0) must be below high"),
    ({"search": {"train.lr": {"low": 0.0, "high": 0.1, "log": True}}}, "a log range needs low > 0"),
    ({"grid": {"train.lr": [0.1]}, "objective": "val_elbow"}, "is not a metrics.csv column"),
    ({"grid": {"train.lr": [0.1]}, "pruner": "sometimes"}, "sweep.pruner: unknown value"),
    ({"grid": {"train.lr": [0.1]}, "trails": 3}, "unknown key sweep.trails"),
    ({"grid": [{"train.lr": [0.1]}, {}]}, "sweep.grid[1] must be a non-empty table"),
    ({"grid": [{"train.lr": [0.1]}, {"model.latent_dim": [3, -1]}]},
     'sweep point {"model.latent_dim": -1}: model.latent_dim must be'),
])
def test_a_wrong_spec_is_one_line_before_any_training(tmp_path, capsys, sweep, message):
    spec = write_spec(tmp_path / "spec.toml", spec_table(**sweep))
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_without_optuna_the_command_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    spec = write_spec(tmp_path / "spec.toml", spec_table(grid={"train.seed": [0]}))
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert one_line_error(capsys) == 'error: sweeps need Optuna: pip install "pyro-vae[sweep]"'


def test_import_pyro_vae_imports_no_optuna():
    code = "import sys, pyro_vae, pyro_vae.sweeps; pyro_vae.sweep; print('optuna' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stdout.strip() == "False"


def test_grid_points_take_tables_and_names():
    spec = load_spec(spec_table(grid={"model.decoder": ["mlp", {"name": "mlp", "hidden": [16]}], "train.seed": [0, 1]}))
    assert len(spec.grid_points()) == 4
    config = spec.trial_config({"model.decoder": {"name": "mlp", "hidden": [16]}, "train.seed": 1}, threads=1)
    assert config["model"]["decoder"]["hidden"] == [16] and config["train"]["seed"] == 1
    assert config["train"]["threads"] == 1
    with pytest.raises(UserError, match="sweep key 'model.latent_dim.x': model.latent_dim is not a table"):
        spec.trial_config({"model.latent_dim.x": 1})


@pytest.mark.trains
def test_a_sweep_trains_each_point_once_and_again_nothing(tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.toml", spec_table(grid={"model.latent_dim": [2, 3], "train.seed": [0, 1]}))
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1"]) == 0
    rows = read_csv(out / "trials.csv")
    assert [(r["model.latent_dim"], r["train.seed"], r["state"]) for r in rows] == [
        ("2", "0", "COMPLETE"), ("2", "1", "COMPLETE"), ("3", "0", "COMPLETE"), ("3", "1", "COMPLETE")]
    for row in rows:  # the objective: val_elbo at the best epoch of an ordinary run directory
        metrics = read_csv(Path(row["run"]) / "metrics.csv")
        assert float(row["objective"]) == max(float(m["val_elbo"]) for m in metrics)
    summary = read_csv(out / "summary.csv")
    assert [(s["model.latent_dim"], s["n"]) for s in summary] == [("2", "2"), ("3", "2")]
    assert (out / "objective-model.latent_dim.png").stat().st_size > 0
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("trials/*/checkpoint.pt")}
    printed = capsys.readouterr().out
    assert "trial 0 COMPLETE, objective" in printed and "4 finished, 0 running, 0 waiting" in printed
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1"]) == 0  # again: nothing trains
    assert "epoch 1" not in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("trials/*/checkpoint.pt")} == stamps
    assert main(["sweep", str(spec), "--out", str(out), "--report"]) == 0
    from pyro_vae.sweeps import sweep_rows

    assert [(r["number"], r["model.latent_dim"], r["objective"]) for r in sweep_rows(spec, out)] == [
        (int(r["number"]), int(r["model.latent_dim"]), float(r["objective"])) for r in rows]


def test_a_list_of_grids_is_each_table_in_turn_each_point_only_its_keys():
    spec = load_spec(spec_table(grid=[{"objective.kl_weight": [1.0, 4.0], "train.seed": [0, 1]},
                                      {"objective.estimator": [{"name": "tcvae", "beta": 4.0}], "train.seed": [1, 2]}]))
    assert spec.grid_points() == [
        {"objective.kl_weight": 1.0, "train.seed": 0}, {"objective.kl_weight": 1.0, "train.seed": 1},
        {"objective.kl_weight": 4.0, "train.seed": 0}, {"objective.kl_weight": 4.0, "train.seed": 1},
        {"objective.estimator": {"name": "tcvae", "beta": 4.0}, "train.seed": 1},
        {"objective.estimator": {"name": "tcvae", "beta": 4.0}, "train.seed": 2}]
    assert spec.grid == {"objective.kl_weight": [1.0, 4.0], "train.seed": [0, 1, 2],
                         "objective.estimator": [{"name": "tcvae", "beta": 4.0}]}
    config = spec.trial_config(spec.grid_points()[-1])  # the other table's key keeps the base value
    assert config["objective"]["kl_weight"] == 1.0 and config["objective"]["estimator"]["name"] == "tcvae"


@pytest.mark.trains
def test_a_list_of_grids_trains_each_point_with_its_own_keys(tmp_path):
    spec = spec_table(grid=[{"model.latent_dim": [2, 3]}, {"objective.kl_weight": [4.0], "train.seed": [1]}])
    from pyro_vae import sweep

    out = sweep(spec, tmp_path / "out", workers=1)
    rows = read_csv(out / "trials.csv")
    assert [(r["model.latent_dim"], r["objective.kl_weight"], r["train.seed"], r["state"]) for r in rows] == [
        ("2", "", "", "COMPLETE"), ("3", "", "", "COMPLETE"), ("", "4.0", "1", "COMPLETE")]
    configs = [tomllib.loads((Path(r["run"]) / "config.toml").read_text()) for r in rows]
    assert [(c["model"]["latent_dim"], c["objective"]["kl_weight"], c["train"]["seed"]) for c in configs] == [
        (2, 1.0, 0), (3, 1.0, 0), (tiny_config()["model"]["latent_dim"], 4.0, 1)]
    assert (out / "objective-objective.kl_weight.png").is_file()


@pytest.mark.trains
def test_a_search_with_a_pruner(tmp_path):
    spec = spec_table(search={"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}, trials=3, sampler="random",
                      pruner="median")
    spec["train"]["epochs"] = 2
    from pyro_vae import sweep

    out = sweep(spec, tmp_path / "out", workers=1)
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 3 and "grid_point" not in study.trials[0].user_attrs
    for trial in study.trials:
        assert set(trial.intermediate_values) == {1, 2}  # the validation ELBO of each epoch
        assert 1e-4 <= trial.params["train.lr"] <= 1e-2
    assert (out / "history.png").is_file()


@pytest.mark.trains
def test_an_evaluation_key_as_the_objective(tmp_path):
    from pyro_vae import sweep

    spec = spec_table(grid={"train.seed": [3]}, objective="log_likelihood",
                      evaluate={"samples": 3, "limit": 20, "split": "valid"})
    spec["train"]["epochs"] = 1
    out = sweep(spec, tmp_path / "out", workers=1)
    row = read_csv(out / "trials.csv")[0]
    record = json.loads((Path(row["run"]) / "evaluation.json").read_text())
    assert record["num_examples"] == 20 and record["split"] == "valid" and record["checkpoint"] == "best.pt"
    assert float(row["objective"]) == record["log_likelihood"]


def test_evaluation_keys_are_found_by_name_or_path():
    from pyro_vae.sweeps.trials import lookup

    record = {"log_likelihood": -20.5, "disentanglement": {"mig": 0.1, "dci": {"disentanglement": 0.3}}}
    assert lookup(record, "log_likelihood") == -20.5 and lookup(record, "mig") == 0.1
    assert lookup(record, "dci.disentanglement") == 0.3 and lookup(record, "accuracy") is None


class PruneAfter:
    """A stand-in for an Optuna trial whose pruner says stop after `epochs` epochs."""

    def __init__(self, epochs):
        self.epochs, self.reported = epochs, {}

    def report(self, value, step):
        self.reported[step] = value

    def should_prune(self):
        return len(self.reported) >= self.epochs


@pytest.mark.trains
def test_a_pruned_run_stops_cleanly_at_an_epoch_end(tmp_path):
    from pyro_vae.sweeps.trials import PruningReporter

    config = tiny_config(train={"epochs": 3})
    trial = PruneAfter(1)
    reporter = PruningReporter(tmp_path / "run", config, trial, sign=-1.0)
    with pytest.raises(optuna.TrialPruned, match="pruned after epoch 1"):
        train(config, out=tmp_path / "run", callbacks=[reporter])
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["epoch"] == 1 and state["batch_in_epoch"] == 0  # the checkpoint of the epoch reported
    assert trial.reported == {1: -state["rows"][0]["val_elbo"]}  # minimizing: the ELBO negated
    assert len(read_csv(tmp_path / "run" / "metrics.csv")) == 1


# ---- several processes on one study, one killed ----

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server in a temporary directory (a Unix socket there); its URL."""
    if PG_BIN is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    pytest.importorskip("psycopg2", reason='the PostgreSQL driver: pip install "pyro-vae[sweep]"')
    folder = Path(tempfile.mkdtemp(prefix="pyro-vae-pg-"))
    as_postgres = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres system user
        shutil.chown(folder, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def run(*args):
        done = subprocess.run([*as_postgres, *args], capture_output=True, text=True)
        if done.returncode:
            pytest.fail(f"{Path(args[0]).name} failed: {done.stderr.strip()[-500:]}")
    try:
        run(str(PG_BIN / "initdb"), "-D", str(folder / "data"), "-U", "postgres", "--auth=trust")
        run(str(PG_BIN / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "log"), "-w", "start",
            "-o", f"-k {folder} -p {port} -c listen_addresses=''")
        try:
            yield f"postgresql://postgres@/postgres?host={folder}&port={port}"
        finally:
            run(str(PG_BIN / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


CLAIMER = """
import sys
from pyro_vae.sweeps import load_spec
from pyro_vae.sweeps.study import claim, open_study
study = open_study(load_spec(sys.argv[1]), sys.argv[2])
while (trial := claim(study)) is not None:
    print(trial.number, flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_racing_processes_claim_every_queued_point_exactly_once(tmp_path, request, backend):
    points = 40
    # a study name of its own: the PostgreSQL server is the module's
    spec = write_spec(tmp_path / "race.toml", spec_table(grid={"train.seed": list(range(points))}))
    storage = request.getfixturevalue("postgres") if backend == "postgresql" else f"sqlite:///{tmp_path / 'study.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    url = storage_url(tmp_path, storage)
    claimers = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(spec), url], stdout=subprocess.PIPE, text=True,
                                 env=env) for _ in range(4)]
    claimed = [int(n) for process in claimers for n in process.communicate(timeout=600)[0].split()]
    assert all(process.returncode == 0 for process in claimers)
    assert sorted(claimed) == list(range(points))  # every queued trial taken, none twice (and the grid queued once)


def start_worker(spec, out, storage, log):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pyro_vae", "sweep", str(spec), "--out", str(out), "--workers", "1",
               "--storage", storage]
    with open(log, "w") as stdout:  # the child has its own copy of the file descriptor
        return subprocess.Popen(command, stdout=stdout, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def wait_for(condition, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def running_trial_with_checkpoint(log, out):
    """The run directory of the trial the worker of `log` trains, once it has a checkpoint."""
    started = re.findall(r"^trial \d+: (.+)$", Path(log).read_text(), re.MULTILINE)
    if started:
        run = Path(started[-1])
        if (run / "checkpoint.pt").is_file() and not (run / "samples.png").exists():
            return run
    return None


@pytest.mark.slow
@pytest.mark.trains
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_one_killed_every_point_once_and_the_resumed_run_exact(tmp_path, request, backend):
    epochs = 12
    table = spec_table(grid={"train.seed": [0, 1, 2]})
    table["train"].update(epochs=epochs, threads=1)
    spec, out = write_spec(tmp_path / "spec.toml", table), tmp_path / "out"
    storage = request.getfixturevalue("postgres") if backend == "postgresql" else f"sqlite:///{out / 'study.db'}"
    out.mkdir()
    first = start_worker(spec, out, storage, tmp_path / "first.log")
    second = start_worker(spec, out, storage, tmp_path / "second.log")
    run = None

    def killed_mid_trial():
        nonlocal run
        run = running_trial_with_checkpoint(tmp_path / "first.log", out)
        return run is not None or first.poll() is not None

    wait_for(killed_mid_trial)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert run is not None, f"the first worker ended before a trial had a checkpoint: {(tmp_path / 'first.log').read_text()}"
    killed_at = load_checkpoint(run / "checkpoint.pt")["epoch"]
    assert killed_at < epochs
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()

    study = optuna.load_study(study_name="spec", storage=storage_url(out, storage))
    states = [(t.state.name, t.user_attrs["run"], t.user_attrs.get("grid_point")) for t in study.trials]
    complete = [s for s in states if s[0] == "COMPLETE"]
    assert sorted(point for _, _, point in complete) == [0, 1, 2]  # each grid point trained once
    failed = [s for s in states if s[0] == "FAIL"]
    assert len(failed) == 1 and failed[0][1] == str(run.relative_to(out))  # the killed one, taken up again

    seed = next(t.params["train.seed"] for t in study.trials if t.user_attrs["run"] == failed[0][1])
    reference = train(spec_config(table, seed), out=tmp_path / "reference")
    resumed = load_checkpoint(run / "checkpoint.pt")
    uninterrupted = load_checkpoint(reference / "checkpoint.pt")
    assert resumed["epoch"] == epochs
    for name, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], value), name


def spec_config(table, seed):
    config = {section: dict(values) for section, values in table.items() if section != "sweep"}
    config["train"]["seed"] = seed
    return config


@pytest.mark.trains
def test_two_local_workers_train_each_point_as_one_process_would(tmp_path, monkeypatch):
    """`workers=2` on a CPU forks its workers: each trial's run ends exactly as a run trained alone."""
    import multiprocessing

    table = spec_table(grid={"train.seed": [0, 1]})
    table["train"]["threads"] = 1
    methods = []
    real = multiprocessing.get_context
    monkeypatch.setattr(multiprocessing, "get_context", lambda method=None: methods.append(method) or real(method))
    from pyro_vae import sweep

    out = sweep(table, tmp_path / "out", workers=2)
    assert methods == ["fork"]
    rows = read_csv(out / "trials.csv")
    assert sorted((r["train.seed"], r["state"]) for r in rows) == [("0", "COMPLETE"), ("1", "COMPLETE")]
    for row in rows:
        reference = train(spec_config(table, int(row["train.seed"])), out=tmp_path / f"alone-{row['train.seed']}")
        trained, alone = (load_checkpoint(Path(run) / "checkpoint.pt")["model"] for run in (row["run"], reference))
        assert all(torch.equal(trained[name], alone[name]) for name in alone)


FORK_AFTER_OPENMP = """
import sys, torch
from pyro_vae import sweep
from tests.conftest import tiny_config
torch.set_num_threads(2)
torch.randn(1000, 1000).abs().sum()  # a multi-threaded operation: this process's OpenMP team exists
table = {**tiny_config(train={"epochs": 1, "threads": 1}), "sweep": {"grid": {"train.seed": [0, 1]}, "objective": "elbo",
                                                       "evaluate": {"samples": 20}}}
sweep(table, sys.argv[1], workers=2)
"""


@pytest.mark.trains
def test_forked_workers_evaluate_after_this_process_ran_openmp_threads(tmp_path):
    """A forked worker inherits torch's thread count but not the parent's OpenMP threads: it pins
    its own count (here 1) for all its work, or its first multi-threaded operation after training
    (the evaluation) waits forever. A subprocess with a timeout turns such a hang into a failure."""
    command = [sys.executable, "-c", FORK_AFTER_OPENMP, str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [row["state"] for row in read_csv(tmp_path / "out" / "trials.csv")] == ["COMPLETE", "COMPLETE"]


@pytest.mark.parametrize(("train", "grid", "share", "threads", "fork"), [
    ({}, {"train.seed": [0, 1]}, 1, 1, True),  # the worker's share of the cores
    ({}, {"train.seed": [0, 1]}, 4, 4, False),
    ({"threads": 1}, {"train.seed": [0, 1]}, 8, 1, True),  # the spec's own count, not the share
    ({"threads": 2}, {"train.seed": [0, 1]}, 1, 2, False),
    ({"threads": "auto"}, {"train.seed": [0, 1]}, 1, None, False),
    ({}, {"train.threads": [1, 2]}, 1, None, False),  # varied by the grid: not known before a trial
])
def test_workers_fork_only_where_every_trial_trains_on_one_thread(train, grid, share, threads, fork):
    from pyro_vae.sweeps.workers import can_fork, trial_threads

    table = spec_table(grid=grid)
    table["train"].update(train)
    spec = load_spec(table)
    assert trial_threads(spec, share) == threads
    assert can_fork(spec, share) is fork
