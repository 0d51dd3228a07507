"""More latent dimensions give a better likelihood, up to a point (a common claim, measured): the default
job at each latent size and seed of the sweep `latent_dims.toml`, scored by each run's evaluation.json,
beside the training ELBO at the best epoch (experiments/latent_dims.md). Writes `latent_dims.csv` (a row
a run), `summary.csv` (a row a latent size: mean and sd over seeds) and `latent_dims.png`.

    python experiments/latent_dims.py --quick     # 3 sizes, 1 seed, 10 epochs, K = 100: under a minute
    python experiments/latent_dims.py             # 7 sizes x 3 seeds (resumable: the same command continues)
    python experiments/latent_dims.py --report    # the tables and figure from the runs so far
"""

from pathlib import Path

from common import arguments, completed_trials, summarize, write_csv

from pyro_vae.runs import read_metrics

COLUMNS = ("test_log_likelihood", "test_elbo", "test_kl", "active_units", "train_elbo_at_best", "best_epoch")


def quick_spec(spec):
    """Latent sizes 2, 8 and 32, one seed, 10 epochs, K = 100."""
    spec["train"]["epochs"] = 10
    spec["sweep"]["grid"] = {"model.latent_dim": [2, 8, 32], "train.seed": [0]}
    spec["sweep"]["evaluate"]["samples"] = 100
    return spec


def run_row(trial, epochs):
    """A finished run's row: its evaluation record, and its metrics at the best epoch (that of best.pt)."""
    metrics = read_metrics(Path(trial["run"]) / "metrics.csv")
    best = max(metrics, key=lambda r: r["val_elbo"])
    return {"latent_dim": int(trial["model.latent_dim"]), "seed": int(trial["train.seed"]), "epochs": epochs,
            "checkpoint": "best.pt", "test_images": trial["num_examples"], "num_samples": trial["num_samples"],
            "test_log_likelihood": trial["log_likelihood"],
            "log_likelihood_standard_error": trial["log_likelihood_standard_error"],
            "test_elbo": trial["elbo"], "test_kl": trial["kl"], "active_units": trial["active_units"],
            "best_epoch": int(best["epoch"]), "train_elbo_at_best": best["train_elbo"],  # the fit of the training split
            "val_elbo_at_best": best["val_elbo"], "train_seconds": metrics[-1]["seconds"]}


def plot(summary, path):
    """Test log p(x) and ELBO (mean +- sd over seeds) and the active units against the latent size."""
    from matplotlib.figure import Figure

    dims = [r["latent_dim"] for r in summary]
    figure = Figure(figsize=(6, 4))
    ax = figure.add_subplot()
    for column, marker, label in (("test_log_likelihood", "o", "log p(x) (IS)"), ("test_elbo", "s", "ELBO")):
        ax.errorbar(dims, [r[f"{column}_mean"] for r in summary], yerr=[r[f"{column}_sd"] for r in summary],
                    marker=marker, label=label)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="latent dimensions d", ylabel="test nats per image (mean +- sd over seeds)",
           title="Latent size on the digits (test split)")
    units = ax.twinx()
    units.plot(dims, [r["active_units_mean"] for r in summary], "k:", marker=".", label="active units")
    units.set_ylabel("active units")
    lines, more = ax.get_legend_handles_labels(), units.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")


def main():
    args = arguments(__doc__)
    results, spec, trials = completed_trials("latent_dims", args, quick_spec)
    rows = sorted((run_row(t, spec["train"]["epochs"]) for t in trials),
                  key=lambda r: (r["latent_dim"], r["seed"]))
    if not rows:
        print("no finished runs yet")
        return
    write_csv(rows, results / "latent_dims.csv")
    summary = summarize(rows, ("latent_dim",), COLUMNS)
    write_csv(summary, results / "summary.csv")
    plot(summary, results / "latent_dims.png")


if __name__ == "__main__":
    main()
