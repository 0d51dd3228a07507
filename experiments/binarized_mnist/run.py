"""Reproduce published test log-likelihoods on statically binarized MNIST.

Three models, each a TOML config beside this script, in the published settings as far
as they are known and the library has them:

- ``vae.toml``: the standard VAE, one stochastic layer, MLP 784-300-300-40, N(0, I) prior,
  linear KL warm-up over 100 epochs, Adam lr 5e-4, batch 100 (Tomczak & Welling 2018's
  baseline). Published: about 88.5 to 89.9 nats.
- ``iwae.toml``: the same one-layer model trained on the IWAE bound with k = 50
  (Burda et al. 2015: 784-200-200-50 tanh, batch 20). Published: 87.1 nats.
- ``vamp.toml``: the VampPrior with 500 pseudo-inputs (Tomczak & Welling 2018). Published: 85.57.

Each is trained (``pyro_vae.train``), then evaluated with ``pyro-vae evaluate``: the
importance-sampled log p(x) with K samples per test image (K = 5000 as published) on
the best-validation checkpoint (``best.pt``, the model early stopping keeps) where the
run has one, on the whole test split or, with ``--limit N``, on N test images drawn at
random with a fixed seed (the split is sorted by class: never its first N).

Each evaluation is kept as ``experiments/results/binarized_mnist/<model>-<mode>_K<K>[_n<N>].json``,
with the run's epochs, training time, device and command beside the evaluation's own
fields; ``results.csv`` is rebuilt from those files after every run (``--table`` rebuilds
it alone), one row per file, so every row traces to one measurement. Runs go to
``runs/binarized_mnist/``.

    python experiments/binarized_mnist/run.py --quick                # digits, a minute
    python experiments/binarized_mnist/run.py                        # published epochs: days on a CPU
    python experiments/binarized_mnist/run.py --models vae --epochs 150 --samples 1000  # a CPU budget
    python experiments/binarized_mnist/run.py --models vae --skip-training --samples 5000 --limit 1000
    python experiments/binarized_mnist/run.py --table                # results.csv from the JSONs
"""

import argparse
import csv
import json
import platform
import shlex
import sys
from pathlib import Path

import torch

from pyro_vae import report
from pyro_vae.registry import UserError
from pyro_vae.runs import plot_run, read_metrics
from pyro_vae.training import train

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "experiments" / "results" / "binarized_mnist"
RUNS = ROOT / "runs" / "binarized_mnist"
MODELS = {
    "vae": ("vae.toml", "88.5-89.9", "VAE, N(0, I) prior, MLP 300-300, z = 40"),
    "iwae": ("iwae.toml", "87.1", "IWAE k = 50"),
    "vamp": ("vamp.toml", "85.57", "VampPrior, 500 pseudo-inputs"),
}
# --quick: the digits data (8x8, 1,297 training images), small nets, two epochs, K = 50.
QUICK_OVERRIDES = [
    "data.name=digits", "data.path=", "data.binarize=static", "train.epochs=2", "train.batch_size=128",
    "train.progress=false", "model.encoder.hidden=[64]", "model.decoder.hidden=[64]", "model.latent_dim=8",
]
QUICK_MODEL_OVERRIDES = {"vamp": ["model.prior.components=50"]}
# results.csv: one row per evaluation JSON, one meaning per column.
FIELDS = [
    "model", "mode", "split", "test_images", "subset_seed", "num_samples", "checkpoint", "epochs",
    "device", "train_minutes", "eval_minutes", "nll", "nll_standard_error", "elbo", "kl", "active_units",
    "published_nll", "torch", "command",
]


