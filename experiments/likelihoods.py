"""Which likelihood for grey-level images? The same VAE under each, scored on one scale.

The same network (MLP encoder and decoder, same latent size, same epochs, same seed) is
trained on grey-level images under each likelihood:

- ``bernoulli`` on grey levels: the common mistake. Its "log-likelihood" -BCE(x, lambda)
  is not the log of a density over [0, 1] (the continuous Bernoulli's constant
  log C(lambda) > 0 is missing), so its numbers are not comparable with the others.
- ``continuous_bernoulli``; ``gaussian`` with a fixed sigma = 1/sqrt(2) (plain summed
  squared error), a learned shared sigma, and the sigma-VAE's optimal sigma; ``laplace``
  with a learned shared scale; ``beta``.
- ``discretized_logistic`` (3 components, 256 levels): a mass function on the 8-bit data
  itself.

To put the densities and the mass function on one scale, the continuous likelihoods are
trained and tested on *uniformly dequantized* images, x = (k + u) / L with k the grey
level, L the number of levels (256; 17 for the digits, k / 16) and u ~ U(0, 1) drawn once
per pixel with a fixed seed. Then (Theis et al. 2016) for any density p on [0, 1]^D,
E_u log p((k + u) / L) - D log L <= log P(k) for the discrete model P(k) = integral of p
over the bin of k, so -log p(x) + D log L, in bits per dimension, is an upper bound on
that discrete model's bits/dim, directly comparable with the discretized logistic's exact
bits/dim. (Without dequantization, a continuous density on data with exact 0s, about half
of Fashion-MNIST's pixels, can grow without bound at those point masses, and its "nats"
say nothing.) Dequantized data lie strictly inside (0, 1), so the Beta needs no squeeze.

Reported per likelihood on the test set: the ELBO and the importance-sampled
log-likelihood (``pyro_vae.evaluation.log_likelihood``, K samples per image, on a
seeded random subset of the test images) in nats per image, both converted to bits/dim, and a reconstructions figure \
(E[x | z] at z = E_q[z | x]).
Writes ``experiments/results/likelihoods/{likelihoods[_quick].csv, reconstructions_<name>[_quick].png}``.

    python experiments/likelihoods.py --quick   # digits, about a minute
    python experiments/likelihoods.py           # Fashion-MNIST subset, the numbers in likelihoods.md
"""

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pyro.distributions as dist
from beta_sweep import ROOT, single_thread
from common import write_csv

from pyro_vae import plots
from pyro_vae.data import SUBSET_SEED, load_data
from pyro_vae.evaluation import evaluate_elbo, log_likelihood
from pyro_vae.likelihoods import LIKELIHOODS, Bernoulli
from pyro_vae.runs import load_run
from pyro_vae.training import train


@LIKELIHOODS.register("bernoulli_on_grey_levels")
class BernoulliOnGreyLevels(Bernoulli):
    """The common mistake, for this experiment only: Bernoulli log-mass applied to grey levels (not a density)."""

    def forward(self, params, x=None):
        # validate_args=False: Pyro would (rightly) refuse a non-binary observation
        return dist.Bernoulli(logits=params[:, 0], validate_args=False).to_event(self.event_dim)

    def check_support(self, x):
        """Accepts [0, 1] on purpose: this is the mistake being measured."""


# name -> (likelihood spec, which data: "dequantized" grey levels or the "discrete" levels k / (L - 1))
def settings(levels):
    return {
        "bernoulli (grey levels)": ("bernoulli_on_grey_levels", "dequantized"),
        "continuous_bernoulli": ("continuous_bernoulli", "dequantized"),
        "gaussian, sigma = 1/sqrt(2)": ({"name": "gaussian", "scale": 1 / math.sqrt(2)}, "dequantized"),
        "gaussian, learned sigma": ({"name": "gaussian", "scale": "learned"}, "dequantized"),
        "gaussian, optimal sigma": ({"name": "gaussian", "scale": "optimal"}, "dequantized"),
        "laplace, learned scale": ({"name": "laplace", "scale": "learned"}, "dequantized"),
        "beta": ("beta", "dequantized"),
        "discretized_logistic": ({"name": "discretized_logistic", "components": 3, "levels": levels}, "discrete"),
    }


def slug(name):
    """A file name for a setting: "gaussian, learned sigma" -> "gaussian_learned_sigma"."""
    return "_".join("".join(c if c.isalnum() else " " for c in name).split())


def prepare_data(quick, train_examples, valid_examples):
    """.npz files of the discrete grey levels k / (L - 1) and of their dequantization (k + u) / L."""
    name = "digits" if quick else "fashion-mnist"
    levels = 17 if quick else 256
    directory = ROOT / "runs" / "data"
    paths = {kind: directory / f"{name}_{kind}_{train_examples}.npz" for kind in ("discrete", "dequantized")}
    if all(p.is_file() for p in paths.values()):
        return paths, levels
    directory.mkdir(parents=True, exist_ok=True)
    data = load_data(name, binarize="none")  # fashion-mnist: Debian's dataset-fashion-mnist files
    sizes = {"train": train_examples, "valid": valid_examples, "test": None}
    generator = np.random.RandomState(0)
    discrete, dequantized = {}, {}
    for split, size in sizes.items():
        x = data.split(split).x[:size].double().numpy()
        k = np.round(x * (levels - 1))
        discrete[split] = (k / (levels - 1)).astype(np.float32)
        u = generator.uniform(size=k.shape)
        # float32 rounds values within 6e-8 of 0 or 1 onto the ends; keep them strictly inside
        dequantized[split] = np.clip((k + u) / levels, 2.0**-24, 1 - 2.0**-24).astype(np.float32)
    np.savez_compressed(paths["discrete"], **discrete)
    np.savez_compressed(paths["dequantized"], **dequantized)
    return paths, levels


