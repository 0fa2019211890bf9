"""An agent's tool run through MCP, spelled as the OpenTelemetry MCP and GenAI conventions'
own example spells it (docs/gen-ai/mcp.md, "Tool call"):

    invoke_agent ops                       (INTERNAL, agent service)
      chat {model}                         (CLIENT: the response asks for a tool call)
      [execute_tool {tool}]                (INTERNAL, only with `outer_execute_tool`)
        tools/call {tool}                  (CLIENT: mcp.method.name, gen_ai.operation.name=execute_tool)
          tools/call {tool}                (SERVER, in the MCP server's own service)

The client and the server are separate services (their own tracers, their own resources);
trace context crosses in the JSON-RPC request's `params._meta`, injected and extracted with
the W3C propagator as the conventions prescribe. Tracers come from the caller: in-memory
ones for pure tests, OTLP exporters to a running collector for pipeline tests.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from opentelemetry.trace import SpanKind, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tests.scenarios import ns

W3C = TraceContextTextMapPropagator()
MODEL = "meta/llama-3.1-8b-instruct"


def _span_id(span: Any) -> str:
    return format(span.get_span_context().span_id, "016x")


def serve_tools_call(server: Tracer, request: dict[str, Any], start: dt.datetime, end: dt.datetime) -> None:
    """The MCP server's side: the request as it arrived (bytes on the wire, decoded), its
    parent taken from `params._meta`."""
    received = json.loads(json.dumps(request))
    params = received["params"]
    span = server.start_span(f"tools/call {params['name']}", context=W3C.extract(params["_meta"]),
                             kind=SpanKind.SERVER, start_time=ns(start), attributes={
                                 "mcp.method.name": "tools/call", "gen_ai.operation.name": "execute_tool",
                                 "gen_ai.tool.name": params["name"], "jsonrpc.request.id": str(received["id"]),
                                 "mcp.session.id": "8267461134f24305af708e66b8eda71a",
                                 "mcp.protocol.version": "2025-06-18", "network.transport": "tcp"})
    span.end(end_time=ns(end))


def tool_run(agent: Tracer, server: Tracer, *, caller: str = "alice", tool: str = "delete_record",
             start: dt.datetime | None = None, outer_execute_tool: bool = False,
             mcp_address: tuple[str, int] = ("crm-mcp.tools.svc", 8080)) -> dict[str, str]:
    """Record one tool run; returns the ids a test asserts on (`action_id`: the span the
    action must be keyed by — the outer execute_tool if there is one, else the MCP client)."""
    t0 = start or dt.datetime.now(dt.timezone.utc)
    ms = dt.timedelta(milliseconds=1)
    call_id = f"chatcmpl-{uuid.uuid4().hex}"
    tool_call_id = f"chatcmpl-tool-{uuid.uuid4().hex[:16]}"
    root = agent.start_span("invoke_agent ops", kind=SpanKind.INTERNAL, start_time=ns(t0), attributes={
        "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "ops", "enduser.id": caller})
    in_agent = set_span_in_context(root)
    chat = agent.start_span(f"chat {MODEL}", context=in_agent, kind=SpanKind.CLIENT, start_time=ns(t0 + ms),
                            attributes={
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": MODEL,
        "gen_ai.response.id": call_id, "gen_ai.response.model": MODEL,
        "gen_ai.response.finish_reasons": ["tool_calls"], "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 24, "server.address": "llama.nim.svc", "server.port": 8000,
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "finish_reason": "tool_calls", "parts": [
            {"type": "tool_call", "id": tool_call_id, "name": tool, "arguments": {"id": 42}}]}])})
    chat.end(end_time=ns(t0 + 300 * ms))
    parent, ids = in_agent, {"call_id": call_id, "tool_call_id": tool_call_id, "caller": caller, "tool": tool,
                             "trace_id": format(root.get_span_context().trace_id, "032x")}
    outer = None
    if outer_execute_tool:
        outer = agent.start_span(f"execute_tool {tool}", context=in_agent, kind=SpanKind.INTERNAL,
                                 start_time=ns(t0 + 310 * ms), attributes={
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool, "gen_ai.tool.type": "extension",
            "gen_ai.tool.call.id": tool_call_id})
        parent = set_span_in_context(outer)
    host, port = mcp_address
    client = agent.start_span(f"tools/call {tool}", context=parent, kind=SpanKind.CLIENT,
                              start_time=ns(t0 + 320 * ms), attributes={
        "mcp.method.name": "tools/call", "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
        "gen_ai.tool.call.id": tool_call_id, "jsonrpc.request.id": "3",
        "mcp.session.id": "8267461134f24305af708e66b8eda71a", "server.address": host, "server.port": port,
        "network.transport": "tcp"})
    request = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
               "params": {"name": tool, "arguments": {"id": 42}, "_meta": {}}}
    W3C.inject(request["params"]["_meta"], context=set_span_in_context(client))
    serve_tools_call(server, request, t0 + 322 * ms, t0 + 330 * ms)
    client.end(end_time=ns(t0 + 331 * ms))
    ids["client_span_id"] = _span_id(client)
    if outer is not None:
        outer.end(end_time=ns(t0 + 335 * ms))
    ids["action_id"] = _span_id(outer) if outer is not None else ids["client_span_id"]
    root.end(end_time=ns(t0 + 340 * ms))
    return ids
