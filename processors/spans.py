"""Normalise OTLP spans into evidence for canonical records.

A span is classified by what it says, not by who sent it:
- NIM's own view of a request: vLLM's `llm_request` SERVER span (`gen_ai.request.id`,
  latencies in seconds under vLLM-private names);
- the client's view: a GenAI inference span (`chat`, `text_completion`, `embeddings`, ...)
  with `gen_ai.response.id`, the caller and the tool calls the response asked for;
- a tool execution: `execute_tool` with `gen_ai.tool.call.id`.

Each yields an `Evidence`: a partial record plus where it came from. The joiner merges
evidence into records; nothing here keeps state.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2

from nimtrail.records import iso_from_ns, sha256_hex
from processors.otlp_values import attributes

INFERENCE_OPERATIONS = {
    "chat": "chat", "text_completion": "completion", "generate_content": "chat",
    "completion": "completion", "embeddings": "embeddings", "responses": "responses",
}


@dataclasses.dataclass(frozen=True)
class Evidence:
    """One observation of a record: `kind` and `key` say which record, `source` which view
    (it decides precedence when views disagree), `evidence_id` makes re-delivery harmless."""

    kind: str  # model_call | tool_action
    key: str  # call_id or action_id
    source: str  # span.client | span.nim | span.tool
    evidence_id: str
    fields: dict[str, Any]


def _first(attrs: dict[str, Any], *names: str) -> Any:
    for name in names:
        value = attrs.get(name)
        if value is not None and value != "":
            return value
    return None


def _seconds_to_ms(value: Any) -> float | None:
    return None if value is None else round(float(value) * 1000.0, 3)


def _status(span: trace_pb2.Span) -> str:
    return "error" if span.status.code == trace_pb2.Status.STATUS_CODE_ERROR else "ok"


def _messages(raw: Any) -> list[dict[str, Any]]:
    """GenAI opt-in content attributes hold JSON strings (or already-structured values)."""
    if isinstance(raw, str):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return []
    if isinstance(raw, dict):
        raw = [raw]
    return [m for m in raw or [] if isinstance(m, dict)]


def _tool_calls(attrs: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Tool-call ids and names the response asked for, from `gen_ai.output.messages` parts
    (`{"type":"tool_call","id":..,"name":..}`) or the flattened OpenLLMetry form
    `gen_ai.completion.<i>.tool_calls.<j>.id`."""
    ids: list[str] = []
    names: list[str] = []
    for message in _messages(attrs.get("gen_ai.output.messages")):
        for part in message.get("parts") or []:
            if isinstance(part, dict) and part.get("type") == "tool_call" and part.get("id"):
                ids.append(str(part["id"]))
                names.append(str(part.get("name") or ""))
    if not ids:
        for key, value in attrs.items():
            if key.startswith("gen_ai.completion.") and key.endswith(".id") and ".tool_calls." in key:
                ids.append(str(value))
                names.append(str(attrs.get(key[:-3] + ".name") or ""))
    return ids, names


