"""``camlens explain``: maps of images (files or folders), drawn on the original photos.

The run: check everything that can be checked before the model loads (options, methods, images'
headers, outputs that exist), load the model, then per batch load the images, explain them with
:func:`camlens.pipeline.explain_batch` and write each image's outputs at once (atomically). An
image that cannot be read is skipped and reported at the end (exit 2), after the others were
written. With ``--shared-scale`` all maps are computed first (keeping only the small raw maps) and
written in a second pass, since the scale depends on every image.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camlens.cli.commands import Command
from camlens.cli.common import (
    add_model_args,
    check_colormap,
    load_model,
    method_names,
    positive_int,
    progress,
    say,
    summary_of,
    unit_float,
    warn,
    warn_random_weights,
)
from camlens.cli.errors import CLIError, PartialFailure, one_line

if TYPE_CHECKING:
    from camlens.images import ImageBatch
    from camlens.models import LoadedModel
    from camlens.pipeline import Explanation, TargetChoice
    from camlens.report import Row

DEFAULT_OUT = "camlens-out"

EPILOG = """\
outputs:
  In --out (default: camlens-out/), per image and method:
    <stem>.<method>.png  the map on the original photo, at its full size (the
                         part the model did not see is grey; the crop is
                         outlined), with a legend: method, layer, class,
                         score and a colour bar (--no-legend: without).
                         --overlay-size input: on the model's view instead;
                         --overlay-size N: longer side at most N px.
    <stem>.<method>.npz  map (normalised, input size), raw (layer
                         resolution), score, target, label, probability,
                         method, layer, scale, and the geometry:
                         original_size, input_size, box (the part of the
                         original the model saw, in its pixels).
  --format png (default), npz or both. With --target top-K: one file per rank,
  <stem>.<method>.top<R>-<class>.<ext>. After the run, one line per image:
  the predicted class and probability and the files written (not with -q).
  Existing files are not overwritten without --force (checked before any
  work); files are written complete or not at all.

scale:
  Each map is normalised on its own: 0 is its lowest value, 1 its highest,
  so colours do not compare across images. --shared-scale puts all maps of a
  method in the run on one scale.

pre-processing:
  torchvision and timm models use their weights' own evaluation transforms
  (resize, centre crop), hf models their image processor, the demo model its
  own size. Other models use their input_size / mean / std attributes if
  present, else 224x224 and the ImageNet mean and std. --size, --mean and
  --std override these (--size resizes without cropping).

weights:
  torchvision, timm and hf pretrained weights are downloaded by those
  libraries on first use (cached). Offline, pass a local state dict
  (torch.save(model.state_dict(), FILE)) with --weights FILE.

examples:
  camlens explain photo.jpg --model torchvision:resnet50
  camlens explain imgs/ --model timm:convnext_tiny --method gradcam,scorecam \\
      --target top-3 --report report.html --format both
