"""Semi-supervised classification with few labels: M2 and M1+M2 against the same classifier on the labels alone \
and M1 + logistic regression.

For each number of labels N in {100, 600, 1000} and each seed s (which also picks the N
labels, ``data.labeled_seed = s``, balanced across classes), on statically binarized
Fashion-MNIST (50k train / 10k valid / 10k test, Debian's ``dataset-fashion-mnist``):

- **M2** (Kingma et al. 2014): ``model.kind = "m2"``, ``objective.estimator = "enum"``, a small z
  (4 dimensions; 2 on digits) so that the label carries the class, and the library's defaults
  alpha = 100 N (``objective.classification_weight = 100``) and ceil(N_l / steps) labeled images
  a step (``train.labeled_batch_size = 0``, the paper's proportion); the test error of its
  classifier q(y | x);
- **M1+M2**: the same M2 (z2 of 4 dimensions; 2 on digits) on the codes z1 of M1 below
  (``model.features``), p(z1 | y, z2) Gaussian with a learned scale per dimension, z1 drawn
  from q(z1 | x) afresh every step; the test error of q(y | E[z1 | x]);
- **classifier alone**: the same classifier network (``labels.fit_classifier``), trained by
  cross-entropy on the N labeled images only;
- **M1 + logistic regression**: a VAE (``model.kind = "vae"``, same networks, 32-dimensional z; 8 on digits)
  trained on all 50k training images without labels, then scikit-learn's logistic regression on
  the guide's mean codes E_q[z | x] of the N labeled images.

Every finished run's row is cached under ``runs/semisupervised*/rows/`` (an interrupted run
resumes where it stopped: run the same command again). Writes
``experiments/results/semisupervised/{semisupervised.csv, summary.csv, curves.png}`` (``--quick``:
digits, 50 labels, one seed, ``*_quick``): one row per (method, labels, seed) with the test
error, the seconds it took on this machine and, for M2 and M1+M2, the validation accuracy after
each epoch; the summary holds mean and standard deviation over seeds; the figure the curves.

    python experiments/semisupervised.py --quick
    python experiments/semisupervised.py   # 3 seeds; M2 6 epochs, M1+M2 4, M1 10 (what was run: semisupervised.md)
"""

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from common import write_csv
from sklearn.linear_model import LogisticRegression

from pyro_vae import train
from pyro_vae.atomic import write_text_atomically
from pyro_vae.build import build_data
from pyro_vae.config import check_config
from pyro_vae.data import HIDDEN, load_data
from pyro_vae.models import CLASSIFIERS, fit_classifier
from pyro_vae.runs import load_run, read_metrics

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results" / "semisupervised"
# the committed run's budget (semisupervised.md): M2's validation accuracy is flat from about epoch 5
# (a 10-epoch run in semisupervised_sweep.py), M1+M2's from about epoch 3 at 600 and 1000 labels; M1's
# validation ELBO gains 0.6 nats an epoch at epoch 10 (3 at epoch 4)
DEFAULT_EPOCHS, DEFAULT_M1M2_EPOCHS, DEFAULT_M1_EPOCHS, QUICK_EPOCHS = 6, 4, 10, 30
CODE_LIKELIHOOD = {"name": "gaussian", "scale": "learned_per_feature"}  # M1+M2's p(z1 | z2, y)


def fashion_mnist_npz():
    """Fashion-MNIST, statically binarized once (the library's fixed draw), with its labels, as an
    .npz for ``data.name = "npz"``: the same data as ``{name = "fashion-mnist", binarize = "static"}``,
    read in a second instead of decompressed and binarized again by each of the 20-odd runs."""
    path = ROOT / "runs" / "data" / "fashion_mnist_static.npz"
    if not path.is_file():
        data = load_data("fashion-mnist", binarize="static")
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for split in ("train", "valid", "test"):
            arrays[split] = data.split(split).x.to(torch.uint8).numpy()
            arrays[f"{split}_labels"] = data.split(split).labels.numpy()
        np.savez(path, **arrays)
    return path


