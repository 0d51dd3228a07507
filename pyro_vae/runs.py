"""Run directories: where a run's files go, what may change on resume, metrics, figures, and loading a run back.

A run directory holds ``config.toml`` (the resolved config), ``checkpoint.pt`` (the
last state), ``best.pt`` (the best validation ELBO), ``metrics.csv`` (one row per
epoch) and the figures ``reconstructions.png``, ``samples.png``, ``curves.png``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import plots
from .build import build_model
from .checkpoint import load_checkpoint
from .config import default_config, load_config
from .loggers import read_metrics  # noqa: F401 (runs.read_metrics: where a run's metrics are read)
from .registry import UserError

if TYPE_CHECKING:
    from .model import VAE

# Keys that may change when a run is resumed; any other difference is refused.
RESUMABLE_KEYS = {
    ("train", "epochs"),
    ("train", "progress"),
    ("train", "device"),
    ("train", "threads"),
    ("train", "checkpoint_every"),
    ("train", "eval_batch_size"),
    ("train", "validate"),
    ("train", "cuda_graph"),
    ("train", "loggers"),
    ("train", "log_every"),
}


# Every file and folder a run directory may hold that pyro-vae wrote (train, evaluate, plot, loggers).
RUN_OUTPUTS = (
    "config.toml", "checkpoint.pt", "best.pt", "metrics.csv", "reconstructions.png", "samples.png",
    "curves.png", "evaluation.json", "manifold.png", "latent_space.png", "traversals.png", "codes_pca.png",
    "analogies.png", "factor_traversals.png", "tensorboard", "mlflow", "wandb", "sampled",
)


def prepare_run_directory(out, force):
    """The run directory to write: ``out``, or ``runs/<timestamp>``; refuses a non-empty one unless
    ``force``, and one that cannot be written. Nothing is written yet (see ``clear_run_outputs``)."""
    if out is None:
        out = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(
            f"--out {out} already holds files; overwrite it with --force (force=True in Python), "
            "continue it with --resume, or choose another directory"
        )
    check_writable_directory(out)
    return out


def check_writable_directory(path):
    """Refuse, before any work, a directory that cannot be created or written (a read-only file system)."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())  # the root always exists
    where = "" if existing == path else f" (its nearest existing folder {existing} is not writable)"
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {path}{where}; choose a writable --out")
    if existing.is_dir():
        # os.access says yes to root everywhere, and /proc or /sys refuse new folders whatever
        # their modes: create one (and remove it) to know
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".pyro-vae-probe-", dir=existing))
        except OSError as error:
            raise UserError(f"cannot write to {path}{where}: {error.strerror}; choose a writable --out") from None
    return path


def clear_run_outputs(out):
    """Remove what an earlier run wrote into ``out`` (under ``--force``), so that no stale file (an old
    evaluation.json, figures of another model) sits beside the new run's; other files are kept."""
    for name in RUN_OUTPUTS:
        path = Path(out) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def discard_run(out, created):
    """Remove what a run that stopped before its first checkpoint wrote into ``out`` (its config,
    metrics, loggers' folders), and ``out`` itself if the run ``created`` it and it is now empty."""
    clear_run_outputs(out)
    if created and Path(out).is_dir() and not any(Path(out).iterdir()):
        Path(out).rmdir()


def check_resumable(old, new, run):
    """Refuse to resume ``run`` (config ``old``) with a config ``new`` that differs outside ``RESUMABLE_KEYS``.
    A key the run's config lacks (written before the key existed) counts as its default."""
    defaults = default_config()
    for section, keys in new.items():
        for key, value in keys.items():
            had = old.get(section, {}).get(key, defaults.get(section, {}).get(key))
            if (section, key) not in RESUMABLE_KEYS and had != value:
                raise UserError(
                    f"cannot resume {run} with a different {section}.{key} ({value!r}; the run has "
                    f"{had!r}); only {', '.join(sorted(f'{s}.{k}' for s, k in RESUMABLE_KEYS))} may change"
                )


def save_figures(vae, data, rows, out, device):
    """The run's three figures: validation reconstructions, prior samples (fixed seed), curves.
    Returns the paths written. A model with labels reconstructs with the true labels and draws
    one row per class."""
    x = data.valid.x[:32].to(device)
    labeled = vae.takes_labels
    reconstructions = vae.reconstruct(x, data.valid.labels[:32].to(device)) if labeled else vae.reconstruct(x)
    written = []
    if plots.save_reconstructions(x, reconstructions, out / "reconstructions.png") is not False:
        written.append(out / "reconstructions.png")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if labeled:
            drawn = save_class_samples(vae, out / "samples.png")
        else:
            drawn = plots.save_grid(vae.sample(64), out / "samples.png", title="samples: E[x | z], z ~ p(z)")
        if drawn:
            written.append(out / "samples.png")
    plots.save_curves(rows, out / "curves.png")
    written.append(out / "curves.png")
    return [path for path in written if path.exists()]


def save_class_samples(vae, path, per_class=8):
    """Samples of a model with labels, one row per class y (z ~ p(z), shown as E[x | z, y])."""
    return plots.save_grid(
        vae.sample(per_class * vae.num_classes), path, columns=per_class,
        title="samples: E[x | z, y], z ~ p(z); row y = 0, 1, ...",
    )


def load_run(
    run: str | os.PathLike[str], device: str | torch.device = "cpu", checkpoint: str = "checkpoint.pt"
) -> VAE:
    """The trained VAE of a run directory, in eval mode, ready for ``model`` / ``guide``.

    ``checkpoint="best.pt"`` loads the state with the best validation ELBO instead of the last.
    """
    run = Path(run)
    if not (run / "config.toml").is_file():
        raise UserError(f"{run} is not a run directory (no config.toml)")
    config = load_config(run / "config.toml")
    state = load_checkpoint(run / checkpoint, map_location=device)
    vae = build_model(config, state["data_shape"], state.get("data_levels")).to(device)
    vae.load_state_dict(state["model"])
    return vae.eval()
