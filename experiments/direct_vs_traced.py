"""Does the direct loss still pay on a CPU? One training step through it and through Pyro's traced
`Trace_ELBO` on the same VAE (784-400-20 ReLU MLP, Bernoulli, batch 128, one thread),
interleaved in one process (`speed.interleaved`), median of 5 rounds of 50 steps after 20 of each.

    python experiments/direct_vs_traced.py      # prints the two times; writes nothing
"""

import pyro
import torch
from pyro.infer import Trace_ELBO
from speed import interleaved, medians

from pyro_vae import VAE
from pyro_vae.objectives import ESTIMATORS


def main():
    torch.set_num_threads(1)
    net = {"name": "mlp", "hidden": [400], "activation": "relu"}
    vae = VAE((784,), latent_dim=20, encoder=net, decoder=net)
    x = torch.bernoulli(torch.full((128, 784), 0.2), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    estimator, elbo = ESTIMATORS.build("trace"), Trace_ELBO(max_plate_nesting=1)

    def step(loss):
        def one(x):
            optimizer.zero_grad()
            loss(vae.model, vae.guide, x).backward()
            optimizer.step()
        return one

    with pyro.validation_enabled(False):
        ms = medians(interleaved({"direct": step(estimator.loss), "traced": step(elbo.differentiable_loss)},
                                 [x] * 50, rounds=5, device="cpu", warmup=20))
    print(f"direct {ms['direct']:.2f} ms/step, traced {ms['traced']:.2f} ms/step, traced / direct "
          f"{ms['traced'] / ms['direct']:.2f}")


if __name__ == "__main__":
    main()
