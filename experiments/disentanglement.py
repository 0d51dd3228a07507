"""Does a KL weight beta > 1 disentangle? beta-VAE, beta-TCVAE, FactorVAE and capacity annealing on
dSprites, at 1,800 and at 18,000 steps a run: a sweep (`disentanglement.toml`).

A 10-dimensional VAE on the library's dSprites (3 x 6 x 10 x 8 x 8 binary 32 x 32 images) with
beta-VAE (kl_weight 1, 4, 16), beta-TCVAE (beta 4, 16), FactorVAE (gamma 10, 40) and capacity
annealing (C to 15 nats), 3 seeds, each scored at its last state on the test split by MIG, the
FactorVAE score, DCI (lasso), the total correlation of q(z), the true ELBO and the IS
log-likelihood (the sweep's `evaluate`: each run's evaluation.json). Writes `results.csv` (a row a
run), `summary.csv`, `summary.md` (mean +- sd over seeds, both budgets side by side),
`scores_by_budget.png` and `traversals.png`.

    python experiments/disentanglement.py --quick     # a small grid, one seed, 3 epochs: about a minute
    python experiments/disentanglement.py             # the write-up's 48 runs (resumable: the same command continues)
    python experiments/disentanglement.py --report    # tables and figures from the runs so far
"""

import math
from pathlib import Path

import numpy as np
from common import ROOT, arguments, cell, completed_trials, component, markdown_table, summarize, write_csv

from pyro_vae.runs import read_metrics

# a column of the tables: its key in the run's evaluation record (flattened)
SCORES = {"mig": "disentanglement_mig", "factor_vae_score": "disentanglement_factor_vae_score",
          "dci_disentanglement": "disentanglement_dci_disentanglement",
          "dci_completeness": "disentanglement_dci_completeness",
          "total_correlation": "disentanglement_total_correlation", "elbo": "elbo", "reconstruction": "reconstruction",
          "kl": "kl", "log_likelihood": "log_likelihood", "active_units": "active_units"}


def quick_spec(spec):
    """16 x 16 images of a 3 x 3 x 4 x 6 x 6 grid, smaller networks, 3 epochs, one seed, 5 configurations."""
    spec["data"].update(grid=[3, 3, 4, 6, 6], image_size=16)
    spec["model"].update(encoder={"name": "mlp", "hidden": [128]}, decoder={"name": "mlp", "hidden": [128]})
    spec["train"]["batch_size"] = 64
    spec["sweep"]["evaluate"]["samples"] = 10
    spec["sweep"]["grid"] = [
        {"train.epochs": [3], "objective.kl_weight": [1.0, 4.0], "train.seed": [0]},
        {"train.epochs": [3], "objective.estimator": [{"name": "tcvae", "beta": 4.0}, {"name": "factorvae", "gamma": 10.0}],
         "train.seed": [0]},
        {"train.epochs": [3], "objective.capacity": [{"start": 0.0, "end": 15.0, "epochs": 3, "gamma": 100.0}],
         "train.seed": [0]}]
    return spec


def method(row):
    """(method, its weight's name, the weight) of a trial row."""
    if row["objective.kl_weight"] is not None:
        return "beta-VAE", "beta", float(row["objective.kl_weight"])
    if row["objective.capacity"] is not None:
        return "capacity", "C_max", 15.0
    estimator = component(row["objective.estimator"])
    return (("beta-TCVAE", "beta", estimator["beta"]) if estimator["name"] == "tcvae"
            else ("FactorVAE", "gamma", estimator["gamma"]))


def table_rows(trials):
    rows = []
    for trial in trials:
        name, weight, value = method(trial)
        steps = read_metrics(f"{trial['run']}/metrics.csv")[-1]["step"]
        rows.append({"method": name, "weight": weight, "value": value, "seed": int(trial["train.seed"]),
                     "epochs": int(trial["train.epochs"]), "steps": int(steps),
                     **{score: trial.get(key) for score, key in SCORES.items()}, "train_seconds": trial["seconds"],
                     "run": str(Path(trial["run"]).relative_to(ROOT))})
    return sorted(rows, key=lambda r: (r["method"], r["value"], r["steps"], r["seed"]))


