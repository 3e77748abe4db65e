"""Audit a whole data set: explain every image, measure every map, find the shortcuts a model learned.

``audit`` = reader (:mod:`~camlens.audit.dataset`: a folder of class folders or a CSV/Parquet manifest,
streamed) -> per-batch function (:class:`~camlens.audit.batch.Explainer`: load, explain, map statistics)
-> writer (:mod:`~camlens.audit.store`: Parquet shards, atomic, resumable) -> analysis
(:mod:`~camlens.audit.analysis`: per-class statistics, spectral clustering of the downsampled maps,
findings) -> report (:mod:`~camlens.audit.report`). The per-batch function is the only thing the two
engines (:mod:`~camlens.audit.engines`: local streaming pipeline, Ray Data) share.

pyarrow is needed (``pip install "camlens[audit]"``), Ray for the Ray engine (``camlens[ray]``).

Example:
    >>> import tempfile
    >>> from camlens.audit import ExplainConfig, audit, planted
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     data = planted.make_planted(tmp + "/data", n=60, seed=1)
    ...     cfg = ExplainConfig(model="camlens.audit.planted:shortcut_model", device="cpu")
    ...     res = audit(data.images, tmp + "/out", cfg, report=False)
    >>> res.images, [(f["class"], f["kind"]) for f in res.summary["findings"]]
    (60, [('star', 'fixed_position')])
"""

from __future__ import annotations

from camlens.audit import planted
from camlens.audit.analysis import analyze, analyze_results
from camlens.audit.batch import ExplainConfig, Explainer, schema
from camlens.audit.dataset import DataSource, Item, iter_items, open_source
from camlens.audit.example import collate, load_example
from camlens.audit.report import render_report
from camlens.audit.runner import AuditOutcome, audit
from camlens.audit.store import ResultStore, read_results

__all__ = [
    "AuditOutcome",
    "DataSource",
    "ExplainConfig",
    "Explainer",
    "Item",
    "ResultStore",
    "analyze",
    "analyze_results",
    "audit",
    "collate",
    "iter_items",
    "load_example",
    "open_source",
    "planted",
    "read_results",
    "render_report",
    "schema",
]
