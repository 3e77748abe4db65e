"""One audit end to end: reader -> per-batch function (engine) -> shards -> analysis -> report."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from camlens.audit.analysis import analyze_results
from camlens.audit.batch import ExplainConfig, Explainer
from camlens.audit.dataset import DataSource, count_items, iter_items, open_source
from camlens.audit.engines import pending, run_local, run_ray
from camlens.audit.store import ResultStore
from camlens.models import resolve_device

__all__ = ["AuditOutcome", "audit"]


@dataclass
class AuditOutcome:
    """What an audit did.

    Attributes:
        out: the output folder.
        images: images in the results (this run and earlier ones).
        errors: images that could not be read.
        new: images explained by this run.
        skipped: images already in the results when this run started (resumed).
        seconds: wall time of this run.
        summary: the analysis (as in ``summary.json``).
        source: the data set and its class mapping.
        files: the files written (results folder, summary, report).
    """

    out: Path
    images: int
    errors: int
    new: int
    skipped: int
    seconds: float
    summary: dict[str, Any]
    source: DataSource
    files: list[Path] = field(default_factory=list)


class _Progress:
    """A tqdm bar in images (it shows images/s), when wanted and tqdm is installed."""

    def __init__(self, total: int, enabled: bool, n_methods: int) -> None:
        self.bar: Any = None
        self.n_methods = max(1, n_methods)
        self.images = 0
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(
                    total=total,
                    desc="audit",
                    unit="img",
                    file=sys.stderr,
                    dynamic_ncols=True,
                    smoothing=0.1,
                )
            except ImportError:
                self.bar = None

    def __call__(self, table: Any) -> None:
        n = table.num_rows // self.n_methods
        self.images += n
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def audit(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: ExplainConfig,
    *,
    engine: str = "local",
    batch_size: int = 32,
    workers: int | None = None,
    ray_address: str | None = None,
    force: bool = False,
    progress: bool = False,
    report: bool = True,
    max_per_class: int = 1000,
    say: Callable[[str], None] | None = None,
) -> AuditOutcome:
    """Audit a data set: explain every image with every method, then analyse and report.

    Re-running with the same ``out`` resumes: images already in ``out/results.parquet`` are skipped.

    Args:
        data: a folder of class folders, or a CSV/Parquet manifest (see :mod:`camlens.audit.dataset`).
        out: the output folder: ``results.parquet/``, ``summary.json``, ``report.html``, ``run.json``.
        config: model, methods, layer, target; ``target="label"`` falls back to ``"pred"`` when the
            data set has no labels.
        engine: ``"local"`` or ``"ray"``.
        batch_size: images per batch.
        workers: decode threads (local, default 2) or model actors (ray, default 1).
        ray_address: a Ray cluster to join (ray engine).
        force: discard results of another configuration in ``out`` instead of refusing to resume.
        progress: show a progress bar on stderr.
        report: write ``report.html``.
        max_per_class: rows per class and method used by the analysis's tests and clustering.
        say: where one-line messages go (the class mapping), or ``None``.

    Returns:
        An :class:`AuditOutcome`.

    Raises:
        ValueError: bad arguments, a data set that does not fit the model, or results of another
            configuration in ``out`` (without ``force``).
    """
    from camlens.methods import get_method
    from camlens.models import load_model

    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', not {engine!r}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, not {batch_size}")
    if workers is not None and workers < (0 if engine == "local" else 1):
        raise ValueError(f"workers must be at least {0 if engine == 'local' else 1}, not {workers}")
    if not config.methods:
        raise ValueError("no method given; pass at least one (see `camlens methods`)")
    methods = tuple(dict.fromkeys(get_method(m).name for m in config.methods))
    if config.target not in ("label", "pred"):
        raise ValueError(f"target must be 'label' or 'pred', not {config.target!r}")
    t0 = time.perf_counter()
    outdir = Path(out)
    if outdir.exists() and not outdir.is_dir():
        raise ValueError(f"--out {str(outdir)!r} is a file, not a folder; choose a folder")
    store = ResultStore(outdir)
    device = resolve_device(config.device)
    loaded = load_model(
        config.model,
        config.weights,
        device=device if engine == "local" else "cpu",
        size=config.size,
        mean=config.mean,
        std=config.std,
    )
    source = open_source(data, loaded.classes)
    target = config.target if source.has_labels else "pred"
    config = replace(config, methods=methods, target=target)
    # every method on the model, now: an unknown layer fails here, before anything is written
    explainer = Explainer(config, loaded)
    if say is not None:
        say(f"classes: {source.mapping}")
    fingerprint = {**config.fingerprint(), "data": str(Path(data).resolve())}
    previous = store.read_run()
    if previous is not None and previous.get("config") != fingerprint and store.shards():
        if not force:
            diff = sorted(
                k for k in fingerprint if previous.get("config", {}).get(k) != fingerprint[k]
            )
            raise ValueError(
                f"{str(outdir)!r} holds an audit with another {', '.join(diff)}; choose another "
                "--out, or pass --force to discard it"
            )
        store.clear()
    if force and previous is None:
        store.clear()
    store.recover()
    # run.json goes with the first shard: a run refused at its first batch writes nothing
    store.write_run_with_first_shard(
        {
            "config": fingerprint,
            "engine": engine,
            "classes": source.to_json(),
            "preprocess": loaded.preprocess.describe(),
        }
    )
    done = store.done_keys()
    total = count_items(source)
    items = pending(iter_items(source), done)
    bar = _Progress(max(0, total - len(done)), progress, len(methods))
    try:
        if engine == "local":
            run_local(
                explainer,
                items,
                store,
                batch_size=batch_size,
                workers=2 if workers is None else workers,
                on_batch=bar,
            )
        else:
            run_ray(
                config,
                loaded.preprocess,
                items,
                store,
                batch_size=batch_size,
                workers=1 if workers is None else workers,
                address=ray_address,
                on_batch=bar,
                quiet=not progress,
            )
    finally:
        bar.close()
    store.compact()
    names = _class_names(source, loaded.classes)
    summary = analyze_results(outdir, names, max_per_class=max_per_class)
    summary["data"] = source.to_json()
    summary["model"] = {
        "spec": config.model,
        "weights": loaded.weights,
        "preprocess": loaded.preprocess.describe(),
        "size": list(loaded.preprocess.size),
        "target": target,
        "layer": config.layer,
    }
    from camlens.io import atomic_write_text

    files = [store.root]
    summary_path = outdir / "summary.json"
    atomic_write_text(summary_path, json.dumps(_clean(summary), indent=1) + "\n")
    files.append(summary_path)
    if report:
        from camlens.audit.report import render_report

        html = render_report(summary, preprocess=loaded.preprocess, out=outdir)
        atomic_write_text(outdir / "report.html", html)
        files.append(outdir / "report.html")
    return AuditOutcome(
        out=outdir,
        images=int(summary["images"]),
        errors=int(summary["errors"]),
        new=bar.images,
        skipped=len(done),
        seconds=time.perf_counter() - t0,
        summary=summary,
        source=source,
        files=files,
    )


def _class_names(source: DataSource, model_classes: list[str] | None) -> list[str] | None:
    n = max([c.index for c in source.classes] + [len(model_classes or []) - 1])
    if n < 0:
        return None
    names = [
        str(model_classes[i]) if model_classes and i < len(model_classes) else f"class {i}"
        for i in range(n + 1)
    ]
    for c in source.classes:
        names[c.index] = c.name
    return names


def _clean(obj: Any) -> Any:
    """Replace non-finite floats with ``None`` (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj
