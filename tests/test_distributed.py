"""Data-parallel training: 2 CPU processes with gloo match one process with the same global batch."""

import contextlib
import copy
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pyro
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_config

from pyro_vae import train
from pyro_vae.config import check_config, save_config
from pyro_vae.data import load_data
from pyro_vae.runs import read_metrics
from pyro_vae.training import Trainer

pytestmark = pytest.mark.trains  # every test trains (one in two gloo processes)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    config = tiny_config(train={"epochs": 3, "batch_size": 64, "lr": 3e-3})
    save_config(config, tmp_path / "config.toml")
    single = read_metrics(train(config, out=tmp_path / "single") / "metrics.csv")

    done = subprocess.run(
        # torchrun of this interpreter (its script need not be on PATH)
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "pyro_vae", "train",
         str(tmp_path / "config.toml"), "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ddp = read_metrics(tmp_path / "ddp" / "metrics.csv")
    # Same data order and global batch; only the Monte Carlo noise differs between the two.
    assert [r["step"] for r in ddp] == [r["step"] for r in single] == [21, 42, 63]
    assert ddp[-1]["val_elbo"] > ddp[0]["val_elbo"] + 3  # it trains
    for a, b in zip(single, ddp):
        assert abs(a["val_elbo"] - b["val_elbo"]) < 0.5
        assert abs(a["train_loss"] - b["train_loss"]) < 0.5


# ---- one step, exactly: the averaged gradient of two ranks is the gradient of one process ----

BATCH, WORLD_SIZE = 64, 2
STEP_CONFIGS = {
    "trace, sum": tiny_config(train={"batch_size": BATCH}),
    "meanfield, mean, kl_weight 0.5": tiny_config(
        train={"batch_size": BATCH}, objective={"estimator": "meanfield", "reduction": "mean", "kl_weight": 0.5}
    ),
}


@contextlib.contextmanager
def fixed_normal_noise(eps):
    """Every standard-normal draw of a reparameterized Normal (the guide's z) is ``eps``: the
    same noise for each data point whichever process scores it."""

    def standard_normal(shape, dtype, device):
        assert tuple(shape) == tuple(eps.shape), (tuple(shape), tuple(eps.shape))
        return eps.to(dtype=dtype, device=device)

    with mock.patch("torch.distributions.normal._standard_normal", standard_normal):
        yield


def one_step(config, rank, world_size, out):
    """The trainer's step on this rank's share of one fixed batch with fixed noise: the loss it
    records and the gradients the optimizer is handed (after DistributedDataParallel's reduction)."""
    data = load_data("digits", binarize="static")
    pyro.set_rng_seed(0)  # the same initial parameters in every process (DDP also broadcasts rank 0's)
    trainer = Trainer(check_config(copy.deepcopy(config)), data, out, torch.device("cpu"), rank, world_size)
    x = data.train.x[:BATCH]
    eps = torch.randn(BATCH, config["model"]["latent_dim"], generator=torch.Generator().manual_seed(1))
    share = BATCH // world_size
    rows = slice(rank * share, (rank + 1) * share)
    gradients = {}

    def record(optimizer, args, kwargs):
        gradients.update({name: p.grad.detach().clone() for name, p in trainer.vae.named_parameters()})

    trainer.optimizer.register_step_pre_hook(record)
    with fixed_normal_noise(eps[rows]):
        trainer.train_step(x[rows])
    assert gradients, "the optimizer took no step"
    return trainer.train_step_fn.last_loss.item(), gradients


def data_parallel_worker(rank, world_size, init_file, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        results = {name: one_step(config, rank, world_size, Path(out)) for name, config in STEP_CONFIGS.items()}
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_average_to_the_single_process_gradient(tmp_path):
    """Each rank's loss is the mean over its half of the batch, and DDP averages the ranks'
    gradients, so the step's gradient is the gradient of the mean over the whole batch: the same,
    to float32 rounding, as one process's. A sum over the ranks instead of a mean, or a per-rank
    loss normalized by the global batch (or not at all), is off by a factor of 2."""
    mp.spawn(data_parallel_worker, args=(WORLD_SIZE, str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    for name, config in STEP_CONFIGS.items():
        single_loss, single = one_step(config, 0, 1, tmp_path)
        losses = [ranks[rank][name][0] for rank in range(WORLD_SIZE)]
        assert losses[0] != losses[1]  # each rank scored its own half
        assert sum(losses) / WORLD_SIZE == pytest.approx(single_loss, rel=1e-6), name
        for parameter, expected in single.items():
            assert torch.equal(ranks[0][name][1][parameter], ranks[1][name][1][parameter])  # in sync
            error = (ranks[0][name][1][parameter] - expected).abs().max().item()
            assert error <= 1e-5 * expected.abs().max().item(), (name, parameter, error)
