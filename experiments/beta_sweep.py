"""The rate-distortion trade-off of the KL weight: a beta sweep (`beta_sweep.toml`).

For each beta in {0.1, 0.25, 0.5, 1, 2, 4, 8} a VAE is trained on statically binarized MNIST with
`objective.kl_weight = beta` (the handler scales log p(z) and log q(z | x) by beta, so the training
objective is E_q[log p(x|z)] - beta KL). On the test set we then measure, with the *true* ELBO's
terms (weight 1; the sweep's `evaluate`: each run's evaluation.json):

- rate R = KL(q(z|x) || p(z)) and distortion D = -E_q[log p(x|z)] (nats per image),
- the true ELBO = -(D + R), which the beta = 1 objective maximizes,
- active units: dimensions with Var_x(E_q[z_d | x]) > 0.01 (Burda et al. 2015).

beta < 1 buys reconstruction with rate, beta > 1 the reverse; the curve D(R) traced by the sweep is
the rate-distortion trade-off (Alemi et al. 2018). Writes `beta_sweep.csv` and `rate_distortion.png`.

    python experiments/beta_sweep.py --quick    # digits, 5 epochs: a minute
    python experiments/beta_sweep.py            # the MNIST subset of beta_sweep.md (resumable: the same command continues)
    python experiments/beta_sweep.py --report   # the table and figure from the runs so far
"""


import numpy as np
from common import ROOT, arguments, completed_trials, write_csv

MNIST = ROOT.parent / "shared" / "data" / "binarized_mnist.npz"


def with_mnist(spec):
    spec["data"]["path"] = str(MNIST)
    return spec


def quick_spec(spec):
    """Digits (a fixed Bernoulli draw of the grey levels), latent 8, MLP 64, 5 epochs of batch 64."""
    spec["data"] = {"name": "digits", "binarize": "static"}
    spec["model"].update(latent_dim=8, encoder={"name": "mlp", "hidden": [64]}, decoder={"name": "mlp", "hidden": [64]})
    spec["train"].update(epochs=5, batch_size=64)
    return spec


def table_rows(trials, spec):
    rows = []
    for trial in trials:
        beta = float(trial["objective.kl_weight"])
        rows.append({"beta": beta, "rate_kl": trial["kl"], "distortion": -trial["reconstruction"],
                     "test_elbo": trial["elbo"], "beta_objective": trial["reconstruction"] - beta * trial["kl"],
                     "active_units": trial["active_units"], "latent_dim": spec["model"]["latent_dim"],
                     "epochs": spec["train"]["epochs"], "seconds": trial["seconds"]})
    return sorted(rows, key=lambda r: r["beta"])


def plot_rate_distortion(rows, path, data_name):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 4))
    ax = figure.add_subplot()
    rates, distortions = [r["rate_kl"] for r in rows], [r["distortion"] for r in rows]
    ax.plot(rates, distortions, "o-")
    for r in rows:
        ax.annotate(f"β={r['beta']:g}", (r["rate_kl"], r["distortion"]), textcoords="offset points", xytext=(5, 3))
    best = max(rows, key=lambda r: r["test_elbo"])
    elbo_line = np.linspace(0, max(rates) * 1.05, 2)  # D + R = -ELBO: a line of slope -1
    ax.plot(elbo_line, -best["test_elbo"] - elbo_line, ":", color="grey", label=f"D + R = {-best['test_elbo']:.1f}")
    ax.set_xlim(max(0.0, min(rates) - 2), max(rates) * 1.05 + 1)
    ax.set_ylim(min(distortions) - 5, max(distortions) + 5)
    ax.set(xlabel="rate: KL(q(z|x) || p(z)) (nats)", ylabel="distortion: -E_q log p(x|z) (nats)",
           title=f"β sweep on {data_name} (test set)")
    ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"wrote {path}")


def main():
    args = arguments(__doc__)
    results, spec, trials = completed_trials("beta_sweep", args, quick_spec, prepare=with_mnist)
    rows = table_rows(trials, spec)
    if not rows:
        print("no finished runs yet")
        return
    write_csv(rows, results / "beta_sweep.csv")
    plot_rate_distortion(rows, results / "rate_distortion.png", "digits" if args.quick else "binarized MNIST")


if __name__ == "__main__":
    main()
