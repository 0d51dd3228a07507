"""Does KL annealing help? No annealing vs linear warm-up vs cyclical, same budget.

Three VAEs, identical but for ``objective.kl_weight``, are trained for the same number
of epochs on statically binarized MNIST (a subset; digits with ``--quick``):

- ``none``: weight 1 throughout (the plain ELBO),
- ``linear``: warm-up from 0 to 1 over the first third of training, then 1
  (Bowman et al. 2015),
- ``cyclical``: 4 cycles, the weight rising linearly from 0 to 1 over the first half of
  each and holding at 1 for the second (Fu et al. 2019), so training ends at weight 1.

Annealing is meant to prevent posterior collapse (dimensions whose KL is ~0 and whose
code the decoder ignores). We report, on the test set and with the true ELBO (weight 1):
the ELBO, the KL per latent dimension, and the active units (Var_x E_q[z_d | x] > 0.01).
Writes ``experiments/results/annealing/{annealing.csv, kl_per_dimension.csv, annealing.png}``.

    python experiments/annealing.py --quick    # digits, CI-sized
    python experiments/annealing.py            # MNIST subset, the README's numbers
"""

import argparse
from pathlib import Path

from beta_sweep import ROOT, base_config, single_thread, train_and_test

from common import write_csv
from pyro_vae.annealing import build_schedule
from pyro_vae.runs import read_metrics


def schedules(epochs):
    """The three KL weights compared, for a run of ``epochs`` epochs."""
    return {
        "none": 1.0,
        "linear": {"schedule": "linear", "start": 0.0, "end": 1.0, "epochs": max(1, epochs // 3)},
        "cyclical": {"schedule": "cyclical", "start": 0.0, "end": 1.0, "epochs": epochs, "cycles": 4, "ratio": 0.5},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, a few epochs (CI-sized)")
    parser.add_argument("--epochs", type=int, help="epochs per run (default 8 quick, 40 full)")
    parser.add_argument("--latent-dim", type=int, help="latent dimensions (default 8 quick, 32 full)")
    parser.add_argument("--train-examples", type=int, default=20000, help="MNIST training subset size")
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results" / "annealing"))
    args = parser.parse_args(argv)
    single_thread()

    epochs = args.epochs or (8 if args.quick else 40)
    latent_dim = args.latent_dim or (8 if args.quick else 32)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    rows, per_dimension, curves = [], {}, {}
    for name, kl_weight in schedules(epochs).items():
        config = base_config(args.quick, epochs, args.train_examples, latent_dim)
        config["objective"]["kl_weight"] = kl_weight
        run = ROOT / "runs" / "annealing" / ("quick" if args.quick else "full") / name
        print(f"{name}: kl_weight = {kl_weight}: training {run}", flush=True)
        test = train_and_test(config, run)
        curves[name] = read_metrics(run / "metrics.csv")
        kl_dims = sorted(test["kl_per_dimension"], reverse=True)
        per_dimension[name] = kl_dims
        rows.append(
            {
                "schedule": name,
                "test_elbo": test["elbo"],
                "test_reconstruction": test["reconstruction"],
                "test_kl": test["kl"],
                "kl_per_dimension_max": kl_dims[0],
                "kl_per_dimension_min": kl_dims[-1],
                "dimensions_kl_above_0.01": sum(kl > 0.01 for kl in kl_dims),
                "active_units": test["active_units"],
                "latent_dim": latent_dim,
                "epochs": epochs,
                "best_val_elbo": max(row["val_elbo"] for row in curves[name]),
                "seconds": round(test["seconds"], 1),
            }
        )
        print(
            f"  test ELBO {test['elbo']:.2f}  KL {test['kl']:.2f}  active units {test['active_units']}/{latent_dim}  "
            f"KL per dimension {' '.join(f'{kl:.2f}' for kl in kl_dims)}",
            flush=True,
        )
    suffix = "_quick" if args.quick else ""
    write_csv(rows, results / f"annealing{suffix}.csv")
    write_csv(
        [{"schedule": name, **{f"kl_{d}": f"{kl:.4f}" for d, kl in enumerate(kls)}} for name, kls in per_dimension.items()],
        results / f"kl_per_dimension{suffix}.csv",
    )
    plot(curves, per_dimension, schedules(epochs), results / f"annealing{suffix}.png", "digits" if args.quick else "binarized MNIST")
    print(markdown_table(rows))


def markdown_table(rows):
    lines = [
        "| KL weight | test ELBO | reconstruction | KL | active units | largest / smallest KL per dim |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['schedule']} | {r['test_elbo']:.2f} | {r['test_reconstruction']:.2f} | {r['test_kl']:.2f} | "
            f"{r['active_units']}/{r['latent_dim']} | {r['kl_per_dimension_max']:.2f} / {r['kl_per_dimension_min']:.3f} |"
        )
    return "\n".join(lines)


def plot(curves, per_dimension, kl_weights, path, data_name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, rows in curves.items():
        epochs = [r["epoch"] for r in rows]
        steps_per_epoch = int(rows[0]["step"] / rows[0]["epoch"])
        schedule = build_schedule(kl_weights[name], steps_per_epoch)
        steps = range(int(rows[-1]["step"]))
        axes[0].plot([s / steps_per_epoch for s in steps], [schedule(s) for s in steps], label=name)
        axes[1].plot(epochs, [r["val_elbo"] for r in rows], ".-", label=name)
        axes[2].plot(range(1, len(per_dimension[name]) + 1), per_dimension[name], ".-", label=name)
    axes[0].set(xlabel="epoch", ylabel="KL weight", title="schedule (per step)")
    axes[1].set(xlabel="epoch", ylabel="validation ELBO (weight 1)", title=f"true ELBO on {data_name}")
    low = min(min(r["val_elbo"] for r in rows[len(rows) // 3:]) for rows in curves.values())
    high = max(max(r["val_elbo"] for r in rows) for rows in curves.values())
    axes[1].set_ylim(low - 0.1 * (high - low + 1), high + 0.1 * (high - low + 1))
    axes[2].set(xlabel="latent dimension (sorted)", ylabel="test KL (nats)", title="KL per dimension", yscale="log")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
