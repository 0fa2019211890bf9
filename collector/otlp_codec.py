"""Decoding OTLP export requests (protobuf or OTLP/JSON) for the receivers.

Decoding here only validates and finds the routing key; the bytes forwarded to Kafka are
the protobuf encoding, the same as the OpenTelemetry Collector's kafka exporter writes
(`otlp_proto`), so an existing Collector can feed nimtrail's topics directly.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from nimtrail.errors import PermanentError
from nimtrail.kafka_io import partition_of

# OTLP/JSON writes trace and span ids as hex, where protobuf's JSON mapping expects base64.
_ID_KEYS = {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}


@dataclasses.dataclass(frozen=True)
class Signal:
    name: str  # traces | logs | metrics
    path: str
    request: type[Message]
    response: type[Message]
    topic_key: str  # which TopicsConfig field names its topic


SIGNALS = {
    s.path: s
    for s in (
        Signal("traces", "/v1/traces", trace_service_pb2.ExportTraceServiceRequest,
               trace_service_pb2.ExportTraceServiceResponse, "otlp_spans"),
        Signal("logs", "/v1/logs", logs_service_pb2.ExportLogsServiceRequest,
               logs_service_pb2.ExportLogsServiceResponse, "otlp_logs"),
        Signal("metrics", "/v1/metrics", metrics_service_pb2.ExportMetricsServiceRequest,
               metrics_service_pb2.ExportMetricsServiceResponse, "otlp_metrics"),
    )
}


def _hex_ids_to_base64(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str) and value:
                try:
                    value = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError as e:
                    raise PermanentError("malformed_json", f"{key} is not hex: {value[:40]!r}") from e
            else:
                value = _hex_ids_to_base64(value)
            out[key] = value
        return out
    if isinstance(node, list):
        return [_hex_ids_to_base64(v) for v in node]
    return node


def decode_protobuf(signal: Signal, body: bytes) -> Message:
    message = signal.request()
    try:
        message.ParseFromString(body)
    except (DecodeError, RecursionError) as e:
        raise PermanentError("malformed_protobuf", f"not an OTLP {signal.name} request: {e}") from e
    return message


def decode_json(signal: Signal, body: bytes) -> Message:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise PermanentError("malformed_json", f"body is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise PermanentError("malformed_json", "an OTLP/JSON request must be a JSON object")
    message = signal.request()
    try:
        json_format.ParseDict(_hex_ids_to_base64(doc), message, ignore_unknown_fields=True)
    except json_format.ParseError as e:
        raise PermanentError("malformed_json", f"not an OTLP {signal.name} request: {e}") from e
    return message


def routing_key(signal: Signal, message: Message) -> bytes:
    """Traces are keyed by their first span's trace id (for a split join each trace's
    spans are placed by their own: split_by_trace); logs and metrics by the first
    resource's service.name."""
    if signal.name == "traces":
        for rs in message.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    return span.trace_id.hex().encode()
        return b""
    resources = message.resource_logs if signal.name == "logs" else message.resource_metrics
    for r in resources:
        for attr in r.resource.attributes:
            if attr.key == "service.name":
                return attr.value.string_value.encode()
    return b""


def split_by_trace(message: Message, partitions: int) -> list[tuple[bytes, bytes]]:
    """An export request's spans as one encoded request per partition their traces are
    placed in (kafka_io.partition_of of the hex trace id, among `partitions`), each keyed
    by one of its trace ids, every span under its own resource and scope; [] when all of
    them are placed in one partition (the request goes as it came, byte for byte).
    About 4 µs a span, most of it copying spans into the new requests."""
    placed: dict[bytes, int] = {}  # trace id -> partition: a request holds few traces
    groups: dict[int, dict[tuple[int, int], list]] = {}
    for ri, resource in enumerate(message.resource_spans):
        for si, scope in enumerate(resource.scope_spans):
            for span in scope.spans:
                partition = placed.get(span.trace_id)
                if partition is None:
                    partition = placed[span.trace_id] = partition_of(span.trace_id.hex(), partitions)
                groups.setdefault(partition, {}).setdefault((ri, si), []).append(span)
    if len(groups) <= 1:
        return []
    return [(next(iter(scopes.values()))[0].trace_id.hex().encode(),
             _request_with(SIGNALS["/v1/traces"], message, scopes).SerializeToString())
            for scopes in groups.values()]


