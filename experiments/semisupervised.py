"""Semi-supervised classification with few labels: M2 and M1+M2 against the same classifier on the labels alone \
and M1 + logistic regression; and the sweep behind M2's defaults. A sweep (`semisupervised.toml`).

For each number of labels N in {100, 600, 1000} and each seed s (which also picks the N labels,
`data.labeled_seed = s`, balanced across classes), on statically binarized Fashion-MNIST (50k train /
10k valid / 10k test):

- **M2** (Kingma et al. 2014): `model.kind = "m2"`, `objective.estimator = "enum"`, a small z (4
  dimensions) and the library's defaults alpha = 100 N and ceil(N_l / steps) labeled images a step;
  the test error of its classifier q(y | x) (1 - the `accuracy` of the run's evaluation.json);
- **M1+M2**: the same M2 on the codes z1 of M1 below (`model.features`), p(z1 | y, z2) Gaussian with
  a learned scale per dimension: a second sweep, on the first one's M1 runs;
- **classifier alone**: the M2 classifier network (`fit_classifier`), 1000 steps of cross-entropy
  on the N labeled images of the M2 run's data;
- **M1 + logistic regression**: a VAE (32-dimensional z) trained on all training images without
  labels, then scikit-learn's logistic regression on its mean codes of the N labeled images.

The same spec holds the sweep behind M2's defaults (`objective.classification_weight` x
`train.labeled_batch_size`, each against the classifier alone): digits, Fashion-MNIST at 100 labels,
Fashion-MNIST at 600 and 1000 labels (semisupervised_sweep.md).

Writes `semisupervised.csv` (a row per method, labels and seed: test error, seconds, for M2 and
M1+M2 the validation accuracy after each epoch), `summary.csv` (mean and sd over seeds),
`curves.png`, and `sweep_digits.csv`, `sweep_fashion.csv`, `sweep_fashion-more-labels.csv` (the
defaults' sweep, a row a run). `--quick`: digits, 50 labels, one seed, 30 epochs, no defaults'
sweep, everything under runs/semisupervised/quick/.

    python experiments/semisupervised.py --quick    # a few minutes on one core
    python experiments/semisupervised.py            # 55 runs (resumable: the same command continues)
    python experiments/semisupervised.py --report   # the tables and figure from the runs so far
"""

import copy
import time

import torch
from common import arguments, places, read_spec, run_sweep, summarize, write_csv

HERE = __file__.rsplit("/", 1)[0]
CODE_LIKELIHOOD = {"name": "gaussian", "scale": "learned_per_feature"}  # M1+M2's p(z1 | z2, y)
M1M2_EPOCHS = 4  # its validation accuracy is flat from about epoch 3 at 600 and 1000 labels


def quick_spec(spec):
    """Digits, networks of 64, z of 2 (M1's 8), batch 64, 30 epochs, 50 labels, seed 0."""
    net = {"name": "mlp", "hidden": [64], "activation": "elu"}
    spec["data"]["name"] = "digits"
    spec["model"].update(latent_dim=2, encoder=net, decoder=net, classifier=net)
    spec["train"].update(epochs=30, batch_size=64)
    spec["sweep"]["grid"] = [
        {"model.kind": ["vae"], "model.latent_dim": [8], "objective.estimator": ["trace"], "train.seed": [0]},
        {"data.labeled": [50], "data.labeled_seed": [0], "train.seed": [0]}]
    return spec


def m1m2_spec(spec, m2_rows, m1_runs, epochs):
    """M2 on the codes of each seed's M1 run, at the label counts of the M2 runs."""
    spec = copy.deepcopy(spec)
    labels = sorted({int(row["data.labeled"]) for row in m2_rows})
    spec["sweep"]["grid"] = [
        {"model.features": [run], "model.likelihood": [CODE_LIKELIHOOD], "train.epochs": [epochs],
         "data.labeled": labels, "data.labeled_seed": [seed], "train.seed": [seed]}
        for seed, run in sorted(m1_runs.items())]
    return spec


