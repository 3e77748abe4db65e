"""A self-contained HTML report that stays readable from 1 to 500 images and 1 to 12 methods x top-k.

Layout: a header with the run's settings and a colour bar that says what 0 and 1 mean; a summary
table per method; then one card per image. A card holds the image and its maps, grouped per method
(a group holds the method's class ranks side by side) and wrapped to the page's width. Cards flow in
a grid: with one or two maps per image several cards share a row, so 30 images of one method do not
make one tall column; with 36 maps per image a card takes the page's width and its groups wrap, so
they do not make 37 columns.

Images are compressed JPEG thumbnails inline (``data:`` URIs): the page needs nothing but itself and
weighs about 15-25 KB per map at the default 256 px. The full-size overlay (and the original image)
is one click away when the caller passes its path (``Cell.href``, ``Row.href``), relative to the
report. All text is HTML-escaped.

Example:
    >>> import numpy as np
    >>> from camlens.report import Cell, Column, Row, render
    >>> img = np.zeros((8, 8, 3), dtype=np.uint8)
    >>> html = render("demo", [Column("gradcam", "Grad-CAM")], [Row("a.png", img, [Cell(img, energy=0.5)])])
    >>> html.startswith("<!DOCTYPE html>") and "data:image/jpeg;base64," in html
    True
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Cell",
    "Column",
    "Row",
    "SummaryRow",
    "Thumb",
    "energy_inside",
    "render",
    "thumb",
]

#: Longest side of the embedded thumbnails, in pixels.
THUMB_PX = 256
#: Width a thumbnail is shown at, in CSS pixels.
DISPLAY_PX = 176
#: Maps per image up to which a card's width grows; beyond, cards take the page's width and wrap.
_CARD_CELLS = 5


@dataclass(frozen=True)
class Thumb:
    """An encoded thumbnail: a ``data:`` URI and its pixel size."""

    uri: str
    width: int
    height: int


def thumb(image: Any, max_side: int = THUMB_PX, fmt: str = "jpeg", quality: int = 80) -> Thumb:
    """Encode an image as a thumbnail (longer side at most ``max_side``), JPEG by default.

    Call it as soon as an overlay is made, so that a long run keeps kilobytes, not full images.
    """
    from camlens import viz

    small = viz.thumbnail(image, max_side)
    return Thumb(viz.to_image_uri(small, fmt, quality), small.width, small.height)


@dataclass
class Column:
    """One map per image: a method at a class rank.

    Attributes:
        key: a unique id (``"gradcam:1"``).
        title: the header text (the method's name, and its layer); a group shows its first
            column's title.
        description: a tooltip (the method's one-line description).
        group: columns with the same group (the method) are shown side by side in one group.
        rank: the class rank (``None`` without top-k).
    """

    key: str
    title: str
    description: str = ""
    group: str = ""
    rank: int | None = None


@dataclass
class Cell:
    """One map of one image.

    Attributes:
        image: the overlay (a :class:`Thumb`, or anything :func:`camlens.viz.to_pil` accepts).
        caption: a short line under the image (the class explained and its score).
        energy: share of the map's energy on the true object, in ``[0, 1]`` (``None``: not known).
        tooltip: text shown when the pointer rests on the image.
        href: the full-size overlay, relative to the report (``None``: no link).
    """

    image: Any
    caption: str = ""
    energy: float | None = None
    tooltip: str = ""
    href: str | None = None


@dataclass
class Row:
    """One input image and its maps.

    Attributes:
        name: the image's name (file name, or sample number).
        image: the input (a :class:`Thumb` or an image).
        cells: one :class:`Cell` (or ``None`` when a method failed) per column, in column order.
        predicted: the predicted class name.
        probability: its softmax probability.
        true: the true class name, when known.
        note: an extra line (the crop the model saw, an error).
        href: the original image, relative to the report.
    """

    name: str
    image: Any
    cells: list[Cell | None]
    predicted: str | None = None
    probability: float | None = None
    true: str | None = None
    note: str = ""
    href: str | None = None


@dataclass
class SummaryRow:
    """One method in the summary table.

    Attributes:
        title: the method's name.
        layer: the layer it explained.
        mean_energy: mean share of the map's energy on the true object (``None``: not known).
        ms_per_image: wall time per image in milliseconds.
        description: a one-line description.
        extra: further ``(header, value)`` cells.
    """

    title: str
    layer: str = ""
    mean_energy: float | None = None
    ms_per_image: float | None = None
    description: str = ""
    extra: list[tuple[str, str]] = field(default_factory=list)


def energy_inside(cam_map: Any, mask: Any) -> float:
    """Share of a map's energy on an object: ``sum(map * mask) / sum(map)``.

    Args:
        cam_map: ``(H, W)`` non-negative map (tensor or array); a ``(C, H, W)`` map is averaged over
            channels first.
        mask: ``(H, W)`` boolean object mask.

    Returns:
        A float in ``[0, 1]``; ``nan`` for an all-zero map.

    Example:
        >>> import torch
        >>> m = torch.zeros(4, 4); m[0, 0] = 3.0; m[3, 3] = 1.0
        >>> mask = torch.zeros(4, 4, dtype=torch.bool); mask[0, 0] = True
        >>> energy_inside(m, mask)
        0.75
    """
    import torch

    m = torch.as_tensor(cam_map).detach().float().cpu()
    k = torch.as_tensor(mask).detach().bool().cpu()
    if m.ndim == k.ndim + 1:
        m = m.mean(0)
    if m.shape != k.shape:
        raise ValueError(f"map {tuple(m.shape)} and mask {tuple(k.shape)} must have the same shape")
    m = m.clamp(min=0)
    total = float(m.sum())
    if total <= 0 or not math.isfinite(total):
        return float("nan")
    return float(m[k].sum()) / total


# --------------------------------------------------------------------------- rendering

_CSS = """
:root { --bg: #f6f7f9; --card: #fff; --ink: #1d2330; --muted: #6b7280; --line: #e3e6ea;
        --accent: #2563eb; --good: #15803d; --bad: #b91c1c; --bar: #60a5fa; --thumb: %(thumb)dpx; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 28px 48px; background: var(--bg); color: var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header h1 { font-size: 22px; margin: 0 0 4px; font-weight: 650; }
header p { margin: 2px 0; color: var(--muted); }
h2 { font-size: 16px; margin: 28px 0 10px; font-weight: 650; }
.legend { display: flex; flex-wrap: wrap; align-items: center; gap: 8px; margin: 10px 0 0;
          font-size: 13px; color: var(--ink); }
.legend .cb { display: inline-block; width: 240px; height: 12px; border-radius: 3px;
              background: %(gradient)s; }
.legend .what { color: var(--muted); }
table { border-collapse: separate; border-spacing: 0; background: var(--card);
        border: 1px solid var(--line); border-radius: 8px; }
th, td { padding: 8px 10px; border-bottom: 1px solid var(--line); vertical-align: top; text-align: left; }
tr:last-child td { border-bottom: none; }
table.summary td.num, table.summary th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.summary td.desc { color: var(--muted); font-size: 13px; }
table.summary td:first-child { white-space: nowrap; }
.best { font-weight: 700; }
nav.index { font-size: 13px; margin: 6px 0 0; }
nav.index a { margin-right: 10px; white-space: nowrap; }
.cards { display: grid; gap: 14px;
         grid-template-columns: repeat(auto-fill, minmax(min(100%%, var(--card-w)), 1fr)); }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px;
        min-width: 0; }
.card > .head { margin: 0 0 8px; }
.card .name { font-weight: 600; word-break: break-all; }
.card .meta { color: var(--muted); font-size: 12px; }
.maps { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
.group { display: flex; flex-direction: column; gap: 2px; }
.group .title { font-size: 12px; font-weight: 600; white-space: nowrap; overflow: hidden;
                text-overflow: ellipsis; }
.group .figs { display: flex; gap: 6px; }
figure { margin: 0; width: var(--thumb); }
figure img { display: block; width: 100%%; height: auto; border-radius: 4px; background: #ddd; }
figcaption { margin-top: 3px; font-size: 12px; color: var(--muted); overflow-wrap: anywhere; }
.ok { color: var(--good); font-weight: 600; }
.wrong { color: var(--bad); font-weight: 600; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
.energy { display: flex; align-items: center; gap: 6px; font-size: 12px;
          color: var(--ink); margin-top: 2px; font-variant-numeric: tabular-nums; }
.meter { width: 64px; height: 6px; border-radius: 3px; background: #e5e7eb; overflow: hidden; }
.meter span { display: block; height: 100%%; background: var(--bar); }
.failed { color: var(--bad); font-size: 12px; }
footer { margin-top: 24px; color: var(--muted); font-size: 12px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _as_thumb(image: Any, max_side: int, fmt: str, quality: int) -> Thumb:
    return image if isinstance(image, Thumb) else thumb(image, max_side, fmt, quality)


def _img(t: Thumb, alt: str, tooltip: str = "", href: str | None = None) -> str:
    title = f' title="{_e(tooltip)}"' if tooltip else ""
    tag = (
        f'<img src="{t.uri}" alt="{_e(alt)}" width="{t.width}" height="{t.height}"'
        f' loading="lazy" decoding="async"{title}>'
    )
    return f'<a href="{_e(href)}">{tag}</a>' if href else tag


def _energy(value: float | None) -> str:
    if value is None:
        return ""
    if not math.isfinite(value):
        return '<div class="energy" title="the map is zero everywhere">empty map</div>'
    pct = max(0.0, min(100.0, 100.0 * value))
    return (
        f'<div class="energy" title="{pct:.1f}% of the map\'s energy lies on the true object">'
        f'<span class="meter"><span style="width:{pct:.0f}%"></span></span>{pct:.0f}%</div>'
    )


_URL = re.compile(r"https?://[^\s)]+[^\s).,;]")


def _linkify(text: str) -> str:
    """Escape ``text`` and turn its URLs into short "paper" links."""
    out, last = [], 0
    for m in _URL.finditer(text):
        out.append(_e(text[last : m.start()]))
        out.append(f'<a href="{_e(m.group(0))}">paper</a>')
        last = m.end()
    out.append(_e(text[last:]))
    return "".join(out)


def _fmt(value: float | None, pattern: str) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return pattern.format(value)


def _summary(summary: Sequence[SummaryRow]) -> str:
    energies = [
        s.mean_energy for s in summary if s.mean_energy is not None and math.isfinite(s.mean_energy)
    ]
    best = max(energies) if energies else None
    extra_heads = [h for h, _ in summary[0].extra] if summary else []
    show_energy = bool(energies)
    head = ["<th>Method</th>", "<th>Layer</th>"]
    if show_energy:
        head.append(
            '<th class="num" title="mean of sum(map*mask)/sum(map)">Energy on object ↑</th>'
        )
    head.append('<th class="num">ms / image</th>')
    head += [f'<th class="num">{_e(h)}</th>' for h in extra_heads]
    head.append("<th>Description</th>")
    rows = []
    for s in summary:
        cells = [f"<td><b>{_e(s.title)}</b></td>", f"<td><code>{_e(s.layer or '–')}</code></td>"]
        if show_energy:
            is_best = (
                best is not None
                and s.mean_energy is not None
                and f"{s.mean_energy:.3f}" == f"{best:.3f}"
            )
            cls = "num best" if is_best else "num"
            cells.append(f'<td class="{cls}">{_fmt(s.mean_energy, "{:.3f}")}</td>')
        cells.append(f'<td class="num">{_fmt(s.ms_per_image, "{:.1f}")}</td>')
        cells += [f'<td class="num">{_e(v)}</td>' for _, v in s.extra]
        cells.append(f'<td class="desc">{_linkify(s.description)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<table class="summary"><thead><tr>'
        + "".join(head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _groups(columns: Sequence[Column]) -> list[tuple[str, list[int]]]:
    """Column indices grouped by ``group`` (each column alone when it has none), in first-seen order."""
    order: dict[str, list[int]] = {}
    for i, c in enumerate(columns):
        order.setdefault(c.group or f"\0{c.key}", []).append(i)
    return [(key.lstrip("\0"), idx) for key, idx in order.items()]


def _figure(row: Row, col: Column, cell: Cell | None, max_side: int, fmt: str, quality: int) -> str:
    if cell is None:
        return f'<figure><span class="failed">{_e(col.title)} failed on this image</span></figure>'
    alt = f"{col.title} on {row.name}"
    t = _as_thumb(cell.image, max_side, fmt, quality)
    caption = f"<figcaption>{_e(cell.caption)}</figcaption>" if cell.caption else ""
    return (
        f"<figure>{_img(t, alt, cell.tooltip or alt, cell.href)}{caption}"
        f"{_energy(cell.energy)}</figure>"
    )


def _card(
    i: int,
    row: Row,
    columns: Sequence[Column],
    groups: list[tuple[str, list[int]]],
    max_side: int,
    fmt: str,
    quality: int,
) -> str:
    meta = []
    if row.predicted is not None:
        prob = f" ({100 * row.probability:.1f}%)" if row.probability is not None else ""
        cls = ""
        if row.true is not None:
            cls = "ok" if row.predicted == row.true else "wrong"
        meta.append(f'predicted <span class="{cls}">{_e(row.predicted)}</span>{_e(prob)}')
    if row.true is not None:
        meta.append(f"true {_e(row.true)}")
    if row.note:
        meta.append(_e(row.note))
    t = _as_thumb(row.image, max_side, fmt, quality)
    parts = [
        f'<section class="card" id="img-{i}"><div class="head"><div class="name">{_e(row.name)}</div>'
        f'<div class="meta">{" · ".join(meta)}</div></div><div class="maps">',
        f'<div class="group"><div class="title">input</div><div class="figs"><figure>'
        f"{_img(t, f'input {row.name}', f'input {row.name}', row.href)}</figure></div></div>",
    ]
    for _, idx in groups:
        title = columns[idx[0]].title
        desc = columns[idx[0]].description
        figs = "".join(_figure(row, columns[j], row.cells[j], max_side, fmt, quality) for j in idx)
        parts.append(
            f'<div class="group"><div class="title" title="{_e(desc)}">{_e(title)}</div>'
            f'<div class="figs">{figs}</div></div>'
        )
    parts.append("</div></section>")
    return "".join(parts)


def render(
    title: str,
    columns: Sequence[Column],
    rows: Sequence[Row],
    summary: Sequence[SummaryRow] = (),
    *,
    subtitle: Sequence[str] = (),
    notes: Sequence[str] = (),
    colormap: str = "jet",
    scale: str | None = None,
    failures: Sequence[tuple[str, str]] = (),
    max_side: int = THUMB_PX,
    image_format: str = "jpeg",
    quality: int = 80,
) -> str:
    """The report as one HTML string.

    Args:
        title: the page's heading.
        columns: the maps per image (method x class rank), in order.
        rows: one per image; each has one cell per column.
        summary: one row per method for the summary table (omitted when empty).
        subtitle: lines under the heading (model, data, settings).
        notes: lines in the footer (how the numbers are computed).
        colormap: the colour map of the overlays, for the colour bar.
        scale: what 0 and 1 mean (default: :data:`camlens.viz.PER_IMAGE_SCALE`).
        failures: ``(input, reason)`` for inputs that could not be explained.
        max_side: longest side of thumbnails made here (cells given as :class:`Thumb` keep theirs).
        image_format: ``"jpeg"``, ``"webp"`` or ``"png"`` for thumbnails made here.
        quality: JPEG/WebP quality for thumbnails made here.

    Returns:
        A complete ``<!DOCTYPE html>`` document.

    Raises:
        ValueError: a row's cells do not match the columns.
    """
    from camlens import __version__, viz

    for r in rows:
        if len(r.cells) != len(columns):
            raise ValueError(f"row {r.name!r} has {len(r.cells)} cells for {len(columns)} columns")
    groups = _groups(columns)
    per_group = max((len(idx) for _, idx in groups), default=1)
    n_cells = 1 + len(columns)
    gap = 10
    card_cells = min(n_cells, 1 + max(per_group, _CARD_CELLS))
    card_w = card_cells * (DISPLAY_PX + gap) + 24
    css = _CSS % {"thumb": DISPLAY_PX, "gradient": viz.css_gradient(colormap)}
    scale_text = scale or viz.PER_IMAGE_SCALE
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{css}</style></head><body>",
        f"<header><h1>{_e(title)}</h1>",
        *(f"<p>{_e(line)}</p>" for line in subtitle),
        f'<div class="legend"><span>0</span><span class="cb" title="{_e(colormap)}"></span>'
        f'<span>1</span><span class="what">{_e(scale_text)}. Captions: class explained and '
        "its score; click a map for the full-size overlay.</span></div>",
        "</header>",
    ]
    if summary:
        parts += ["<h2>Summary</h2>", _summary(summary)]
    if failures:
        items = "".join(f"<li><b>{_e(n)}</b>: {_e(why)}</li>" for n, why in failures)
        parts += [f'<h2>Inputs that failed ({len(failures)})</h2><ul class="failed">{items}</ul>']
    parts.append(f"<h2>Maps ({len(rows)} image{'s' if len(rows) != 1 else ''})</h2>")
    if len(rows) > 6:
        links = "".join(f'<a href="#img-{i}">{_e(r.name)}</a>' for i, r in enumerate(rows))
        parts.append(f'<details><summary>Index</summary><nav class="index">{links}</nav></details>')
    parts.append(f'<main class="cards" style="--card-w: {card_w}px">')
    parts += [
        _card(i, r, columns, groups, max_side, image_format, quality) for i, r in enumerate(rows)
    ]
    parts += [
        "</main>",
        "<footer>",
        *(f"<p>{_e(n)}</p>" for n in notes),
        f"<p>Made with camlens {_e(__version__)}.</p></footer>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
