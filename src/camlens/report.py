"""A self-contained HTML report: one row per image, one column per method, and a summary per method.

The page needs nothing but itself: the CSS is inline and every image is a ``data:image/png;base64,...``
URI, so the file can be mailed, attached to a CI run or opened offline. All text is HTML-escaped.

Example:
    >>> import numpy as np
    >>> from camlens.report import Cell, Column, Row, render
    >>> img = np.zeros((8, 8, 3), dtype=np.uint8)
    >>> html = render("demo", [Column("gradcam", "Grad-CAM")], [Row("a.png", img, [Cell(img, energy=0.5)])])
    >>> html.startswith("<!DOCTYPE html>") and "data:image/png;base64," in html
    True
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Cell", "Column", "Row", "SummaryRow", "energy_inside", "render"]

#: Small images (the 96 px demo) are shown enlarged to at least this width, in CSS pixels.
MIN_DISPLAY_PX = 144
#: Large images are shown at most this wide.
MAX_DISPLAY_PX = 256


@dataclass
class Column:
    """One method column.

    Attributes:
        key: the method's registry name (and the column's id).
        title: the header text.
        description: a tooltip for the header (the method's one-line description).
    """

    key: str
    title: str
    description: str = ""


@dataclass
class Cell:
    """One map of one image.

    Attributes:
        image: the overlay (anything :func:`camlens.viz.to_pil` accepts).
        caption: a short line under the image (e.g. the class explained).
        energy: share of the map's energy on the true object, in ``[0, 1]`` (``None``: not known).
        tooltip: text shown when the pointer rests on the image.
    """

    image: Any
    caption: str = ""
    energy: float | None = None
    tooltip: str = ""


@dataclass
class Row:
    """One input image and its maps.

    Attributes:
        name: the image's name (file name, or sample number).
        image: the input as the model sees it.
        cells: one :class:`Cell` (or ``None`` when a method failed) per column, in column order.
        predicted: the predicted class name.
        probability: its softmax probability.
        true: the true class name, when known.
        note: an extra line in the input cell (e.g. an error).
    """

    name: str
    image: Any
    cells: list[Cell | None]
    predicted: str | None = None
    probability: float | None = None
    true: str | None = None
    note: str = ""


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
        --accent: #2563eb; --good: #15803d; --bad: #b91c1c; --bar: #60a5fa; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 28px 48px; background: var(--bg); color: var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header h1 { font-size: 22px; margin: 0 0 4px; font-weight: 650; }
header p { margin: 2px 0; color: var(--muted); }
h2 { font-size: 16px; margin: 28px 0 10px; font-weight: 650; }
table { border-collapse: separate; border-spacing: 0; background: var(--card);
        border: 1px solid var(--line); border-radius: 8px; }
th, td { padding: 8px 10px; border-bottom: 1px solid var(--line); vertical-align: top; text-align: left; }
tr:last-child td { border-bottom: none; }
table.maps thead th { position: sticky; top: 0; z-index: 2; background: #eef1f5;
        font-weight: 600; white-space: nowrap; border-bottom: 1px solid #d5dae1; }
table.maps thead th:first-child { border-top-left-radius: 8px; }
table.maps thead th:last-child { border-top-right-radius: 8px; }
table.maps td { text-align: center; }
table.maps td:first-child, table.maps th:first-child { position: sticky; left: 0; z-index: 1;
        background: #fafbfc; border-right: 1px solid var(--line); }
table.maps thead th:first-child { z-index: 3; background: #eef1f5; }
figure { margin: 0; display: inline-block; }
figure img { display: block; border-radius: 4px; background: #ddd; }
figcaption { margin-top: 4px; font-size: 12px; color: var(--muted); max-width: 256px; }
.name { font-weight: 600; color: var(--ink); }
.ok { color: var(--good); font-weight: 600; }
.wrong { color: var(--bad); font-weight: 600; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
.energy { display: flex; align-items: center; gap: 6px; justify-content: center; font-size: 12px;
          color: var(--ink); margin-top: 4px; font-variant-numeric: tabular-nums; }
.meter { width: 64px; height: 6px; border-radius: 3px; background: #e5e7eb; overflow: hidden; }
.meter span { display: block; height: 100%; background: var(--bar); }
table.summary td.num, table.summary th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.summary td.desc { color: var(--muted); font-size: 13px; }
table.summary td:first-child { white-space: nowrap; }
.best { font-weight: 700; }
.failed { color: var(--bad); font-size: 12px; }
footer { margin-top: 24px; color: var(--muted); font-size: 12px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _display_width(width: int) -> int:
    return min(max(width, MIN_DISPLAY_PX), MAX_DISPLAY_PX)


def _img(image: Any, alt: str, tooltip: str = "") -> str:
    from camlens import viz

    pil = viz.to_pil(image) if not hasattr(image, "save") else image
    w, h = pil.size
    dw = _display_width(w)
    dh = round(h * dw / w)
    title = f' title="{_e(tooltip)}"' if tooltip else ""
    return (
        f'<img src="{viz.to_data_uri(pil)}" alt="{_e(alt)}" width="{dw}" height="{dh}"'
        f' loading="eager" decoding="sync"{title}>'
    )


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


def _input_cell(row: Row) -> str:
    lines = [f'<div class="name">{_e(row.name)}</div>']
    if row.predicted is not None:
        prob = f" ({100 * row.probability:.1f}%)" if row.probability is not None else ""
        cls = ""
        if row.true is not None:
            cls = "ok" if row.predicted == row.true else "wrong"
        lines.append(f'predicted <span class="{cls}">{_e(row.predicted)}</span>{_e(prob)}')
    if row.true is not None:
        lines.append(f"true {_e(row.true)}")
    if row.note:
        lines.append(f'<span class="failed">{_e(row.note)}</span>')
    alt = f"input {row.name}"
    return f"<td><figure>{_img(row.image, alt, alt)}<figcaption>{'<br>'.join(lines)}</figcaption></figure></td>"


def _map_cell(row: Row, col: Column, cell: Cell | None) -> str:
    if cell is None:
        return f'<td><span class="failed">{_e(col.title)} failed on this image</span></td>'
    alt = f"{col.title} on {row.name}"
    tip = cell.tooltip or alt
    caption = f"<figcaption>{_e(cell.caption)}</figcaption>" if cell.caption else ""
    return f"<td><figure>{_img(cell.image, alt, tip)}{caption}{_energy(cell.energy)}</figure></td>"


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


def render(
    title: str,
    columns: Sequence[Column],
    rows: Sequence[Row],
    summary: Sequence[SummaryRow] = (),
    *,
    subtitle: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> str:
    """The report as one HTML string.

    Args:
        title: the page's heading.
        columns: the method columns, in order.
        rows: one per image; each has one cell per column.
        summary: one row per method for the summary table (omitted when empty).
        subtitle: lines under the heading (model, data, settings).
        notes: lines in the footer (how the numbers are computed).

    Returns:
        A complete ``<!DOCTYPE html>`` document.

    Raises:
        ValueError: a row's cells do not match the columns.
    """
    from camlens import __version__

    for r in rows:
        if len(r.cells) != len(columns):
            raise ValueError(f"row {r.name!r} has {len(r.cells)} cells for {len(columns)} columns")
    head = "".join(f'<th title="{_e(c.description)}">{_e(c.title)}</th>' for c in columns)
    body = []
    for r in rows:
        cells = "".join(_map_cell(r, c, cell) for c, cell in zip(columns, r.cells, strict=True))
        body.append(f"<tr>{_input_cell(r)}{cells}</tr>")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<header><h1>{_e(title)}</h1>",
        *(f"<p>{_e(line)}</p>" for line in subtitle),
        "</header>",
    ]
    if summary:
        parts += ["<h2>Summary</h2>", _summary(summary)]
    parts += [
        f"<h2>Maps ({len(rows)} image{'s' if len(rows) != 1 else ''})</h2>",
        f'<table class="maps"><thead><tr><th>Input</th>{head}</tr></thead><tbody>',
        *body,
        "</tbody></table>",
        "<footer>",
        *(f"<p>{_e(n)}</p>" for n in notes),
        f"<p>Made with camlens {_e(__version__)}.</p></footer>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
