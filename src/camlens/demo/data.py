"""Synthetic "find the shape" images for the bundled demo model.

Every image holds exactly one object from :data:`CLASSES` at a random position, size, rotation
and colour, drawn over a cluttered background (smooth colour noise, soft stripes, soft blotches)
and 1-3 distractors that belong to no class (thin line segments, small dots, thin arcs). The
label says which shape the object is and the mask says which pixels it covers, so a class
activation map can be scored against ground truth.

Determinism: every random number comes from one ``numpy.random.Generator(PCG64(seed))`` made per
call, and the pixel arithmetic uses only ``+ - * /``, ``sqrt``, ``floor`` and comparisons (no
``sin``/``exp``/BLAS, whose last bits may vary between machines), so the same ``(n, seed, size)``
gives bit-identical tensors everywhere.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = ["CLASSES", "make_dataset"]

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
"""Names of the object classes; a label ``k`` means ``CLASSES[k]``."""

_F = NDArray[np.float32]
_B = NDArray[np.bool_]
_Polygon = tuple[tuple[float, float], ...]
_Window = tuple[slice, slice]

_SQRT3 = math.sqrt(3.0)
_SQRT5 = math.sqrt(5.0)
# cos/sin of 18 and 54 degrees from square roots only (correctly rounded on every machine).
_COS18 = math.sqrt(10.0 + 2.0 * _SQRT5) / 4.0
_SIN18 = (_SQRT5 - 1.0) / 4.0
_COS54 = math.sqrt(10.0 - 2.0 * _SQRT5) / 4.0
_SIN54 = (_SQRT5 + 1.0) / 4.0


def _star_polygon(outer: float, inner: float) -> _Polygon:
    """The 10 vertices of a five-pointed star pointing up (image y grows downwards)."""
    # Outer points at -90, -18, 54, 126, 198 degrees; inner points halfway between them.
    outer_dirs = [
        (0.0, -1.0),
        (_COS18, -_SIN18),
        (_COS54, _SIN54),
        (-_COS54, _SIN54),
        (-_COS18, -_SIN18),
    ]
    inner_dirs = [
        (_COS54, -_SIN54),
        (_COS18, _SIN18),
        (0.0, 1.0),
        (-_COS18, _SIN18),
        (-_COS54, -_SIN54),
    ]
    verts: list[tuple[float, float]] = []
    for (ox, oy), (ix, iy) in zip(outer_dirs, inner_dirs, strict=True):
        verts += [(outer * ox, outer * oy), (inner * ix, inner * iy)]
    return tuple(verts)


_TRIANGLE: _Polygon = ((0.0, -1.1), (1.1 * _SQRT3 / 2.0, 0.55), (-1.1 * _SQRT3 / 2.0, 0.55))
_STAR: _Polygon = _star_polygon(1.08, 0.45)
_REACH = 1.1  # every shape lies within this many radii of its centre


def _in_polygon(u: _F, v: _F, poly: _Polygon) -> _B:
    """Even-odd point-in-polygon test.

    Args:
        u: x coordinates of the query points, any shape.
        v: y coordinates, same shape as ``u``.
        poly: polygon vertices ``(x, y)``.

    Returns:
        Boolean array shaped like ``u``, True inside the polygon.
    """
    inside = np.zeros(u.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1], strict=True):
        if y0 == y1:
            continue
        crosses = (v < y0) != (v < y1)
        inside ^= crosses & (u < x0 + (v - y0) * ((x1 - x0) / (y1 - y0)))
    return inside


def _unit_direction(rng: np.random.Generator) -> tuple[float, float]:
    """A random unit vector ``(cos, sin)``, built without trigonometric functions."""
    t = rng.uniform(-1.0, 1.0)  # tan(theta / 2), theta in [-90, 90] degrees
    c, s = (1.0 - t * t) / (1.0 + t * t), 2.0 * t / (1.0 + t * t)
    if rng.random() < 0.5:  # the other half circle
        c, s = -c, -s
    return c, s


def _window(cx: float, cy: float, reach: float, size: int) -> _Window:
    """Rows and columns of a box holding every pixel centre within ``reach`` of ``(cx, cy)``."""
    rows = slice(max(0, math.floor(cy - reach) - 1), min(size, math.ceil(cy + reach) + 1))
    cols = slice(max(0, math.floor(cx - reach) - 1), min(size, math.ceil(cx + reach) + 1))
    return rows, cols


def _paint(img: _F, weight: _B | _F, colour: _F) -> None:
    """Blend ``colour`` (3,) into ``img`` (3, h, w) in place with per-pixel ``weight`` (h, w).

    A boolean ``weight`` paints the colour opaquely where it is True.
    """
    if weight.dtype == np.bool_:
        img[:, weight] = colour[:, None]
    else:
        img += weight * (colour[:, None, None] - img)


def _colour(rng: np.random.Generator) -> _F:
    return rng.random(3, dtype=np.float32)


def _shape_mask(label: int, u: _F, v: _F, rng: np.random.Generator) -> _B:
    """Pixels of class ``label`` in object-local unit coordinates (radius about 1).

    Args:
        label: index into :data:`CLASSES`.
        u: local x of every pixel, shape (h, w).
        v: local y of every pixel, shape (h, w).
        rng: source of per-shape variation (ring thickness).

    Returns:
        Boolean mask, shape (h, w).
    """
    name = CLASSES[label]
    if name == "circle":
        return u * u + v * v <= 0.9 * 0.9
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.75
    if name == "triangle":
        return _in_polygon(u, v, _TRIANGLE)
    if name == "star":
        return _in_polygon(u, v, _STAR)
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        arm, half_width = 0.95, 0.28
        return ((au <= half_width) & (av <= arm)) | ((au <= arm) & (av <= half_width))
    if name == "ring":
        inner = rng.uniform(0.5, 0.68)
        d2 = u * u + v * v
        return (d2 <= 1.0) & (d2 >= inner * inner)
    raise AssertionError(f"unhandled class {name!r}")  # pragma: no cover


def _smooth_noise(rng: np.random.Generator, size: int) -> _F:
    """A coarse grid of random colours, bilinearly upsampled to shape (3, size, size)."""
    g = int(rng.integers(2, 6))
    grid = rng.random((3, g, g), dtype=np.float32)
    t = (np.arange(size, dtype=np.float32) + 0.5) * ((g - 1) / size)
    i0 = np.minimum(np.floor(t).astype(np.intp), g - 2)
    f = t - i0
    rows = grid[:, i0] * (1.0 - f)[:, None] + grid[:, i0 + 1] * f[:, None]  # (3, size, g)
    return rows[:, :, i0] * (1.0 - f) + rows[:, :, i0 + 1] * f


def _background(rng: np.random.Generator, xx: _F, yy: _F) -> _F:
    """A cluttered background, shape (3, S, S), values in [0, 1]."""
    size = xx.shape[0]
    img = _smooth_noise(rng, size)
    if rng.random() < 0.7:  # soft stripes: random direction, period and colour
        c, s = _unit_direction(rng)
        period = rng.uniform(0.06, 0.22) * size
        phase = (xx * c + yy * s) * (1.0 / period) + rng.random()
        tri = np.abs(2.0 * (phase - np.floor(phase)) - 1.0)  # triangle wave in [0, 1]
        _paint(img, tri * rng.uniform(0.15, 0.45), _colour(rng))
    for _ in range(int(rng.integers(1, 5))):  # soft blotches
        cx, cy = rng.uniform(0.0, size), rng.uniform(0.0, size)
        radius = rng.uniform(0.08, 0.3) * size
        strength = rng.uniform(0.4, 0.9)
        win = _window(cx, cy, radius, size)
        d2 = ((xx[win] - cx) ** 2 + (yy[win] - cy) ** 2) * (1.0 / (radius * radius))
        falloff = np.maximum(1.0 - d2, 0.0)
        _paint(img[:, win[0], win[1]], falloff * falloff * strength, _colour(rng))
    return img


def _distractor(rng: np.random.Generator, xx: _F, yy: _F) -> tuple[_Window, _B]:
    """One clutter item that is none of :data:`CLASSES`: a thin segment, a dot or a thin arc.

    Returns:
        ``(window, mask)``: a box of the image and the item's pixels inside it, shape (h, w).
    """
    size = xx.shape[0]
    kind = int(rng.integers(0, 3))
    cx, cy = rng.uniform(0.05, 0.95) * size, rng.uniform(0.05, 0.95) * size
    if kind == 0:  # thin line segment from (cx, cy)
        c, s = _unit_direction(rng)
        length = rng.uniform(0.08, 0.22) * size
        half_width = rng.uniform(0.6, 1.4)
        win = _window(cx, cy, length + half_width, size)
        x, y = xx[win] - cx, yy[win] - cy
        t = np.clip(x * c + y * s, 0.0, length)
        return win, (x - t * c) ** 2 + (y - t * s) ** 2 <= half_width * half_width
    if kind == 1:  # small dot
        radius = rng.uniform(1.2, max(1.3, 0.03 * size))
        win = _window(cx, cy, radius, size)
        return win, (xx[win] - cx) ** 2 + (yy[win] - cy) ** 2 <= radius * radius
    # thin arc: at most half of a circle
    radius = rng.uniform(0.04, 0.1) * size
    half_width = rng.uniform(0.6, 1.2)
    c, s = _unit_direction(rng)
    cut = rng.uniform(0.0, 0.5) * radius
    win = _window(cx, cy, radius + half_width, size)
    x, y = xx[win] - cx, yy[win] - cy
    return win, (np.abs(np.sqrt(x * x + y * y) - radius) <= half_width) & (x * c + y * s >= cut)


def _check_int(name: str, value: int, minimum: int) -> int:
    try:
        as_int = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if isinstance(value, bool) or as_int < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return as_int


def make_dataset(
    n: int, seed: int = 0, size: int = 96
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generate ``n`` synthetic images, one labelled shape each, with ground-truth masks.

    Each image has a textured, cluttered background, 1-3 distractors that are not any class,
    and one object of class ``CLASSES[label]`` (radius 14-24% of the image side, fully inside
    the frame) drawn on top of them in a colour that contrasts with what it covers, plus a
    little pixel noise. Labels are balanced (the counts of any two classes differ by at most
    one) and shuffled.

    Args:
        n: number of images, >= 1.
        seed: seed of the per-call random generator; the global RNG state is never touched.
        size: image height and width in pixels, >= 32.

    Returns:
        ``(images, labels, masks)``: images float32 (N, 3, size, size) in [0, 1]; labels int64
        (N,) indexing :data:`CLASSES`; masks bool (N, size, size), True on the labelled
        object's pixels.

    Raises:
        ValueError: if ``n < 1`` or ``size < 32`` (or either is not an integer).
    """
    n = _check_int("n", n, 1)
    size = _check_int("size", size, 32)
    rng = np.random.Generator(np.random.PCG64(operator.index(seed)))

    coords = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    yy, xx = np.meshgrid(coords, coords, indexing="ij")

    labels = rng.permutation(np.arange(n, dtype=np.int64) % len(CLASSES))
    images = np.empty((n, 3, size, size), dtype=np.float32)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        img = _background(rng, xx, yy)
        for _ in range(int(rng.integers(1, 4))):
            (rows, cols), item = _distractor(rng, xx, yy)
            _paint(img[:, rows, cols], item, _colour(rng))

        radius = rng.uniform(0.14, 0.24) * size
        margin = _REACH * radius + 1.5
        cx, cy = rng.uniform(margin, size - margin), rng.uniform(margin, size - margin)
        c, s = _unit_direction(rng)
        rows, cols = _window(cx, cy, _REACH * radius, size)
        dx, dy = (xx[rows, cols] - cx) * (1.0 / radius), (yy[rows, cols] - cy) * (1.0 / radius)
        shape = _shape_mask(int(labels[i]), dx * c + dy * s, dy * c - dx * s, rng)
        masks[i, rows, cols] = shape

        # The candidate colour farthest from the background it covers, so the object stands out.
        region = img[:, rows, cols]
        under = region[:, shape].mean(axis=1)
        candidates = rng.random((6, 3), dtype=np.float32)
        _paint(region, shape, candidates[int(np.argmax(((candidates - under) ** 2).sum(axis=1)))])

        noise = rng.random((size, size), dtype=np.float32)
        img += (noise - 0.5) * rng.uniform(0.0, 0.1)
        np.clip(img, 0.0, 1.0, out=images[i])

    return torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(masks)
