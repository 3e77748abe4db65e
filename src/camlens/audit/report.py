"""The audit's ``report.html``: findings first, then per-class mean maps and groups, then distributions.

Self-contained like :mod:`camlens.report`: inline CSS, every image a ``data:`` URI, all text escaped.
Example overlays are drawn from the stored maps on the example images as the model saw them; an
image that can no longer be read is shown as its map alone.
"""

from __future__ import annotations

import html
import io
import math
import os
from typing import Any

import numpy as np

__all__ = ["render_report"]

_KIND = {
    "fixed_position": "fixed-position cue",
    "off_object": "focus outside the object",
    "split": "class split into distinct strategies",
}

_CSS = """
:root { --bg: #f6f7f9; --card: #fff; --ink: #1d2330; --muted: #6b7280; --line: #e3e6ea;
        --bad: #b91c1c; --warn: #b45309; --good: #15803d; --bar: #ef4444; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 28px 48px; background: var(--bg); color: var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 10px; }
h3 { font-size: 15px; margin: 0 0 6px; }
header p { margin: 2px 0; color: var(--muted); }
.finding { background: var(--card); border: 1px solid var(--line); border-left: 4px solid var(--bad);
           border-radius: 8px; padding: 14px 16px; margin: 0 0 14px; }
.finding .why { margin: 4px 0 10px; }
.none { background: var(--card); border: 1px solid var(--line); border-left: 4px solid var(--good);
        border-radius: 8px; padding: 12px 16px; }
.row { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
figure { margin: 0; } figure img { display: block; border-radius: 4px; image-rendering: auto; }
figcaption { font-size: 12px; color: var(--muted); max-width: 160px; overflow-wrap: anywhere; }
table { border-collapse: collapse; background: var(--card); border: 1px solid var(--line); }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.evidence td, table.evidence th { padding: 2px 8px; font-size: 12px; }
.share { display: inline-block; width: 90px; height: 8px; background: #e5e7eb; border-radius: 4px;
         overflow: hidden; vertical-align: middle; margin-left: 6px; }
.share span { display: block; height: 100%; background: var(--bar); }
.tag { display: inline-block; padding: 0 6px; border-radius: 4px; background: #fee2e2; color: var(--bad);
       font-size: 12px; margin-left: 4px; }
.muted { color: var(--muted); }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _uri(image: Any) -> str:
    from camlens import viz

    return viz.to_data_uri(image)


def _up(m: np.ndarray, size: int = 96) -> np.ndarray:
    """A map scaled to ``[0, 1]`` and resized bilinearly to about ``size`` px on its longer side."""
    import torch

    a = np.asarray(m, dtype=np.float32)
    peak = float(a.max()) if a.size else 0.0
    a = a / peak if peak > 0 else a
    h, w = a.shape
    s = size / max(h, w)
    t = torch.nn.functional.interpolate(
        torch.from_numpy(a)[None, None],
        size=(max(1, round(h * s)), max(1, round(w * s))),
        mode="bilinear",
        align_corners=False,
    )
    return np.clip(t[0, 0].numpy(), 0.0, 1.0)


def _heat(m: Any, caption: str, size: int = 96) -> str:
    from camlens import viz

    if m is None:
        return ""
    arr = np.asarray(m, dtype=np.float32)
    if arr.ndim != 2 or arr.size == 0:
        return ""
    img = viz.heatmap(_up(arr, size))
    return (
        f'<figure><img src="{_uri(img)}" width="{img.width}" height="{img.height}" '
        f'alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'
    )


def _overlay(path: str, m: np.ndarray | None, preprocess: Any, caption: str) -> str:
    from camlens import viz
    from camlens.audit.dataset import Item
    from camlens.audit.example import load_example

    if m is None:
        return f"<figure><figcaption>{_e(caption)} (no map)</figcaption></figure>"
    view = None
    if preprocess is not None:
        ex = load_example(Item(path), preprocess)
        view = ex.view
    if view is None:
        return _heat(m, caption + " (image unreadable)")
    img = viz.overlay(np.transpose(view, (1, 2, 0)), _up(m, max(view.shape[1:])), alpha=0.5)
    if max(img.size) > 160:
        scale = 160 / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)))
    elif max(img.size) < 120:
        scale = 120 / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)))
    return (
        f'<figure><img src="{_uri(img)}" width="{img.width}" height="{img.height}" '
        f'alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'
    )


def _num(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}" if math.isfinite(v) else "–"
    if isinstance(v, list):
        return "(" + ", ".join(_num(x) for x in v) + ")"
    return _e(v)


def _evidence(ev: dict[str, Any]) -> str:
    cells = []
    for k, v in ev.items():
        if k == "groups":
            continue
        cells.append(f"<tr><th>{_e(k.replace('_', ' '))}</th><td class='num'>{_num(v)}</td></tr>")
    for g in ev.get("groups", []):
        cells.append(
            f"<tr><th>group {g['group']}</th><td>{_e(g['strategy'].replace('_', ' '))}: "
            f"{g['size']} maps ({_num(g['share'])} of the class), {_num(g['in_group'])} of the group "
            f"vs {_num(g['rest'])} of the rest, hotspot {_num(g['hotspot'])}</td></tr>"
        )
    return f'<table class="evidence">{"".join(cells)}</table>'


def _plots(summary: dict[str, Any], method: str) -> str:
    """Histograms of entropy, border energy and energy on the object per class, and peak positions."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib comes with the CLI extra
        return "<p class='muted'>matplotlib is not installed: no plots.</p>"
    per = [(c["class"], c["methods"].get(method)) for c in summary["per_class"]]
    per = [(n, m) for n, m in per if m]
    if not per:
        return ""
    stats = [
        s for s in ("entropy", "border", "energy_in") if any(s in m["histograms"] for _, m in per)
    ]
    cols = 2
    nrows = (len(stats) + 2) // cols
    fig, grid = plt.subplots(nrows, cols, figsize=(9.0, 3.3 * nrows), dpi=90, squeeze=False)
    axes = grid.reshape(-1)
    for ax in axes[len(stats) + 1 :]:
        ax.axis("off")
    edges = np.linspace(0, 1, 21)
    centres = (edges[:-1] + edges[1:]) / 2
    titles = {
        "entropy": "map entropy (0 = one cell, 1 = flat)",
        "border": "share of energy on the border",
        "energy_in": "share of energy on the object",
    }
    for ax, s in zip(axes, stats, strict=False):
        for name, m in per:
            h = np.asarray(m["histograms"].get(s, []), dtype=float)
            if h.sum() > 0:
                ax.plot(centres, h / h.sum(), label=str(name), lw=1.5)
        ax.set_title(titles[s], fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylabel("share of maps", fontsize=9)
    ax = axes[len(stats)]
    for name, m in per:
        ph = np.asarray(m["peak_histogram"], dtype=float)
        if ph.sum() == 0:
            continue
        ys, xs = np.nonzero(ph)
        ax.scatter(
            (xs + 0.5) / 10,
            (ys + 0.5) / 10,
            s=600 * ph[ys, xs] / ph.sum(),
            alpha=0.45,
            label=str(name),
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(1, 0)
    ax.set_aspect("equal")
    ax.set_title("where the maps peak (area = share)", fontsize=10)
    axes[0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    from PIL import Image

    buf.seek(0)
    img = Image.open(buf)
    img.load()
    return (
        f'<figure><img src="{_uri(img)}" width="{img.width}" height="{img.height}" '
        f'alt="distributions of the map statistics ({_e(method)})"></figure>'
    )


def _lookup_maps(
    out: str | os.PathLike[str] | None, wanted: set[tuple[str, str]]
) -> dict[Any, Any]:
    """The stored maps of the example ``(path, method)`` pairs, from the shards one at a time."""
    if out is None or not wanted:
        return {}
    from camlens.audit.store import ResultStore

    found: dict[tuple[str, str], np.ndarray] = {}
    store = ResultStore(out)
    for t in store.iter_tables(["path", "method", "map", "map_shape"]):
        paths, methods = t.column("path").to_pylist(), t.column("method").to_pylist()
        for i, key in enumerate(zip(paths, methods, strict=True)):
            if key in wanted and key not in found:
                shape = t.column("map_shape")[i].as_py()
                vals = np.asarray(t.column("map")[i].as_py(), dtype=np.float32)
                if shape and vals.size == shape[0] * shape[1]:
                    found[key] = vals.reshape(shape)
    return found


def render_report(
    summary: dict[str, Any],
    preprocess: Any = None,
    out: str | os.PathLike[str] | None = None,
    title: str = "camlens audit",
) -> str:
    """The HTML report of an audit.

    Args:
        summary: the analysis (:func:`camlens.audit.analyze`), with ``data`` and ``model`` entries when
            made by :func:`camlens.audit.audit`.
        preprocess: the model's pre-processing, to show the example images as the model saw them
            (``None``: the examples are shown as maps only).
        out: the audit's folder, where the examples' maps are read from (default: the folder in
            ``summary["out"]`` if any).

    Returns:
        The page, one self-contained string.
    """
    out = out if out is not None else summary.get("out")
    wanted = {(p, f["method"]) for f in summary["findings"] for p in f["examples"]}
    maps = _lookup_maps(out, wanted)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta name='viewport' content='width=device-width'><title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body><header><h1>{_e(title)}</h1>",
    ]
    data, model = summary.get("data", {}), summary.get("model", {})
    if data:
        parts.append(
            f"<p>Data: <code>{_e(data.get('path', ''))}</code> ({_e(data.get('kind', ''))}); "
            f"{_e(data.get('mapping', ''))}.</p>"
        )
    if model:
        parts.append(
            f"<p>Model <code>{_e(model.get('spec', ''))}</code> (weights: {_e(model.get('weights', ''))}); "
            f"{_e(model.get('preprocess', ''))}; maps explain the "
            f"{'true class' if model.get('target') == 'label' else 'predicted class'}.</p>"
        )
    parts.append(
        f"<p>{summary['images']} images, {summary['errors']} unreadable, methods "
        f"{_e(', '.join(summary['methods']))}; {len(summary['findings'])} finding(s).</p></header>"
    )

    parts.append("<h2 id='findings'>Findings</h2>")
    if not summary["findings"]:
        parts.append(
            "<div class='none'>No class shows a fixed-position cue, focus outside its objects or a "
            "split into strategies: the maps follow the content of their images.</div>"
        )
    for f in summary["findings"]:
        share = f.get("share") or 0.0
        parts.append(
            f"<section class='finding' data-kind='{_e(f['kind'])}' data-class='{_e(f['class'])}'>"
            f"<h3>{_e(f['class'])}: {_e(_KIND.get(f['kind'], f['kind']))} "
            f"<span class='tag'>{_e(f['method'])}</span></h3>"
            f"<div>{100 * share:.0f}% of the class's images"
            f"<span class='share'><span style='width:{100 * share:.0f}%'></span></span></div>"
            f"<p class='why'>{_e(f.get('why', ''))}.</p><div class='row'>"
        )
        parts.append(_heat(f.get("mean_map"), "mean map of the flagged images", 120))
        for p in f["examples"]:
            parts.append(_overlay(p, maps.get((p, f["method"])), preprocess, os.path.basename(p)))
        parts.append(f"</div>{_evidence(f['evidence'])}</section>")

    parts.append(
        "<h2 id='classes'>Classes</h2><table><thead><tr><th>class</th>"
        "<th class='num'>images</th><th class='num'>accuracy</th>"
    )
    for m in summary["methods"]:
        parts.append(f"<th>{_e(m)}: mean map</th><th>{_e(m)}: groups (share)</th>")
    parts.append("</tr></thead><tbody>")
    for c in summary["per_class"]:
        acc = c.get("accuracy")
        flags = "".join(
            f"<span class='tag'>{_e(_KIND.get(f['kind'], f['kind']))}</span>" for f in c["findings"]
        )
        parts.append(
            f"<tr><td>{_e(c['class'])}{flags}</td><td class='num'>{c.get('count', 0)}</td>"
            f"<td class='num'>{'–' if acc is None else f'{100 * acc:.1f}%'}</td>"
        )
        for m in summary["methods"]:
            info = c["methods"].get(m) or {}
            parts.append(
                f"<td>{_heat(info.get('mean_map'), info.get('layer', ''), 72)}</td><td><div class='row'>"
            )
            for g in info.get("groups", []):
                parts.append(_heat(g["mean_map"], f"{100 * (g['share'] or 0):.0f}%", 56))
            parts.append("</div></td>")
        parts.append("</tr>")
    parts.append("</tbody></table>")

    parts.append("<h2 id='distributions'>Distributions</h2>")
    for m in summary["methods"]:
        parts.append(f"<h3>{_e(m)}</h3>{_plots(summary, m)}")
    th = summary.get("thresholds", {})
    parts.append(
        "<h2>How findings are made</h2><p class='muted'>A map follows its image when it peaks on the "
        "object (masks or boxes) or near the image's most conspicuous region. Fixed-position cue: at "
        f"least {_num(th.get('cue_share'))} of a class's maps peak within {_num(th.get('hotspot_radius'))} "
        "of one place without following their images, and gather there "
        f"{_num(th.get('content_margin'))} more often than the content does. Off the object: at least "
        f"{_num(th.get('off_share'))} of the maps miss the object. Split: a spectral group (SpRAy) of at "
        f"least {_num(th.get('split_min_share'))} of the class in which {_num(th.get('split_in_group'))} "
        f"show either, against at most {_num(th.get('split_rest'))} of the other maps.</p>"
    )
    parts.append("</body></html>")
    return "".join(parts)
