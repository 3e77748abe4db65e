"""File helpers for the command line: finding and loading images, and writes that never leave a half file.

Every output is first written to a temporary file in the destination's own directory and then moved
over the destination with :func:`os.replace` (atomic on POSIX and Windows within one file system), so
an interrupted run leaves either the old file, the complete new one, or nothing; never a truncated
image or report.

Pillow is imported lazily, inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

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
]

#: File name endings treated as images when a folder is listed (files named explicitly may have any).
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


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


def find_images(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders into a list of image files.

    A folder contributes its files whose names end in one of :data:`IMAGE_SUFFIXES` (not recursive,
    sorted by name); a file named explicitly is taken as it is (it is checked when it is loaded).

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: no path was given, or a folder holds no image.
    """
    if not paths:
        raise ValueError("no input given; pass image files or folders")
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                c for c in p.iterdir() if c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise ValueError(
                    f"folder {str(p)!r} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                    "pass image files or a folder with images"
                )
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {str(p)!r}; check the path")
    return list(dict.fromkeys(out))


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image file as an upright RGB PIL image (EXIF rotation applied; fully read, file closed).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not an image Pillow can read, or is truncated.
        ImportError: Pillow is not installed.
    """
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError as exc:  # pragma: no cover - Pillow is a CLI dependency
        raise ImportError('reading images needs Pillow: pip install "camlens[cli]"') from exc
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such image file: {str(p)!r}; check the path")
    try:
        with Image.open(p) as im:
            im.load()
            upright = ImageOps.exif_transpose(im)  # photos stored sideways with an EXIF rotation
            return (upright if upright is not None else im).convert("RGB")
    except UnidentifiedImageError:
        raise ValueError(
            f"{str(p)!r} is not an image file Pillow can read; pass PNG, JPEG, BMP, GIF, TIFF or WebP images"
        ) from None
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"cannot read image {str(p)!r} ({exc}); is the file complete?") from exc


def probe_image(path: str | os.PathLike[str]) -> None:
    """Check cheaply (header only) that a file is an image Pillow can open.

    Raises:
        ValueError: the file is not an image Pillow can read.
        FileNotFoundError: the file does not exist.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:  # pragma: no cover
        raise ImportError('reading images needs Pillow: pip install "camlens[cli]"') from exc
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such image file: {str(p)!r}; check the path")
    try:
        with Image.open(p) as im:
            im.size  # noqa: B018 - the header is parsed on open
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise ValueError(
            f"{str(p)!r} is not an image file Pillow can read; pass PNG, JPEG, BMP, GIF, TIFF or WebP images"
        ) from None
