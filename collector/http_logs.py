"""http-logs receiver: `POST /v1/nimlogs` on the OTLP/HTTP port, for log shippers.

Fluent Bit's `http` output (format json or json_lines) and Vector's `http` sink (codec
json or ndjson) forward container logs here. The body is newline-delimited lines (JSON
objects or plain text) or one JSON array; each request becomes one nimlogs batch.
`source` (query parameter or `X-Nimtrail-Source` header) names the deployment the lines
come from; `deployment` / `X-Nimtrail-Deployment` may name it separately.

A shipper's record is unwrapped to the line the container printed: Fluent Bit and Docker
records carry it in `log` (with `stream`, `time`), Vector events in `message` (with
`source_type`). Any other JSON object is the line itself (a NIM JSONL line). Interpreting
the line is left to the processors.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from collector import nimlogs
from collector.auth import sender_headers
from collector.events import ItemsReceived
from collector.forward import Entry
from collector.http_body import inflate, read_raw
from collector.http_server import HttpServer, Response
from collector.otlp_http import content_length, refuse
from collector.sink import Sink
from nimtrail.config import CollectorConfig, TopicsConfig
from nimtrail.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

RECEIVER = "http_logs"
PATH = "/v1/nimlogs"
CONTENT_TYPES = {"", "application/json", "application/x-ndjson", "application/ndjson",
                 "application/jsonl", "application/jsonlines", "application/x-jsonlines", "text/plain"}
LINE_TOO_LONG = "line_too_long"


def _time(value: Any) -> str | None:
    """A shipper's timestamp as text; Fluent Bit's `date` is epoch seconds."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return dt.datetime.fromtimestamp(value, dt.timezone.utc).isoformat().replace("+00:00", "Z")
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def unwrap(record: dict[str, Any], original: str | None) -> tuple[str, str | None, str | None]:
    """(text, time, stream) of one shipper record; see the module docstring."""
    if isinstance(record.get("log"), str):
        text = record["log"]
        time = _time(record.get("time", record.get("date", record.get("@timestamp"))))
    elif isinstance(record.get("message"), str) and "source_type" in record:
        text = record["message"]
        time = _time(record.get("timestamp"))
    else:
        return (original if original is not None else nimlogs.json_dumps(record)), None, None
    if text.endswith("\n"):
        text = text[:-1]
    return text.removesuffix("\r"), time, _str(record.get("stream"))


def parse(body: str, as_array: bool) -> list[tuple[str, str | None, str | None]]:
    """Lines of a request body as (text, time, stream); PermanentError for a bad array."""
    out: list[tuple[str, str | None, str | None]] = []
    if as_array:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise PermanentError("malformed_json", f"body is not valid JSON: {e}") from e
        if isinstance(doc, dict):
            doc = [doc]
        if not isinstance(doc, list):
            raise PermanentError("malformed_json", "expected a JSON array of records or lines")
        for item in doc:
            if isinstance(item, dict):
                out.append(unwrap(item, None))
            elif isinstance(item, str):
                out.append((item, None, None))
            else:
                out.append((nimlogs.json_dumps(item), None, None))
        return out
    for text in body.splitlines():
        if not text.strip():
            continue
        if text.lstrip().startswith("{"):
            try:
                record = orjson.loads(text)
            except orjson.JSONDecodeError:
                record = None  # a text line that happens to start with a brace
            if isinstance(record, dict):
                out.append(unwrap(record, text))
                continue
        out.append((text, None, None))
    return out


@dataclasses.dataclass(frozen=True)
class HttpLogsReceiver:
    collector: CollectorConfig
    topics: TopicsConfig
    sink: Sink

    def handle(self, request: BaseHTTPRequestHandler) -> Response:
        query = parse_qs(urlsplit(request.path).query)
        source = (query.get("source", [""])[0] or request.headers.get("X-Nimtrail-Source", "")
                  or f"http:{request.client_address[0]}")
        deployment = (query.get("deployment", [""])[0] or request.headers.get("X-Nimtrail-Deployment", "")
                      or query.get("source", [""])[0] or request.headers.get("X-Nimtrail-Source", "") or None)
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        body = b""
        try:
            body = read_raw(request.rfile, content_length(request), self.collector.max_body_bytes)
            body = inflate(body, request.headers.get("Content-Encoding", ""), self.collector.max_body_bytes)
            if ctype not in CONTENT_TYPES:
                raise PermanentError("unsupported_content_type",
                                     f"Content-Type {ctype!r}; send JSON, NDJSON or text lines")
            try:
                text = body.decode()
            except UnicodeDecodeError as e:
                raise PermanentError("invalid_utf8", f"body is not UTF-8 text: {e}") from e
            as_array = ctype == "application/json" and text.lstrip()[:1] in ("[", "")
            lines = parse(text, as_array)
            accepted = self._forward(lines, source, deployment, request.client_address[0],
                                     getattr(request, "sender", None))
        except (PermanentError, TransientError) as e:
            return refuse(self.sink, RECEIVER, e, body, source, True)
        return Response(200, orjson.dumps({"accepted": accepted}))

    def _forward(self, lines: list[tuple[str, str | None, str | None]], source: str,
                 deployment: str | None, host: str, sender: str | None = None) -> int:
        ItemsReceived(receiver=RECEIVER, items=len(lines)).emit(self.sink.metrics, log, len(lines))
        limit = self.collector.max_line_bytes
        out, overflow = [], []
        for text, time, stream in lines:
            data = text.encode()
            if len(data) > limit:
                text = nimlogs.decode_prefix(data[:limit])
                overflow.append((len(out), len(data), data[len(text.encode()):]))
            out.append(nimlogs.line(text, None, time, stream))
        for index, size, rest in overflow:
            self.sink.dead_letter(RECEIVER, rest, reason=LINE_TOO_LONG, source=source,
                                  detail=f"line {index} of a request from {source} had {size} bytes; "
                                         f"the first {limit} were forwarded, these are the rest")
        if not out:
            return 0
        values = nimlogs.encode_batches(out, receiver="http", source=source, deployment=deployment,
                                        file=None, host=host)
        headers = sender_headers(sender)
        entries = [Entry(self.topics.nimlogs, source.encode(), v, headers) for v in values]
        self.sink.forward_many(RECEIVER, entries, {self.topics.nimlogs: len(out)})
        return len(out)


def build(collector: CollectorConfig, topics: TopicsConfig, server: HttpServer,
          sink: Sink) -> HttpLogsReceiver:
    """Register `POST /v1/nimlogs` on the collector's HTTP server."""
    receiver = HttpLogsReceiver(collector, topics, sink)
    server.route("POST", PATH, receiver.handle)
    return receiver
