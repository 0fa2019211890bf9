"""Assembling stored spans into a trace tree, and picking out a session's members.

Pure functions over rows as the queries return them (times as ISO-8601 text). A span
whose parent was not audited (an HTTP span between a client and NIM, a parent in another
service that exports nothing) hangs from the audited span of the same model call when
there is one, else it is a root: the tree never loses a span, it only flattens what it
cannot place.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any, Iterable

# The roles whose span is a view of a model call; of them, the client's span is the call's
# own node and NIM's hangs under it.
CALL_ROLES = ("model_call", "nim_server")
ACTION_ROLES = ("tool", "mcp_client")


def _time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _ms(later: dt.datetime | None, earlier: dt.datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return round((later - earlier).total_seconds() * 1000.0, 3)


def _order(span: dict[str, Any]) -> tuple[str, str]:
    return (span.get("started_at") or "", span["span_id"])


def parents(spans: list[dict[str, Any]]) -> dict[str, str | None]:
    """Each span's parent within `spans` (None: a root). A NIM span whose parent is not
    among them hangs under the client span of the same call."""
    by_id = {s["span_id"]: s for s in spans}
    client_of_call = {s["call_id"]: s["span_id"] for s in spans
                      if s.get("role") == "model_call" and s.get("call_id")}
    out: dict[str, str | None] = {}
    for s in spans:
        parent = s.get("parent_span_id")
        if parent not in by_id:
            parent = client_of_call.get(s.get("call_id")) if s.get("role") == "nim_server" else None
        out[s["span_id"]] = parent if parent != s["span_id"] else None
    return out


def _children(spans: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    parent_of = parents(spans)
    children: dict[str, list[dict[str, Any]]] = defaultdict(list)
    roots = []
    for s in sorted(spans, key=_order):
        parent = parent_of[s["span_id"]]
        (children[parent] if parent is not None else roots).append(s)
    return roots, children


def waterfall(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The spans depth first (children by start time), each with `depth`, its placed
    `parent_span_id`, `offset_ms` from the trace's first start and `duration_ms`."""
    roots, children = _children(spans)
    starts = [t for t in (_time(s.get("started_at")) for s in spans) if t is not None]
    origin = min(starts) if starts else None
    out: list[dict[str, Any]] = []
    seen: set[str] = set()

    def visit(span: dict[str, Any], depth: int, parent: str | None) -> None:
        if span["span_id"] in seen:  # parentage that loops: each span once
            return
        seen.add(span["span_id"])
        started, ended = _time(span.get("started_at")), _time(span.get("ended_at"))
        out.append({**span, "parent_span_id": parent, "depth": depth,
                    "offset_ms": _ms(started, origin), "duration_ms": _ms(ended, started)})
        for child in children.get(span["span_id"], ()):
            visit(child, depth + 1, span["span_id"])

    for root in roots:
        visit(root, 0, None)
    # Spans only reachable through a loop of parents: still shown, as roots.
    for span in sorted(spans, key=_order):
        visit(span, 0, None)
    return out


def session_members(spans: list[dict[str, Any]], session_id: str) -> set[str]:
    """The span ids of one session: every span that carries `session_id` as its
    conversation or MCP session (or is the agent span with that id), with its descendants;
    an MCP span's own tool action (its nearest tool ancestor) belongs to the session too."""
    parent_of = parents(spans)
    roles = {s["span_id"]: s.get("role") for s in spans}
    _, children = _children(spans)
    found: set[str] = set()
    todo = [s["span_id"] for s in spans
            if session_id in (s.get("conversation_id"), s.get("mcp_session_id"))
            or (s["span_id"] == session_id.lower() and s.get("role") == "agent")]
    for span_id in list(todo):
        if roles[span_id] in ("mcp_client", "mcp_server"):
            ancestor = parent_of[span_id]
            hops = 0
            while ancestor is not None and roles.get(ancestor) != "tool" and hops < len(spans):
                ancestor, hops = parent_of.get(ancestor), hops + 1
            if ancestor is not None:
                todo.append(ancestor)
    while todo:
        span_id = todo.pop()
        if span_id in found:
            continue
        found.add(span_id)
        todo.extend(c["span_id"] for c in children.get(span_id, ()))
    return found


def attach(nodes: Iterable[dict[str, Any]], calls: list[dict[str, Any]],
           actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each node with the stored model call (`call`) or tool action (`action`) its span is
    the record of: a call by its client span (or by call id, for a call that has none), an
    action by its span."""
    call_by_span = {c["span_id"]: c for c in calls if c.get("span_id")}
    call_by_id = {c["call_id"]: c for c in calls}
    action_by_span = {a["action_id"]: a for a in actions}
    out = []
    for node in nodes:
        node = dict(node)
        role = node.get("role")
        if role == "model_call":
            node["call"] = call_by_span.get(node["span_id"]) or call_by_id.get(node.get("call_id"))
        elif role == "nim_server" and node.get("call_id") in call_by_id:
            call = call_by_id[node["call_id"]]
            # NIM's own view of a call whose client span was not audited: the call's node.
            if call.get("span_id") in (None, node["span_id"]):
                node["call"] = call
        elif role in ACTION_ROLES:
            node["action"] = action_by_span.get(node["span_id"])
        out.append(node)
    return out


def unplaced(spans: list[dict[str, Any]], calls: list[dict[str, Any]],
             actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Span-like rows for calls and actions whose spans were not stored (recorded before
    spans were, or from NIM's logs alone), so the waterfall still shows them."""
    span_ids = {s["span_id"] for s in spans}
    call_ids = {s.get("call_id") for s in spans}
    out = []
    for c in calls:
        if c["call_id"] not in call_ids and (c.get("span_id") or c["call_id"]) not in span_ids:
            out.append({"trace_id": c.get("trace_id"), "span_id": c.get("span_id") or c["call_id"],
                        "parent_span_id": None, "started_at": c.get("started_at"),
                        "ended_at": c.get("ended_at"), "role": "model_call", "name": c.get("model"),
                        "service": c.get("client_service"), "call_id": c["call_id"],
                        "conversation_id": None, "mcp_session_id": None})
    for a in actions:
        if a["action_id"] not in span_ids:
            out.append({"trace_id": a.get("trace_id"), "span_id": a["action_id"], "parent_span_id": None,
                        "started_at": a.get("started_at"), "ended_at": a.get("ended_at"),
                        "role": "tool", "name": a.get("tool_name"), "service": a.get("executed_by"),
                        "call_id": None, "conversation_id": None, "mcp_session_id": None})
    return out
