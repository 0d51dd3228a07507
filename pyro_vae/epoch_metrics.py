"""What an epoch leaves behind: its row of `metrics.csv` and its line of text, as pure functions
of the numbers the trainer measured (so that both can be tested without training anything).

The row's columns (every logger receives the same rows):

- `epoch`, `step`: epochs and optimizer steps done;
- `kl_weight`: beta at the epoch's last step; `effective_kl_weight`: the weight the KL term
  carried in the loss, D beta under `objective.reduction = "mean"` (`build.TrainingComponents`);
- `lr`: the learning rate of the epoch's last step; `capacity`: C(t) where capacity is in force;
- `train_loss`: the mean training loss (the objective optimized, per data point);
- `train_elbo`, `train_reconstruction`, `train_kl` (on `train.train_eval_examples`
  training images) and `val_elbo`, `val_reconstruction`, `val_kl`: the true ELBO (KL
  weight 1) and its two terms, per data point; `active_units` on the validation set;
- `val_accuracy`: the classifier's accuracy, for a model with q(y | x);
- `kl_<d>`: the validation KL of latent dimension d; `val_kl_<site>` and
  `active_units_<site>`: per stochastic layer of a hierarchical model;
- `seconds`: wall-clock seconds of training since the run began (evaluation included).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def metrics_row(epoch: int, step: int, beta: float, effective_kl_weight: float, lr: float,
                capacity: float | None, train_loss: Sequence[float], train: dict[str, Any],
                val: dict[str, Any], seconds: float) -> dict[str, float]:
    """The `metrics.csv` row of an epoch. `train_loss` is (sum, count) over its steps;
    `train` and `val` are `evaluation.evaluate_elbo`'s results on the two splits."""
    loss_sum, count = train_loss
    row: dict[str, float] = {
        "epoch": epoch,
        "step": step,
        "kl_weight": beta,
        "effective_kl_weight": effective_kl_weight,
        "lr": lr,
        **({"capacity": capacity} if capacity is not None else {}),
        "train_loss": loss_sum / max(count, 1),
        "train_elbo": train["elbo"],
        "train_reconstruction": train["reconstruction"],
        "train_kl": train["kl"],
        "val_elbo": val["elbo"],
        "val_reconstruction": val["reconstruction"],
        "val_kl": val["kl"],
        "active_units": val["active_units"],
        "seconds": seconds,
    }
    if "accuracy" in val:  # a model with a classifier q(y | x)
        row["val_accuracy"] = val["accuracy"]
    row.update({f"kl_{d}": kl for d, kl in enumerate(val["kl_per_dimension"] or [])})
    row.update({f"val_kl_{site}": kl for site, kl in val.get("kl_per_layer", {}).items()})
    row.update({f"active_units_{site}": n for site, n in val.get("active_units_per_layer", {}).items()})
    return row


def epoch_summary(row: dict[str, float]) -> str:
    """The line printed after an epoch, read from its metrics row."""
    line = (f"epoch {row['epoch']:.0f}: training loss {row['train_loss']:.3f}, train ELBO {row['train_elbo']:.3f}, "
            f"validation ELBO {row['val_elbo']:.3f} (KL {row['val_kl']:.2f}, {row['active_units']:.0f} active units)")
    if "val_accuracy" in row:
        line += f", validation accuracy {row['val_accuracy']:.4f}"
    return line
