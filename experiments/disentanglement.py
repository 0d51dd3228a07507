"""Does a KL weight beta > 1 disentangle? beta-VAE, beta-TCVAE, FactorVAE and capacity annealing on dSprites.

On the library's own dSprites (``data.name = "dsprites"``, default grid 3 x 6 x 10 x 8 x 8 =
11,520 binary 32 x 32 images, split 80/10/10 at random) a 10-dimensional VAE is trained with

- beta-VAE (Higgins et al. 2017): ``objective.kl_weight = beta``, beta in {1, 4, 16};
- beta-TCVAE (Chen et al. 2018): ``estimator = { name = "tcvae", beta = b }``, b in {4, 16}
  (alpha = gamma = 1; at b = 1 it is the VAE's loss exactly, so the beta = 1 runs serve both);
- FactorVAE (Kim & Mnih 2018): ``estimator = { name = "factorvae", gamma = g }``, g in {10, 40};
- capacity annealing (Burgess et al. 2018): ``capacity = { start = 0, end = 15, gamma = 100 }``
  over the whole run;

each with several seeds, and every run is scored on the whole grid (the means of q(z | x) of all
11,520 images) by MIG, the FactorVAE score, DCI (lasso) and the total correlation of the codes,
and on the test split by the true ELBO and its reconstruction term. Writes, under
``experiments/results/disentanglement/``: one JSON per run (``per_run/``), ``results.csv`` (every
run), ``summary.csv`` (mean and standard deviation over seeds), ``mig_vs_beta.png`` and
``traversals.png``.

    python experiments/disentanglement.py --quick     # a small grid, one seed: about 30 s
    python experiments/disentanglement.py             # the write-up's numbers (resumable)
    # a run whose per_run/ record exists is not trained again: delete the record to retrain it
    # (--quick keeps its records in runs/, so a clean checkout trains the quick grid afresh)
    python experiments/disentanglement.py --report    # tables and figures from the runs so far
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import write_csv

from pyro_vae import train
from pyro_vae.build import build_data
from pyro_vae.disentanglement import evaluate_disentanglement
from pyro_vae.evaluation import evaluate_elbo
from pyro_vae.runs import load_run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "disentanglement"


def methods(quick, epochs):
    """(method, the weight's name, its value, the [objective] table) for every configuration."""
    betas, tc_betas, gammas = ([1.0, 4.0], [4.0], [10.0]) if quick else ([1.0, 4.0, 16.0], [4.0, 16.0], [10.0, 40.0])
    found = [("beta-VAE", "beta", b, {"kl_weight": b}) for b in betas]
    found += [("beta-TCVAE", "beta", b, {"estimator": {"name": "tcvae", "beta": b}}) for b in tc_betas]
    found += [("FactorVAE", "gamma", g, {"estimator": {"name": "factorvae", "gamma": g}}) for g in gammas]
    found += [("capacity", "C_max", 15.0, {"capacity": {"start": 0.0, "end": 15.0, "epochs": epochs, "gamma": 100.0}})]
    return found


def config_for(quick, objective, seed, epochs):
    data = {"name": "dsprites"}
    if quick:
        data.update(grid=[3, 3, 4, 6, 6], image_size=16)
    hidden = [128] if quick else [256, 256]
    return {
        "data": data,
        "model": {
            "latent_dim": 10,
            "encoder": {"name": "mlp", "hidden": hidden},
            "decoder": {"name": "mlp", "hidden": hidden},
            "likelihood": "bernoulli",
        },
        "objective": objective,
        "train": {"epochs": epochs, "batch_size": 128 if not quick else 64, "lr": 1e-3, "seed": seed, "device": "cpu",
                  "progress": False, "train_eval_examples": 2000},
    }


def run_name(method, weight, value, seed):
    return f"{method}_{weight}{value:g}_seed{seed}"


def train_and_score(config, run):
    """Train, then score the last state: disentanglement on the whole grid, the true ELBO on test."""
    start = time.perf_counter()
    train(config, out=run, force=True)
    seconds = time.perf_counter() - start
    vae = load_run(run)
    data = build_data(config)
    test = evaluate_elbo(vae, data.batches("test", 1000, torch.device("cpu")))
    scores = evaluate_disentanglement(vae, data)
    return {"train_seconds": seconds, "test_elbo": test["elbo"], "test_reconstruction": test["reconstruction"],
            "test_kl": test["kl"], "active_units": test["active_units"], **scores,
            "score_seconds": time.perf_counter() - start - seconds}


def flat_row(result):
    row = {k: result[k] for k in ("method", "weight", "value", "seed", "epochs", "test_elbo", "test_reconstruction",
                                  "test_kl", "active_units", "mig", "factor_vae_score")}
    row.update({f"dci_{k}": v for k, v in result["dci"].items()})
    row["gaussian_tc"] = result["gaussian_total_correlation"]
    row["aggregate_tc"] = result.get("total_correlation", float("nan"))
    row["train_seconds"] = result["train_seconds"]
    return row


COLUMNS = ("test_elbo", "test_reconstruction", "test_kl", "mig", "factor_vae_score", "dci_disentanglement",
           "dci_completeness", "dci_informativeness", "aggregate_tc")


def summarize(rows):
    groups = {}
    for row in rows:
        groups.setdefault((row["method"], row["weight"], row["value"]), []).append(row)
    summary = []
    for (method, weight, value), members in groups.items():
        out = {"method": method, "weight": weight, "value": value, "seeds": len(members)}
        for column in COLUMNS:
            values = np.array([m[column] for m in members], dtype=float)
            out[f"{column}_mean"] = float(values.mean())
            out[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        summary.append(out)
    return summary


def markdown_table(summary, path):
    """summary.csv as a Markdown table (mean +- sd over seeds), for the write-up."""
    def cell(row, c, digits):
        mean = f"{row[f'{c}_mean']:.{digits}f}"
        return mean if row["seeds"] < 2 else f"{mean} +- {row[f'{c}_std']:.{digits}f}"
    lines = [("| method | weight | seeds | MIG | FactorVAE score | DCI disentanglement | DCI completeness | "
              "TC of q(z) (nats) | test ELBO | test reconstruction | test KL |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(summary, key=lambda r: (r["method"], r["value"])):
        lines.append(f"| {row['method']} | {row['weight']} = {row['value']:g} | {row['seeds']} | {cell(row, 'mig', 3)} | "
                     f"{cell(row, 'factor_vae_score', 3)} | {cell(row, 'dci_disentanglement', 3)} | "
                     f"{cell(row, 'dci_completeness', 3)} | {cell(row, 'aggregate_tc', 2)} | {cell(row, 'test_elbo', 2)} | "
                     f"{cell(row, 'test_reconstruction', 2)} | {cell(row, 'test_kl', 2)} |")
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def plot_mig(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"beta-VAE": ("C0", "o"), "beta-TCVAE": ("C1", "s"), "FactorVAE": ("C2", "^"), "capacity": ("C3", "D")}
    for metric, ax in zip(("mig", "factor_vae_score"), axes):
        for method, (colour, marker) in styles.items():
            members = [r for r in rows if r["method"] == method]
            if method == "beta-TCVAE":  # beta = 1 is the VAE's loss exactly: the same runs
                members += [dict(r, method=method) for r in rows if r["method"] == "beta-VAE" and r["value"] == 1.0]
            if not members:
                continue
            values = sorted({r["value"] for r in members})
            x = np.array(values)
            if method in ("FactorVAE", "capacity"):
                x = np.full(len(values), np.nan)  # not a beta: drawn as points at the right, labelled
            per = [np.array([r[metric] for r in members if r["value"] == v]) for v in values]
            seeds = [np.full(len(p), xv) for p, xv in zip(per, x)]
            if method in ("FactorVAE", "capacity"):
                base = 40 if method == "FactorVAE" else 80
                x = np.array([base * (1.25 ** i) for i in range(len(values))])
                seeds = [np.full(len(p), xv) for p, xv in zip(per, x)]
            means = np.array([p.mean() for p in per])
            if method in ("FactorVAE", "capacity"):
                for xv, v, mean in zip(x, values, means):
                    ax.annotate(f"{'gamma' if method == 'FactorVAE' else 'C'}={v:g}", (xv, mean), fontsize=7,
                                xytext=(4, 4), textcoords="offset points")
            spread = np.array([p.std(ddof=1) if len(p) > 1 else 0.0 for p in per])
            ax.errorbar(x, means, yerr=spread, color=colour, marker=marker, capsize=3, label=method,
                        linestyle="-" if method in ("beta-VAE", "beta-TCVAE") else "none")
            ax.scatter(np.concatenate(seeds), np.concatenate(per), color=colour, alpha=0.35, s=12)
        ax.set_xscale("log")
        ax.set_xlabel("beta (FactorVAE and capacity: their own weight, to the right)")
        ax.set_ylabel({"mig": "MIG", "factor_vae_score": "FactorVAE score"}[metric])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def plot_all_traversals(runs, path):
    """One panel per method (its strongest setting, seed 0): each latent dimension's traversal,
    labelled with the factor it is most informative about."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pyro_vae.plots import as_images, factor_traversals, image_grid

    fig, axes = plt.subplots(1, len(runs), figsize=(3.6 * len(runs), 5))
    axes = np.atleast_1d(axes)
    for ax, (label, run, config) in zip(axes, runs):
        vae, data = load_run(run), build_data(config)
        test = data.test
        codes = torch.cat([vae.encode(test.x[i : i + 1000]) for i in range(0, len(test), 1000)])
        images, labels, _ = factor_traversals(vae, codes, test.factors.numpy(), data.factor_names, steps=7)
        side = images.shape[-1] + 1
        ax.imshow(image_grid(as_images(images), 7), cmap="gray", vmin=0, vmax=1)
        ax.set_yticks([side * (i + 0.5) for i in range(len(labels))], labels, fontsize=7)
        ax.set_xticks([])
        ax.set_title(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small grid, one seed, 3 epochs")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default 3; quick 1)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default 25; quick 3)")
    parser.add_argument("--report", action="store_true", help="only write the tables and figures from the runs so far")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = args.epochs or (3 if args.quick else 25)
    kind = "quick" if args.quick else "full"
    results = RESULTS / ("quick" if args.quick else "")
    # the quick runs' records stay in the git-ignored runs/, so a clean checkout trains them again;
    # the full runs' records are committed (the write-up's numbers trace to them)
    records = ROOT / "runs" / "disentanglement" / "quick" / "per_run" if args.quick else results / "per_run"
    records.mkdir(parents=True, exist_ok=True)
    configurations = methods(args.quick, epochs)
    for seed in range(seeds):  # seed-major: a run cut short still has every method at the first seeds
        for method, weight, value, objective in configurations:
            name = run_name(method, weight, value, seed)
            record = records / f"{name}.json"
            if args.report or record.is_file():
                continue
            config = config_for(args.quick, objective, seed, epochs)
            run = ROOT / "runs" / "disentanglement" / kind / name
            print(f"{name}: training {run}", flush=True)
            result = {"method": method, "weight": weight, "value": value, "seed": seed, "epochs": epochs,
                      "run": str(run.relative_to(ROOT)), "objective": objective,
                      **train_and_score(config, run)}
            record.write_text(json.dumps(result, indent=1))
            print(f"  MIG {result['mig']:.3f}  FactorVAE {result['factor_vae_score']:.3f}  "
                  f"DCI-D {result['dci']['disentanglement']:.3f}  test ELBO {result['test_elbo']:.2f}  "
                  f"({result['train_seconds']:.0f} s + {result['score_seconds']:.0f} s)", flush=True)
    finished = [json.loads(p.read_text()) for p in sorted(records.glob("*.json"))]
    if not finished:
        print("no finished runs yet")
        return
    rows = [flat_row(r) for r in finished]
    write_csv(rows, results / "results.csv")
    summary = summarize(rows)
    write_csv(summary, results / "summary.csv")
    markdown_table(summary, results / "summary.md")
    title = (f"dSprites {'16x16 small grid' if args.quick else '32x32, grid 3x6x10x8x8'}; "
             f"{len(rows)} runs, up to {max(r['seed'] for r in rows) + 1} seeds; points: seeds, bars: mean +- sd")
    plot_mig(rows, results / "mig_vs_beta.png", title)
    strongest = {}
    for r in finished:
        if r["seed"] == 0 and (r["method"] not in strongest or r["value"] > strongest[r["method"]]["value"]):
            strongest[r["method"]] = r
    panels = [(f"{m} ({r['weight']} = {r['value']:g}), MIG {r['mig']:.2f}", ROOT / r["run"],
               config_for(args.quick, r["objective"], 0, r["epochs"])) for m, r in strongest.items()
              if (ROOT / r["run"] / "checkpoint.pt").is_file()]
    if panels:
        plot_all_traversals(panels, results / "traversals.png")


if __name__ == "__main__":
    main()
