"""`nimtrail usage`: calls, tokens and GPU-seconds per caller, deployment or model, with each
one's share, through the warehouse query API (the `usage` query)."""

from __future__ import annotations

import argparse

from cli import table
from cli.commands.common import print_json, query

GROUP_COLUMNS = {"caller": "caller", "deployment": "deployment_id", "model": "model"}
FIGURE_COLUMNS = ["calls", "input_tokens", "output_tokens", "total_tokens", "gpu_seconds",
                  "unattributed_calls"]
SHARE_COLUMNS = {"call_share": "calls_%", "token_share": "tokens_%", "gpu_share": "gpu_%"}


def _percent(share: float | None) -> str | None:
    return None if share is None else f"{share * 100:.1f}"


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{value:,.3f}"


def cmd_usage(args: argparse.Namespace) -> int:
    result = query(args, "usage", {"by": args.by, "since": args.since, "until": args.until,
                                   "limit": args.limit, "offset": args.offset})
    if args.json:
        print_json(result)
        return 0
    group = GROUP_COLUMNS[result["by"]]
    rows = [{group: r[group], **{c: r[c] for c in FIGURE_COLUMNS}, "gpu_seconds": _seconds(r["gpu_seconds"]),
             **{label: _percent(r[share]) for share, label in SHARE_COLUMNS.items()}}
            for r in result["rows"]]
    print(table.render(rows, [group, *FIGURE_COLUMNS, *SHARE_COLUMNS.values()]))
    if result.get("next_offset") is not None:
        print(f"(more: --offset {result['next_offset']})")
    totals, unattributed = result["totals"], result["unattributed"]
    print(f"total: {totals['calls']} calls, {totals['total_tokens']} tokens "
          f"({totals['input_tokens']} in, {totals['output_tokens']} out), "
          f"{_seconds(totals['gpu_seconds']) or '?'} GPU-seconds")
    if unattributed["calls"]:
        reasons = ", ".join(f"{unattributed[r]} {r.replace('_', ' ')}"
                            for r in ("no_deployment", "no_gpu_count", "no_duration") if unattributed[r])
        print(f"unattributed: {unattributed['calls']} calls ({_seconds(unattributed['call_seconds'])} "
              f"call-seconds) count 0 GPU-seconds: {reasons}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    usage = sub.add_parser("usage", help="calls, tokens and GPU-seconds per caller, deployment or model")
    usage.add_argument("--by", choices=list(GROUP_COLUMNS), default="caller")
    for flag in ("since", "until"):
        usage.add_argument(f"--{flag}")
    usage.add_argument("--limit", type=int, default=50)
    usage.add_argument("--offset", type=int, default=0)
    usage.add_argument("--json", action="store_true")
    usage.set_defaults(func=cmd_usage)
