"""Experiment tracking: where a run's numbers go, named by `train.loggers`.

- `csv` (the default): `metrics.csv` in the run directory, one row per epoch, replaced
  atomically after every epoch.
- `tensorboard`: event files under `RUN/tensorboard` (`tensorboard --logdir RUN`): every
  metrics column per epoch, the training loss every `train.log_every` steps, the run's
  figures as images and the config as text and hyperparameters. Needs the `tensorboard`
  package (`pip install "pyro-vae[tensorboard]"`).
- `mlflow`: an MLflow run with the config as parameters (and `config.toml` as an
  artifact), every metrics column per epoch (MLflow step = epoch), the training loss every
  `train.log_every` steps and the figures as artifacts. The store is `MLFLOW_TRACKING_URI`
  if set, else a local SQLite database `RUN/mlflow/mlflow.db` with the artifacts under
  `RUN/mlflow/artifacts`. Needs `pip install "pyro-vae[mlflow]"`.
- `wandb`: a Weights & Biases run with the same contents, **offline** unless `WANDB_MODE`
  says otherwise (`WANDB_MODE=online`, or `wandb sync RUN/wandb/offline-run-*` later), so
  it never needs a network or an account. Needs `pip install "pyro-vae[wandb]"`.

Every metrics column includes `lr`, the learning rate of the epoch's last step.

Every run also has a `Console` (not a `train.loggers` choice): the progress bar on a terminal
and one line per epoch, a logger like the others.

A logger is built when training starts (nothing is written before the run's checks pass);
`check_available` runs before that, so a missing package is a one-line error up front.
Adding a tracker is one class and one `@LOGGERS.register` line.
"""

import csv
import os
import sys
import time
import uuid
from typing import Any

from tqdm.auto import tqdm

from .atomic import atomic_write, write_text_atomically
from .epoch_metrics import epoch_summary
from .registry import Registry, UserError

LOGGERS = Registry("logger")


def require(module, logger, extra):
    """Import `module` or raise the one-line error that names the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f'train.loggers = ["{logger}"] needs the {extra} package: pip install "pyro-vae[{extra}]"') from None


def flat_config(config):
    """{"section.key": value} with tables and lists as their text: the hyperparameters of a run."""
    return {
        f"{section}.{key}": value if isinstance(value, (int, float, str, bool)) else str(value)
        for section, values in config.items()
        for key, value in values.items()
    }


def write_metrics(rows, path):
    """Write the rows (dicts) as CSV, replacing `path` atomically."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def read_metrics(path):
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


class Logger:
    """Base class: each hook is called on the main process only."""

    context_arguments = ("out", "config")

    def __init__(self, out, config):
        self.out, self.config = out, config

    @classmethod
    def check_available(cls):
        """Raise a one-line error if a package this logger needs is missing."""

    def epoch(self, rows):
        """After every epoch: `rows` are all metrics rows so far, the last one new."""

    def step(self, step, loss):
        """After every optimizer step (`step`: steps done). `loss()` reads the step's minibatch
        loss from the device, a wait for it: the trackers read it only every `train.log_every`
        steps (`due`)."""

    def due(self, step):
        """Whether `step` is one of the steps whose loss is logged (every `train.log_every`)."""
        return step % self.config["train"]["log_every"] == 0

    def figures(self, paths):
        """At the end of training: the run's figures (PNG paths)."""

    def close(self):
        pass


