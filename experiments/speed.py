"""How much does the Pyro program cost? The library's training step against a hand-written one.

The same network (784-400-20 MLP, ReLU, Bernoulli likelihood, Adam 1e-3), the same
data (binarized MNIST from ../shared/data/binarized_mnist.npz, or random binary
images if absent) and the same reparameterized sample. The two steps are timed
interleaved, in one process, after a warm-up; the figure of merit is the ratio
library / hand-written per batch size. Also the throughput of
``evaluation.log_likelihood`` against a hand-written importance sampler.

    python experiments/speed.py            # full: writes experiments/results/speed/
    python experiments/speed.py --quick    # a few seconds
"""

import argparse
import copy
import json
import math
import platform
import statistics
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

from pyro_vae.config import load_config
from pyro_vae.data import Data, Split, load_data
from pyro_vae.evaluation import log_likelihood
from pyro_vae.guides import gaussian_parameters
from pyro_vae.training import Trainer

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT.parent / "shared" / "data" / "binarized_mnist.npz"
OUT = ROOT / "experiments" / "results" / "speed"


def mnist_like(n=10000):
    if MNIST.is_file():
        data = load_data("binarized-mnist", path=str(MNIST))
        return data.train.x[:n].flatten(1)
    return torch.bernoulli(torch.full((n, 784), 0.13))


def library_trainer(x, estimator, batch_size):
    """A Trainer exactly as `pyro-vae train` builds it, for the benchmark's network."""
    config = load_config(None, [
        f"objective.estimator={estimator}",
        "model.latent_dim=20",
        "model.encoder={type='mlp', hidden=[400], activation='relu'}",
        "model.decoder={type='mlp', hidden=[400], activation='relu'}",
        f"train.batch_size={batch_size}", "train.progress=false", "train.device='cpu'",
    ])
    split = Split(x.view(-1, 1, 28, 28))
    return Trainer(config, Data(split, split, split), Path("runs/speed"), torch.device("cpu"))


class HandWritten:
    """The textbook PyTorch VAE step: BCE + analytic KL, one reparameterized sample.

    ``fused`` gives it the fused Adam the library uses, which isolates the library's own
    per-step overhead from the optimizer's speed-up."""

    def __init__(self, vae, fused=False):
        self.encoder, self.decoder = copy.deepcopy(vae.encoder), copy.deepcopy(vae.decoder)
        params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        self.optimizer = torch.optim.Adam(params, lr=1e-3, fused=fused or None)

    def step(self, x):
        loc, scale = gaussian_parameters(self.encoder(x))
        z = loc + scale * torch.randn_like(loc)
        logits = self.decoder(z)[:, 0]
        reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = -0.5 * (1 + 2 * scale.log() - loc**2 - scale**2).sum()
        loss = (reconstruction + kl) / len(x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    @torch.no_grad()
    def log_likelihood(self, x, num_samples):
        """log p(x) ~ logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K."""
        loc, scale = gaussian_parameters(self.encoder(x))
        eps = torch.randn(num_samples, *loc.shape)
        z = loc + scale * eps
        logits = self.decoder(z.flatten(0, 1))[:, 0].view(num_samples, len(x), *x.shape[1:])
        log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").flatten(2).sum(-1)
        log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_qz = (-0.5 * eps**2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        return torch.logsumexp(log_px + log_pz - log_qz, 0) - math.log(num_samples)


def time_steps(step, batches):
    start = time.perf_counter()
    for x in batches:
        step(x)
    return (time.perf_counter() - start) / len(batches) * 1000


def compare_training(x, estimator, batch_size, rounds, steps):
    trainer = library_trainer(x, estimator, batch_size)
    with pyro.validation_enabled(trainer.config["train"]["validate"]):  # as Trainer.fit runs its steps
        return _compare_training(trainer, estimator, batch_size, rounds, steps, x)


def _compare_training(trainer, estimator, batch_size, rounds, steps, x):
    hand, hand_fused = HandWritten(trainer.vae), HandWritten(trainer.vae, fused=True)
    images = x.view(-1, 1, 28, 28)
    batches = [images[i : i + batch_size] for i in range(0, steps * batch_size, batch_size)]
    steps = {"library": trainer.train_step, "handwritten": hand.step, "handwritten_fused": hand_fused.step}
    times = {name: [] for name in steps}
    for step in steps.values():  # warm-up
        time_steps(step, batches[:10])
    for _ in range(rounds):  # interleaved, so drifts in machine load hit all alike
        for name, step in steps.items():
            times[name].append(time_steps(step, batches))
    ms = {name: statistics.median(t) for name, t in times.items()}
    return {"estimator": estimator, "batch_size": batch_size, "library_ms": ms["library"],
            "handwritten_ms": ms["handwritten"], "ratio": ms["library"] / ms["handwritten"],
            "handwritten_fused_ms": ms["handwritten_fused"], "ratio_to_fused": ms["library"] / ms["handwritten_fused"]}


def compare_log_likelihood(x, num_samples, rounds):
    trainer = library_trainer(x, "trace", 128)
    hand = HandWritten(trainer.vae)
    images = x[:100].view(-1, 1, 28, 28)
    library, handwritten = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        log_likelihood(trainer.vae, [images], num_samples=num_samples, progress=False)
        library.append(time.perf_counter() - start)
        start = time.perf_counter()
        hand.log_likelihood(images, num_samples)
        handwritten.append(time.perf_counter() - start)
    samples = len(images) * num_samples
    lib, ref = samples / statistics.median(library), samples / statistics.median(handwritten)
    return {"num_samples": num_samples, "library_samples_per_s": lib, "handwritten_samples_per_s": ref, "ratio": lib / ref}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few rounds and steps (seconds)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rounds, steps = (3, 20) if args.quick else (7, 60)
    x = mnist_like(512 * steps)
    rows = []
    for estimator in ("trace", "meanfield"):
        for batch_size in (32, 128, 512):
            row = compare_training(x, estimator, batch_size, rounds, steps)
            rows.append(row)
            print(f"{estimator:>9} batch {batch_size:>3}: library {row['library_ms']:.2f} ms, "
                  f"hand-written {row['handwritten_ms']:.2f} ms (ratio {row['ratio']:.3f}), "
                  f"hand-written with fused Adam {row['handwritten_fused_ms']:.2f} ms "
                  f"(ratio {row['ratio_to_fused']:.3f})", flush=True)
    ll = compare_log_likelihood(x, 100 if args.quick else 1000, rounds)
    print(f"log_likelihood: library {ll['library_samples_per_s']:.0f} samples/s, hand-written "
          f"{ll['handwritten_samples_per_s']:.0f} samples/s, ratio {ll['ratio']:.3f}")
    if not args.quick:
        OUT.mkdir(parents=True, exist_ok=True)
        machine = {"machine": platform.machine(), "processor": platform.processor(), "threads": args.threads,
                   "torch": torch.__version__, "data": "binarized MNIST" if MNIST.is_file() else "random binary"}
        (OUT / "speed.json").write_text(json.dumps({"training": rows, "log_likelihood": ll, "machine": machine}, indent=2))
        print(f"wrote {OUT / 'speed.json'}")


if __name__ == "__main__":
    main()
