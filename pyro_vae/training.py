"""Training: SVI on the VAE's model and guide, with a torch optimizer, that loses nothing.

Each step evaluates the estimator's differentiable loss (the negative ELBO per data
point, with the KL weight in force applied by a handler on the latent sites) from
the Pyro model and guide; a torch optimizer updates ``vae.parameters()``. This is
Pyro's ELBO used as a torch module (``NegativeELBO``), which is what lets
``DistributedDataParallel`` wrap it.

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

import csv
import math
import os
import random
import signal
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pyro
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from . import plots
from .annealing import Constant, build_schedule
from .checkpoint import load_checkpoint, save_checkpoint
from .config import apply_overrides, build_data, build_estimator, build_model, check_config, load_config, save_config
from .evaluation import evaluate_elbo
from .registry import UserError

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}
# Keys that may change when a run is resumed; any other difference is refused.
RESUMABLE_KEYS = {
    ("train", "epochs"),
    ("train", "progress"),
    ("train", "device"),
    ("train", "checkpoint_every"),
    ("train", "eval_batch_size"),
    ("train", "validate"),
}


class TrainingStopped(Exception):
    """Training stopped on SIGINT or SIGTERM after writing a checkpoint."""

    def __init__(self, message, exit_status):
        super().__init__(message)
        self.exit_status = exit_status


class NegativeELBO(nn.Module):
    """The training loss as a torch module: the estimator's loss for the VAE's model and
    guide under ``kl_weight`` (None, or a callable read each step), per data point (and
    per feature under ``reduction = "mean"``). The VAE and the estimator (which may own a
    neural baseline) are submodules, so one optimizer, one checkpoint and
    DistributedDataParallel all see every parameter."""

    def __init__(self, vae, estimator, kl_weight=None, normalizer=1.0):
        super().__init__()
        self.vae, self.estimator = vae, estimator
        self.kl_weight, self.normalizer = kl_weight, normalizer

    def forward(self, x):
        loss = self.estimator.loss(self.vae.model, self.vae.guide, x, kl_weight=self.kl_weight)
        return loss / (len(x) * self.normalizer)


def make_optimizer(name, parameters, lr):
    """The named torch optimizer, fused where this torch has a fused kernel for it (one pass
    over all parameters instead of a loop over tensors: about 4x faster for Adam on CPU)."""
    parameters = list(parameters)
    for options in ({"fused": True}, {"foreach": True}, {}):
        try:
            return OPTIMIZERS[name](parameters, lr=lr, **options)
        except (TypeError, RuntimeError, ValueError):  # no such kernel for this optimizer/device
            continue


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device = {name!r} but no CUDA device is available; use \"auto\" or \"cpu\"")
    return torch.device(name)


def rng_state():
    """Every RNG a run draws from, as plain tensors and numbers (safe for weights_only)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": position, "has_gauss": has_gauss, "cached": cached},
        "python": random.getstate(),
    }


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached"]))
    random.setstate(state["python"])


