"""The reader of an audit: a folder of class folders or a CSV/Parquet manifest, streamed item by item.

A data set is opened once with :func:`open_source`, which checks it and settles the class mapping (it
reads a manifest's path, label and box columns once, so that a bad row is refused before any work);
:func:`iter_items` then yields one :class:`Item` per image in a fixed order, without holding the data
set in memory (a class folder's file names are listed and sorted one folder at a time; a manifest is
read in chunks).

Labels:
    * Folder: one subfolder per class, images anywhere below it. The folder names are matched to the
      model's class names (case-insensitive, ``_`` and spaces alike) when the model has names; when
      none match, or the model has no names, the classes follow the sorted folder order, as
      ``torchvision.datasets.ImageFolder`` numbers them.
    * Manifest: a ``label`` column of class indices (integers) or class names (mapped like folder
      names). Without a ``label`` column (or with empty cells) the model's prediction is explained.

Masks and boxes (manifests only): ``mask`` is the path of an image whose non-zero pixels are the
object; ``box`` is ``x0,y0,x1,y1`` in pixels of the original image (``x1``, ``y1`` exclusive). Both
are transformed with the image (resize and crop) when the example is loaded.
"""

from __future__ import annotations

import csv
import difflib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camlens.io import IMAGE_SUFFIXES

__all__ = ["ClassInfo", "DataSource", "Item", "count_items", "iter_items", "open_source"]

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class Item:
    """One image to explain.

    Attributes:
        path: the image file (absolute, or as written in the manifest when it is a URL-like string).
        label: the class index, ``-1`` when unknown.
        mask: the path of a mask image, ``""`` when none.
        box: ``(x0, y0, x1, y1)`` in pixels of the original image, or ``None``.
    """

    path: str
    label: int = -1
    mask: str = ""
    box: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class ClassInfo:
    """One class of the data set.

    Attributes:
        index: the model's output index.
        name: the class name shown to the user (the model's name where it has one).
        source: the folder name or manifest label it comes from.
    """

    index: int
    name: str
    source: str


@dataclass
class DataSource:
    """A checked data set: where it is, what kind, and how its labels map to the model's classes.

    Attributes:
        path: the folder or manifest.
        kind: ``"folder"``, ``"csv"`` or ``"parquet"``.
        classes: one :class:`ClassInfo` per class of the data set, sorted by index.
        has_labels: the data set has labels (a folder always has).
        has_masks: a manifest with a ``mask`` column.
        has_boxes: a manifest with a ``box`` column.
        mapping: one line that says how the labels were mapped.
        label_index: label text (folder name or manifest label) -> class index.
    """

    path: Path
    kind: str
    classes: list[ClassInfo]
    has_labels: bool
    has_masks: bool = False
    has_boxes: bool = False
    mapping: str = ""
    label_index: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The mapping as stored in ``summary.json``."""
        return {
            "path": str(self.path),
            "kind": self.kind,
            "has_labels": self.has_labels,
            "has_masks": self.has_masks,
            "has_boxes": self.has_boxes,
            "mapping": self.mapping,
            "classes": [
                {"index": c.index, "name": c.name, "source": c.source} for c in self.classes
            ],
        }


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def map_labels(
    names: Sequence[str], model_classes: Sequence[str] | None, what: str
) -> tuple[dict[str, int], list[ClassInfo], str]:
    """Map label names (folder names or manifest labels) to the model's class indices.

    Args:
        names: the distinct label names of the data set.
        model_classes: the model's class names by index, or ``None``.
        what: ``"folder"`` or ``"label"``, for messages.

    Returns:
        ``(label -> index, classes, one line describing the mapping)``.

    Raises:
        ValueError: some names match the model's classes and others do not, or the data set has more
            classes than the model.

    Example:
        >>> m, _, how = map_labels(["dog", "cat"], ["cat", "dog", "fox"], "folder")
        >>> m, how.split(":")[0]
        ({'cat': 0, 'dog': 1}, "folder names matched to the model's class names")
        >>> map_labels(["b", "a"], None, "folder")[0]
        {'a': 0, 'b': 1}
    """
    ordered = sorted(names)
    if model_classes:
        lookup = {_norm(c): i for i, c in enumerate(model_classes)}
        hits = {n: lookup.get(_norm(n)) for n in ordered}
        matched = [n for n in ordered if hits[n] is not None]
        if matched and len(matched) == len(ordered):
            mapping = {n: int(hits[n]) for n in ordered}  # type: ignore[arg-type]
            classes = sorted(
                (ClassInfo(i, str(model_classes[i]), n) for n, i in mapping.items()),
                key=lambda c: c.index,
            )
            return (
                mapping,
                classes,
                f"{what} names matched to the model's class names: "
                + ", ".join(f"{c.source}={c.index}" for c in classes),
            )
        if matched:
            bad = [n for n in ordered if hits[n] is None]
            close = difflib.get_close_matches(bad[0], list(model_classes), n=3, cutoff=0.5)
            hint = f" (closest class names for {bad[0]!r}: {', '.join(close)})" if close else ""
            raise ValueError(
                f"{len(matched)} {what} names match the model's class names but {len(bad)} do not: "
                f"{', '.join(map(repr, bad[:5]))}{hint}; rename them to the model's class names, or give "
                "a manifest with integer labels"
            )
        if len(ordered) > len(model_classes):
            raise ValueError(
                f"the data set has {len(ordered)} classes but the model only {len(model_classes)}; "
                "check --model and the data set"
            )
    mapping = {n: i for i, n in enumerate(ordered)}
    classes = [
        ClassInfo(
            i,
            str(model_classes[i]) if model_classes and i < len(model_classes) else n,
            n,
        )
        for n, i in mapping.items()
    ]
    why = "the model has no class names" if not model_classes else "no name matches the model's"
    return (
        mapping,
        classes,
        f"{what} names in sorted order ({why}, as torchvision ImageFolder): "
        + ", ".join(f"{c.source}={c.index}" for c in classes),
    )


# --------------------------------------------------------------------------- folders


def _class_folders(root: Path) -> list[Path]:
    return sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _images_below(folder: Path) -> Iterator[Path]:
    """Image files below ``folder`` in a fixed order (each folder's names sorted), hidden ones skipped."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(dirpath) / name


# --------------------------------------------------------------------------- manifests

_COLUMNS = ("path", "label", "mask", "box")


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.ParquetFile(path).schema_arrow.names)