def _client_call(span: trace_pb2.Span, attrs: dict[str, Any], resource: dict[str, Any],
                 operation: str) -> Evidence | None:
    call_id = _first(attrs, "gen_ai.response.id")
    if not call_id:
        return None
    ids, names = _tool_calls(attrs)
    finish = attrs.get("gen_ai.response.finish_reasons")
    if isinstance(finish, list):
        finish = finish[0] if finish else None
    prompt = attrs.get("gen_ai.input.messages")
    response = attrs.get("gen_ai.output.messages")
    server = _first(attrs, "server.address")
    port = _first(attrs, "server.port")
    fields = {
        "call_id": call_id,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "started_at": iso_from_ns(span.start_time_unix_nano),
        "ended_at": iso_from_ns(span.end_time_unix_nano),
        "model": _first(attrs, "gen_ai.response.model", "gen_ai.request.model"),
        "operation": INFERENCE_OPERATIONS.get(operation, operation),
        "caller": _first(attrs, "enduser.id", "user.id") or _first(resource, "enduser.id", "user.id"),
        "client_service": resource.get("service.name"),
        "status": _status(span),
        "finish_reason": finish,
        "input_tokens": _first(attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"),
        "output_tokens": _first(attrs, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"),
        "e2e_ms": round((span.end_time_unix_nano - span.start_time_unix_nano) / 1e6, 3)
        if span.end_time_unix_nano else None,
        "tool_call_ids": ids or None,
        "tool_names": names or None,
        "prompt_sha256": sha256_hex(prompt) if prompt else None,
        "response_sha256": sha256_hex(response) if response else None,
        "server_address": f"{server}:{port}" if server and port else server,
        "provider": _first(attrs, "gen_ai.provider.name", "gen_ai.system"),
    }
    return Evidence("model_call", str(call_id), "span.client", span.span_id.hex(), fields)


def _nim_call(span: trace_pb2.Span, attrs: dict[str, Any], resource: dict[str, Any]) -> Evidence | None:
    call_id = _first(attrs, "gen_ai.request.id", "gen_ai.response.id")
    if not call_id:
        return None
    fields = {
        "call_id": call_id,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "started_at": iso_from_ns(span.start_time_unix_nano),
        "ended_at": iso_from_ns(span.end_time_unix_nano),
        "model": _first(attrs, "gen_ai.response.model", "gen_ai.request.model"),
        "status": _status(span),
        "input_tokens": _first(attrs, "gen_ai.usage.prompt_tokens", "gen_ai.usage.input_tokens"),
        "output_tokens": _first(attrs, "gen_ai.usage.completion_tokens", "gen_ai.usage.output_tokens"),
        "ttft_ms": _seconds_to_ms(_first(attrs, "gen_ai.latency.time_to_first_token")),
        "e2e_ms": _seconds_to_ms(_first(attrs, "gen_ai.latency.e2e")),
        "queue_ms": _seconds_to_ms(_first(attrs, "gen_ai.latency.time_in_queue")),
        "nim_service": resource.get("service.name"),
        "parent_span_id": span.parent_span_id.hex() or None,
    }
    return Evidence("model_call", str(call_id), "span.nim", span.span_id.hex(), fields)


def _tool_action(span: trace_pb2.Span, attrs: dict[str, Any], resource: dict[str, Any]) -> Evidence:
    arguments = attrs.get("gen_ai.tool.call.arguments")
    error = _first(attrs, "error.type")
    action_id = span.span_id.hex()
    fields = {
        "action_id": action_id,
        "tool_call_id": _first(attrs, "gen_ai.tool.call.id"),
        "trace_id": span.trace_id.hex(),
        "span_id": action_id,
        "started_at": iso_from_ns(span.start_time_unix_nano),
        "ended_at": iso_from_ns(span.end_time_unix_nano),
        "tool_name": _first(attrs, "gen_ai.tool.name") or span.name.removeprefix("execute_tool ").strip(),
        "tool_type": _first(attrs, "gen_ai.tool.type"),
        "arguments_sha256": sha256_hex(arguments) if arguments else None,
        "executed_by": _first(attrs, "enduser.id", "user.id") or resource.get("service.name"),
        "gate": _first(attrs, "nimtrail.approval.gate") or "none",
        "gate_decision": _first(attrs, "nimtrail.approval.decision"),
        "approver": _first(attrs, "nimtrail.approval.approver"),
        "policy_id": _first(attrs, "nimtrail.approval.policy_id"),
        "outcome": "error" if error or _status(span) == "error" else "ok",
        "error": error,
        "target": _first(attrs, "nimtrail.tool.target"),
    }
    return Evidence("tool_action", action_id, "span.tool", action_id, fields)


def classify(span: trace_pb2.Span, attrs: dict[str, Any], resource: dict[str, Any]) -> Evidence | None:
    operation = attrs.get("gen_ai.operation.name")
    if operation is None:
        operation = span.name.split(" ", 1)[0]
    if span.name == "llm_request" or (
        span.kind == trace_pb2.Span.SPAN_KIND_SERVER and "gen_ai.request.id" in attrs
    ):
        return _nim_call(span, attrs, resource)
    if operation == "execute_tool":
        return _tool_action(span, attrs, resource)
    if operation in INFERENCE_OPERATIONS:
        return _client_call(span, attrs, resource, operation)
    return None


def evidence_from_request(payload: bytes) -> Iterator[Evidence]:
    """Every piece of evidence in one OTLP ExportTraceServiceRequest (protobuf bytes).

    Raises google.protobuf.message.DecodeError for bytes that are not such a request.
    """
    request = ExportTraceServiceRequest()
    request.ParseFromString(payload)
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                found = classify(span, attributes(span.attributes), resource)
                if found is not None:
                    yield found