class Trainer:
    """One training run: model, optimizer, schedules, data order and RNGs, and their checkpoints."""

    def __init__(self, config, data, out, device, rank=0, world_size=1):
        self.config, self.data, self.out, self.device = config, data, out, device
        self.rank, self.world_size = rank, world_size
        tc, objective = config["train"], config["objective"]
        if tc["batch_size"] % world_size:
            raise UserError(f"train.batch_size ({tc['batch_size']}) must be divisible by the number of processes ({world_size})")
        self.vae = build_model(config, data.shape).to(device)
        for split in ("train", "valid", "test"):
            if split != "train" or not data.dynamic_binarization:
                self.vae.likelihood.check_support(data.split(split).x)
        estimator = build_estimator(config, data.shape).to(device)
        self.steps_per_epoch = math.ceil(len(data.train) / tc["batch_size"])
        self.kl_schedule = build_schedule(objective["kl_weight"], self.steps_per_epoch)
        # reduction = "mean" averages log p(x|z) over the D features:
        # -log p / D + beta KL = (1 / D) (-log p + D beta KL), an effective KL weight of D beta.
        self.features_per_term = self.vae.num_features if objective["reduction"] == "mean" else 1
        self.kl_weight = self.kl_schedule(0)
        constant = isinstance(self.kl_schedule, Constant)
        estimator.check_kl_weight(self.kl_weight * self.features_per_term if constant else None)
        weight = None
        if not constant or self.kl_weight * self.features_per_term != 1.0:
            weight = lambda: self.kl_weight * self.features_per_term  # noqa: E731 (read every step)
        self.loss = NegativeELBO(self.vae, estimator, weight, self.features_per_term)
        self.parameters = list(self.loss.parameters())  # the VAE's and the estimator's
        self.optimizer = make_optimizer(tc["optimizer"], self.parameters, tc["lr"])
        self.lr_schedule = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=tc["epochs"] * self.steps_per_epoch)
            if tc["lr_schedule"] == "cosine"
            else None
        )
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
            "lr_schedule": self.lr_schedule.state_dict() if self.lr_schedule else {},
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
        if self.lr_schedule:
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
        batches = self.data.train_batches(
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
        if tc["precision"] == "bf16":
            with torch.autocast(self.device.type, torch.bfloat16):
                loss = self.loss(x)
        else:
            loss = self.loss(x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = loss.item()
        if not self._finite(value):
            return None
        if tc["clip_grad_norm"]:
            nn.utils.clip_grad_norm_(self.parameters, tc["clip_grad_norm"])
        self.optimizer.step()
        if self.lr_schedule:
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

        def evaluate(split, limit=None):
            batches = self.data.batches(split, tc["eval_batch_size"], self.device, limit, self.rank, self.world_size)
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
            row.update({f"kl_{d}": kl for d, kl in enumerate(val["kl_per_dimension"] or [])})
            self.rows.append(row)
            self.epoch_loss = [0.0, 0]
            bar.write(
                f"epoch {epoch}: training loss {row['train_loss']:.3f}, train ELBO {train['elbo']:.3f}, "
                f"validation ELBO {val['elbo']:.3f} (KL {val['kl']:.2f}, {val['active_units']} active units)"
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


def prepare_run_directory(out, force):
    if out is None:
        out = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} already holds files; pass --force to overwrite it, --resume to continue it, or choose another directory")
    return out


def check_resumable(old, new, run):
    for section, keys in new.items():
        for key, value in keys.items():
            if (section, key) not in RESUMABLE_KEYS and old.get(section, {}).get(key) != value:
                raise UserError(
                    f"cannot resume {run} with a different {section}.{key} ({value!r}; the run has "
                    f"{old.get(section, {}).get(key)!r}); only {', '.join(sorted(f'{s}.{k}' for s, k in RESUMABLE_KEYS))} may change"
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


def write_metrics(rows, path):
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


def save_figures(vae, data, rows, out, device):
    x = data.valid.x[:32].to(device)
    plots.save_reconstructions(x, vae.reconstruct(x), out / "reconstructions.png")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        plots.save_grid(vae.sample(64), out / "samples.png", title="samples: E[x | z], z ~ p(z)")
    plots.save_curves(rows, out / "curves.png")


def load_run(run, device="cpu", checkpoint="checkpoint.pt"):
    """The trained VAE of a run directory, in eval mode, ready for ``model`` / ``guide``.

    ``checkpoint="best.pt"`` loads the state with the best validation ELBO instead of the last.
    """
    run = Path(run)
    if not (run / "config.toml").is_file():
        raise UserError(f"{run} is not a run directory (no config.toml)")
    config = load_config(run / "config.toml")
    state = load_checkpoint(run / checkpoint, map_location=device)
    vae = build_model(config, state["data_shape"]).to(device)
    vae.load_state_dict(state["model"])
    return vae.eval()
