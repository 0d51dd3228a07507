"""Richer guides and two stochastic layers on statically binarized MNIST.

Five models, the same MLPs (300-300, ELU), Bernoulli likelihood, Adam, batch 100, the
same epochs and KL warm-up, differing only in the guide or the latent layers:

- ``normal``: the VAE of the reproduction table, z = 40, diagonal Gaussian guide;
- ``full``: the same with a full-covariance Gaussian guide (``model.guide = "full"``);
- ``iaf``: the same with an inverse autoregressive flow guide (2 steps, hidden [300]);
- ``two_layer``: z1 = z2 = 40, p(z2) p(z1 | z2) p(x | z1), guide q(z2 | x) q(z1 | x, z2);
- ``two_layer_vamp``: the same with a VampPrior (500 pseudo-inputs) on z2 (Tomczak &
  Welling 2018's HVAE setting, published 83.19 nats after up to 2000 epochs).

Each is trained with ``pyro_vae.train`` and its best-validation checkpoint evaluated on the
whole test split, or with ``--test-images N`` on a seeded random subset of it (the split is
sorted by class, so never its first N): the importance-sampled log p(x) with K samples, the ELBO, the KL (per layer), active
units, and each image's -log p(x) minus the ``normal`` model's on the same images
(``nll_minus_normal``, with its paired standard error). Results:
``experiments/results/guides/guides{_quick}.csv`` (one row per model; a run of some models
replaces only their rows); runs, and each run's per-image ``test_log_px.pt``, go to
``runs/guides/``. ``--skip-training`` re-evaluates finished runs.

    python experiments/guides.py --quick                      # digits, about a minute
    nice python experiments/guides.py --epochs 10 --samples 1000   # the CPU budget run of guides.md (whole test split)
"""

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_csv  # noqa: E402

from pyro_vae import load_run, train  # noqa: E402
from pyro_vae.build import build_data  # noqa: E402
from pyro_vae.config import load_config  # noqa: E402
from pyro_vae.evaluation import evaluate_elbo, log_likelihood  # noqa: E402
from pyro_vae.registry import UserError  # noqa: E402
from pyro_vae.runs import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "guides"
RUNS = ROOT / "runs" / "guides"
MNIST = ROOT.parent / "shared" / "data" / "binarized_mnist.npz"

MODELS = {
    "normal": [],
    "full": ["model.guide=full"],
    "iaf": ["model.guide={name='iaf', flows=2, hidden=[300], context=100}"],
    "two_layer": ["model.latent_dim=[40, 40]"],
    "two_layer_vamp": ["model.latent_dim=[40, 40]", "model.prior={name='vamp', components=500}"],
}


FIELDS = [
    "model", "guide", "latent_dim", "epochs", "best_epoch", "train_seconds", "test_images", "num_samples", "nll",
    "nll_standard_error", "nll_minus_normal", "nll_minus_normal_standard_error", "elbo", "kl", "kl_z1", "kl_z2", "active_units",
    "active_units_z1", "active_units_z2",
    "eval_seconds", "status", "command",
]


def base_overrides(args):
    net = "{name='mlp', hidden=[300, 300], activation='elu'}"
    if args.quick:
        data = ["data.name=digits", "data.path=", "data.binarize=static"]
        net = "{name='mlp', hidden=[64], activation='elu'}"
        latent = "model.latent_dim=8"
    else:
        data = ["data.name=binarized-mnist", f"data.path={args.data}", "data.binarize=none"]
        latent = "model.latent_dim=40"
    return data + [
        latent, f"model.encoder={net}", f"model.decoder={net}", "model.likelihood=bernoulli",
        f"train.epochs={args.epochs}", "train.batch_size=100", "train.lr=5e-4", "train.seed=0",
        "train.progress=false", "train.device=cpu", "train.train_eval_examples=2000",
        f"objective.kl_weight={{name='linear', start=0.0, end=1.0, epochs={args.warmup}}}",
    ]


def model_overrides(name, args):
    overrides = MODELS[name]
    if args.quick:  # small latent layers and few pseudo-inputs for the 8x8 digits
        overrides = [o.replace("[40, 40]", "[8, 8]").replace("components=500", "components=50") for o in overrides]
    return overrides


