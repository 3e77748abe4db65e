"""Synthetic "find the shape" images for the bundled demo model.

Every image holds exactly one object from :data:`CLASSES` at a random position, size, rotation
and colour, drawn over a cluttered background (smooth colour noise, stripes, soft blotches) and
1-3 distractors that belong to no class (thin line segments, small dots, thin arcs). The label
says which shape the object is and the mask says which pixels it covers, so a class activation
map can be scored against ground truth.

Determinism: every random number comes from one ``numpy.random.Generator(PCG64(seed))`` made per
call, and the pixel arithmetic uses only ``+ - * /``, ``sqrt``, ``floor`` and comparisons on
float64 (no ``sin``/``exp``/BLAS, whose last bits may vary between machines), so the same
``(n, seed, size)`` gives bit-identical tensors everywhere.
"""

from __future__ import annotations

import operator
import math

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = ["CLASSES", "make_dataset"]

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
"""Names of the object classes; a label ``k`` means ``CLASSES[k]``."""

_F = NDArray[np.float64]
_B = NDArray[np.bool_]

_SQRT3 = math.sqrt(3.0)
_SQRT5 = math.sqrt(5.0)
# cos/sin of 18 and 54 degrees from square roots only (exact up to correct rounding everywhere).
_COS18 = math.sqrt(10.0 + 2.0 * _SQRT5) / 4.0
_SIN18 = (_SQRT5 - 1.0) / 4.0
_COS54 = math.sqrt(10.0 - 2.0 * _SQRT5) / 4.0
_SIN54 = (_SQRT5 + 1.0) / 4.0


def _star_polygon(outer: float, inner: float) -> _F:
    """Vertices (10, 2) of a five-pointed star pointing up (image y grows downwards)."""
    # Outer points at -90, -18, 54, 126, 198 degrees; inner points halfway between them.
    outer_dirs = [(0.0, -1.0), (_COS18, -_SIN18), (_COS54, _SIN54), (-_COS54, _SIN54), (-_COS18, -_SIN18)]
    inner_dirs = [(_COS54, -_SIN54), (_COS18, _SIN18), (0.0, 1.0), (-_COS18, _SIN18), (-_COS54, -_SIN54)]
    verts: list[tuple[float, float]] = []
    for (ox, oy), (ix, iy) in zip(outer_dirs, inner_dirs, strict=True):
        verts.append((outer * ox, outer * oy))
        verts.append((inner * ix, inner * iy))
    return np.asarray(verts, dtype=np.float64)


_TRIANGLE = np.asarray([(0.0, -1.1), (1.1 * _SQRT3 / 2.0, 0.55), (-1.1 * _SQRT3 / 2.0, 0.55)])
_STAR = _star_polygon(1.08, 0.45)


def _in_polygon(u: _F, v: _F, poly: _F) -> _B:
    """Even-odd point-in-polygon test.

    Args:
        u: x coordinates of the query points, any shape.
        v: y coordinates, same shape as ``u``.
        poly: polygon vertices, shape (K, 2).

    Returns:
        Boolean array shaped like ``u``, True inside the polygon.
    """
    inside = np.zeros(u.shape, dtype=bool)
    k = len(poly)
    for i in range(k):
        x0, y0 = poly[i]
        x1, y1 = poly[(i + 1) % k]
        if y0 == y1:
            continue
        crosses = (v < y0) != (v < y1)
        x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (u < x_at)
    return inside


def _unit_direction(rng: np.random.Generator) -> tuple[float, float]:
    """A random unit vector (cos, sin), built without trigonometric functions."""
    t = rng.uniform(-1.0, 1.0)  # tan(theta / 2), theta in [-90, 90] degrees
    c, s = (1.0 - t * t) / (1.0 + t * t), 2.0 * t / (1.0 + t * t)
    if rng.random() < 0.5:  # cover the other half circle too
        c, s = -c, -s
    return c, s


def _shape_mask(label: int, u: _F, v: _F, rng: np.random.Generator) -> _B:
    """Pixels of class ``label`` in object-local unit coordinates (radius about 1).

    Args:
        label: index into :data:`CLASSES`.
        u: local x of every pixel, shape (H, W).
        v: local y of every pixel, shape (H, W).
        rng: source of per-shape variation (ring thickness).

    Returns:
        Boolean mask, shape (H, W).
    """
    name = CLASSES[label]
    d2 = u * u + v * v
    if name == "circle":
        return d2 <= 0.9 * 0.9
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
        return (d2 <= 1.0) & (d2 >= inner * inner)
    raise AssertionError(f"unhandled class {name!r}")  # pragma: no cover


def _smooth_noise(rng: np.random.Generator, pos: _F) -> _F:
    """Bilinearly upsampled coarse grid of random colours.

    Args:
        rng: random source.
        pos: pixel-centre coordinates in [0, 1], shape (S,).

    Returns:
        Colour field, shape (3, S, S).
    """
    g = int(rng.integers(2, 6))
    grid = rng.random((3, g, g))
    t = pos * (g - 1)
    i0 = np.minimum(np.floor(t).astype(np.intp), g - 2)
    f = t - i0
    rows = grid[:, i0] * (1.0 - f)[:, None] + grid[:, i0 + 1] * f[:, None]  # (3, S, g)
    return rows[:, :, i0] * (1.0 - f) + rows[:, :, i0 + 1] * f


