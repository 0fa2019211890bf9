"""Reading request bodies safely: a size limit before and after decompression."""

from __future__ import annotations

import zlib
from typing import BinaryIO

from nimtrail.errors import PermanentError


# An oversized body is still read and thrown away up to this many bytes, so the client
# receives the 413 instead of a broken pipe; beyond it the connection is simply closed.
DRAIN_LIMIT = 64 * 1024 * 1024


class BodyTooLarge(PermanentError):
    """The body (or its decompressed form) exceeds the configured limit: HTTP 413.

    `drained` says whether the request body was fully consumed (the connection can be kept).
    """

    def __init__(self, detail: str, drained: bool = True):
        super().__init__("body_too_large", detail)
        self.drained = drained


def _drain(stream: BinaryIO, length: int) -> bool:
    if length > DRAIN_LIMIT:
        return False
    while length > 0:
        chunk = stream.read(min(length, 1024 * 1024))
        if not chunk:
            return False
        length -= len(chunk)
    return True


def read_body(stream: BinaryIO, content_length: int | None, encoding: str, limit: int) -> bytes:
    """Read and, for gzip/deflate, decompress a body without ever holding more than `limit`
    decompressed bytes (a gzip bomb is refused while inflating, not after)."""
    if content_length is None:
        raise PermanentError("length_required", "send Content-Length (chunked bodies are not accepted)")
    if content_length > limit:
        raise BodyTooLarge(f"Content-Length {content_length} exceeds the limit of {limit} bytes",
                           drained=_drain(stream, content_length))
    raw = stream.read(content_length)
    if len(raw) != content_length:
        raise PermanentError("truncated_body", f"expected {content_length} bytes, got {len(raw)}")
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        return raw
    if encoding not in ("gzip", "deflate"):
        raise PermanentError("unsupported_encoding", f"Content-Encoding {encoding!r} is not supported")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error as e:
        raise PermanentError("malformed_gzip", f"body is not valid {encoding}: {e}") from e
    if len(out) > limit or inflater.unconsumed_tail:
        raise BodyTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
    if not inflater.eof:
        raise PermanentError("malformed_gzip", f"{encoding} stream is truncated")
    return out