def setup(quick, epochs):
    """The shared config: data, networks and training, for the quick (digits) or full (Fashion-MNIST) run."""
    if quick:
        data = {"name": "digits", "binarize": "static"}
        hidden, m2_latent, m1_latent, batch_size, labels = [64], 2, 8, 64, [50]
    else:
        data = {"name": "npz", "path": str(fashion_mnist_npz()), "binarize": "none"}
        hidden, m2_latent, m1_latent, batch_size, labels = [128], 4, 32, 100, [100, 600, 1000]
    net = {"name": "mlp", "hidden": hidden, "activation": "elu"}
    config = {
        "data": data,
        "model": {"latent_dim": m2_latent, "encoder": net, "decoder": net, "classifier": net},
        "objective": {"estimator": "enum"},
        "train": {"epochs": epochs, "batch_size": batch_size, "progress": False, "device": "cpu",
                  "train_eval_examples": 1000, "eval_batch_size": 500, "loggers": ["csv"]},
    }
    return config, labels, m1_latent


def with_updates(config, **sections):
    config = {section: dict(values) for section, values in config.items()}
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


def labeled_data(config, labels, seed):
    """The data with ``labels`` training labels kept (``data.labeled_seed = seed``)."""
    return build_data(check_config(with_updates(config, data={"labeled": labels, "labeled_seed": seed})))


class Cache:
    """Each finished run's row as JSON under ``runs``: an interrupted experiment resumes where it stopped."""

    def __init__(self, runs, cached_only=False):
        self.runs, self.cached_only = Path(runs), cached_only

    def __call__(self, key, compute, *args):
        """The row of ``key``: cached, else ``compute(*args)``, cached (``cached_only``: else None)."""
        path = self.runs / "rows" / f"{key}.json"
        if path.is_file():
            return json.loads(path.read_text())
        if self.cached_only:
            return None
        row = compute(*args)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, json.dumps(row))
        return row


def settings(config):
    """What a cached M2 row depends on beyond labels and seed: epochs, alpha / N, labeled pairs per step."""
    checked = check_config(config)
    return (f"e{checked['train']['epochs']}-w{checked['objective']['classification_weight']:g}"
            f"-b{checked['train']['labeled_batch_size']}")


def test_error(predicted, labels):
    return (predicted != labels).float().mean().item()


def curve(run):
    """The validation accuracy after each epoch, as "a;b;c" (``metrics.csv``'s ``val_accuracy``)."""
    return ";".join(f"{float(row['val_accuracy']):.4f}" for row in read_metrics(run / "metrics.csv"))


def run_m2(config, labels, seed, out):
    """M2 (or, with ``model.features``, M1+M2) trained with ``labels`` labels: its classifier's test error."""
    config = with_updates(config, data={"labeled": labels, "labeled_seed": seed},
                          model={"kind": "m2"}, train={"seed": seed})
    start = time.perf_counter()
    run = train(config, out=out, force=True)
    seconds = time.perf_counter() - start
    vae = load_run(run)
    test = build_data(check_config(config)).test
    with torch.no_grad():
        error = test_error(vae.classify(test.x), test.labels)
    return {"test_error": error, "seconds": seconds, "val_accuracy": curve(run)}


def run_classifier_alone(config, labels, seed):
    """The M2 classifier network, trained on the labeled images only (as many steps as ten
    passes over a 1000-label set, whatever N: enough to fit any of them)."""
    data = labeled_data(config, labels, seed)
    start = time.perf_counter()
    known = data.train.labels != HIDDEN
    torch.manual_seed(seed)
    classifier = CLASSIFIERS.build(config["model"]["classifier"], "model.classifier",
                                   data_shape=data.shape, num_classes=10)
    fit_classifier(classifier, data.train.x[known], data.train.labels[known], steps=1000, seed=seed)
    with torch.no_grad():
        predicted = classifier(data.test.x).argmax(-1)
    return {"test_error": test_error(predicted, data.test.labels), "seconds": time.perf_counter() - start}


def train_m1(config, latent_dim, seed, out):
    """M1: a VAE trained on every training image, without labels."""
    config = with_updates(config, model={"kind": "vae", "latent_dim": latent_dim}, objective={"estimator": "trace"},
                          train={"seed": seed})
    start = time.perf_counter()
    if not (out / "done").is_file():
        train(config, out=out, force=True)
        (out / "done").write_text(f"{time.perf_counter() - start:.1f}\n")
    return float((out / "done").read_text())


