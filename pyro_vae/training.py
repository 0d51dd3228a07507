"""Training: SVI on the VAE's model and guide, with a torch optimizer, that loses nothing.

Each step evaluates the estimator's differentiable loss (the negative ELBO per data
point) for the Pyro model and guide, with the KL weight of that step passed as an
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

import math
import os
import signal
import time
from pathlib import Path

import pyro
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .annealing import Constant
from .build import build, build_data, data_batches
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import apply_overrides, check_config, load_config, save_config
from .evaluation import evaluate_elbo
from .labels import training_loss
from .registry import UserError
from .runs import check_resumable, prepare_run_directory, save_figures, write_metrics


class TrainingStopped(Exception):
    """Training stopped on SIGINT or SIGTERM after writing a checkpoint."""

    def __init__(self, message, exit_status):
        super().__init__(message)
        self.exit_status = exit_status


class NegativeELBO(nn.Module):
    """The training loss as a torch module: ``forward(x, kl_weight)`` is the estimator's loss
    for the VAE's model and guide under that step's KL weight, per data point (and per
    feature under ``reduction = "mean"``: ``normalizer`` = D). The VAE and the estimator
    (which may own a neural baseline) are submodules, so one optimizer, one checkpoint and
    DistributedDataParallel all see every parameter."""

    def __init__(self, vae, estimator, normalizer=1.0):
        super().__init__()
        self.vae, self.estimator, self.normalizer = vae, estimator, normalizer

    def forward(self, x, kl_weight=None):
        loss = self.estimator.loss(self.vae.model, self.vae.guide, x, kl_weight=kl_weight)
        return loss / (len(x) * self.normalizer)


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
        self.kl_weight = self.kl_schedule(0)  # the schedule's value at the current step (for messages and metrics)
        if data_batches(self.vae) == "all":
            self.loss = NegativeELBO(self.vae, parts.estimator, self.features_per_term)
        elif world_size > 1:
            raise UserError(f"model.kind = {self.vae.kind!r} trains in one process; data-parallel training (torchrun) is for model.kind = \"vae\"")
        else:  # (x, y) pairs, or unlabeled x with labeled pairs (M2's J_alpha)
            self.loss = training_loss(self.vae, parts.estimator, self.features_per_term, config["objective"], data)
        self.parameters = parts.parameters()  # the VAE's and the estimator's
        if world_size > 1:
            self.loss = nn.parallel.DistributedDataParallel(self.loss, device_ids=[device.index] if device.type == "cuda" else None)
        self.noise = torch.Generator().manual_seed(tc["seed"] * 7919 + rank)  # dynamic binarization
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.epoch_loss = [0.0, 0]  # sum of per-point losses and count in the current epoch
        self.rows, self.best_val_elbo = [], -math.inf
        self.skipped_steps, self.stop_signal = 0, None

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
            "config": self.config,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_loss": list(self.epoch_loss),
            "rows": self.rows,
            "best_val_elbo": self.best_val_elbo,
            "skipped_steps": self.skipped_steps,
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
        self.epoch_loss, self.rows = list(state["epoch_loss"]), list(state["rows"])
        self.best_val_elbo, self.skipped_steps = state["best_val_elbo"], state["skipped_steps"]
        self.noise.set_state(state["noise"])
        set_rng_state(state["rng"])

    def save(self, name="checkpoint.pt"):
        if self.is_main:
            save_checkpoint(self.state_dict(), self.out / name)

    def loss_name(self):
        """What the progress bar's loss is: -ELBO, the KL-weighted -ELBO, or minus another bound."""
        estimator = self.estimator
        bound = "ELBO" if estimator.reports_elbo else f"{estimator.registered_name} bound"
        weighted = not isinstance(self.kl_schedule, Constant) or self.kl_weight * self.features_per_term != 1
        per = " per feature" if self.features_per_term != 1 else ""
        return f"-{bound}{' (KL-weighted)' if weighted else ''}{per}"

    # ---- the loop ----

    def fit(self):
        tc = self.config["train"]
        previous = self._catch_signals()
        bar = tqdm(
            total=tc["epochs"] * self.steps_per_epoch,
            initial=self.step,
            disable=not (tc["progress"] and self.is_main),
            unit="step",
            dynamic_ncols=True,
            desc=self.loss_name(),
        )
        start = time.perf_counter() - (self.rows[-1]["seconds"] if self.rows else 0.0)
        try:
            with pyro.validation_enabled(tc["validate"]):
                for epoch in range(self.epoch + 1, tc["epochs"] + 1):
                    self._train_epoch(epoch, bar)
                    self.epoch, self.batch_in_epoch = epoch, 0
                    self._end_epoch(epoch, time.perf_counter() - start, bar)
        finally:
            bar.close()
            self._restore_signals(previous)
        if self.is_main:
            save_figures(self.vae, self.data, self.rows, self.out, self.device)

    def _train_epoch(self, epoch, bar):
        tc = self.config["train"]
        epoch_batches = {
            "all": self.data.train_batches,
            "labeled": self.data.labeled_batches,
            "semi_supervised": self.data.semi_supervised_batches,
        }[data_batches(self.vae)]
        batches = epoch_batches(
            tc["batch_size"], tc["seed"] * 100003 + epoch, self.noise, self.device,
            self.rank, self.world_size, skip=self.batch_in_epoch,
        )
        self.vae.train()
        for x in batches:
            value = self.train_step(x)
            self.step += 1  # a skipped (non-finite) batch still counts: it was drawn
            self.batch_in_epoch += 1
            if value is not None:
                self.epoch_loss = [self.epoch_loss[0] + value * len(x), self.epoch_loss[1] + len(x)]
            bar.update()
            if value is not None and (self.step % 10 == 0 or self.batch_in_epoch == 1):
                bar.set_postfix_str(f"epoch {epoch} loss {value:.3f}" + ("" if isinstance(self.kl_schedule, Constant) else f" kl_weight {self.kl_weight:.3g}"), refresh=False)
            if tc["checkpoint_every"] and self.step % tc["checkpoint_every"] == 0:
                self.save()
            if self.stop_signal is not None:
                self._stop()

    def train_step(self, x):
        """One optimizer step on the minibatch ``x``; the loss, or None if it was skipped as non-finite."""
        tc = self.config["train"]
        self.kl_weight = self.kl_schedule(self.step)
        kl_weight = self.parts.kl_weight(self.step)
        if tc["precision"] == "bf16":
            with torch.autocast(self.device.type, torch.bfloat16):
                loss = self.loss(x, kl_weight)
        else:
            loss = self.loss(x, kl_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = loss.item()
        if not self._finite(value):
            return None
        if tc["clip_grad_norm"]:
            nn.utils.clip_grad_norm_(self.parameters, tc["clip_grad_norm"])
        self.optimizer.step()
        self.lr_schedule.step()
        return value

    def _finite(self, value):
        """False (and the step skipped) for a non-finite loss or gradient; stop when too many."""
        grads = [p.grad for p in self.parameters if p.grad is not None]
        # A NaN or inf anywhere makes the sum of all gradients non-finite: one cheap pass
        # (finite gradients would have to exceed 1e38 in sum to be mistaken for a fault).
        if math.isfinite(value) and (not grads or torch.isfinite(torch.stack([g.sum() for g in grads]).sum())):
            return True
        what = "loss" if not math.isfinite(value) else "gradient"
        self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.skipped_steps > self.config["train"]["max_skipped_steps"]:
            raise UserError(
                f"non-finite {what} ({value}) at step {self.step + 1} (epoch {self.epoch + 1}, kl_weight {self.kl_weight:.3g}); "
                f"likely causes: train.lr = {self.config['train']['lr']:g} too high, a likelihood scale collapsing "
                f"(raise its min_scale), or extreme data; the last good checkpoint in {self.out} is intact"
            )
        return False

    def _end_epoch(self, epoch, seconds, bar):
        tc = self.config["train"]
        self.vae.eval()
        all_reduce = None
        if self.world_size > 1:  # every rank evaluates its shard; the sums are all-reduced
            all_reduce = dist.all_reduce
            totals = torch.tensor(self.epoch_loss, dtype=torch.float64, device=self.device)
            dist.all_reduce(totals)
            self.epoch_loss = totals.tolist()

        labels = data_batches(self.vae) != "all"

        def evaluate(split, limit=None):
            batches = self.data.batches(split, tc["eval_batch_size"], self.device, limit, self.rank, self.world_size, labels)
            return evaluate_elbo(self.vae, batches, all_reduce=all_reduce)

        train, val = evaluate("train", tc["train_eval_examples"]), evaluate("valid")
        if self.is_main:
            loss_sum, count = self.epoch_loss
            row = {
                "epoch": epoch,
                "step": self.step,
                "kl_weight": self.kl_weight,
                "effective_kl_weight": self.kl_weight * self.features_per_term,
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
            self.rows.append(row)
            self.epoch_loss = [0.0, 0]
            bar.write(
                f"epoch {epoch}: training loss {row['train_loss']:.3f}, train ELBO {train['elbo']:.3f}, "
                f"validation ELBO {val['elbo']:.3f} (KL {val['kl']:.2f}, {val['active_units']} active units)"
                + (f", validation accuracy {val['accuracy']:.4f}" if "accuracy" in val else "")
            )
            write_metrics(self.rows, self.out / "metrics.csv")
            self.save()
            if val["elbo"] > self.best_val_elbo:
                self.best_val_elbo = val["elbo"]
                self.save("best.pt")
        else:
            self.epoch_loss = [0.0, 0]

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
        self.save()
        if self.is_main and self.rows:
            write_metrics(self.rows, self.out / "metrics.csv")
        name = signal.Signals(self.stop_signal).name
        raise TrainingStopped(
            f"stopped by {name} at step {self.step}; checkpoint written to {self.out / 'checkpoint.pt'}; "
            f"continue with: pyro-vae train --resume {self.out}",
            128 + self.stop_signal,
        )


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


def train(config=None, out=None, force=False, overrides=(), resume=None):
    """Train a VAE from a config (a dict, a TOML path, or None for the defaults).

    ``resume=RUN`` continues the run in directory RUN from its last checkpoint (the
    config is the run's own; ``config``/``overrides`` may only change the keys in
    ``RESUMABLE_KEYS``, e.g. ``train.epochs`` to train longer). Returns the run
    directory. Config, data and checkpoint are all checked before any file is written.
    """
    if resume is not None:
        run = Path(resume)
        if not (run / "config.toml").is_file() or not (run / "checkpoint.pt").is_file():
            raise UserError(f"--resume {run}: not a run directory with config.toml and checkpoint.pt")
        state = load_checkpoint(run / "checkpoint.pt")
        new = load_config(run / "config.toml", overrides) if config is None else _as_config(config, overrides)
        check_resumable(state["config"], new, run)
        config, out = new, run
    else:
        config = _as_config(config, overrides)
        out = prepare_run_directory(out, force)
    device = resolve_device(config["train"]["device"])
    rank, world_size, device = distributed_context(device)
    pyro.set_rng_seed(config["train"]["seed"] + rank)

    data = build_data(config)
    if config["data"]["on_device"]:
        data.to(device)
    trainer = Trainer(config, data, out, device, rank, world_size)
    if resume is not None:
        trainer.load_state_dict(state)
    if trainer.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.toml")
    trainer.fit()
    return out


def _as_config(config, overrides):
    if isinstance(config, dict):
        return check_config(apply_overrides(config, overrides))
    return load_config(config, overrides)
