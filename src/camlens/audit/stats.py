r"""Statistics of one map, and where an image's own content is: batched torch functions.

Coordinates are fractions of the image's height and width in ``[0, 1]``, with the centre of cell
``(i, j)`` of an ``h x w`` map at ``((i + 0.5) / h, (j + 0.5) / w)``, so that maps of different
resolutions and images of different sizes compare directly.

Example:
    >>> import torch
    >>> m = torch.zeros(1, 4, 4); m[0, 0, 3] = 1.0   # one hot cell in the top-right corner
    >>> s = map_statistics(m, (8, 8))
    >>> [round(float(s[k][0]), 3) for k in ("peak_y", "peak_x", "entropy")]
    [0.125, 0.875, 0.0]
    >>> round(float(map_statistics(torch.ones(1, 5, 5), (50, 50))["border"][0]), 3)   # 1 - 0.8 ** 2
    0.36
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BORDER", "CONTENT_GRID", "content_peak", "map_statistics", "object_statistics"]

#: Width of the border band, as a fraction of the image's side (a 10% frame covers 36% of the image).
BORDER = 0.1
#: Side of the grid on which an image's own salient content is found (see :func:`content_peak`).
CONTENT_GRID = 32


def _grid(n: int, device: torch.device) -> Tensor:
    return (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n


def map_statistics(raw: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
    r"""Where a map peaks, where its mass is, how spread it is and how much lies on the border.

    Args:
        raw: ``(B, h, w)`` non-negative maps at the layer's resolution.
        size: ``(H, W)`` of the input, on which the border band is measured.

    Returns:
        ``(B,)`` float32 tensors:

        * ``peak_y``, ``peak_x``: the centre of the maximal cell (the first in raster order).
        * ``centroid_y``, ``centroid_x``: the energy-weighted mean position.
        * ``entropy``: :math:`-\sum_i p_i \log p_i / \log(hw)` with :math:`p = m / \sum m`, in
          ``[0, 1]``: 0 for one hot cell, 1 for a uniform map.
        * ``border``: the share of the map's energy, upsampled bilinearly to ``size``, in the band of
          width :data:`BORDER` along the image's edges.
        * ``peak``: the maximum value (the map's scale, for reference).

        Every statistic is ``NaN`` for an all-zero map.
    """
    if raw.ndim != 3:
        raise ValueError(f"maps must be (B, h, w), got shape {tuple(raw.shape)}")
    b, h, w = raw.shape
    m = raw.detach().float().clamp(min=0)
    flat = m.reshape(b, -1)
    total = flat.sum(1)
    empty = ~(total > 0)
    idx = flat.argmax(1)
    ys, xs = _grid(h, m.device), _grid(w, m.device)
    p = flat / total.clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    pm = p.reshape(b, h, w)
    logs = torch.where(p > 0, p.log(), torch.zeros_like(p))
    entropy = (
        -(p * logs).sum(1) / math.log(h * w) + 0.0  # + 0.0 turns -0.0 into 0.0
        if h * w > 1
        else torch.zeros(b, device=m.device)
    )
    H, W = size
    up = F.interpolate(m[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    band = torch.zeros(H, W, dtype=torch.bool, device=m.device)
    bh, bw = max(1, round(BORDER * H)), max(1, round(BORDER * W))
    band[:bh], band[-bh:], band[:, :bw], band[:, -bw:] = True, True, True, True
    up_total = up.reshape(b, -1).sum(1).clamp(min=torch.finfo(torch.float32).tiny)
    out = {
        "peak_y": ys[idx // w],
        "peak_x": xs[idx % w],
        "centroid_y": (pm.sum(2) * ys).sum(1),
        "centroid_x": (pm.sum(1) * xs).sum(1),
        "entropy": entropy,
        "border": up[:, band].sum(1) / up_total,
        "peak": flat.amax(1),
    }
    nan = torch.tensor(float("nan"), device=m.device)
    return {k: torch.where(empty, nan, v).float() for k, v in out.items()}


@functools.lru_cache(maxsize=16)
def _blur_matrix(n: int, sigma: float) -> Tensor:
    """``(n, n)`` matrix of a 1-D Gaussian blur with replicated edges: ``blur(v) = M @ v``."""
    r = max(1, int(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-(t * t) / (2 * sigma * sigma))
    k = k / k.sum()
    m = torch.zeros(n, n, dtype=torch.float64)
    rows = torch.arange(n)
    for off, w in zip(t.long().tolist(), k.tolist(), strict=True):
        m.index_put_(
            (rows, (rows + off).clamp(0, n - 1)),
            torch.tensor(w, dtype=torch.float64),
            accumulate=True,
        )
    return m.float()


@functools.lru_cache(maxsize=16)
def _pool_matrix(n_out: int, n_in: int) -> Tensor:
    """``(n_out, n_in)`` matrix of adaptive average pooling along one axis."""
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        a, b = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, a:b] = 1.0 / (b - a)
    return m


def _blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(..., n, n)`` with replicated edges (two matrix products)."""
    m = _blur_matrix(x.shape[-1], float(sigma)).to(x.device)
    return m @ x @ m.T


def content_peak(views: Tensor, grid: int = CONTENT_GRID) -> Tensor:
    r"""Where an image's most conspicuous region is, without any model: ``(B, 2)`` as ``(y, x)``.

    A centre-surround colour contrast, the core of Itti, Koch & Niebur's saliency (PAMI 1998): the
    image is averaged down to ``grid x grid``, each pixel's distance from a broad Gaussian surround
    (:math:`\sigma` = 1/6 of the side) is summed over the colour channels, that contrast is smoothed
    at object scale (:math:`\sigma` = 1/12 of the side), and its maximum is returned.

    It is the stand-in for "where the object is" when a data set has no masks or boxes: an audit
    compares it with where a map peaks, to tell a cue that stays put while the content moves (a
    watermark) from objects that merely sit in one place. On the generated demo images (cluttered
    backgrounds, distractors) it falls within 0.2 of the object's centre in 99% of the images, and
    never on a 12 px corner mark.

    Args:
        views: ``(B, 3, H, W)`` images in ``[0, 1]``.
        grid: side of the working grid.

    Returns:
        ``(B, 2)`` float32 ``(y, x)`` in ``[0, 1]``.
    """
    x = views.detach().float()
    ph = _pool_matrix(grid, x.shape[-2]).to(x.device)
    pw = _pool_matrix(grid, x.shape[-1]).to(x.device)
    v = ph @ x @ pw.T  # adaptive average pooling to (grid, grid)
    contrast = (v - _blur(v, grid / 6)).abs().sum(1)
    smooth = _blur(contrast, grid / 12)
    b = smooth.shape[0]
    idx = smooth.reshape(b, -1).argmax(1)
    g = _grid(grid, views.device)
    return torch.stack([g[idx // grid], g[idx % grid]], 1)


def object_statistics(
    raw: Tensor, masks: Tensor, valid: Tensor, tolerance: float
) -> dict[str, Tensor]:
    """How a map relates to the object: pointing game, energy inside, the object's size and centre.

    Args:
        raw: ``(B, h, w)`` non-negative maps at the layer's resolution (upsampled here).
        masks: ``(B, H, W)`` bool object masks in the input's geometry.
        valid: ``(B,)`` bool, the samples that have a mask (the others get ``NaN``).
        tolerance: the pointing game's radius in input pixels (15 px at 224 px in Zhang et al. 2016).

    Returns:
        ``(B,)`` float32: ``hit`` (the map's maximum within ``tolerance`` of the object: 1, else 0; ties
        count fractionally, see :func:`camlens.metrics.pointing_game`), ``energy_in`` (share of the
        upsampled map's energy on the object), ``object_area`` (the object's share of the image),
        ``object_y``, ``object_x`` (its centroid).
    """
    from camlens.maps import upsample
    from camlens.metrics import energy_pointing_game, pointing_game

    b = raw.shape[0]
    H, W = masks.shape[-2:]
    nan = torch.full((b,), float("nan"), device=raw.device)
    ok = valid.to(raw.device) & masks.reshape(b, -1).any(1).to(raw.device)
    if not bool(ok.any()):
        return {k: nan.clone() for k in ("hit", "energy_in", "object_area", "object_y", "object_x")}
    up = upsample(raw.detach().float().clamp(min=0), (H, W))
    mk = masks.to(raw.device)
    hit = pointing_game(up[ok], mk[ok], tolerance=tolerance).per_sample
    energy = energy_pointing_game(up[ok], mk[ok]).per_sample
    area = mk.reshape(b, -1).float().mean(1)
    mf = mk.float()
    cnt = mf.sum((1, 2)).clamp(min=1)
    oy = (mf.sum(2) * _grid(H, raw.device)).sum(1) / cnt
    ox = (mf.sum(1) * _grid(W, raw.device)).sum(1) / cnt

    def fill(v: Tensor) -> Tensor:
        out = nan.clone()
        out[ok] = v.float()
        return out

    return {
        "hit": fill(hit),
        "energy_in": fill(energy),
        "object_area": torch.where(ok, area, nan),
        "object_y": torch.where(ok, oy, nan),
        "object_x": torch.where(ok, ox, nan),
    }
