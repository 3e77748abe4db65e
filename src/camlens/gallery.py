"""Labelled grids of maps for notebooks and files: ``camlens.show(results, images)``.

A :class:`Gallery` is one row per image: the photo, then one tile per map, each captioned with the
method, layer, target class and score, under a colour bar that says what 0 and 1 mean. Jupyter shows
it through ``_repr_html_`` (compressed JPEG tiles, so notebooks stay small); ``_repr_png_`` and
:meth:`Gallery.image` give the same as one picture; :meth:`Gallery.save` writes ``.html`` or
``.png``.

``CAMResult`` objects and :class:`camlens.pipeline.Explanation` display through this module, and
:func:`show` takes a result or a list of results of the same images (several methods, or the
``for_targets`` ranks) for a side-by-side comparison.

Example:
    >>> import torch, camlens
    >>> from camlens.result import CAMResult
    >>> r = CAMResult(torch.rand(2, 8, 8), torch.rand(2, 2, 2), torch.tensor([1.5, 2.0]),
    ...               torch.tensor([3, 4]), "layer4", "gradcam")
    >>> g = camlens.show(r)
    >>> len(g.rows), [t.legend.target for t in g.rows[0].tiles]
    (2, ['class 3'])
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from camlens.result import CAMResult
    from camlens.viz import Legend

__all__ = ["Gallery", "GalleryRow", "Tile", "show"]

_IDS = itertools.count()


@dataclass
class Tile:
    """One map: its picture and its legend."""

    image: Any
    legend: Legend


@dataclass
class GalleryRow:
    """One image: its name, the photo (or ``None``), its tiles and a note (prediction, crop)."""

    name: str
    image: Any
    tiles: list[Tile]
    note: str = ""


@dataclass
class Gallery:
    """A labelled grid of maps (see the module docstring).

    Attributes:
        rows: one per image.
        colormap: the colour map of the tiles (for the colour bar).
        scale: what 0 and 1 mean (default: :data:`camlens.viz.PER_IMAGE_SCALE`).
        max_side: the longest side of a tile in pixels.
        title: a heading.
    """

    rows: list[GalleryRow]
    colormap: str = "jet"
    scale: str | None = None
    max_side: int = 256
    title: str = ""
    _id: int = field(default_factory=lambda: next(_IDS), repr=False)

    def _scale(self) -> str:
        from camlens.viz import PER_IMAGE_SCALE

        return self.scale or PER_IMAGE_SCALE

    # ---- HTML ------------------------------------------------------------------------------
    def to_html(self) -> str:
        """An HTML fragment (scoped styles, images inline as JPEG)."""
        from camlens import viz

        e = html.escape
        cls = f"camlens-gallery-{self._id}"
        css = (
            f".{cls}{{font:13px/1.4 system-ui,sans-serif;color:#1d2330}}"
            f".{cls} .bar{{display:flex;align-items:center;gap:6px;margin:4px 0 10px}}"
            f".{cls} .bar span.cb{{display:inline-block;width:220px;height:10px;border-radius:2px;"
            f"background:{viz.css_gradient(self.colormap)}}}"
            f".{cls} .row{{margin:0 0 14px}}"
            f".{cls} .tiles{{display:grid;gap:8px;grid-template-columns:repeat(auto-fill,"
            f"minmax(min(100%,{min(self.max_side, 220)}px),1fr))}}"
            f".{cls} figure{{margin:0}} .{cls} img{{width:100%;height:auto;display:block;"
            f"border-radius:3px}} .{cls} figcaption{{font-size:12px;color:#4b5563}}"
            f".{cls} .name{{font-weight:600}} .{cls} .note{{color:#6b7280;font-size:12px}}"
        )
        parts = [f'<div class="{cls}"><style>{css}</style>']
        if self.title:
            parts.append(f"<div class='name'>{e(self.title)}</div>")
        parts.append(
            f'<div class="bar">0 <span class="cb"></span> 1 <span class="note">{e(self._scale())}'
            "</span></div>"
        )
        for row in self.rows:
            parts.append(
                f'<div class="row"><div><span class="name">{e(row.name)}</span> '
                f'<span class="note">{e(row.note)}</span></div><div class="tiles">'
            )
            if row.image is not None:
                uri = viz.to_image_uri(viz.thumbnail(row.image, self.max_side))
                parts.append(
                    f'<figure><img src="{uri}" alt="{e(row.name)}"><figcaption>input</figcaption></figure>'
                )
            for t in row.tiles:
                uri = viz.to_image_uri(viz.thumbnail(t.image, self.max_side))
                title = t.legend.title()
                parts.append(
                    f'<figure><img src="{uri}" alt="{e(title)}" title="{e(title)}">'
                    f"<figcaption>{e(title)}</figcaption></figure>"
                )
            parts.append("</div></div>")
        parts.append("</div>")
        return "".join(parts)

    def _repr_html_(self) -> str:
        return self.to_html()

    # ---- one picture -----------------------------------------------------------------------
    def image(self) -> Image.Image:
        """The gallery as one RGB image: a grid of tiles titled with their legends, and a colour bar."""
        from camlens import viz

        cells: list[list[Any]] = []
        titles: list[list[str | None]] = []
        for row in self.rows:
            line: list[Any] = []
            names: list[str | None] = []
            if row.image is not None:
                line.append(viz.thumbnail(row.image, self.max_side))
                names.append(row.name)
            for t in row.tiles:
                line.append(viz.thumbnail(t.image, self.max_side))
                names.append(t.legend.title())
            cells.append(line)
            titles.append(names)
        body = viz.grid(cells, titles=titles)
        from camlens.viz import Legend

        return viz.with_legend(
            body, Legend(self.title, scale=self._scale(), colormap=self.colormap), min_width=320
        )

    def _repr_png_(self) -> bytes:
        from camlens import viz

        return viz.to_png_bytes(self.image())

    def save(self, path: str | Path) -> Path:
        """Write ``.html`` (a standalone page) or ``.png``/``.jpg`` (:meth:`image`) atomically.

        Raises:
            ValueError: another file ending.
        """
        from camlens import io

        p = Path(path)
        suffix = p.suffix.lower()
        if suffix in (".html", ".htm"):
            page = (
                '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
                f"<title>{html.escape(self.title or 'camlens')}</title></head><body>"
                f"{self.to_html()}</body></html>\n"
            )
            return io.atomic_write_text(p, page)
        if suffix in (".png", ".jpg", ".jpeg", ".webp"):
            fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}[suffix]

            def write(f: Any) -> None:
                self.image().save(f, format=fmt)

            return io.atomic_write(p, write)
        raise ValueError(f"save to .html, .png, .jpg or .webp, not {p.suffix or 'no ending'!r}")


def _images_of(images: Any, n: int) -> tuple[list[Any] | None, list[Any] | None, list[str]]:
    """``(originals, geometry, names)`` of what the caller passed as images."""
    from camlens.images import ImageBatch

    if images is None:
        return None, None, [f"#{i}" for i in range(n)]
    if isinstance(images, ImageBatch):
        return list(images.originals), list(images.geometry), list(images.names)
    if hasattr(images, "unbind") and getattr(images, "ndim", 0) == 4:
        items = list(images.unbind(0))
    else:
        items = list(images)
    if len(items) != n:
        raise ValueError(f"got {len(items)} images for {n} maps; pass one image per map")
    return items, None, [f"#{i}" for i in range(n)]


def show(
    results: CAMResult | Sequence[CAMResult],
    images: Any = None,
    *,
    classes: Sequence[str] | None = None,
    colormap: str = "jet",
    alpha: float = 0.5,
    max_side: int = 256,
    title: str = "",
    limit: int | None = None,
) -> Gallery:
    """A labelled grid of one or more results of the same images.

    Args:
        results: a :class:`~camlens.result.CAMResult`, or a list of them for the same batch
            (several methods side by side, or ``cam.for_targets(x, "top-3")``).
        images: the images: an :class:`~camlens.images.ImageBatch` (maps drawn on the originals,
            where the model looked), a ``(B, 3, H, W)`` tensor in ``[0, 1]`` or a list of images;
            ``None`` shows the heat maps alone.
        classes: class names, for the captions.
        colormap: colour map.
        alpha: weight of the heat map on the images.
        max_side: the longest side of a tile.
        title: a heading.
        limit: show at most this many images (the first ones).

    Returns:
        A :class:`Gallery` (Jupyter displays it).

    Raises:
        ValueError: results of different batch sizes, or images that do not match them.
    """
    from camlens import viz

    items = [results] if not isinstance(results, Sequence) else list(results)
    if not items:
        raise ValueError("no result to show")
    n = len(items[0])
    if any(len(r) != n for r in items):
        raise ValueError(
            f"the results hold {[len(r) for r in items]} maps; show results of the same images"
        )
    originals, geometry, names = _images_of(images, n)
    rows = []
    for i in range(n if limit is None else min(n, limit)):
        tiles = []
        for r in items:
            m = r.maps[i]
            if m.ndim != 2:
                raise ValueError(
                    f"{r.method}: maps of shape {tuple(r.maps.shape)} cannot be shown as pictures; "
                    "show 2-D maps (B, H, W)"
                )
            if originals is None:
                pic = viz.heatmap(m, colormap)
            elif geometry is not None and geometry[i] is not None:
                geo = geometry[i]
                h0, w0 = geo.original_size
                f = min(1.0, max_side / max(h0, w0))
                size = (max(1, round(h0 * f)), max(1, round(w0 * f)))
                pic = viz.overlay_on_original(originals[i], m, geo, colormap, alpha, size=size)
            else:
                pic = viz.overlay(originals[i], m, colormap, alpha)
            tiles.append(Tile(pic, _legend(r, i, classes, colormap)))
        shown = originals[i] if originals is not None else None
        rows.append(GalleryRow(names[i], shown, tiles))
    return Gallery(rows, colormap=colormap, max_side=max_side, title=title)


def _legend(r: CAMResult, i: int, classes: Sequence[str] | None, colormap: str) -> Legend:
    from camlens.viz import Legend

    target = ""
    if r.targets is not None:
        c = int(r.targets[i])
        name = classes[c] if classes is not None and 0 <= c < len(classes) else "class"
        target = f"{name} ({c})" if classes is not None else f"class {c}"
    s = float(r.scores[i])
    score = f"score {s:.3g}" if s == s else ""
    return Legend(r.method, r.layer, target, score, colormap=colormap)
