"""Rough edges of the command line: bad --n, an unwritable run directory under evaluate, a
truncated checkpoint, and a --help that imports nothing heavy."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import one_line_error

from pyro_vae.cli import main


@pytest.mark.parametrize("n", ["0", "-3"])
@pytest.mark.trains
def test_sample_n_below_one_is_a_one_line_error(run, capsys, n):
    assert main(["sample", str(run), "--n", n]) == 2
    assert f"--n must be an integer >= 1, got {n}" in one_line_error(capsys)
    assert main(["sample", str(run), "--n", "3", "--out", str(run / "three.png")]) == 0


@pytest.mark.trains
def test_evaluate_fails_before_computing_when_it_cannot_write(run, capsys, monkeypatch):
    import pyro_vae.evaluation

    calls = []
    monkeypatch.setattr(pyro_vae.evaluation, "evaluate", lambda *a, **k: calls.append(1))
    (run / "evaluation.json").mkdir()  # in the way of the result file
    assert main(["evaluate", str(run), "--samples", "2"]) == 2
    assert "cannot write" in one_line_error(capsys) and calls == []


def writes_into_read_only_directories(tmp_path):
    """Whether this process ignores directory permissions (root with CAP_DAC_OVERRIDE)."""
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o555)
    try:
        (probe / "file").touch()
        return True
    except PermissionError:
        return False
    finally:
        probe.chmod(0o755)


@pytest.mark.trains
def test_evaluate_fails_before_computing_in_a_read_only_run(run, capsys, monkeypatch, tmp_path):
    import pyro_vae.evaluation

    if writes_into_read_only_directories(tmp_path):
        pytest.skip("this process writes into read-only directories (root)")
    calls = []
    monkeypatch.setattr(pyro_vae.evaluation, "evaluate", lambda *a, **k: calls.append(1))
    run.chmod(0o555)
    try:
        assert main(["evaluate", str(run), "--samples", "2"]) == 2
    finally:
        run.chmod(0o755)
    assert "cannot write" in one_line_error(capsys) and calls == []


@pytest.mark.trains
def test_plot_into_an_unwritable_out_is_a_one_line_error(run, capsys):
    (run / "file").write_text("")
    assert main(["plot", str(run), "--out", str(run / "file" / "figures")]) == 2
    assert "cannot create --out" in one_line_error(capsys)


@pytest.mark.trains
def test_evaluate_prints_the_result_before_writing_it(run, capsys, monkeypatch):
    import pyro_vae.report

    def fail(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pyro_vae.report, "write_text_atomically", fail)
    assert main(["evaluate", str(run), "--samples", "2", "--limit", "20"]) == 2
    out, err = capsys.readouterr()
    assert "log-likelihood log p(x), nats" in out and "ELBO, nats" in out
    assert "No space left on device" in err and "the result is printed above" in err
    assert not (run / "evaluation.json").exists()
    monkeypatch.undo()
    assert main(["evaluate", str(run), "--samples", "2", "--limit", "20"]) == 0
    assert json.loads((run / "evaluation.json").read_text())["num_examples"] == 20


@pytest.mark.trains
def test_a_truncated_checkpoint_says_so_in_full_and_points_at_best_pt(run, capsys):
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    assert main(["sample", str(run), "--n", "4"]) == 2
    message = one_line_error(capsys)
    assert "truncated or corrupt" in message and f"{run / 'best.pt'}" in message and "--checkpoint best.pt" in message
    assert "internal miniz error" not in message  # torch's first sentence only, never cut in the middle
    assert main(["sample", str(run), "--n", "4", "--checkpoint", "best.pt"]) == 0
    (run / "best.pt").unlink()
    assert main(["evaluate", str(run), "--samples", "2"]) == 2
    assert "no other checkpoint (best.pt)" in one_line_error(capsys)


def test_help_imports_nothing_heavy():
    script = (
        "import sys, contextlib, io\n"
        "from pyro_vae.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "assert 'train' in out.getvalue()\n"
        "print(sorted(m for m in ('torch', 'pyro', 'matplotlib', 'numpy', 'pyro_vae.training') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.trains
def test_evaluate_limit_is_a_seeded_random_subset_recorded_in_the_json(run):
    from pyro_vae.evaluation import EVALUATION_SEED, evaluate
    from pyro_vae.runs import load_run_split

    assert main(["evaluate", str(run), "--samples", "3", "--limit", "30", "--subset-seed", "3"]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    vae, split = load_run_split(run, "test", "checkpoint.pt")
    assert (result["num_examples"], result["split_size"], result["subset_seed"]) == (30, len(split), 3)
    chosen = evaluate(vae, split.random_subset(30, seed=3).x, num_samples=3, seed=EVALUATION_SEED)
    first = evaluate(vae, split.x[:30], num_samples=3, seed=EVALUATION_SEED)
    assert result["log_likelihood"] == pytest.approx(chosen["log_likelihood"], abs=1e-5)
    assert abs(result["log_likelihood"] - first["log_likelihood"]) > 1e-3  # not the first 30

    assert main(["evaluate", str(run), "--samples", "3"]) == 0  # the whole split: no subset seed
    result = json.loads((run / "evaluation.json").read_text())
    assert (result["num_examples"], result["subset_seed"]) == (len(split), None)


TINY = ["--set", "data.binarize=static", "--set", "model.latent_dim=4", "--set", "model.encoder.hidden=[32]",
        "--set", "model.decoder.hidden=[32]", "--set", "train.batch_size=128", "--set", "train.progress=false",
        "--set", "train.device=\"cpu\"", "--set", "train.epochs=1"]


@pytest.mark.parametrize("out", ["/proc/pyrovae_run", "/sys/pyrovae_run"])
def test_train_into_a_pseudo_file_system_is_a_one_line_error(capsys, out):
    """/proc and /sys refuse new folders even to root, whom os.access lets through."""
    if not sys.platform.startswith("linux") or not Path(out).parent.is_dir():
        pytest.skip("Linux's /proc and /sys")
    assert main(["train", "--out", out, *TINY]) == 2
    assert f"cannot write to {out}" in one_line_error(capsys)
    assert not Path(out).exists()


def test_a_directory_as_the_config_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert main(["train", str(tmp_path / "runs"), "--out", str(tmp_path / "runs" / "x")]) == 2
    assert "runs is a directory, not a config file" in one_line_error(capsys)
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_model_too_large_for_memory_is_refused_before_it_is_built(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, "--set", "model.latent_dim=1000000000"]) == 2
    error = one_line_error(capsys)
    # 64 -> 32 -> (2 x 10^9) and 10^9 -> 32 -> 64, with biases; four times 4 bytes each
    assert "98,000,004,224 parameters" in error and "1,460.3 GiB" in error
    assert "model.latent_dim = 1000000000" in error
    assert not out.exists()


def test_a_normal_model_passes_the_memory_check(tmp_path):
    from pyro_vae.build import check_memory, device_memory
    from pyro_vae.config import load_config
    from pyro_vae.data import load_data

    assert device_memory(torch.device("cpu")) > 2**28
    data = load_data(name="digits", binarize="static")
    check_memory(load_config(), data, "cpu")  # 546,000 parameters of the default model: nothing refused


@pytest.mark.parametrize("existing", [False, True])
@pytest.mark.trains
def test_a_run_that_stops_before_its_first_checkpoint_can_be_run_again(tmp_path, capsys, existing):
    out = tmp_path / "run"
    if existing:
        out.mkdir()
    diverging = ["train", "--out", str(out), *TINY, "--set", "train.lr=1e30", "--set", "train.optimizer=\"sgd\""]
    for _ in range(2):  # the same command again: not "already holds files"
        assert main(diverging) == 2
        assert "non-finite" in one_line_error(capsys)
        assert out.exists() == existing and (not existing or list(out.iterdir()) == [])
    assert main(["train", "--out", str(out), *TINY]) == 0
    assert (out / "checkpoint.pt").is_file()