"""


def _overlay_size(text: str) -> str | int:
    if text in ("original", "input"):
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use original, input or a number of pixels"
        ) from None


def _max_pixels(text: str) -> int | None:
    return None if text.lower() == "none" else positive_int(text)


def configure(p: argparse.ArgumentParser) -> None:
    """Paths, the model, the maps and the outputs."""
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    add_model_args(p)
    _map_args(p.add_argument_group("maps"))
    _output_args(p.add_argument_group("output"))


def _map_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--layer",
        "-l",
        metavar="NAME",
        help="layer to explain (default: the last spatial layer; see `camlens layers`)",
    )
    g.add_argument(
        "--method",
        action="append",
        metavar="NAME",
        help="method (repeatable or comma-separated; 'all' for every one; default: gradcam; see "
        "`camlens methods`)",
    )
    g.add_argument(
        "--target",
        "-t",
        metavar="C|top-K",
        help="class to explain: an index or a class name, or top-K for one map per class rank "
        "(default: the top class)",
    )
    g.add_argument(
        "--shared-scale",
        action="store_true",
        help="one colour scale for all maps of a method in this run (default: each map normalised "
        "on its own)",
    )
    g.add_argument(
        "--batch-size", type=positive_int, default=8, help="images per batch (default: %(default)s)"
    )


def _output_args(g: argparse._ArgumentGroup) -> None:
    from camlens.images import DEFAULT_MAX_PIXELS

    g.add_argument(
        "--out",
        "-o",
        default=DEFAULT_OUT,
        metavar="DIR",
        help="output folder (default: %(default)s/)",
    )
    g.add_argument(
        "--format",
        choices=("png", "npz", "both"),
        default="png",
        help="overlay image, arrays, or both (default: png)",
    )
    g.add_argument(
        "--overlay-size",
        type=_overlay_size,
        default="original",
        metavar="original|input|N",
        help="overlays on the full original (default), on the model's input view, or the original "
        "with its longer side at most N px",
    )
    g.add_argument("--no-legend", action="store_true", help="overlays without the legend strip")
    g.add_argument("--report", metavar="FILE", help="also write a self-contained HTML report")
    g.add_argument(
        "--colormap", default="jet", help="matplotlib colour map of the overlays (default: jet)"
    )
    g.add_argument(
        "--alpha",
        type=unit_float,
        default=0.5,
        help="weight of the heat map in the overlay, 0 to 1 (default: 0.5)",
    )
    g.add_argument(
        "--max-pixels",
        type=_max_pixels,
        default=DEFAULT_MAX_PIXELS,
        metavar="N|none",
        help="refuse images larger than N pixels, a guard against decompression bombs "
        f"(default: {DEFAULT_MAX_PIXELS}, Pillow's)",
    )
    g.add_argument("--force", "-f", action="store_true", help="overwrite existing outputs")


# --------------------------------------------------------------------------- the plan


@dataclass
class _Plan:
    """Everything decided before the model loads."""

    images: list[Path]
    sizes: dict[Path, tuple[int, int]]
    methods: list[str]
    out: Path
    report: Path | None
    formats: tuple[str, ...]
    stems: dict[Path, str] = field(default_factory=dict)


def _looks_like_model(raw: str) -> bool:
    """Whether a path that does not exist is a model spec given where an image was expected."""
    from camlens.models.registry import model_sources

    kind, sep, name = raw.partition(":")
    src = model_sources().get(kind)
    if src is None or src.catch_all:
        return False
    return (src.bare and not sep) or (not src.bare and bool(sep and name))


def _plan(args: argparse.Namespace) -> _Plan:
    """Check options, inputs and outputs without torch; raise before any work is done."""
    from camlens import io
    from camlens.images import find_images, probe_image

    methods = method_names(args.method, "gradcam")
    for raw in args.paths:
        if not Path(raw).exists() and _looks_like_model(raw):
            raise CLIError(
                f"no such file or folder: {raw!r}; to choose the model, pass --model {raw} "
                "before or after the image paths"
            )
    images = find_images(args.paths)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {str(out)!r} is a file, not a folder; choose a folder")
    report = Path(args.report) if args.report else None
    sizes = {p: probe_image(p, max_pixels=args.max_pixels) for p in images}
    stems: dict[str, Path] = {}
    for p in images:
        if p.stem in stems:
            raise CLIError(
                f"two inputs would write the same outputs ({stems[p.stem]} and {p}, stem "
                f"{p.stem!r}); rename one or explain them in separate runs with different --out"
            )
        stems[p.stem] = p
    formats = ("png", "npz") if args.format == "both" else (args.format,)
    plan = _Plan(images, sizes, methods, out, report, formats, {p: p.stem for p in images})
    files, patterns = [], []
    top_k = _top_k(args.target)
    for p in images:
        for m in methods:
            for ext in formats:
                if top_k is None:
                    files.append(out / f"{p.stem}.{m}.{ext}")
                else:
                    patterns += [out / f"{p.stem}.{m}.top{r}-*.{ext}" for r in range(1, top_k + 1)]
    io.check_outputs([*files, *([report] if report else [])], args.force, patterns)
    check_colormap(args.colormap)
    return plan


def _top_k(target: str | None) -> int | None:
    """K of ``--target top-K`` (syntax only; the range is checked against the model later)."""
    import re

    if target is None:
        return None
    m = re.fullmatch(r"top[- ]?(\d+)", target.strip().lower())
    if m is None:
        if target.strip().lower().startswith("top"):
            raise CLIError(f"--target {target!r} is not understood; use top-K, e.g. top-3")
        return None
    return max(1, int(m.group(1)))


# --------------------------------------------------------------------------- writing


@dataclass
class _Output:
    """What an image produced: the terminal line and the report row."""

    line: str
    row: Row | None


class _Writer:
    """Writes each image's files at once and keeps the terminal lines and report thumbnails."""

    def __init__(self, args: argparse.Namespace, plan: _Plan) -> None:
        self.args = args
        self.plan = plan
        self.outputs: list[_Output] = []
        self.written = 0
        self.layers: dict[str, str] = {}
        self.seconds: dict[str, float] = {}

    def write(self, ex: Explanation, paths: list[Path]) -> None:
        for m, r in ex.results.items():
            self.layers.setdefault(m, r[0].layer)
            self.seconds[m] = self.seconds.get(m, 0.0) + ex.seconds.get(m, 0.0)
        for i, path in enumerate(paths):
            files: list[Path] = []
            cells = []
            for m in ex.methods:
                for rank in range(1, len(ex.results[m]) + 1):
                    written, cell = self._one(ex, i, m, rank, path)
                    files += written
                    cells.append(cell)
            self.outputs.append(
                _Output(self._line(ex, i, path, files), self._row(ex, i, path, cells))
            )

    def _one(
        self, ex: Explanation, i: int, m: str, rank: int, path: Path
    ) -> tuple[list[Path], Any]:
        from camlens import io, viz
        from camlens.pipeline import file_name

        r = ex.results[m][rank - 1]
        c = int(r.targets[i]) if r.targets is not None else None
        label = ex.model.class_name(c) if c is not None else ""
        top = ex.target.top_k is not None
        stem = self.plan.stems[path]
        files = []
        png = self.plan.out / file_name(stem, m, "png", rank if top else None, label)
        if "png" in self.plan.formats:
            img = ex.overlay(
                i, m, rank, legend=not self.args.no_legend, size=self.args.overlay_size
            )
            io.atomic_write_bytes(png, viz.to_png_bytes(img))
            files.append(png)
        if "npz" in self.plan.formats:
            npz = self.plan.out / file_name(stem, m, "npz", rank if top else None, label)
            io.save_npz(npz, **self._arrays(ex, i, m, rank, path, label))
            files.append(npz)
        self.written += len(files)
        cell = None
        if self.plan.report is not None:
            cell = self._cell(ex, i, m, rank, png if "png" in self.plan.formats else None)
        return files, cell

    def _arrays(
        self, ex: Explanation, i: int, m: str, rank: int, path: Path, label: str
    ) -> dict[str, Any]:
        import numpy as np

        r = ex.results[m][rank - 1]
        probs = ex.probabilities()
        c = int(r.targets[i]) if r.targets is not None else -1
        geo = ex.batch.geometry[i]
        arrays: dict[str, Any] = {
            "map": ex.maps(m, rank)[i].float(),
            "raw": r.raw[i].float(),
            "score": np.float32(float(r.scores[i])),
            "target": np.int64(c),
            "label": label,
            "probability": np.float32(
                float(probs[i, c]) if probs is not None and c >= 0 else float("nan")
            ),
            "method": r.method,
            "layer": r.layer,
            "scale": "shared" if ex.scale is not None else "per-image",
            "image": str(path),
        }
        if ex.scale is not None:
            arrays["scale_range"] = np.asarray(ex.scale[m], np.float32)
        if r.input_maps is not None:
            arrays["input_map"] = r.input_maps[i].float()
        if geo is not None:
            arrays |= {k: np.asarray(v) for k, v in geo.as_dict().items()}
        return arrays

    def _cell(self, ex: Explanation, i: int, m: str, rank: int, png: Path | None) -> Any:
        from camlens.report import THUMB_PX, Cell, thumb

        overlay = ex.overlay(i, m, rank, legend=False, size=THUMB_PX)
        legend = ex.legend(i, m, rank)
        caption = " · ".join(p for p in (legend.target, legend.score) if p)
        href = os.path.relpath(png, self.plan.report.parent) if png and self.plan.report else None
        return Cell(thumb(overlay), caption=caption, tooltip=legend.title(), href=href)

    def _line(self, ex: Explanation, i: int, path: Path, files: list[Path]) -> str:
        pred = ex.predicted(i)
        what = f": {pred[1]} ({100 * pred[2]:.1f}%)" if pred else ""
        return f"{path.name}{what} -> {_files_text(files)}"

    def _row(self, ex: Explanation, i: int, path: Path, cells: list[Any]) -> Row | None:
        if self.plan.report is None:
            return None
        from camlens.report import THUMB_PX, Row, thumb

        pred = ex.predicted(i)
        geo = ex.batch.geometry[i]
        return Row(
            path.name,
            thumb(ex.batch.originals[i], THUMB_PX),
            cells,
            predicted=pred[1] if pred else None,
            probability=pred[2] if pred else None,
            note=geo.describe() if geo is not None else "",
            href=os.path.relpath(path, self.plan.report.parent),
        )


