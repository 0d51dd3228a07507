"""ELBO gradient estimators compared: variance, speed, and what they buy in the end: a sweep (`compare_estimators.toml`,
estimators x seeds); the report adds each run's gradient noise and ms per step (experiments/compare_estimators.md).

    python experiments/compare_estimators.py --quick    # digits, K = 100 on the whole test split: a minute or two
    python experiments/compare_estimators.py            # binarized MNIST (resumable: the same command continues)
    python experiments/compare_estimators.py --report   # the tables and the figure from the runs so far

Writes `compare_estimators.csv` (a row a run), `summary.csv` (mean +- sd over seeds), `compare_estimators.json`
(curves, decoder numbers) and `compare_estimators.png` to `experiments/results/compare_estimators/`
(`runs/compare_estimators/quick/` with `--quick`).
"""

import json
import sys
from pathlib import Path

import pyro
import torch
from common import ROOT, arguments, places, read_spec, run_sweep, summarize, write_csv

from pyro_vae.atomic import write_text_atomically
from pyro_vae.build import build, build_data, build_estimator
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.config import load_config
from pyro_vae.objectives.gradient_variance import gradient_variance
from pyro_vae.runs import load_run, read_metrics

MNIST = ROOT.parent / "shared" / "data" / "binarized_mnist.npz"
# the table's names of the estimators that are tables in the spec (as JSON in a trial's row)
NAMES = {'{"baseline": "none", "name": "score"}': "score", '{"baseline": "neural", "name": "score"}': "score + neural",
         '{"baseline": "decaying_average", "name": "score"}': "score + average", '{"alpha": 0.5, "name": "renyi"}': "renyi a=0.5"}
COLUMNS = ["grad_var", "snr", "ms_per_step", "test_elbo", "test_log_likelihood", "grad_var_init", "snr_init", "steps"]


def quick_spec(spec):
    """Digits, a 64-64-4 VAE, 4 epochs at lr 3e-3, K = 100 on the whole test split."""
    net = {"name": "mlp", "hidden": [64], "activation": "elu"}
    spec["data"] = {"name": "digits", "binarize": "static"}
    spec["model"].update(latent_dim=4, encoder=net, decoder=net)
    spec["train"].update(epochs=4, lr=3e-3)
    spec["sweep"]["evaluate"].update(samples=100, limit=250)
    return spec


def label(trial):
    name = NAMES.get(trial["objective.estimator"], trial["objective.estimator"])
    particles = trial.get("objective.num_particles")
    return name + (" (jit)" if trial.get("objective.jit") else "") + (f" K={particles}" if particles else "")


def gradient_noise(run, draws):
    """The encoder's gradient noise at the run's initialization (drawn as `train` draws it) and at its
    last state (with its estimator's state: a trained baseline), and the decoder's at its last state."""
    config = load_config(Path(run) / "config.toml")
    pyro.set_rng_seed(config["train"]["seed"])
    data = build_data(config)
    start = build(config, data, torch.device("cpu"))
    probe = data.train.x[:100]
    estimator = build_estimator(config, data.shape, len(data.train))
    estimator.load_state_dict(load_checkpoint(Path(run) / "checkpoint.pt")["estimator"])
    vae = load_run(run)
    with pyro.validation_enabled(False):
        return (gradient_variance(start.vae, start.estimator, probe, draws, "encoder"),
                gradient_variance(vae, estimator, probe, draws, "encoder"),
                gradient_variance(vae, estimator, probe, draws, "decoder"))


def table(trials, draws):
    """A row a finished run (the CSV's columns), and per label its curve and decoder numbers."""
    rows, extras = [], {}
    for trial in (trial for trial in trials if trial["state"] == "COMPLETE"):  # in the grid's order
        init, final, decoder = gradient_noise(trial["run"], draws)
        metrics = read_metrics(Path(trial["run"]) / "metrics.csv")
        steps = int(metrics[-1]["step"])
        rows.append({"estimator": label(trial), "grad_var": final["trace_covariance"], "snr": final["snr"],
                     "ms_per_step": 1000 * trial["seconds"] / steps, "test_elbo": trial["elbo"],
                     "test_log_likelihood": trial["log_likelihood"], "grad_var_init": init["trace_covariance"],
                     "snr_init": init["snr"], "steps": steps, "seed": trial["train.seed"]})
        print(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()), flush=True)
        extras.setdefault(label(trial), {
            "curve": [{key: float(m[key]) for key in ("step", "seconds", "val_elbo")} for m in metrics],
            "decoder_grad_var": decoder["trace_covariance"], "decoder_snr": decoder["snr"],
            "active_units": trial["active_units"], "test_kl": trial["kl"]})
    return rows, extras


def plot(curves, path):
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2, sharey=True)
    colors = colormaps["tab20"](list(range(0, 20, 2)) + list(range(1, 20, 2)))
    for color, (name, curve) in zip(colors, curves.items()):
        for axis, key in zip(axes, ("step", "seconds")):
            axis.plot([c[key] for c in curve], [c["val_elbo"] for c in curve], "--" if name.startswith("score") else "-",
                      color=color, marker=".", label=name)
    axes[0].set(xlabel="optimizer steps", ylabel="validation ELBO (nats)")
    axes[1].set(xlabel="training seconds (evaluation included)")
    values = sorted(c["val_elbo"] for curve in curves.values() for c in curve)
    # the score estimators' diverging ELBOs would flatten the rest
    axes[0].set_ylim(max(values[0], values[-1] - 3 * (values[-1] - values[len(values) // 4]) - 1), values[-1] + 2)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle("Validation ELBO by gradient estimator")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main():
    args = arguments(__doc__)
    results, runs = places("compare_estimators", args.quick)
    spec = read_spec(Path(__file__).with_suffix(".toml"))
    if args.quick:
        spec = quick_spec(spec)
    elif not MNIST.is_file():
        sys.exit(f"error: {MNIST} not found; run with --quick to use the digits data instead")
    else:
        spec["data"]["path"] = str(MNIST)
    draws = 20 if args.quick else 50
    rows, extras = table(run_sweep(spec, runs, workers=args.workers, report_only=args.report), draws)
    if not rows:
        print("no finished runs yet")
        return
    write_csv(rows, results / "compare_estimators.csv")
    write_csv(summarize(rows, ("estimator",), COLUMNS), results / "summary.csv")
    record = {"spec": spec, "draws": draws, "rows": rows, "extra": extras}
    write_text_atomically(results / "compare_estimators.json", json.dumps(record, indent=1))
    plot({name: extra["curve"] for name, extra in extras.items()}, results / "compare_estimators.png")


if __name__ == "__main__":
    main()
