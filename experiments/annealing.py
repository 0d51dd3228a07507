"""Posterior collapse, and what warm-up, cyclical annealing, capacity and free bits do about it.

The setting: Fashion-MNIST grey levels with a Gaussian likelihood at its default scale
(``likelihood = { name = "gaussian", scale = 1.0 }``), what a user gets who swaps the
Bernoulli for a Gaussian and keeps the defaults. With sigma = 1 on pixels in [0, 1], a
latent direction pays for its KL only if it explains more than sigma^2 = 1 of variance
(for a linear decoder this is exact: Lucas et al. 2019), so most of the 32 dimensions
collapse. Six VAEs, identical but for the objective, trained for the same epochs:

- ``none``: the plain ELBO (KL weight 1 throughout);
- ``linear``: KL weight warm-up from 0 to 1 over the first third of training (Bowman et al. 2015);
- ``cyclical``: 4 cycles, the weight rising linearly over the first half of each (Fu et al. 2019);
- ``capacity``: E log p(x|z) - gamma |KLbar - C(t)|, C rising linearly from 0 to 25 nats over
  two thirds of training, gamma = 1000 (Burgess et al. 2018);
- ``free_bits``: E log p(x|z) - sum_j max(lambda, KLbar_j), lambda = 0.5 nats per dimension
  (Kingma et al. 2016);
- ``learned_sigma`` (reference): the plain ELBO with a learned scale, the same data and networks.

On the test set we report, with the true ELBO (weight 1, one z per image): the ELBO, its two
terms, active units (Var_x E_q[z_d | x] > 0.01) and the KL per dimension on the whole test
split, and the importance-sampled log p(x) (K particles) on a seeded random subset of it.
Writes ``experiments/results/annealing/{annealing.csv, kl_per_dimension.csv, annealing.png}``.

    nice python experiments/annealing.py            # Fashion-MNIST subset, the numbers in annealing.md (~15 min, 1 thread)
    python experiments/annealing.py --quick         # digits, a minute
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from beta_sweep import ROOT, single_thread
from common import write_csv

from pyro_vae import train
from pyro_vae.build import build_data
from pyro_vae.data import load_data
from pyro_vae.evaluation import evaluate_elbo, log_likelihood
from pyro_vae.runs import load_run, read_metrics

SUBSET_SEED = 0  # the training/validation subsets and the log p(x) subset are seeded random draws


def fashion_subset(train_examples, valid_examples):
    """Seeded random subsets of Fashion-MNIST's training and validation splits, and its whole
    test split, saved as an .npz for ``data.name = "npz"`` (a subset keeps CPU runs short)."""
    path = ROOT / "runs" / "data" / f"fashion_mnist_{train_examples}_{valid_examples}_seed{SUBSET_SEED}.npz"
    if not path.is_file():
        data = load_data("fashion-mnist")
        rng = np.random.default_rng(SUBSET_SEED)
        pick = lambda x, n: x.numpy()[np.sort(rng.permutation(len(x))[:n])]
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, train=pick(data.train.x, train_examples), valid=pick(data.valid.x, valid_examples),
                            test=data.test.x.numpy())
    return path


def objectives(epochs):
    """The objectives compared: [objective] (and [model] likelihood) settings for a run of ``epochs``."""
    return {
        "none": {},
        "linear": {"kl_weight": {"name": "linear", "start": 0.0, "end": 1.0, "epochs": max(1, epochs // 3)}},
        "cyclical": {"kl_weight": {"name": "cyclical", "start": 0.0, "end": 1.0, "epochs": epochs, "cycles": 4, "ratio": 0.5}},
        "capacity": {"capacity": {"start": 0.0, "end": 25.0, "epochs": max(1, 2 * epochs // 3), "gamma": 1000.0}},
        "free_bits": {"free_bits": 0.5},
        "learned_sigma": {},
    }


def base_config(quick, epochs, latent_dim, train_examples):
    if quick:
        data, hidden, batch_size = {"name": "digits"}, [64], 64
    else:
        data, hidden, batch_size = {"name": "npz", "path": str(fashion_subset(train_examples, 2000))}, [256, 256], 100
    return {
        "data": data,
        "model": {
            "latent_dim": latent_dim,
            "encoder": {"name": "mlp", "hidden": hidden},
            "decoder": {"name": "mlp", "hidden": hidden},
            "likelihood": {"name": "gaussian", "scale": 1.0},
        },
        "objective": {"estimator": "trace"},
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": 1e-3, "seed": 0, "device": "cpu",
                  "progress": False, "train_eval_examples": 2000},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, a few epochs (CI-sized)")
    parser.add_argument("--epochs", type=int, help="epochs per run (default 8 quick, 30 full)")
    parser.add_argument("--latent-dim", type=int, help="latent dimensions (default 8 quick, 32 full)")
    parser.add_argument("--train-examples", type=int, default=10000, help="Fashion-MNIST training subset size")
    parser.add_argument("--num-samples", type=int, help="K for the IS log p(x) (default 100 quick, 1000 full)")
    parser.add_argument("--log-px-examples", type=int, default=2000, help="size of the seeded random test subset for log p(x)")
    parser.add_argument("--only", nargs="+", help="run only these objectives")
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results" / "annealing"))
    args = parser.parse_args(argv)
    single_thread()

    epochs = args.epochs or (8 if args.quick else 30)
    latent_dim = args.latent_dim or (8 if args.quick else 32)
    num_samples = args.num_samples or (100 if args.quick else 1000)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    rows, per_dimension, curves = [], {}, {}
    for name, objective in objectives(epochs).items():
        if args.only and name not in args.only:
            continue
        config = base_config(args.quick, epochs, latent_dim, args.train_examples)
        config["objective"].update(objective)
        if name == "learned_sigma":
            config["model"]["likelihood"] = {"name": "gaussian", "scale": "learned"}
        run = ROOT / "runs" / "annealing" / ("quick" if args.quick else "full") / name
        print(f"{name}: {objective or 'ELBO'}: training {run}", flush=True)
        start = time.perf_counter()
        train(config, out=run, force=True)
        seconds = time.perf_counter() - start
        vae, data = load_run(run), build_data(config)
        test = evaluate_elbo(vae, data.batches("test", 1000, torch.device("cpu")))
        x_test = data.test.x
        subset = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(SUBSET_SEED))[: args.log_px_examples]
        log_px = log_likelihood(vae, x_test[subset], num_samples=num_samples)
        curves[name] = read_metrics(run / "metrics.csv")
        kl_dims = sorted(test["kl_per_dimension"], reverse=True)
        per_dimension[name] = kl_dims
        rows.append({
            "objective": name,
            "likelihood_scale": "learned" if name == "learned_sigma" else "1.0",
            "test_elbo": test["elbo"],
            "test_reconstruction": test["reconstruction"],
            "test_kl": test["kl"],
            "active_units": test["active_units"],
            "dimensions_kl_above_0.01": sum(kl > 0.01 for kl in kl_dims),
            "kl_per_dimension_max": kl_dims[0],
            "kl_per_dimension_min": kl_dims[-1],
            "test_log_px": log_px.mean().item(),
            "test_log_px_standard_error": (log_px.std() / len(log_px) ** 0.5).item(),
            "log_px_num_samples": num_samples,
            "log_px_examples": len(log_px),
            "elbo_examples": test["num_examples"],
            "latent_dim": latent_dim,
            "epochs": epochs,
            "train_seconds": round(seconds, 1),
        })
        print(f"  test ELBO {test['elbo']:.2f}  KL {test['kl']:.2f}  active units {test['active_units']}/{latent_dim}  "
              f"log p(x) {rows[-1]['test_log_px']:.2f}  KL per dimension {' '.join(f'{kl:.2f}' for kl in kl_dims)}",
              flush=True)
    suffix = "_quick" if args.quick else ""
    write_csv(rows, results / f"annealing{suffix}.csv")
    write_csv(
        [{"objective": name, **{f"kl_{d}": f"{kl:.4f}" for d, kl in enumerate(kls)}} for name, kls in per_dimension.items()],
        results / f"kl_per_dimension{suffix}.csv",
    )
    plot(curves, per_dimension, results / f"annealing{suffix}.png", "digits" if args.quick else "Fashion-MNIST")
    print(markdown_table(rows))


def markdown_table(rows):
    lines = [
        "| objective | test ELBO | reconstruction | KL | active units | log p(x) (IS) | largest / smallest KL per dim |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['objective']} | {r['test_elbo']:.2f} | {r['test_reconstruction']:.2f} | {r['test_kl']:.2f} | "
            f"{r['active_units']}/{r['latent_dim']} | {r['test_log_px']:.2f} ± {r['test_log_px_standard_error']:.2f} | "
            f"{r['kl_per_dimension_max']:.2f} / {r['kl_per_dimension_min']:.3f} |"
        )
    return "\n".join(lines)


def plot(curves, per_dimension, path, data_name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, rows in curves.items():
        epochs = [r["epoch"] for r in rows]
        style = ":" if name == "learned_sigma" else ".-"
        axes[0].plot(epochs, [r["active_units"] for r in rows], style, label=name)
        if name != "learned_sigma":  # another likelihood: its ELBO is on another scale
            axes[1].plot(epochs, [r["val_elbo"] for r in rows], style, label=name)
        axes[2].plot(range(1, len(per_dimension[name]) + 1), per_dimension[name], style, label=name)
    axes[0].set(xlabel="epoch", ylabel="active units (validation)", title="active units")
    axes[1].set(xlabel="epoch", ylabel="validation ELBO (weight 1)", title=f"true ELBO on {data_name}, sigma = 1")
    tails = [r["val_elbo"] for name, rows in curves.items() if name != "learned_sigma" for r in rows[len(rows) // 3:]]
    if tails:
        low, high = min(tails), max(tails)
        axes[1].set_ylim(low - 0.1 * (high - low + 1), high + 0.1 * (high - low + 1))
    axes[2].set(xlabel="latent dimension (sorted)", ylabel="test KL (nats)", title="KL per dimension", yscale="log")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
