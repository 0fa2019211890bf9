"""A trace as a waterfall of its audited spans, and a session's calls and actions in order:
`trace` and `session`."""

from __future__ import annotations

from typing import Any, Callable

import duckdb

from warehouse.params import BadParameter, Params
from warehouse.queries import tree
from warehouse.queries.common import rows

TRACE_PARAMS = {"trace_id"}
SESSION_PARAMS = {"session_id"}

# A trace or session beyond this many spans is shown in part (and says so): the views are
# for reading, and a runaway trace must not hold the API.
MAX_SPANS = 5000

_SPAN_COLUMNS = ("s.trace_id, s.span_id, s.parent_span_id, s.started_at, s.ended_at, s.role, s.name, "
                 "s.service, s.call_id, s.conversation_id, s.mcp_session_id")
# What a node shows of its call or action (content fields masked for roles without content).
_CALL_COLUMNS = ("call_id, trace_id, span_id, started_at, ended_at, model, operation, caller, client_service, "
                 "deployment_id, deployment_version, status, finish_reason, input_tokens, output_tokens, "
                 "ttft_ms, e2e_ms, queue_ms, tool_call_ids, tool_names, prompt_text, response_text")
_ACTION_COLUMNS = ("action_id, trace_id, span_id, started_at, ended_at, tool_call_id, tool_name, tool_type, "
                   "mcp_server, executed_by, gate, gate_decision, approver, outcome, error, target, "
                   "arguments, call_id")


# The row lookups the views are made of: a name -> the rows it finds for one value. A
# sharded warehouse's front asks each shard the same lookups and merges their rows
# (warehouse/front.py): the spans and records of one trace may be in every shard.
LOOKUPS: dict[str, Callable[[duckdb.DuckDBPyConnection, Any], list[dict[str, Any]]]] = {
    "spans-of-traces": lambda con, value: rows(
        con, f"SELECT {_SPAN_COLUMNS} FROM trace_spans s WHERE list_contains(?::VARCHAR[], s.trace_id) "
             "ORDER BY s.started_at NULLS LAST, s.span_id LIMIT ?", [value[0], value[1]]),
    "session-traces": lambda con, session_id: rows(
        con, "SELECT DISTINCT trace_id FROM trace_spans "
             "WHERE conversation_id = ? OR mcp_session_id = ? OR (span_id = ? AND role = 'agent') "
             "ORDER BY trace_id", [session_id, session_id, session_id.lower()]),
    "calls-of-traces": lambda con, trace_ids: rows(
        con, f"SELECT {_CALL_COLUMNS} FROM model_calls WHERE list_contains(?::VARCHAR[], trace_id) "
             "ORDER BY call_id", [trace_ids]),
    "actions-of-traces": lambda con, trace_ids: rows(
        con, f"SELECT {_ACTION_COLUMNS} FROM tool_actions WHERE list_contains(?::VARCHAR[], trace_id) "
             "ORDER BY action_id", [trace_ids]),
}
# Each lookup's order (the first column ascending, nulls last, then the rest), and which
# are cut at a limit (the value's second item), to merge shards' rows.
LOOKUP_ORDER = {"spans-of-traces": ("started_at", "span_id"), "session-traces": ("trace_id",),
                "calls-of-traces": ("call_id",), "actions-of-traces": ("action_id",)}
LIMITED = {"spans-of-traces"}
DISTINCT = {"session-traces"}  # (a trace's spans, so its id, may be in every shard)

Lookup = Callable[[str, Any], list[dict[str, Any]]]


def _records(find: Lookup, trace_ids: list[str]) -> tuple[list[dict], list[dict]]:
    return find("calls-of-traces", trace_ids), find("actions-of-traces", trace_ids)


def _required(params: Params, name: str) -> str:
    value = params.text(name)
    if not value:
        raise BadParameter(name, "required")
    return value


def trace(con: duckdb.DuckDBPyConnection, params: Params) -> dict[str, Any]:
    return trace_by(params, lambda what, value: LOOKUPS[what](con, value))


def trace_by(params: Params, find: Lookup) -> dict[str, Any]:
    """Every audited span of one trace as a waterfall (depth first, with offsets and
    durations), each with the model call or tool action it is the record of (`find`: one
    store's lookups, or every shard's merged)."""
    trace_id = _required(params, "trace_id").lower()
    spans = find("spans-of-traces", [[trace_id], MAX_SPANS + 1])
    truncated = len(spans) > MAX_SPANS
    spans = spans[:MAX_SPANS]
    calls, actions = _records(find, [trace_id])
    spans += tree.unplaced(spans, calls, actions)
    nodes = tree.attach(tree.waterfall(spans), calls, actions)
    return {"trace_id": trace_id, "found": bool(nodes), "truncated": truncated, "rows": nodes,
            "services": sorted({n["service"] for n in nodes if n.get("service")})}


def session(con: duckdb.DuckDBPyConnection, params: Params) -> dict[str, Any]:
    return session_by(params, lambda what, value: LOOKUPS[what](con, value))


def session_by(params: Params, find: Lookup) -> dict[str, Any]:
    """One session's model calls and tool actions in order: a conversation
    (`gen_ai.conversation.id`), an MCP session (`mcp.session.id`) or an agent run (its
    invoke_agent span id), across every trace it touched (`find`: see trace_by)."""
    session_id = _required(params, "session_id")
    touched = [r["trace_id"] for r in find("session-traces", session_id)]
    spans = find("spans-of-traces", [touched, MAX_SPANS + 1]) if touched else []
    truncated = len(spans) > MAX_SPANS
    spans = spans[:MAX_SPANS]
    members = tree.session_members(spans, session_id)
    chosen = [s for s in spans if s["span_id"] in members]
    trace_ids = sorted({s["trace_id"] for s in chosen})
    calls, actions = _records(find, trace_ids) if trace_ids else ([], [])
    steps: list[dict[str, Any]] = []
    seen: set[str] = set()
    for node in tree.attach(chosen, calls, actions):
        record = node.get("call") or node.get("action")
        if record is None:
            continue
        kind, key = ("model_call", record["call_id"]) if node.get("call") else ("tool_action", record["action_id"])
        if key in seen:
            continue
        seen.add(key)
        steps.append({"kind": kind, "id": key, "trace_id": node["trace_id"], "span_id": node["span_id"],
                      "started_at": record.get("started_at") or node.get("started_at"),
                      "name": node.get("name"), "service": node.get("service"), **{kind: record}})
    steps.sort(key=lambda s: (s["started_at"] or "", s["id"]))
    for i, step in enumerate(steps, 1):
        step["step"] = i
    agents = [{"span_id": s["span_id"], "trace_id": s["trace_id"], "name": s.get("name"),
               "service": s.get("service"), "started_at": s.get("started_at")}
              for s in chosen if s.get("role") == "agent"]
    return {"session_id": session_id, "found": bool(steps or agents), "truncated": truncated,
            "traces": trace_ids, "agents": agents, "rows": steps}
