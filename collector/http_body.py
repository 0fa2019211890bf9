"""Reading request bodies safely: a size limit before and after decompression."""

from __future__ import annotations

import zlib
from typing import BinaryIO

from nimtrail.errors import PermanentError


DRAIN_FACTOR = 4  # an over-limit body up to this many times the limit is read and dropped


class BodyTooLarge(PermanentError):
    """The body (or its decompressed form) exceeds the configured limit: HTTP 413."""

    def __init__(self, detail: str):
        super().__init__("body_too_large", detail)


def read_body(stream: BinaryIO, content_length: int | None, encoding: str, limit: int) -> bytes:
    """Read and, for gzip/deflate, decompress a body without ever holding more than `limit`
    decompressed bytes (a gzip bomb is refused while inflating, not after)."""
    return inflate(read_raw(stream, content_length, limit), encoding, limit)


def read_raw(stream: BinaryIO, content_length: int | None, limit: int) -> bytes:
    """Read a body as sent (still encoded), refusing one whose length is over `limit`."""
    if content_length is None:
        raise PermanentError("length_required", "send Content-Length (chunked bodies are not accepted)")
    if content_length > limit:
        if content_length <= DRAIN_FACTOR * limit:
            # Read and drop it, so the client is not cut off mid-send and sees the 413.
            left = content_length
            while left > 0 and (chunk := stream.read(min(left, 1024 * 1024))):
                left -= len(chunk)
        raise BodyTooLarge(f"Content-Length {content_length} exceeds the limit of {limit} bytes")
    raw = stream.read(content_length)
    if len(raw) != content_length:
        raise PermanentError("truncated_body", f"expected {content_length} bytes, got {len(raw)}")
    return raw


def inflate(raw: bytes, encoding: str, limit: int) -> bytes:
    """Undo a gzip/deflate Content-Encoding, refusing more than `limit` decompressed bytes.

    A gzip body may be several members one after another (RFC 1952 2.2; `cat a.gz b.gz`,
    pigz, some shippers flushing per batch): every member is inflated, and the limit is on
    their sum. Anything after the last member that is not another member refuses the whole
    body, so a request is never forwarded half-read."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        return raw
    if encoding not in ("gzip", "deflate"):
        raise PermanentError("unsupported_encoding", f"Content-Encoding {encoding!r} is not supported")
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    out: list[bytes] = []
    size, rest = 0, raw
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            part = inflater.decompress(rest, limit - size + 1)
        except zlib.error as e:
            raise PermanentError("malformed_gzip", f"body is not valid {encoding}"
                                 f"{f' after {len(out)} complete member(s)' if out else ''}: {e}") from e
        size += len(part)
        if size > limit or inflater.unconsumed_tail:
            raise BodyTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
        if not inflater.eof:
            raise PermanentError("malformed_gzip", f"{encoding} stream is truncated")
        out.append(part)
        rest = inflater.unused_data
        if not rest:
            return b"".join(out)
        if encoding == "deflate":  # a zlib stream has one member; more bytes are not ours to guess
            raise PermanentError("malformed_gzip", f"{len(rest)} bytes after the end of the deflate stream")
