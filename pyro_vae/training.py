"""Training: SVI on the VAE's model and guide, with a torch optimizer, that loses nothing.

Each step evaluates the estimator's differentiable loss (the negative ELBO per data
point) for the Pyro model and guide, with the KL weight of that step (and, under
capacity or free bits, the KL penalty of that step: `penalties`) passed as an
argument; the estimator applies it as a handler on the latent sites (or, for the
library's own programs, computes the same loss directly: `objectives`). A torch
optimizer updates the parameters. This is Pyro's ELBO used as a torch module
(`losses.NegativeELBO`), which is what lets `DistributedDataParallel` wrap it.

`Trainer` is the loop and the state a checkpoint holds, nothing else. What a run is made of
and how it steps (the loss, data-parallel or not, a captured or an eager step) is decided by
`build.build_training`; the epoch's metrics row and line are pure functions
(`epoch_metrics`), as are early stopping and the best epoch (`stopping`); numerical faults
become one-line errors in `faults`; SIGINT and SIGTERM become a stop request in `signals`;
the progress bar and the trackers are loggers (`loggers`); the run directory and its figures
are `runs`'.

After every epoch the true ELBO (KL weight 1) is measured on the training and
validation sets without touching any parameter, a row is added to
`metrics.csv`, and the checkpoints are replaced atomically: `checkpoint.pt`
(the last state) and `best.pt` (the best validation ELBO so far).

A checkpoint holds everything a run's future depends on: parameters, optimizer
and learning-rate schedule state, the step and epoch (hence the KL schedule's
position and the data order, which is a function of the seed and epoch), the
generator of dynamic binarization, and the torch, CUDA, numpy and Python RNG
states. `train(resume=RUN)` continues a run exactly: on CPU, a run killed
mid-epoch and resumed ends with bit-identical parameters.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pyro
import torch
import torch.distributed as dist

from . import stopping
from .annealing import Constant
from .build import build_data, build_training
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import apply_overrides, check_config, load_config, save_config
from .devices import distributed_context, resolve_device, torch_threads
from .epoch_metrics import metrics_row
from .evaluation import evaluate_elbo
from .faults import Faults
from .loggers import LOGGERS, Console, Logger
from .registry import UserError
from .runs import (
    check_resumable,
    check_writable_directory,
    clear_run_outputs,
    discard_run,
    prepare_run_directory,
    save_figures,
)
from .signals import StopRequests
from .steps import CaptureFailed

if TYPE_CHECKING:
    import numpy as np

    from .data import Data


class TrainingStopped(Exception):
    """Training stopped on SIGINT or SIGTERM after writing a checkpoint."""

    def __init__(self, message, exit_status):
        super().__init__(message)
        self.exit_status = exit_status


class Trainer:
    """One training run: the loop over epochs and steps, and the state its checkpoints hold.

    What the run is made of and how it steps are decided by `build.build_training`; the
    metrics row and the epoch's line are `epoch_metrics`'; early stopping and the best epoch
    `stopping`'s; signals `signals`'; the progress bar is a logger (`loggers.Console`)."""

    def __init__(self, config, data, out, device, rank=0, world_size=1, callbacks=()):
        self.config, self.data, self.out, self.device = config, data, out, device
        self.callbacks = list(callbacks)  # loggers the caller built (`train(callbacks=...)`)
        self.rank, self.world_size = rank, world_size
        training = build_training(config, data, device, world_size)
        self.faults = Faults(training.step, training.components, config["train"], out)
        self.components, self.loss, self.train_step_fn = training.components, training.loss, training.step
        self.captured, self.capture_obstacle = training.captured, training.capture_obstacle
        components = self.components
        self.vae, self.optimizer, self.lr_schedule = components.vae, components.optimizer, components.lr_schedule
        self.steps_per_epoch = components.steps_per_epoch
        # dynamic binarization draws its noise on the training device
        self.noise = torch.Generator(device=device).manual_seed(config["train"]["seed"] * 7919 + rank)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.rows = []  # the metrics rows so far; early stopping and best.pt read them (``stopping``)
        self.stop_requests = StopRequests()
        # each a Logger class (its registry holds Callables to mypy)
        self.logger_classes = [cast("type[Logger]", LOGGERS.get(name)) for name in dict.fromkeys(config["train"]["loggers"])]
        for logger_class in self.logger_classes:
            logger_class.check_available()
        self.loggers, self.console = [], None  # built when training starts, on the main process

    @property
    def estimator(self):
        return getattr(self.loss, "module", self.loss).estimator  # inside DistributedDataParallel or not

    @property
    def is_main(self):
        return self.rank == 0

    # ---- the loop ----

    def fit(self):
        train_config = self.config["train"]
        with self.stop_requests, contextlib.ExitStack() as opened, pyro.validation_enabled(train_config["validate"]):
            self._open_loggers(opened)
            # the run's training seconds (metrics.csv's `seconds`) count on across resumed attempts
            self.start = time.perf_counter() - (self.rows[-1]["seconds"] if self.rows else 0.0)  # after the trackers' set-up
            for epoch in range(self.epoch + 1, train_config["epochs"] + 1):
                if self.out_of_time(say=True) or self.stopped_early():
                    break
                self._train_epoch(epoch)
                self.epoch, self.batch_in_epoch = epoch, 0
                self._end_epoch(epoch, time.perf_counter() - self.start)
            if self.is_main:
                paths = save_figures(self.vae, self.data, self.rows, self.out, self.device)
                for logger in self.loggers:
                    logger.figures(paths)

    def _train_epoch(self, epoch):
        train_config = self.config["train"]
        batches = self.vae.training_batches(
            self.data, train_config["batch_size"], train_config["seed"] * 100003 + epoch, self.noise, self.device,
            self.rank, self.world_size, skip=self.batch_in_epoch, labeled_batch_size=train_config["labeled_batch_size"],
        )
        self.vae.train()
        for x in batches:
            with self.faults.stopped_if_diverged(epoch, self.step):
                self.train_step(x)
            self.step += 1  # a skipped (non-finite) batch still counts: it was drawn
            self.batch_in_epoch += 1
            loss = functools.cache(self.read_loss)  # read from the device once, and only if a logger asks
            for logger in self.loggers:
                logger.step(self.step, loss)
            if train_config["checkpoint_every"] and self.step % train_config["checkpoint_every"] == 0:
                self.save()
            if self.stop_requests.received is not None:
                self._stop()
            if self.out_of_time():  # the epoch is closed as any other: its row, checkpoint.pt, best.pt
                break

    def train_step(self, x):
        """One optimizer step on the minibatch `x` with the KL weight of the current step.

        Nothing is read from the device (`steps`): the loss and the non-finite check are
        counted there, and read by `Faults.check_steps` and the epoch's metrics."""
        try:
            self.train_step_fn(x, self.components.effective_kl_weight(self.step), self.components.kl_penalty(self.step))
        except CaptureFailed as error:  # train.cuda_graph = true: stop before any checkpoint of this step
            raise UserError(f"{error} at step {self.step + 1}; {self.faults.checkpoint_kept()}; "
                            "resume with --set train.cuda_graph=false (or \"auto\") to train eagerly") from error

    def _end_epoch(self, epoch, seconds):
        train_config = self.config["train"]
        self.faults.check_steps()
        self.faults.check_parameters(epoch, self.step)
        self.vae.eval()
        all_reduce = dist.all_reduce if self.world_size > 1 else None  # every rank evaluates its shard
        epoch_loss = self.train_step_fn.epoch_loss()
        if all_reduce is not None:
            totals = torch.tensor(epoch_loss, dtype=torch.float64, device=self.device)
            all_reduce(totals)
            epoch_loss = totals.tolist()
        self.train_step_fn.set_epoch_loss([0.0, 0.0])

        def evaluate(split, limit=None):
            batches = self.data.batches(split, train_config["eval_batch_size"], self.device, limit, self.rank, self.world_size,
                                        self.vae.takes_labels)
            return evaluate_elbo(self.vae, batches, all_reduce=all_reduce)

        with self.faults.stopped_if_diverged(epoch, self.step):
            train, val = evaluate("train", train_config["train_eval_examples"]), evaluate("valid")
        for name, result in (("training ELBO", train), ("validation ELBO", val)):
            if not math.isfinite(result["elbo"]):
                self.faults.diverged(f"{name} ({result['elbo']})", epoch, self.step)
        lr = self.lr_schedule.last_rate()  # the epoch's last step's, before a plateau cut takes effect
        self.lr_schedule.epoch_end(val["elbo"])  # the same on every rank: the sums are all-reduced
        if not self.is_main:
            return
        last = max(self.step - 1, 0)  # the epoch's last step: its KL weight and capacity are the row's
        components = self.components
        self.rows.append(metrics_row(epoch, self.step, components.kl_schedule(last), components.effective_kl_weight(last),
                                     lr, getattr(components.kl_penalty(last), "capacity", None), epoch_loss, train, val,
                                     seconds))
        for logger in self.loggers:
            logger.epoch(self.rows)
        self.save()
        if stopping.best_epoch([row["val_elbo"] for row in self.rows])[0] == len(self.rows) - 1:
            self.save("best.pt")

    def stopped_early(self):
        """Whether `train.early_stopping` ends the run here (`stopping`: `min_delta` governs
        patience only; the line printed names the state `best.pt` holds). Read from the metrics
        rows, so a resumed run stops at the same place."""
        rule = self.config["train"]["early_stopping"]
        if not rule or not self.rows:
            return False
        elbos = [row["val_elbo"] for row in self.rows]
        patience, min_delta = rule["patience"], rule.get("min_delta", 0.0)
        if not stopping.should_stop(elbos, patience, min_delta):
            return False
        if self.is_main:
            assert self.console is not None  # opened on the main process before the first epoch
            self.console.say(stopping.stop_message(elbos, patience, min_delta))
        return True

    def out_of_time(self, say=False):
        """Whether the run's training seconds have reached `train.max_time` (0: no limit); `say`
        prints why the run ends. Under torchrun every rank follows the slowest clock, so all stop
        at the same step."""
        max_time = self.config["train"]["max_time"]
        if not max_time:
            return False
        seconds = time.perf_counter() - self.start
        if self.world_size > 1:
            reached = torch.tensor(float(seconds >= max_time), device=self.device)
            dist.all_reduce(reached, op=dist.ReduceOp.MAX)
            out = bool(reached.item())
        else:
            out = seconds >= max_time
        if out and say and self.is_main:
            assert self.console is not None  # opened on the main process before the first epoch
            self.console.say(f"stopped: train.max_time ({max_time:g} s) reached after {seconds:.1f} s of training, "
                             f"at step {self.step}; train longer with --resume and --set train.max_time=N")
        return out

    # ---- what the loggers see ----

    def _open_loggers(self, opened):
        """The console and the `train.loggers`, on the main process; each one built is closed by `opened`."""
        if not self.is_main:
            return
        train_config = self.config["train"]
        # under a time budget the steps to come are unknown: the bar counts steps and their rate
        total = None if train_config["max_time"] else train_config["epochs"] * self.steps_per_epoch
        self.console = Console(self.out, self.config, total, self.step,
                               loss_name(self.components, self.estimator), self.progress_status)
        self.loggers = [self.console]
        opened.callback(self.console.close)
        for logger_class in self.logger_classes:
            logger = logger_class(self.out, self.config)
            self.loggers.append(logger)
            opened.callback(logger.close)
        self.loggers.extend(self.callbacks)  # last: they see each epoch after metrics.csv is written

    def read_loss(self):
        """The last step's minibatch loss, read from the device (the fault counters are checked with it)."""
        self.faults.check_steps()
        return self.train_step_fn.last_loss.item()

    def progress_status(self, loss):
        """The progress bar's text after a step whose loss is `loss`."""
        last, components = max(self.step - 1, 0), self.components
        weight = "" if isinstance(components.kl_schedule, Constant) else f" kl_weight {components.kl_schedule(last):.3g}"
        capacity = getattr(components.kl_penalty(last), "capacity", None)
        return f"epoch {self.epoch + 1} loss {loss:.3f}{weight}" + ("" if capacity is None else f" C {capacity:.3g}")

    # ---- checkpoints ----

    def state_dict(self):
        return {
            "model": self.vae.state_dict(),
            "estimator": self.estimator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "data_shape": list(self.data.shape),
            "data_levels": self.data.levels,
            "config": self.config,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_loss": self.train_step_fn.epoch_loss(),
            "rows": self.rows,
            "best_val_elbo": max((row["val_elbo"] for row in self.rows), default=-math.inf),  # for readers of the file
            "skipped_steps": self.train_step_fn.faults()[0],
            "noise": self.noise.get_state(),
            "rng": rng_state(),
        }

    def load_state_dict(self, state):
        try:
            self.vae.load_state_dict(state["model"])
            self.estimator.load_state_dict(state["estimator"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise UserError(f"the checkpoint does not fit this model: {str(error).splitlines()[0][:200]}") from None
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.train_step_fn.set_epoch_loss(state["epoch_loss"])
        self.train_step_fn.set_faults(state["skipped_steps"], self.step)
        self.rows = list(state["rows"])
        self.noise.set_state(state["noise"])
        set_rng_state(state["rng"])

    def save(self, name="checkpoint.pt"):
        self.faults.check_steps()  # before every save: an existing checkpoint is the last good one
        if self.is_main:
            save_checkpoint(self.state_dict(), self.out / name)

    def _stop(self):
        self.save()  # metrics.csv already holds every finished epoch
        signum = self.stop_requests.received
        assert signum is not None  # _stop is called once a stop signal was received
        raise TrainingStopped(
            f"stopped by {signal.Signals(signum).name} at step {self.step}; checkpoint written to "
            f"{self.out / 'checkpoint.pt'}; continue with: pyro-vae train --resume {self.out}",
            128 + signum,
        )


def loss_name(components, estimator):
    """What the progress bar's loss is: -ELBO, the KL-weighted -ELBO, or minus another bound."""
    penalty = components.kl_penalty(0)
    if penalty is not None:  # -(reconstruction - KL term), the KL term a penalty of the KL
        return f"-(reconstruction - {penalty.name} penalty)"
    bound = "ELBO" if estimator.reports_elbo else f"{estimator.registered_name} bound"
    weighted = not isinstance(components.kl_schedule, Constant) or components.effective_kl_weight(0) != 1
    per = " per feature" if components.features_per_term != 1 else ""
    return f"-{bound}{' (KL-weighted)' if weighted else ''}{per}"


def train(
    config: dict[str, Any] | str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    overrides: Iterable[str] = (),
    resume: str | os.PathLike[str] | None = None,
    data: Data | torch.Tensor | np.ndarray | dict[str, Any] | None = None,
    callbacks: Iterable[Logger] = (),
) -> Path:
    """Train a VAE from a config (a dict, a TOML path, or None for the defaults).

    `resume=RUN` continues the run in directory RUN from its last checkpoint (the
    config is the run's own; `config`/`overrides` may only change the keys in
    `RESUMABLE_KEYS`, e.g. `train.epochs` to train longer). Returns the run
    directory. Config, data and checkpoint are all checked before any file is written.
    `data` trains on your own arrays, tensors or Data instead of `config["data"]`'s
    dataset (`data.as_data`); the run records `data.name = "arrays"`. `callbacks`: loggers
    (`loggers.Logger` instances) that see every epoch and step after the run's own, on the main
    process, e.g. the sweeps' pruning reporter; the caller opens and closes them.
    """
    if resume is not None:
        run = Path(resume)
        if not (run / "config.toml").is_file() or not (run / "checkpoint.pt").is_file():
            raise UserError(f"--resume {run}: not a run directory with config.toml and checkpoint.pt")
        state = load_checkpoint(run / "checkpoint.pt")
        new = load_config(run / "config.toml", overrides) if config is None else _as_config(config, overrides)
        check_resumable(state["config"], new, run)
        config, out = new, check_writable_directory(run)
        if state["epoch"] >= config["train"]["epochs"] and state["batch_in_epoch"] == 0:
            print(f"nothing to do: {run} has trained {state['epoch']} of {config['train']['epochs']} epochs; "
                  f"train it longer with --set train.epochs=N, N > {state['epoch']}", file=sys.stderr)
            return run
    else:
        config, state = _as_config(config, overrides), None
        out = prepare_run_directory(out, force)
    with torch_threads(config["train"]["threads"]):
        return _train(config, out, force, resume, state, data, callbacks)


def _train(config, out, force, resume, state, data, callbacks=()):
    device = resolve_device(config["train"]["device"])
    rank, world_size, device = distributed_context(device)
    pyro.set_rng_seed(config["train"]["seed"] + rank)

    if data is not None:
        config["data"]["name"] = "arrays"
    data = build_data(config, data)
    if rank == 0:
        print(f"data: {data.summary()}")
    if config["data"]["on_device"]:
        data.to(device)
    trainer = Trainer(config, data, out, device, rank, world_size, callbacks)
    if resume is not None:
        trainer.load_state_dict(state)
    if len(data.train) < config["train"]["batch_size"] and trainer.is_main:
        print(f"warning: train.batch_size ({config['train']['batch_size']}) is larger than the training split "
              f"({len(data.train)} examples): one step per epoch", file=sys.stderr)
    created = not out.exists()
    if trainer.is_main:
        if resume is None and force:
            clear_run_outputs(out)
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.toml")
    try:
        trainer.fit()
    except BaseException:
        # a run that stops before its first checkpoint cannot be resumed: leave nothing of it, so
        # that the same command can be run into the same directory again
        if trainer.is_main and resume is None and not (out / "checkpoint.pt").exists():
            discard_run(out, created)
        raise
    return out


def _as_config(config, overrides):
    if isinstance(config, dict):
        return check_config(apply_overrides(config, overrides))
    return load_config(config, overrides)
