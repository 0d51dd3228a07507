"""Early stopping (`train.early_stopping`) and the run's "best" state, as pure functions of the
validation ELBOs of the epochs so far (the `val_elbo` column of `metrics.csv`).

Two rules, kept apart so that the line early stopping prints, `best.pt` and `metrics.csv`
always agree:

- **best** (what `best.pt` holds): the epoch with the highest validation ELBO, the first of
  ties. `min_delta` plays no part in it: a better state is kept however small the gain.
- **patience** (when to stop): epoch t is an *improvement* if its ELBO exceeds the reference
  by more than `min_delta`, the reference being the ELBO of the last improvement (the first
  epoch is one). Training stops once `patience` epochs have passed since the last
  improvement. Gains smaller than `min_delta` therefore do not reset the count, but they
  add up: a slow climb that gains more than `min_delta` over several epochs counts as an
  improvement when it does (the rule of Keras' and Lightning's `EarlyStopping`, and of the
  `plateau` learning-rate schedule).

Both read only the rows, so a resumed run stops where the uninterrupted one would.
"""


def best_epoch(val_elbos):
    """(index, value) of the highest validation ELBO, the first of ties: the state `best.pt` holds.

    `best.pt` is written when an epoch's ELBO is strictly greater than every earlier one,
    which is this rule applied epoch by epoch."""
    if not val_elbos:
        raise ValueError("no epochs yet")
    index = max(range(len(val_elbos)), key=lambda i: (val_elbos[i], -i))
    return index, val_elbos[index]


def last_improvement(val_elbos, min_delta=0.0):
    """(index, value) of the last epoch that improved on the reference by more than `min_delta`
    (the reference: the ELBO of the improvement before it; epoch 0 always counts)."""
    if not val_elbos:
        raise ValueError("no epochs yet")
    index, reference = 0, val_elbos[0]
    for i, elbo in enumerate(val_elbos[1:], start=1):
        if elbo > reference + min_delta:
            index, reference = i, elbo
    return index, reference


def should_stop(val_elbos, patience, min_delta=0.0):
    """Whether `patience` epochs have passed since the last improvement by more than `min_delta`."""
    if not val_elbos:
        return False
    index, _ = last_improvement(val_elbos, min_delta)
    return len(val_elbos) - 1 - index >= patience


def stop_message(val_elbos, patience, min_delta=0.0):
    """The line printed when early stopping ends a run: what patience saw, and what `best.pt` holds
    (epochs numbered from 1, as in `metrics.csv`)."""
    last, reference = last_improvement(val_elbos, min_delta)
    best, value = best_epoch(val_elbos)
    by = f" by more than {min_delta:g}" if min_delta else ""
    return (f"early stopping after epoch {len(val_elbos)}: the validation ELBO has not improved{by} for "
            f"{len(val_elbos) - 1 - last} epochs (last improvement {reference:.3f} at epoch {last + 1}); "
            f"best {value:.3f} at epoch {best + 1}, in best.pt")
