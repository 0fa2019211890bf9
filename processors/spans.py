"""Normalise OTLP spans into evidence.

A span is classified by what it says, not by who sent it:
- NIM's own view of a request: vLLM's `llm_request` SERVER span (`gen_ai.request.id`,
  latencies in seconds under vLLM-private names, token counts under deprecated names);
- the client's view: a GenAI inference span (`chat`, `text_completion`, `embeddings`, ...)
  with `gen_ai.response.id`, the caller and the tool calls the response asked for;
- a tool execution: `execute_tool` with `gen_ai.tool.call.id`;
- an MCP `tools/call` span, client or server side (`mcp.method.name`). The conventions make
  the client span an execute_tool span too (`gen_ai.operation.name=execute_tool`, and so
  does the server span): whether it is the action itself or joins an outer execute_tool
  is a question of parentage, which the joiner answers (build.Builder.standalone_mcp);
- `invoke_agent`, whose caller and agent name its descendants inherit.

Nothing here keeps state: the joiner links spans to each other by trace parentage.
"""

from __future__ import annotations

from typing import Any, Iterator

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2

from nimtrail.deployments.registry import key as identity_key
from nimtrail.records import sha256_hex
from nimtrail.timestamps import iso_from_ns
from processors import evidence as ev
from processors.clock import UNIX_NANO, Clock, default_clock
from processors.content import ContentPolicy, canonical, digest
from processors.evidence import Evidence
from processors.otlp_values import attributes, resource_identities

INFERENCE_OPERATIONS = {
    "chat": "chat", "text_completion": "completion", "completion": "completion",
    "generate_content": "chat", "embeddings": "embeddings", "responses": "responses",
}
_SERVER = trace_pb2.Span.SPAN_KIND_SERVER
_ERROR = trace_pb2.Status.STATUS_CODE_ERROR


def _first(attrs: dict[str, Any], *names: str) -> Any:
    for name in names:
        value = attrs.get(name)
        if value is not None and value != "":
            return value
    return None


def _ms(seconds: Any) -> float | None:
    try:
        return None if seconds is None else round(float(seconds) * 1000.0, 3)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _caller(attrs: dict[str, Any], resource: dict[str, Any]) -> Any:
    return _first(attrs, "enduser.id", "user.id") or _first(resource, "enduser.id", "user.id")


def _host_port(attrs: dict[str, Any]) -> str | None:
    host, port = _first(attrs, "server.address"), _first(attrs, "server.port")
    if not host:
        return None
    return f"{host}:{port}" if port else str(host)


class _Span:
    """The span fields every kind of evidence shares."""

    __slots__ = ("span", "attrs", "resource", "base")

    def __init__(self, span: trace_pb2.Span, attrs: dict[str, Any], resource: dict[str, Any],
                 clock: Clock):
        self.span = span
        self.attrs = attrs
        self.resource = resource
        span_id = span.span_id.hex()
        started, ended = iso_from_ns(span.start_time_unix_nano), iso_from_ns(span.end_time_unix_nano)
        if started is not None and not clock.low <= started <= clock.high:
            started = clock.clamp(started, span.start_time_unix_nano, UNIX_NANO, "span", span_id, "started_at")
        if ended is not None and not clock.low <= ended <= clock.high:
            ended = clock.clamp(ended, span.end_time_unix_nano, UNIX_NANO, "span", span_id, "ended_at")
        self.base = {
            "trace_id": span.trace_id.hex(),
            "span_id": span_id,
            "parent_span_id": span.parent_span_id.hex() or None,
            "started_at": started,
            "ended_at": ended,
            # The conversation an agent run or a model call belongs to (session view).
            "conversation_id": attrs.get("gen_ai.conversation.id"),
        }

    @property
    def failed(self) -> bool:
        return self.span.status.code == _ERROR


