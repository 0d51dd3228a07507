"""The dSprites generative process (Matthey et al. 2017), rendered here, deterministically, in numpy.

dSprites is a set of binary images of one white sprite on black, made from five independent
factors of variation on a grid: every combination appears exactly once.

| factor | values | published grid (64x64) | default (32x32) |
|---|---|---|---|
| shape | square, ellipse, heart (0, 1, 2) | 3 | 3 |
| scale | linspace(0.5, 1, n) | 6 | 6 |
| orientation | 2 pi k / n, k = 0..n-1: [0, 2 pi) | 40 | 10 |
| x, y | linspace(0, 1, n) (position) | 32 x 32 | 8 x 8 |

The published grid has 3 x 6 x 40 x 32 x 32 = 737,280 images of 64 x 64 pixels; the default,
3 x 6 x 10 x 8 x 8 = 11,520 images of 32 x 32, trains on two CPU cores in minutes. The
published set's orientations are `linspace(0, 2 pi, 40)`, which repeats 0 as 2 pi; here they
are 40 distinct angles in [0, 2 pi).

Rendering: a pixel is on where its centre, mapped into the sprite's own frame (shifted by the
sprite's position, rotated by minus its orientation, divided by its scale), lies inside the
shape's region: the square |u|, |v| <= 1; the ellipse u^2 + (2 v)^2 <= 1 (twice as long as
wide); the heart (u^2 + v^2 - 1)^3 - u^2 v^3 <= 0. The sprite's size at scale 1 is a fixed
fraction of the image (`SPRITE_RADIUS`), and its centre moves over [margin, 1 - margin] of the
image so that the largest sprite, at any orientation, stays inside. The drawing is not the
published one pixel for pixel (that one was drawn with a vector library); the factors, their
grid and their independence are the same, which is what the metrics need.

The images are a pure function of the factor values and the image size, in float64 arithmetic
(tested by a checksum of the default grid's images).
"""

import numpy as np

FACTOR_NAMES = ("shape", "scale", "orientation", "x", "y")
SHAPES = ("square", "ellipse", "heart")
PUBLISHED_GRID = (3, 6, 40, 32, 32)
PUBLISHED_SIZE = 64
DEFAULT_GRID = (3, 6, 10, 8, 8)
DEFAULT_SIZE = 32

# Half-extents in the sprite's frame, times this, are fractions of the image width at scale 1;
# chosen so the three shapes cover similar areas. MARGIN keeps the largest rotated sprite inside.
SPRITE_RADIUS = {"square": 0.12, "ellipse": 0.19, "heart": 0.13}
MARGIN = 0.2


def grid_values(grid=DEFAULT_GRID):
    """The values each factor takes on `grid` (counts per factor, in `FACTOR_NAMES` order)."""
    shapes, scales, orientations, xs, ys = grid
    if not 1 <= shapes <= len(SHAPES):
        raise ValueError(f"dSprites has 1 to {len(SHAPES)} shapes, got {shapes}")
    return [
        np.arange(shapes, dtype=np.float64),
        np.linspace(0.5, 1.0, scales) if scales > 1 else np.array([1.0]),
        2 * np.pi * np.arange(orientations) / orientations,
        np.linspace(0.0, 1.0, xs) if xs > 1 else np.array([0.5]),
        np.linspace(0.0, 1.0, ys) if ys > 1 else np.array([0.5]),
    ]


def grid_factors(grid=DEFAULT_GRID):
    """Every combination of the grid's factor values, shape `(prod(grid), 5)`, the last factor
    varying fastest (the published file's order)."""
    values = grid_values(grid)
    mesh = np.meshgrid(*values, indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=1)


def _inside(shape, u, v):
    if shape == "square":
        return (np.abs(u) <= 1) & (np.abs(v) <= 1)
    if shape == "ellipse":
        return u * u + 4 * v * v <= 1
    r = u * u + v * v - 1
    return r * r * r - u * u * v * v * v <= 0


def render(factors, size=DEFAULT_SIZE, chunk=4096):
    """Binary images, uint8 `(N, size, size)` in {0, 1}, of the sprites with the given factor
    values `factors` `(N, 5)`: shape index (0 square, 1 ellipse, 2 heart), scale, orientation
    (radians), x and y in [0, 1] (x to the right, y downwards). Any values may be given, not only
    the grid's."""
    factors = np.asarray(factors, dtype=np.float64).reshape(-1, len(FACTOR_NAMES))
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size  # pixel centres in [0, 1]
    py, px = np.meshgrid(centres, centres, indexing="ij")
    images = np.zeros((len(factors), size, size), dtype=np.uint8)
    for start in range(0, len(factors), chunk):
        f = factors[start : start + chunk]
        shape, scale, angle = f[:, 0], f[:, 1], f[:, 2]
        cx = MARGIN + f[:, 3] * (1 - 2 * MARGIN)
        cy = MARGIN + f[:, 4] * (1 - 2 * MARGIN)
        dx = px[None] - cx[:, None, None]
        dy = cy[:, None, None] - py[None]  # upwards positive: the heart points down, as drawn
        cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
        for index, name in enumerate(SHAPES):
            rows = np.flatnonzero(np.rint(shape) == index)
            if not len(rows):
                continue
            radius = SPRITE_RADIUS[name] * scale[rows][:, None, None]
            u = (cos[rows] * dx[rows] + sin[rows] * dy[rows]) / radius  # rotate by -angle
            v = (-sin[rows] * dx[rows] + cos[rows] * dy[rows]) / radius
            images[start + rows] = _inside(name, u, v)
    return images
