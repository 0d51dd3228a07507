"""Richer guides and two stochastic layers on statically binarized MNIST: a sweep (`guides.toml`) of five
models that differ only in the guide or the latent layers, scored by each run's evaluation.json; the
report adds each model's -log p(x) minus the `normal` model's, paired on the same images and K
(experiments/guides.md). Writes `guides.csv` (a row a model).

    python experiments/guides.py --quick     # digits, small nets, 3 epochs: about a minute
    python experiments/guides.py             # the CPU budget run of guides.md (resumable: the same command continues)
    python experiments/guides.py --report    # the table from the runs so far
"""


from common import ROOT, arguments, component, places, read_spec, run_sweep, write_csv

HERE = __file__.rsplit("/", 1)[0]
FIELDS = ["model", "guide", "latent_dim", "epochs", "best_epoch", "train_seconds", "test_images", "num_samples", "nll",
          "nll_standard_error", "nll_minus_normal", "nll_minus_normal_standard_error", "elbo", "kl", "kl_z1", "kl_z2",
          "active_units", "active_units_z1", "active_units_z2", "eval_seconds", "status", "command"]


def quick_spec(spec):
    """The 8x8 digits, one hidden layer of 64, latent 8 (8 + 8), 50 pseudo-inputs, 3 epochs (1 of warm-up), K = 100."""
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
    return component(trial["model.guide"])["name"]


def test_log_px(trial, evaluate):
    """Each test image's log p(x) with the images, K and noise of the run's evaluation record (its mean)."""
    from pyro_vae.evaluation import log_likelihood
    from pyro_vae.runs import limited_split, load_run_data

    vae, data = load_run_data(trial["run"], evaluate.get("checkpoint", "best.pt"))
    x = limited_split(data.test, evaluate.get("limit"))[0].x
    return log_likelihood(vae, x, evaluate["samples"], batch_size=100)


def model_row(trial, log_px, normal_log_px, command):
    """The row of `guides.csv` (a run not finished: its status alone)."""
    from pyro_vae.config import load_config
    from pyro_vae.runs import read_metrics

    row = {"model": model_name(trial), "status": trial["state"].lower(), "command": command}
    if trial["state"] != "COMPLETE":
        return row
    metrics, model = read_metrics(f"{trial['run']}/metrics.csv"), load_config(f"{trial['run']}/config.toml")["model"]
    row.update(guide=str(model["guide"]), latent_dim=str(model["latent_dim"]), epochs=int(metrics[-1]["epoch"]),
               best_epoch=int(max(metrics, key=lambda r: r["val_elbo"])["epoch"]),
               train_seconds=round(metrics[-1]["seconds"]), test_images=trial["num_examples"],
               num_samples=trial["num_samples"], nll=-trial["log_likelihood"],
               nll_standard_error=trial["log_likelihood_standard_error"], elbo=trial["elbo"], kl=trial["kl"],
               active_units=trial["active_units"], eval_seconds=round(trial["evaluation_seconds"]), status="ok")
    for layer in ("z1", "z2"):  # the two-layer models'
        row[f"kl_{layer}"] = trial.get(f"kl_per_layer_{layer}", "")
        row[f"active_units_{layer}"] = trial.get(f"active_units_per_layer_{layer}", "")
    if normal_log_px is not None:
        difference = normal_log_px - log_px  # NLL(model) - NLL(normal), image by image
        row["nll_minus_normal"] = difference.mean().item()
        row["nll_minus_normal_standard_error"] = (difference.std() / len(difference) ** 0.5).item()
    return row


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
    write_csv([{field: row.get(field, "") for field in FIELDS} for row in rows], results / "guides.csv")  # in order


if __name__ == "__main__":
    main()