def _files_text(files: list[Path]) -> str:
    """``"o/a.gradcam.{png,npz}, o/a.eigencam.{png,npz}"``: files that differ only in their ending
    are written once, with the endings in braces."""
    endings: dict[str, list[str]] = {}
    for f in files:
        endings.setdefault(str(f.with_suffix("")), []).append(f.suffix[1:])
    parts = [
        f"{base}.{exts[0]}" if len(exts) == 1 else f"{base}.{{{','.join(exts)}}}"
        for base, exts in endings.items()
    ]
    return ", ".join(parts) or "no file"


# --------------------------------------------------------------------------- running


def _load(
    paths: list[Path], lm: LoadedModel, max_pixels: int | None, failures: list
) -> tuple[list[Path], ImageBatch | None]:
    """The batch of the images that load; the others go to ``failures`` as ``(path, reason)``."""
    from camlens.images import load_image, load_images

    ok, pils = [], []
    for p in paths:
        try:
            pils.append(load_image(p, max_pixels=max_pixels))
            ok.append(p)
        except (ValueError, OSError) as exc:
            failures.append((p, one_line(exc)))
    if not ok:
        return [], None
    names = [p.name for p in ok]
    return ok, load_images(pils, lm.preprocess, device=lm.device, names=names, max_pixels=None)


