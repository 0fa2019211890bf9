"""OTLP/HTTP receiver: POST /v1/traces, /v1/logs, /v1/metrics (protobuf or JSON, gzip).

Answers follow the OTLP/HTTP specification: 200 with an empty Export*ServiceResponse only
after the request is durable in Kafka; 400 for a request that can never succeed (it goes
to the dead-letter topic); 413 for a body over the limit; 503 with Retry-After when Kafka
cannot take it now, so the exporter retries.
"""

from __future__ import annotations

import dataclasses
import logging
from http.server import BaseHTTPRequestHandler

import orjson
from google.rpc import status_pb2

from collector import otlp_codec
from collector.events import ForwardFailed, ItemsForwarded, ItemsReceived, RequestRejected
from collector.forward import Forwarder
from collector.http_body import BodyTooLarge, read_body
from collector.http_server import HttpServer, Response
from nimtrail.config import CollectorConfig, TopicsConfig
from nimtrail.errors import PermanentError, TransientError
from nimtrail.kafka_io import DeadLetters
from nimtrail.ops import StageMetrics

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
RETRY_AFTER_SECONDS = "5"


@dataclasses.dataclass(frozen=True)
class OtlpHttpReceiver:
    collector: CollectorConfig
    topics: TopicsConfig
    forwarder: Forwarder
    dead_letters: DeadLetters
    metrics: StageMetrics

    def handle(self, signal: otlp_codec.Signal, request: BaseHTTPRequestHandler) -> Response:
        receiver = f"otlp_http/{signal.name}"
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        as_json = ctype == JSON
        length = request.headers.get("Content-Length")
        body = b""
        try:
            if ctype not in (PROTOBUF, JSON):
                raise PermanentError("unsupported_content_type",
                                     f"Content-Type {ctype or '(none)'!r}; send {PROTOBUF} or {JSON}")
            body = read_body(request.rfile, int(length) if length and length.isdigit() else None,
                             request.headers.get("Content-Encoding", ""), self.collector.max_body_bytes)
            if as_json:
                message = otlp_codec.decode_json(signal, body)
                payload = message.SerializeToString()
            else:
                message = otlp_codec.decode_protobuf(signal, body)
                payload = body  # forwarded untouched: already the canonical encoding
            items = otlp_codec.count_items(signal, message)
            ItemsReceived(receiver=receiver, items=items).emit(self.metrics, log, items)
            topic = getattr(self.topics, signal.topic_key)
            self.forwarder.send(topic, otlp_codec.routing_key(signal, message), payload)
            ItemsForwarded(receiver=receiver, topic=topic, items=items).emit(self.metrics, log, items)
        except BodyTooLarge as e:
            self._reject(receiver, e, b"", request)
            # An undrained body leaves the connection unusable.
            return self._error(413, e, as_json, close=not e.drained)
        except PermanentError as e:
            self._reject(receiver, e, body, request)
            return self._error(400, e, as_json, close=not body and e.reason != "unsupported_content_type")
        except TransientError as e:
            ForwardFailed(receiver=receiver, detail=str(e)).emit(self.metrics, log)
            return self._error(503, e, as_json, headers={"Retry-After": RETRY_AFTER_SECONDS})
        response = signal.response()
        return Response(200, b"{}" if as_json else response.SerializeToString(),
                        JSON if as_json else PROTOBUF)

    def _reject(self, receiver: str, error: PermanentError, body: bytes,
                request: BaseHTTPRequestHandler) -> None:
        RequestRejected(receiver=receiver, reason=error.reason, detail=error.detail).emit(self.metrics, log)
        source = f"{receiver}:{request.client_address[0]}"
        try:
            self.dead_letters.send(body, reason=error.reason, detail=error.detail, source=source)
        except Exception as e:  # noqa: BLE001 - Kafka down: the client got its 4xx; log it
            log.error("Could not write a rejected request to the dead-letter topic: %s", e)

    @staticmethod
    def _error(status: int, error: Exception, as_json: bool, *, close: bool = False,
               headers: dict[str, str] | None = None) -> Response:
        message = str(error)
        if as_json:
            body = orjson.dumps({"code": status, "message": message})
            return Response(status, body, JSON, headers or {}, close)
        body = status_pb2.Status(code=status, message=message).SerializeToString()
        return Response(status, body, PROTOBUF, headers or {}, close)


def build(collector: CollectorConfig, topics: TopicsConfig, server: HttpServer,
          forwarder: Forwarder, dead_letters: DeadLetters, metrics: StageMetrics) -> OtlpHttpReceiver:
    """Register the OTLP/HTTP routes on the collector's HTTP server."""
    receiver = OtlpHttpReceiver(collector, topics, forwarder, dead_letters, metrics)
    for path, signal in otlp_codec.SIGNALS.items():
        server.route("POST", path, lambda request, s=signal: receiver.handle(s, request))
    return receiver
