"""The CUDA path: runs where a GPU is present, skips cleanly where not."""

import pytest
import torch
from conftest import tiny_config
from estimator_cases import capturable_cases, spec_id

from pyro_vae import load_run, train
from pyro_vae.data import load_data
from pyro_vae.evaluation import evaluate_elbo, log_likelihood
from pyro_vae.runs import read_metrics

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.trains,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.mark.parametrize("on_device", [False, True])
def test_training_on_cuda_improves_and_matches_its_own_evaluation(tmp_path, on_device):
    config = tiny_config(train={"epochs": 4, "batch_size": 32, "lr": 3e-3, "device": "cuda"},
                         data={"on_device": on_device, "binarize": "dynamic"})
    run = train(config, out=tmp_path / "run")
    rows = read_metrics(run / "metrics.csv")
    # Measured on an H100 (torch 2.11): +2.3 to +2.8 nats over these epochs; margin below.
    assert rows[-1]["val_elbo"] > rows[0]["val_elbo"] + 1.5
    vae = load_run(run, device="cuda")
    assert next(vae.parameters()).is_cuda
    data = load_data("digits", binarize="dynamic")
    val = evaluate_elbo(vae, data.batches("valid", 1000, "cuda"))
    assert abs(val["elbo"] - rows[-1]["val_elbo"]) < 1e-3


def test_bf16_autocast_trains_with_float32_likelihood(tmp_path):
    config = tiny_config(train={"epochs": 3, "batch_size": 32, "lr": 3e-3, "device": "cuda", "precision": "bf16"})
    rows = read_metrics(train(config, out=tmp_path / "run") / "metrics.csv")
    assert rows[-1]["val_elbo"] > rows[0]["val_elbo"] + 1.5  # measured +2.3 to +2.8 (see above)


def test_log_likelihood_on_cuda_agrees_with_cpu(tmp_path):
    run = train(tiny_config(train={"device": "cuda"}), out=tmp_path / "run")
    x = load_data("digits", binarize="static").test.x[:50]
    gpu = log_likelihood(load_run(run, device="cuda"), x, num_samples=500)
    cpu = log_likelihood(load_run(run, device="cpu"), x, num_samples=500)
    # Different RNG streams on the two devices: agreement to Monte Carlo error.
    assert abs(gpu.mean() - cpu.mean()) < 0.2


# ---- the captured step (train.cuda_graph): the same arithmetic as the eager step ----

SHAPE = (1, 8, 8)


def _steps(estimator_spec, particles, clip=0.0):
    import copy

    from pyro_vae import VAE
    from pyro_vae.losses import NegativeELBO
    from pyro_vae.objectives import ESTIMATORS
    from pyro_vae.optimizers import OPTIMIZERS
    from pyro_vae.steps import CapturedStep, Step

    torch.manual_seed(0)
    vae = VAE(SHAPE, latent_dim=4, encoder={"name": "mlp", "hidden": [32]},
              decoder={"name": "mlp", "hidden": [32]}).cuda()
    made = []
    for step_class, model in ((Step, vae), (CapturedStep, copy.deepcopy(vae))):
        estimator = ESTIMATORS.build(estimator_spec, num_particles=particles, data_shape=SHAPE).cuda()
        loss = NegativeELBO(model, estimator)
        parameters = list(loss.parameters())
        optimizer = OPTIMIZERS.get("adam")(parameters, 1e-2)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=50)
        made.append((model, step_class(loss, optimizer, schedule, parameters, "cuda", clip_grad_norm=clip)))
    return made


@pytest.mark.parametrize("spec, particles", list(capturable_cases(4, SHAPE)), ids=spec_id)
def test_captured_and_eager_steps_agree_from_the_same_state_and_noise(spec, particles):
    """Every estimator that declares ``capturable = True`` (read from the registry)."""
    from pyro_vae.objectives import ESTIMATORS

    (eager_vae, eager), (graph_vae, captured) = _steps(spec, particles, clip=10.0)
    data = torch.bernoulli(torch.full((10, 16, *SHAPE), 0.3, device="cuda"))
    weighted = ESTIMATORS.get(spec["name"]).supports_kl_weight
    weights = [0.0, 0.2, 0.5, 1.0, 1.0, 0.7, 1.0, 1.0, 1.0, 1.0] if weighted else [1.0] * 10
    for i, (x, weight) in enumerate(zip(data, weights)):  # 3 warm-up steps, the capture, then replays
        torch.manual_seed(100 + i)
        eager(x, weight)
        torch.manual_seed(100 + i)
        captured(x, weight)
        torch.testing.assert_close(captured.last_loss, eager.last_loss, rtol=1e-4, atol=1e-4)
    assert captured.graph is not None
    for a, b in zip(eager_vae.parameters(), graph_vae.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    short = data[0, :5]  # a short last batch runs eagerly, the same objective
    torch.manual_seed(7)
    eager(short, 1.0)
    torch.manual_seed(7)
    captured(short, 1.0)
    torch.testing.assert_close(captured.last_loss, eager.last_loss, rtol=1e-4, atol=1e-4)


def test_a_nan_in_the_data_is_caught_under_capture():
    (_, _), (vae, captured) = _steps("trace", 1)
    data = torch.bernoulli(torch.full((6, 16, 1, 8, 8), 0.3, device="cuda"))
    for x in data[:5]:
        captured(x, 1.0)
    assert captured.graph is not None
    before = [p.detach().clone() for p in vae.parameters()]
    poisoned = data[5].clone()
    poisoned[2, 0, 0, 0] = float("nan")
    captured(poisoned, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, vae.parameters()))
    assert captured.faults()[:2] == (1, 5)


def test_training_under_a_cuda_graph_resumes_bit_exactly(tmp_path):
    config = tiny_config(train={"epochs": 2, "batch_size": 32, "device": "cuda", "cuda_graph": True})
    straight = train(config, out=tmp_path / "straight")
    first = tiny_config(train={"epochs": 1, "batch_size": 32, "device": "cuda", "cuda_graph": True})
    resumed = train(first, out=tmp_path / "resumed")
    train(None, resume=resumed, overrides=["train.epochs=2"])
    a, b = load_run(straight, device="cuda"), load_run(resumed, device="cuda")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert read_metrics(straight / "metrics.csv")[-1]["val_elbo"] == read_metrics(resumed / "metrics.csv")[-1]["val_elbo"]