def _messages(raw: Any) -> list[dict[str, Any]]:
    """GenAI content attributes hold JSON strings (or already-structured values)."""
    raw = canonical(raw)
    if isinstance(raw, dict):
        raw = [raw]
    return [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []


def _tool_calls(attrs: dict[str, Any], events: Any, output: Any) -> tuple[list[str], list[str]]:
    """Tool calls the response asked for: `gen_ai.output.messages` parts
    (`{"type":"tool_call","id":..,"name":..}`), the OpenAI-shaped `tool_calls` of a message,
    the flattened OpenLLMetry form `gen_ai.completion.<i>.tool_calls.<j>.id`, or the older
    `gen_ai.choice` span events. `output`: `gen_ai.output.messages`, parsed."""
    ids: list[str] = []
    names: list[str] = []

    def take(call: Any) -> None:
        if not isinstance(call, dict) or not call.get("id"):
            return
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        ids.append(str(call["id"]))
        names.append(str(call.get("name") or function.get("name") or ""))

    for message in _messages(output):
        for part in message.get("parts") or ():
            if isinstance(part, dict) and part.get("type") == "tool_call":
                take(part)
        for call in message.get("tool_calls") or ():
            take(call)
    if not ids:
        for key in sorted(attrs):
            if key.startswith("gen_ai.completion.") and key.endswith(".id") and ".tool_calls." in key:
                take({"id": attrs[key], "name": attrs.get(key[:-3] + ".name")})
    if not ids:
        for event in events:
            if event.name != "gen_ai.choice":
                continue
            event_attrs = attributes(event.attributes)
            for name in ("tool_calls", "message"):
                value = canonical(event_attrs.get(name))
                calls = value.get("tool_calls") if isinstance(value, dict) else value
                for call in calls if isinstance(calls, list) else ():
                    take(call)
    return ids, names


def _client_call(s: _Span, operation: str, policy: ContentPolicy) -> Evidence:
    attrs = s.attrs
    output = attrs.get("gen_ai.output.messages")
    parsed = canonical(output)  # parsed once: for the tool calls and for the response's hash
    ids, names = _tool_calls(attrs, s.span.events, parsed)
    finish = attrs.get("gen_ai.response.finish_reasons", attrs.get("gen_ai.response.finish_reason"))
    if isinstance(finish, list):
        finish = finish[0] if finish else None
    prompt = _first(attrs, "gen_ai.input.messages", "gen_ai.prompt")
    response = _first(attrs, "gen_ai.output.messages", "gen_ai.completion")
    model = _first(attrs, "gen_ai.response.model", "gen_ai.request.model")
    host_port = _host_port(attrs)
    identities = [identity_key("hp", host_port)] if host_port and ":" in host_port else []
    if model:
        identities.append(f"model:{model}")
    span = s.span
    fields = {
        **s.base,
        "model": model,
        "operation": INFERENCE_OPERATIONS.get(operation, operation),
        "caller": _caller(attrs, s.resource),
        "client_service": s.resource.get("service.name"),
        "status": "error" if s.failed or attrs.get("error.type") else "ok",
        "http_status": _int(_first(attrs, "http.response.status_code", "http.status_code")),
        "finish_reason": finish,
        "input_tokens": _int(_first(attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")),
        "output_tokens": _int(_first(attrs, "gen_ai.usage.output_tokens",
                                     "gen_ai.usage.completion_tokens")),
        "e2e_ms": round((span.end_time_unix_nano - span.start_time_unix_nano) / 1e6, 3)
        if span.end_time_unix_nano else None,
        "tool_call_ids": ids or None,
        "tool_names": names or None,
        "prompt_sha256": digest(prompt),
        "response_sha256": sha256_hex(parsed) if response is not None and response is output
        else digest(response),
        "prompt_text": policy.keep_prompt(prompt),
        "response_text": policy.keep_response(response),
        "provider": _first(attrs, "gen_ai.provider.name", "gen_ai.system"),
        "identities": identities,
    }
    call_id = _first(attrs, "gen_ai.response.id")
    if call_id:
        return Evidence(ev.MODEL_CALL, str(call_id), ev.SPAN_CLIENT, s.base["span_id"], fields)
    # No response id (the call failed, or the client never saw one): NIM's span, a child
    # through traceparent, may still name it; the joiner decides by parentage.
    return Evidence(ev.CALL_SPAN, s.base["span_id"], ev.SPAN_CLIENT, s.base["span_id"], fields)


def _nim_call(s: _Span) -> Evidence | None:
    attrs, resource = s.attrs, s.resource
    call_id = _first(attrs, "gen_ai.request.id", "gen_ai.response.id")
    if not call_id:
        return None
    queue = _ms(_first(attrs, "gen_ai.latency.time_in_queue"))
    prefill = _ms(_first(attrs, "gen_ai.latency.time_in_model_prefill"))
    decode = _ms(_first(attrs, "gen_ai.latency.time_in_model_decode"))
    ttft = _ms(_first(attrs, "gen_ai.latency.time_to_first_token"))
    e2e = _ms(_first(attrs, "gen_ai.latency.e2e"))
    # Older vLLM builds report the phases but not the totals: TTFT is queueing plus prefill,
    # end to end adds decoding.
    if ttft is None and queue is not None and prefill is not None:
        ttft = round(queue + prefill, 3)
    if e2e is None and None not in (queue, prefill, decode):
        e2e = round(queue + prefill + decode, 3)
    model = _first(attrs, "gen_ai.response.model", "gen_ai.request.model")
    identities = resource_identities(resource)
    if model:
        identities.append(f"model:{model}")
    finish = attrs.get("gen_ai.response.finish_reasons")
    fields = {
        **s.base,
        "model": model,
        "status": "error" if s.failed else "ok",
        "finish_reason": finish[0] if isinstance(finish, list) and finish else None,
        "input_tokens": _int(_first(attrs, "gen_ai.usage.prompt_tokens", "gen_ai.usage.input_tokens")),
        "output_tokens": _int(_first(attrs, "gen_ai.usage.completion_tokens",
                                     "gen_ai.usage.output_tokens")),
        "ttft_ms": ttft,
        "e2e_ms": e2e,
        "queue_ms": queue,
        "prefill_ms": prefill,
        "decode_ms": decode,
        "service": resource.get("service.name"),
        "identities": identities,
    }
    return Evidence(ev.MODEL_CALL, str(call_id), ev.SPAN_NIM, s.base["span_id"], fields)


def _gate(attrs: dict[str, Any]) -> dict[str, Any]:
    return {
        "gate": _first(attrs, "nimtrail.approval.gate"),
        "gate_decision": _first(attrs, "nimtrail.approval.decision"),
        "approver": _first(attrs, "nimtrail.approval.approver"),
        "policy_id": _first(attrs, "nimtrail.approval.policy_id"),
    }


def _tool_fields(s: _Span, policy: ContentPolicy, prefix: str) -> dict[str, Any]:
    attrs = s.attrs
    arguments = attrs.get("gen_ai.tool.call.arguments")
    error = _first(attrs, "error.type")
    return {
        **s.base,
        "tool_call_id": _first(attrs, "gen_ai.tool.call.id"),
        "tool_name": _first(attrs, "gen_ai.tool.name")
        or s.span.name.removeprefix(prefix).strip() or None,
        "tool_type": _first(attrs, "gen_ai.tool.type"),
        "arguments_sha256": digest(arguments),
        "arguments": policy.keep_arguments(arguments),
        "service": s.resource.get("service.name"),
        "outcome": "error" if error or s.failed else "ok",
        # Free text that instrumentation fills from what the tool saw (an exception's
        # message in error.type, a record or a mailbox as the target): kept always, so
        # redacted always, like kept content. Findings quote these redacted values.
        "error": policy.redact_field(error),
        "target": policy.redact_field(_first(attrs, "nimtrail.tool.target")),
        **_gate(attrs),
    }


def _tool_action(s: _Span, policy: ContentPolicy) -> Evidence:
    fields = _tool_fields(s, policy, "execute_tool ")
    return Evidence(ev.TOOL_ACTION, s.base["span_id"], ev.SPAN_TOOL, s.base["span_id"], fields)


def _mcp(s: _Span, method: str, policy: ContentPolicy) -> Evidence | None:
    if method != "tools/call":
        return None  # listing tools or reading resources runs nothing
    fields = _tool_fields(s, policy, "tools/call ")
    server_side = s.span.kind == _SERVER
    host_port = _host_port(s.attrs)
    service = s.resource.get("service.name")
    aliases = [a for a in ((service, host_port) if server_side else (host_port,)) if a]
    if host_port and ":" in host_port:
        aliases.append(host_port.rsplit(":", 1)[0])
    fields.update({
        "mcp_method": method,
        "mcp_server": (service or host_port) if server_side else host_port,
        "mcp_aliases": aliases,
        "mcp_session": _first(s.attrs, "mcp.session.id"),
        "jsonrpc_id": _first(s.attrs, "jsonrpc.request.id", "rpc.jsonrpc.request_id"),  # older RPC name
        "tool_type": fields["tool_type"] or "extension",
    })
    source = ev.SPAN_MCP_SERVER if server_side else ev.SPAN_MCP_CLIENT
    return Evidence(ev.MCP, s.base["span_id"], source, s.base["span_id"], fields)


def _agent(s: _Span) -> Evidence:
    fields = {
        **s.base,
        "agent_name": _first(s.attrs, "gen_ai.agent.name") or s.span.name.removeprefix("invoke_agent").strip()
        or None,
        "caller": _caller(s.attrs, s.resource),
        "service": s.resource.get("service.name"),
    }
    return Evidence(ev.AGENT, s.base["span_id"], ev.SPAN_AGENT, s.base["span_id"], fields)


# A span carrying none of these (and not named llm_request) is not audited: its attributes
# are not even converted, which matters when the traces also hold HTTP and database spans.
MARKERS = frozenset({"gen_ai.operation.name", "gen_ai.request.id", "gen_ai.response.id", "gen_ai.system",
                     "gen_ai.provider.name", "gen_ai.tool.name", "gen_ai.agent.name", "mcp.method.name",
                     "llm.request.type"})
# Span names of the conventions (`{operation} {target}`), which skip the marker scan.
_NAMED = frozenset({*INFERENCE_OPERATIONS, "llm_request", "execute_tool", "invoke_agent", "tools/call"})
_OPENLLMETRY = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings"}


def classify(span: trace_pb2.Span, attrs: dict[str, Any], resource: dict[str, Any],
             policy: ContentPolicy, clock: Clock | None = None) -> Evidence | None:
    """The evidence one span gives, or None for spans nimtrail does not audit. `clock`
    bounds the span's times; its findings name the span and the record it became."""
    clock = clock or default_clock()
    raised = len(clock.findings)
    found = _classify(span, attrs, resource, policy, clock)
    if len(clock.findings) > raised:
        if found is None:
            del clock.findings[raised:]  # a span that is not audited stores no time
        elif found.key != found.evidence_id:
            clock.name_subject(raised, found.key)
    return found


def _classify(span: trace_pb2.Span, attrs: dict[str, Any], resource: dict[str, Any],
              policy: ContentPolicy, clock: Clock) -> Evidence | None:
    method = attrs.get("mcp.method.name")
    if method is not None:
        return _mcp(_Span(span, attrs, resource, clock), str(method), policy)
    if span.name == "llm_request" or (span.kind == _SERVER and "gen_ai.request.id" in attrs):
        return _nim_call(_Span(span, attrs, resource, clock))
    operation = attrs.get("gen_ai.operation.name")
    if operation is None:
        operation = _OPENLLMETRY.get(attrs.get("llm.request.type")) or span.name.split(" ", 1)[0]
    if operation == "execute_tool":
        return _tool_action(_Span(span, attrs, resource, clock), policy)
    if operation == "invoke_agent":
        return _agent(_Span(span, attrs, resource, clock))
    if operation in INFERENCE_OPERATIONS:
        return _client_call(_Span(span, attrs, resource, clock), operation, policy)
    return None


def evidence_from_request(payload: bytes, policy: ContentPolicy, clock: Clock | None = None) -> Iterator[Evidence]:
    """Every piece of evidence in one OTLP ExportTraceServiceRequest (protobuf bytes);
    `clock` bounds the spans' times.

    Raises google.protobuf.message.DecodeError for bytes that are not such a request.
    """
    clock = clock or default_clock()
    request = ExportTraceServiceRequest()
    request.ParseFromString(payload)
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                if (span.name.partition(" ")[0] not in _NAMED
                        and not any(kv.key in MARKERS for kv in span.attributes)):
                    continue
                found = classify(span, attributes(span.attributes), resource, policy, clock)
                if found is not None:
                    yield found
