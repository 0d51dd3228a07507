"""Semi-supervised classification with few labels: M2 and M1+M2 against the classifier on the labels alone and
M1 + logistic regression, and the sweep behind M2's defaults: a sweep (`semisupervised.toml`; M1+M2 a second
sweep on its M1 runs). Set-up and results: experiments/semisupervised.md and semisupervised_sweep.md.

    python experiments/semisupervised.py --quick    # digits, 50 labels, 1 seed, 30 epochs, no defaults' sweep: minutes
    python experiments/semisupervised.py            # 55 runs (resumable: the same command continues)
    python experiments/semisupervised.py --report   # the tables and figure from the runs so far

Writes `semisupervised.csv` (a row per method, labels and seed), `summary.csv`, `curves.png` and the defaults'
sweep's `sweep_*.csv` to `experiments/results/semisupervised/` (`runs/semisupervised/quick/` with `--quick`).
"""

import copy
import time
from pathlib import Path

import torch
from common import arguments, places, read_spec, run_sweep, summarize, write_csv

from pyro_vae.config import load_config
from pyro_vae.data import HIDDEN
from pyro_vae.models import CLASSIFIERS, fit_classifier
from pyro_vae.runs import load_run, load_run_data, read_metrics

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


def m1m2_spec(spec, m2_rows, m1, epochs):
    """M2 on the codes of each seed's M1 run (`m1`: seed -> trial), at the label counts of the M2 runs."""
    spec = copy.deepcopy(spec)
    labels = sorted({int(row["data.labeled"]) for row in m2_rows})
    spec["sweep"]["grid"] = [
        {"model.features": [m1[seed]["run"]], "model.likelihood": [CODE_LIKELIHOOD], "train.epochs": [epochs],
         "data.labeled": labels, "data.labeled_seed": [seed], "train.seed": [seed]}
        for seed in sorted(m1)]
    return spec


def result_row(trial, method, test_error, seconds, epochs="", val_accuracy=""):
    """A row of `semisupervised.csv` at the labels and seed of the M2 run `trial`."""
    return {"method": method, "labels": int(trial["data.labeled"]), "seed": int(trial["train.seed"]), "epochs": epochs,
            "test_error": test_error, "seconds": seconds, "val_accuracy": val_accuracy}


def m2_row(trial, method, seconds=0.0):
    """The test error of the M2 (or M1+M2) run's classifier, its training time (plus `seconds`), its curve."""
    epochs = read_metrics(f"{trial['run']}/metrics.csv")
    curve = ";".join(f"{epoch['val_accuracy']:.4f}" for epoch in epochs)
    return result_row(trial, method, 1 - trial["accuracy"], trial["seconds"] + seconds, len(epochs), curve)


def baselines(trial, m1=None):
    """On the labeled images of the M2 run `trial`: its classifier network trained by cross-entropy alone (1000
    steps: ten passes over a 1000-label set, enough for any N), and with `m1` (M1's trial) logistic regression
    on M1's mean codes E_q[z | x]."""
    from sklearn.linear_model import LogisticRegression

    _, data = load_run_data(trial["run"])
    known = data.train.labels != HIDDEN
    images, labels, seed = data.train.x[known], data.train.labels[known], int(trial["train.seed"])
    start = time.perf_counter()
    torch.manual_seed(seed)
    classifier = CLASSIFIERS.build(load_config(f"{trial['run']}/config.toml")["model"]["classifier"],
                                   "model.classifier", data_shape=data.shape, num_classes=10)
    fit_classifier(classifier, images, labels, steps=1000, seed=seed)
    with torch.no_grad():
        error = (classifier(data.test.x).argmax(-1) != data.test.labels).float().mean().item()
    rows = [result_row(trial, "classifier alone", error, time.perf_counter() - start)]
    if m1 is not None:
        vae = load_run(m1["run"])
        start = time.perf_counter()
        with torch.no_grad():
            codes, test_codes = vae.encode(images).numpy(), vae.encode(data.test.x).numpy()
        predicted = LogisticRegression(max_iter=2000).fit(codes, labels.numpy()).predict(test_codes)
        error = (torch.as_tensor(predicted) != data.test.labels).float().mean().item()
        seconds = time.perf_counter() - start + m1["seconds"]  # M1's training counted in
        rows.append(result_row(trial, "M1 + logistic", error, seconds, len(read_metrics(f"{m1['run']}/metrics.csv"))))
    return rows


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
            part[point] = [{"data": data, "classification_weight": "", "labeled_batch_size": "", **baselines(trial)[0]}]
        part[point].append({"data": data, "classification_weight": float(trial["objective.classification_weight"]),
                            "labeled_batch_size": int(trial["train.labeled_batch_size"]), **m2_row(trial, "M2")})
    columns = ("data", "labels", "seed", "method", "classification_weight", "labeled_batch_size", "epochs",
               "val_accuracy", "test_error", "seconds")
    return {name: [{c: row[c] for c in columns} for rows in part.values() for row in rows]
            for name, part in tables.items()}


