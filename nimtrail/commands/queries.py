"""Commands that ask the audit trail questions through the warehouse query API."""

from __future__ import annotations

import argparse

from nimtrail import table
from nimtrail.commands.common import print_json, query

CALL_COLUMNS = ["started_at", "call_id", "caller", "client_service", "model", "deployment_id",
                "finish_reason", "tool_names", "actions"]
ACTION_FIELDS = ["action_id", "tool_call_id", "tool_name", "target", "started_at", "executed_by",
                 "gate", "gate_decision", "approver", "outcome", "call_id"]
CALL_FIELDS = ["call_id", "started_at", "model", "operation", "finish_reason", "tool_call_ids",
               "tool_names", "prompt_sha256", "response_sha256", "input_tokens", "output_tokens",
               "ttft_ms", "e2e_ms", "trace_id"]
DEPLOYMENT_FIELDS = ["deployment_id", "version", "nim_image", "model_id", "profile_name",
                     "profile_id", "gpu_type", "gpu_count", "engine_backend", "purpose"]


def cmd_calls(args: argparse.Namespace) -> int:
    result = query(args, "calls", {
        "caller": args.caller, "client_service": args.client_service, "model": args.model,
        "deployment_id": args.deployment, "since": args.since, "until": args.until,
        "limit": args.limit, "offset": args.offset})
    if args.json:
        print_json(result)
        return 0
    rows = [{**r, "actions": [a["tool_name"] for a in r.get("actions") or []]} for r in result["rows"]]
    print(table.render(rows, CALL_COLUMNS))
    if result.get("next_offset") is not None:
        print(f"(more: --offset {result['next_offset']})")
    return 0


def cmd_trace_back(args: argparse.Namespace) -> int:
    result = query(args, "trace-back", {"action_id": args.action_id,
                                        "tool_call_id": args.tool_call_id, "call_id": args.call_id})
    if args.json:
        print_json(result)
        return 0 if result["found"] else 1
    if not result["found"]:
        print("nothing found for that id")
        return 1
    for action in result["actions"]:
        print(table.render_record("action", action, ACTION_FIELDS))
    print(table.render_record("model call (the response that asked for it)", result["call"], CALL_FIELDS))
    print(table.render_record("caller", result["caller"], ["caller", "client_service",
                                                            "client_address", "api_key_fingerprint"]))
    print(table.render_record("deployment", result["deployment"], DEPLOYMENT_FIELDS))
    for finding in result["findings"]:
        print(f"finding: {finding['kind']} ({finding['severity']}) {finding.get('detail')}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    calls = sub.add_parser("calls", help="who called what model, and what followed")
    for flag in ("caller", "client-service", "model", "deployment", "since", "until"):
        calls.add_argument(f"--{flag}")
    calls.add_argument("--limit", type=int, default=50)
    calls.add_argument("--offset", type=int, default=0)
    calls.add_argument("--json", action="store_true")
    calls.set_defaults(func=cmd_calls)

    back = sub.add_parser("trace-back", help="from an action to the model call, caller, deployment")
    which = back.add_mutually_exclusive_group(required=True)
    which.add_argument("--action-id")
    which.add_argument("--tool-call-id")
    which.add_argument("--call-id")
    back.add_argument("--json", action="store_true")
    back.set_defaults(func=cmd_trace_back)
