"""Training: SVI on the VAE's model and guide, with a torch optimizer, that loses nothing.

Each step evaluates the estimator's differentiable loss (the negative ELBO per data
point) for the Pyro model and guide, with the KL weight of that step (and, under
capacity or free bits, the KL penalty of that step: ``penalties``) passed as an
argument; the estimator applies it as a handler on the latent sites (or, for the
library's own programs, computes the same loss directly: ``objectives``). A torch
optimizer updates the parameters. This is Pyro's ELBO used as a torch module
(``NegativeELBO``), which is what lets ``DistributedDataParallel`` wrap it. What a
run is made of is built by ``build.build``; its directory, metrics and figures are
``runs``'.

After every epoch the true ELBO (KL weight 1) is measured on the training and
validation sets without touching any parameter, a row is added to
``metrics.csv``, and the checkpoints are replaced atomically: ``checkpoint.pt``
(the last state) and ``best.pt`` (the best validation ELBO so far).

A checkpoint holds everything a run's future depends on: parameters, optimizer
and learning-rate schedule state, the step and epoch (hence the KL schedule's
position and the data order, which is a function of the seed and epoch), the
generator of dynamic binarization, and the torch, CUDA, numpy and Python RNG
states. ``train(resume=RUN)`` continues a run exactly: on CPU, a run killed
mid-epoch and resumed ends with bit-identical parameters.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyro
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from . import stopping
from .annealing import Constant
from .build import build, build_data
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import apply_overrides, check_config, load_config, save_config
from .evaluation import evaluate_elbo
from .loggers import LOGGERS
from .losses import NegativeELBO  # noqa: F401  (its import path before losses.py)
from .registry import UserError
from .runs import check_resumable, check_writable, clear_run_outputs, prepare_run_directory, save_figures
from .steps import CapturedStep, CaptureFailed, Step

if TYPE_CHECKING:
    import numpy as np

    from .data import Data


# What torch says of NaN or infinite distribution parameters (a model that diverged); a guide's
# covariance that overflowed is a LinAlgError ("not positive-definite").
DIVERGED = ("found invalid values", "expects all elements of std >= 0", "not positive-definite")


class TrainingStopped(Exception):
    """Training stopped on SIGINT or SIGTERM after writing a checkpoint."""

    def __init__(self, message, exit_status):
        super().__init__(message)
        self.exit_status = exit_status


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device = {name!r} but no CUDA device is available; use \"auto\" or \"cpu\"")
    return torch.device(name)


class Trainer:
    """One training run: model, optimizer, schedules, data order and RNGs, and their checkpoints."""

    def __init__(self, config, data, out, device, rank=0, world_size=1):
        self.config, self.data, self.out, self.device = config, data, out, device
        self.rank, self.world_size = rank, world_size
        tc = config["train"]
        if tc["batch_size"] % world_size:
            raise UserError(f"train.batch_size ({tc['batch_size']}) must be divisible by the number of processes ({world_size})")
        self.parts = parts = build(config, data, device)
        self.vae, self.optimizer, self.lr_schedule = parts.vae, parts.optimizer, parts.lr_schedule
        self.kl_schedule, self.features_per_term = parts.kl_schedule, parts.features_per_term
        self.steps_per_epoch = parts.steps_per_epoch
        self.beta = self.kl_schedule(0)  # beta, the schedule's value at the current step (messages, metrics)
        self.kl_penalty = parts.kl_penalty(0)  # capacity (with C(t)) or free bits in force, or None
        if world_size > 1 and self.vae.takes_labels:
            raise UserError(f"model.kind = {self.vae.kind!r} trains in one process; "
                            "data-parallel training (torchrun) is for model.kind = \"vae\"")
        self.loss = self.vae.training_loss(parts.estimator, self.features_per_term, config["objective"], data)
        self.parameters = parts.parameters()  # the VAE's and the estimator's
        if world_size > 1:
            self.loss = nn.parallel.DistributedDataParallel(self.loss,
                                                            device_ids=[device.index] if device.type == "cuda" else None)
        obstacle = capture_obstacle(config, self.vae, parts.estimator, self.optimizer, device, world_size)
        if obstacle is None and config["objective"]["capacity"]:
            obstacle = "objective.capacity: C(t) enters the loss as a Python number, which a graph would freeze"
        if tc["cuda_graph"] is True and obstacle:
            raise UserError(f"train.cuda_graph = true is not possible: {obstacle}; set train.cuda_graph = \"auto\" or false")
        self.captured = tc["cuda_graph"] is not False and obstacle is None
        self.capture_obstacle = obstacle
        step_class, options = (CapturedStep, {"fall_back": tc["cuda_graph"] == "auto"}) if self.captured else (Step, {})
        self.train_step_fn = step_class(self.loss, self.optimizer, self.lr_schedule, self.parameters, device,
                                        tc["clip_grad_norm"], tc["precision"], **options)
        # dynamic binarization draws its noise on the training device
        self.noise = torch.Generator(device=device).manual_seed(tc["seed"] * 7919 + rank)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.rows, self.best_val_elbo = [], -math.inf
        self.stop_signal = None
        self.logger_classes = [LOGGERS.get(name) for name in dict.fromkeys(tc["loggers"])]
        for logger_class in self.logger_classes:
            logger_class.check_available()
        self.loggers = []  # built when training starts, on the main process

    @property
    def estimator(self):
        return self.vae_loss.estimator

    @property
    def vae_loss(self):
        """The NegativeELBO module (inside DistributedDataParallel when there is one)."""
        return getattr(self.loss, "module", self.loss)

    @property
    def is_main(self):
        return self.rank == 0

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
            "best_val_elbo": self.best_val_elbo,
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
        if state["lr_schedule"]:  # {}: a checkpoint written before constant rates had a schedule object
            self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.train_step_fn.set_epoch_loss(state["epoch_loss"])
        self.train_step_fn.set_faults(state["skipped_steps"], self.step)
        self.rows, self.best_val_elbo = list(state["rows"]), state["best_val_elbo"]
        self.noise.set_state(state["noise"])
        set_rng_state(state["rng"])

    def save(self, name="checkpoint.pt"):
        self.check_faults()
        if self.is_main:
            save_checkpoint(self.state_dict(), self.out / name)

    def loss_name(self):
        """What the progress bar's loss is: -ELBO, the KL-weighted -ELBO, or minus another bound."""
        estimator = self.estimator
        if self.kl_penalty is not None:  # -(reconstruction - KL term), the KL term a penalty of the KL
            return f"-(reconstruction - {self.kl_penalty.name} penalty)"
        bound = "ELBO" if estimator.reports_elbo else f"{estimator.registered_name} bound"
        weighted = not isinstance(self.kl_schedule, Constant) or self.beta * self.features_per_term != 1
        per = " per feature" if self.features_per_term != 1 else ""
        return f"-{bound}{' (KL-weighted)' if weighted else ''}{per}"

    # ---- the loop ----

    def fit(self):
        tc = self.config["train"]
        previous = self._catch_signals()
        bar = tqdm(
            total=tc["epochs"] * self.steps_per_epoch,
            initial=self.step,
            # without a terminal (a pipe, a log file) the bar's \r updates would pile up: the
            # epoch lines below are then the only progress, one line per epoch
            disable=not (tc["progress"] and self.is_main and _is_terminal(sys.stderr)),
            unit="step",
            dynamic_ncols=True,
            desc=self.loss_name(),
        )
        try:
            for logger_class in self.logger_classes if self.is_main else ():
                self.loggers.append(logger_class(self.out, self.config))  # each one built is closed below
            start = time.perf_counter() - (self.rows[-1]["seconds"] if self.rows else 0.0)  # after the trackers' set-up
            with pyro.validation_enabled(tc["validate"]):
                for epoch in range(self.epoch + 1, tc["epochs"] + 1):
                    if self.stopped_early(bar):
                        break
                    self._train_epoch(epoch, bar)
                    self.epoch, self.batch_in_epoch = epoch, 0
                    self._end_epoch(epoch, time.perf_counter() - start, bar)
            if self.is_main:
                paths = save_figures(self.vae, self.data, self.rows, self.out, self.device)
                for logger in self.loggers:
                    logger.figures(paths)
        finally:
            bar.close()
            self._restore_signals(previous)
            for logger in self.loggers:
                logger.close()

    def stopped_early(self, bar):
        """Whether ``train.early_stopping`` ends the run here (``stopping``: ``min_delta`` governs
        patience only; the line printed names the state ``best.pt`` holds). Read from the metrics
        rows, so a resumed run stops at the same place."""
        rule = self.config["train"]["early_stopping"]
        if not rule or not self.rows:
            return False
        elbos = [row["val_elbo"] for row in self.rows]
        patience, min_delta = rule["patience"], rule.get("min_delta", 0.0)
        if not stopping.should_stop(elbos, patience, min_delta):
            return False
        if self.is_main:
            _say(bar, stopping.stop_message(elbos, patience, min_delta))
        return True

    def _train_epoch(self, epoch, bar):
        tc = self.config["train"]
        batches = self.vae.training_batches(
            self.data, tc["batch_size"], tc["seed"] * 100003 + epoch, self.noise, self.device,
            self.rank, self.world_size, skip=self.batch_in_epoch, labeled_batch_size=tc["labeled_batch_size"],
        )
        self.vae.train()
        for x in batches:
            with self.stopped_if_diverged(epoch):
                self.train_step(x)
            self.step += 1  # a skipped (non-finite) batch still counts: it was drawn
            self.batch_in_epoch += 1
            bar.update()
            if self.loggers and self.step % tc["log_every"] == 0 and any(logger.wants_steps for logger in self.loggers):
                loss = self.train_step_fn.last_loss.item()
                for logger in self.loggers:
                    logger.step(self.step, loss)
            if not bar.disable and (self.step % 10 == 0 or self.batch_in_epoch == 1):
                self.check_faults()  # the bar's loss is read from the device: check the counters with it
                loss = self.train_step_fn.last_loss.item()
                weight = "" if isinstance(self.kl_schedule, Constant) else f" kl_weight {self.beta:.3g}"
                capacity = f" C {self.kl_penalty.capacity:.3g}" if hasattr(self.kl_penalty, "capacity") else ""
                bar.set_postfix_str(f"epoch {epoch} loss {loss:.3f}{weight}{capacity}", refresh=False)
            if tc["checkpoint_every"] and self.step % tc["checkpoint_every"] == 0:
                self.save()
            if self.stop_signal is not None:
                self._stop()

    def train_step(self, x):
        """One optimizer step on the minibatch ``x`` with the KL weight of the current step.

        Nothing is read from the device (``steps``): the loss and the non-finite check are
        counted there, and read by ``check_faults`` and the epoch's metrics."""
        self.beta = self.kl_schedule(self.step)
        self.kl_penalty = self.parts.kl_penalty(self.step)
        try:
            self.train_step_fn(x, self.parts.effective_kl_weight(self.step), self.kl_penalty)
        except CaptureFailed as error:  # train.cuda_graph = true: stop before any checkpoint of this step
            raise UserError(f"{error} at step {self.step + 1}; {self.checkpoint_kept()}; "
                            "resume with --set train.cuda_graph=false (or \"auto\") to train eagerly") from error

    def checkpoint_kept(self):
        """What a run stopped by a fault leaves to resume from, in words (checked before every save,
        so an existing checkpoint is the last good one)."""
        if (self.out / "checkpoint.pt").is_file():
            return f"the last good checkpoint in {self.out} is intact"
        return f"no checkpoint was written yet (the fault came before the first one), so {self.out} holds none to resume"

    def check_faults(self):
        """Stop with a one-line error if more steps were non-finite (and skipped) than
        ``train.max_skipped_steps`` allows; called before every checkpoint, so the last good
        one stays intact."""
        skipped, step_number, loss, was_loss = self.train_step_fn.faults()
        if skipped <= self.config["train"]["max_skipped_steps"]:
            return
        what = "loss" if was_loss else "gradient"
        tc = self.config["train"]
        raise UserError(
            f"non-finite {what} ({loss}) at step {step_number + 1} (epoch {step_number // self.steps_per_epoch + 1}, "
            f"kl_weight {self.kl_schedule(step_number):.3g}); likely causes: train.lr = {tc['lr']:g} too high, "
            f"a likelihood scale collapsing (raise its min_scale), or extreme data; "
            f"{self.checkpoint_kept()}"
        )

    def check_finite(self, epoch, what=None):
        """Stop with a one-line error if a step left a parameter non-finite, or (``what``: the name of
        a non-finite figure) the epoch's evaluation came out NaN or infinite: a finite gradient times
        a huge learning rate passes the step's own checks, and the evaluation or the figures would
        then fail inside a distribution's argument checks. One read from the device per epoch."""
        if what is None:
            if torch.stack([p.detach().isfinite().all() for p in self.parameters]).all():
                return
            what = "parameters"
        tc = self.config["train"]
        raise UserError(
            f"non-finite {what} in epoch {epoch} (after {self.step} steps); likely causes: "
            f"train.lr = {tc['lr']:g} too high (set train.clip_grad_norm, or a lower rate), or extreme data; "
            f"{self.checkpoint_kept()}"
        )

    @contextlib.contextmanager
    def stopped_if_diverged(self, epoch):
        """Turn torch's refusal of NaN or infinite distribution parameters into the one-line error
        of ``check_finite``: finite parameters can still overflow to NaN outputs (after a step at a
        huge learning rate), and checked data cannot cause these errors. Any other error is raised."""
        try:
            yield
        except (ValueError, RuntimeError) as error:
            if not isinstance(error, torch.linalg.LinAlgError) and not any(words in str(error) for words in DIVERGED):
                raise
            self.check_finite(epoch, f"network outputs ({' '.join(str(error).split()[:6])} ...)")

    def _end_epoch(self, epoch, seconds, bar):
        tc = self.config["train"]
        self.check_faults()
        self.check_finite(epoch)
        self.vae.eval()
        all_reduce = None
        epoch_loss = self.train_step_fn.epoch_loss()
        if self.world_size > 1:  # every rank evaluates its shard; the sums are all-reduced
            all_reduce = dist.all_reduce
            totals = torch.tensor(epoch_loss, dtype=torch.float64, device=self.device)
            dist.all_reduce(totals)
            epoch_loss = totals.tolist()

        labels = self.vae.takes_labels

        def evaluate(split, limit=None):
            batches = self.data.batches(split, tc["eval_batch_size"], self.device, limit, self.rank, self.world_size, labels)
            return evaluate_elbo(self.vae, batches, all_reduce=all_reduce)

        with self.stopped_if_diverged(epoch):
            train, val = evaluate("train", tc["train_eval_examples"]), evaluate("valid")
        for name, result in (("training ELBO", train), ("validation ELBO", val)):
            if not math.isfinite(result["elbo"]):
                self.check_finite(epoch, f"{name} ({result['elbo']})")
        lr = self.lr_schedule.last_rate()  # the epoch's last step's, before a plateau cut takes effect
        self.lr_schedule.epoch_end(val["elbo"])  # the same on every rank: the sums are all-reduced
        if self.is_main:
            loss_sum, count = epoch_loss
            row = {
                "epoch": epoch,
                "step": self.step,
                "kl_weight": self.beta,
                "effective_kl_weight": self.beta * self.features_per_term,
                "lr": lr,
                **({"capacity": self.kl_penalty.capacity} if hasattr(self.kl_penalty, "capacity") else {}),
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
            self.rows.append(row)
            self.train_step_fn.set_epoch_loss([0.0, 0.0])
            _say(
                bar,
                f"epoch {epoch}: training loss {row['train_loss']:.3f}, train ELBO {train['elbo']:.3f}, "
                f"validation ELBO {val['elbo']:.3f} (KL {val['kl']:.2f}, {val['active_units']} active units)"
                + (f", validation accuracy {val['accuracy']:.4f}" if "accuracy" in val else "")
            )
            for logger in self.loggers:
                logger.epoch(self.rows)
            self.save()
            if val["elbo"] > self.best_val_elbo:
                self.best_val_elbo = val["elbo"]
                self.save("best.pt")
        else:
            self.train_step_fn.set_epoch_loss([0.0, 0.0])

    # ---- signals ----

    def _catch_signals(self):
        try:
            previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
            for s in previous:
                signal.signal(s, self._on_signal)
            return previous
        except ValueError:  # not the main thread: leave signals alone
            return {}

    def _on_signal(self, signum, frame):
        self.stop_signal = signum

    def _restore_signals(self, previous):
        for s, handler in previous.items():
            signal.signal(s, handler)

    def _stop(self):
        self.save()  # metrics.csv already holds every finished epoch
        name = signal.Signals(self.stop_signal).name
        raise TrainingStopped(
            f"stopped by {name} at step {self.step}; checkpoint written to {self.out / 'checkpoint.pt'}; "
            f"continue with: pyro-vae train --resume {self.out}",
            128 + self.stop_signal,
        )


def _say(bar, line):
    """Print a line above the progress bar, at once (a piped log gets each epoch as it ends)."""
    bar.write(line)
    sys.stdout.flush()


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def capture_obstacle(config, vae, estimator, optimizer, device, world_size):
    """Why this run's step cannot be captured in a CUDA graph, or None if it can (``train.cuda_graph``)."""
    if device.type != "cuda":
        return f"the training device is {device.type}, and CUDA graphs need a CUDA device"
    if world_size > 1:
        return "one graph per data-parallel rank is not supported yet: DistributedDataParallel runs eagerly"
    if config["train"]["validate"]:
        return "train.validate = true: Pyro's argument checks read values from the device"
    if vae.takes_labels:
        return f"model.kind = {config['model']['kind']!r} trains on batches of (x, y), which the captured step does not take yet"
    if not optimizer.defaults.get("fused"):
        return f"optimizer {config['train']['optimizer']!r} has no fused kernel here to skip a non-finite step on the device"
    return estimator.capture_obstacle(vae)


def distributed_context(device):
    """(rank, world_size, device) under torchrun; (0, 1, device) otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return dist.get_rank(), world_size, device


def train(
    config: dict[str, Any] | str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    overrides: Iterable[str] = (),
    resume: str | os.PathLike[str] | None = None,
    data: Data | torch.Tensor | np.ndarray | dict[str, Any] | None = None,
) -> Path:
    """Train a VAE from a config (a dict, a TOML path, or None for the defaults).

    ``resume=RUN`` continues the run in directory RUN from its last checkpoint (the
    config is the run's own; ``config``/``overrides`` may only change the keys in
    ``RESUMABLE_KEYS``, e.g. ``train.epochs`` to train longer). Returns the run
    directory. Config, data and checkpoint are all checked before any file is written.
    ``data`` trains on your own arrays, tensors or Data instead of ``config["data"]``'s
    dataset (``data.as_data``); the run records ``data.name = "arrays"``.
    """
    if resume is not None:
        run = Path(resume)
        if not (run / "config.toml").is_file() or not (run / "checkpoint.pt").is_file():
            raise UserError(f"--resume {run}: not a run directory with config.toml and checkpoint.pt")
        state = load_checkpoint(run / "checkpoint.pt")
        new = load_config(run / "config.toml", overrides) if config is None else _as_config(config, overrides)
        check_resumable(state["config"], new, run)
        config, out = new, check_writable(run)
        if state["epoch"] >= config["train"]["epochs"] and state["batch_in_epoch"] == 0:
            print(f"nothing to do: {run} has trained {state['epoch']} of {config['train']['epochs']} epochs; "
                  f"train it longer with --set train.epochs=N, N > {state['epoch']}", file=sys.stderr)
            return run
    else:
        config, state = _as_config(config, overrides), None
        out = prepare_run_directory(out, force)
    with torch_threads(config["train"]["threads"]):
        return _train(config, out, force, resume, state, data)


def _train(config, out, force, resume, state, data):
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
    trainer = Trainer(config, data, out, device, rank, world_size)
    if resume is not None:
        trainer.load_state_dict(state)
    if len(data.train) < config["train"]["batch_size"] and trainer.is_main:
        print(f"warning: train.batch_size ({config['train']['batch_size']}) is larger than the training split "
              f"({len(data.train)} examples): one step per epoch", file=sys.stderr)
    if trainer.is_main:
        if resume is None and force:
            clear_run_outputs(out)
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.toml")
    trainer.fit()
    return out


@contextlib.contextmanager
def torch_threads(threads):
    """torch's intra-op threads set to ``threads`` (``train.threads``) while the block runs, then
    restored; 0 leaves torch's default (one per core). On a shared or busy machine one thread
    can be several times faster than torch's default: threads that wait for a core stall
    every operation that splits its work among them."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads:
            torch.set_num_threads(previous)


def _as_config(config, overrides):
    if isinstance(config, dict):
        return check_config(apply_overrides(config, overrides))
    return load_config(config, overrides)