def plot_curves(rows, path):
    """Validation error of M2 and M1+M2 after each epoch (one line per seed), one panel per label
    count, beside the test errors of the baselines (dashed: classifier alone; dotted: M1 + logistic)."""
    from matplotlib.figure import Figure

    label_counts = list(dict.fromkeys(row["labels"] for row in rows))
    figure = Figure(figsize=(4 * len(label_counts), 3.2))
    colors = {"M2": "C0", "M1+M2": "C1", "classifier alone": "C3", "M1 + logistic": "C2"}
    for ax, labels in zip(figure.subplots(1, len(label_counts), squeeze=False)[0], label_counts):
        for row in (row for row in rows if row["labels"] == labels):
            method = row["method"]
            if row["val_accuracy"]:
                errors = [1 - float(accuracy) for accuracy in row["val_accuracy"].split(";")]
                ax.plot(range(1, len(errors) + 1), errors, color=colors[method], marker="o", markersize=3,
                        label=f"{method} (validation)")
            else:
                style = "--" if method == "classifier alone" else ":"
                ax.axhline(row["test_error"], color=colors[method], linestyle=style, label=f"{method} (test)")
        ax.set(title=f"{labels} labels", xlabel="epoch", ylabel="error")
    unique = {name: handle for handle, name in zip(*ax.get_legend_handles_labels())}  # a line per seed: one entry
    ax.legend(unique.values(), unique.keys(), fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def main():
    args = arguments(__doc__)
    results, runs = places("semisupervised", args.quick)
    spec = read_spec(Path(__file__).with_suffix(".toml"))
    spec = quick_spec(spec) if args.quick else spec
    trials = [t for t in run_sweep(spec, runs, workers=args.workers, report_only=args.report)
              if t["state"] == "COMPLETE"]
    m1 = {int(t["train.seed"]): t for t in trials if t["model.kind"] == "vae"}
    m2 = [t for t in trials if t["model.kind"] is None and defaults_part(t) is None]
    if not m2 or not m1:
        print("no finished runs yet")
        return
    stacked = run_sweep(m1m2_spec(spec, m2, m1, 30 if args.quick else M1M2_EPOCHS), runs / "m1m2",
                        workers=args.workers, report_only=args.report)
    stacked = {(int(t["data.labeled"]), int(t["train.seed"])): t for t in stacked if t["state"] == "COMPLETE"}
    rows = []
    for trial in sorted(m2, key=lambda t: (int(t["train.seed"]), int(t["data.labeled"]))):
        seed = int(trial["train.seed"])
        rows += [*baselines(trial, m1[seed]), m2_row(trial, "M2")]
        point = (int(trial["data.labeled"]), seed)
        if point in stacked:  # the M1 VAE's time counted in
            rows.append(m2_row(stacked[point], "M1+M2", m1[seed]["seconds"]))
    for row in rows:
        print(f"{row['method']:<22} labels {row['labels']:>5} seed {row['seed']}: test error {row['test_error']:.4f}")
    write_csv(rows, results / "semisupervised.csv")
    write_csv(summarize(rows, ("method", "labels", "epochs"), ("test_error", "seconds")), results / "summary.csv")
    plot_curves(rows, results / "curves.png")
    for part, part_rows in defaults_rows([t for t in trials if defaults_part(t) is not None]).items():
        write_csv(part_rows, results / f"sweep_{part}.csv")


if __name__ == "__main__":
    main()
