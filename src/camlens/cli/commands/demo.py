"""``camlens demo``: every method on sample images of the demo data set, with an HTML report."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camlens.cli.commands import Command
from camlens.cli.common import (
    method_names,
    positive_int,
    progress,
    summary_of,
    warn,
    warn_random_weights,
)
from camlens.cli.errors import CLIError, one_line

if TYPE_CHECKING:
    import torch

    from camlens.images import ImageBatch
    from camlens.models import LoadedModel
    from camlens.pipeline import Explanation
    from camlens.report import SummaryRow

DEFAULT_OUT = "camlens-demo"


def configure(p: argparse.ArgumentParser) -> None:
    """``--out``, ``--n``, ``--seed``, ``--method``, ``--weights``, ``--device``, ``--force``."""
    p.add_argument(
        "--out",
        "-o",
        default=DEFAULT_OUT,
        metavar="DIR",
        help="output folder (default: %(default)s/)",
    )
    p.add_argument(
        "--n", type=positive_int, default=6, help="number of images (default: %(default)s)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the sample images (default: %(default)s)"
    )
    p.add_argument(
        "--method",
        action="append",
        metavar="NAME",
        help="methods to run (repeatable or comma-separated; default: all)",
    )
    p.add_argument(
        "--weights",
        "-w",
        metavar="FILE|none",
        help="demo model weights (default: the bundled ones; 'none' for random weights)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--force", "-f", action="store_true", help="overwrite existing outputs")


def _batch(lm: LoadedModel, images: torch.Tensor, names: list[str]) -> ImageBatch:
    """The demo images as a batch: each image is its own original (no resize, no crop)."""
    import torch

    from camlens import viz
    from camlens.images import Geometry, ImageBatch

    views = images
    if tuple(views.shape[2:]) != lm.preprocess.size:
        views = torch.nn.functional.interpolate(
            views, size=lm.preprocess.size, mode="bilinear", align_corners=False
        ).clamp(0, 1)
    h, w = images.shape[2:]
    geo = [Geometry((h, w), lm.preprocess.size, (0.0, 0.0, float(w), float(h))) for _ in names]
    x = lm.preprocess.normalize(views).to(lm.device)
    originals = [viz.to_pil(im) for im in images]
    return ImageBatch(x, views, originals, list(geo), names, lm.preprocess)


#: How the demo marks a method made for another kind of model than the demo CNN.
NOT_FOR = "only for"


def _run_methods(
    names: list[str], lm: LoadedModel, batch: ImageBatch, quiet: bool
) -> dict[str, Explanation | str]:
    """Each method's explanation of the batch, or its error (a method that fails does not end the demo)."""
    from camlens.methods import get_method
    from camlens.pipeline import TargetChoice, build_method, explain_batch

    out: dict[str, Explanation | str] = {}
    with progress(len(names), "methods", enabled=not quiet, unit="method") as update:
        for m in names:
            try:
                cams = {m: build_method(m, lm.model)}
                out[m] = explain_batch(lm, cams, batch, TargetChoice())
            except ValueError as exc:
                kind = getattr(get_method(m), "model_kind", "any")
                if kind == "any":  # a method for any model failed: say so
                    warn(f"{m} failed on the demo model: {type(exc).__name__}: {one_line(exc)}")
                    out[m] = one_line(exc)
                else:  # a method for another kind of model (LeGrad: transformers) does not apply
                    out[m] = f"{NOT_FOR} {kind} models"
            except Exception as exc:
                warn(f"{m} failed on the demo model: {type(exc).__name__}: {one_line(exc)}")
                out[m] = one_line(exc)
            update(1)
    return out


def _energies(ex: Explanation, masks: torch.Tensor) -> list[float]:
    from camlens.maps import upsample
    from camlens.report import energy_inside

    maps = ex.maps()
    if maps.shape[-2:] != masks.shape[-2:]:
        maps = upsample(maps, masks.shape[-2:])
    return [energy_inside(maps[i].cpu(), masks[i]) for i in range(len(masks))]


def _summary(m: str, got: Explanation | str, energy: list[float], n: int) -> SummaryRow:
    from camlens.report import SummaryRow

    if isinstance(got, str):
        return SummaryRow(m, "", None, None, got if got.startswith(NOT_FOR) else f"failed: {got}")
    vals = [e for e in energy if math.isfinite(e)]
    mean = sum(vals) / len(vals) if vals else None
    layer = got.results[m][0].layer
    return SummaryRow(m, layer, mean, 1000 * got.seconds[m] / n, summary_of(m))


def _render(
    m: str, ex: Explanation, samples: list[str], masks: Any, labels: Any
) -> tuple[list[float], list[tuple[Any, Any, str, str]]]:
    """A method's energies and, per image, ``(overlay with legend, thumbnail, caption, tooltip)``."""
    from camlens.demo import CLASSES
    from camlens.report import thumb

    energy = _energies(ex, masks)
    out = []
    for i in range(len(samples)):
        e = energy[i]
        tip = f"{m} on sample {i}: " + (
            f"{100 * e:.0f}% of the map on the {CLASSES[int(labels[i])]}"
            if math.isfinite(e)
            else "empty map"
        )
        caption = " · ".join(p for p in (ex.target_text(i, m), ex.score_text(i, m)) if p)
        out.append((ex.overlay(i, m), thumb(ex.overlay(i, m, legend=False)), caption, tip))
    return energy, out