def _light(ex: Explanation) -> Explanation:
    """The explanation without its images and input-size maps (what a shared-scale pass keeps)."""
    results = {
        m: [dataclasses.replace(r, maps=r.maps[:, :0], input_maps=None, per_layer={}) for r in rs]
        for m, rs in ex.results.items()
    }
    return dataclasses.replace(ex, results=results, batch=None)  # type: ignore[arg-type]


def _note_demo(lm: LoadedModel, plan: _Plan) -> None:
    """One line when the bundled demo model explains images that are not demo images."""
    from camlens.demo import CLASSES
    from camlens.models import parse_spec

    if parse_spec(lm.spec)[0] != "demo":
        return
    h, w = lm.preprocess.size
    other = [p for p in plan.images if plan.sizes[p] != (w, h)]
    if other:
        which = (
            f"{other[0].name} is not a demo image"
            if len(plan.images) == 1
            else f"{len(other)} of {len(plan.images)} inputs (e.g. {other[0].name}) are not demo images"
        )
        warn(
            f"{which}: "
            f"the bundled demo model knows only {w}x{h} synthetic shapes ({', '.join(CLASSES)}) and "
            "explains anything in those terms; pass --model for a real model, e.g. --model "
            "torchvision:resnet50"
        )


def _methods(lm: LoadedModel, plan: _Plan, layer: str | None) -> dict[str, Any]:
    from camlens.methods import get_method
    from camlens.pipeline import build_method

    cams = {}
    for m in plan.methods:
        if layer is not None and not getattr(get_method(m), "takes_layer", True):
            warn(f"{m} explains the input itself; --layer {layer} does not apply to it")
        cams[m] = build_method(m, lm.model, layer)
    return cams