def _csv_columns(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), None)
    return [h.strip() for h in header] if header else []


def _manifest_rows(
    path: Path, kind: str, columns: Sequence[str]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """The manifest's rows as ``(number, dict of the wanted columns)``, read in chunks.

    The number is the one a user finds the row under: a CSV row's line (the header is line 1, as a
    spreadsheet numbers its rows), a Parquet row's position counted from 1. A CSV is read as UTF-8
    with or without a byte-order mark.
    """
    if kind == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        n = 0
        for batch in pf.iter_batches(batch_size=4096, columns=list(columns)):
            for row in batch.to_pylist():
                n += 1
                yield n, row
        return
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is not None:
            reader.fieldnames = [h.strip() for h in reader.fieldnames]
        for row in reader:
            yield reader.line_num, {c: row.get(c) for c in columns}


def _is_int(text: Any) -> bool:
    if isinstance(text, bool):
        return False
    if isinstance(text, int):
        return True
    return isinstance(text, str) and re.fullmatch(r"\s*-?\d+\s*", text) is not None


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value != value


def parse_box(value: Any) -> tuple[float, float, float, float] | None:
    """A box cell (``"x0,y0,x1,y1"``, ``"x0 y0 x1 y1"`` or a list of 4 numbers) as a tuple.

    Raises:
        ValueError: not 4 numbers, or ``x1 <= x0`` / ``y1 <= y0``.

    Example:
        >>> parse_box("10, 20, 50, 60"), parse_box(None)
        ((10.0, 20.0, 50.0, 60.0), None)
    """
    if _empty(value):
        return None
    parts: list[Any] = (
        re.split(r"[\s,;]+", value.strip().strip("[]()")) if isinstance(value, str) else list(value)
    )
    try:
        nums = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        nums = ()
    if len(nums) != 4:
        raise ValueError(f"box {value!r} is not 4 numbers x0,y0,x1,y1 (pixels of the image)")
    x0, y0, x1, y1 = nums
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box {value!r} is empty: it needs x1 > x0 and y1 > y0")
    return (x0, y0, x1, y1)


def _checked_row(
    manifest: Path, n: int, row: dict[str, Any]
) -> tuple[str, tuple[float, float, float, float] | None]:
    """A manifest row's path and box, or a :class:`ValueError` that names the row."""
    raw = row.get("path")
    if _empty(raw):
        raise ValueError(
            f"manifest {str(manifest)!r} row {n}: empty path; give every row an image path"
        )
    try:
        box = parse_box(row.get("box"))
    except ValueError as exc:
        raise ValueError(f"manifest {str(manifest)!r} row {n}: {exc}; fix or empty it") from None
    return str(raw).strip(), box


# --------------------------------------------------------------------------- opening


def open_source(data: str | os.PathLike[str], model_classes: Sequence[str] | None) -> DataSource:
    """Check a data set and settle its class mapping.

    Args:
        data: a folder with one subfolder per class, or a ``.csv`` / ``.parquet`` manifest.
        model_classes: the model's class names by index (``None`` when it has none).

    Returns:
        A :class:`DataSource`.

    Raises:
        FileNotFoundError: ``data`` does not exist.
        ValueError: a folder without class folders, a manifest without a ``path`` column, a manifest
            row without a path or with a malformed box (the row is named), labels that do not fit
            the model (see :func:`map_labels`).
    """
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"no such data set: {str(path)!r}; pass a folder or a manifest")
    if path.is_dir():
        folders = _class_folders(path)
        if not folders:
            raise ValueError(
                f"folder {str(path)!r} has no class folders; put the images of each class in a "
                "subfolder named after the class, or pass a CSV/Parquet manifest"
            )
        mapping, classes, how = map_labels([f.name for f in folders], model_classes, "folder")
        return DataSource(path, "folder", classes, True, mapping=how, label_index=mapping)
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ValueError(
            f"{str(path)!r} is neither a folder nor a manifest; pass a folder of class folders or a "
            ".csv/.parquet file with a path column"
        )
    kind = "csv" if suffix == ".csv" else "parquet"
    try:
        cols = _parquet_columns(path) if kind == "parquet" else _csv_columns(path)
    except ImportError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot read the manifest {str(path)!r} ({exc})") from exc
    if "path" not in cols:
        raise ValueError(
            f"manifest {str(path)!r} has no 'path' column (columns: {', '.join(cols) or 'none'}); "
            "give path and optionally label, mask and box"
        )
    has_labels = "label" in cols
    src = DataSource(path, kind, [], has_labels, "mask" in cols, "box" in cols)
    # every row is checked now, so that a bad one is refused before anything is written
    wanted = [c for c in ("path", "label", "box") if c in cols]
    names: set[str] = set()
    ints: set[int] = set()
    try:
        for n, row in _manifest_rows(path, kind, wanted):
            _checked_row(path, n, row)
            v: Any = row.get("label")
            if _empty(v):
                continue
            if _is_int(v):
                ints.add(int(v))
            else:
                names.add(str(v).strip())
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the manifest {str(path)!r} ({exc})") from exc
    if not has_labels:
        src.mapping = "no label column: the model's predicted class is explained"
        return src
    if names and ints:
        raise ValueError(
            f"manifest {str(path)!r} mixes integer labels and class names; use one or the other"
        )
    if ints:
        if min(ints) < 0:
            raise ValueError(f"manifest {str(path)!r} has a negative label {min(ints)}")
        n_model = len(model_classes) if model_classes else None
        if n_model is not None and max(ints) >= n_model:
            raise ValueError(
                f"manifest label {max(ints)} is out of range: the model has {n_model} classes "
                f"(0 to {n_model - 1})"
            )
        src.classes = [
            ClassInfo(i, str(model_classes[i]) if model_classes else f"class {i}", str(i))
            for i in sorted(ints)
        ]
        src.mapping = "integer labels are the model's class indices"
        src.label_index = {str(i): i for i in sorted(ints)}
        return src
    mapping, classes, how = map_labels(sorted(names), model_classes, "label")
    src.classes, src.mapping, src.label_index = classes, how, mapping
    src.has_labels = bool(names)
    return src


