"""More latent dimensions give a better likelihood, up to a point (a common claim, measured).

The default job (``pyro-vae train``: the digits binarized afresh each epoch, MLP 256-256 ELU,
Bernoulli likelihood, N(0, I) prior, 50 epochs of Adam) trained with each latent size in
``--dims`` and each seed in ``--seeds``; the best-validation checkpoint of each run is scored
on the whole test split:

- the importance-sampled log p(x) (``pyro_vae.evaluation.log_likelihood``, K samples), the
  figure a latent size should improve;
- the ELBO and its KL, and the active units (Burda et al. 2016: Cov_x E_q[z_j | x] above
  0.01 of the prior's variance).

A latent space too small cannot hold what the decoder needs (log p(x) rises with d); past
some size log p(x) stops improving or falls. The training split's ELBO at the best epoch is
reported beside the test figures, to tell overfitting (train above test, apart) from a worse
fit at this budget (both falling; what the run in latent_dims.md found). The figures are the mean over
seeds and its standard error.

Writes ``experiments/results/latent_dims/{latent_dims, summary}[_quick].csv`` (one row per
run; one per latent size) and ``latent_dims[_quick].png``; runs go to ``runs/latent_dims/``.

    nice python experiments/latent_dims.py            # 7 sizes x 3 seeds, about 10 minutes on 2 cores
    python experiments/latent_dims.py --quick         # 3 sizes, 1 seed, 10 epochs: under a minute
"""

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from beta_sweep import single_thread  # noqa: E402
from common import write_csv  # noqa: E402

from pyro_vae import load_run, train  # noqa: E402
from pyro_vae.build import build_data  # noqa: E402
from pyro_vae.config import load_config  # noqa: E402
from pyro_vae.evaluation import EVALUATION_SEED, evaluate  # noqa: E402
from pyro_vae.runs import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "latent_dims"
RUNS = ROOT / "runs" / "latent_dims"


def run_one(latent_dim, seed, epochs, samples):
    """Train the default job with this latent size and seed; score its best checkpoint on the test split."""
    overrides = [f"model.latent_dim={latent_dim}", f"train.seed={seed}", f"train.epochs={epochs}",
                 "train.progress=false", "train.device='cpu'"]
    run = RUNS / f"d{latent_dim}_seed{seed}_e{epochs}"
    began = time.perf_counter()
    train(load_config(overrides=overrides), out=run, force=True)
    seconds = time.perf_counter() - began
    checkpoint = "best.pt" if (run / "best.pt").is_file() else "checkpoint.pt"
    vae = load_run(run, checkpoint=checkpoint)
    test = build_data(load_config(run / "config.toml")).test
    result = evaluate(vae, test.x, num_samples=samples, seed=EVALUATION_SEED)
    metrics = read_metrics(run / "metrics.csv")
    best = max(metrics, key=lambda r: r["val_elbo"]) if checkpoint == "best.pt" else metrics[-1]
    return {
        "latent_dim": latent_dim,
        "seed": seed,
        "epochs": epochs,
        "checkpoint": checkpoint,
        "test_images": result["num_examples"],
        "num_samples": samples,
        "test_log_likelihood": result["log_likelihood"],
        "log_likelihood_standard_error": result["log_likelihood_standard_error"],
        "test_elbo": result["elbo"],
        "test_kl": result["kl"],
        "active_units": result["active_units"],
        "best_epoch": int(best["epoch"]),
        "train_elbo_at_best": best["train_elbo"],  # the training split's ELBO at that epoch: the fit
        "val_elbo_at_best": best["val_elbo"],
        "train_seconds": seconds,
    }


