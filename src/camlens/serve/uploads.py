"""Uploads that cannot hurt the server: bounded bodies, parsed in memory, images decoded with limits.

* :class:`BodyLimit` is ASGI middleware that refuses a request body over the limit with 413: at once
  when ``Content-Length`` says so, else as soon as the bytes received pass it (chunked uploads), so an
  endless upload is cut off rather than buffered.
* :func:`read_form` parses ``multipart/form-data`` in memory only. Starlette's own parser spools files
  over 1 MB to the system's temporary folder; this one keeps every part in memory (the body is already
  bounded), so a request never leaves a file behind, even when the client disconnects.
* :func:`decode_image` decodes an upload through the library's one image path
  (:func:`camlens.images.read_image`): allowed formats only, the pixel count checked against the limit
  from the header before decoding anything, then decoded whole (so a truncated file fails here with
  400, not later with a half-drawn map) and made 8-bit RGB as ``camlens explain`` makes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

__all__ = ["BadUpload", "BodyLimit", "TooLarge", "decode_image", "read_form"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BadUpload(ValueError):
    """The upload is not usable (not an image, truncated, malformed form): HTTP 400."""


class TooLarge(ValueError):
    """The upload or its image is over a limit of the server: HTTP 413."""


class BodyLimit:
    """ASGI middleware: request bodies over the upload limit on ``paths`` end with 413.

    Args:
        app: the wrapped ASGI application.
        max_upload_mb: the largest upload, in MB; a body may exceed it by the multipart form's own
            overhead (64 KiB).
        paths: path prefixes the limit applies to (every other request has no body to speak of and
            gets a limit of 64 KiB).
    """

    def __init__(
        self, app: ASGIApp, max_upload_mb: float, paths: tuple[str, ...] = ("/api/",)
    ) -> None:
        self.app = app
        self.max_upload_mb = max_upload_mb
        self.limit = int(max_upload_mb * 2**20) + 64 * 1024
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit if scope["path"].startswith(self.paths) else 64 * 1024
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send, self.max_upload_mb)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise TooLarge(_too_large_text(self.max_upload_mb))
            return message

        await self.app(scope, limited, send)


def _too_large_text(max_upload_mb: float) -> str:
    return (
        f"the upload is larger than this server's limit of {max_upload_mb:g} MB; send a smaller "
        "image (or start the server with a larger --max-upload-mb)"
    )


async def _refuse(send: Send, max_upload_mb: float) -> None:
    import json

    body = json.dumps({"detail": _too_large_text(max_upload_mb)}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser, with files kept in memory up to ``spool_max_size``."""

    spool_max_size = 2**62


async def read_form(
    headers: Headers, stream: Any, *, max_fields: int = 16, max_field_bytes: int = 64 * 1024
) -> FormData:
    """Parse a ``multipart/form-data`` body in memory; at most one file.

    Raises:
        BadUpload: not a multipart form, malformed, more than one file, too many or too long fields.
    """
    content_type = headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise BadUpload(
            "send the image as multipart/form-data with a field named 'file' "
            "(curl -F file=@photo.jpg ...)"
        )
    parser = _InMemoryParser(
        headers, stream, max_files=1, max_fields=max_fields, max_part_size=max_field_bytes
    )
    try:
        return await parser.parse()
    except MultiPartException as e:
        raise BadUpload(f"the form could not be read: {e.message}") from e


async def read_upload(form: FormData, field: str = "file") -> bytes:
    """The bytes of the form's file field.

    Raises:
        BadUpload: the field is missing, not a file, or empty.
    """
    item = form.get(field)
    if not isinstance(item, UploadFile):
        raise BadUpload(f"the form has no file in field {field!r}; send the image as {field}=@PATH")
    data = await item.read()
    await item.close()
    if not data:
        raise BadUpload("the uploaded file is empty")
    return data


def decode_image(data: bytes, max_pixels: int) -> Any:
    """An uploaded image as a fully decoded, upright 8-bit RGB PIL image.

    The library's own decoding (:func:`camlens.images.read_image`, as ``camlens explain`` reads
    files): only PNG, JPEG, WebP, BMP, TIFF and GIF, 16-bit and float images scaled to 8 bits, EXIF
    orientation applied. It does not touch the warnings module, so worker threads may call it at once.

    Raises:
        TooLarge: the header declares more than ``max_pixels`` pixels (checked before decoding).
        BadUpload: not an image of an allowed format, or truncated or corrupt.
    """
    from camlens.images import ImageTooLargeError, read_image

    try:
        return read_image(data, max_pixels=max_pixels, name="the upload")
    except ImageTooLargeError as e:
        raise TooLarge(_pixels_text(e.size, max_pixels)) from e
    except ValueError as e:
        raise BadUpload(str(e)) from e


def _pixels_text(size: tuple[int, int] | None, max_pixels: int) -> str:
    what = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels" if size else "too many pixels"
    return (
        f"the image has {what}, more than this server's limit of {max_pixels:,}; send a smaller "
        "image (or start the server with a larger --max-pixels)"
    )