def run_model(name, args, test_x):
    overrides = base_overrides(args) + model_overrides(name, args)
    run = RUNS / (name + ("-quick" if args.quick else ""))
    print(f"== {name}: {' '.join(model_overrides(name, args))}", flush=True)
    if not args.skip_training:
        train(None, out=run, force=True, overrides=overrides)
    metrics = read_metrics(run / "metrics.csv")
    vae = load_run(run, checkpoint="best.pt")
    start = time.perf_counter()
    summary = evaluate_elbo(vae, [test_x[i : i + 500] for i in range(0, len(test_x), 500)])
    log_px = log_likelihood(vae, test_x, num_samples=args.samples, batch_size=100)
    seconds = time.perf_counter() - start
    torch.save(log_px, run / "test_log_px.pt")  # per image, for differences paired on the same images
    layers = summary.get("kl_per_layer", {})
    units = summary.get("active_units_per_layer", {})
    row = {
        "model": name,
        "guide": str(load_config(run / "config.toml")["model"]["guide"]),
        "latent_dim": str(vae.latent_dim),
        "epochs": int(metrics[-1]["epoch"]),
        "best_epoch": int(max(metrics, key=lambda r: r["val_elbo"])["epoch"]),
        "train_seconds": round(metrics[-1]["seconds"]),
        "test_images": len(test_x),
        "num_samples": args.samples,
        "nll": -log_px.mean().item(),
        "nll_standard_error": (log_px.std() / len(log_px) ** 0.5).item(),
        "elbo": summary["elbo"],
        "kl": summary["kl"],
        "kl_z1": layers.get("z1", ""),
        "kl_z2": layers.get("z2", ""),
        "active_units": summary["active_units"],
        "active_units_z1": units.get("z1", ""),
        "active_units_z2": units.get("z2", ""),
        "eval_seconds": round(seconds),
        "status": "ok",
    }
    baseline = RUNS / ("normal" + ("-quick" if args.quick else "")) / "test_log_px.pt"
    if baseline.is_file():  # the same images and K: the difference's standard error is over paired values
        difference = torch.load(baseline) - log_px  # NLL(model) - NLL(normal) per image
        row["nll_minus_normal"] = difference.mean().item()
        row["nll_minus_normal_standard_error"] = (difference.std() / len(difference) ** 0.5).item()
    print({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="digits, small nets: checks the pipeline")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: " + ", ".join(MODELS))
    p.add_argument("--epochs", type=int, default=None, help="epochs per model (default 8; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="KL warm-up epochs (default epochs // 3, at least 1)")
    p.add_argument("--samples", type=int, default=None, help="importance samples K (default 1000; 100 with --quick)")
    p.add_argument("--test-images", type=int, default=None,
                   help="a seeded random test subset of this size (default: the whole test split)")
    p.add_argument("--data", default=str(MNIST), help="the binarized MNIST .npz")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--skip-training", action="store_true", help="evaluate the runs already in runs/guides/")
    args = p.parse_args()
    # One thread: on the shared 2-core machine two threads per process made a step 10x slower.
    torch.set_num_threads(args.threads)
    args.epochs = args.epochs or (3 if args.quick else 8)
    args.warmup = args.warmup or max(args.epochs // 3, 1)
    args.samples = args.samples or (100 if args.quick else 1000)
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        sys.exit(f"error: unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")

    data = build_data(load_config(overrides=base_overrides(args)))
    # The test split is sorted by class: a seeded random subset, never the first N.
    test_x = data.test.random_subset(args.test_images).x

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"guides{'_quick' if args.quick else ''}.csv"
    # rows of models this invocation does not run are kept (a model's new row replaces its old one)
    kept = [r for r in (csv.DictReader(path.open()) if path.is_file() else []) if r["model"] not in names]
    rows = []
    for name in names:
        try:
            row = run_model(name, args, test_x)
        except UserError as error:  # a diverged run is a result too; the next model still runs
            print(f"error: {error}", flush=True)
            row = {**dict.fromkeys(FIELDS, ""), "model": name, "status": f"stopped: {str(error).split(';')[0]}"}
        # the command that trains and evaluates (--skip-training only re-evaluates a finished run)
        row["command"] = "python experiments/guides.py " + " ".join(a for a in sys.argv[1:] if a != "--skip-training")
        rows.append(row)
        order = {n: i for i, n in enumerate(MODELS)}
        merged = sorted(kept + rows, key=lambda r: order[r["model"]])
        write_csv([{k: r.get(k, "") for k in FIELDS} for r in merged], path)  # after each model: partial results survive


if __name__ == "__main__":
    main()
