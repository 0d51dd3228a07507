"""The GPU check's dry run: every part's code path at tiny sizes on the CPU, as CI runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.trains  # in its subprocess: each published configuration, two epochs
def test_the_gpu_checks_dry_run_runs_every_part_and_writes_its_report(tmp_path):
    out = tmp_path / "check"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "gpu_check.py"), str(out), "--device", "cpu",
                           "--dry-run", "--mnist", "none"], capture_output=True, text=True, env=environment, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "check.json").read_text())
    log = (out / "check.log").read_text()
    assert str(out / "check.json") in done.stdout  # the folder is printed
    assert report["dry_run"] and report["environment"]["torch"] and report["environment"]["pyro"]
    parts = report["parts"]
    assert list(parts) == ["tests", "speed", "configs"]
    assert all(part["status"] == "ok" and 0 < part["wall_s"] <= part["budget_s"] for part in parts.values()), parts
    # 1: test_cuda.py ran, and without a GPU skipped every test
    tests = parts["tests"]["result"]
    assert tests["returncode"] == 0 and tests["counts"].get("skipped", 0) >= 15 and not tests["failed"]
    # 2: every comparison, with its ratios
    speed = parts["speed"]["result"]
    assert [row["batch_size"] for row in speed["training"]] == [16, 32]
    assert all(row["ratio"] == row["library_ms"] / row["handwritten_ms"] and "pyro_svi_ms" in row for row in speed["training"])
    assert {row["estimator"] for row in speed["estimators"]} == {"meanfield", "stl", "score", "iwae", "renyi", "dreg",
                                                                 "tail_adaptive"}
    assert speed["log_likelihood"]["ratio"] > 0
    epoch = speed["epoch"]
    assert epoch["library_epoch_s_cuda_graph_auto"] > 0 and epoch["library_epoch_s_cuda_graph_false"] > 0
    assert not speed["skipped"] and not speed["errors"]
    # 3: each published configuration trained two epochs on random stand-in data, and said so
    configs = parts["configs"]["result"]
    assert configs["data"].startswith("random binary images (200/100/100) standing in for binarized MNIST")
    runs = {run["config"].rsplit("/", 1)[1]: run for run in configs["runs"]}
    assert list(runs) == ["vae.toml", "vamp.toml", "iwae.toml"]
    assert [run["published_epochs"] for run in runs.values()] == [2000, 2000, 3280]
    for run in runs.values():
        assert run["epochs_done"] == 2 and run["steps_done"] == 2 * run["steps_per_epoch"]
        assert run["projected_minutes_to_published_epochs"] == run["epoch_s"] * run["published_epochs"] / 60
        assert run["captured"] is False and "the training device is cpu" in run["capture_obstacle"]
    assert "== configs: ok" in log and "SKIPPED" in log  # the log holds the pytest output and each part


def test_the_gpu_check_skips_what_its_budget_cannot_hold(tmp_path):
    out = tmp_path / "check"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "gpu_check.py"), str(out), "--device", "cpu",
                           "--dry-run", "--budget", "5"], capture_output=True, text=True, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    parts = json.loads((out / "check.json").read_text())["parts"]
    assert [part["status"] for part in parts.values()] == ["skipped"] * 3
    assert all("under 10 s" in part["reason"] for part in parts.values())
