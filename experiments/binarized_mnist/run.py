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
run has one. Results go to ``experiments/results/binarized_mnist/`` (``results.csv``,
each evaluation's JSON, the latent figures); runs to ``runs/binarized_mnist/``.

    python experiments/binarized_mnist/run.py --quick                # digits, a minute
    python experiments/binarized_mnist/run.py                        # published epochs: days on a CPU
    python experiments/binarized_mnist/run.py --models vae --epochs 40 --set objective.kl_weight=1.0 \\
        --limit 1000 --full-test-samples 500                         # a CPU budget (the README's)

``--limit N`` evaluates K samples on the first N test images only; with
``--full-test-samples K2`` the whole test set is also evaluated with K2 < K samples, and
the reported figure is the whole test set's K2 estimate plus the mean K-minus-K2
difference on the first N images (the same images, so the paired difference is precise),
an estimate of the K = 5000 figure on the whole test set at a fraction of the cost.
"""

import argparse
import csv
import json
import sys
from pathlib import Path

from pyro_vae.cli import main as pyro_vae_cli
from pyro_vae.runs import read_metrics
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
FIELDS = [
    "model", "mode", "epochs", "train_seconds", "checkpoint", "num_samples", "test_images",
    "nll", "nll_standard_error", "nll_full_test", "full_test_samples", "elbo", "kl", "active_units",
    "eval_seconds", "published_nll", "command",
]


def evaluate_run(run, num_samples, limit, checkpoint, name):
    """``pyro-vae evaluate`` on the test set; its JSON is kept as ``results/<name>.json``."""
    argv = ["evaluate", str(run), "--samples", str(num_samples), "--checkpoint", checkpoint]
    if limit is not None:
        argv += ["--limit", str(limit)]
    print("pyro-vae " + " ".join(argv), flush=True)
    if pyro_vae_cli(argv) != 0:
        sys.exit(f"error: evaluation of {run} failed")
    result = json.loads((run / "evaluation.json").read_text())
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def run_model(model, args, overrides):
    config_file, published, _ = MODELS[model]
    if args.quick:
        overrides = overrides + QUICK_MODEL_OVERRIDES.get(model, [])
    mode = "quick" if args.quick else ("full" if not args.epochs else "budget")
    run = RUNS / (model + ("-quick" if args.quick else ""))
    if not args.skip_training:
        print(f"== training {model}: {config_file} {' '.join(overrides)}", flush=True)
        train(HERE / config_file, out=run, force=True, overrides=overrides)
    metrics = read_metrics(run / "metrics.csv")
    checkpoint = "best.pt" if (run / "best.pt").is_file() else "checkpoint.pt"
    tag = f"{model}-{mode}"
    result = evaluate_run(run, args.samples, args.limit, checkpoint, f"{tag}_K{args.samples}")
    row = {
        "model": model,
        "mode": mode,
        "epochs": int(metrics[-1]["epoch"]),
        "train_seconds": round(metrics[-1]["seconds"]),
        "checkpoint": checkpoint,
        "num_samples": args.samples,
        "test_images": result["num_examples"],
        "nll": round(-result["log_likelihood"], 2),
        "nll_standard_error": round(result["log_likelihood_standard_error"], 2),
        "elbo": round(result["elbo"], 2),
        "kl": round(result["kl"], 2),
        "active_units": result["active_units"],
        "eval_seconds": round(result["seconds"]),
        "published_nll": published,
        # the command that trains and evaluates (--skip-training only reuses a finished run)
        "command": "python experiments/binarized_mnist/run.py "
        + " ".join(a for a in sys.argv[1:] if a != "--skip-training"),
    }
    if args.full_test_samples and args.limit is not None:
        subset = evaluate_run(run, args.full_test_samples, args.limit, checkpoint, f"{tag}_K{args.full_test_samples}_subset")
        full = evaluate_run(run, args.full_test_samples, None, checkpoint, f"{tag}_K{args.full_test_samples}")
        gain = result["log_likelihood"] - subset["log_likelihood"]  # what K adds over K2, on the same images
        row.update(nll_full_test=round(-(full["log_likelihood"] + gain), 2), full_test_samples=args.full_test_samples)
        # the ELBO, KL and active units of the whole test set, not of its first N images
        row.update(elbo=round(full["elbo"], 2), kl=round(full["kl"], 2), active_units=full["active_units"])
        row["eval_seconds"] += round(subset["seconds"] + full["seconds"])
    if pyro_vae_cli(["plot", str(run), "--checkpoint", checkpoint, "--out", str(RESULTS / tag)]) != 0:
        sys.exit(f"error: plotting {run} failed")
    return row


def save_rows(rows):
    """Merge into results.csv, one row per (model, mode): a new run replaces its old row."""
    path = RESULTS / "results.csv"
    old = list(csv.DictReader(path.open())) if path.is_file() else []
    keys = {(r["model"], r["mode"]) for r in rows}
    merged = [r for r in old if (r["model"], r["mode"]) not in keys] + rows
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in FIELDS} for r in merged)
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="digits, 3 epochs, K = 50: checks the pipeline in a minute")
    p.add_argument("--models", default="vae,iwae,vamp", help="comma-separated, from: " + ", ".join(MODELS))
    p.add_argument("--epochs", type=int, help="train this many epochs instead of the published number")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key")
    p.add_argument("--samples", type=int, help="importance samples K per test image (default 5000; 50 with --quick)")
    p.add_argument("--limit", type=int, help="evaluate K samples on the first N test images only")
    p.add_argument("--full-test-samples", type=int, help="with --limit: also the whole test set with this K")
    p.add_argument("--skip-training", action="store_true", help="evaluate the runs already in runs/binarized_mnist")
    args = p.parse_args()
    models = args.models.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        p.error(f"unknown model {unknown[0]!r}; choose from: {', '.join(MODELS)}")
    args.samples = args.samples or (50 if args.quick else 5000)
    overrides = (QUICK_OVERRIDES if args.quick else []) + ([f"train.epochs={args.epochs}"] if args.epochs else []) + args.set
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = [run_model(model, args, overrides) for model in models]
    path = save_rows(rows)
    print(f"\n{path}")
    for row in rows:
        full = f", whole test set ~{row['nll_full_test']}" if row.get("nll_full_test") else ""
        print(
            f"  {row['model']:<5} {row['epochs']:>5} epochs {row['train_seconds']:>6} s: test NLL {row['nll']} "
            f"+- {row['nll_standard_error']} nats (K = {row['num_samples']}, {row['test_images']} images{full}); "
            f"published {row['published_nll']}"
        )


if __name__ == "__main__":
    main()