def run_m1_logistic(m1_run, m1_seconds, config, labels, seed):
    """Logistic regression on M1's mean codes E_q[z | x] of the labeled images."""
    vae = load_run(m1_run)
    data = labeled_data(config, labels, seed)
    start = time.perf_counter()
    known = data.train.labels != HIDDEN
    with torch.no_grad():
        codes = vae.encode(data.train.x[known]).numpy()
        test_codes = vae.encode(data.test.x).numpy()
    regression = LogisticRegression(max_iter=2000).fit(codes, data.train.labels[known].numpy())
    predicted = torch.as_tensor(regression.predict(test_codes))
    return {"test_error": test_error(predicted, data.test.labels), "seconds": time.perf_counter() - start + m1_seconds}


def m1m2_config(config, m1_run, m1m2):
    """M2 on the codes of the frozen M1 of ``m1_run``: a Gaussian p(z1 | y, z2), codes drawn from q(z1 | x)."""
    net = {"name": "mlp", "hidden": m1m2["hidden"], "activation": "elu"}
    return with_updates(config, model={"features": str(m1_run), "likelihood": CODE_LIKELIHOOD,
                                       "latent_dim": m1m2["latent_dim"], "encoder": net, "decoder": net,
                                       "classifier": net},
                        train={"epochs": m1m2["epochs"]})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, 50 labels, 1 seed: about 40 s on 2 CPU cores")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"training epochs of M2 (default {DEFAULT_EPOCHS}; quick {QUICK_EPOCHS})")
    parser.add_argument("--m1-epochs", type=int, default=None,
                        help=f"training epochs of M1 (default {DEFAULT_M1_EPOCHS}; quick: --epochs)")
    parser.add_argument("--m1m2-epochs", type=int, default=None,
                        help=f"training epochs of M1+M2's M2 (default {DEFAULT_M1M2_EPOCHS}; quick: --epochs)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..S-1 (default 3; quick 1)")
    parser.add_argument("--first-seed", type=int, default=0, help="start at this seed (another process runs the others)")
    parser.add_argument("--labels", type=int, nargs="*", default=None, help="label counts (default 100 600 1000; quick 50)")
    parser.add_argument("--summary-only", action="store_true", help="rewrite the summary and figure from the existing rows")
    parser.add_argument("--cached-only", action="store_true",
                        help="write the tables from the runs finished so far (by any process), training nothing")
    args = parser.parse_args()
    suffix = "_quick" if args.quick else ""
    if args.summary_only:
        return write_summary(OUT / f"semisupervised{suffix}.csv", OUT / f"summary{suffix}.csv")
    torch.set_num_threads(1)  # small networks on a shared 2-core machine
    epochs = args.epochs or (QUICK_EPOCHS if args.quick else DEFAULT_EPOCHS)
    m1_epochs = args.m1_epochs or (epochs if args.quick else DEFAULT_M1_EPOCHS)
    m1m2_epochs = args.m1m2_epochs or (epochs if args.quick else DEFAULT_M1M2_EPOCHS)
    config, label_counts, m1_latent = setup(args.quick, epochs)
    label_counts = args.labels or label_counts
    m1m2 = {"latent_dim": 2 if args.quick else 4, "hidden": [64] if args.quick else [128], "epochs": m1m2_epochs}
    runs = ROOT / "runs" / ("semisupervised_quick" if args.quick else "semisupervised")
    cache = Cache(runs, cached_only=args.cached_only)
    rows = []

    def record(method, labels, seed, method_epochs, row):
        if row is None:  # --cached-only: not run (yet)
            return
        rows.append({"method": method, "labels": labels, "seed": seed, "epochs": method_epochs,
                     "test_error": row["test_error"], "seconds": row["seconds"],
                     "val_accuracy": row.get("val_accuracy", "")})
        print(f"{method:<22} labels {labels:>5} seed {seed}: test error {row['test_error']:.4f} "
              f"({row['seconds']:.0f} s)", flush=True)

    for seed in range(args.first_seed, args.seeds or (1 if args.quick else 3)):
        m1_run = runs / f"m1-e{m1_epochs}-{seed}"  # M1 and what stands on it are cached per M1 budget
        if args.cached_only and not (m1_run / "done").is_file():
            continue
        m1_seconds = train_m1(with_updates(config, train={"epochs": m1_epochs}), m1_latent, seed, m1_run)
        for labels in label_counts:
            record("classifier alone", labels, seed, "",  # it takes 1000 steps instead
                   cache(f"classifier-{labels}-{seed}", run_classifier_alone, config, labels, seed))
            record("M1 + logistic", labels, seed, m1_epochs,  # the VAE's time counted in each
                   cache(f"m1-logistic-e{m1_epochs}-{labels}-{seed}", run_m1_logistic, m1_run, m1_seconds, config,
                         labels, seed))
            record("M2", labels, seed, epochs,
                   cache(f"m2-{labels}-{seed}-{settings(config)}", run_m2, config, labels, seed, runs / f"m2-{labels}-{seed}"))
            stacked = m1m2_config(config, m1_run, m1m2)
            row = cache(f"m1m2-e{m1_epochs}-{labels}-{seed}-{settings(stacked)}", run_m2, stacked, labels, seed,
                        runs / f"m1m2-e{m1_epochs}-{labels}-{seed}")
            if row is not None:
                row["seconds"] += m1_seconds  # the M1 VAE's time counted in each
            record("M1+M2", labels, seed, m1m2_epochs, row)
        OUT.mkdir(parents=True, exist_ok=True)
        write_csv(rows, OUT / f"semisupervised{suffix}.csv")  # after each seed: partial results survive
    write_summary(OUT / f"semisupervised{suffix}.csv", OUT / f"summary{suffix}.csv")