def summarize(rows):
    """One row per latent size: the mean over seeds and its standard error (0 with one seed)."""
    out = []
    for d in sorted({r["latent_dim"] for r in rows}):
        group = [r for r in rows if r["latent_dim"] == d]
        n = len(group)

        def mean_and_error(key, group=group, n=n):
            values = [float(r[key]) for r in group]
            mean = sum(values) / n
            spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
            return mean, spread / math.sqrt(n)

        log_px, log_px_error = mean_and_error("test_log_likelihood")
        elbo, elbo_error = mean_and_error("test_elbo")
        kl, _ = mean_and_error("test_kl")
        active, _ = mean_and_error("active_units")
        train_elbo, _ = mean_and_error("train_elbo_at_best")
        best_epoch, _ = mean_and_error("best_epoch")
        out.append({"latent_dim": d, "seeds": n, "test_log_likelihood": log_px,
                    "test_log_likelihood_error_over_seeds": log_px_error, "test_elbo": elbo,
                    "test_elbo_error_over_seeds": elbo_error, "test_kl": kl, "active_units": active,
                    "train_elbo_at_best": train_elbo, "best_epoch": best_epoch})
    return out


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")  # a script's own choice: no display here
    import matplotlib.pyplot as plt

    dims = [r["latent_dim"] for r in summary]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(dims, [r["test_log_likelihood"] for r in summary],
                yerr=[r["test_log_likelihood_error_over_seeds"] for r in summary], marker="o", label="log p(x) (IS)")
    ax.errorbar(dims, [r["test_elbo"] for r in summary], yerr=[r["test_elbo_error_over_seeds"] for r in summary],
                marker="s", label="ELBO")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("latent dimensions d")
    ax.set_ylabel("test nats per image")
    units = ax.twinx()
    units.plot(dims, [r["active_units"] for r in summary], "k:", marker=".", label="active units")
    units.set_ylabel("active units")
    lines = ax.get_legend_handles_labels()
    more = units.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right")
    ax.set_title("Latent size on the digits (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 sizes, one seed, 10 epochs, K = 100")
    p.add_argument("--dims", help="comma-separated latent sizes (default 1,2,4,8,16,32,64; quick 2,8,32)")
    p.add_argument("--seeds", type=int, help="seeds per size (default 3; quick 1)")
    p.add_argument("--epochs", type=int, help="epochs per run (default 50, the default job's; quick 10)")
    p.add_argument("--samples", type=int, help="importance samples K per test image (default 1000; quick 100)")
    args = p.parse_args(argv)
    single_thread()
    dims = [int(d) for d in (args.dims or ("2,8,32" if args.quick else "1,2,4,8,16,32,64")).split(",")]
    seeds = range(args.seeds or (1 if args.quick else 3))
    epochs = args.epochs or (10 if args.quick else 50)
    samples = args.samples or (100 if args.quick else 1000)

    rows = []
    for d in dims:
        for seed in seeds:
            row = run_one(d, seed, epochs, samples)
            rows.append(row)
            print(f"d = {d:>3}, seed {seed}: test log p(x) {row['test_log_likelihood']:.2f} "
                  f"+- {row['log_likelihood_standard_error']:.2f}, ELBO {row['test_elbo']:.2f}, "
                  f"{row['active_units']} of {d} active ({row['train_seconds']:.0f} s)", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    write_csv(rows, RESULTS / f"latent_dims{suffix}.csv")
    summary = summarize(rows)
    write_csv(summary, RESULTS / f"summary{suffix}.csv")
    plot(summary, RESULTS / f"latent_dims{suffix}.png")
    print(f"\n| latent dims | test log p(x) (K = {samples}) | test ELBO | train ELBO | KL | active units | best epoch |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in summary:
        print(f"| {r['latent_dim']} | {r['test_log_likelihood']:.2f} +- {r['test_log_likelihood_error_over_seeds']:.2f} "
              f"| {r['test_elbo']:.2f} | {r['train_elbo_at_best']:.2f} | {r['test_kl']:.2f} | {r['active_units']:.1f} "
              f"| {r['best_epoch']:.0f} |")


if __name__ == "__main__":
    main()