def device_name():
    """The device a run trains on here: the GPU's name, or the CPU and its thread count."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def evaluate_run(run, args, checkpoint, record):
    """``pyro-vae evaluate`` (``report.evaluate_run``) on the test set (all of it, or ``--limit``
    seeded random images); its JSON, with ``record`` (what was trained, how long, where) and the
    equivalent command beside it, is kept under ``results/``."""
    argv = ["evaluate", str(run), "--samples", str(args.samples), "--checkpoint", checkpoint]
    if args.limit is not None:
        argv += ["--limit", str(args.limit)]
    print("pyro-vae " + " ".join(argv), flush=True)
    try:
        result = report.evaluate_run(run, num_samples=args.samples, checkpoint=checkpoint, limit=args.limit, verbose=True)
    except UserError as error:
        sys.exit(f"error: evaluation of {run} failed: {error}")
    shown = [str(run.relative_to(ROOT)) if a == str(run) else a for a in argv]  # from the repository root
    result.update(record, evaluate_command="pyro-vae " + " ".join(shown))
    subset = f"_n{result['num_examples']}" if result.get("subset_seed") is not None else ""
    path = RESULTS / f"{record['model']}-{record['mode']}_K{args.samples}{subset}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def run_model(model, args, overrides):
    config_file, _, _ = MODELS[model]
    if args.quick:
        overrides = overrides + QUICK_MODEL_OVERRIDES.get(model, [])
    mode = "quick" if args.quick else ("full" if not args.epochs else "budget")
    run = RUNS / (model + ("-quick" if args.quick else ""))
    train_command = "python experiments/binarized_mnist/run.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:] if a != "--skip-training")
    if args.skip_training:  # evaluate a finished run: its own record of how it was trained
        record_file = run / "training.json"
        if not record_file.is_file():
            sys.exit(f"error: {record_file} not found; train {model} first (without --skip-training)")
        record = json.loads(record_file.read_text())
    else:
        print(f"== training {model}: {config_file} {' '.join(overrides)}", flush=True)
        train(HERE / config_file, out=run, force=True, overrides=overrides)
        metrics = read_metrics(run / "metrics.csv")
        record = {"model": model, "mode": mode, "epochs": int(metrics[-1]["epoch"]),
                  "train_seconds": metrics[-1]["seconds"], "device": device_name(), "torch": torch.__version__,
                  "command": train_command}
        (run / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    checkpoint = "best.pt" if (run / "best.pt").is_file() else "checkpoint.pt"
    path = evaluate_run(run, args, checkpoint, record)
    tag = f"{model}-{mode}"
    try:
        for figure in plot_run(run, checkpoint=checkpoint, out=RESULTS / tag):
            print(figure)
    except UserError as error:
        sys.exit(f"error: plotting {run} failed: {error}")
    return path


def table_row(result):
    """One results.csv row from one evaluation JSON (nothing computed beyond unit changes)."""
    return {
        "model": result["model"],
        "mode": result["mode"],
        "split": result["split"],
        "test_images": result["num_examples"],
        "subset_seed": "" if result.get("subset_seed") is None else result["subset_seed"],  # "": the whole split
        "num_samples": result["num_samples"],
        "checkpoint": result["checkpoint"],
        "epochs": result["epochs"],
        "device": result["device"],
        "train_minutes": round(result["train_seconds"] / 60, 2),
        "eval_minutes": round(result["seconds"] / 60, 2),
        "nll": round(-result["log_likelihood"], 2),
        "nll_standard_error": round(result["log_likelihood_standard_error"], 2),
        "elbo": round(result["elbo"], 2),
        "kl": round(result["kl"], 2),
        "active_units": result["active_units"],
        "published_nll": MODELS[result["model"]][1],
        "torch": result["torch"],
        "command": f"{result['command']}; {result['evaluate_command']}",
    }


def write_table():
    """results.csv, rebuilt from every evaluation JSON under results/ (one row each)."""
    order = {name: i for i, name in enumerate(MODELS)}
    modes = {"quick": 0, "budget": 1, "full": 2}
    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    rows = sorted((table_row(r) for r in results),
                  key=lambda r: (modes[r["mode"]], order[r["model"]], r["num_samples"], r["test_images"]))
    path = RESULTS / "results.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return path, rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="digits, 2 epochs, K = 50: checks the pipeline in a minute")
    p.add_argument("--models", default="vae,iwae,vamp", help="comma-separated, from: " + ", ".join(MODELS))
    p.add_argument("--epochs", type=int, help="train this many epochs instead of the published number")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key")
    p.add_argument("--samples", type=int, help="importance samples K per test image (default 5000; 50 with --quick)")
    p.add_argument("--limit", type=int, metavar="N",
                   help="evaluate on N test images drawn at random with a fixed seed (default: all of them)")
    p.add_argument("--skip-training", action="store_true", help="evaluate the runs already in runs/binarized_mnist")
    p.add_argument("--table", action="store_true", help="only rebuild results.csv from the evaluation JSONs")
    args = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.table:
        models = args.models.split(",")
        unknown = [m for m in models if m not in MODELS]
        if unknown:
            p.error(f"unknown model {unknown[0]!r}; choose from: {', '.join(MODELS)}")
        args.samples = args.samples or (50 if args.quick else 5000)
        overrides = (QUICK_OVERRIDES if args.quick else []) + ([f"train.epochs={args.epochs}"] if args.epochs else []) + args.set
        for model in models:
            print(run_model(model, args, overrides), flush=True)
    path, rows = write_table()
    print(f"\n{path}")
    for row in rows:
        subset = f"{row['test_images']} random images" if row["subset_seed"] != "" else f"all {row['test_images']} images"
        print(
            f"  {row['model']:<5} {row['mode']:<6} {row['epochs']:>5} epochs, {row['train_minutes']:>6} min on "
            f"{row['device']}: test NLL {row['nll']} +- {row['nll_standard_error']} nats (K = {row['num_samples']}, "
            f"{subset}); published {row['published_nll']}"
        )


if __name__ == "__main__":
    main()
