"""Span records: every audited span as it came, for the trace and session views.

The joiner merges a trace's spans into calls and actions and keeps their parentage only
while it joins; the warehouse's trace tree needs it for good. Each span that gave evidence
becomes one `span` record at once (version 1: a span never changes, so a re-delivered one
is a no-op), with its role, its parent, its service and the session keys it carries.
"""

from __future__ import annotations

from typing import Any, Iterable

from processors import evidence as ev
from processors.evidence import Evidence

# Evidence source -> the span's role in the trace tree.
ROLES = {
    ev.SPAN_AGENT: "agent",
    ev.SPAN_CLIENT: "model_call",
    ev.SPAN_NIM: "nim_server",
    ev.SPAN_TOOL: "tool",
    ev.SPAN_MCP_CLIENT: "mcp_client",
    ev.SPAN_MCP_SERVER: "mcp_server",
}


def _name(role: str, fields: dict[str, Any]) -> Any:
    if role == "agent":
        return fields.get("agent_name")
    if role in ("model_call", "nim_server"):
        return fields.get("model")
    return fields.get("tool_name")


def span_record(item: Evidence) -> dict[str, Any] | None:
    """The span record of one piece of span evidence; None for evidence from logs."""
    role = ROLES.get(item.source)
    if role is None:
        return None
    f = item.fields
    return {
        "trace_id": f.get("trace_id"), "span_id": f.get("span_id"),
        "parent_span_id": f.get("parent_span_id"),
        "started_at": f.get("started_at"), "ended_at": f.get("ended_at"),
        "role": role, "name": _name(role, f),
        "service": f.get("client_service") or f.get("service"),
        "call_id": item.key if item.kind == ev.MODEL_CALL else None,
        "conversation_id": f.get("conversation_id"),
        "mcp_session_id": f.get("mcp_session"),
        "version": 1, "observed_at": None,
    }


def span_records(items: Iterable[Evidence]) -> list[dict[str, Any]]:
    return [r for r in map(span_record, items) if r is not None]
