"""`nimtrail trace TRACE_ID` and `nimtrail session ID`: a trace's waterfall and a session's
steps, through the warehouse query API."""

from __future__ import annotations

import argparse
from typing import Any

from cli import table
from cli.commands.common import print_json, query

BAR_WIDTH = 30
SPAN_COLUMNS = ["span", "role", "service", "offset_ms", "duration_ms", "timeline", "detail"]
STEP_COLUMNS = ["step", "started_at", "kind", "name", "service", "id", "detail"]


def _detail(node: dict[str, Any]) -> str:
    """One line on what a span's record says: the call's outcome, the action's gate."""
    call, action = node.get("call") or node.get("model_call"), node.get("action") or node.get("tool_action")
    if call:
        parts = [call.get("caller"), call.get("deployment_id"), call.get("finish_reason"),
                 f"tools={','.join(call['tool_names'])}" if call.get("tool_names") else None]
    elif action:
        parts = [action.get("mcp_server"), action.get("target"),
                 f"gate={action.get('gate')}/{action.get('gate_decision') or '-'}", action.get("outcome")]
    else:
        parts = [node.get("call_id")]
    return " ".join(str(p) for p in parts if p)


def _bar(node: dict[str, Any], total: float) -> str:
    """The span's place on the trace's time line, in characters."""
    offset, duration = node.get("offset_ms"), node.get("duration_ms")
    if offset is None or not total:
        return ""
    start = min(BAR_WIDTH - 1, int(offset / total * BAR_WIDTH))
    width = max(1, int((duration or 0) / total * BAR_WIDTH))
    return " " * start + "█" * min(width, BAR_WIDTH - start)


def _ask(args: argparse.Namespace, name: str, params: dict[str, Any],
         missing: str) -> tuple[dict[str, Any] | None, int]:
    """The answer to show as a table (None once it was printed as JSON or found empty),
    and the exit status: 1 when nothing was found, as trace-back does."""
    result = query(args, name, params)
    status = 0 if result["found"] else 1
    if args.json:
        print_json(result)
    elif not result["found"]:
        print(missing)
    else:
        return result, status
    return None, status


def cmd_trace(args: argparse.Namespace) -> int:
    result, status = _ask(args, "trace", {"trace_id": args.trace_id}, "no audited spans for that trace id")
    if result is None:
        return status
    nodes = result["rows"]
    total = max(((n.get("offset_ms") or 0) + (n.get("duration_ms") or 0) for n in nodes), default=0)
    shown = [{**n, "span": "  " * n["depth"] + f"{n.get('name') or n['span_id']}",
              "timeline": _bar(n, total), "detail": _detail(n)} for n in nodes]
    print(f"trace {result['trace_id']}: {len(nodes)} spans, {total:.1f} ms, "
          f"services {', '.join(result['services']) or '-'}")
    print(table.render(shown, SPAN_COLUMNS, max_width=60))
    if result.get("truncated"):
        print("(trace shown in part: too many spans)")
    return 0


def cmd_session(args: argparse.Namespace) -> int:
    result, status = _ask(args, "session", {"session_id": args.session_id}, "no calls or actions for that session id")
    if result is None:
        return status
    print(f"session {result['session_id']}: {len(result['rows'])} steps in "
          f"{len(result['traces'])} trace(s)")
    print(table.render([{**s, "detail": _detail(s)} for s in result["rows"]], STEP_COLUMNS, max_width=60))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("trace", help="a trace's audited spans as a waterfall: agent, model calls, "
                                      "NIM, tools, MCP servers")
    tr.add_argument("trace_id")
    tr.add_argument("--json", action="store_true")
    tr.set_defaults(func=cmd_trace)

    se = sub.add_parser("session", help="a conversation's, MCP session's or agent run's calls and "
                                        "actions in order")
    se.add_argument("session_id", help="gen_ai.conversation.id, mcp.session.id, or an invoke_agent span id")
    se.add_argument("--json", action="store_true")
    se.set_defaults(func=cmd_session)
