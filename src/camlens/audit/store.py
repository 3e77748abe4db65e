"""The writer of an audit: ``DIR/results.parquet``, a Parquet data set of shards written atomically.

``results.parquet`` is a folder of ``part-*.parquet`` files (the layout Spark and ``pyarrow.dataset``
write, which ``pyarrow.parquet.read_table``, ``pandas.read_parquet`` and ``ray.data.read_parquet`` read
as one table). Every batch becomes one shard, written under a hidden temporary name (``.part-*``,
which readers skip) and renamed into place, so a shard is either complete or absent. All rows of an
image (one per method) are in one shard.

Resuming: the paths in the existing shards are the finished images (rows with ``error`` set count as
finished: the file was tried). They are kept as 64-bit hashes in a sorted array, 8 bytes per image, so
the set of finished work costs little memory.

Compaction: many small shards are merged into files of about :data:`COMPACT_ROWS` rows. A merged shard
names the shards it replaces in its metadata; they are deleted after it is in place, and any of them
still present when the folder is next opened (the run was killed in between) is deleted then, so no row
is ever counted twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["COMPACT_ROWS", "ResultStore", "path_key", "path_keys", "read_results"]

#: Rows per shard after compaction.
COMPACT_ROWS = 65_536
_REPLACES = b"camlens.replaces"
_PART = re.compile(r"^part-(\d{8})-[0-9a-f]{8}\.parquet$")


def path_key(path: str) -> int:
    """A stable 64-bit key of a path (BLAKE2b), the unit of resuming.

    Example:
        >>> path_key("a.png") == path_key("a.png") != path_key("b.png")
        True
    """
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8"), digest_size=8).digest(), "little")


def path_keys(paths: Iterable[str]) -> np.ndarray:
    """:func:`path_key` of each path as a ``uint64`` array."""
    return np.fromiter((path_key(p) for p in paths), dtype=np.uint64)


class ResultStore:
    """The shards of one audit's ``results.parquet`` folder.

    Args:
        out: the audit's output folder ``DIR``; the shards go to ``DIR/results.parquet/``.

    Raises:
        ValueError: ``DIR/results.parquet`` exists and is a file.
    """

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)
        self.root = self.out / "results.parquet"
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(
                f"{str(self.root)!r} is a file, not an audit's results folder; choose another --out"
            )
        self._seq = 0
        self._token = secrets.token_hex(4)
        self._run_info: dict[str, Any] | None = None

    # ---- layout ----------------------------------------------------------------------------------
    def shards(self) -> list[Path]:
        """The complete shards, in name order."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if _PART.match(p.name))

    def recover(self) -> None:
        """Remove what an interrupted run left: temporary files, and shards a merged shard replaced."""
        if not self.root.is_dir():
            return
        for p in self.root.iterdir():
            if p.name.startswith(".part-"):
                with contextlib.suppress(OSError):
                    p.unlink()
        import pyarrow.parquet as pq

        for p in self.shards():
            meta = pq.read_schema(p).metadata or {}
            for name in json.loads(meta.get(_REPLACES, b"[]")):
                with contextlib.suppress(FileNotFoundError):
                    (self.root / name).unlink()
        seqs = [int(m.group(1)) for p in self.shards() if (m := _PART.match(p.name))]
        self._seq = max(seqs, default=-1) + 1

    def clear(self) -> None:
        """Delete every shard (a fresh start)."""
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.is_file() and (p.name.startswith(".part-") or _PART.match(p.name)):
                    p.unlink()
        self._seq = 0

    # ---- reading ---------------------------------------------------------------------------------
    def iter_tables(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """Each shard as a table (of ``columns``), one at a time."""
        import pyarrow.parquet as pq

        for p in self.shards():
            yield pq.read_table(p, columns=columns)

    def done_keys(self) -> np.ndarray:
        """Sorted ``uint64`` keys (:func:`path_key`) of the images already in the shards."""
        parts = [path_keys(t.column("path").to_pylist()) for t in self.iter_tables(["path"])]
        keys = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        return np.unique(keys)

    def count(self) -> tuple[int, int]:
        """``(rows, rows with an error)`` in the shards, from the ``error`` column alone."""
        rows = errors = 0
        for t in self.iter_tables(["error"]):
            rows += t.num_rows
            errors += sum(1 for e in t.column("error").to_pylist() if e)
        return rows, errors

    # ---- writing ---------------------------------------------------------------------------------
    def write(self, table: pa.Table, replaces: list[str] | None = None) -> Path:
        """Write one shard atomically (temporary name in the same folder, fsync, rename).

        Args:
            table: the rows.
            replaces: names of shards this one merges (recorded in its metadata; see :meth:`compact`).

        Returns:
            The shard's path.
        """
        import pyarrow.parquet as pq

        self.root.mkdir(parents=True, exist_ok=True)
        if self._run_info is not None:
            self.write_run(self._run_info)
            self._run_info = None
        if replaces:
            meta = dict(table.schema.metadata or {})
            meta[_REPLACES] = json.dumps(replaces).encode()
            table = table.replace_schema_metadata(meta)
        name = f"part-{self._seq:08d}-{self._token}.parquet"
        self._seq += 1
        dest = self.root / name
        tmp = self.root / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            with tmp.open("wb") as f:
                pq.write_table(table, f, compression="zstd")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return dest

    def compact(self, target_rows: int = COMPACT_ROWS) -> int:
        """Merge small shards into shards of about ``target_rows`` rows.

        Returns:
            The number of shards after compaction.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        small = [p for p in self.shards() if pq.ParquetFile(p).metadata.num_rows < target_rows // 2]
        group: list[Path] = []
        rows = 0

        def flush() -> None:
            nonlocal group, rows
            if len(group) > 1:
                merged = pa.concat_tables(
                    [pq.read_table(p) for p in group]
                ).replace_schema_metadata(None)
                self.write(merged, replaces=[p.name for p in group])
                for p in group:
                    p.unlink()
            group, rows = [], 0

        for p in small:
            group.append(p)
            rows += pq.ParquetFile(p).metadata.num_rows
            if rows >= target_rows:
                flush()
        flush()
        return len(self.shards())

    # ---- the run's configuration -----------------------------------------------------------------
    @property
    def run_file(self) -> Path:
        return self.out / "run.json"

    def read_run(self) -> dict[str, Any] | None:
        """The configuration stored by the run that wrote the shards, or ``None``."""
        if not self.run_file.is_file():
            return None
        try:
            return dict(json.loads(self.run_file.read_text()))
        except (OSError, ValueError):
            return None

    def write_run(self, info: dict[str, Any]) -> None:
        """Store the run's configuration (atomically)."""
        from camlens.io import atomic_write_text

        atomic_write_text(self.run_file, json.dumps(info, indent=1, sort_keys=True) + "\n")

    def write_run_with_first_shard(self, info: dict[str, Any]) -> None:
        """Store the run's configuration just before this store's first shard is written (see
        :meth:`write_run`): a run that fails before its first batch is done (a model that fails on
        the input) leaves nothing behind."""
        self._run_info = info


def read_results(out: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """All rows of an audit as one table (``out`` is ``DIR`` or ``DIR/results.parquet``).

    Raises:
        FileNotFoundError: no results there.
    """
    import pyarrow as pa

    from camlens.audit.batch import schema

    p = Path(out)
    store = ResultStore(p.parent if p.name == "results.parquet" else p)
    if not store.root.is_dir():
        raise FileNotFoundError(f"no audit results in {str(out)!r} (no results.parquet folder)")
    tables = list(store.iter_tables(columns))
    if not tables:
        sch = schema()
        return (
            sch.empty_table()
            if columns is None
            else pa.schema([sch.field(c) for c in columns]).empty_table()
        )
    return pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