def _resolve(base: Path, value: str) -> str:
    if "://" in value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def iter_items(source: DataSource) -> Iterator[Item]:
    """Yield the data set's items in a fixed order (class folders and file names sorted; manifest order).

    Raises:
        ValueError: a manifest row without a path or with a malformed box (the row number is named).
    """
    if source.kind == "folder":
        for folder in _class_folders(source.path):
            label = source.label_index[folder.name]
            for p in _images_below(folder):
                yield Item(str(p.resolve()), label)
        return
    base = source.path.resolve().parent
    cols = [c for c in _COLUMNS if c == "path" or getattr(source, _HAS[c])]
    for n, row in _manifest_rows(source.path, source.kind, cols):
        raw, box = _checked_row(source.path, n, row)
        label = -1
        lab: Any = row.get("label")
        if not _empty(lab):
            label = source.label_index[str(int(lab)) if _is_int(lab) else str(lab).strip()]
        mask = row.get("mask")
        yield Item(
            _resolve(base, raw),
            label,
            "" if _empty(mask) else _resolve(base, str(mask).strip()),
            box,
        )


_HAS = {"label": "has_labels", "mask": "has_masks", "box": "has_boxes"}


def count_items(source: DataSource) -> int:
    """The number of items, counted without holding them (a Parquet manifest's metadata is enough)."""
    if source.kind == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(source.path).metadata.num_rows)
    if source.kind == "csv":
        return sum(1 for _ in _manifest_rows(source.path, "csv", ["path"]))
    return sum(1 for f in _class_folders(source.path) for _ in _images_below(f))
