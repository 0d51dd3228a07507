"""Figures: square sample grids, z values on the latent-space figures' axes, curves with
integer epochs and legends clear of the curves, and no global matplotlib state touched."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import small_vae

from pyro_vae import plots


def tick_labels(axis):
    return [label.get_text() for label in axis.get_ticklabels()]


@pytest.mark.parametrize("n, columns, rows", [(64, 8, 8), (1000, 32, 32), (10, 4, 3), (1, 1, 1)])
def test_sample_grids_are_square(tmp_path, n, columns, rows):
    fig = plots.save_grid(torch.rand(n, 1, 8, 8), tmp_path / "g.png")
    height, width = fig.axes[0].get_images()[0].get_array().shape
    assert (width, height) == (columns * 9 - 1, rows * 9 - 1)  # 8 pixels per image + 1-pixel gaps
    width_in, height_in = fig.get_size_inches()
    assert max(width_in, height_in) <= plots.MAX_GRID_INCHES + 0.5
    assert (tmp_path / "g.png").stat().st_size > 0


def test_h_w_data_are_one_channel_images_and_other_shapes_draw_nothing(tmp_path):
    assert plots.as_images(torch.rand(3, 5, 7)).shape == (3, 5, 7)
    assert plots.save_grid(torch.rand(3, 5), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_manifold_axes_carry_the_z_grid(tmp_path):
    vae = small_vae(latent_dim=2, hidden=8)
    codes = torch.stack([torch.linspace(-2, 2, 101), torch.linspace(-1, 3, 101)], dim=1)
    fig = plots.save_manifold(vae, codes, tmp_path / "m.png", steps=5)
    ax = fig.axes[0]
    low, high = torch.quantile(codes, torch.tensor([0.01, 0.99]), dim=0)
    assert tick_labels(ax.xaxis) == [f"{v:.2g}" for v in torch.linspace(low[0], high[0], 5).tolist()]
    assert tick_labels(ax.yaxis) == [f"{v:.2g}" for v in torch.linspace(high[1], low[1], 5).tolist()]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("z_1", "z_2")
    assert list(ax.get_xticks()) == [3.5 + 9 * i for i in range(5)]  # the centres of the 8-pixel cells


def test_traversal_axes_carry_offsets_and_each_rows_z_values(tmp_path):
    vae = small_vae(latent_dim=3, hidden=8)
    codes = torch.randn(200, 3) * torch.tensor([0.1, 2.0, 1.0])
    fig = plots.save_traversals(vae, codes, tmp_path / "t.png", steps=5, span=2.0)
    ax = fig.axes[0]
    assert tick_labels(ax.xaxis) == ["-2", "-1", "+0", "+1", "+2"]
    rows = tick_labels(ax.yaxis)
    assert [row.split(":")[0] for row in rows] == ["z_1", "z_2", "z_0"]  # by spread of the codes
    d, spread = 1, codes[:, 1].std()
    low, high = codes[:, d].mean() - 2 * spread, codes[:, d].mean() + 2 * spread
    assert rows[0] == f"z_1: {low:.2g} to {high:.2g}"


def test_every_row_of_a_factor_traversal_is_labelled(tmp_path):
    # 10 latent dimensions: 10 rows, each labelled with its dimension and factor (the axes of
    # the other grids keep every k-th label beyond 9 cells, which would label 5 of the 10 rows)
    vae = small_vae(latent_dim=10, hidden=8)
    codes = torch.randn(300, 10) * torch.linspace(2.0, 0.2, 10)
    factors = np.c_[np.arange(300) % 3, np.arange(300) % 5]
    fig = plots.save_factor_traversals(vae, codes, factors, ["shape", "x"], tmp_path / "f.png", steps=5)
    rows = tick_labels(fig.axes[0].yaxis)
    assert [row.split(":")[0] for row in rows] == [f"z_{d}" for d in range(10)]  # by spread of the codes
    assert all(row.split(": ")[1].split(" (")[0] in ("shape", "x") for row in rows)
    assert list(fig.axes[0].get_yticks()) == [3.5 + 9 * i for i in range(10)]  # one tick per row's centre
    assert len(tick_labels(plots.save_traversals(vae, codes, tmp_path / "t.png", steps=5).axes[0].yaxis)) == 10


def curve_rows(epochs, weights=None):
    return [
        {"epoch": e, "train_loss": 30.0 - e, "train_elbo": -29.0 + e, "val_elbo": -31.0 + e,
         "val_reconstruction": -25.0 + e, "val_kl": 5.0, "kl_weight": 1.0 if weights is None else weights[e - 1]}
        for e in range(1, epochs + 1)
    ]


@pytest.mark.parametrize("weights", [None, [0.0, 0.5, 1.0]])
def test_curves_have_integer_epochs_and_legends_outside_the_axes(tmp_path, weights):
    fig = plots.save_curves(curve_rows(3, weights), tmp_path / "c.png")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 2 and len(legends[1].get_texts()) == (3 if weights else 2)
    for ax, legend in zip(fig.axes, legends):
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks and all(t == int(t) for t in ticks), ticks
        box, frame = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert box.y1 <= frame.y0, "the legend overlaps the axes, where the curves are"


def test_importing_and_drawing_leave_matplotlib_alone():
    """Importing pyro_vae (and drawing a figure) neither switches the backend nor touches pyplot."""
    script = (
        "import matplotlib, sys\n"
        "matplotlib.use('svg')\n"
        "import pyro_vae, pyro_vae.cli, pyro_vae.training, pyro_vae.plots as plots, torch\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "plots.save_grid(torch.rand(4, 1, 5, 5), sys.argv[1])\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported by drawing'\n"
        "print(matplotlib.get_backend())\n"
    )
    done = subprocess.run([sys.executable, "-c", script, "/dev/null"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "svg"
