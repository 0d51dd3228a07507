"""The CUDA path: runs where a GPU is present, skips cleanly where not."""

import pytest
import torch

from conftest import tiny_config
from pyro_vae import load_run, train
from pyro_vae.data import load_data
from pyro_vae.evaluation import evaluate_elbo, log_likelihood
from pyro_vae.runs import read_metrics

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.mark.parametrize("on_device", [False, True])
def test_training_on_cuda_improves_and_matches_its_own_evaluation(tmp_path, on_device):
    config = tiny_config(train={"epochs": 4, "batch_size": 32, "lr": 3e-3, "device": "cuda"},
                         data={"on_device": on_device, "binarize": "dynamic"})
    run = train(config, out=tmp_path / "run")
    rows = read_metrics(run / "metrics.csv")
    assert rows[-1]["val_elbo"] > rows[0]["val_elbo"] + 3
    vae = load_run(run, device="cuda")
    assert next(vae.parameters()).is_cuda
    data = load_data("digits", binarize="dynamic")
    val = evaluate_elbo(vae, data.batches("valid", 1000, "cuda"))
    assert abs(val["elbo"] - rows[-1]["val_elbo"]) < 1e-3


def test_bf16_autocast_trains_with_float32_likelihood(tmp_path):
    config = tiny_config(train={"epochs": 3, "batch_size": 32, "lr": 3e-3, "device": "cuda", "precision": "bf16"})
    rows = read_metrics(train(config, out=tmp_path / "run") / "metrics.csv")
    assert rows[-1]["val_elbo"] > rows[0]["val_elbo"] + 3


def test_log_likelihood_on_cuda_agrees_with_cpu(tmp_path):
    run = train(tiny_config(train={"device": "cuda"}), out=tmp_path / "run")
    x = load_data("digits", binarize="static").test.x[:50]
    gpu = log_likelihood(load_run(run, device="cuda"), x, num_samples=500)
    cpu = log_likelihood(load_run(run, device="cpu"), x, num_samples=500)
    # Different RNG streams on the two devices: agreement to Monte Carlo error.
    assert abs(gpu.mean() - cpu.mean()) < 0.2
