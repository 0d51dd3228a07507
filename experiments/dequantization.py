"""8-bit images as your own data: a density without dequantization, with it, and a mass function.

The own-data path (an .npz of uint8 images, ``data.name = "npz"``, the CLI's ``train`` and
``evaluate``), three ways, with the same network, budget and seed:

- ``continuous_bernoulli`` on x = k / 255 as they are: the data sit on 256 values (half of
  Fashion-MNIST's pixels are exact 0s), where a density can grow without bound; its "ELBO" is
  positive and grows, and is no log-likelihood of the images (the run prints a warning);
- ``continuous_bernoulli`` with ``data.dequantize = true``: trained on (k + u) / 256, u ~ U[0, 1)
  redrawn each epoch; ``evaluate`` reports log P(k) >= log p((k + u) / 256) - D log 256 and
  bits/dim of the 8-bit images (Theis et al. 2016);
- ``discretized_logistic`` (the default 5 components): a mass function on k / 255, exact bits/dim.

The last two are on one scale (nats of the discrete images, bits/dim in the usual 8-bit sense).
Writes ``experiments/results/dequantization/dequantization[_quick].csv``.

    python experiments/dequantization.py --quick   # the 8x8 digits as uint8 0..255, about a minute
    python experiments/dequantization.py           # 6,000 Fashion-MNIST images, 1,000 test images
"""

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import numpy as np
from beta_sweep import ROOT, single_thread
from common import write_csv

from pyro_vae.data import read_idx
from pyro_vae.report import evaluate_run
from pyro_vae.training import train

FASHION = Path("/usr/share/datasets/fashion-mnist")
SETTINGS = {
    "continuous_bernoulli, k / 255 as they are": ("continuous_bernoulli", False),
    "continuous_bernoulli, dequantized": ("continuous_bernoulli", True),
    "discretized_logistic": ("discretized_logistic", False),
}


def write_npz(path, quick, train_examples, test_examples):
    """uint8 images (N, H, W) and their labels, as a user's own .npz: seeded random subsets."""
    rng = np.random.RandomState(0)
    if quick:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * 255 / 16).astype(np.uint8)  # 0..16 -> 0..255
        order = rng.permutation(len(images))
        train, test = order[:-300], order[-300:]
        np.savez(path, train=images[train], train_labels=digits.target[train], test=images[test],
                 test_labels=digits.target[test])
        return
    train_images = read_idx(FASHION / "train-images-idx3-ubyte.gz")
    train_labels = read_idx(FASHION / "train-labels-idx1-ubyte.gz")
    test_images = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")
    test_labels = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    train = np.sort(rng.permutation(len(train_images))[:train_examples])
    test = np.sort(rng.permutation(len(test_images))[:test_examples])
    np.savez(path, train=train_images[train], train_labels=train_labels[train], test=test_images[test],
             test_labels=test_labels[test])


def run(name, likelihood, dequantize, npz, out, args):
    overrides = [
        "data.name=npz", f"data.path={npz}", f"data.dequantize={str(dequantize).lower()}",
        f"model.likelihood={likelihood}", f"train.epochs={args.epochs}", "train.batch_size=100",
        "train.progress=false", "train.device=cpu",
    ]
    start = time.perf_counter()
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        train(None, out=out, force=True, overrides=overrides)
    seconds = time.perf_counter() - start
    warnings = [line for line in stderr.getvalue().splitlines() if line.startswith("warning: ")]
    result = evaluate_run(out, num_samples=args.samples)
    return {
        "setting": name,
        "dequantize": dequantize,
        "test_log_likelihood_nats": result["log_likelihood"],
        "test_elbo_nats": result["elbo"],
        "bits_per_dim": result["bits_per_dim"] if result["bits_per_dim"] is not None else float("nan"),
        "density_log_likelihood_nats": result.get("log_likelihood_density", float("nan")),
        "active_units": result["active_units"],
        "test_images": result["num_examples"],
        "samples_K": args.samples,
        "train_seconds": seconds,
        "warned_unbounded": any("unbounded" in w for w in warnings),
    }


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the 8x8 digits as uint8 images, about a minute")
    p.add_argument("--epochs", type=int, help="default 5 (quick: 10)")
    p.add_argument("--train-examples", type=int, default=6000)
    p.add_argument("--test-examples", type=int, default=1000)
    p.add_argument("--samples", type=int, default=100, help="importance samples K per test image")
    args = p.parse_args()
    args.epochs = args.epochs or (10 if args.quick else 5)
    return args


def main_experiment():
    args = parse()
    single_thread()
    results = ROOT / "experiments" / "results" / "dequantization"
    runs = ROOT / "runs" / "dequantization"
    runs.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    npz = runs / f"images{suffix}.npz"
    write_npz(npz, args.quick, args.train_examples, args.test_examples)
    rows = []
    for name, (likelihood, dequantize) in SETTINGS.items():
        rows.append(run(name, likelihood, dequantize, npz, runs / f"{likelihood}{'_dequantized' if dequantize else ''}{suffix}",
                        args))
        print(rows[-1], file=sys.stderr, flush=True)
    write_csv(rows, results / f"dequantization{suffix}.csv")


if __name__ == "__main__":
    main_experiment()