def write_summary(rows_path, summary_path):
    """Mean and standard deviation over seeds of each (method, labels), from the rows' CSV."""
    with open(rows_path, newline="") as f:
        rows = list(csv.DictReader(f))
    summary = []
    for method in dict.fromkeys(r["method"] for r in rows):
        for labels in dict.fromkeys(r["labels"] for r in rows):
            group = [r for r in rows if r["method"] == method and r["labels"] == labels]
            errors = [float(r["test_error"]) for r in group]
            summary.append({"method": method, "labels": labels, "seeds": len(group), "epochs": group[0]["epochs"],
                            "test_error_mean": statistics.mean(errors),
                            "test_error_std": statistics.stdev(errors) if len(errors) > 1 else 0.0,
                            "seconds_per_run": statistics.mean(float(r["seconds"]) for r in group)})
    write_csv(summary, summary_path)
    plot_curves(rows, summary_path.with_name(summary_path.stem.replace("summary", "curves") + ".png"))


def plot_curves(rows, path):
    """Validation error of M2 and M1+M2 after each epoch (one line per seed), one panel per label
    count, beside the test errors of the baselines (dashed: classifier alone; dotted: M1 + logistic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label_counts = list(dict.fromkeys(r["labels"] for r in rows))
    figure, axes = plt.subplots(1, len(label_counts), figsize=(4 * len(label_counts), 3.2), squeeze=False)
    colors = {"M2": "C0", "M1+M2": "C1", "classifier alone": "C3", "M1 + logistic": "C2"}
    for ax, labels in zip(axes[0], label_counts):
        for r in rows:
            if r["labels"] != labels:
                continue
            if r["val_accuracy"]:
                errors = [1 - float(a) for a in r["val_accuracy"].split(";")]
                ax.plot(range(1, len(errors) + 1), errors, color=colors[r["method"]], marker="o", markersize=3,
                        label=f"{r['method']} (validation)")
            else:
                ax.axhline(float(r["test_error"]), color=colors[r["method"]],
                           linestyle="--" if r["method"] == "classifier alone" else ":", label=f"{r['method']} (test)")
        ax.set_title(f"{labels} labels")
        ax.set_xlabel("epoch")
        ax.set_ylabel("error")
        handles, names = ax.get_legend_handles_labels()
        unique = dict(zip(names, handles))
    axes[0][-1].legend(unique.values(), unique.keys(), fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
