"""Experiment tracking: where a run's numbers go, named by ``train.loggers``.

- ``csv`` (the default): ``metrics.csv`` in the run directory, one row per epoch, replaced
  atomically after every epoch.
- ``tensorboard``: event files under ``RUN/tensorboard`` (``tensorboard --logdir RUN``): every
  metrics column per epoch, the training loss every ``train.log_every`` steps, the run's
  figures as images and the config as text and hyperparameters. Needs the ``tensorboard``
  package (``pip install "pyro-vae[tensorboard]"``).

A logger is built when training starts (nothing is written before the run's checks pass);
``check_available`` runs before that, so a missing package is a one-line error up front.
"""

import csv
import os

from .registry import Registry, UserError

LOGGERS = Registry("logger")


def write_metrics(rows, path):
    """Write the rows (dicts) as CSV, replacing ``path`` atomically."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_metrics(path):
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


class Logger:
    """Base class: each hook is called on the main process only."""

    context_arguments = ("out", "config")
    wants_steps = False  # whether ``step`` should be called (it reads the loss from the device)

    def __init__(self, out, config):
        self.out, self.config = out, config

    @classmethod
    def check_available(cls):
        """Raise a one-line error if a package this logger needs is missing."""

    def epoch(self, rows):
        """After every epoch: ``rows`` are all metrics rows so far, the last one new."""

    def step(self, step, loss):
        """Every ``train.log_every`` steps: the minibatch loss of the last step."""

    def figures(self, paths):
        """At the end of training: the run's figures (PNG paths)."""

    def close(self):
        pass


@LOGGERS.register("csv")
class CSVLogger(Logger):
    """metrics.csv in the run directory, one row per epoch."""

    def epoch(self, rows):
        write_metrics(rows, self.out / "metrics.csv")


@LOGGERS.register("tensorboard")
class TensorBoardLogger(Logger):
    """TensorBoard event files under RUN/tensorboard: metrics, step losses, figures, config."""

    wants_steps = True

    @classmethod
    def check_available(cls):
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise UserError(
                'train.loggers = ["tensorboard"] needs the tensorboard package: pip install "pyro-vae[tensorboard]"'
            ) from None

    def __init__(self, out, config):
        super().__init__(out, config)
        from torch.utils.tensorboard import SummaryWriter

        import tomli_w

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        self.writer.add_text("config", "    " + tomli_w.dumps(config).replace("\n", "\n    "))
        self.best = None

    def epoch(self, rows):
        row = rows[-1]
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and value is not None:
                self.writer.add_scalar(f"epoch/{key}", value, epoch)
        self.best = max(r["val_elbo"] for r in rows)
        self.writer.flush()

    def step(self, step, loss):
        self.writer.add_scalar("step/train_loss", loss, step)

    def figures(self, paths):
        from matplotlib import image

        for path in paths:
            pixels = image.imread(path)  # (H, W, 3 or 4) floats in [0, 1]
            self.writer.add_image(path.stem, pixels[..., :3], dataformats="HWC")

    def close(self):
        hparams = {
            f"{section}.{key}": value if isinstance(value, (int, float, str, bool)) else str(value)
            for section, values in self.config.items()
            for key, value in values.items()
        }
        if self.best is not None:
            self.writer.add_hparams(hparams, {"best_val_elbo": self.best}, run_name=".")
        self.writer.close()
