"""Reproduce published test log-likelihoods on statically binarized MNIST: each model a sweep of its
config (`binarized_mnist/{vae,iwae,vamp}.toml`) at the CPU budget that was run.

The configs hold the published settings as far as they are known and the library has them:

- `vae.toml`: the standard VAE, one stochastic layer, MLP 784-300-300-40, N(0, I) prior, linear KL
  warm-up over 100 epochs, Adam lr 5e-4, batch 100 (Tomczak & Welling 2018's baseline).
  Published: about 88.5 to 89.9 nats.
- `iwae.toml`: the same one-layer model trained on the IWAE bound with k = 50 (Burda et al. 2015:
  784-200-200-50 tanh, batch 20). Published: 87.1 nats.
- `vamp.toml`: the VampPrior with 500 pseudo-inputs (Tomczak & Welling 2018). Published: 85.57.

Their published epochs take days on a CPU (`pyro-vae train experiments/binarized_mnist/vae.toml`
runs one); this script trains each at the budget of `BUDGETS` and evaluates the best-validation
checkpoint (`best.pt`) on all 10,000 test images with K importance samples (the sweep's
`evaluate`: each run's evaluation.json). Writes `results.csv` (a row a model: NLL, its standard
error, ELBO, KL, active units, epochs, minutes, the published NLL), `<model>-<mode>_K<K>.json` (the
evaluation record) and `<model>-<mode>/` (codes and traversals). `--quick`: digits (8 x 8, 1,297
training images), small nets, 2 epochs, K = 50, under runs/binarized_mnist/quick/; the full run
reads ../shared/data/binarized_mnist.npz.

    python experiments/binarized_mnist.py --quick    # a minute or two
    python experiments/binarized_mnist.py            # about an hour of training and 1.5 of evaluation on 2 cores
    python experiments/binarized_mnist.py --report   # the table and figures from the runs so far
"""

import platform
from pathlib import Path

from common import ROOT, arguments, places, read_spec, run_sweep, write_csv

CONFIGS = Path(__file__).resolve().parent / "binarized_mnist"
PUBLISHED = {"vae": "88.5-89.9", "iwae": "87.1", "vamp": "85.57"}
# what was run on 2 CPU cores (binarized_mnist.md): the grid of each model's sweep, and K
BUDGETS = {
    "vae": ({"train.epochs": [150]}, 5000),
    "iwae": ({"train.epochs": [8]}, 1000),
    "vamp": ({"train.epochs": [50],  # the warm-up shortened in proportion
              "objective.kl_weight": [{"name": "linear", "start": 0.0, "end": 1.0, "epochs": 33}]}, 500),
}


def model_spec(model, quick):
    """The model's config as a one-run sweep: its budget, or the quick version on digits."""
    spec = read_spec(CONFIGS / f"{model}.toml")
    grid, samples = BUDGETS[model]
    if quick:
        spec["data"] = {"name": "digits", "binarize": "static"}
        for net in ("encoder", "decoder"):
            spec["model"][net]["hidden"] = [64]
        spec["model"]["latent_dim"] = 8
        if model == "vamp":
            spec["model"]["prior"]["components"] = 50
        spec["train"].update(batch_size=128, progress=False)
        grid, samples = {"train.epochs": [2]}, 50
    spec["sweep"] = {"grid": grid, "objective": "log_likelihood", "evaluate": {"samples": samples}}
    return spec


def device_name():
    """The device here: the GPU's name, or the CPU and its thread count."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def table_row(model, mode, trial, command):
    """One results.csv row from a trial with its evaluation record (nothing computed beyond units)."""
    import torch

    from pyro_vae.runs import read_metrics

    metrics = read_metrics(Path(trial["run"]) / "metrics.csv")
    return {"model": model, "mode": mode, "split": "test", "test_images": trial["num_examples"],
            "subset_seed": "", "num_samples": trial["num_samples"], "checkpoint": "best.pt",
            "epochs": int(metrics[-1]["epoch"]), "device": device_name(),
            "train_minutes": round(metrics[-1]["seconds"] / 60, 2), "eval_minutes": round(trial["seconds"] / 60, 2),
            "nll": round(-trial["log_likelihood"], 2),
            "nll_standard_error": round(trial["log_likelihood_standard_error"], 2),
            "elbo": round(trial["elbo"], 2), "kl": round(trial["kl"], 2), "active_units": trial["active_units"],
            "published_nll": PUBLISHED[model], "torch": torch.__version__, "command": command}


def main():
    from pyro_vae.atomic import write_text_atomically
    from pyro_vae.runs import plot_run

    args = arguments(__doc__)
    results, runs = places("binarized_mnist", args.quick)
    mode = "quick" if args.quick else "budget"
    command = "python experiments/binarized_mnist.py" + (" --quick" if args.quick else "")
    rows = []
    for model in PUBLISHED:
        trials = run_sweep(model_spec(model, args.quick), runs / model, workers=args.workers,
                           report_only=args.report)
        for trial in (t for t in trials if t["state"] == "COMPLETE"):
            row = table_row(model, mode, trial, command)
            rows.append(row)
            evaluation = Path(trial["run"]) / "evaluation.json"
            write_text_atomically(results / f"{model}-{mode}_K{row['num_samples']}.json", evaluation.read_text())
            for figure in plot_run(trial["run"], checkpoint="best.pt", out=results / f"{model}-{mode}"):
                print(figure)
            print(f"  {model:<5} {row['epochs']:>5} epochs, {row['train_minutes']:>6} min: test NLL {row['nll']} +- "
                  f"{row['nll_standard_error']} nats (K = {row['num_samples']}); published {row['published_nll']}")
    if rows:
        write_csv(rows, results / "results.csv")
    print(f"runs in {runs.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
