"""Richer guides and two stochastic layers on statically binarized MNIST: a sweep (`guides.toml`).

Five models, the same MLPs (300-300, ELU), Bernoulli likelihood, Adam, batch 100, the same epochs
and KL warm-up, differing only in the guide or the latent layers:

- `normal`: the VAE of the reproduction table, z = 40, diagonal Gaussian guide;
- `full`: the same with a full-covariance Gaussian guide (`model.guide = "full"`);
- `iaf`: the same with an inverse autoregressive flow guide (2 steps, hidden [300]);
- `two_layer`: z1 = z2 = 40, p(z2) p(z1 | z2) p(x | z1), guide q(z2 | x) q(z1 | x, z2);
- `two_layer_vamp`: the same with a VampPrior (500 pseudo-inputs) on z2 (Tomczak & Welling
  2018's HVAE setting, published 83.19 nats after up to 2000 epochs).

Each best-validation checkpoint is scored on the whole test split by the sweep's `evaluate` (the
importance-sampled log p(x) with K samples, the ELBO, the KL and active units per layer); the
report adds each image's -log p(x) minus the `normal` model's on the same images and K
(`nll_minus_normal`, with its paired standard error). Writes `guides.csv` (a row a model).

    python experiments/guides.py --quick     # digits, small nets, 3 epochs: about a minute
    python experiments/guides.py             # the CPU budget run of guides.md (resumable: the same command continues)
    python experiments/guides.py --report    # the table from the runs so far
"""

import json
import sys

from common import ROOT, arguments, places, read_spec, run_sweep, write_csv

HERE = __file__.rsplit("/", 1)[0]
FIELDS = ["model", "guide", "latent_dim", "epochs", "best_epoch", "train_seconds", "test_images", "num_samples", "nll",
          "nll_standard_error", "nll_minus_normal", "nll_minus_normal_standard_error", "elbo", "kl", "kl_z1", "kl_z2",
          "active_units", "active_units_z1", "active_units_z2", "eval_seconds", "status", "command"]


def quick_spec(spec):
    """The 8x8 digits statically binarized, one hidden layer of 64, latent 8 (8 + 8), 50 pseudo-inputs,
    3 epochs (1 of warm-up), K = 100."""
    net = {"name": "mlp", "hidden": [64], "activation": "elu"}
    spec["data"] = {"name": "digits", "binarize": "static"}
    spec["model"].update(latent_dim=8, encoder=net, decoder=net)
    spec["objective"]["kl_weight"]["epochs"] = 1
    spec["train"]["epochs"] = 3
    spec["sweep"]["evaluate"]["samples"] = 100
    two_layers = spec["sweep"]["grid"][1]
    two_layers["model.latent_dim"] = [[8, 8]]
    two_layers["model.prior"][1]["components"] = 50
    return spec


def model_name(trial):
    if trial["model.prior"] is not None:
        return "two_layer_vamp" if "vamp" in trial["model.prior"] else "two_layer"
    guide = trial["model.guide"]
    return json.loads(guide)["name"] if guide.startswith("{") else guide


def test_log_px(trial, evaluate):
    """Each test image's log p(x) (`evaluation.log_likelihood`): the same images, K and noise as the
    run's evaluation record, whose mean it is; differences paired on images have small standard errors."""
    from pyro_vae.evaluation import log_likelihood
    from pyro_vae.runs import limited_split, load_run_data

    vae, data = load_run_data(trial["run"], evaluate.get("checkpoint", "best.pt"))
    x = limited_split(data.test, evaluate.get("limit"))[0].x
    return log_likelihood(vae, x, evaluate["samples"], batch_size=100)


def model_row(trial, log_px, normal_log_px, command):
    """The row of `guides.csv`; the trial's `seconds` are its evaluation's (the record's, flattened in)."""
    from pyro_vae.config import load_config
    from pyro_vae.runs import read_metrics

    if trial["state"] != "COMPLETE":
        return {"model": model_name(trial), "status": trial["state"].lower(), "command": command}
    metrics, model = read_metrics(f"{trial['run']}/metrics.csv"), load_config(f"{trial['run']}/config.toml")["model"]
    difference = normal_log_px - log_px if normal_log_px is not None else None  # NLL(model) - NLL(normal) per image
    return {"model": model_name(trial), "guide": str(model["guide"]), "latent_dim": str(model["latent_dim"]),
            "epochs": int(metrics[-1]["epoch"]), "best_epoch": int(max(metrics, key=lambda r: r["val_elbo"])["epoch"]),
            "train_seconds": round(metrics[-1]["seconds"]), "test_images": trial["num_examples"],
            "num_samples": trial["num_samples"], "nll": -trial["log_likelihood"],
            "nll_standard_error": trial["log_likelihood_standard_error"],
            "nll_minus_normal": "" if difference is None else difference.mean().item(),
            "nll_minus_normal_standard_error": "" if difference is None else (difference.std() / len(difference) ** 0.5).item(),
            "elbo": trial["elbo"], "kl": trial["kl"], "kl_z1": trial.get("kl_per_layer_z1", ""),
            "kl_z2": trial.get("kl_per_layer_z2", ""), "active_units": trial["active_units"],
            "active_units_z1": trial.get("active_units_per_layer_z1", ""),
            "active_units_z2": trial.get("active_units_per_layer_z2", ""), "eval_seconds": round(trial["seconds"]),
            "status": "ok", "command": command}


def main():
    args = arguments(__doc__)
    results, runs = places("guides", args.quick)
    spec = read_spec(f"{HERE}/guides.toml")
    spec["data"]["path"] = str(ROOT / spec["data"]["path"])
    spec = quick_spec(spec) if args.quick else spec
    trials = run_sweep(spec, runs, workers=args.workers, report_only=args.report)
    log_px = {t["number"]: test_log_px(t, spec["sweep"]["evaluate"]) for t in trials if t["state"] == "COMPLETE"}
    normal = next((log_px[t["number"]] for t in trials if model_name(t) == "normal" and t["number"] in log_px), None)
    command = "python experiments/guides.py" + " --quick" * args.quick
    rows = [model_row(t, log_px.get(t["number"]), normal, command) for t in trials]
    write_csv([{field: row.get(field, "") for field in FIELDS} for row in rows], results / "guides.csv")


if __name__ == "__main__":
    sys.exit(main())