def _explain_all(
    args: argparse.Namespace, plan: _Plan, lm: LoadedModel, target: TargetChoice, writer: _Writer
) -> list[tuple[Path, str]]:
    """Explain every batch; write at once, or (shared scale) after all maps are known."""
    from camlens.pipeline import explain_batch, shared_range

    cams = _methods(lm, plan, args.layer)
    failures: list[tuple[Path, str]] = []
    kept: list[tuple[list[Path], Explanation]] = []
    ranges: dict[str, tuple[float, float]] = {}
    quiet = getattr(args, "quiet", False)
    with progress(len(plan.images), "explain", enabled=not quiet and len(plan.images) > 1) as up:
        for start in range(0, len(plan.images), args.batch_size):
            chunk = plan.images[start : start + args.batch_size]
            paths, batch = _load(chunk, lm, args.max_pixels, failures)
            if batch is not None:
                ex = explain_batch(
                    lm, cams, batch, target, colormap=args.colormap, alpha=args.alpha
                )
                if args.shared_scale:
                    for m, rs in ex.results.items():
                        lo, hi = shared_range(rs)
                        old = ranges.get(m, (lo, hi))
                        ranges[m] = (min(lo, old[0]), max(hi, old[1]))
                    kept.append((paths, _light(ex)))
                else:
                    writer.write(ex, paths)
            up(len(chunk))
    if kept:
        counts = {m: sum(len(p) * len(ex.results[m]) for p, ex in kept) for m in cams}
        scope = {m: f"all {counts[m]} {m} maps of this run" for m in cams}
        with progress(len(kept), "write", enabled=not quiet and len(kept) > 1, unit="batch") as up:
            for paths, ex in kept:
                again, batch = _load(paths, lm, args.max_pixels, failures)
                if batch is None or again != paths:
                    raise CLIError(
                        "an input changed while camlens was running (it could no longer be read); "
                        "run again without --shared-scale, or on unchanging files"
                    )
                full = dataclasses.replace(ex, batch=batch, scale=ranges, scale_scope=scope)
                writer.write(full, paths)
                up(1)
    return failures


def _write_report(
    args: argparse.Namespace,
    plan: _Plan,
    lm: LoadedModel,
    target: TargetChoice,
    writer: _Writer,
    failures: list[tuple[Path, str]],
) -> None:
    from camlens import io, viz
    from camlens.report import Column, SummaryRow, render

    assert plan.report is not None
    ranks = target.ranks
    columns = [
        Column(
            f"{m}:{r}",
            f"{m} at {writer.layers[m]}" if m in writer.layers else m,
            summary_of(m),
            group=m,
            rank=r if target.top_k else None,
        )
        for m in plan.methods
        for r in range(1, ranks + 1)
    ]
    rows = [o.row for o in writer.outputs if o.row is not None]
    summary = [
        SummaryRow(
            m,
            writer.layers.get(m, ""),
            None,
            1000 * writer.seconds[m] / len(rows) if rows and m in writer.seconds else None,
            summary_of(m),
        )
        for m in plan.methods
    ]
    h, w = lm.preprocess.size
    scale = (
        viz.shared_scale_text("all maps of each method in this run") if args.shared_scale else None
    )
    html = render(
        "camlens report",
        columns,
        rows,
        summary,
        subtitle=[
            f"Model {lm.spec} (weights: {lm.weights}) on {lm.device}; input {h}x{w}: "
            f"{lm.preprocess.describe()}.",
            f"Maps explain {target.describe()} of each image.",
        ],
        notes=[
            "Each map is drawn on the original image where the model saw it; the part outside the "
            "model's crop is grey (not explained).",
            f"Files: {plan.out}/<image>.<method>.png (click a map).",
        ],
        colormap=args.colormap,
        scale=scale,
        failures=[(p.name, why) for p, why in failures],
    )
    io.atomic_write_text(plan.report, html)


def run(args: argparse.Namespace) -> int:
    """``camlens explain``: see the module docstring."""
    from camlens.pipeline import parse_target

    plan = _plan(args)
    lm = load_model(args)
    warn_random_weights(lm)
    target = parse_target(args.target, lm.classes, what="--target")
    _note_demo(lm, plan)
    writer = _Writer(args, plan)
    failures = _explain_all(args, plan, lm, target, writer)
    if plan.report is not None:
        _write_report(args, plan, lm, target, writer, failures)
    for o in writer.outputs:
        say(args, o.line)
    if plan.report is not None:
        say(args, f"report: {plan.report}")
    if failures:
        listed = "; ".join(f"{p.name} ({why})" for p, why in failures[:5])
        more = f" and {len(failures) - 5} more" if len(failures) > 5 else ""
        raise PartialFailure(
            f"{len(failures)} of {len(plan.images)} input(s) failed: {listed}{more}; the outputs of "
            f"the other {len(plan.images) - len(failures)} were written to {plan.out}/"
        )
    return 0


COMMAND = Command(
    name="explain",
    help="write class activation maps of images, drawn on the original photos",
    description="Explain images (files or folders) with one or more methods. Each map is drawn on "
    "the full-resolution original where the model saw it, with a legend.",
    configure=configure,
    run=run,
    order=20,
    epilog=EPILOG,
)
