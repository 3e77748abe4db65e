"""PNG files written chunk by chunk, for tests: any header size (a decompression bomb needs no
pixel data) and 16-bit samples, which Pillow cannot write for RGB."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def write_png(
    path: Path,
    width: int,
    height: int,
    rows: np.ndarray | None = None,
    depth: int = 8,
    colour: int = 2,
) -> None:
    """Write a PNG of ``width`` x ``height``; ``rows`` holds the samples row by row (``None``: one
    filter byte of data, enough for a header-only check). ``colour`` 2 is RGB, 0 grey."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    dtype = ">u2" if depth == 16 else "u1"
    raw = b"\x00" if rows is None else b"".join(b"\x00" + r.astype(dtype).tobytes() for r in rows)
    head = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", head)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
