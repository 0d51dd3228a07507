"""Figures: image grids (reconstructions, samples) and training curves.

Only image-shaped data ``(channels, height, width)`` or flat data whose length is
a perfect square get image figures; curves are drawn for every run.

Latent-space figures (``pyro-vae plot``): for a 2-D latent space the decoded manifold
on a grid and the encoded data colored by label (Kingma & Welling 2014, fig. 4);
otherwise latent traversals and the codes' first two principal components.
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
    """Per epoch: the objective as optimized beside the true -ELBO (train and validation),
    the validation terms, and the KL weight in force where it changes."""
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_terms) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="training objective (as optimized)")
    if "train_elbo" in rows[0]:
        ax_loss.plot(epochs, [-r["train_elbo"] for r in rows], label="training -ELBO")
    ax_loss.plot(epochs, [-r["val_elbo"] for r in rows], label="validation -ELBO")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("nats per data point")
    ax_loss.legend()
    ax_terms.plot(epochs, [-r["val_reconstruction"] for r in rows], label="validation -log p(x|z)")
    ax_terms.plot(epochs, [r["val_kl"] for r in rows], label="validation KL")
    ax_terms.set_xlabel("epoch")
    ax_terms.set_ylabel("nats per data point")
    weights = [r.get("kl_weight", 1.0) for r in rows]
    if len(set(weights)) > 1:
        ax_weight = ax_terms.twinx()
        ax_weight.plot(epochs, weights, color="gray", linestyle=":", label="KL weight (right axis)")
        ax_weight.set_ylabel("KL weight")
        ax_weight.legend(loc="center right")
    ax_terms.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _decode(vae, z):
    return vae.likelihood.mean(vae.decoder(z))


def _scatter(points, labels, path, title, xlabel, ylabel):
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=3, alpha=0.5)
    else:
        spots = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=3, alpha=0.7)
        fig.colorbar(spots, ax=ax, label="label")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def save_manifold(vae, codes, path, steps=20):
    """For a 2-D latent space: E[x | z] decoded on a ``steps`` x ``steps`` grid of z.

    The grid spans the 1st to 99th percentile of ``codes`` (the encoded data) on each
    axis, so it covers where the data sit whatever the prior; z_2 grows upward.
    """
    low, high = torch.quantile(codes.float().cpu(), torch.tensor([0.01, 0.99]), dim=0)
    z1, z2 = torch.linspace(low[0], high[0], steps), torch.linspace(high[1], low[1], steps)
    grid = torch.stack([z1.repeat(steps), z2.repeat_interleave(steps)], dim=-1)  # row i: z_2 = z2[i]
    device = next(vae.parameters()).device
    return save_grid(_decode(vae, grid.to(device)), path, columns=steps, title="decoded manifold E[x | z] on a grid of z")


def save_latent_scatter(codes, labels, path):
    """The codes E_q[z | x] of a 2-D latent space, colored by label where there are labels."""
    codes = codes.detach().float().cpu().numpy()
    _scatter(codes, labels, path, "encoded data E_q[z | x]", "z_1", "z_2")


def save_projection(codes, labels, path):
    """The codes projected on their first two principal components (PCA by SVD)."""
    codes = codes.detach().double().cpu().numpy()
    centered = codes - codes.mean(0)
    _, singular, directions = np.linalg.svd(centered, full_matrices=False)
    explained = singular**2 / max((singular**2).sum(), 1e-300)
    points = centered @ directions[:2].T
    _scatter(
        points, labels, path,
        f"codes E_q[z | x], first two principal components ({100 * explained[:2].sum():.0f}% of variance)",
        "PC 1", "PC 2",
    )


@torch.no_grad()
def save_traversals(vae, codes, path, rows=10, steps=9, span=3.0):
    """Latent traversals: from the code of one data point, move one dimension at a time
    over ``span`` standard deviations of the codes either side; one row per dimension,
    the ``rows`` dimensions whose codes vary most across the data (the active ones)."""
    codes = codes.float()
    spread = codes.std(0)
    dims = torch.argsort(spread, descending=True)[: min(rows, codes.shape[1])]
    offsets = torch.linspace(-span, span, steps, device=codes.device)
    z = codes[0].repeat(len(dims), steps, 1)
    for row, d in enumerate(dims):
        z[row, :, d] = codes[:, d].mean() + offsets * spread[d]
    title = "latent traversals: rows are dimensions " + ", ".join(str(int(d)) for d in dims)
    return save_grid(_decode(vae, z.reshape(-1, codes.shape[1])), path, columns=steps, title=title)


@torch.no_grad()
def save_analogies(vae, x, y, path):
    """Style and class apart (Kingma et al. 2014, fig. 1), for a model with labels: row i shows
    data point i, then its code z = E_q[z | x_i, y_i] decoded with each label c = 0, 1, ..."""
    z = vae.encode(x, y)
    classes = vae.num_classes
    labels = torch.arange(classes, device=z.device).repeat(len(z))
    decoded = vae.likelihood.mean(vae.decoder(z.repeat_interleave(classes, 0), labels))
    decoded = decoded.view(len(z), classes, *decoded.shape[1:])
    rows = torch.cat([x.unsqueeze(1).to(decoded.dtype), decoded], 1).flatten(0, 1)
    return save_grid(rows, path, columns=classes + 1, title="analogies: data point, then its z decoded with y = 0, 1, ...")
