"""Writes that never leave a half file, and the refusal to overwrite outputs.

Every output is first written to a temporary file in the destination's own directory and then moved
over the destination with :func:`os.replace` (atomic on POSIX and Windows within one file system), so
an interrupted run leaves either the old file, the complete new one, or nothing; never a truncated
image or report.

Images are found, checked and loaded by :mod:`camlens.images`; ``find_images``, ``load_image`` and
``probe_image`` are importable from here too. :func:`save_npz` writes a map with everything needed
to use it later (its raw map, score, class and geometry). Only the standard library is imported with
this module.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from camlens.images import IMAGE_SUFFIXES, find_images, load_image, probe_image

__all__ = [
    "IMAGE_SUFFIXES",
    "OutputExistsError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_outputs",
    "find_images",
    "load_image",
    "probe_image",
    "save_npz",
]


class OutputExistsError(FileExistsError):
    """An output file exists already and overwriting was not allowed."""


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Write a file through a temporary name in the same directory, then rename it into place.

    Args:
        path: the destination; its directory is created if missing.
        write: called with the temporary file opened for binary writing.

    Returns:
        The destination path.

    Raises:
        OSError: the directory cannot be created or written; the temporary file is removed.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would have
        os.chmod(tmp, dest.stat().st_mode & 0o7777 if dest.exists() else _new_file_mode())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return dest


def _new_file_mode() -> int:
    """``0o666`` less the process's umask: the mode ``open(path, "w")`` gives a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def check_outputs(
    paths: Iterable[str | os.PathLike[str]], force: bool, patterns: Sequence[Path] = ()
) -> None:
    """Refuse to overwrite: raise if any of ``paths`` (or a file matching a glob pattern) exists.

    Call it before any work is done, so that a refused run writes nothing at all.

    Args:
        paths: the files a run is about to write.
        force: overwriting is allowed; nothing is checked.
        patterns: glob patterns (``folder / "name.*.png"``) of files a run may write under names not
            known in advance.

    Raises:
        OutputExistsError: the first existing file, with the advice to pass ``--force``.
        ValueError: an output path is an existing directory.
    """
    for p in map(Path, paths):
        if p.is_dir():
            raise ValueError(f"output {str(p)!r} is a directory; choose another output name")
        if p.exists() and not force:
            raise OutputExistsError(
                f"output {str(p)!r} already exists; pass --force to overwrite it"
            )
    if force:
        return
    for pattern in patterns:
        hits = sorted(pattern.parent.glob(pattern.name)) if pattern.parent.is_dir() else []
        if hits:
            raise OutputExistsError(
                f"output {str(hits[0])!r} already exists; pass --force to overwrite it"
            )


def save_npz(path: str | os.PathLike[str], **arrays: Any) -> Path:
    """Write named arrays to a compressed ``.npz`` file atomically (see :func:`atomic_write`).

    Values are converted with ``numpy.asarray`` (torch tensors are detached and copied to the CPU
    first); strings become 0-d string arrays, ``None`` becomes an empty float array.

    Example:
        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "m.npz")
        >>> _ = save_npz(path, map=np.ones((2, 2), np.float32), label="cat", target=3)
        >>> data = np.load(path)
        >>> sorted(data.files), str(data["label"]), int(data["target"])
        (['label', 'map', 'target'], 'cat', 3)
    """
    import numpy as np

    def convert(v: Any) -> Any:
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
        if v is None:
            return np.zeros(0, np.float32)
        return np.asarray(v)

    data = {k: convert(v) for k, v in arrays.items()}
    return atomic_write(path, lambda f: np.savez_compressed(f, **data))
