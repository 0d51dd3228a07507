"""Run directories: where a run's files go, what may change on resume, metrics, figures, and loading a run back.

A run directory holds `config.toml` (the resolved config), `checkpoint.pt` (the
last state), `best.pt` (the best validation ELBO), `metrics.csv` (one row per
epoch) and the figures `reconstructions.png`, `samples.png`, `curves.png`.
A trained run is loaded back with `load_run` (the model) or `load_run_data` (the model and
its data); `plot_run` draws its latent-space figures (`plot_figures`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import checks, plots
from .build import build_data, build_model
from .checkpoint import load_checkpoint
from .config import default_config, load_config
from .files import check_writable_file, make_directory, writing
from .loggers import read_metrics  # noqa: F401 (runs.read_metrics: where a run's metrics are read)
from .registry import UserError

if TYPE_CHECKING:
    import numpy as np

    from .data import Data, Split
    from .models import VAE

# Keys that may change when a run is resumed; any other difference is refused.
RESUMABLE_KEYS = {
    ("train", "epochs"),
    ("train", "max_time"),
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
    "analogies.png", "factor_traversals.png", "components.png", "tensorboard", "mlflow", "wandb", "sampled",
)


def check_not_run_output(path: str | os.PathLike[str], force: bool) -> None:
    """Refuse to replace a file a run wrote itself (samples.png, a checkpoint, ...) unless `force` (`--force`)."""
    path = Path(path)
    if path.exists() and path.name in RUN_OUTPUTS and (path.parent / "config.toml").is_file() and not force:
        raise UserError(f"--out {path} is a file the run wrote itself; replace it with --force, or choose another --out")


def prepare_run_directory(out, force):
    """The run directory to write: `out`, or `runs/<timestamp>`; refuses a non-empty one unless
    `force`, and one that cannot be written. Nothing is written yet (see `clear_run_outputs`)."""
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
    """Remove what an earlier run wrote into `out` (under `--force`), so that no stale file (an old
    evaluation.json, figures of another model) sits beside the new run's; other files are kept."""
    for name in RUN_OUTPUTS:
        path = Path(out) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def discard_run(out, created):
    """Remove what a run that stopped before its first checkpoint wrote into `out` (its config,
    metrics, loggers' folders), and `out` itself if the run `created` it and it is now empty."""
    clear_run_outputs(out)
    if created and Path(out).is_dir() and not any(Path(out).iterdir()):
        Path(out).rmdir()


