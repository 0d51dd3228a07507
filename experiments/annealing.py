"""Posterior collapse, and what warm-up, cyclical annealing, capacity and free bits do about it: six VAEs
identical but for the objective, a sweep (`annealing.toml`); set-up and results in experiments/annealing.md.

    python experiments/annealing.py --quick     # digits, 8 epochs, latent 8, K = 100: a minute
    python experiments/annealing.py             # the Fashion-MNIST subset of annealing.md (resumable: the same command continues)
    python experiments/annealing.py --report    # the tables and figure from the runs so far

Writes `annealing.csv`, `kl_per_dimension.csv` and `annealing.png` to `experiments/results/annealing/`
(`runs/annealing/quick/` with `--quick`).
"""

import json
from pathlib import Path

from common import arguments, completed_trials, write_csv

from pyro_vae.runs import read_metrics


def quick_spec(spec):
    """Digits, MLP 64, latent 8, 8 epochs of batch 64, K = 100; the schedules scaled to 8 epochs."""
    spec["data"] = {"name": "digits"}
    spec["model"].update(latent_dim=8, encoder={"name": "mlp", "hidden": [64]}, decoder={"name": "mlp", "hidden": [64]})
    spec["train"].update(epochs=8, batch_size=64)
    spec["sweep"]["evaluate"]["samples"] = 100
    grids = spec["sweep"]["grid"]
    grids[0]["objective.kl_weight"][1]["epochs"] = 2
    grids[0]["objective.kl_weight"][2]["epochs"] = 8
    grids[1]["objective.capacity"][0]["epochs"] = 5
    return spec


def objective_name(trial):
    """The name of a trial's objective (the grid point's one key that is set)."""
    for key, name in (("model.likelihood", "learned_sigma"), ("objective.capacity", "capacity"),
                      ("objective.free_bits", "free_bits")):
        if trial[key] is not None:
            return name
    weight = trial["objective.kl_weight"]  # a schedule table is JSON in the trial's row, 1.0 a number
    return json.loads(weight)["name"] if isinstance(weight, str) else "none"


def table_rows(trials, spec):
    """A row a finished run, with its KL per dimension (largest first) and its metrics.csv rows for the figure."""
    rows = []
    for trial in trials:
        name, metrics = objective_name(trial), read_metrics(Path(trial["run"]) / "metrics.csv")
        kl_dims = sorted(json.loads((Path(trial["run"]) / "evaluation.json").read_text())["kl_per_dimension"],
                         reverse=True)
        rows.append({"objective": name, "likelihood_scale": "learned" if name == "learned_sigma" else "1.0",
                     "test_elbo": trial["elbo"], "test_reconstruction": trial["reconstruction"], "test_kl": trial["kl"],
                     "active_units": trial["active_units"], "dimensions_kl_above_0.01": sum(kl > 0.01 for kl in kl_dims),
                     "kl_per_dimension_max": kl_dims[0], "kl_per_dimension_min": kl_dims[-1],
                     "test_log_px": trial["log_likelihood"], "test_log_px_standard_error": trial["log_likelihood_standard_error"],
                     "log_px_num_samples": trial["num_samples"], "log_px_examples": trial["num_examples"],
                     "elbo_examples": trial["num_examples"], "latent_dim": spec["model"]["latent_dim"],
                     "epochs": spec["train"]["epochs"], "train_seconds": trial["seconds"], "kl_dims": kl_dims, "curve": metrics})
    return rows


def plot(rows, path, data_name):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(14, 4))
    axes = figure.subplots(1, 3)
    tails = []
    for row in rows:
        name, curve = row["objective"], row["curve"]
        epochs = [r["epoch"] for r in curve]
        style = ":" if name == "learned_sigma" else ".-"
        axes[0].plot(epochs, [r["active_units"] for r in curve], style, label=name)
        if name != "learned_sigma":  # another likelihood: its ELBO is on another scale
            axes[1].plot(epochs, [r["val_elbo"] for r in curve], style, label=name)
            tails += [r["val_elbo"] for r in curve[len(curve) // 3:]]
        axes[2].plot(range(1, len(row["kl_dims"]) + 1), row["kl_dims"], style, label=name)
    axes[0].set(xlabel="epoch", ylabel="active units (validation)", title="active units")
    axes[1].set(xlabel="epoch", ylabel="validation ELBO (weight 1)", title=f"true ELBO on {data_name}, sigma = 1")
    if tails:
        low, high = min(tails), max(tails)
        axes[1].set_ylim(low - 0.1 * (high - low + 1), high + 0.1 * (high - low + 1))
    axes[2].set(xlabel="latent dimension (sorted)", ylabel="test KL (nats)", title="KL per dimension", yscale="log")
    for ax in axes:
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    print(f"wrote {path}")


def main():
    args = arguments(__doc__)
    results, spec, trials = completed_trials("annealing", args, quick_spec)
    rows = table_rows(trials, spec)
    if not rows:
        print("no finished runs yet")
        return
    columns = [key for key in rows[0] if key not in ("kl_dims", "curve")]
    write_csv([{key: row[key] for key in columns} for row in rows], results / "annealing.csv")
    write_csv([{"objective": row["objective"], **{f"kl_{d}": kl for d, kl in enumerate(row["kl_dims"])}} for row in rows],
              results / "kl_per_dimension.csv")
    plot(rows, results / "annealing.png", "digits" if args.quick else "Fashion-MNIST")


if __name__ == "__main__":
    main()
