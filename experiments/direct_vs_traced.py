"""Does the direct loss still pay on a CPU? One training step through it and through Pyro's traced
``Trace_ELBO`` on the same VAE (784-400-20 ReLU MLP, Bernoulli, batch 128, one thread),
interleaved in one process, median of 5 rounds of 50 steps.

    python experiments/direct_vs_traced.py
"""

import statistics
import time

import pyro
import torch
from pyro.infer import Trace_ELBO

from pyro_vae import VAE
from pyro_vae.objectives import ESTIMATORS


def main():
    torch.set_num_threads(1)
    net = {"name": "mlp", "hidden": [400], "activation": "relu"}
    vae = VAE((784,), latent_dim=20, encoder=net, decoder=net)
    x = torch.bernoulli(torch.full((128, 784), 0.2), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    estimator, elbo = ESTIMATORS.build("trace"), Trace_ELBO(max_plate_nesting=1)
    losses = {
        "direct": lambda: estimator.loss(vae.model, vae.guide, x),
        "traced": lambda: elbo.differentiable_loss(vae.model, vae.guide, x),
    }

    def step(loss):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()

    times = {name: [] for name in losses}
    with pyro.validation_enabled(False):
        for loss in losses.values():
            for _ in range(20):
                step(loss)
        for _ in range(5):
            for name, loss in losses.items():
                start = time.perf_counter()
                for _ in range(50):
                    step(loss)
                times[name].append((time.perf_counter() - start) / 50 * 1000)
    direct, traced = (statistics.median(times[name]) for name in ("direct", "traced"))
    print(f"direct {direct:.2f} ms/step, traced {traced:.2f} ms/step, traced / direct {traced / direct:.2f}")


if __name__ == "__main__":
    main()
