"""OTLP/HTTP receiver: POST /v1/traces, /v1/logs, /v1/metrics (protobuf or JSON, gzip).

Answers follow the OTLP/HTTP specification: 200 with an Export*ServiceResponse only after
the request is durable (Kafka, or the on-disk buffer), carrying `partial_success` when
items were set aside; 400 for a request that can never succeed (it goes to the dead-letter
topic), 415 for a content type other than protobuf or JSON, 413 for a body over the limit;
429 (buffer full) or 503 (Kafka unavailable, no buffer) with Retry-After, so the exporter
retries.
"""

from __future__ import annotations

import dataclasses
import logging
from http.server import BaseHTTPRequestHandler

import orjson
from google.protobuf import json_format
from google.rpc import status_pb2

from collector import otlp_codec
from collector.buffer import BufferFull
from collector.http_body import BodyTooLarge, inflate, read_raw
from collector.http_server import HttpServer, Response
from collector.otlp_export import RETRY_AFTER_SECONDS, OtlpExport
from collector.sink import Sink
from nimtrail.config import CollectorConfig
from nimtrail.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
UNREAD = {"length_required", "truncated_body"}


def content_length(request: BaseHTTPRequestHandler) -> int | None:
    length = request.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


@dataclasses.dataclass(frozen=True)
class OtlpHttpReceiver:
    collector: CollectorConfig
    export: OtlpExport
    sink: Sink

    def handle(self, signal: otlp_codec.Signal, request: BaseHTTPRequestHandler) -> Response:
        receiver = f"otlp_http/{signal.name}"
        source = f"{receiver}:{request.client_address[0]}"
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        as_json = ctype == JSON
        body = b""
        try:
            body = read_raw(request.rfile, content_length(request), self.collector.max_body_bytes)
            body = inflate(body, request.headers.get("Content-Encoding", ""), self.collector.max_body_bytes)
            if ctype not in (PROTOBUF, JSON):
                raise PermanentError("unsupported_content_type",
                                     f"Content-Type {ctype or '(none)'!r}; send {PROTOBUF} or {JSON}")
            response = self.export.accept(signal, body, as_json=as_json, receiver=receiver, source=source,
                                          sender=getattr(request, "sender", None))
        except (PermanentError, TransientError) as e:
            return refuse(self.sink, receiver, e, body, source, as_json)
        if as_json:
            return Response(200, orjson.dumps(json_format.MessageToDict(response)), JSON)
        return Response(200, response.SerializeToString(), PROTOBUF)


def refuse(sink, receiver: str, error: PermanentError | TransientError, body: bytes, source: str,
           as_json: bool) -> Response:
    """The answer to input that was not accepted, shared by every HTTP receiver: bad input
    goes to the dead-letter topic and gets its 4xx; a Kafka that cannot take it now gets a
    retry hint."""
    if isinstance(error, TransientError):
        return retry_response(error, as_json)
    sink.reject(receiver, error, body, source)
    if isinstance(error, BodyTooLarge):
        # Only what was sent is kept (a gzip bomb stays compressed); an over-long body was
        # not read at all, so the connection cannot be reused.
        return error_response(413, error, as_json, close=True)
    status = {"unsupported_content_type": 415, "too_large_for_kafka": 413}.get(error.reason, 400)
    # A body that could not be read leaves the connection unusable.
    return error_response(status, error, as_json, close=error.reason in UNREAD)


def retry_response(error: TransientError, as_json: bool) -> Response:
    """429 when the buffer is full, else 503; both say when to come back."""
    status = 429 if isinstance(error, BufferFull) else 503
    return error_response(status, error, as_json, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def error_response(status: int, error: Exception, as_json: bool, *, close: bool = False,
                   headers: dict[str, str] | None = None) -> Response:
    message = str(error)
    if as_json:
        body = orjson.dumps({"code": status, "message": message})
        return Response(status, body, JSON, headers or {}, close)
    body = status_pb2.Status(code=status, message=message).SerializeToString()
    return Response(status, body, PROTOBUF, headers or {}, close)


def build(collector: CollectorConfig, export: OtlpExport, server: HttpServer,
          sink: Sink) -> OtlpHttpReceiver:
    """Register the OTLP/HTTP routes on the collector's HTTP server."""
    receiver = OtlpHttpReceiver(collector, export, sink)
    for path, signal in otlp_codec.SIGNALS.items():
        server.route("POST", path, lambda request, s=signal: receiver.handle(s, request))
    return receiver
