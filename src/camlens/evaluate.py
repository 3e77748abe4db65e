"""The benchmark harness: every method on the demo data set, scored by the metrics of the literature.

:func:`run` computes, for every registered method (``camlens.METHODS`` at call time, so methods
registered later are included) and for two baselines that look at nothing (a uniform map and a
centred Gaussian), on images with ground-truth masks and with the true label as target:

======================  =================================================================  =========
column                  metric                                                             better
======================  =================================================================  =========
Pointing game           :func:`camlens.metrics.pointing_game` (Zhang et al. 2016)          higher
Energy PG               :func:`camlens.metrics.energy_pointing_game` (Wang et al. 2020)    higher
Box acc.                :func:`camlens.metrics.box_localization`, gt box from the mask     higher
Deletion AUC            :func:`camlens.metrics.deletion` (Petsiuk et al. 2018)             lower
Insertion AUC           :func:`camlens.metrics.insertion` (Petsiuk et al. 2018)            higher
Avg drop %              :func:`camlens.metrics.average_drop` (Chattopadhay et al. 2018)    lower
ms / image              wall time of the method alone (maps of a batch / batch size)
======================  =================================================================  =========

Example:
    >>> from camlens.evaluate import run, main_table
    >>> report = run(n=64)                      # doctest: +SKIP
    >>> print(main_table(report))               # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from camlens import metrics
from camlens.methods import METHODS, get_method

__all__ = [
    "BASELINES",
    "COLUMNS",
    "EvaluationReport",
    "EvaluationRow",
    "baseline_maps",
    "main_table",
    "run",
]

#: Report columns: attribute name, header, whether higher is better (``None``: not a score).
COLUMNS: tuple[tuple[str, str, bool | None], ...] = (
    ("pointing_game", "Pointing game ↑", True),
    ("energy_pointing_game", "Energy PG ↑", True),
    ("box_accuracy", "Box acc. ↑", True),
    ("deletion_auc", "Deletion AUC ↓", False),
    ("insertion_auc", "Insertion AUC ↑", True),
    ("average_drop", "Avg drop % ↓", False),
    ("ms_per_image", "ms / image", None),
)

BASELINES: tuple[str, ...] = ("baseline: uniform", "baseline: centre gaussian")

Progress = Callable[[str, int, int], None]


#: How a row marks a method made for another kind of model than the one evaluated.
NOT_FOR = "only for"


@dataclass(frozen=True)
class EvaluationRow:
    """One method (or baseline) of a report; every score is the mean over the images (``NaN`` if it
    failed).

    Attributes:
        name: the method's registry name, or ``"baseline: ..."``.
        kind: ``"method"`` or ``"baseline"``.
        pointing_game: hit rate in ``[0, 1]``.
        energy_pointing_game: share of the map's energy on the object, ``[0, 1]``.
        box_accuracy: share of images whose box has IoU >= 0.5 with the object's box.
        deletion_auc: in ``[0, 1]`` (probabilities), lower is better.
        insertion_auc: in ``[0, 1]``, higher is better.
        average_drop: in percent, ``[0, 100]``, lower is better.
        ms_per_image: milliseconds per image to compute the maps (``None`` for baselines).
        empty_maps: number of images whose map was all zero (the method warned).
        error: why the method could not run on this model (then every score is ``NaN``).
    """

    name: str
    kind: str
    pointing_game: float = math.nan
    energy_pointing_game: float = math.nan
    box_accuracy: float = math.nan
    deletion_auc: float = math.nan
    insertion_auc: float = math.nan
    average_drop: float = math.nan
    ms_per_image: float | None = None
    empty_maps: int = 0
    error: str | None = None


@dataclass(frozen=True)
class EvaluationReport:
    """What :func:`run` returns: one :class:`EvaluationRow` per method and baseline, and the settings.

    Attributes:
        rows: methods first (in ``camlens.METHODS`` order), then the baselines.
        settings: model, device, ``n``, ``seed``, image size, tolerance, steps and baselines used.
        per_sample: row name -> metric name -> ``(N,)`` per-image values (not serialised).
    """

    rows: list[EvaluationRow]
    settings: dict[str, Any]
    per_sample: dict[str, dict[str, Tensor]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def row(self, name: str) -> EvaluationRow:
        """The row of a method (or baseline) by name."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row {name!r}; rows: {[r.name for r in self.rows]}")

    def to_markdown(self) -> str:
        """A markdown section: the settings, the table (:func:`main_table`) and any errors."""
        s = self.settings
        tol = s.get("tolerance")
        tol_text = f"{tol:.3g}" if isinstance(tol, int | float) else "?"
        lines = [
            "## camlens evaluation",
            "",
            f"{s.get('n')} images ({s.get('data')}, {s.get('image_size')}), model {s.get('model')} on "
            f"{s.get('device')}, target = true label. Pointing game tolerance {tol_text} px; "
            f"box: threshold {s.get('box_threshold')} of the max, largest 8-connected segment, IoU >= 0.5; "
            f"deletion (baseline {s.get('deletion_baseline')}) and insertion (baseline "
            f"{s.get('insertion_baseline')}) with {s.get('steps')} steps, softmax probability of the target.",
            "",
            main_table(self),
        ]
        notes = [f"- `{r.name}`: {r.error}" for r in self.rows if r.error]
        notes += [
            f"- `{r.name}`: all-zero map on {r.empty_maps} of {s.get('n')} images"
            for r in self.rows
            if r.empty_maps
        ]
        if notes:
            lines += ["", *notes]
        return "\n".join(lines) + "\n"

    def to_json(self, indent: int | None = 2) -> str:
        """The settings and rows as JSON (``NaN`` written as ``null``)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [clean(x) for x in v]
            return v

        return json.dumps(
            clean({"settings": self.settings, "rows": [asdict(r) for r in self.rows]}),
            indent=indent,
        )


def _fmt(value: float | None, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if key == "average_drop":
        return f"{value:.1f}"
    if key == "ms_per_image":
        return f"{value:.2f}"
    return f"{value:.3f}"


def main_table(report: EvaluationReport) -> str:
    """The report's table in markdown: one row per method and per baseline, the best value in bold.

    Example:
        >>> rep = EvaluationReport([EvaluationRow("gradcam", "method", 0.9), EvaluationRow("u", "baseline", 0.1)], {})
        >>> print(main_table(rep).splitlines()[2])
        | gradcam | **0.900** | – | – | – | – | – | – |
    """
    header = "| Method | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    sep = "|---|" + "|".join("---:" for _ in COLUMNS) + "|"
    best: dict[str, float] = {}
    for key, _, higher in COLUMNS:
        vals = [
            getattr(r, key)
            for r in report.rows
            if r.kind == "method" and getattr(r, key) is not None
        ]
        vals = [v for v in vals if not math.isnan(v)]
        if vals and higher is not None:
            best[key] = max(vals) if higher else min(vals)
    lines = [header, sep]
    for r in report.rows:
        cells = []
        for key, _, _ in COLUMNS:
            v = getattr(r, key)
            text = _fmt(v, key)
            if (
                r.kind == "method"
                and key in best
                and v is not None
                and not math.isnan(v)
                and _fmt(v, key) == _fmt(best[key], key)
            ):
                text = f"**{text}**"
            cells.append(text)
        name = r.name
        if r.error:
            name += " (n/a)" if r.error.startswith(NOT_FOR) else " (failed)"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def baseline_maps(
    kind: str, batch: int, size: tuple[int, int], device: torch.device | str = "cpu"
) -> Tensor:
    """Maps that look at nothing, ``(batch, H, W)`` in ``[0, 1]``.

    Args:
        kind: ``"uniform"`` (all ones: every pixel tied) or ``"centre gaussian"`` (a Gaussian centred
            on the image, sigma a quarter of the height along y and of the width along x, peak 1).
        batch: number of maps.
        size: ``(H, W)``.
        device: where to build them.
    """
    h, w = size
    if kind == "uniform":
        return torch.ones(batch, h, w, device=device)
    if kind in ("centre gaussian", "center gaussian"):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5 - h / 2) / (h / 4)
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5 - w / 2) / (w / 4)
        g = torch.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2))
        return (g / g.max()).expand(batch, h, w).clone()
    raise ValueError(f"unknown baseline {kind!r}; use 'uniform' or 'centre gaussian'")


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return torch.device("cpu") if p is None else p.device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _method_names(methods: str | Sequence[str]) -> list[str]:
    if isinstance(methods, str):
        if methods == "all":
            return list(METHODS)
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    names = [get_method(m).name for m in methods]
    if not names:
        raise ValueError("methods is empty; pass 'all' or method names")
    return list(dict.fromkeys(names))


def _stderr_progress(stage: str, done: int, total: int) -> None:
    end = "\n" if done >= total else "\r"
    print(f"  {stage:<28} {done:>5}/{total}", end=end, file=sys.stderr, flush=True)


def _score_batch(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    labels: Tensor,
    masks: Tensor,
    tolerance: float,
    steps: int,
    forward_batch: int,
) -> dict[str, Tensor]:
    return {
        "pointing_game": metrics.pointing_game(maps, masks, tolerance).per_sample,
        "energy_pointing_game": metrics.energy_pointing_game(maps, masks).per_sample,
        "box_accuracy": metrics.box_localization(maps, masks).per_sample,
        "deletion_auc": metrics.deletion(
            model, x, maps, labels, steps=steps, baseline="zeros", batch_size=forward_batch
        ).per_sample,
        "insertion_auc": metrics.insertion(
            model, x, maps, labels, steps=steps, baseline="blur", batch_size=forward_batch
        ).per_sample,
        "average_drop": metrics.average_drop(
            model, x, maps, labels, batch_size=forward_batch
        ).per_sample,
    }


def run(
    model: nn.Module | None = None,
    methods: str | Sequence[str] = "all",
    n: int = 500,
    seed: int = 0,
    batch_size: int = 32,
    progress: Progress | bool | None = None,
    *,
    data: tuple[Tensor, Tensor, Tensor] | None = None,
    steps: int = 20,
    tolerance: float | None = None,
    forward_batch: int = 256,
) -> EvaluationReport:
    """Evaluate every method (and two baselines) on images with ground-truth masks.

    Targets are the true labels. Each method is built with its defaults (``cls(model)``: the layer is
    chosen automatically); a method that cannot run on the model (CAM on a head that is not GAP +
    linear) gets a row with its error instead of scores.

    Choices:
        * Pointing-game tolerance: 15 px at 224 px (Zhang et al.), scaled to the images' shorter side
          (``tolerance=None``; 6.4 px on the 96 px demo images), or the number given.
        * Box accuracy: ground-truth box = the tight box around the mask; threshold 0.15 of the max.
        * Deletion: zeros baseline; insertion: blurred image; ``steps`` steps; softmax probability.
        * Input-space methods (guided backpropagation, Guided Grad-CAM) are scored on their ``maps``,
          one value per pixel like every method's (:func:`camlens.maps.input_saliency`: the max over
          channels of the absolute attribution).
        * Time per image: the maps of each batch, wall clock (CUDA synchronised), divided by its size;
          the first batch includes any warm-up.

    Args:
        model: the classifier; default :func:`camlens.demo.load_model`. Everything runs on its device.
        methods: ``"all"`` (every entry of ``camlens.METHODS`` at call time), a comma-separated string
            or a list of names or aliases.
        n: number of images of :func:`camlens.demo.make_dataset` (ignored when ``data`` is given).
        seed: the data set's seed.
        batch_size: images per batch of maps.
        progress: ``progress(stage, done, total)`` after every batch; ``True`` prints to stderr.
        data: ``(images (N, C, H, W), labels (N,), masks (N, H, W) bool)`` to use instead of the demo
            data set.
        steps: deletion / insertion steps.
        tolerance: pointing-game tolerance in pixels; ``None`` scales 15 px at 224 px.
        forward_batch: images per forward pass inside the faithfulness metrics.

    Returns:
        An :class:`EvaluationReport`.

    Raises:
        ValueError: an unknown method name, or data whose shapes do not fit together.
    """
    if model is None:
        from camlens.demo import load_model

        model = load_model()
    if data is None:
        from camlens.demo import make_dataset

        data = make_dataset(n, seed)
        data_name = f"camlens.demo.make_dataset(n={n}, seed={seed})"
    else:
        data_name = "user data"
    images, labels, masks = data
    if (
        images.ndim != 4
        or labels.shape != images.shape[:1]
        or tuple(masks.shape) != (images.shape[0], *images.shape[2:])
    ):
        raise ValueError(
            f"data must be images (N, C, H, W), labels (N,) and masks (N, H, W); got shapes {tuple(images.shape)}, "
            f"{tuple(labels.shape)} and {tuple(masks.shape)}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    names = _method_names(methods)
    report_progress: Progress | None = _stderr_progress if progress is True else (progress or None)
    device = _device(model)
    total = images.shape[0]
    h, w = images.shape[2:]
    tol = 15.0 * min(h, w) / 224.0 if tolerance is None else float(tolerance)
    settings: dict[str, Any] = {
        "model": type(model).__name__,
        "device": str(device),
        "n": total,
        "seed": seed,
        "data": data_name,
        "image_size": f"{h}x{w}",
        "methods": names,
        "tolerance": tol,
        "box_threshold": 0.15,
        "steps": steps,
        "deletion_baseline": "zeros",
        "insertion_baseline": "blur",
        "target": "true label",
        "torch": torch.__version__,
    }

    rows: list[EvaluationRow] = []
    per_sample: dict[str, dict[str, Tensor]] = {}
    batches = [
        (
            images[i : i + batch_size].to(device),
            labels[i : i + batch_size].to(device),
            masks[i : i + batch_size].to(device),
        )
        for i in range(0, total, batch_size)
    ]

    def evaluate(name: str, kind: str, make_maps: Callable[[Tensor, Tensor], Tensor]) -> None:
        parts: dict[str, list[Tensor]] = {}
        seconds, done, empty = 0.0, 0, 0
        for x, y, m in batches:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _sync(device)
                t0 = time.perf_counter()
                try:
                    maps = make_maps(x, y)
                except Exception as e:  # a method that cannot run on this model: report it, go on
                    if kind == "baseline":
                        raise
                    model_kind = getattr(METHODS.get(name), "model_kind", "any")
                    if model_kind != "any" and isinstance(e, ValueError):
                        # a method for another kind of model (LeGrad: transformers) does not apply
                        text = f"{NOT_FOR} {model_kind} models: {e}"
                    else:
                        text = f"{type(e).__name__}: {e}"
                    rows.append(EvaluationRow(name, kind, error=text))
                    return
                _sync(device)
                seconds += time.perf_counter() - t0
            empty += int((maps.reshape(maps.shape[0], -1).amax(1) <= 0).sum())
            for wrn in caught:
                if "all zero" not in str(wrn.message):
                    warnings.warn_explicit(wrn.message, wrn.category, wrn.filename, wrn.lineno)
            for key, val in _score_batch(model, x, maps, y, m, tol, steps, forward_batch).items():
                parts.setdefault(key, []).append(val.detach().float().cpu())
            done += x.shape[0]
            if report_progress is not None:
                report_progress(name, done, total)
        cat = {k: torch.cat(v) for k, v in parts.items()}
        per_sample[name] = cat
        means = {k: metrics.MetricResult(k, v, 0.0).mean() for k, v in cat.items()}
        ms = 1000.0 * seconds / total if kind == "method" else None
        rows.append(
            EvaluationRow(
                name,
                kind,
                pointing_game=means["pointing_game"],
                energy_pointing_game=means["energy_pointing_game"],
                box_accuracy=means["box_accuracy"],
                deletion_auc=means["deletion_auc"],
                insertion_auc=means["insertion_auc"],
                average_drop=means["average_drop"],
                ms_per_image=ms,
                empty_maps=empty,
            )
        )

    for name in names:
        try:
            method = METHODS[name](model)
        except Exception as e:
            rows.append(EvaluationRow(name, "method", error=f"{type(e).__name__}: {e}"))
            continue

        def cam_maps(x: Tensor, y: Tensor, method: Any = method) -> Tensor:
            return method(x, target=y).maps

        evaluate(name, "method", cam_maps)
    for label in BASELINES:

        def look_at_nothing(x: Tensor, y: Tensor, kind: str = label.split(": ", 1)[1]) -> Tensor:
            return baseline_maps(kind, x.shape[0], (h, w), x.device)

        evaluate(label, "baseline", look_at_nothing)
    return EvaluationReport(rows, settings, per_sample)
