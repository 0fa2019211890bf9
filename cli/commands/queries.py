"""Commands that ask the audit trail questions through the warehouse query API."""

from __future__ import annotations

import argparse

from cli import table
from cli.commands.common import print_json, query

CALL_COLUMNS = ["started_at", "call_id", "caller", "client_service", "model", "deployment_id",
                "finish_reason", "tool_names", "actions"]
ACTION_FIELDS = ["action_id", "tool_call_id", "tool_name", "target", "started_at", "executed_by", "mcp_server",
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


LATENCY_GROUPS = {"profile": ["gpu_type", "profile_name"],
                  "deployment": ["deployment_id", "deployment_version", "nim_image"],
                  "model": ["model"]}
FINDING_COLUMNS = ["detected_at", "kind", "severity", "deployment", "tool", "subject_ids", "finding_id",
                   "detail"]
FINDING_GROUP_COLUMNS = ["severity", "kind", "deployment", "tool", "policy", "count", "open",
                         "first_seen", "last_seen", "latest_subject_ids"]
ACCESS_COLUMNS = ["accessed_at", "principal", "person", "role", "client_address", "operation", "status",
                  "rows", "params"]


def _fmt(value: object) -> object:
    return round(value, 1) if isinstance(value, float) else value


CHANGE_COLUMNS = ["changed_at", "deployment_id", "versions", "profile", "image", "calls"]


def _latency_filters(args: argparse.Namespace) -> dict[str, str | None]:
    return {"since": args.since, "until": args.until, "deployment_id": args.deployment, "model": args.model,
            "gpu_type": args.gpu_type, "profile_name": args.profile, "source": args.source,
            "precision": args.precision}


def _was_is(before: object, after: object) -> str:
    return table.cell(after) if before == after else f"{table.cell(before)} -> {table.cell(after)}"


def cmd_latency_changes(args: argparse.Namespace) -> int:
    """Each deployment change with p50/p95/p99 before and after it, and the change in %."""
    result = query(args, "latency-changes", _latency_filters(args))
    if args.json:
        print_json(result)
        return 0
    rows = []
    for r in result["rows"]:
        before, after = r["before"], r["after"]
        row = {"changed_at": r["changed_at"], "deployment_id": r["deployment_id"],
               "versions": f"v{r['from_version']} -> v{r['to_version']}",
               "profile": _was_is(before["profile_name"], after["profile_name"]),
               "image": _was_is((before["nim_image"] or "").rpartition(":")[2],
                                (after["nim_image"] or "").rpartition(":")[2]),
               "calls": f"{r['calls_before']} -> {r['calls_after']}"}
        for q in ("p50", "p95", "p99"):
            was, now, pct = (r.get(f"{args.metric}_{q}_{k}") for k in ("before", "after", "change_pct"))
            row[q] = f"{table.cell(_fmt(was))} -> {table.cell(_fmt(now))}"
            row[f"{q} change"] = "-" if pct is None else f"{pct:+.1f}%"
        rows.append(row)
    columns = CHANGE_COLUMNS + [c for q in ("p50", "p95", "p99") for c in (q, f"{q} change")]
    print(table.render(rows, columns, max_width=60))
    print(f"({args.metric} in milliseconds: calls on the old version -> calls on the new one, within the range)")
    return 0


def cmd_latency(args: argparse.Namespace) -> int:
    if args.changes:
        return cmd_latency_changes(args)
    result = query(args, "latency", {"by": args.by, "bucket": args.bucket, **_latency_filters(args)})
    if args.json:
        print_json(result)
        return 0
    columns = LATENCY_GROUPS[result["by"]] + (["bucket_start"] if result["bucket"] != "none" else [])
    columns.append("calls")
    rows = []
    for r in result["rows"]:
        row = {c: r.get(c) for c in columns}
        sources = []
        for metric, short in (("ttft_ms", "ttft"), ("e2e_ms", "e2e"), ("queue_ms", "queue")):
            for q in ("p50", "p95", "p99"):
                row[f"{short}_{q}"] = _fmt(r.get(f"{metric}_{q}"))
            if r.get(f"{metric}_source"):
                sources.append(f"{short}:{r[f'{metric}_source']}")
        row["source"] = " ".join(sources)
        rows.append(row)
    metric_columns = [f"{m}_{q}" for m in ("ttft", "e2e", "queue") for q in ("p50", "p95", "p99")]
    print(table.render(rows, columns + metric_columns + ["source"]))
    print("(milliseconds; source: calls = exact from calls, calls_histogram = estimated from the calls' "
          "histograms, metrics = estimated from NIM/vLLM histograms)")
    if result.get("precision") == "estimate":
        print(f"(calls' percentiles estimated: within {result['relative_error']:.1%} of the exact value; "
              "--precision exact sorts every call of the range)")
    return 0


def _print_page(args: argparse.Namespace, result: dict, columns: list[str]) -> int:
    """One page of a paginated query: JSON with --json, else a table and where more begins."""
    if args.json:
        print_json(result)
        return 0
    print(table.render(result["rows"], columns, max_width=60))
    if result.get("next_offset") is not None:
        print(f"(more: --offset {result['next_offset']})")
    return 0


def cmd_findings(args: argparse.Namespace) -> int:
    result = query(args, "findings", {
        "kind": args.kind, "severity": args.severity, "subject_id": args.subject,
        "deployment": args.deployment, "tool": args.tool, "policy": args.policy,
        "since": args.since, "until": args.until, "group": "false" if args.each else None,
        "limit": args.limit, "offset": args.offset})
    if args.each or args.json:
        return _print_page(args, result, FINDING_COLUMNS)
    # A group's latest subject ids are where `trace-back` starts; --each lists every finding.
    rows = [{**r, "latest_subject_ids": r["latest"]["subject_ids"]} for r in result["rows"]]
    _print_page(args, {**result, "rows": rows}, FINDING_GROUP_COLUMNS)
    if rows:
        print("(worst first; every finding of a group: --each --kind K --deployment D ...)")
    return 0


def cmd_access_log(args: argparse.Namespace) -> int:
    result = query(args, "access-log", {
        "principal": args.principal, "person": args.person, "operation": args.operation, "since": args.since,
        "until": args.until, "limit": args.limit, "offset": args.offset})
    return _print_page(args, result, ACCESS_COLUMNS)


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

    lat = sub.add_parser("latency", help="TTFT / end-to-end / queue percentiles by GPU profile, "
                                         "deployment version or model")
    lat.add_argument("--by", choices=list(LATENCY_GROUPS), default="profile")
    lat.add_argument("--bucket", choices=["none", "10s", "30s", "1m", "5m", "15m", "1h", "6h", "1d"], default="none")
    lat.add_argument("--source", choices=["auto", "calls", "metrics"], default="auto")
    lat.add_argument("--precision", choices=["auto", "exact", "estimate"], default="auto",
                     help="auto: estimate from the calls' histograms when the range holds over a million calls")
    for flag in ("since", "until", "deployment", "model", "gpu-type", "profile"):
        lat.add_argument(f"--{flag}")
    lat.add_argument("--changes", action="store_true",
                     help="each deployment change: p50/p95/p99 before and after it, and the change in %%")
    lat.add_argument("--metric", choices=["ttft_ms", "e2e_ms", "queue_ms"], default="ttft_ms",
                     help="the latency --changes shows in its table (--json has all three)")
    lat.add_argument("--json", action="store_true")
    lat.set_defaults(func=cmd_latency)

    found = sub.add_parser("findings", help="policy, drift and integrity findings, grouped by kind, "
                                            "deployment, tool and policy (worst, then latest, first)")
    for flag in ("kind", "severity", "subject", "deployment", "tool", "policy", "since", "until"):
        found.add_argument(f"--{flag}")
    found.add_argument("--each", action="store_true", help="one row per finding, newest first")
    found.add_argument("--limit", type=int, default=50)
    found.add_argument("--offset", type=int, default=0)
    found.add_argument("--json", action="store_true")
    found.set_defaults(func=cmd_findings)

    acc = sub.add_parser("access-log", help="who read what through the query API")
    for flag in ("principal", "person", "operation", "since", "until"):
        acc.add_argument(f"--{flag}")
    acc.add_argument("--limit", type=int, default=50)
    acc.add_argument("--offset", type=int, default=0)
    acc.add_argument("--json", action="store_true")
    acc.set_defaults(func=cmd_access_log)
