"""The nimlogs batch message (format in nimtrail/raw.py), shared by the filelog and
http-logs receivers: building it, capping lines, and splitting batches under Kafka's
message limit."""

from __future__ import annotations

import codecs
import socket
from typing import Any

import orjson

from nimtrail import raw
from nimtrail.records import now_iso

HOST = socket.gethostname()
# A nimlogs message stays well under the 16 MiB Kafka limit even with JSON escaping.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def line(text: str, offset: int | None = None, time: str | None = None,
         stream: str | None = None) -> dict[str, Any]:
    return {"text": text, "offset": offset, "time": time, "stream": stream}


def encode_batches(lines: list[dict[str, Any]], *, receiver: str, source: str, deployment: str | None,
                   file: str | None, host: str = HOST, received_at: str | None = None) -> list[bytes]:
    """One nimlogs message for `lines`, or several when one would be too large."""
    doc = {"receiver": receiver, "source": source, "deployment": deployment or None, "file": file,
           "host": host, "received_at": received_at or now_iso(), "lines": lines}
    value = raw.encode(doc)
    if len(value) <= MAX_MESSAGE_BYTES or len(lines) == 1:
        return [value]
    half = len(lines) // 2
    common = {k: v for k, v in doc.items() if k != "lines"}
    return (encode_batches(lines[:half], **common) + encode_batches(lines[half:], **common))


def decode_prefix(data: bytes) -> str:
    """Decode UTF-8 that may have been cut at an arbitrary byte: an incomplete last
    character is dropped; any other invalid byte raises UnicodeDecodeError."""
    return codecs.getincrementaldecoder("utf-8")().decode(data, final=False)


def json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
