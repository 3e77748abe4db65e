r"""The analysis of an audit: a pure function of the results table, re-runnable without the model.

:func:`analyze` reads the rows (a :class:`pyarrow.Table`, or an audit's folder with
:func:`analyze_results`) and returns the summary that ``summary.json`` holds: per class and method the
count, accuracy, mean map, statistics, the groups of maps that follow the same strategy, and the
findings. It is a short pipeline of named steps, each a pure function tested on its own:

1. :func:`downsample`: each map averaged down to a ``grid x grid`` vector of unit length
   (SpRAy, Lapuschkin et al., "Unmasking Clever Hans predictors", Nat. Commun. 2019).
2. :func:`affinity`: a symmetric k-nearest-neighbour graph with self-tuning Gaussian weights
   (Zelnik-Manor & Perona, NIPS 2004).
3. :func:`spectral_embedding`: the eigenvectors of the normalised graph Laplacian with the smallest
   eigenvalues; the number of groups is the position of the largest eigengap (von Luxburg 2007).
4. :func:`kmeans`: the groups, on the row-normalised embedding (Ng, Jordan & Weiss, NIPS 2001).
5. :func:`group_statistics`: per group: size, mean map, hotspot, how often the maps follow the content.
6. :func:`findings`: the classes whose maps show a shortcut, with the numbers that show it.

How a shortcut is told from honest behaviour. A map *follows the content* of its image when its peak is
on the object (pointing game hit, Zhang et al. 2016) where a mask or box is given, and otherwise when it
lies within :data:`FOLLOW_RADIUS` of the image's own most conspicuous region
(:func:`camlens.audit.stats.content_peak`, which needs no model). Then:

* **fixed-position cue** (``fixed_position``): at least :data:`CUE_SHARE` of a class's maps peak within
  :data:`HOTSPOT_RADIUS` of one place (the hotspot) *without* following their image's content, and the
  maps gather at the hotspot at least :data:`CONTENT_MARGIN` more often than the images' content (or
  objects) does. A class whose objects simply sit in one place is not flagged: there the maps gather
  because the content does, and each map follows its image.
* **focus outside the object** (``off_object``, masks or boxes only): at least :data:`OFF_SHARE` of a
  class's maps miss the object (pointing game with the 15 px at 224 px tolerance).
* **a class split into distinct strategies** (``split``): the spectral groups of a class include a
  group of at least :data:`SPLIT_MIN_SHARE` of its maps (and :data:`MIN_IMAGES`) in which at least
  :data:`SPLIT_IN_GROUP` show a fixed-position cue or miss the object, while at most
  :data:`SPLIT_REST` of the class's other maps do and at least :data:`SPLIT_IN_GROUP` of them follow
  their content (two strategies, not one that is off everywhere), and the class as a whole was not
  flagged for that.
  Groups that only differ in *where* the objects are (left, right) are not findings: their maps follow
  the content.

Limits: without masks or boxes, "where the content is" comes from an image saliency heuristic; it
finds the object on the demo images but can miss on photos with several objects or large ones. A cue
that sits exactly where a class's objects usually are (a watermark in the centre of centred objects)
cannot be told from the objects by where the maps peak; give masks or boxes for those.

Classes with fewer than :data:`MIN_IMAGES` maps get no findings. Every finding has ``class``, ``kind``,
``share`` (of the class's maps), ``evidence`` (numbers) and ``examples`` (paths).

Scale: each class and method keeps a sample of at most ``max_per_class`` rows for the tests and the
clustering (the rows with the smallest :func:`~camlens.audit.store.path_key`, so the sample, and the
summary, do not depend on the order of the rows); counts, accuracy, mean maps and histograms use every
row. Memory is bounded by the number of classes times ``max_per_class``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "CONTENT_MARGIN",
    "CUE_SHARE",
    "FOLLOW_RADIUS",
    "HOTSPOT_RADIUS",
    "MIN_IMAGES",
    "OFF_SHARE",
    "SPLIT_IN_GROUP",
    "SPLIT_MIN_SHARE",
    "SPLIT_REST",
    "affinity",
    "analyze",
    "analyze_results",
    "downsample",
    "findings",
    "follows_content",
    "group_statistics",
    "hotspot",
    "kmeans",
    "spectral_embedding",
]

#: Radius of a hotspot, as a fraction of the image side; at least one map cell (``1.01 / side``) so
#: that neighbouring cells of a coarse map count as the same place. 0.12 is 27 px at 224 px.
HOTSPOT_RADIUS = 0.12
#: A map peak within this distance of the image's most conspicuous region follows the content. The
#: region finder lands within 0.2 of the object's centre on 99% of the demo images, and objects reach
#: up to a quarter of the side from their centre.
FOLLOW_RADIUS = 0.25
#: Share of a class's maps that must show the cue for a ``fixed_position`` finding: the majority.
CUE_SHARE = 0.5
#: How much more often the maps than the content must gather at the hotspot (0.3 = 30 points).
CONTENT_MARGIN = 0.3
#: Share of a class's maps that must miss the object for an ``off_object`` finding. Grad-CAM on the
#: demo model misses 3% of the objects, honest ImageNet models 10-20% (Zhang et al. 2016): half is far
#: from either.
OFF_SHARE = 0.5
#: Smallest group, as a share of the class, that can make a ``split`` finding.
SPLIT_MIN_SHARE = 0.1
#: Share of a group's maps that must show the strategy for a ``split`` finding.
SPLIT_IN_GROUP = 0.6
#: Largest share of the class's other maps that may show it (else it is no split).
SPLIT_REST = 0.2
#: Fewest maps of a class (or group) that can make a finding.
MIN_IMAGES = 5
#: Side of the grid maps are averaged down to for clustering.
GRID = 8
#: Most groups per class.
MAX_GROUPS = 6
#: Neighbours in the affinity graph.
NEIGHBOURS = 10
#: Example paths per finding and group.
EXAMPLES = 6
_BINS = 20


# --------------------------------------------------------------------------- 1. downsample


def downsample(maps: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Average ``(N, h, w)`` maps down to ``(N, g*g)`` vectors of unit length (``g = min(grid, h, w)``).

    All-zero maps stay zero. The area average is exact for any ``h``, ``w`` (adaptive average pooling).

    Example:
        >>> m = np.zeros((1, 4, 4)); m[0, :2, :2] = 1.0
        >>> downsample(m, 2).round(3).tolist()
        [[1.0, 0.0, 0.0, 0.0]]
    """
    import torch

    a = np.asarray(maps, dtype=np.float64)
    if a.ndim != 3:
        raise ValueError(f"maps must be (N, h, w), got shape {a.shape}")
    n, h, w = a.shape
    gh, gw = min(grid, h), min(grid, w)
    t = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(a)[:, None], (gh, gw))
    v = t.reshape(n, -1).numpy()
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)