def summary_table(summary, path):
    """summary.csv as Markdown: mean +- sd over seeds, each configuration's budgets on adjacent lines."""
    columns = [("MIG", "mig", 3), ("FactorVAE score", "factor_vae_score", 3), ("DCI disentanglement", "dci_disentanglement", 3),
               ("DCI completeness", "dci_completeness", 3), ("TC of q(z) (nats)", "total_correlation", 2),
               ("test ELBO", "elbo", 2), ("test reconstruction", "reconstruction", 2), ("test KL", "kl", 2)]
    markdown_table(summary, [("method", lambda r: r["method"]), ("weight", lambda r: f"{r['weight']} = {r['value']:g}"),
                             ("steps", lambda r: f"{r['steps']:,}"), ("seeds", lambda r: r["n"])]
                   + [(header, lambda r, c=column, d=digits: cell(r, c, d)) for header, column, digits in columns], path)


def plot_scores(rows, path):
    """MIG and FactorVAE score of every configuration at each budget: seeds as dots, means as bars."""
    from matplotlib.figure import Figure

    configs = sorted({(r["method"], r["weight"], r["value"]) for r in rows})
    budgets = sorted({r["steps"] for r in rows})
    figure = Figure(figsize=(11, 4))
    for index, metric in enumerate(("mig", "factor_vae_score")):
        axis = figure.add_subplot(1, 2, index + 1)
        for b, steps in enumerate(budgets):
            offset = (b - (len(budgets) - 1) / 2) * 0.35
            for x, config in enumerate(configs):
                values = [r[metric] for r in rows if (r["method"], r["weight"], r["value"]) == config
                          and r["steps"] == steps]
                if values:
                    axis.bar(x + offset, np.mean(values), width=0.33, color=f"C{b}", alpha=0.5,
                             label=f"{steps:,} steps" if x == 0 else None)
                    axis.plot([x + offset] * len(values), values, "k.", markersize=4)
        axis.set_xticks(range(len(configs)), [f"{m}\n{w}={v:g}" for m, w, v in configs], fontsize=7)
        axis.set_ylabel({"mig": "MIG", "factor_vae_score": "FactorVAE score"}[metric])
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("dSprites, 10 latents; bars: mean over seeds, dots: seeds", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def plot_traversals(rows, path):
    """Per method its strongest setting at the longest budget, seed 0: each latent dimension's
    traversal, labelled with the factor it is most informative about."""
    import torch
    from matplotlib.figure import Figure

    from pyro_vae.plots import as_images, factor_traversals, image_grid
    from pyro_vae.runs import load_run_data

    longest = max(r["steps"] for r in rows)
    strongest = {}
    for r in rows:
        if r["seed"] == 0 and r["steps"] == longest and r["value"] >= strongest.get(r["method"], {"value": -1})["value"]:
            strongest[r["method"]] = r
    figure = Figure(figsize=(3.6 * len(strongest), 5))
    for index, (name, r) in enumerate(sorted(strongest.items())):
        vae, data = load_run_data(ROOT / r["run"])
        test = data.test
        codes = torch.cat([vae.encode(test.x[i : i + 1000]) for i in range(0, len(test), 1000)])
        images, labels, _ = factor_traversals(vae, codes, test.factors.numpy(), data.factor_names, steps=7)
        axis = figure.add_subplot(1, len(strongest), index + 1)
        side = images.shape[-1] + 1
        axis.imshow(image_grid(as_images(images), 7), cmap="gray", vmin=0, vmax=1)
        axis.set_yticks([side * (i + 0.5) for i in range(len(labels))], labels, fontsize=7)
        axis.set_xticks([])
        axis.set_title(f"{name} ({r['weight']} = {r['value']:g}), MIG {r['mig']:.2f}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def main():
    args = arguments(__doc__)
    results, _, trials = completed_trials("disentanglement", args, quick_spec)
    rows = table_rows(trials)
    if not rows:
        print("no finished runs yet")
        return
    write_csv(rows, results / "results.csv")
    summary = summarize(rows, ("method", "weight", "value", "steps"), SCORES)
    write_csv(summary, results / "summary.csv")
    summary_table(summary, results / "summary.md")
    plot_scores(rows, results / "scores_by_budget.png")
    if all(not math.isnan(r["mig"]) for r in rows):
        plot_traversals(rows, results / "traversals.png")


if __name__ == "__main__":
    main()
