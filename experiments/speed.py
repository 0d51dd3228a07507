"""How much does the Pyro program cost? The library's training step against a hand-written one.

The same network, data and sample, timed interleaved in one process; also every estimator,
`evaluation.log_likelihood` and one whole epoch of `pyro_vae.train`. experiments/speed.md says
what each variant is; `experiments/gpu_check.py` runs these functions at sizes that fit its budget.

    python experiments/speed.py                    # CPU: writes experiments/results/speed/speed.json
    python experiments/speed.py --device cuda      # GPU: writes experiments/results/speed/speed_cuda.json
    python experiments/speed.py --quick            # a few seconds, writes nothing
    python experiments/speed.py --total-correlation  # only: beta-TCVAE and FactorVAE steps against the
                                                     # plain VAE step at batch 128 -> total_correlation.json
    python experiments/speed.py --threads-default    # only: train.threads = 1, 2 and "auto", with and without
                                                     # one competing busy process -> threads_default.json
                                                     # (run it without OMP_NUM_THREADS: it is torch's default)
"""

import copy
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyro
import torch
import torch.nn.functional as F
from common import ROOT, arguments, places
from pyro.infer import SVI, Trace_ELBO

from pyro_vae.atomic import write_text_atomically
from pyro_vae.build import build_data
from pyro_vae.config import load_config
from pyro_vae.data import Data, Split, load_data
from pyro_vae.devices import busy_cores, resolve_threads
from pyro_vae.evaluation import log_likelihood
from pyro_vae.guides import gaussian_parameters
from pyro_vae.training import Trainer, train

# binarized MNIST: beside the checkout (../shared), inside it (shared/), or carried to a GPU machine (.gpu/)
MNIST_PLACES = [ROOT.parent / "shared" / "data" / "binarized_mnist.npz", ROOT / "shared" / "data" / "binarized_mnist.npz",
                ROOT / ".gpu" / "binarized_mnist.npz"]
MNIST = next((path for path in MNIST_PLACES if path.is_file()), MNIST_PLACES[0])
DATA = "binarized MNIST" if MNIST.is_file() else "random binary"  # what mnist_like gives
NETWORK = [
    "model.latent_dim=20",
    "model.encoder={name='mlp', hidden=[400], activation='relu'}",
    "model.decoder={name='mlp', hidden=[400], activation='relu'}",
]


def mnist_like(n=10000, path=MNIST):
    """n training images of binarized MNIST as (n, 784) floats, or random binary ones if `path` is no file."""
    if path is not None and Path(path).is_file():
        data = load_data("binarized-mnist", path=str(path))
        return data.train.x[:n].flatten(1)
    return torch.bernoulli(torch.full((n, 784), 0.13))


def library_trainer(x, estimator, batch_size, device="cpu", cuda_graph=False, particles=1):
    """A Trainer exactly as `pyro-vae train` builds it, for the benchmark's network."""
    config = load_config(None, [
        f"objective.estimator={estimator}", f"objective.num_particles={particles}", *NETWORK,
        f"train.batch_size={batch_size}", "train.progress=false", f"train.device='{device}'",
        f"train.cuda_graph={str(cuda_graph).lower()}",
    ])
    split = Split(x.view(-1, 1, 28, 28).to(device))
    return Trainer(config, Data(split, split, split), Path("runs/speed"), torch.device(device))