def count_items(signal: Signal, message: Message) -> int:
    if signal.name == "traces":
        return sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans)
    if signal.name == "logs":
        return sum(len(sl.log_records) for rl in message.resource_logs for sl in rl.scope_logs)
    return sum(len(sm.metrics) for rm in message.resource_metrics for sm in rm.scope_metrics)


_Z16, _Z8 = bytes(16), bytes(8)


def _bad_spans(spans) -> list[int]:
    # One comprehension, ids bound once: this runs for every span received (hot path).
    return [i for i, s in enumerate(spans)
            if not (len(t := s.trace_id) == 16 and t != _Z16 and len(p := s.span_id) == 8 and p != _Z8
                    and len(s.parent_span_id) in (0, 8))]


def _bad_log_records(records) -> list[int]:
    # trace_id and span_id are optional on a log record, but must be well formed when set.
    return [i for i, r in enumerate(records)
            if len(t := r.trace_id) not in (0, 16) or t == _Z16
            or len(p := r.span_id) not in (0, 8) or p == _Z8]


# signal -> (resource list, scope list, item list, finder of bad items, partial-success field)
_ITEMS = {
    "traces": ("resource_spans", "scope_spans", "spans", _bad_spans, "rejected_spans"),
    "logs": ("resource_logs", "scope_logs", "log_records", _bad_log_records, "rejected_log_records"),
}


def split_invalid(signal: Signal, message: Message) -> tuple[int, Message | None]:
    """Remove items the OTLP data model forbids (spans without a valid trace or span id, log
    records with a malformed one) from `message`, in place. Returns how many were removed
    and a request holding them (for the dead-letter topic), or (0, None)."""
    if signal.name not in _ITEMS:
        return 0, None
    res_field, scope_field, item_field, find_bad, _ = _ITEMS[signal.name]
    bad_of = {(ri, si): bad for ri, r in enumerate(getattr(message, res_field))
              for si, scope in enumerate(getattr(r, scope_field))
              if (bad := find_bad(getattr(scope, item_field)))}
    if not bad_of:
        return 0, None
    resources = getattr(message, res_field)
    rejected = _request_with(signal, message, {
        (ri, si): [getattr(getattr(resources[ri], scope_field)[si], item_field)[i] for i in bad]
        for (ri, si), bad in bad_of.items()})
    for (ri, si), bad in bad_of.items():
        items = getattr(getattr(resources[ri], scope_field)[si], item_field)
        for i in reversed(bad):
            del items[i]
    return sum(map(len, bad_of.values())), rejected


def _request_with(signal: Signal, message: Message, picked: dict[tuple[int, int], list]) -> Message:
    """A request of `signal` holding the `picked` items of `message` ({(resource index,
    scope index): items}, in the request's order), each under a copy of its own resource
    and scope."""
    res_field, scope_field, item_field = _ITEMS[signal.name][:3]
    request, copies = signal.request(), {}
    for (ri, si), items in picked.items():
        resource = getattr(message, res_field)[ri]
        if ri not in copies:
            copies[ri] = getattr(request, res_field).add()
            copies[ri].resource.CopyFrom(resource.resource)
            copies[ri].schema_url = resource.schema_url
        scope = getattr(resource, scope_field)[si]
        copy = getattr(copies[ri], scope_field).add()
        copy.scope.CopyFrom(scope.scope)
        copy.schema_url = scope.schema_url
        getattr(copy, item_field).extend(items)
    return request


def partial_success(signal: Signal, rejected: int, message: str) -> Message:
    """An Export*ServiceResponse that tells the client some items were rejected."""
    response = signal.response()
    if rejected:
        field = _ITEMS[signal.name][4]
        setattr(response.partial_success, field, rejected)
        response.partial_success.error_message = message
    return response
