"""The rate-distortion trade-off of the KL weight: a beta sweep.

For each beta in {0.1, 0.25, 0.5, 1, 2, 4, 8} a VAE is trained on statically
binarized MNIST with ``objective.kl_weight = beta`` (the handler scales log p(z) and
log q(z | x) by beta, so the training objective is E_q[log p(x|z)] - beta KL). On the
test set we then measure, with the *true* ELBO's terms (weight 1):

- rate R = KL(q(z|x) || p(z)) and distortion D = -E_q[log p(x|z)] (nats per image),
- the true ELBO = -(D + R), which the beta = 1 objective maximizes,
- active units: dimensions with Var_x(E_q[z_d | x]) > 0.01 (Burda et al. 2015).

beta < 1 buys reconstruction with rate, beta > 1 the reverse; the curve D(R) traced by
the sweep is the rate-distortion trade-off (Alemi et al. 2018). Writes
``experiments/results/beta_sweep/{beta_sweep.csv, rate_distortion.png}``.

    python experiments/beta_sweep.py --quick    # digits, seconds
    python experiments/beta_sweep.py            # MNIST subset, the numbers in beta_sweep.md
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import write_csv

from pyro_vae import train
from pyro_vae.build import build_data
from pyro_vae.evaluation import evaluate_elbo
from pyro_vae.runs import load_run

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "binarized_mnist.npz"
BETAS = [0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]


def mnist_subset(train_examples, valid_examples, test_examples):
    """The first examples of each split of binarized MNIST, saved as an .npz for ``data.name = "npz"``
    (the full set is ``data.name = "binarized-mnist"``; a subset keeps CPU runs short). The test
    split is sorted by class, so a reported test figure needs ``test_examples`` = 10000, the
    whole split (as here); the training split is not sorted."""
    path = ROOT / "runs" / "data" / f"binarized_mnist_{train_examples}_{valid_examples}_{test_examples}.npz"
    if not path.is_file():
        if not MNIST.is_file():
            sys.exit(f"error: {MNIST} not found; run with --quick to use the digits data instead")
        path.parent.mkdir(parents=True, exist_ok=True)
        with np.load(MNIST) as f:
            sizes = {"train": train_examples, "valid": valid_examples, "test": test_examples}
            arrays = {s: f[s][:n].reshape(-1, 1, 28, 28).astype(np.float32) for s, n in sizes.items()}
        np.savez_compressed(path, **arrays)
    return path


def base_config(quick, epochs=None, train_examples=20000, latent_dim=None):
    """The shared setup: digits (quick) or a binarized-MNIST subset, a 2-layer MLP VAE."""
    if quick:
        data = {"name": "digits", "binarize": "static"}
        hidden, latent, default_epochs, batch_size = [64], 8, 5, 64
    else:
        data = {"name": "npz", "path": str(mnist_subset(train_examples, 2000, 10000)), "binarize": "none"}
        hidden, latent, default_epochs, batch_size = [300, 300], 20, 12, 100
    return {
        "data": data,
        "model": {
            "latent_dim": latent_dim or latent,
            "encoder": {"name": "mlp", "hidden": hidden},
            "decoder": {"name": "mlp", "hidden": hidden},
            "likelihood": "bernoulli",
        },
        "objective": {"estimator": "trace", "kl_weight": 1.0},
        "train": {
            "epochs": epochs or default_epochs,
            "batch_size": batch_size,
            "lr": 1e-3,
            "seed": 0,
            "device": "cpu",
            "progress": False,
            "train_eval_examples": 2000,
        },
    }


def single_thread():
    """One torch thread: on a machine shared with other jobs, torch's default of one thread
    per core was measured 15x slower per step (threads waiting on each other)."""
    torch.set_num_threads(1)


def train_and_test(config, run):
    """Train (or reuse a finished run), then the test set's true-ELBO terms and the run's last metrics."""
    start = time.perf_counter()
    train(config, out=run, force=True)
    vae = load_run(run)
    data = build_data(config)
    test = evaluate_elbo(vae, data.batches("test", 1000, torch.device("cpu")))
    test["seconds"] = time.perf_counter() - start
    return test


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, a few epochs (CI-sized)")
    parser.add_argument("--betas", type=float, nargs="+", default=BETAS)
    parser.add_argument("--epochs", type=int, help="epochs per beta (default 5 quick, 12 full)")
    parser.add_argument("--train-examples", type=int, default=20000, help="MNIST training subset size")
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results" / "beta_sweep"))
    args = parser.parse_args(argv)
    single_thread()

    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    rows = []
    for beta in args.betas:
        config = base_config(args.quick, args.epochs, args.train_examples)
        config["objective"]["kl_weight"] = beta
        run = ROOT / "runs" / "beta_sweep" / ("quick" if args.quick else "full") / f"beta_{beta:g}"
        print(f"beta = {beta:g}: training {run}", flush=True)
        test = train_and_test(config, run)
        row = {
            "beta": beta,
            "rate_kl": test["kl"],
            "distortion": -test["reconstruction"],
            "test_elbo": test["elbo"],
            "beta_objective": test["reconstruction"] - beta * test["kl"],
            "active_units": test["active_units"],
            "latent_dim": config["model"]["latent_dim"],
            "epochs": config["train"]["epochs"],
            "seconds": round(test["seconds"], 1),
        }
        rows.append(row)
        print(
            f"  rate {row['rate_kl']:.2f}  distortion {row['distortion']:.2f}  true ELBO {row['test_elbo']:.2f}  "
            f"active units {row['active_units']}/{row['latent_dim']}  ({row['seconds']:.0f} s)",
            flush=True,
        )
    suffix = "_quick" if args.quick else ""
    write_csv(rows, results / f"beta_sweep{suffix}.csv")
    plot_rate_distortion(rows, results / f"rate_distortion{suffix}.png", "digits" if args.quick else "binarized MNIST")
    print(markdown_table(rows))


def markdown_table(rows):
    lines = [
        "| beta | rate KL (nats) | distortion -E log p(x|z) | true test ELBO | active units |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['beta']:g} | {r['rate_kl']:.2f} | {r['distortion']:.2f} | {r['test_elbo']:.2f} | "
            f"{r['active_units']}/{r['latent_dim']} |"
        )
    return "\n".join(lines)


def plot_rate_distortion(rows, path, data_name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    rates, distortions = [r["rate_kl"] for r in rows], [r["distortion"] for r in rows]
    ax.plot(rates, distortions, "o-")
    for r in rows:
        ax.annotate(f"β={r['beta']:g}", (r["rate_kl"], r["distortion"]), textcoords="offset points", xytext=(5, 3))
    low, high = min(rates), max(rates)
    best = max(rows, key=lambda r: r["test_elbo"])
    elbo_line = np.linspace(0, high * 1.05, 2)  # D + R = -ELBO: a line of slope -1
    ax.plot(elbo_line, -best["test_elbo"] - elbo_line, ":", color="grey", label=f"D + R = {-best['test_elbo']:.1f}")
    ax.set_xlim(max(0.0, low - 2), high * 1.05 + 1)
    ax.set_ylim(min(distortions) - 5, max(distortions) + 5)
    ax.set_xlabel("rate: KL(q(z|x) || p(z)) (nats)")
    ax.set_ylabel("distortion: -E_q log p(x|z) (nats)")
    ax.set_title(f"β sweep on {data_name} (test set)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
