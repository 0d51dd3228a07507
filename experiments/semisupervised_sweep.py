"""The sweep behind M2's defaults: classification weight alpha / N and labeled pairs per step.

For each data set here, M2's test error (the classifier q(y | x)) against the same classifier
trained on the labels alone, over ``objective.classification_weight`` (alpha = that * N; Kingma
et al. 2014 use 0.1) and ``train.labeled_batch_size`` (labeled pairs per step; 0 draws
ceil(N_l / steps), each labeled pair once an epoch, the paper's proportion):

- digits, 50 labels, seeds 0 and 1, 30 epochs (the ``--quick`` set-up of ``semisupervised.py``);
- Fashion-MNIST (statically binarized), 100 labels, seed 0, a short budget (``--fashion-epochs``);
- Fashion-MNIST at 600 and 1000 labels, seed 0, 10 epochs (``--only fashion-more-labels``):
  alpha / N = 100 against 1000, i.e. whether the weight of one labeled point's classification
  term, alpha / N_l, should stay as it is at 100 labels when N_l grows.

Every run's row is cached under ``runs/semisupervised_sweep/`` (an interrupted sweep resumes
where it stopped); the table goes to ``experiments/results/semisupervised/sweep.csv``, one row
per run with the validation accuracy after each epoch.

    nice python experiments/semisupervised_sweep.py                 # both data sets
    nice python experiments/semisupervised_sweep.py --only digits
"""

import argparse
import itertools

import torch
from common import write_csv
from semisupervised import OUT, ROOT, Cache, run_classifier_alone, run_m2, setup, with_updates

WEIGHTS = (0.1, 1.0, 10.0, 100.0)
LABELED_BATCH_SIZES = (0, 16, 64)


def sweep(name, quick, labels, seeds, epochs, cache, labeled_batch_sizes, weights=WEIGHTS):
    config, _, _ = setup(quick, epochs)
    rows = []
    for seed in seeds:
        row = cache(f"{name}-classifier-{labels}-{seed}", run_classifier_alone, config, labels, seed)
        rows.append({"data": name, "labels": labels, "seed": seed, "method": "classifier alone",
                     "classification_weight": "", "labeled_batch_size": "", "epochs": "", "val_accuracy": "", **row})
        for weight, per_step in itertools.product(weights, labeled_batch_sizes):
            run_config = with_updates(config, objective={"classification_weight": weight},
                                      train={"labeled_batch_size": per_step})
            key = f"{name}-m2-{labels}-{seed}-w{weight:g}-b{per_step}"
            row = cache(key, run_m2, run_config, labels, seed, cache.runs / key)
            if row is None:  # --cached-only: not run
                continue
            rows.append({"data": name, "labels": labels, "seed": seed, "method": "M2",
                         "classification_weight": weight, "labeled_batch_size": per_step, "epochs": epochs, **row})
            print(f"{key}: test error {row['test_error']:.4f}", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("digits", "fashion", "fashion-more-labels"), default=None)
    parser.add_argument("--fashion-epochs", type=int, default=2)
    parser.add_argument("--cached-only", action="store_true", help="write the table from the runs done so far")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = Cache(ROOT / "runs" / "semisupervised_sweep", cached_only=args.cached_only)
    rows = []
    if args.only in (None, "digits"):
        rows += sweep("digits", True, 50, (0, 1), 30, cache, LABELED_BATCH_SIZES)
    if args.only in (None, "fashion"):
        rows += sweep("fashion-mnist", False, 100, (0,), args.fashion_epochs, cache, (0, 64), weights=(100.0, 10.0, 1.0))
    if args.only in (None, "fashion-more-labels"):
        for labels in (600, 1000):
            rows += sweep("fashion-mnist", False, labels, (0,), 10, cache, (0,), weights=(100.0, 1000.0))
    OUT.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.only is None else f"_{args.only}"
    write_csv(rows, OUT / f"sweep{suffix}.csv")


if __name__ == "__main__":
    main()
