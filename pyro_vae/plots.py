"""Figures: image grids (reconstructions, samples) and training curves.

Only image-shaped data get image figures: `(channels, height, width)` with 1 or 3
channels, `(height, width)` (one grey channel), or flat data whose length is a
perfect square; curves are drawn for every run.

Latent-space figures (`pyro-vae plot`): for a 2-D latent space the decoded manifold
on a grid and the encoded data colored by label (Kingma & Welling 2014, fig. 4);
otherwise latent traversals and the codes' first two principal components. Their
axes carry the z values the images were decoded from.

Figures are `matplotlib.figure.Figure` objects saved directly, never through
pyplot: importing or using this module leaves matplotlib's backend and pyplot's
state alone (and matplotlib is imported only when a figure is drawn). Every
`save_*` function returns the figure it saved (None where it drew nothing), so
callers and tests can look at what was drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .atomic import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Grid figures: 0.8 inch per image, shrunk so the longer side stays within 12 inches.
CELL_INCHES = 0.8
MAX_GRID_INCHES = 12.0
# The most tick labels an axis of a grid gets (every k-th cell beyond that).
MAX_TICKS = 9


def _figure(width, height):
    from matplotlib.figure import Figure  # lazily: the library's import draws in nothing

    return Figure(figsize=(width, height))


def _save(fig, path, **options):
    # through a temporary file: a figure being replaced is never seen half-written
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=Path(path).suffix.lstrip(".").lower() or None, dpi=100, **options)
    return fig


def as_images(x):
    """(N, *shape) tensor -> (N, H, W) or (N, H, W, 3) numpy array in [0, 1], or None."""
    x = x.detach().float().cpu()
    if x.dim() == 2 and math.isqrt(x.shape[1]) ** 2 == x.shape[1]:
        side = math.isqrt(x.shape[1])
        x = x.view(-1, 1, side, side)
    if x.dim() == 3:  # (N, H, W): one grey channel
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        return None
    x = x.clamp(0, 1).numpy()
    return x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1)


def square_columns(n):
    """Columns for a near-square grid of n images: ceil(sqrt(n)) (64 -> 8 x 8, 1000 -> 32 x 32)."""
    return max(1, math.ceil(math.sqrt(n)))


def image_grid(images, columns):
    """Tile (N, H, W[, 3]) images into one array, `columns` per row, 1-pixel gaps."""
    n, h, w = images.shape[:3]
    rows = math.ceil(n / columns)
    grid = np.ones((rows * (h + 1) - 1, columns * (w + 1) - 1, *images.shape[3:]))
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = image
    return grid


def _label_cells(axis, size, labels, name, set_ticks, set_labels, set_name, limit=MAX_TICKS):
    """Tick the centres of the cells along one side of a grid (`size` pixels per cell
    plus a 1-pixel gap) with `labels`, at most `limit` of them (None: every cell)."""
    every = 1 if limit is None else math.ceil(len(labels) / limit)
    chosen = list(range(0, len(labels), every))
    set_ticks([i * (size + 1) + (size - 1) / 2 for i in chosen])
    set_labels([labels[i] for i in chosen], fontsize=7)
    set_name(name, fontsize=8)


def save_grid(x: torch.Tensor, path: str | Path, columns: int | None = None, title: str | None = None,
              x_axis: tuple[Sequence[str], str] | None = None, y_axis: tuple[Sequence[str], str] | None = None,
              label_every_row: bool = False) -> Figure | None:
    """Save a grid of images, `columns` per row (default: a near-square grid).

    `x_axis` / `y_axis`, each `(labels, name)`, tick the columns / rows with labels
    (the z values a figure's images were decoded from), every k-th beyond `MAX_TICKS` of
    them, or every row with `label_every_row` (rows that are each a latent dimension, not
    steps along one); without them the axes are hidden.
    Returns the saved figure, or None (and writes nothing) for non-image data.
    """
    images = as_images(x)
    if images is None:
        return None
    columns = columns or square_columns(len(images))
    rows = math.ceil(len(images) / columns)
    cell = min(CELL_INCHES, MAX_GRID_INCHES / max(columns, rows))
    fig = _figure(columns * cell + (1.2 if y_axis else 0), rows * cell + (0.4 if title else 0) + (0.5 if x_axis else 0))
    ax = fig.add_subplot()
    ax.imshow(image_grid(images, columns), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if x_axis or y_axis:
        h, w = images.shape[1:3]
        if x_axis:
            _label_cells(ax, w, *x_axis, ax.set_xticks, ax.set_xticklabels, ax.set_xlabel)
        else:
            ax.set_xticks([])
        if y_axis:
            _label_cells(ax, h, *y_axis, ax.set_yticks, ax.set_yticklabels, ax.set_ylabel,
                         limit=None if label_every_row else MAX_TICKS)
        else:
            ax.set_yticks([])
    else:
        ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path, bbox_inches="tight")


def save_reconstructions(originals, reconstructions, path, columns=8):
    """Originals on odd rows, their reconstructions on the rows below them."""
    n = len(originals) - len(originals) % columns or len(originals)
    pairs = []
    for start in range(0, n, columns):
        pairs += [originals[start : start + columns], reconstructions[start : start + columns]]
    return save_grid(torch.cat(pairs), path, columns, title="data (odd rows) and reconstructions (even rows)")


def save_curves(rows, path):
    """Per epoch: the objective as optimized beside the true -ELBO (train and validation),
    the validation terms, and the KL weight in force where it changes.

    Epochs are ticked at integers; each panel's legend sits below it, outside the axes,
    so it never hides a curve.
    """
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    fig = _figure(10, 4.4)
    ax_loss, ax_terms = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="training objective (as optimized)")
    if "train_elbo" in rows[0]:
        ax_loss.plot(epochs, [-r["train_elbo"] for r in rows], label="training -ELBO")
    ax_loss.plot(epochs, [-r["val_elbo"] for r in rows], label="validation -ELBO")
    ax_terms.plot(epochs, [-r["val_reconstruction"] for r in rows], label="validation -log p(x|z)")
    ax_terms.plot(epochs, [r["val_kl"] for r in rows], label="validation KL")
    handles, labels = ax_terms.get_legend_handles_labels()
    weights = [r.get("kl_weight", 1.0) for r in rows]
    if len(set(weights)) > 1:
        ax_weight = ax_terms.twinx()
        ax_weight.plot(epochs, weights, color="gray", linestyle=":", label="KL weight (right axis)")
        ax_weight.set_ylabel("KL weight")
        more_handles, more_labels = ax_weight.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    for ax in (ax_loss, ax_terms):
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per data point")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    below = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.16), "fontsize": 8, "frameon": False}
    ax_loss.legend(**below)
    ax_terms.legend(handles, labels, **below)
    fig.subplots_adjust(bottom=0.34, wspace=0.3)
    return _save(fig, path, bbox_inches="tight")


def _decode(vae, z):
    return vae.likelihood.mean(vae.decoder(z))


def _scatter(points, labels, path, title, xlabel, ylabel):
    fig = _figure(5.6, 4.8)
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=3, alpha=0.5)
    else:
        spots = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=3, alpha=0.7)
        fig.colorbar(spots, ax=ax, label="label")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return _save(fig, path)


def _values(values):
    return [f"{v:.2g}" for v in values.tolist()]


@torch.no_grad()
def save_manifold(vae, codes, path, steps=20):
    """For a 2-D latent space: E[x | z] decoded on a `steps` x `steps` grid of z.

    The grid spans the 1st to 99th percentile of `codes` (the encoded data) on each
    axis, so it covers where the data sit whatever the prior; z_2 grows upward. The
    axes are ticked with the z_1 and z_2 values of the columns and rows.
    """
    low, high = torch.quantile(codes.float().cpu(), torch.tensor([0.01, 0.99]), dim=0)
    z1, z2 = torch.linspace(low[0], high[0], steps), torch.linspace(high[1], low[1], steps)
    grid = torch.stack([z1.repeat(steps), z2.repeat_interleave(steps)], dim=-1)  # row i: z_2 = z2[i]
    device = next(vae.parameters()).device
    return save_grid(
        _decode(vae, grid.to(device)), path, columns=steps, title="decoded manifold E[x | z] on a grid of z",
        x_axis=(_values(z1), "z_1"), y_axis=(_values(z2), "z_2"),
    )


def save_latent_scatter(codes, labels, path):
    """The codes E_q[z | x] of a 2-D latent space, colored by label where there are labels."""
    codes = codes.detach().float().cpu().numpy()
    return _scatter(codes, labels, path, "encoded data E_q[z | x]", "z_1", "z_2")


def save_projection(codes, labels, path):
    """The codes projected on their first two principal components (PCA by SVD)."""
    codes = codes.detach().double().cpu().numpy()
    centered = codes - codes.mean(0)
    _, singular, directions = np.linalg.svd(centered, full_matrices=False)
    explained = singular**2 / max((singular**2).sum(), 1e-300)
    points = centered @ directions[:2].T
    return _scatter(
        points, labels, path,
        f"codes E_q[z | x], first two principal components ({100 * explained[:2].sum():.0f}% of variance)",
        "PC 1", "PC 2",
    )


@torch.no_grad()
def save_traversals(vae, codes, path, rows=10, steps=9, span=3.0):
    """Latent traversals: from the code of one data point, move one dimension at a time
    over `span` standard deviations of the codes either side; one row per dimension,
    the `rows` dimensions whose codes vary most across the data (the active ones).

    The x axis is the offset in standard deviations; each row's label names its
    dimension and the z values it runs over.
    """
    codes = codes.float()
    spread = codes.std(0)
    dims = torch.argsort(spread, descending=True)[: min(rows, codes.shape[1])]
    offsets = torch.linspace(-span, span, steps, device=codes.device)
    z = codes[0].repeat(len(dims), steps, 1)
    for row, d in enumerate(dims):
        z[row, :, d] = codes[:, d].mean() + offsets * spread[d]
    row_labels = [f"z_{int(d)}: {z[row, 0, d]:.2g} to {z[row, -1, d]:.2g}" for row, d in enumerate(dims)]
    return save_grid(
        _decode(vae, z.reshape(-1, codes.shape[1])), path, columns=steps,
        title="latent traversals: one dimension moved per row",
        x_axis=([f"{o:+.3g}" for o in offsets.tolist()], "z_d - mean(z_d), in standard deviations of the codes"),
        y_axis=(row_labels, "dimension: z values from left to right"), label_every_row=True,
    )


@torch.no_grad()
def factor_traversals(vae, codes, factors, factor_names, steps=9, span=3.0):
    """Each latent dimension's traversal, labelled with the factor it is most informative about.

    For every dimension d (ordered by the spread of the codes, widest first) the code of the
    first data point with z_d moved over `span` standard deviations of the codes either side,
    decoded; and the factor k maximizing I(z_d; v_k) / H(v_k) (the normalized mutual
    information MIG is made of: `disentanglement.mutual_information_matrix`), with its value.
    Returns the decoded images `(D * steps, *data_shape)`, one label per row, and the offsets.
    """
    from .disentanglement import mutual_information_matrix

    codes = codes.float().cpu()
    info, entropy = mutual_information_matrix(codes, factors)
    normalized = info / np.where(entropy > 0, entropy, np.inf)
    spread = codes.std(0)
    dims = torch.argsort(spread, descending=True)
    offsets = torch.linspace(-span, span, steps)
    z = codes[0].repeat(len(dims), steps, 1)
    for row, d in enumerate(dims):
        z[row, :, d] = codes[:, d].mean() + offsets * spread[d]
    labels = []
    for d in dims.tolist():
        k = int(np.argmax(normalized[d]))
        labels.append(f"z_{d}: {factor_names[k]} ({normalized[d, k]:.2f})")
    device = next(vae.parameters()).device
    return _decode(vae, z.reshape(-1, codes.shape[1]).to(device)), labels, offsets


@torch.no_grad()
def save_factor_traversals(vae, codes, factors, factor_names, path, steps=9, span=3.0):
    """`factor_traversals` as an image grid: one row per latent dimension, labelled with the
    factor it captures most and the fraction of that factor's entropy it holds, I(z_d; v_k) / H(v_k)."""
    images, labels, offsets = factor_traversals(vae, codes, factors, factor_names, steps, span)
    return save_grid(
        images, path, columns=steps,
        title="each dimension's traversal and the factor it is most informative about",
        x_axis=([f"{o:+.3g}" for o in offsets.tolist()], "z_d - mean(z_d), in standard deviations of the codes"),
        y_axis=(labels, "dimension: factor (I(z_d; v) / H(v))"), label_every_row=True,
    )


@torch.no_grad()
def save_analogies(vae, x, y, path):
    """Style and class apart (Kingma et al. 2014, fig. 1), for a model with labels: row i shows
    data point i, then its code z = E_q[z | x_i, y_i] decoded with each label c = 0, 1, ..."""
    z = vae.encode(x, y)
    classes = vae.num_classes
    labels = torch.arange(classes, device=z.device).repeat(len(z))
    decoded = vae.decode(z.repeat_interleave(classes, 0), labels)
    decoded = decoded.view(len(z), classes, *decoded.shape[1:])
    rows = torch.cat([x.unsqueeze(1).to(decoded.dtype), decoded], 1).flatten(0, 1)
    return save_grid(rows, path, columns=classes + 1, title="analogies: data point, then its z decoded with y = 0, 1, ...")