# --------------------------------------------------------------------------- 2. affinity


def affinity(x: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    r"""A symmetric k-nearest-neighbour affinity matrix with self-tuning Gaussian weights.

    :math:`A_{ij} = \exp(-d_{ij}^2 / (\sigma_i \sigma_j))` where :math:`\sigma_i` is the distance from
    :math:`x_i` to its ``min(7, N-1)``-th neighbour, kept where ``j`` is among the ``k`` nearest
    neighbours of ``i`` or ``i`` among those of ``j``; the diagonal is zero.

    Args:
        x: ``(N, D)`` points.
        k: neighbours per point.

    Returns:
        ``(N, N)`` symmetric, non-negative, zero diagonal.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        return np.zeros((n, n))
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    np.fill_diagonal(d2, 0.0)
    order = np.argsort(d2, axis=1, kind="stable")
    k = min(k, n - 1)
    ks = min(7, n - 1)
    sigma = np.sqrt(d2[np.arange(n), order[:, ks]])
    sigma = np.maximum(sigma, 1e-6)
    w = np.exp(-d2 / (sigma[:, None] * sigma[None, :]))
    near = np.zeros((n, n), dtype=bool)
    rows = np.repeat(np.arange(n), k)
    near[rows, order[:, 1 : k + 1].reshape(-1)] = True
    near |= near.T
    a = np.where(near, w, 0.0)
    np.fill_diagonal(a, 0.0)
    return a


# --------------------------------------------------------------------------- 3. spectral embedding


def spectral_embedding(
    a: np.ndarray, max_groups: int = MAX_GROUPS
) -> tuple[np.ndarray, np.ndarray, int]:
    r"""Embed a graph with the normalised Laplacian and choose the number of groups by the eigengap.

    :math:`L = I - D^{-1/2} A D^{-1/2}`; its ``max_groups + 1`` smallest eigenvalues
    :math:`\lambda_0 \le \lambda_1 \le \dots` are computed, and the number of groups is the ``k`` in
    ``1..max_groups`` with the largest gap :math:`\lambda_k - \lambda_{k-1}`. The embedding is the
    ``k`` first eigenvectors, each row scaled to unit length.

    Args:
        a: ``(N, N)`` symmetric affinity.
        max_groups: the most groups considered.

    Returns:
        ``(embedding (N, k), eigenvalues (up to max_groups + 1,), k)``.

    Example:
        >>> a = np.kron(np.eye(2), np.ones((3, 3))) - np.eye(6)   # two separate triangles
        >>> _, lam, k = spectral_embedding(a)
        >>> k, lam[:2].round(6).tolist()
        (2, [0.0, 0.0])
    """
    a = np.asarray(a, dtype=np.float64)
    n = a.shape[0]
    if n == 0:
        return np.zeros((0, 1)), np.zeros(0), 1
    if n < 3:
        return np.ones((n, 1)), np.zeros(1), 1
    deg = a.sum(1)
    inv = np.divide(1.0, np.sqrt(deg), out=np.zeros_like(deg), where=deg > 0)
    lap = np.eye(n) - inv[:, None] * a * inv[None, :]
    lam, vec = np.linalg.eigh((lap + lap.T) / 2)
    m = min(max_groups + 1, n)
    lam, vec = np.clip(lam[:m], 0.0, 2.0), vec[:, :m]
    gaps = np.diff(lam)
    k = int(np.argmax(gaps[:max_groups])) + 1 if len(gaps) else 1
    emb = vec[:, :k]
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    emb = np.divide(emb, norm, out=np.zeros_like(emb), where=norm > 0)
    return emb, lam, k


# --------------------------------------------------------------------------- 4. clusters


def kmeans(x: np.ndarray, k: int, seed: int = 0, restarts: int = 8, iters: int = 100) -> np.ndarray:
    """Deterministic k-means (k-means++ starts, the best of ``restarts`` by inertia).

    Groups are numbered by size, largest first (ties: the group of the earlier point first).

    Returns:
        ``(N,)`` int group of each point.

    Example:
        >>> pts = np.array([[0.0], [0.1], [5.0], [5.2], [5.1]])
        >>> kmeans(pts, 2).tolist()
        [1, 1, 0, 0, 0]
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if k <= 1 or n <= k:
        return np.zeros(n, dtype=np.int64) if k <= 1 else np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    best, best_inertia = np.zeros(n, dtype=np.int64), math.inf
    for _ in range(restarts):
        centres = [x[rng.integers(n)]]
        for _ in range(1, k):
            d = np.min([((x - c) ** 2).sum(1) for c in centres], axis=0)
            total = d.sum()
            centres.append(x[rng.choice(n, p=d / total)] if total > 0 else x[rng.integers(n)])
        c = np.array(centres)
        labels = np.zeros(n, dtype=np.int64)
        for it in range(iters):
            d = ((x[:, None, :] - c[None]) ** 2).sum(2)
            new = d.argmin(1)
            if it > 0 and np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                if (labels == j).any():
                    c[j] = x[labels == j].mean(0)
        inertia = float(((x - c[labels]) ** 2).sum())
        if inertia < best_inertia - 1e-12:
            best, best_inertia = labels.copy(), inertia
    sizes = np.bincount(best, minlength=k)
    first = np.array([np.flatnonzero(best == j)[0] if sizes[j] else n for j in range(k)])
    order = sorted(range(k), key=lambda j: (-sizes[j], first[j]))
    remap = np.empty(k, dtype=np.int64)
    remap[order] = np.arange(k)
    return remap[best]


# --------------------------------------------------------------------------- 5. statistics


def hotspot(points: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """The place where most points gather: the point with the most others within ``radius``.

    Args:
        points: ``(N, 2)`` positions ``(y, x)`` (rows with ``NaN`` never count).
        radius: the neighbourhood's radius.

    Returns:
        ``(centre (2,), members (N,) bool)``; ``centre`` is ``NaN`` when no point is valid.

    Example:
        >>> c, m = hotspot(np.array([[0.1, 0.1], [0.12, 0.1], [0.8, 0.5]]), 0.1)
        >>> c.tolist(), m.tolist()
        ([0.1, 0.1], [True, True, False])
    """
    p = np.asarray(points, dtype=np.float64)
    ok = np.isfinite(p).all(1)
    if not ok.any():
        return np.full(2, np.nan), np.zeros(len(p), dtype=bool)
    q = p[ok]
    d = np.sqrt(((q[:, None, :] - q[None]) ** 2).sum(2))
    counts = (d <= radius + 1e-9).sum(1)
    centre = q[int(np.argmax(counts))]
    members = np.zeros(len(p), dtype=bool)
    members[ok] = np.sqrt(((q - centre) ** 2).sum(1)) <= radius + 1e-9
    return centre, members


def follows_content(
    peaks: np.ndarray, content: np.ndarray, hit: np.ndarray, radius: float = FOLLOW_RADIUS
) -> np.ndarray:
    """Whether each map follows its image: on the object where known (``hit`` not ``NaN``), else
    within ``radius`` of the image's most conspicuous region.

    Example:
        >>> follows_content(np.array([[0.1, 0.1], [0.5, 0.5]]), np.array([[0.6, 0.6], [0.55, 0.5]]),
        ...                 np.array([np.nan, np.nan])).tolist()
        [False, True]
    """
    peaks, content, hit = np.asarray(peaks), np.asarray(content), np.asarray(hit, dtype=np.float64)
    near = np.sqrt(((peaks - content) ** 2).sum(1)) <= radius
    return np.where(np.isfinite(hit), hit >= 0.5, near)


@dataclass
class _Rows:
    """The sampled rows of one class and method, as arrays."""

    paths: list[str]
    maps: np.ndarray  # (N, h, w)
    peaks: np.ndarray  # (N, 2)
    content: np.ndarray  # (N, 2) the object's centroid where known, else the content peak
    hit: np.ndarray  # (N,) NaN without object
    energy_in: np.ndarray
    area: np.ndarray

    def subset(self, sel: np.ndarray) -> _Rows:
        return _Rows(
            [p for p, s in zip(self.paths, sel, strict=True) if s],
            self.maps[sel],
            self.peaks[sel],
            self.content[sel],
            self.hit[sel],
            self.energy_in[sel],
            self.area[sel],
        )

    def __len__(self) -> int:
        return len(self.paths)


def _radius(shape: Sequence[int]) -> float:
    return max(HOTSPOT_RADIUS, 1.01 / max(1, min(shape)))


def _mean_map(maps: np.ndarray) -> np.ndarray:
    peak = maps.reshape(len(maps), -1).max(1) if len(maps) else np.zeros(0)
    scaled = maps / np.where(peak > 0, peak, 1.0)[:, None, None]
    return scaled.mean(0) if len(maps) else np.zeros(maps.shape[1:])


def _cue(rows: _Rows, centre: np.ndarray | None = None) -> dict[str, Any]:
    """The fixed-position test on ``rows`` (at ``centre``, or at their own hotspot)."""
    r = _radius(rows.maps.shape[1:])
    if centre is None:
        centre, at = hotspot(rows.peaks, r)
    else:
        ok = np.isfinite(rows.peaks).all(1)
        at = np.zeros(len(rows), dtype=bool)
        at[ok] = np.sqrt(((rows.peaks[ok] - centre) ** 2).sum(1)) <= r + 1e-9
    follow = follows_content(rows.peaks, rows.content, rows.hit)
    cue = at & ~follow
    content_ok = np.isfinite(rows.content).all(1)
    content_at = np.zeros(len(rows), dtype=bool)
    content_at[content_ok] = (
        np.sqrt(((rows.content[content_ok] - centre) ** 2).sum(1)) <= FOLLOW_RADIUS
    )
    n = max(1, len(rows))
    return {
        "centre": centre,
        "radius": r,
        "at": at,
        "cue": cue,
        "peak_share": float(at.sum() / n),
        "cue_share": float(cue.sum() / n),
        "content_share": float(content_at.sum() / n),
        "follow_at_hotspot": float(follow[at].mean()) if at.any() else float("nan"),
    }


def _off(rows: _Rows) -> dict[str, Any]:
    has = np.isfinite(rows.hit)
    miss = has & (rows.hit < 0.5)
    n = int(has.sum())
    return {
        "n": n,
        "miss": miss,
        "off_share": float(miss.sum() / n) if n else float("nan"),
    }


def _f(v: Any, nd: int = 4) -> float | None:
    v = float(v)
    return round(v, nd) if math.isfinite(v) else None


def _pt(p: np.ndarray) -> list[float | None]:
    return [_f(p[0]), _f(p[1])]


def group_statistics(rows: _Rows, groups: np.ndarray) -> list[dict[str, Any]]:
    """Per group: size, share, mean map, hotspot and how its maps relate to the content.

    Args:
        rows: the class's sampled rows.
        groups: ``(N,)`` group of each row (from :func:`kmeans`).

    Returns:
        One dict per group, largest first: ``size``, ``share``, ``mean_map`` (the mean of the maps
        scaled to peak 1), ``hotspot`` ``[y, x]``, ``peak_share`` (maps at the hotspot), ``cue_share``
        (at the hotspot and not following the content), ``content_share``, ``hit`` (pointing game, or
        ``None``), ``off_share`` and ``examples``.
    """
    out = []
    n = max(1, len(rows))
    for g in range(int(groups.max()) + 1 if len(groups) else 0):
        sel = groups == g
        sub = rows.subset(sel)
        if not len(sub):
            continue
        cue = _cue(sub)
        off = _off(sub)
        out.append(
            {
                "group": g,
                "size": len(sub),
                "share": _f(len(sub) / n),
                "mean_map": np.round(_mean_map(sub.maps), 4).tolist(),
                "hotspot": _pt(cue["centre"]),
                "peak_share": _f(cue["peak_share"]),
                "cue_share": _f(cue["cue_share"]),
                "content_share": _f(cue["content_share"]),
                "hit": _f(np.nanmean(sub.hit)) if np.isfinite(sub.hit).any() else None,
                "off_share": _f(off["off_share"]),
                "examples": sub.paths[:EXAMPLES],
            }
        )
    return out


# --------------------------------------------------------------------------- 6. findings


def _examples(rows: _Rows, sel: np.ndarray) -> list[str]:
    return [p for p, s in zip(rows.paths, sel, strict=True) if s][:EXAMPLES]


def findings(
    rows: _Rows, groups: np.ndarray, name: str, index: int, method: str
) -> list[dict[str, Any]]:
    """The findings of one class and method (see the module docstring for the rules).

    Args:
        rows: the class's sampled rows (maps that are not empty).
        groups: ``(N,)`` spectral group of each row.
        name: the class's name.
        index: its index.
        method: the method that made the maps.

    Returns:
        Findings: dicts with ``class``, ``index``, ``method``, ``kind``, ``share``, ``evidence``,
        ``examples``, ``mean_map`` (the mean of the flagged maps, each scaled to peak 1) and ``why``
        (one sentence).
    """
    out: list[dict[str, Any]] = []
    n = len(rows)
    if n < MIN_IMAGES:
        return out
    head = {"class": name, "index": index, "method": method}
    cue = _cue(rows)
    cue_flag = (
        cue["cue_share"] >= CUE_SHARE and cue["peak_share"] - cue["content_share"] >= CONTENT_MARGIN
    )
    if cue_flag:
        cue_rows = rows.subset(cue["cue"])
        spread_maps = float(np.nanmean(np.sqrt(((cue_rows.peaks - cue["centre"]) ** 2).sum(1))))
        spread_content = float(
            np.nanmean(np.sqrt(((cue_rows.content - np.nanmean(cue_rows.content, 0)) ** 2).sum(1)))
        )
        y, x = cue["centre"]
        out.append(
            {
                **head,
                "kind": "fixed_position",
                "share": _f(cue["cue_share"]),
                "evidence": {
                    "images": n,
                    "hotspot": _pt(cue["centre"]),
                    "radius": _f(cue["radius"]),
                    "peak_share": _f(cue["peak_share"]),
                    "content_share": _f(cue["content_share"]),
                    "follow_at_hotspot": _f(cue["follow_at_hotspot"]),
                    "peak_spread": _f(spread_maps),
                    "content_spread": _f(spread_content),
                    "content_from": "masks" if np.isfinite(rows.hit).any() else "image saliency",
                },
                "examples": _examples(rows, cue["cue"]),
                "mean_map": np.round(_mean_map(rows.maps[cue["cue"]]), 4).tolist(),
                "why": (
                    f"{100 * cue['cue_share']:.0f}% of the {name} maps peak within "
                    f"{cue['radius']:.2f} of ({y:.2f}, {x:.2f}) while their images' content is "
                    f"elsewhere (it sits there in only {100 * cue['content_share']:.0f}% of the "
                    "images): the model reads something at a fixed place, not the object"
                ),
            }
        )
    off = _off(rows)
    off_flag = off["n"] >= MIN_IMAGES and off["off_share"] >= OFF_SHARE
    if off_flag:
        miss = off["miss"]
        has = np.isfinite(rows.hit)
        centre, at = hotspot(rows.peaks[miss], _radius(rows.maps.shape[1:]))
        dist = np.sqrt(((rows.peaks[miss] - rows.content[miss]) ** 2).sum(1))
        out.append(
            {
                **head,
                "kind": "off_object",
                "share": _f(off["off_share"]),
                "evidence": {
                    "images_with_object": off["n"],
                    "hit_rate": _f(np.mean(rows.hit[has])),
                    "energy_in": _f(np.nanmean(rows.energy_in[has])),
                    "object_area": _f(np.nanmean(rows.area[has])),
                    "miss_distance": _f(np.mean(dist)) if len(dist) else None,
                    "miss_hotspot": _pt(centre),
                    "miss_hotspot_share": _f(at.mean()) if len(at) else None,
                },
                "examples": _examples(rows, miss),
                "mean_map": np.round(_mean_map(rows.maps[miss]), 4).tolist(),
                "why": (
                    f"{100 * off['off_share']:.0f}% of the {name} maps peak off the object "
                    f"(pointing game); {100 * float(np.nanmean(rows.energy_in[has])):.0f}% of their "
                    f"energy lies on objects that cover {100 * float(np.nanmean(rows.area[has])):.0f}% "
                    "of the image"
                ),
            }
        )
    if len(groups) and int(groups.max()) >= 1:
        flagged = []
        for g in range(int(groups.max()) + 1):
            sel = groups == g
            size = int(sel.sum())
            if size < max(MIN_IMAGES, SPLIT_MIN_SHARE * n) or size == n:
                continue
            sub, rest = rows.subset(sel), rows.subset(~sel)
            gc = _cue(sub)
            rc = _cue(rest, gc["centre"])
            rest_follow = float(follows_content(rest.peaks, rest.content, rest.hit).mean())
            if (
                not cue_flag
                and gc["cue_share"] >= SPLIT_IN_GROUP
                and gc["peak_share"] - gc["content_share"] >= CONTENT_MARGIN
                and rc["cue_share"] <= SPLIT_REST
                and rest_follow >= SPLIT_IN_GROUP
            ):
                flagged.append((g, "fixed_position", sel, gc["cue_share"], rc["cue_share"], gc))
                continue
            go, ro = _off(sub), _off(rest)
            if (
                not off_flag
                and go["n"] >= MIN_IMAGES
                and go["off_share"] >= SPLIT_IN_GROUP
                and (ro["n"] == 0 or ro["off_share"] <= SPLIT_REST)
            ):
                flagged.append((g, "off_object", sel, go["off_share"], ro["off_share"], gc))
        if flagged:
            union = np.zeros(n, dtype=bool)
            for f in flagged:
                union |= f[2]
            desc: list[dict[str, Any]] = []
            for g, strategy, sel, in_share, rest_share, gc in flagged:
                desc.append(
                    {
                        "group": g,
                        "strategy": strategy,
                        "size": int(sel.sum()),
                        "share": _f(sel.sum() / n),
                        "in_group": _f(in_share),
                        "rest": _f(rest_share),
                        "hotspot": _pt(gc["centre"]),
                    }
                )
            first = desc[0]
            what = (
                f"peak at ({first['hotspot'][0]:.2f}, {first['hotspot'][1]:.2f}) away from the content"
                if first["strategy"] == "fixed_position"
                else "miss the object"
            )
            out.append(
                {
                    **head,
                    "kind": "split",
                    "share": _f(union.sum() / n),
                    "evidence": {"images": n, "groups": desc},
                    "examples": _examples(rows, union),
                    "mean_map": np.round(_mean_map(rows.maps[union]), 4).tolist(),
                    "why": (
                        f"the {name} maps fall into distinct strategies: a group of "
                        f"{100 * (first['share'] or 0):.0f}% whose maps {what} "
                        f"({100 * (first['in_group'] or 0):.0f}% of the group, "
                        f"{100 * (first['rest'] or 0):.0f}% of the other maps)"
                    ),
                }
            )
    return out


# --------------------------------------------------------------------------- accumulation


@dataclass
class _Acc:
    """Everything kept for one class and method while the rows stream past."""

    count: int = 0
    labelled: int = 0
    correct: int = 0
    errors: int = 0
    empty: int = 0
    shapes: dict[tuple[int, int], int] = field(default_factory=dict)
    map_sum: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    hist: dict[str, np.ndarray] = field(default_factory=dict)
    peak_hist: np.ndarray = field(default_factory=lambda: np.zeros((10, 10), dtype=np.int64))
    sample: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    layer: str = ""


_HIST_COLUMNS = ("entropy", "border", "energy_in", "hit")
_SAMPLE_COLUMNS = (
    "peak_y",
    "peak_x",
    "content_y",
    "content_x",
    "hit",
    "energy_in",
    "object_area",
    "object_y",
    "object_x",
)
_COLUMNS = [
    "path",
    "label",
    "pred",
    "method",
    "layer",
    "map",
    "map_shape",
    "error",
    "entropy",
    "border",
    *_SAMPLE_COLUMNS,
]


class _Analysis:
    def __init__(self, max_per_class: int) -> None:
        self.max_per_class = max_per_class
        self.acc: dict[tuple[str, int], _Acc] = {}
        # rows and failed rows per method: every image has one row per method, so the images are
        # counted without holding their paths
        self.method_rows: dict[str, int] = {}
        self.method_errors: dict[str, int] = {}
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        from camlens.audit.store import path_key

        cols = {c: table.column(c).to_pylist() for c in _COLUMNS if c != "map"}
        maps = table.column("map")
        self.rows += table.num_rows
        for i in range(table.num_rows):
            label, pred = int(cols["label"][i]), int(cols["pred"][i])
            method = str(cols["method"][i])
            path = str(cols["path"][i])
            self.method_rows[method] = self.method_rows.get(method, 0) + 1
            if cols["error"][i]:
                self.method_errors[method] = self.method_errors.get(method, 0) + 1
                acc = self.acc.setdefault((method, label), _Acc())
                acc.errors += 1
                continue
            cls = label if label >= 0 else pred
            acc = self.acc.setdefault((method, cls), _Acc())
            acc.layer = acc.layer or str(cols["layer"][i])
            acc.count += 1
            if label >= 0:
                acc.labelled += 1
                acc.correct += int(pred == label)
            shape = tuple(int(s) for s in cols["map_shape"][i])
            if len(shape) != 2 or 0 in shape:
                continue
            m = np.asarray(maps[i].values.to_numpy(zero_copy_only=False), dtype=np.float64)
            m = m.reshape(shape)
            peak = m.max()
            if not peak > 0:
                acc.empty += 1
                continue
            sh = (shape[0], shape[1])
            acc.shapes[sh] = acc.shapes.get(sh, 0) + 1
            acc.map_sum[sh] = acc.map_sum.get(sh, np.zeros(sh)) + m / peak
            for c in _HIST_COLUMNS:
                v = cols[c][i]
                if v is not None and math.isfinite(v):
                    acc.sums[c] = acc.sums.get(c, 0.0) + v
                    acc.counts[c] = acc.counts.get(c, 0) + 1
                    h = acc.hist.setdefault(c, np.zeros(_BINS, dtype=np.int64))
                    h[min(_BINS - 1, max(0, int(v * _BINS)))] += 1
            py, px = cols["peak_y"][i], cols["peak_x"][i]
            acc.peak_hist[min(9, int(py * 10)), min(9, int(px * 10))] += 1
            rec = {c: cols[c][i] for c in _SAMPLE_COLUMNS}
            rec["path"], rec["map"] = path, m.astype(np.float32)
            acc.sample.append((path_key(path), rec))
            if len(acc.sample) > 2 * self.max_per_class:
                acc.sample.sort(key=lambda t: t[0])
                del acc.sample[self.max_per_class :]

    def result(self, class_names: Sequence[str] | None) -> dict[str, Any]:
        methods = sorted({m for m, _ in self.acc})
        classes = sorted({c for _, c in self.acc if c >= 0})

        def cname(c: int) -> str:
            return (
                str(class_names[c]) if class_names and 0 <= c < len(class_names) else f"class {c}"
            )

        per_class = []
        all_findings: list[dict[str, Any]] = []
        for c in classes:
            entry: dict[str, Any] = {"class": cname(c), "index": c, "methods": {}, "findings": []}
            for m in methods:
                acc = self.acc.get((m, c))
                if acc is None:
                    continue
                entry.setdefault("count", acc.count)
                entry.setdefault("errors", acc.errors)
                entry.setdefault(
                    "accuracy", _f(acc.correct / acc.labelled) if acc.labelled else None
                )
                info, found = self._class_method(acc, cname(c), c, m)
                entry["methods"][m] = info
                entry["findings"].extend(found)
            entry.setdefault("count", 0)
            per_class.append(entry)
            all_findings.extend(entry["findings"])
        order = {"fixed_position": 0, "off_object": 1, "split": 2}
        all_findings.sort(key=lambda f: (-(f["share"] or 0), order[f["kind"]], f["index"]))
        return {
            "version": 1,
            "rows": self.rows,
            "images": max(self.method_rows.values(), default=0),
            "errors": max(self.method_errors.values(), default=0),
            "methods": methods,
            "classes": [{"index": c, "name": cname(c)} for c in classes],
            "per_class": per_class,
            "findings": all_findings,
            "thresholds": {
                "hotspot_radius": HOTSPOT_RADIUS,
                "follow_radius": FOLLOW_RADIUS,
                "cue_share": CUE_SHARE,
                "content_margin": CONTENT_MARGIN,
                "off_share": OFF_SHARE,
                "split_min_share": SPLIT_MIN_SHARE,
                "split_in_group": SPLIT_IN_GROUP,
                "split_rest": SPLIT_REST,
                "min_images": MIN_IMAGES,
                "max_per_class": self.max_per_class,
            },
        }

    def _class_method(
        self, acc: _Acc, name: str, index: int, method: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        info: dict[str, Any] = {
            "count": acc.count,
            "layer": acc.layer,
            "empty_maps": acc.empty,
            "statistics": {
                c: _f(acc.sums[c] / acc.counts[c]) for c in _HIST_COLUMNS if acc.counts.get(c)
            },
            "histograms": {c: h.tolist() for c, h in acc.hist.items()},
            "peak_histogram": acc.peak_hist.tolist(),
            "groups": [],
        }
        if not acc.shapes:
            info["map_shape"], info["mean_map"] = None, None
            return info, []
        shape = max(acc.shapes, key=lambda s: (acc.shapes[s], s))
        info["map_shape"] = list(shape)
        info["mean_map"] = np.round(acc.map_sum[shape] / acc.shapes[shape], 4).tolist()
        acc.sample.sort(key=lambda t: t[0])
        recs = [r for _, r in acc.sample[: self.max_per_class] if r["map"].shape == shape]
        if not recs:
            return info, []
        rows = _rows(recs)
        info["sampled"] = len(rows)
        if len(rows) >= 3:
            x = downsample(rows.maps)
            emb, lam, k = spectral_embedding(affinity(x), MAX_GROUPS)
            groups = kmeans(emb, k)
            info["eigenvalues"] = [_f(v) for v in lam]
        else:
            groups = np.zeros(len(rows), dtype=np.int64)
        info["groups"] = group_statistics(rows, groups)
        cue = _cue(rows)
        info["hotspot"] = {
            "at": _pt(cue["centre"]),
            "peak_share": _f(cue["peak_share"]),
            "cue_share": _f(cue["cue_share"]),
            "content_share": _f(cue["content_share"]),
        }
        return info, findings(rows, groups, name, index, method)


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _rows(recs: list[dict[str, Any]]) -> _Rows:
    def col(c: str) -> np.ndarray:
        return np.array([_nan(r[c]) for r in recs], dtype=np.float64)

    hit = col("hit")
    obj = np.stack([col("object_y"), col("object_x")], 1)
    content = np.stack([col("content_y"), col("content_x")], 1)
    # where an object is known, "where the content is" is the object's centroid
    content = np.where(np.isfinite(hit)[:, None], obj, content)
    return _Rows(
        [r["path"] for r in recs],
        np.stack([r["map"] for r in recs]).astype(np.float64),
        np.stack([col("peak_y"), col("peak_x")], 1),
        content,
        hit,
        col("energy_in"),
        col("object_area"),
    )


def analyze(
    table: pa.Table | Iterable[pa.Table],
    class_names: Sequence[str] | None = None,
    max_per_class: int = 1000,
) -> dict[str, Any]:
    """Summarise an audit's rows: per class and method the statistics, groups and findings.

    Args:
        table: the rows (:func:`camlens.audit.batch.schema`), or an iterable of tables (shards).
        class_names: class names by index (``"class i"`` where missing).
        max_per_class: the most rows per class and method used for the tests and the clustering.

    Returns:
        The summary (JSON-ready): ``rows``, ``images``, ``errors``, ``methods``, ``classes``,
        ``per_class`` (``class``, ``index``, ``count``, ``errors``, ``accuracy``, ``findings`` and per
        method ``mean_map``, ``map_shape``, ``statistics``, ``histograms``, ``groups``...), ``findings``
        (all classes, largest share first) and ``thresholds``.

    Raises:
        ValueError: a table without the audit's columns, or ``max_per_class < 10``.
    """
    import pyarrow as pa

    if max_per_class < 10:
        raise ValueError(f"max_per_class must be at least 10, not {max_per_class}")
    state = _Analysis(max_per_class)
    tables = [table] if isinstance(table, pa.Table) else table
    for t in tables:
        missing = [c for c in _COLUMNS if c not in t.column_names]
        if missing:
            raise ValueError(
                f"the table lacks the audit columns {', '.join(missing)}; pass rows of results.parquet"
            )
        for b in t.to_batches(max_chunksize=8192):
            state.add(pa.Table.from_batches([b]))
    return state.result(class_names)


def analyze_results(
    out: str | os.PathLike[str],
    class_names: Sequence[str] | None = None,
    max_per_class: int = 1000,
) -> dict[str, Any]:
    """:func:`analyze` on an audit's folder, one shard at a time (memory does not grow with the rows)."""
    from camlens.audit.store import ResultStore

    store = ResultStore(out)
    if not store.root.is_dir():
        raise FileNotFoundError(f"no audit results in {str(out)!r} (no results.parquet folder)")
    return analyze(store.iter_tables(_COLUMNS), class_names, max_per_class)
