"""ELBO gradient estimators compared: variance, speed, and what they buy in the end.

For each estimator (a config word of ``objective.estimator``) the same VAE, from the
same initialization, is trained with Adam on the same minibatches, and we measure

- the gradient's noise for a fixed minibatch of 100 training images, at initialization
  and after training (``pyro_vae.evaluation.gradient_variance``, encoder parameters:
  that is where the estimators differ): tr Cov[g] and SNR = ||E g|| / sqrt(tr Cov[g]),
- milliseconds per optimizer step (training time only, one CPU thread),
- the validation ELBO against steps and against wall-clock seconds (one figure),
- the test ELBO and the importance-sampled test log-likelihood
  (``pyro_vae.evaluation.log_likelihood``, K = 200), both on 1,000 test images drawn at
  random with a fixed seed (``Split.random_subset``; the whole test split in quick mode).

Training uses its own short loop rather than ``pyro_vae.train`` because it needs the
time of every step and evaluations on a grid of steps. The ``iwae``, ``renyi`` and
``dreg`` rows optimize their own (tighter) bound; every row's ELBO and log-likelihood
are the same evaluation of the trained model.

    nice python experiments/compare_estimators.py --quick   # digits, under a minute
    nice python experiments/compare_estimators.py           # binarized MNIST, ~20 minutes

Writes ``compare_estimators.csv``, ``compare_estimators.json`` (curves, decoder numbers)
and ``compare_estimators.png`` under ``experiments/results/compare_estimators/``
(``.../quick/`` in quick mode).
"""

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402

from pyro_vae.data import load_data  # noqa: E402
from pyro_vae.evaluation import evaluate_elbo, gradient_variance, log_likelihood  # noqa: E402
from pyro_vae.models import VAE  # noqa: E402
from pyro_vae.objectives import ESTIMATORS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "binarized_mnist.npz"
RESULTS = ROOT / "experiments" / "results" / "compare_estimators"

# (row label, estimator spec, particles K, jit)
ESTIMATOR_ROWS = [
    ("trace", "trace", 1, False),
    ("trace (jit)", "trace", 1, True),
    ("meanfield", "meanfield", 1, False),
    ("stl", "stl", 1, False),
    ("score", {"name": "score", "baseline": "none"}, 1, False),
    ("score + average", {"name": "score", "baseline": "decaying_average"}, 1, False),
    ("score + neural", {"name": "score", "baseline": "neural"}, 1, False),
    ("iwae K=5", "iwae", 5, False),
    ("dreg K=5", "dreg", 5, False),
    ("renyi a=0.5 K=5", {"name": "renyi", "alpha": 0.5}, 5, False),
    ("tail_adaptive K=5", "tail_adaptive", 5, False),
]
COLUMNS = ["estimator", "grad_var", "snr", "ms_per_step", "test_elbo", "test_log_likelihood",
           "grad_var_init", "snr_init", "steps"]


def settings(quick):
    if quick:
        return dict(data={"name": "digits", "binarize": "static"}, latent_dim=4, hidden=[64], epochs=4,
                    batch_size=100, lr=3e-3, evaluations=4, valid_examples=None, draws=20,
                    ll_examples=250, ll_samples=100)
    if not MNIST.is_file():
        sys.exit(f"error: {MNIST} not found; run with --quick to use the digits data instead")
    return dict(data={"name": "binarized-mnist", "path": str(MNIST), "binarize": "none"}, latent_dim=16,
                hidden=[200], epochs=3, batch_size=100, lr=1e-3, evaluations=10, valid_examples=2000,
                draws=50, ll_examples=1000, ll_samples=200)


def build_vae(data_shape, s, seed):
    pyro.set_rng_seed(seed)  # the same initialization for every estimator
    net = {"name": "mlp", "hidden": s["hidden"], "activation": "elu"}
    return VAE(data_shape, latent_dim=s["latent_dim"], encoder=net, decoder=net)


def validation_elbo(vae, data, s):
    x = data.valid.random_subset(s["valid_examples"]).x  # seeded: the same images at every evaluation
    vae.eval()
    value = evaluate_elbo(vae, [x[i : i + 1000] for i in range(0, len(x), 1000)])["elbo"]
    vae.train()
    return value