def config_for(likelihood, data_path, quick, epochs):
    hidden, latent_dim, batch_size = ([64], 8, 64) if quick else ([256, 256], 16, 100)
    return {
        "data": {"name": "npz", "path": str(data_path), "binarize": "none"},
        "model": {
            "latent_dim": latent_dim,
            "encoder": {"name": "mlp", "hidden": hidden},
            "decoder": {"name": "mlp", "hidden": hidden},
            "likelihood": likelihood,
        },
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": 1e-3, "seed": 0, "device": "cpu", "progress": False},
    }


def bits_per_dim(nats, num_features, levels, kind):
    """-log P in bits/dim for the discrete model; for a density on dequantized data,
    the bound (-log p + D log L) / (D log 2) on its discretization's bits/dim."""
    offset = 0.0 if kind == "discrete" else num_features * math.log(levels)
    return (-nats + offset) / (num_features * math.log(2))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, CI-sized")
    parser.add_argument("--epochs", type=int, help="epochs per run (default 30 quick, 10 full)")
    parser.add_argument("--train-examples", type=int, default=20000, help="Fashion-MNIST training subset size")
    parser.add_argument("--ll-examples", type=int,
                        help="test images for the log-likelihood, a seeded random subset (default 250 quick, 1000 full)")
    parser.add_argument("--samples", type=int, help="importance samples K per image (default 200 quick, 1000 full)")
    parser.add_argument("--only", help="comma-separated names: run only these settings")
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results" / "likelihoods"))
    args = parser.parse_args(argv)
    single_thread()

    quick = args.quick
    epochs = args.epochs or (30 if quick else 10)
    ll_examples = args.ll_examples or (250 if quick else 1000)
    samples = args.samples or (200 if quick else 1000)
    train_examples = 1297 if quick else args.train_examples
    paths, levels = prepare_data(quick, train_examples, 250 if quick else 2000)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if quick else ""
    chosen = settings(levels)
    if args.only:
        unknown = [name for name in args.only.split(",") if name not in chosen]
        if unknown:
            parser.error(f"unknown setting(s) {', '.join(map(repr, unknown))}; the settings are: {', '.join(chosen)}")
        chosen = {name: chosen[name] for name in args.only.split(",")}

    rows = []
    for name, (likelihood, kind) in chosen.items():
        config = config_for(likelihood, paths[kind], quick, epochs)
        run = ROOT / "runs" / "likelihoods" / ("quick" if quick else "full") / slug(name)
        print(f"{name}: training {run}", flush=True)
        start = time.perf_counter()
        train(config, out=run, force=True)
        vae = load_run(run)
        test_split = load_data("npz", path=str(paths[kind])).test
        test = test_split.x
        elbo = evaluate_elbo(vae, (test[i : i + 1000] for i in range(0, len(test), 1000)))
        # log p(x) on a seeded random subset (the same images for every likelihood), never the first N
        ll_test = test_split.random_subset(ll_examples, seed=SUBSET_SEED).x
        log_px = log_likelihood(vae, ll_test, num_samples=samples)
        D = vae.num_features
        comparable = name != "bernoulli (grey levels)"
        row = {
            "likelihood": name,
            "data": kind,
            "test_elbo": elbo["elbo"],
            "test_reconstruction": elbo["reconstruction"],
            "test_kl": elbo["kl"],
            "test_log_likelihood": log_px.mean().item(),
            "log_likelihood_standard_error": (log_px.std() / math.sqrt(len(log_px))).item(),
            "elbo_bits_per_dim": bits_per_dim(elbo["elbo"], D, levels, kind) if comparable else float("nan"),
            "log_likelihood_bits_per_dim": bits_per_dim(log_px.mean().item(), D, levels, kind) if comparable else float("nan"),
            "comparable": comparable,
            "active_units": elbo["active_units"],
            "test_images": len(test),
            "ll_images": len(log_px),
            "ll_subset_seed": SUBSET_SEED,
            "importance_samples": samples,
            "epochs": epochs,
            "seconds": time.perf_counter() - start,
        }
        rows.append(row)
        x = ll_test[:32]
        plots.save_reconstructions(x, vae.reconstruct(x), results / f"reconstructions_{slug(name)}{suffix}.png")
        print(
            f"  test ELBO {row['test_elbo']:.1f} nats, log p(x) {row['test_log_likelihood']:.1f} "
            f"+- {row['log_likelihood_standard_error']:.1f} nats (K = {samples}), "
            f"{row['log_likelihood_bits_per_dim']:.3f} bits/dim, {row['seconds']:.0f} s",
            flush=True,
        )
    write_csv(rows, results / f"likelihoods{suffix}.csv")
    print(markdown_table(rows, levels))


def markdown_table(rows, levels):
    lines = [
        "| likelihood | data | test ELBO (nats) | test log p(x) (nats) | ELBO bits/dim | log p(x) bits/dim |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        data = f"k / {levels - 1}" if r["data"] == "discrete" else f"(k + u) / {levels}"
        bits = lambda v, r=r: "n/a" if not r["comparable"] else f"{v:.3f}"
        lines.append(
            f"| {r['likelihood']} | {data} | {r['test_elbo']:.1f} | {r['test_log_likelihood']:.1f} ± "
            f"{r['log_likelihood_standard_error']:.1f} | {bits(r['elbo_bits_per_dim'])} | "
            f"{bits(r['log_likelihood_bits_per_dim'])} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