class Console(Logger):
    """The terminal: a progress bar over the run's steps, and one line per epoch.

    The bar shows only with `train.progress` and a terminal on stderr: in a pipe or a log
    file its carriage-return updates would pile up, and the epoch lines (printed in any case, at
    once) are the progress. Not a `train.loggers` choice: every run has it, on the main process.
    `status(loss)` is the bar's text for the last step's loss, read every 10 steps and on the
    first step of an epoch."""

    def __init__(self, out, config, total: int | None, done, description, status):
        super().__init__(out, config)
        self.status, self.fresh = status, True
        self.bar = tqdm(total=total, initial=done, unit="step", dynamic_ncols=True, desc=description,
                        disable=not (config["train"]["progress"] and _is_terminal(sys.stderr)))

    def step(self, step, loss):
        self.bar.update()
        if not self.bar.disable and (self.fresh or step % 10 == 0):
            self.bar.set_postfix_str(self.status(loss()), refresh=False)
            self.fresh = False

    def epoch(self, rows):
        self.say(epoch_summary(rows[-1]))
        self.fresh = True

    def say(self, line):
        """Print a line above the bar, at once (a piped log gets each epoch as it ends)."""
        self.bar.write(line)
        sys.stdout.flush()

    def close(self):
        self.bar.close()


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def tracked_values(row: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A metrics row as the trackers log it: its epoch, and its other columns that hold a value
    (not None)."""
    return int(row["epoch"]), {key: value for key, value in row.items() if key != "epoch" and value is not None}


@LOGGERS.register("csv")
class CSVLogger(Logger):
    """metrics.csv in the run directory, one row per epoch."""

    def epoch(self, rows):
        write_metrics(rows, self.out / "metrics.csv")


@LOGGERS.register("tensorboard")
class TensorBoardLogger(Logger):
    """TensorBoard event files under RUN/tensorboard: metrics, step losses, figures, config."""

    @classmethod
    def check_available(cls):
        require("torch.utils.tensorboard", "tensorboard", "tensorboard")

    def __init__(self, out, config):
        super().__init__(out, config)
        import tomli_w
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        self.writer.add_text("config", "    " + tomli_w.dumps(config).replace("\n", "\n    "))
        self.best = None

    def epoch(self, rows):
        epoch, values = tracked_values(rows[-1])
        for key, value in values.items():
            self.writer.add_scalar(f"epoch/{key}", value, epoch)
        self.best = max(r["val_elbo"] for r in rows)
        self.writer.flush()

    def step(self, step, loss):
        if self.due(step):
            self.writer.add_scalar("step/train_loss", loss(), step)

    def figures(self, paths):
        from matplotlib import image

        for path in paths:
            pixels = image.imread(path)  # (H, W, 3 or 4) floats in [0, 1]
            self.writer.add_image(path.stem, pixels[..., :3], dataformats="HWC")

    def close(self):
        hparams = flat_config(self.config)
        if self.best is not None:
            self.writer.add_hparams(hparams, {"best_val_elbo": self.best}, run_name=".")
        self.writer.close()


def _run_id(folder):
    """The tracker's run id this run directory recorded (a resumed run continues that run), or None."""
    path = folder / "run_id"
    return path.read_text().strip() if path.is_file() else None


@LOGGERS.register("mlflow")
class MLflowLogger(Logger):
    """An MLflow run: config as parameters and artifact, metrics per epoch and step, figures as artifacts."""

    @classmethod
    def check_available(cls):
        require("mlflow", "mlflow", "mlflow")

    def __init__(self, out, config):
        super().__init__(out, config)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        folder = out / "mlflow"
        folder.mkdir(parents=True, exist_ok=True)
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        local = uri is None
        if local:  # MLflow's file store is retired; a SQLite file is its local store
            uri = f"sqlite:///{(folder / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = _run_id(folder)
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "pyro-vae")
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            location = (folder / "artifacts").resolve().as_uri() if local else None
            experiment_id = self.client.create_experiment(name, artifact_location=location)
        self.run_id = self.client.create_run(experiment_id, run_name=out.name).info.run_id
        write_text_atomically(folder / "run_id", self.run_id + "\n")
        params = [Param(key, str(value)[:6000]) for key, value in flat_config(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        if (out / "config.toml").is_file():
            self.client.log_artifact(self.run_id, str(out / "config.toml"))

    def epoch(self, rows):
        from mlflow.entities import Metric

        (epoch, values), now = tracked_values(rows[-1]), int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, epoch) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def step(self, step, loss):
        if self.due(step):
            self.client.log_metric(self.run_id, "step_train_loss", loss(), step=step)

    def figures(self, paths):
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path="figures")

    def close(self):
        self.client.set_terminated(self.run_id)


@LOGGERS.register("wandb")
class WandbLogger(Logger):
    """A Weights & Biases run (offline by default): config, metrics per epoch and step, figures as images."""

    @classmethod
    def check_available(cls):
        require("wandb", "wandb", "wandb")

    def __init__(self, out, config):
        super().__init__(out, config)
        import wandb

        self.wandb = wandb
        folder = out / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        run_id = _run_id(folder) or uuid.uuid4().hex[:8]  # os.urandom: no RNG of the run is touched
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "pyro-vae"), dir=str(out), name=out.name, id=run_id,
            resume="allow", config=config, reinit="create_new",
            # WANDB_MODE as given: wandb.init refuses a mode it does not know (mypy wants its Literal)
            mode=os.environ.get("WANDB_MODE", "offline"),  # type: ignore[arg-type]
            # console="off": wandb leaves sys.stdout and sys.stderr as they are
            settings=wandb.Settings(console="off", quiet=True, x_disable_stats=True, save_code=False),
        )
        write_text_atomically(folder / "run_id", run_id + "\n")
        self.run.define_metric("epoch")
        self.run.define_metric("epoch/*", step_metric="epoch")
        self.run.define_metric("step")
        self.run.define_metric("step/*", step_metric="step")

    def epoch(self, rows):
        epoch, values = tracked_values(rows[-1])
        self.run.log({"epoch": epoch, **{f"epoch/{key}": value for key, value in values.items()}})

    def step(self, step, loss):
        if self.due(step):
            self.run.log({"step": step, "step/train_loss": loss()})

    def figures(self, paths):
        self.run.log({f"figures/{path.stem}": self.wandb.Image(str(path)) for path in paths})

    def close(self):
        self.run.finish()
