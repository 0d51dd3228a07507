"""Run directories: where a run's files go, what may change on resume, metrics, figures, and loading a run back.

A run directory holds ``config.toml`` (the resolved config), ``checkpoint.pt`` (the
last state), ``best.pt`` (the best validation ELBO), ``metrics.csv`` (one row per
epoch) and the figures ``reconstructions.png``, ``samples.png``, ``curves.png``.
"""

import csv
import os
from datetime import datetime
from pathlib import Path

import torch

from . import plots
from .build import build_model
from .checkpoint import load_checkpoint
from .config import default_config, load_config
from .registry import UserError

# Keys that may change when a run is resumed; any other difference is refused.
RESUMABLE_KEYS = {
    ("train", "epochs"),
    ("train", "progress"),
    ("train", "device"),
    ("train", "checkpoint_every"),
    ("train", "eval_batch_size"),
    ("train", "validate"),
}


def prepare_run_directory(out, force):
    """The run directory to write: ``out``, or ``runs/<timestamp>``; refuses a non-empty one unless ``force``."""
    if out is None:
        out = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} already holds files; pass --force to overwrite it, --resume to continue it, or choose another directory")
    return out


def check_resumable(old, new, run):
    """Refuse to resume ``run`` (config ``old``) with a config ``new`` that differs outside ``RESUMABLE_KEYS``."""
    defaults = default_config()  # a key the run's config predates has its default value
    for section, keys in new.items():
        for key, value in keys.items():
            had = old.get(section, {}).get(key, defaults.get(section, {}).get(key))
            if (section, key) not in RESUMABLE_KEYS and had != value:
                raise UserError(
                    f"cannot resume {run} with a different {section}.{key} ({value!r}; the run has "
                    f"{had!r}); only {', '.join(sorted(f'{s}.{k}' for s, k in RESUMABLE_KEYS))} may change"
                )


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


def save_figures(vae, data, rows, out, device):
    """The run's three figures: validation reconstructions, prior samples (fixed seed), curves.
    A model with labels reconstructs with the true labels and draws one row per class."""
    x = data.valid.x[:32].to(device)
    labeled = hasattr(vae, "num_classes")
    reconstructions = vae.reconstruct(x, data.valid.labels[:32].to(device)) if labeled else vae.reconstruct(x)
    plots.save_reconstructions(x, reconstructions, out / "reconstructions.png")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if labeled:
            save_class_samples(vae, out / "samples.png")
        else:
            plots.save_grid(vae.sample(64), out / "samples.png", title="samples: E[x | z], z ~ p(z)")
    plots.save_curves(rows, out / "curves.png")


def save_class_samples(vae, path, per_class=8):
    """Samples of a model with labels, one row per class y (z ~ p(z), shown as E[x | z, y])."""
    return plots.save_grid(
        vae.sample(per_class * vae.num_classes), path, columns=per_class,
        title="samples: E[x | z, y], z ~ p(z); row y = 0, 1, ...",
    )


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
