"""The library behind `pyro-vae evaluate` and `pyro-vae plot`: `report.evaluate_run` and
`runs.plot_run`, and a run trained on arrays from Python: its error names the calls
that take the arrays again, and those calls work."""

import json

import numpy as np
import pytest
import torch
from conftest import one_line_error, tiny_config

from pyro_vae import load_run, train
from pyro_vae.build import build_data
from pyro_vae.cli import main
from pyro_vae.config import load_config
from pyro_vae.evaluation import EVALUATION_SEED, evaluate
from pyro_vae.registry import UserError
from pyro_vae.report import evaluate_run
from pyro_vae.runs import plot_run

pytestmark = pytest.mark.trains  # every test evaluates a run it trains


def test_evaluate_run_is_the_commands_record(run, tmp_path):
    """The record the command writes is `evaluate_run`'s, number for number; `out` puts it elsewhere."""
    assert main(["evaluate", str(run), "--samples", "3", "--limit", "40"]) == 0
    written = json.loads((run / "evaluation.json").read_text())
    result = evaluate_run(run, num_samples=3, limit=40, out=tmp_path / "elsewhere.json")
    assert json.loads((tmp_path / "elsewhere.json").read_text()) == result
    for name in ("log_likelihood", "elbo", "kl", "active_units", "num_examples", "subset_seed", "split_size"):
        assert result[name] == written[name], name
    assert (result["num_examples"], result["seed"], result["num_samples"]) == (40, EVALUATION_SEED, 3)


@pytest.fixture(scope="module")
def arrays_run(tmp_path_factory):
    """A run trained on arrays given in Python (data.name = "arrays"), and the arrays."""
    images = np.random.RandomState(0).randint(0, 256, (80, 8, 8)).astype(np.uint8)
    config = tiny_config(model={"likelihood": "continuous_bernoulli"}, train={"epochs": 1})
    return train(config, out=tmp_path_factory.mktemp("arrays") / "run", data=images), images


def test_a_run_on_arrays_says_how_to_evaluate_and_plot_it(arrays_run, capsys):
    run, _ = arrays_run
    for command in (["evaluate", str(run), "--samples", "2"], ["plot", str(run)]):
        assert main(command) == 2
        message = one_line_error(capsys)
        assert "arrays given in Python" in message
        assert "evaluate_run(run, data=...)" in message and "plot_run(run, data=...)" in message
        assert "load_run(run) and evaluation.evaluate(vae, x)" in message
    with pytest.raises(UserError, match=r"evaluate_run\(run, data=\.\.\.\)"):
        evaluate_run(run, num_samples=2)
    assert not (run / "evaluation.json").exists()


def test_a_run_on_arrays_is_evaluated_and_plotted_given_them_again(arrays_run):
    run, images = arrays_run
    result = evaluate_run(run, num_samples=4, data=images)
    assert json.loads((run / "evaluation.json").read_text())["log_likelihood"] == result["log_likelihood"]
    # the test split is the run's own (the seeded cut of the same arrays): load_run + evaluate agree
    test = build_data(load_config(run / "config.toml"), images).test
    assert result["num_examples"] == len(test) == 8
    direct = evaluate(load_run(run), test.x, num_samples=4, seed=EVALUATION_SEED)
    assert result["log_likelihood"] == pytest.approx(direct["log_likelihood"], abs=1e-6)
    assert np.isfinite(result["log_likelihood"]) and result["bits_per_dim"] is None
    written = plot_run(run, data=torch.as_tensor(images))
    assert written and all(path.is_file() and path.parent == run for path in written)
