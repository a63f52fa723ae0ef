"""Reading uploads in memory, within limits: the request body, its multipart parts, images.

Nothing here touches the file system: bodies are read into memory up to a byte limit (a
larger body is drained and refused, so the client reads the refusal instead of a reset
connection), multipart parts are parsed from those bytes (Starlette's form parser would
spool files over 1 MiB to disk), and images are decoded from bytes after their header
has shown a pixel count within the limit (a decompression bomb is refused before any pixel
is allocated).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass

from PIL import Image
from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header

from clipadapt.data.errors import ImageDecodeError
from clipadapt.data.images import decode_bytes

DRAIN_FACTOR = 8  # a body up to this many times the limit is read to its end before refusal


class BadRequest(Exception):
    """A request the server refuses: ``status`` (4xx) and a message saying what to change."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What one request may carry."""

    max_body_bytes: int = 20 * 1024 * 1024
    max_files: int = 16
    max_pixels: int = 40_000_000  # width x height of one image; Pillow refuses > ~89M anyway
    max_text_chars: int = 1000  # a text search query


@dataclass(frozen=True)
class Part:
    """One multipart part: its form field name, its file name (None for a plain field)."""

    field: str
    filename: str | None
    data: bytes


async def read_body(stream: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    """The whole body of a request, refused with 413 past ``limit`` bytes."""
    too_large = BadRequest(
        413, f"request body over the limit of {limit:,} bytes; send smaller or fewer images"
    )
    if declared is not None and declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
        raise too_large  # not worth reading: the connection closes after the answer
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > DRAIN_FACTOR * limit:
            break
    if size > limit:
        raise too_large
    return b"".join(chunks)


def parse_multipart(body: bytes, content_type: str | None, limits: Limits) -> list[Part]:
    """The parts of a ``multipart/form-data`` body; 400 for anything else or a broken one."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise BadRequest(
            400,
            f"expected Content-Type multipart/form-data with a boundary, got {content_type!r}; "
            "send the images as form files",
        )
    parts: list[Part] = []
    headers: dict[bytes, bytes] = {}
    field: list[bytes] = []
    value: list[bytes] = []
    data: list[bytes] = []
    ended = False

    def part_end() -> None:
        _, disposition = parse_options_header(headers.get(b"content-disposition"))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        if filename is not None and len(parts) >= limits.max_files:
            raise BadRequest(413, f"more than {limits.max_files} files in one request")
        parts.append(Part(name, None if filename is None else _text(filename), b"".join(data)))

    def header_end() -> None:
        headers[b"".join(field).lower()] = b"".join(value)
        field.clear()
        value.clear()

    def part_begin() -> None:
        headers.clear()
        data.clear()

    def end() -> None:
        nonlocal ended
        ended = True

    callbacks = {
        "on_part_begin": part_begin,
        "on_header_field": lambda d, s, e: field.append(d[s:e]),
        "on_header_value": lambda d, s, e: value.append(d[s:e]),
        "on_header_end": header_end,
        "on_part_data": lambda d, s, e: data.append(d[s:e]),
        "on_part_end": part_end,
        "on_end": end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(400, f"malformed multipart body: {exc}") from exc
    if not ended:
        raise BadRequest(400, "malformed multipart body: it ends before its closing boundary")
    return parts


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")[:200]


def decode_upload(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """An uploaded file's bytes as an RGB image; 422 naming the file when it is not a
    readable image or has more than ``max_pixels`` pixels (checked from its header)."""
    if not data:
        raise BadRequest(422, f"{name}: empty file; upload an image (JPEG, PNG, WebP, ...)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        width = height = None
    except Exception as exc:  # Pillow raises many types for files it cannot identify
        raise BadRequest(
            422, f"{name}: not a readable image ({type(exc).__name__}: {exc})"
        ) from exc
    if width is None or height is None or width * height > max_pixels:
        size = "more pixels than Pillow allows" if width is None else f"{width} x {height}"
        raise BadRequest(
            422,
            f"{name}: image of {size} is over the limit of {max_pixels:,} pixels; "
            "upload a smaller image",
        )
    try:
        return decode_bytes(data, name)
    except ImageDecodeError as exc:
        raise BadRequest(422, f"{name}: not a readable image ({exc.reason})") from exc