def metrics(run):
    """The run's metrics.csv rows: an epoch each, with its validation accuracy and `seconds` of training so far."""
    from pyro_vae.runs import read_metrics

    return read_metrics(f"{run}/metrics.csv")


def m2_row(trial, method, seconds=0.0):
    """The test error of the M2 (or M1+M2) run's classifier, its time (plus `seconds`), its curve."""
    epochs = metrics(trial["run"])
    return {"method": method, "labels": int(trial["data.labeled"]), "seed": int(trial["train.seed"]),
            "epochs": len(epochs), "test_error": 1 - trial["accuracy"], "seconds": epochs[-1]["seconds"] + seconds,
            "val_accuracy": ";".join(f"{row['val_accuracy']:.4f}" for row in epochs)}


def classifier_alone(trial):
    """The run's classifier network, trained by cross-entropy on its labeled images only (as many
    steps as ten passes over a 1000-label set, whatever N: enough to fit any of them)."""
    from pyro_vae.config import load_config
    from pyro_vae.data import HIDDEN
    from pyro_vae.models import CLASSIFIERS, fit_classifier
    from pyro_vae.runs import load_run_data

    _, data = load_run_data(trial["run"])
    seed = int(trial["train.seed"])
    start = time.perf_counter()
    known = data.train.labels != HIDDEN
    torch.manual_seed(seed)
    classifier = CLASSIFIERS.build(load_config(f"{trial['run']}/config.toml")["model"]["classifier"],
                                   "model.classifier", data_shape=data.shape, num_classes=10)
    fit_classifier(classifier, data.train.x[known], data.train.labels[known], steps=1000, seed=seed)
    with torch.no_grad():
        error = (classifier(data.test.x).argmax(-1) != data.test.labels).float().mean().item()
    return {"method": "classifier alone", "labels": int(trial["data.labeled"]), "seed": seed, "epochs": "",
            "test_error": error, "seconds": time.perf_counter() - start, "val_accuracy": ""}


def m1_logistic(m1, trial):
    """Logistic regression on M1's mean codes E_q[z | x] of the labeled images of the M2 run `trial`."""
    from sklearn.linear_model import LogisticRegression

    from pyro_vae.data import HIDDEN
    from pyro_vae.runs import load_run, load_run_data

    vae, (_, data), m1_epochs = load_run(m1["run"]), load_run_data(trial["run"]), metrics(m1["run"])
    start = time.perf_counter()
    known = data.train.labels != HIDDEN
    with torch.no_grad():
        codes, test_codes = vae.encode(data.train.x[known]).numpy(), vae.encode(data.test.x).numpy()
    regression = LogisticRegression(max_iter=2000).fit(codes, data.train.labels[known].numpy())
    error = (torch.as_tensor(regression.predict(test_codes)) != data.test.labels).float().mean().item()
    return {"method": "M1 + logistic", "labels": int(trial["data.labeled"]), "seed": int(trial["train.seed"]),
            "epochs": len(m1_epochs), "test_error": error,
            "seconds": time.perf_counter() - start + m1_epochs[-1]["seconds"], "val_accuracy": ""}  # M1's time in


def defaults_part(trial):
    """Which table of the defaults' sweep a trial belongs to (None: the main study)."""
    if trial.get("objective.classification_weight") is None:
        return None
    if trial.get("data.name") == "digits":
        return "digits"
    return "fashion" if int(trial["data.labeled"]) == 100 else "fashion-more-labels"