def run(label, spec, num_particles, jit, data, s, seed):
    vae = build_vae(data.shape, s, seed)
    estimator = ESTIMATORS.build(spec, "estimator", num_particles=num_particles, jit=jit, data_shape=data.shape)
    probe = data.train.x[:100]  # the fixed minibatch for gradient noise
    init = gradient_variance(vae, estimator, probe, num_draws=s["draws"], params="encoder")
    optimizer = torch.optim.Adam([*vae.parameters(), *estimator.parameters()], lr=s["lr"])
    steps_per_epoch = math.ceil(len(data.train) / s["batch_size"])
    total_steps = s["epochs"] * steps_per_epoch
    evaluate_at = {round(total_steps * (i + 1) / s["evaluations"]) for i in range(s["evaluations"])}
    curve = [{"step": 0, "seconds": 0.0, "val_elbo": validation_elbo(vae, data, s)}]
    step, seconds = 0, 0.0
    pyro.set_rng_seed(seed)
    for epoch in range(s["epochs"]):
        order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed + epoch))
        for start in range(0, len(order), s["batch_size"]):
            x = data.train.x[order[start : start + s["batch_size"]]]
            began = time.perf_counter()
            loss = estimator.loss(vae.model, vae.guide, x) / len(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seconds += time.perf_counter() - began
            step += 1
            if step in evaluate_at:
                curve.append({"step": step, "seconds": seconds, "val_elbo": validation_elbo(vae, data, s)})
                print(f"  {label}: step {step}/{total_steps}, {seconds:.1f} s, validation ELBO {curve[-1]['val_elbo']:.2f}",
                      flush=True)
    vae.eval()
    final = gradient_variance(vae, estimator, probe, num_draws=s["draws"], params="encoder")
    decoder = gradient_variance(vae, estimator, probe, num_draws=s["draws"], params="decoder")
    # ELBO and log-likelihood on the same seeded random test images (the split is sorted by class:
    # its first N would be nearly all zeros)
    test_x = data.test.random_subset(s["ll_examples"]).x
    test = evaluate_elbo(vae, [test_x[i : i + 1000] for i in range(0, len(test_x), 1000)])
    ll = log_likelihood(vae, test_x, num_samples=s["ll_samples"]).mean().item()
    runs = ROOT / "runs" / "compare_estimators"
    runs.mkdir(parents=True, exist_ok=True)
    torch.save(vae.state_dict(), runs / f"{label.replace(' ', '_').replace('=', '')}.pt")
    row = {
        "estimator": label,
        "grad_var": final["trace_covariance"],
        "snr": final["snr"],
        "ms_per_step": 1000 * seconds / step,
        "test_elbo": test["elbo"],
        "test_log_likelihood": ll,
        "grad_var_init": init["trace_covariance"],
        "snr_init": init["snr"],
        "steps": step,
    }
    extra = {"curve": curve, "decoder_grad_var": decoder["trace_covariance"], "decoder_snr": decoder["snr"],
             "active_units": test["active_units"], "test_kl": test["kl"]}
    return row, extra


def plot(curves, path):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colors = plt.cm.tab20(range(0, 20, 2)).tolist() + plt.cm.tab20(range(1, 20, 2)).tolist()
    for color, (label, curve) in zip(colors, curves.items()):
        style = "--" if label.startswith("score") else "-"
        for axis, key in zip(axes, ("step", "seconds")):
            axis.plot([c[key] for c in curve], [c["val_elbo"] for c in curve], style, color=color, marker=".", label=label)
    axes[0].set_xlabel("optimizer steps")
    axes[1].set_xlabel("training seconds (one CPU thread)")
    axes[0].set_ylabel("validation ELBO (nats)")
    values = [c["val_elbo"] for curve in curves.values() for c in curve[1:]]
    if values:  # the first evaluations of the score estimators would flatten the rest
        best = max(values)
        axes[0].set_ylim(max(min(values), best - 3 * (best - sorted(values)[len(values) // 4]) - 1), best + 2)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle("Validation ELBO by gradient estimator")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, CI-sized")
    parser.add_argument("--only", nargs="*", help="row labels to run (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (timings are for this many)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replot", action="store_true", help="redraw the figure from the saved JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = RESULTS / "quick" if args.quick else RESULTS
    if args.replot:
        with open(out / "compare_estimators.json") as f:
            extras = json.load(f)["extra"]
        plot({label: extra["curve"] for label, extra in extras.items()}, out / "compare_estimators.png")
        return
    s = settings(args.quick)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(**s["data"])
    print(f"{len(data.train)} training images of shape {data.shape}; {s['epochs']} epochs, batch {s['batch_size']}",
          flush=True)
    rows, extras = [], {}
    with pyro.validation_enabled(False):
        for label, spec, num_particles, jit in ESTIMATOR_ROWS:
            if args.only and label not in args.only:
                continue
            began = time.perf_counter()
            row, extra = run(label, spec, num_particles, jit, data, s, args.seed)
            rows.append(row)
            extras[label] = extra
            print(f"{label}: grad var {row['grad_var']:.4g} (init {row['grad_var_init']:.4g}), SNR {row['snr']:.3f}, "
                  f"{row['ms_per_step']:.1f} ms/step, test ELBO {row['test_elbo']:.2f}, "
                  f"test log p(x) {row['test_log_likelihood']:.2f} ({time.perf_counter() - began:.0f} s)", flush=True)
    with open(out / "compare_estimators.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    with open(out / "compare_estimators.json", "w") as f:
        json.dump({"settings": s, "rows": rows, "extra": extras}, f, indent=1)
    plot({label: extra["curve"] for label, extra in extras.items()}, out / "compare_estimators.png")
    print(f"wrote {out}/compare_estimators.{{csv,json,png}}")


if __name__ == "__main__":
    main()