class HandWritten:
    """The textbook PyTorch VAE step (BCE + analytic KL, one reparameterized sample) or, with
    `particles` = K > 1, the textbook IWAE step; `fused`: the library's fused Adam."""

    def __init__(self, vae, fused=False, particles=1):
        self.encoder, self.decoder = copy.deepcopy(vae.encoder), copy.deepcopy(vae.decoder)
        params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        self.optimizer = torch.optim.Adam(params, lr=1e-3, fused=fused or None)
        self.particles = particles
        self.graph = None

    def negative_elbo(self, x):
        loc, scale = gaussian_parameters(self.encoder(x))
        if self.particles == 1:
            z = loc + scale * torch.randn_like(loc)
            logits = self.decoder(z)[:, 0]
            reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = -0.5 * (1 + 2 * scale.log() - loc**2 - scale**2).sum()
            return (reconstruction + kl) / len(x)
        return -self.log_weights(x, loc, scale, self.particles).logsumexp(0).sub(math.log(self.particles)).mean()

    def log_weights(self, x, loc, scale, num_samples):
        """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x), shape (K, N)."""
        eps = torch.randn(num_samples, *loc.shape, device=loc.device)
        z = loc + scale * eps
        logits = self.decoder(z.flatten(0, 1))[:, 0].view(num_samples, len(x), *x.shape[1:])
        log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").flatten(2).sum(-1)
        log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_qz = (-0.5 * eps**2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        return log_px + log_pz - log_qz

    def step(self, x):
        loss = self.negative_elbo(x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss

    def captured_step(self, x):
        """The same step captured once in a CUDA graph and replayed: the floor on a GPU."""
        if self.graph is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.step(x)
            torch.cuda.current_stream().wait_stream(side)
            self.static_x = x.clone()
            self.optimizer.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.step(self.static_x)
        self.static_x.copy_(x)
        self.graph.replay()

    @torch.no_grad()
    def log_likelihood(self, x, num_samples):
        """log p(x) ~ logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K."""
        loc, scale = gaussian_parameters(self.encoder(x))
        return torch.logsumexp(self.log_weights(x, loc, scale, num_samples), 0) - math.log(num_samples)


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def minibatches(images, batch_size, steps):
    """The first `steps` minibatches of `images`, in order (fewer where there are not that many)."""
    return [images[i : i + batch_size] for i in range(0, min(len(images), steps * batch_size), batch_size)]


def time_steps(step, batches, device="cpu"):
    synchronize(device)
    start = time.perf_counter()
    for x in batches:
        step(x)
    synchronize(device)
    return (time.perf_counter() - start) / len(batches) * 1000


def interleaved(steps, batches, rounds, device, warmup=10):
    """ms per step of each named step function in each round, timed in turn so load drifts hit all
    alike, after `warmup` steps of each (and, for the captured steps, their capture)."""
    times = {name: [] for name in steps}
    for step in steps.values() if warmup else ():
        time_steps(step, batches[:warmup], device)
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(time_steps(step, batches, device))
    return times


def medians(times):
    return {name: statistics.median(t) for name, t in times.items()}


def compare_training(x, estimator, batch_size, rounds, steps, device="cpu", particles=1):
    """ms per step of each variant, and the ratios to the hand-written steps."""
    eager = library_trainer(x, estimator, batch_size, device, cuda_graph=False, particles=particles)
    hand, hand_fused = HandWritten(eager.vae, particles=particles), HandWritten(eager.vae, fused=True, particles=particles)
    variants = {"library": eager.train_step, "handwritten": hand.step, "handwritten_fused": hand_fused.step}
    cuda = torch.device(device).type == "cuda"
    if cuda:
        captured = library_trainer(x, estimator, batch_size, device, cuda_graph=True, particles=particles)
        floor = HandWritten(eager.vae, fused=True, particles=particles)
        variants.update({"library_captured": captured.train_step, "handwritten_captured": floor.captured_step})
    if estimator == "trace" and particles == 1:
        vae = copy.deepcopy(eager.vae)
        variants["pyro_svi"] = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO()).step
    batches = minibatches(x.view(-1, 1, 28, 28).to(device), batch_size, steps)
    with pyro.validation_enabled(False):  # as Trainer.fit runs its steps (train.validate = false)
        ms = medians(interleaved(variants, batches, rounds, device))
    row = {"estimator": estimator, "particles": particles, "batch_size": batch_size, **{f"{k}_ms": v for k, v in ms.items()}}
    row["ratio"] = ms["library"] / ms["handwritten"]
    row["ratio_to_fused"] = ms["library"] / ms["handwritten_fused"]
    if cuda:
        row["captured_ratio_to_floor"] = ms["library_captured"] / ms["handwritten_captured"]
    if "pyro_svi" in ms:
        row["pyro_svi_ratio"] = ms["pyro_svi"] / ms["handwritten"]
    return row


def compare_log_likelihood(x, num_samples, rounds, device="cpu", images_count=100):
    trainer = library_trainer(x, "trace", 128, device)
    hand = HandWritten(trainer.vae)
    images = x[:images_count].view(-1, 1, 28, 28).to(device)
    runs = {"library": lambda _: log_likelihood(trainer.vae, [images], num_samples=num_samples, progress=False),
            "handwritten": lambda _: hand.log_likelihood(images, num_samples).cpu()}
    ms = medians(interleaved(runs, [images], rounds, device, warmup=0))  # one call a round
    samples = len(images) * num_samples
    library, handwritten = (samples / ms[name] * 1000 for name in ("library", "handwritten"))
    return {"num_samples": num_samples, "images": len(images), "library_samples_per_s": library,
            "handwritten_samples_per_s": handwritten, "ratio": library / handwritten}


def compare_epoch(x, device, batch_size=128, epochs=3, cuda_graphs=("auto",)):
    """Seconds per epoch of `pyro_vae.train` (the steady state from its own metrics; once per
    `train.cuda_graph` setting, the first giving `ratio`) against a hand-written loop over the same
    batches plus the ELBO pass over both splits that the library makes after each epoch."""
    from pyro_vae.runs import read_metrics

    directory = Path(tempfile.mkdtemp())
    images = x.view(-1, 784).numpy().astype(np.uint8)  # binary 0/1: read as binary
    cut = len(images) * 8 // 10
    np.savez(directory / "data.npz", train=images[:cut], valid=images[cut:], test=images[cut:])
    overrides = [*NETWORK, "data.name='npz'", f"data.path='{directory / 'data.npz'}'", "data.binarize='none'",
                 f"train.batch_size={batch_size}", f"train.epochs={epochs}", "train.progress=false",
                 f"train.device='{device}'", "data.on_device=true", f"train.train_eval_examples={cut}"]
    settings = {}
    for setting in cuda_graphs:
        value = '"auto"' if setting == "auto" else str(setting).lower()
        start = time.perf_counter()
        train(None, out=directory / f"run_{setting}", overrides=[*overrides, f"train.cuda_graph={value}"])
        whole_run = time.perf_counter() - start
        seconds = [row["seconds"] for row in read_metrics(directory / f"run_{setting}" / "metrics.csv")]
        settings[str(setting).lower()] = ((seconds[-1] - seconds[0]) / (epochs - 1), whole_run)
    library, whole_run = next(iter(settings.values()))
    hand = HandWritten(library_trainer(x, "trace", batch_size, device).vae, fused=True)
    step = hand.captured_step if torch.device(device).type == "cuda" else hand.step
    data = torch.from_numpy(images).float().view(-1, 1, 28, 28).to(device)
    train_x, valid_x = data[:cut], data[cut:]
    synchronize(device)
    start = time.perf_counter()
    order = torch.randperm(len(train_x), device=device)
    for i in range(0, len(train_x) - batch_size + 1, batch_size):
        step(train_x[order[i : i + batch_size]])
    for split in (train_x, valid_x):  # the library measures the ELBO on both after each epoch
        for i in range(0, len(split), 1000):
            hand.log_likelihood(split[i : i + 1000], 1)
    synchronize(device)
    handwritten = time.perf_counter() - start
    shutil.rmtree(directory)
    row = {"examples": cut, "batch_size": batch_size, "epochs": epochs, "library_epoch_s": library,
           "library_whole_run_s": whole_run, "handwritten_epoch_s": handwritten, "ratio": library / handwritten}
    if len(settings) > 1:
        row.update({f"library_epoch_s_cuda_graph_{setting}": epoch for setting, (epoch, _) in settings.items()})
    return row


TOTAL_CORRELATION = {
    "tcvae_mws": "{name='tcvae', beta=6.0}",
    "tcvae_mss": "{name='tcvae', beta=6.0, sampling='mss'}",
    "factorvae": "{name='factorvae', gamma=10.0}",
}


def compare_total_correlation(x, rounds, steps, batch_size=128, device="cpu"):
    """ms per training step of the total-correlation objectives and of the plain VAE's (`trace`),
    and their ratios to it: of the median round (`_ms`, `_ratio`) and of the fastest (`_min_...`)."""
    estimators = {"trace": "trace", **TOTAL_CORRELATION}
    variants = {name: library_trainer(x, estimator, batch_size, device).train_step for name, estimator in estimators.items()}
    batches = minibatches(x.view(-1, 1, 28, 28).to(device), batch_size, steps)
    with pyro.validation_enabled(False):
        times = interleaved(variants, batches, rounds, device)
    ms = medians(times)
    fastest = {name: min(t) for name, t in times.items()}
    row = {"batch_size": batch_size, "rounds": rounds, "steps_per_round": steps,
           **{f"{name}_ms": value for name, value in ms.items()},
           **{f"{name}_min_ms": value for name, value in fastest.items()}}
    row.update({f"{name}_ratio": ms[name] / ms["trace"] for name in TOTAL_CORRELATION})
    row.update({f"{name}_min_ratio": fastest[name] / fastest["trace"] for name in TOTAL_CORRELATION})
    return row


def threads_default(rounds, steps, default):
    """ms per training step of the default job (`pyro-vae train`, batch 64) and of the 784-400-20 MLP
    at batch 128 with torch threads 1, 2 and "auto" (resolved before each timing as a fresh run would,
    from torch's default `default`), as the machine is and with one competing busy process."""
    config = load_config(None, ["train.progress=false", "train.device='cpu'"])
    digits = build_data(config)
    default_job = Trainer(config, digits, Path("runs/speed"), torch.device("cpu"))
    x = mnist_like(steps * 128)
    jobs = {"default_job": (default_job.train_step, torch.bernoulli(digits.train.x), 64),
            "mlp_784_400_20": (library_trainer(x, "trace", 128).train_step, x.view(-1, 1, 28, 28), 128)}
    rows = []
    for condition in ("as_is", "one_busy_process"):
        competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if condition != "as_is" else None
        try:
            if competitor is not None:
                time.sleep(5)  # let it take its core
            for job, (step, images, batch_size) in jobs.items():
                batches = minibatches(images, batch_size, steps)
                times, autos, busies = {"1": [], "2": [], "auto": []}, [], []
                with pyro.validation_enabled(False):
                    torch.set_num_threads(1)
                    time_steps(step, batches[:10])  # warm-up
                    for _ in range(rounds):
                        for setting in times:
                            torch.set_num_threads(default)  # what "auto" starts from, as in a fresh run
                            busy = busy_cores()  # what a fresh run sees: the other processes, now
                            threads = resolve_threads("auto", busy) if setting == "auto" else int(setting)
                            if setting == "auto":
                                autos.append(threads)
                                busies.append(busy)
                            torch.set_num_threads(threads)
                            times[setting].append(time_steps(step, batches))
                ms = medians(times)
                row = {"condition": condition, "job": job, "batch_size": batch_size, "steps": len(batches),
                       "rounds": rounds, **{f"threads_{k}_ms": v for k, v in ms.items()},
                       "auto_resolved_to": autos, "busy_cores": busies,
                       "auto_over_best": ms["auto"] / min(ms["1"], ms["2"]),
                       "two_over_one": ms["2"] / ms["1"]}
                rows.append(row)
                print(f"{condition:>16} {job:>15}: 1 thread {ms['1']:.2f} ms, 2 threads {ms['2']:.2f} ms, auto "
                      f"({'/'.join(map(str, sorted(set(autos))))}) {ms['auto']:.2f} ms; auto / best "
                      f"{row['auto_over_best']:.2f}, 2 / 1 {row['two_over_one']:.2f}; "
                      f"busy cores {min(busies):.1f}-{max(busies):.1f}",
                      flush=True)
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
    return rows


def figures(row):
    return ", ".join(f"{key} {value:.3f}" for key, value in row.items() if isinstance(value, float))


def show(kind, row):
    """Print a row of `kind`: "training" or "estimators" (`compare_training`), "log_likelihood" or "epoch"."""
    if kind == "log_likelihood":
        print(f"log_likelihood: library {row['library_samples_per_s']:.0f} samples/s, hand-written "
              f"{row['handwritten_samples_per_s']:.0f} samples/s, ratio {row['ratio']:.3f}", flush=True)
    elif kind == "epoch":
        settings = "".join(f", {key[16:]} {value:.3f} s" for key, value in row.items() if key.startswith("library_epoch_s_"))
        print(f"one epoch of {row['examples']} examples: pyro_vae.train {row['library_epoch_s']:.2f} s "
              f"({row['library_whole_run_s']:.2f} s for the whole {row['epochs']}-epoch run){settings}, hand-written "
              f"{row['handwritten_epoch_s']:.2f} s, ratio {row['ratio']:.2f}", flush=True)
    else:
        print(f"{row['estimator']:>13} K={row['particles']:<2} batch {row['batch_size']:>4}: {figures(row)}", flush=True)


def save(name, report, **machine):
    """Write `report` and the machine it ran on to `experiments/results/speed/<name>` (--quick writes nothing)."""
    report["machine"] = {"machine": platform.machine(), **machine, "torch": torch.__version__, "data": DATA}
    path = places("speed", quick=False)[0] / name
    write_text_atomically(path, json.dumps(report, indent=2))
    print(f"wrote {path}")


def main():
    args = arguments(__doc__, threads={"type": int, "default": 2}, device={"default": "cpu", "help": "cpu or cuda"},
                     total_correlation={"action": "store_true"}, threads_default={"action": "store_true"})
    default = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    if args.threads_default:
        rows = threads_default(*((2, 10) if args.quick else (9, 40)), default)
        if not args.quick:
            save("threads_default.json", {"command": "python experiments/speed.py --threads-default", "rows": rows},
                 cores=os.cpu_count(), torch_default_threads=default)
        return
    torch.manual_seed(0)
    if args.total_correlation:
        row = compare_total_correlation(mnist_like(10000), *((3, 10) if args.quick else (15, 40)), device=args.device)
        print(figures(row))
        if not args.quick:
            save("total_correlation.json", row, threads=args.threads, device=args.device)
        return
    cuda = torch.device(args.device).type == "cuda"
    rounds, steps = (3, 20) if args.quick else (7, 60)
    sizes = ((32, 128, 1024, 8192) if cuda else (32, 128, 512)) if not args.quick else (32, 128)
    x = mnist_like(50000)
    runs = [("training", estimator, 1, batch_size, min(steps, len(x) // batch_size))
            for estimator in ("trace", "meanfield") for batch_size in sizes]
    runs += [("estimators", estimator, particles, batch_size, min(steps, 20)) for estimator, particles, batch_size
             in (("stl", 1, 128), ("score", 50, 20), ("iwae", 50, 20), ("renyi", 50, 20), ("dreg", 50, 20),
                 ("tail_adaptive", 50, 20))]
    report = {"training": [], "estimators": []}
    for kind, estimator, particles, batch_size, batches in runs:
        report[kind].append(compare_training(x, estimator, batch_size, rounds, batches, args.device, particles))
        show(kind, report[kind][-1])
    report["log_likelihood"] = compare_log_likelihood(x, 100 if args.quick else 1000, rounds, args.device, 1000 if cuda else 100)
    show("log_likelihood", report["log_likelihood"])
    if args.quick:
        return
    report["epoch"] = compare_epoch(x, args.device, cuda_graphs=("auto", False) if cuda else ("auto",))
    show("epoch", report["epoch"])
    save("speed_cuda.json" if cuda else "speed.json", report, processor=platform.processor(), threads=args.threads,
         device=torch.cuda.get_device_name() if cuda else "cpu")


if __name__ == "__main__":
    main()
