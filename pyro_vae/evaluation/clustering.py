"""Clustering scored against the true classes: accuracy under the best one-to-one matching, NMI,
cluster sizes; and the clusterings a model is compared with (k-means on pixels or on a VAE's codes,
a mixture prior's responsibilities).

`clustering_accuracy` matches clusters to classes one-to-one by the Hungarian algorithm
(`scipy.optimize.linear_sum_assignment` on the K x C contingency table): with K >= C clusters, C of
them are matched to a class each and the points of the unmatched ones count as errors. Greedy
matching (each cluster to its largest class, in turn) can miss the best matching; Hungarian cannot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..registry import UserError
from ..seeding import EVALUATION_SEED, seeded_eval

if TYPE_CHECKING:
    from ..models import VAE


def _array(values: Any, name: str) -> np.ndarray:
    array = values.detach().cpu().numpy() if torch.is_tensor(values) else np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer) or (len(array) and array.min() < 0):
        raise UserError(f"{name} must be a 1-D array of integers >= 0")
    return array


def contingency(clusters: Any, labels: Any) -> np.ndarray:
    """The K x C table of counts: row k, column c = points in cluster k of class c."""
    clusters, labels = _array(clusters, "clusters"), _array(labels, "labels")
    if len(clusters) != len(labels):
        raise UserError(f"{len(clusters)} cluster assignments for {len(labels)} labels")
    table = np.zeros((clusters.max(initial=0) + 1, labels.max(initial=0) + 1), dtype=np.int64)
    np.add.at(table, (clusters, labels), 1)
    return table


def clustering_accuracy(clusters: Any, labels: Any) -> float:
    """The fraction of points whose cluster is matched to their class under the best one-to-one
    matching of clusters to classes (Hungarian); points of unmatched clusters count as errors."""
    from scipy.optimize import linear_sum_assignment

    table = contingency(clusters, labels)
    if table.sum() == 0:
        raise UserError("no points to score")
    rows, columns = linear_sum_assignment(table, maximize=True)
    return float(table[rows, columns].sum() / table.sum())


def nmi(clusters: Any, labels: Any) -> float:
    """Normalized mutual information between clusters and classes (scikit-learn's, arithmetic mean)."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(_array(labels, "labels"), _array(clusters, "clusters")))


def clustering_metrics(clusters: Any, labels: Any, num_clusters: int | None = None) -> dict[str, Any]:
    """`clustering_accuracy`, `nmi`, and `cluster_sizes` (points per cluster, `num_clusters` of them)."""
    clusters = _array(clusters, "clusters")
    sizes = np.bincount(clusters, minlength=num_clusters or 0)
    return {"clustering_accuracy": clustering_accuracy(clusters, labels), "nmi": nmi(clusters, labels),
            "cluster_sizes": [int(n) for n in sizes]}


@torch.no_grad()
def model_clusters(vae: VAE, x: torch.Tensor, batch_size: int = 1000, seed: int = EVALUATION_SEED) -> torch.Tensor:
    """A clustering model's (`clusters`) cluster of each data point, argmax_y q(y | x) (`cluster`)."""
    if not vae.clusters:
        raise UserError(f"model.kind = {vae.kind!r} does not cluster; model.kind = \"gmvae\" does")
    device = next(vae.parameters()).device
    with seeded_eval(vae, seed):
        return torch.cat([vae.cluster(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


def kmeans_clusters(features: Any, num_clusters: int, seed: int = 0) -> np.ndarray:
    """k-means (scikit-learn, 10 restarts) on rows of `features` (flattened): the baseline on pixels,
    or on a VAE's mean codes (`code_clusters`)."""
    from sklearn.cluster import KMeans

    array = features.detach().cpu().numpy() if torch.is_tensor(features) else np.asarray(features)
    array = array.reshape(len(array), -1).astype(np.float64)
    return KMeans(num_clusters, n_init=10, random_state=seed).fit_predict(array)


@torch.no_grad()
def mean_codes(vae: VAE, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """E_q[z | x] of each data point, in batches."""
    device = next(vae.parameters()).device
    with seeded_eval(vae, EVALUATION_SEED):
        return torch.cat([vae.encode(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


def code_clusters(vae: VAE, x: torch.Tensor, num_clusters: int, seed: int = 0) -> np.ndarray:
    """k-means on a VAE's mean codes E_q[z | x]."""
    return kmeans_clusters(mean_codes(vae, x), num_clusters, seed)


@torch.no_grad()
def prior_responsibility_clusters(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """A mixture prior read as VaDE does (Jiang et al. 2017): the cluster argmax_k p(k | z) at the mean
    code z = E_q[z | x], p(k | z) the prior's component responsibility (`model.prior = "mog"`)."""
    prior = vae.prior_dist()
    if not hasattr(prior, "responsibilities"):
        raise UserError(f"the prior {type(prior).__name__} has no components whose responsibility p(k | z) "
                        "could cluster; use model.prior = \"mog\"")
    device = next(vae.parameters()).device
    return prior.responsibilities(mean_codes(vae, x).to(device)).argmax(-1).cpu()
