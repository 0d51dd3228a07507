"""A run's evaluation report: `evaluate_run` scores a run directory's model on a split of its data
(`evaluation.evaluate`, and the disentanglement metrics where the data carry factors of
variation), prints the table `pyro-vae evaluate` shows, and writes the record `RUN/evaluation.json`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import checks, evaluation
from .atomic import write_text_atomically
from .data import Data, Split
from .files import check_writable_file
from .registry import UserError
from .runs import limited_split, load_run_data
from .seeding import EVALUATION_SEED

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .models import VAE


def evaluate_run(run: str | os.PathLike[str], num_samples: int = 5000, split: str = "test", seed: int | None = None,
                 batch_size: int = 100, limit: int | None = None, subset_seed: int | None = None,
                 checkpoint: str = "checkpoint.pt", data: Data | torch.Tensor | np.ndarray | dict[str, Any] | None = None,
                 out: str | os.PathLike[str] | None = None, verbose: bool = False) -> dict[str, Any]:
    """Evaluate the run in directory `run` on its `split` and write the record to `out` (default
    `RUN/evaluation.json`); returns the record.

    The record is `evaluation.evaluate`'s result with `num_samples` = K importance samples and
    noise from `seed` (default `EVALUATION_SEED`), on `limit` data points of the split drawn at
    random with `subset_seed` (`runs.limited_split`; default: all of them), plus `split`,
    `split_size`, `subset_seed` (None: the whole split), `seed`, `checkpoint` and `seconds`, and
    `disentanglement` where the data carry factors of variation (a model without labels), and
    `clustering` (`evaluation.clustering_metrics` of argmax q(y | x): accuracy, NMI, cluster sizes)
    for a model that clusters (`clusters`), where the data carry labels.
    `data`: the arrays a run trained on arrays from Python was given, `train(config, data=...)`
    (a config cannot load them). `verbose` shows a progress bar and prints the table before the
    record is written. Runs on CUDA where there is one. `out` is checked before the computation.
    """
    import torch

    seed = EVALUATION_SEED if seed is None else checks.seed(seed, "--seed")
    out = Path(run) / "evaluation.json" if out is None else Path(out)
    if Path(run).is_dir():
        check_writable_file(out)  # before the computation, not after it
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae, loaded = load_run_data(run, checkpoint, data)
    part, dequantization_levels = loaded.split(split), loaded.dequantization_levels
    vae = vae.to(device)
    split_size = len(part)
    part, subset_seed = limited_split(part, limit, subset_seed)
    x = part.x
    labels = None
    if vae.takes_labels:  # a model with labels: conditional scores, accuracy
        if part.labels is None:
            raise UserError(f"the {split} split has no labels, which a {vae.kind} run needs to be evaluated")
        labels = part.labels
    vae.likelihood.check_support(x)
    start = time.perf_counter()
    result = evaluation.evaluate(vae, x, num_samples=num_samples, seed=seed, batch_size=batch_size, progress=verbose,
                                 labels=labels, dequantization_levels=dequantization_levels)
    result.update(split=split, split_size=split_size, subset_seed=subset_seed,  # None: the whole split
                  seed=seed, checkpoint=checkpoint, seconds=time.perf_counter() - start)
    if verbose:
        subset = "" if subset_seed is None else f" (a random subset, seed {subset_seed}, of {split_size})"
        print(f"{run}: {split} split, {result['num_examples']} data points{subset}, K = {num_samples}")
    if vae.clusters and part.labels is not None:  # a clustering model, data with classes
        clusters = evaluation.model_clusters(vae, x, batch_size=max(batch_size, 1000), seed=seed)
        result["clustering"] = evaluation.clustering_metrics(clusters, part.labels, vae.components)
    rows = report_rows(result, vae)
    factored = split_with_factors(loaded, part)
    if factored is not None and not vae.takes_labels:
        from .disentanglement import evaluate_disentanglement

        scores = evaluate_disentanglement(vae, factored, splits=("test",), seed=seed)
        result["disentanglement"] = scores
        rows += disentanglement_rows(scores)
    if verbose:
        for name, value in rows:
            print(f"  {name:<32} {value}", flush=True)
    try:  # the result is printed above whatever happens here
        write_text_atomically(out, json.dumps(result, indent=2) + "\n")
    except OSError as error:
        shown = "; the result is printed above" if verbose else ""
        raise UserError(f"could not write {out} ({error.strerror or error}){shown}") from None
    return result


def report_rows(result: dict[str, Any], vae: VAE) -> list[tuple[str, str]]:
    """The table of `pyro-vae evaluate`: (name, value) rows of `evaluation.evaluate`'s `result`."""
    levels = result.get("dequantization_levels")
    discrete = "" if levels is None else f" of the {levels}-level data"
    rows = [
        (f"log-likelihood log p(x){discrete}, nats",
         f"{result['log_likelihood']:.3f} +- {result['log_likelihood_standard_error']:.3f}"),
        (f"ELBO{discrete}, nats", f"{result['elbo']:.3f}"),
        ("reconstruction E_q log p(x|z)", f"{result['reconstruction']:.3f}"),
        ("KL(q(z|x) || p(z))", f"{result['kl']:.3f}"),
        ("active units", f"{result['active_units']} of {vae.latent_dim}"),
    ]
    for site, kl in result.get("kl_per_layer", {}).items():
        rows.append((f"  KL, layer {site}", f"{kl:.3f} ({result['active_units_per_layer'][site]} active units)"))
    if levels is not None:
        rows.append(("  dequantized density's log p", f"{result['log_likelihood_density']:.3f} "
                     f"(minus D log {levels} = {result['dequantization_offset']:.3f})"))
    if result["bits_per_dim"] is not None:
        rows.append(("bits per dimension", f"{result['bits_per_dim']:.4f}"))
    if "accuracy" in result:
        rows.append(("accuracy of q(y | x)", f"{result['accuracy']:.4f}"))
    clustering = result.get("clustering")
    if clustering is not None:
        rows.append(("clustering accuracy (Hungarian)", f"{clustering['clustering_accuracy']:.4f}"))
        rows.append(("NMI of clusters and classes", f"{clustering['nmi']:.4f}"))
        rows.append(("cluster sizes", " ".join(map(str, clustering["cluster_sizes"]))))
    return rows


def disentanglement_rows(scores: dict[str, Any]) -> list[tuple[str, str]]:
    """The rows of `disentanglement.evaluate_disentanglement`'s scores in the table of `pyro-vae evaluate`."""
    return [
        ("MIG (Chen et al. 2018)", f"{scores['mig']:.4f}"),
        ("FactorVAE score", f"{scores['factor_vae_score']:.4f}"),
        ("DCI disentanglement", f"{scores['dci']['disentanglement']:.4f}"),
        ("DCI completeness", f"{scores['dci']['completeness']:.4f}"),
        ("total correlation of q(z), nats", f"{scores.get('total_correlation', float('nan')):.4f}"),
    ]


def split_with_factors(data: Data, part: Split) -> Data | None:
    """Data holding only `part` (a limited split of `data`), where the data carry factors of
    variation: what the disentanglement metrics and figures read; else None."""
    if not data.has_factors:
        return None
    return Data(part, part, part, factor_names=data.factor_names, render=data.render)