def defaults_rows(trials):
    """The defaults' sweep: per table, the classifier alone of each (labels, seed), then every M2 run."""
    tables = {}
    for trial in trials:
        part = tables.setdefault(defaults_part(trial), {})
        data = "digits" if trial.get("data.name") == "digits" else "fashion-mnist"
        point = (trial["data.labeled"], trial["train.seed"])
        if point not in part:
            part[point] = [{"data": data, "classification_weight": "", "labeled_batch_size": "",
                            **classifier_alone(trial)}]
        part[point].append({"data": data, "classification_weight": float(trial["objective.classification_weight"]),
                            "labeled_batch_size": int(trial["train.labeled_batch_size"]),
                            **m2_row(trial, "M2")})
    columns = ("data", "labels", "seed", "method", "classification_weight", "labeled_batch_size", "epochs",
               "val_accuracy", "test_error", "seconds")
    return {name: [{c: row[c] for c in columns} for rows in part.values() for row in rows]
            for name, part in tables.items()}


def plot_curves(rows, path):
    """Validation error of M2 and M1+M2 after each epoch (one line per seed), one panel per label
    count, beside the test errors of the baselines (dashed: classifier alone; dotted: M1 + logistic)."""
    from matplotlib.figure import Figure

    label_counts = list(dict.fromkeys(r["labels"] for r in rows))
    figure = Figure(figsize=(4 * len(label_counts), 3.2))
    colors = {"M2": "C0", "M1+M2": "C1", "classifier alone": "C3", "M1 + logistic": "C2"}
    for index, labels in enumerate(label_counts):
        ax = figure.add_subplot(1, len(label_counts), index + 1)
        for r in (r for r in rows if r["labels"] == labels):
            if r["val_accuracy"]:
                errors = [1 - float(a) for a in r["val_accuracy"].split(";")]
                ax.plot(range(1, len(errors) + 1), errors, color=colors[r["method"]], marker="o", markersize=3,
                        label=f"{r['method']} (validation)")
            else:
                ax.axhline(r["test_error"], color=colors[r["method"]],
                           linestyle="--" if r["method"] == "classifier alone" else ":", label=f"{r['method']} (test)")
        ax.set(title=f"{labels} labels", xlabel="epoch", ylabel="error")
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def main():
    args = arguments(__doc__)
    results, runs = places("semisupervised", args.quick)
    spec = read_spec(f"{HERE}/semisupervised.toml")
    spec = quick_spec(spec) if args.quick else spec
    trials = [t for t in run_sweep(spec, runs, workers=args.workers, report_only=args.report)
              if t["state"] == "COMPLETE"]
    m1 = {int(t["train.seed"]): t for t in trials if t["model.kind"] == "vae"}
    m2 = [t for t in trials if t["model.kind"] is None and defaults_part(t) is None]
    if not m2 or not m1:
        print("no finished runs yet")
        return
    stacked = run_sweep(m1m2_spec(spec, m2, {s: t["run"] for s, t in m1.items()},
                                  30 if args.quick else M1M2_EPOCHS),
                        runs / "m1m2", workers=args.workers, report_only=args.report)
    stacked = {(int(t["data.labeled"]), int(t["train.seed"])): t for t in stacked if t["state"] == "COMPLETE"}
    rows = []
    for trial in sorted(m2, key=lambda t: (int(t["train.seed"]), int(t["data.labeled"]))):
        seed = int(trial["train.seed"])
        rows += [classifier_alone(trial), m1_logistic(m1[seed], trial), m2_row(trial, "M2")]
        point = (int(trial["data.labeled"]), seed)
        if point in stacked:  # the M1 VAE's time counted in
            rows.append(m2_row(stacked[point], "M1+M2", metrics(m1[seed]["run"])[-1]["seconds"]))
    for row in rows:
        print(f"{row['method']:<22} labels {row['labels']:>5} seed {row['seed']}: test error {row['test_error']:.4f}")
    write_csv(rows, results / "semisupervised.csv")
    summary = summarize(rows, ("method", "labels", "epochs"), ("test_error", "seconds"))
    write_csv(summary, results / "summary.csv")
    plot_curves(rows, results / "curves.png")
    for part, part_rows in defaults_rows([t for t in trials if defaults_part(t) is not None]).items():
        write_csv(part_rows, results / f"sweep_{part}.csv")


if __name__ == "__main__":
    main()
