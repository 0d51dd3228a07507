"""Training: SVI on the VAE's model and guide, with a torch optimizer.

Each step computes the estimator's differentiable loss (the negative ELBO,
averaged over the minibatch) from the Pyro model and guide, and a torch optimizer
updates ``vae.parameters()``: Pyro's ELBO used as a torch loss. After every epoch
the validation ELBO is computed without touching any parameter, a row is added
to ``metrics.csv``, and ``checkpoint.pt`` is replaced atomically.

A run directory holds ``config.toml``, ``checkpoint.pt``, ``metrics.csv`` and the
figures ``reconstructions.png``, ``samples.png`` and ``curves.png``.
"""

import csv
import math
import time
from datetime import datetime
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from . import plots
from .annealing import kl_scaled
from .checkpoint import load_checkpoint, save_checkpoint
from .config import build_estimator, build_model, load_config, save_config, check_config
from .data import load_data
from .evaluation import evaluate_elbo
from .registry import UserError

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}
METRICS = ["epoch", "step", "kl_weight", "train_loss", "val_elbo", "val_reconstruction", "val_kl", "seconds"]


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device = {name!r} but no CUDA device is available; use \"auto\" or \"cpu\"")
    return torch.device(name)


def prepare_run_directory(out, force):
    if out is None:
        out = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} already holds files; pass --force to overwrite it or choose another directory")
    return out


def train(config=None, out=None, force=False, overrides=()):
    """Train a VAE from a config (a dict, a TOML path, or None for the defaults).

    Returns the run directory. Everything about the config and the data is checked
    before the run directory is touched.
    """
    config = load_config(config, overrides) if not isinstance(config, dict) else check_config(config)
    device = resolve_device(config["train"]["device"])
    out = prepare_run_directory(out, force)
    seed = config["train"]["seed"]
    pyro.set_rng_seed(seed)

    data_options = {k: v for k, v in config["data"].items() if k != "on_device"}
    data = load_data(**data_options)
    if config["data"]["on_device"]:
        data.to(device)
    vae = build_model(config, data.shape).to(device)
    for split in ("train", "valid", "test"):
        if split != "train" or not data.dynamic_binarization:
            vae.likelihood.check_support(data.split(split).x)
    estimator = build_estimator(config)
    tc = config["train"]
    optimizer = OPTIMIZERS[tc["optimizer"]](vae.parameters(), lr=tc["lr"])
    kl_weight = config["objective"]["kl_weight"]
    model, guide = vae.model, vae.guide
    if kl_weight != 1.0:
        model, guide = kl_scaled(model, kl_weight), kl_scaled(guide, kl_weight)

    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.toml")
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(data.train) / tc["batch_size"])
    bar = tqdm(
        total=tc["epochs"] * steps_per_epoch, disable=not tc["progress"], unit="step", dynamic_ncols=True
    )
    rows, step, start = [], 0, time.perf_counter()
    with pyro.validation_enabled(False):  # Pyro's per-site checks cost ~0.5 ms a step; data is checked above
        for epoch in range(1, tc["epochs"] + 1):
            vae.train()
            total, count = 0.0, 0
            for x in data.train_batches(tc["batch_size"], generator, device):
                loss = estimator.loss(model, guide, x) / len(x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                value = loss.item()
                if not math.isfinite(value):
                    raise UserError(
                        f"the training loss became {value} at step {step} (epoch {epoch}); "
                        "try a smaller train.lr, or check the likelihood's scale"
                    )
                total, count = total + value * len(x), count + len(x)
                bar.update()
                bar.set_postfix_str(f"epoch {epoch} loss {value:.2f}", refresh=False)
            vae.eval()
            val = evaluate_elbo(vae, data.batches("valid", tc["eval_batch_size"], device))
            rows.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "kl_weight": kl_weight,
                    "train_loss": total / count,
                    "val_elbo": val["elbo"],
                    "val_reconstruction": val["reconstruction"],
                    "val_kl": val["kl"],
                    "seconds": time.perf_counter() - start,
                }
            )
            bar.write(f"epoch {epoch}: train loss {total / count:.3f}, validation ELBO {val['elbo']:.3f}")
            write_metrics(rows, out / "metrics.csv")
            save_checkpoint(
                {
                    "model": vae.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "data_shape": list(data.shape),
                    "epoch": epoch,
                    "step": step,
                },
                out / "checkpoint.pt",
            )
    bar.close()
    save_figures(vae, data, rows, out, device)
    return out


def write_metrics(rows, path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_metrics(path):
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def save_figures(vae, data, rows, out, device):
    x = data.valid.x[:32].to(device)
    plots.save_reconstructions(x, vae.reconstruct(x), out / "reconstructions.png")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        plots.save_grid(vae.sample(64), out / "samples.png", title="samples: E[x | z], z ~ p(z)")
    plots.save_curves(rows, out / "curves.png")


def load_run(run, device="cpu"):
    """The trained VAE of a run directory, in eval mode, ready for ``model`` / ``guide``."""
    run = Path(run)
    if not (run / "config.toml").is_file():
        raise UserError(f"{run} is not a run directory (no config.toml)")
    config = load_config(run / "config.toml")
    state = load_checkpoint(run / "checkpoint.pt", map_location=device)
    vae = build_model(config, state["data_shape"]).to(device)
    vae.load_state_dict(state["model"])
    return vae.eval()