def check_resumable(old, new, run):
    """Refuse to resume `run` (config `old`) with a config `new` that differs outside `RESUMABLE_KEYS`.
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
        elif vae.clusters:
            drawn = save_component_samples(vae, out / "samples.png")
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


def save_component_samples(vae, path, per_component=8):
    """Samples of a model with mixture components (the gmvae), one row per component y (z ~ p(z | y))."""
    return plots.save_grid(
        vae.sample_by_component(per_component), path, columns=per_component,
        title="samples: E[x | z], z ~ p(z | y); row y = 0, 1, ...",
    )


def load_run(
    run: str | os.PathLike[str], device: str | torch.device = "cpu", checkpoint: str = "checkpoint.pt"
) -> VAE:
    """The trained VAE of a run directory, in eval mode, ready for `model` / `guide`.

    `checkpoint="best.pt"` loads the state with the best validation ELBO instead of the last.
    """
    run = Path(run)
    if not (run / "config.toml").is_file():
        raise UserError(f"{run} is not a run directory (no config.toml)")
    config = load_config(run / "config.toml")
    state = load_checkpoint(run / checkpoint, map_location=device)
    vae = build_model(config, state["data_shape"], state.get("data_levels")).to(device)
    vae.load_state_dict(state["model"])
    return vae.eval()


# Where the run's data must come from when a config cannot load them (a run on arrays given in Python).
ARRAYS_HINT = (
    'was trained on arrays given in Python (data.name = "arrays"), which a config cannot load; pass them '
    "again: evaluate_run(run, data=...) (pyro_vae.report) or load_run(run) and evaluation.evaluate(vae, x) "
    "to evaluate it, plot_run(run, data=...) (pyro_vae.runs) to plot it; pyro-vae sample needs no data"
)

def load_run_data(run: str | os.PathLike[str], checkpoint: str = "checkpoint.pt",
                  data: Data | torch.Tensor | np.ndarray | dict[str, Any] | None = None) -> tuple[VAE, Data]:
    """The trained VAE of a run and the data it was trained on: those `RUN/config.toml` describes,
    or `data` (the arrays a run trained on arrays from Python was given: `train(config, data=...)`,
    read again the same way, so the splits are the run's own)."""
    vae = load_run(run, checkpoint=checkpoint)
    config = load_config(Path(run) / "config.toml")
    if data is None and config["data"]["name"] == "arrays":
        raise UserError(f"{run} {ARRAYS_HINT}")
    return vae, build_data(config, data)


def load_run_split(run: str | os.PathLike[str], split: str, checkpoint: str = "checkpoint.pt") -> tuple[VAE, Split]:
    """The trained VAE of a run and one split of the data it was trained on (from RUN/config.toml)."""
    vae, data = load_run_data(run, checkpoint)
    return vae, data.split(split)


def limited_split(split: Split, limit: int | None, subset_seed: int | None = None) -> tuple[Split, int | None]:
    """`limit` (`--limit N`) data points of the split drawn at random with `subset_seed` (the same
    points on every machine; default `data.SUBSET_SEED`), never its first N, which are biased when a
    split is sorted (the statically binarized MNIST test split is sorted by class). Returns the
    subset and the seed it was drawn with (None: the whole split)."""
    from .data import SUBSET_SEED

    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    seed = SUBSET_SEED if subset_seed is None else checks.seed(subset_seed, "--subset-seed")
    subset = split.random_subset(limit, seed=seed)
    return subset, (seed if len(subset) < len(split) else None)


def plot_run(run: str | os.PathLike[str], split: str = "test", out: str | os.PathLike[str] | None = None,
             limit: int | None = 5000, subset_seed: int | None = None, checkpoint: str = "checkpoint.pt",
             data: Data | torch.Tensor | np.ndarray | dict[str, Any] | None = None) -> list[Path]:
    """The latent-space figures of a run (`plot_figures`) into `out` (default: the run directory),
    from `limit` data points of its `split` drawn at random (`limited_split`). `data`: the
    arrays a run trained on arrays from Python was given (`load_run_data`). Returns the paths written."""
    vae, loaded = load_run_data(run, checkpoint, data)
    part = loaded.split(split)
    out = Path(out) if out else Path(run)
    make_directory(out, "--out ")
    check_writable_file(out / "codes_pca.png")
    part, _ = limited_split(part, limit, subset_seed)
    if vae.takes_labels and part.labels is None:
        raise UserError(f"the {split} split has no labels, which a {vae.kind} run needs to be plotted")
    with writing(out):
        return plot_figures(vae, part, out, loaded.factor_names)


def plot_figures(vae: VAE, split: Split, out: Path, factor_names: Sequence[str] | None = None) -> list[Path]:
    """The latent-space figures of `split` into the directory `out`: for a model with labels,
    analogies and the codes' PCA; for 2-D codes the decoded manifold and the codes; else traversals
    and the codes' PCA; the factor traversals where the split carries factors of variation
    (named `factor_names`); and for a model with mixture components (the gmvae) samples by
    component, `components.png`. Returns the paths written."""
    x = split.x
    if vae.takes_labels:  # a model with labels: codes given the true labels, and analogies
        y = split.labels
        assert y is not None  # plot_run checks it
        # a model with labels encodes (x, y): labels.LabeledVAE.encode
        codes = torch.cat([vae.encode(x[i : i + 1000], y[i : i + 1000]) for i in range(0, len(x), 1000)])  # type: ignore[call-arg]
        plots.save_analogies(vae, x[:10], y[:10], out / "analogies.png")
        plots.save_projection(codes, y.numpy(), out / "codes_pca.png")
        return [out / "analogies.png", out / "codes_pca.png"]
    codes = torch.cat([vae.encode(x[i : i + 1000]) for i in range(0, len(x), 1000)])
    labels = None if split.labels is None else split.labels.numpy()
    written = []
    if vae.latent_dim == 2:
        if plots.save_manifold(vae, codes, out / "manifold.png"):
            written.append(out / "manifold.png")
        plots.save_latent_scatter(codes, labels, out / "latent_space.png")
        written.append(out / "latent_space.png")
    else:
        if plots.save_traversals(vae, codes, out / "traversals.png"):
            written.append(out / "traversals.png")
        plots.save_projection(codes, labels, out / "codes_pca.png")
        written.append(out / "codes_pca.png")
    if split.factors is not None:  # each dimension's traversal and the factor it is most informative about
        plots.save_factor_traversals(vae, codes, split.factors.numpy(), factor_names, out / "factor_traversals.png")
        written.append(out / "factor_traversals.png")
    if vae.clusters:  # samples by component, one row each (a fixed seed: the same figure every time)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            if save_component_samples(vae, out / "components.png"):
                written.append(out / "components.png")
    return written
