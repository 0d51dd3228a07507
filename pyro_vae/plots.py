"""Figures: image grids (reconstructions, samples) and training curves.

Only image-shaped data ``(channels, height, width)`` or flat data whose length is
a perfect square get image figures; curves are drawn for every run.
"""

import math

import matplotlib

matplotlib.use("Agg")  # files, never windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def as_images(x):
    """(N, *shape) tensor -> (N, H, W) or (N, H, W, 3) numpy array in [0, 1], or None."""
    x = x.detach().float().cpu()
    if x.dim() == 2 and math.isqrt(x.shape[1]) ** 2 == x.shape[1]:
        side = math.isqrt(x.shape[1])
        x = x.view(-1, 1, side, side)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        return None
    x = x.clamp(0, 1).numpy()
    return x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1)


def image_grid(images, columns):
    """Tile (N, H, W[, 3]) images into one array, ``columns`` per row, 1-pixel gaps."""
    n, h, w = images.shape[:3]
    rows = math.ceil(n / columns)
    grid = np.ones((rows * (h + 1) - 1, columns * (w + 1) - 1, *images.shape[3:]))
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = image
    return grid


def save_grid(x, path, columns=8, title=None):
    """Save a grid of images; returns False (and writes nothing) for non-image data."""
    images = as_images(x)
    if images is None:
        return False
    grid = image_grid(images, columns)
    fig, ax = plt.subplots(figsize=(columns * 0.8, math.ceil(len(images) / columns) * 0.8 + (0.4 if title else 0)))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def save_reconstructions(originals, reconstructions, path, columns=8):
    """Originals on odd rows, their reconstructions on the rows below them."""
    n = len(originals) - len(originals) % columns or len(originals)
    pairs = []
    for start in range(0, n, columns):
        pairs += [originals[start : start + columns], reconstructions[start : start + columns]]
    return save_grid(torch.cat(pairs), path, columns, title="data (odd rows) and reconstructions (even rows)")


def save_curves(rows, path):
    """Training loss and validation ELBO terms per epoch, from the metrics rows."""
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_terms) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="training loss (per data point)")
    ax_loss.plot(epochs, [-r["val_elbo"] for r in rows], label="validation -ELBO")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("nats")
    ax_loss.legend()
    ax_terms.plot(epochs, [-r["val_reconstruction"] for r in rows], label="validation -log p(x|z)")
    ax_terms.plot(epochs, [r["val_kl"] for r in rows], label="validation KL")
    ax_terms.set_xlabel("epoch")
    ax_terms.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
