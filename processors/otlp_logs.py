"""Normalise OTLP logs (`ExportLogsServiceRequest`) through the NIM log-line parsers.

A NIM exporting its logs over OTLP (an OpenTelemetry log bridge, or a Collector's filelog
receiver forwarding container logs) sends the same lines the filelog path reads, in one
of these bodies:
- a string holding a whole line: NIM 2.x / 1.x JSONL, the text logger, uvicorn, CRI or
  docker framing — parsed exactly as a file's line;
- a string holding a logger's bare message (a log bridge puts the level and time beside
  it, in `severity_*` and `time_unix_nano`) — read as that message when no line shape
  fits and the record has a severity;
- a kvlist with a JSONL line's fields (`level`, `time`, `message`, ...) — read as that line.
Each resource becomes one nimlogs batch (processors/nimlogs.py): its `source` is named
from the resource (`otlp_values.resource_source`), its calls carry the resource's
deployment identities (`k8s:`, `pod:`, `svc:`, or `dep:` from `nimtrail.deployment`).
The record's `time_unix_nano` is the line's time (as the runtime's timestamp is for a
file); `observed_time_unix_nano` stands in for the receive time. Any other body is kept
as an unparsed log event and counted, never raised.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from nimtrail.records import iso_from_ns
from processors import nimlogs
from processors.clock import Clock
from processors.content import ContentPolicy
from processors.otlp_values import (DEPLOYMENT_ATTRIBUTE, any_value, attributes, resource_identities,
                                    resource_source)

# OTLP severity numbers in steps of four: 1-4 TRACE, 5-8 DEBUG, 9-12 INFO, ...
_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclasses.dataclass
class ResourceLogs:
    identities: list[str]  # for placing what names no deployment (samples, observations)
    result: nimlogs.NimlogResult


def _level(record: Any) -> str | None:
    if record.severity_text:
        return record.severity_text
    number = record.severity_number
    return _LEVELS[min((number - 1) // 4, len(_LEVELS) - 1)] if number > 0 else None


def _line(record: Any) -> dict[str, Any]:
    """A nimlogs line item for one LogRecord."""
    item: dict[str, Any] = {"time": iso_from_ns(record.time_unix_nano),
                            "observed": iso_from_ns(record.observed_time_unix_nano)}
    if record.time_unix_nano:  # as sent, for a clock_skew finding
        item["time_unix_nano"] = record.time_unix_nano
    body = record.body
    kind = body.WhichOneof("value")
    if kind == "string_value":
        item["text"] = body.string_value
        item["level"] = _level(record)
    elif kind == "kvlist_value":
        item["text"] = orjson.dumps(attributes(body.kvlist_value.values), default=str).decode()
    elif kind is not None:
        # Numbers, arrays, bytes: no line shape fits; kept as an unparsed log event.
        value = any_value(body)
        item["text"] = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return item


def normalise(value: bytes, policy: ContentPolicy, clock: Clock | None = None) -> list[ResourceLogs]:
    """What one otlp_logs message says, per resource; `clock` bounds the lines' times.
    Raises protobuf's DecodeError when `value` is not an ExportLogsServiceRequest."""
    request = ExportLogsServiceRequest()
    request.ParseFromString(value)
    out = []
    for resource_logs in request.resource_logs:
        resource = attributes(resource_logs.resource.attributes)
        lines = [_line(record) for scope in resource_logs.scope_logs for record in scope.log_records]
        if not lines:
            continue
        seen = [line["observed"] or line["time"] for line in lines if line["observed"] or line["time"]]
        doc = {"source": resource_source(resource), "deployment": resource.get(DEPLOYMENT_ATTRIBUTE) or None,
               "file": None, "host": resource.get("host.name"), "received_at": max(seen) if seen else None,
               "lines": lines}
        identities = resource_identities(resource)
        out.append(ResourceLogs(identities, nimlogs.normalise(doc, policy, identities, clock)))
    return out