def _paint(img: _F, weight: _B | _F, colour: _F) -> None:
    """Blend ``colour`` (3,) into ``img`` (3, S, S) in place with per-pixel ``weight`` (S, S).

    A boolean ``weight`` paints the colour opaquely where it is True.
    """
    if weight.dtype == np.bool_:
        img[:, weight] = colour[:, None]
        return
    for channel, value in zip(img, colour, strict=True):
        channel += weight * (value - channel)


def _background(rng: np.random.Generator, xx: _F, yy: _F, pos: _F) -> _F:
    """A cluttered background, shape (3, S, S), values in [0, 1]."""
    size = xx.shape[0]
    img = _smooth_noise(rng, pos)
    if rng.random() < 0.7:  # stripes: soft or hard, random direction and period
        c, s = _unit_direction(rng)
        period = rng.uniform(0.06, 0.22) * size
        phase = (xx * c + yy * s) / period + rng.random()
        tri = np.abs(2.0 * (phase - np.floor(phase)) - 1.0)  # triangle wave in [0, 1]
        weight = tri if rng.random() < 0.5 else (tri > 0.5).astype(np.float64)
        _paint(img, weight * rng.uniform(0.25, 0.7), rng.random(3))
    for _ in range(int(rng.integers(1, 5))):  # soft blotches
        cx, cy = rng.random(2) * size
        radius = rng.uniform(0.08, 0.3) * size
        d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (radius * radius)
        falloff = np.clip(1.0 - d2, 0.0, 1.0)
        _paint(img, falloff * falloff * rng.uniform(0.4, 0.9), rng.random(3))
    return img


def _distractor(rng: np.random.Generator, xx: _F, yy: _F) -> _B:
    """Pixels of one clutter item that is none of :data:`CLASSES`: a segment, dot or thin arc."""
    size = xx.shape[0]
    kind = int(rng.integers(0, 3))
    cx, cy = rng.uniform(0.05, 0.95, 2) * size
    if kind == 0:  # thin line segment
        c, s = _unit_direction(rng)
        length = rng.uniform(0.08, 0.22) * size
        half_width = rng.uniform(0.6, 1.4)
        t = np.clip((xx - cx) * c + (yy - cy) * s, 0.0, length)
        return (xx - cx - t * c) ** 2 + (yy - cy - t * s) ** 2 <= half_width * half_width
    if kind == 1:  # small dot
        radius = rng.uniform(1.2, max(1.3, 0.03 * size))
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius * radius
    # thin arc: at most half of a circle
    radius = rng.uniform(0.04, 0.1) * size
    half_width = rng.uniform(0.6, 1.2)
    c, s = _unit_direction(rng)
    d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    side = (xx - cx) * c + (yy - cy) * s >= rng.uniform(0.0, 0.5) * radius
    return (np.abs(d - radius) <= half_width) & side


def _check_int(name: str, value: int, minimum: int) -> int:
    try:
        as_int = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if isinstance(value, bool) or as_int < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return as_int


def make_dataset(n: int, seed: int = 0, size: int = 96) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generate ``n`` synthetic images, one labelled shape each, with ground-truth masks.

    Each image has a textured, cluttered background, 1-3 distractors that are not any class,
    and one object of class ``CLASSES[label]`` drawn on top of them. Labels are balanced (the
    counts of any two classes differ by at most one) and shuffled.

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
    seed = operator.index(seed)
    rng = np.random.Generator(np.random.PCG64(seed))

    pos = (np.arange(size, dtype=np.float64) + 0.5) / size
    coords = np.arange(size, dtype=np.float64) + 0.5
    yy, xx = np.meshgrid(coords, coords, indexing="ij")

    labels = rng.permutation(np.arange(n) % len(CLASSES))
    images = np.empty((n, 3, size, size), dtype=np.float32)
    masks = np.empty((n, size, size), dtype=bool)
    for i in range(n):
        img = _background(rng, xx, yy, pos)
        for _ in range(int(rng.integers(1, 4))):
            _paint(img, _distractor(rng, xx, yy), rng.random(3))

        radius = rng.uniform(0.12, 0.22) * size
        margin = 1.15 * radius + 1.0  # every shape fits in 1.1 radii of its centre
        cx, cy = rng.uniform(margin, size - margin, 2)
        c, s = _unit_direction(rng)
        dx, dy = (xx - cx) / radius, (yy - cy) / radius
        u, v = dx * c + dy * s, dy * c - dx * s
        mask = _shape_mask(int(labels[i]), u, v, rng)

        # Pick the candidate colour farthest from the background it covers, so it stands out.
        under = img[:, mask].mean(axis=1)
        candidates = rng.random((6, 3))
        dist = ((candidates - under) ** 2).sum(axis=1)
        _paint(img, mask, candidates[int(np.argmax(dist))])

        img += rng.uniform(-1.0, 1.0, img.shape) * rng.uniform(0.0, 0.05)
        np.clip(img, 0.0, 1.0, out=img)
        images[i] = img
        masks[i] = mask

    return (
        torch.from_numpy(images),
        torch.from_numpy(labels.astype(np.int64)),
        torch.from_numpy(masks),
    )