def _write(
    out: Path, samples: list[str], names: list[str], got: dict[str, Any], masks: Any, labels: Any
) -> tuple[list[list[Any]], list[SummaryRow]]:
    """Write every overlay (with its legend); return the report cells and the summary.

    A method whose maps cannot be drawn is reported as failed, and none of its files is written.
    """
    from camlens import io, viz
    from camlens.report import Cell

    cells: list[list[Any]] = [[] for _ in samples]
    summary = []
    for m in names:
        ex = got[m]
        drawn: list[tuple[Any, Any, str, str]] = []
        energy: list[float] = []
        if not isinstance(ex, str):
            try:
                energy, drawn = _render(m, ex, samples, masks, labels)
            except Exception as exc:
                warn(f"{m}: its maps cannot be drawn: {type(exc).__name__}: {one_line(exc)}")
                ex = got[m] = one_line(exc)
        summary.append(_summary(m, ex, energy, len(samples)))
        for i, s in enumerate(samples):
            if isinstance(ex, str):
                cells[i].append(None)
                continue
            full, small, caption, tip = drawn[i]
            path = out / f"{s}.{m}.png"
            io.atomic_write_bytes(path, viz.to_png_bytes(full))
            cells[i].append(Cell(small, caption, energy[i], tip, href=path.name))
    return cells, summary


def run(args: argparse.Namespace) -> int:
    """Explain sample images with every method; write overlays and ``report.html``."""
    from camlens import io

    names = method_names(args.method, "all")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {str(out)!r} is a file, not a folder; choose a folder")
    from camlens.demo import CLASSES, make_dataset

    images, labels, masks = make_dataset(args.n, args.seed)
    samples = [f"{i:02d}_{CLASSES[int(y)]}" for i, y in enumerate(labels)]
    report = out / "report.html"
    planned = [report] + [out / f"{s}.{m}.png" for s in samples for m in ["input", *names]]
    io.check_outputs(planned, args.force)

    from camlens.cli.common import device
    from camlens.models import load_model

    lm = load_model("demo", args.weights, device=device(args.device))
    warn_random_weights(lm)
    batch = _batch(lm, images, samples)
    quiet = getattr(args, "quiet", False)
    got = _run_methods(names, lm, batch, quiet)
    cells, summary = _write(out, samples, names, got, masks, labels)
    rows = _rows(out, samples, batch, cells, got, labels)
    _report(args, report, names, rows, summary, lm, masks)
    if not quiet:
        width = max(len(m) for m in names) + 2
        print(f"{'method':<{width}}{'energy on object':>18}{'ms / image':>12}")
        for srow in summary:
            energy_text = f"{srow.mean_energy:.3f}" if srow.mean_energy is not None else "–"
            ms = f"{srow.ms_per_image:.1f}" if srow.ms_per_image is not None else "failed"
            if srow.ms_per_image is None and srow.description.startswith(NOT_FOR):
                ms = "n/a"
            print(f"{srow.title:<{width}}{energy_text:>18}{ms:>12}")
        print(f"report: {report}")
    return 0


def _rows(
    out: Path,
    samples: list[str],
    batch: ImageBatch,
    cells: list[list[Any]],
    got: dict[str, Any],
    labels: Any,
) -> list[Any]:
    from camlens import io, viz
    from camlens.demo import CLASSES
    from camlens.report import Row, thumb

    ex = next((e for e in got.values() if not isinstance(e, str)), None)
    rows = []
    for i, s in enumerate(samples):
        io.atomic_write_bytes(out / f"{s}.input.png", viz.to_png_bytes(batch.originals[i]))
        pred = ex.predicted(i) if ex is not None else None
        rows.append(
            Row(
                f"#{i}",
                thumb(batch.originals[i]),
                cells[i],
                predicted=pred[1] if pred else None,
                probability=pred[2] if pred else None,
                true=CLASSES[int(labels[i])],
                href=f"{s}.input.png",
            )
        )
    return rows


def _report(
    args: argparse.Namespace,
    report: Path,
    names: list[str],
    rows: list[Any],
    summary: list[SummaryRow],
    lm: LoadedModel,
    masks: Any,
) -> None:
    from camlens import io
    from camlens.report import Column, render

    correct = sum(1 for r in rows if r.predicted == r.true)
    area = float(masks.float().mean())
    h, w = masks.shape[-2:]
    html = render(
        "camlens demo",
        [Column(m, m, summary_of(m), group=m) for m in names],
        rows,
        summary,
        subtitle=[
            f"{len(rows)} synthetic images (camlens.demo.make_dataset(n={args.n}, seed={args.seed}), "
            f"{h}x{w}); the demo model (weights: {lm.weights}; {correct} of {len(rows)} classified "
            f"correctly) on {lm.device}.",
            "Each map explains the predicted class. The bar under a map is its energy on the object: "
            "sum(map x mask) / sum(map) over the true object's mask; a map that ignores the image "
            f"scores about the object's area, {100 * area:.0f}% here.",
        ],
        notes=[
            "Time per image: the method's wall time on the whole batch divided by its size.",
            f"Files: {args.out}/NN_class.METHOD.png for every map (with its legend), "
            "NN_class.input.png for the inputs.",
        ],
    )
    io.atomic_write_text(report, html)


COMMAND = Command(
    name="demo",
    help="explain sample images with every method and write an HTML report",
    description="Generate sample images of the bundled demo data set, explain them with every method "
    "(the predicted class), and write the overlays and a self-contained report.html that shows each "
    "map with the predicted and true class and how much of the map falls on the true object.",
    configure=configure,
    run=run,
    order=10,
)
