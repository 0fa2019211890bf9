"""Agent traces as real OTLP protobuf, with room for hostile attribute values (huge strings,
control characters, deep structures), posted to the collector's OTLP/HTTP receiver; and
counting what the warehouse holds through its query API."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from nimtrail import api_client

CLIENT, INTERNAL = trace_pb2.Span.SPAN_KIND_CLIENT, trace_pb2.Span.SPAN_KIND_INTERNAL


def any_value(value: Any) -> common_pb2.AnyValue:
    """A Python value as an OTLP AnyValue (lists and dicts nest as arrays and kvlists)."""
    out = common_pb2.AnyValue()
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, (bytes, bytearray)):
        out.bytes_value = bytes(value)
    elif isinstance(value, (list, tuple)):
        out.array_value.values.extend(any_value(v) for v in value)
    elif isinstance(value, dict):
        out.kvlist_value.values.extend(common_pb2.KeyValue(key=str(k), value=any_value(v))
                                       for k, v in value.items())
    else:
        out.string_value = str(value)
    return out


def _attributes(values: dict[str, Any]) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in values.items()]


def agent_trace(n: int, *, hostile: dict[str, Any] | None = None, caller: Any = "alice",
                tag: str = "") -> tuple[bytes, dict[str, str]]:
    """One agent trace as an ExportTraceServiceRequest: invoke_agent → chat (whose response
    asks for a tool) → execute_tool. `caller` goes in `enduser.id` of the agent and chat
    spans; `hostile` attributes go on all three. Returns the body and the ids to look for."""
    hostile = hostile or {}
    trace_id = os.urandom(16)
    agent_id, chat_id, tool_id = os.urandom(8), os.urandom(8), os.urandom(8)
    call_id = f"chatcmpl-{tag}{n}-{trace_id.hex()[:12]}"
    tool_call_id = f"call-{tag}{n}-{trace_id.hex()[:12]}"
    now = time.time_ns()

    def span(span_id, parent, name, kind, attrs):
        return trace_pb2.Span(trace_id=trace_id, span_id=span_id, parent_span_id=parent, name=name,
                              kind=kind, start_time_unix_nano=now, end_time_unix_nano=now + 5_000_000,
                              attributes=_attributes({**attrs, **hostile}))

    output = json.dumps([{"role": "assistant", "finish_reason": "tool_calls", "parts": [
        {"type": "tool_call", "id": tool_call_id, "name": "delete_record", "arguments": {"id": n}}]}])
    spans = [
        span(agent_id, b"", "invoke_agent ops", INTERNAL,
             {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "ops", "enduser.id": caller}),
        span(chat_id, agent_id, "chat llama", CLIENT,
             {"gen_ai.operation.name": "chat", "gen_ai.request.model": "meta/llama-3.1-8b-instruct",
              "gen_ai.response.id": call_id, "enduser.id": caller, "gen_ai.output.messages": output,
              "gen_ai.input.messages": json.dumps([{"role": "user", "content": f"task {n}"}])}),
        span(tool_id, agent_id, "execute_tool delete_record", INTERNAL,
             {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "delete_record",
              "gen_ai.tool.call.id": tool_call_id, "gen_ai.tool.call.arguments": json.dumps({"id": n})}),
    ]
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(_attributes({"service.name": "ops-agent"}))
    resource_spans.scope_spans.add().spans.extend(spans)
    return request.SerializeToString(), {"call_id": call_id, "tool_call_id": tool_call_id,
                                         "trace_id": trace_id.hex()}


def post_traces(otlp_http: str, body: bytes) -> int:
    """POST one OTLP/HTTP protobuf request; the status the collector answered."""
    request = urllib.request.Request(f"{otlp_http}/v1/traces", data=body, method="POST",
                                     headers={"Content-Type": "application/x-protobuf"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def stored(api: str, name: str, id_field: str, **params: Any) -> set[str]:
    """Every `id_field` the query `name` (calls / actions) returns, page by page."""
    found: set[str] = set()
    offset: int | None = 0
    while offset is not None:
        page = api_client.query(api, name, {**params, "limit": 1000, "offset": offset})
        found.update(row[id_field] for row in page["rows"])
        offset = page.get("next_offset")
    return found
