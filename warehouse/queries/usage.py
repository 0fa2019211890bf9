"""`usage`: calls, tokens and GPU-seconds per caller, deployment or model, for chargeback.

A call's GPU-seconds are its duration times the `gpu_count` of the deployment VERSION
that served it (model_calls joined to deployments on `deployment_id` +
`deployment_version`, as the latency query joins them). The duration is the call's
`e2e_ms` (NIM's own measure where it reported one, else the client span's), or
`ended_at - started_at` where no usable `e2e_ms` is stored.

A call that cannot be priced counts 0 GPU-seconds and is counted in `unattributed`, with
the first reason that applies: `no_deployment` (matched to no registered deployment
version), `no_gpu_count` (its version states no GPU count), `no_duration` (no usable
duration). Its calls and tokens still count in its group: only the GPU figure is missing,
and `unattributed` says how much is, so a bill never looks complete when it is not.
"""

from __future__ import annotations

import math
from typing import Any

import duckdb

from warehouse.params import Params
from warehouse.queries.common import PAGE_PARAMS, page, rows, time_range, where_sql

GROUPS = {"caller": "c.caller", "deployment": "c.deployment_id", "model": "c.model"}
GROUP_COLUMNS = {"caller": "caller", "deployment": "deployment_id", "model": "model"}
USAGE_PARAMS = {"by", "since", "until", *PAGE_PARAMS}
UNATTRIBUTED_REASONS = ("no_deployment", "no_gpu_count", "no_duration")
# (a share is a fraction of the whole range's total; these are the figures shared out)
SHARES = {"call_share": "calls", "token_share": "total_tokens", "gpu_share": "gpu_seconds"}
INT64 = 2**63 - 1
TOTAL_FIGURES = ("calls", "input_tokens", "output_tokens", "total_tokens", "gpu_seconds")
GROUP_FIGURES = (*TOTAL_FIGURES, "unattributed_calls")

# One row per call of the range: its group, tokens, duration in seconds and why it cannot
# be priced (NULL when it can; the first reason in UNATTRIBUTED_REASONS' order). Stored
# values may be anything a record can carry (NaN or infinite timings, negative counts,
# times at DuckDB's limits): only a finite duration of zero or more, and a GPU count of
# zero or more, price a call. Durations subtract epochs (doubles): a microsecond
# difference of two extreme times overflows a BIGINT.
PRICED = """
    SELECT {group} AS grp,
           c.input_tokens, c.output_tokens,
           coalesce(c.input_tokens, 0)::HUGEINT + coalesce(c.output_tokens, 0) AS total_tokens,
           CASE WHEN isfinite(c.e2e_ms) AND c.e2e_ms >= 0 THEN c.e2e_ms / 1000
                WHEN isfinite(epoch(c.ended_at) - epoch(c.started_at))
                     AND epoch(c.ended_at) >= epoch(c.started_at)
                THEN epoch(c.ended_at) - epoch(c.started_at) END AS seconds,
           d.gpu_count,
           CASE WHEN d.deployment_id IS NULL THEN 'no_deployment'
                WHEN d.gpu_count IS NULL OR d.gpu_count < 0 THEN 'no_gpu_count'
                WHEN seconds IS NULL THEN 'no_duration' END AS reason
    FROM model_calls c
    LEFT JOIN deployments d ON d.deployment_id = c.deployment_id AND d.version = c.deployment_version
    {where}"""


def usage(con: duckdb.DuckDBPyConnection, params: Params) -> dict[str, Any]:
    """Per group: calls, input/output/total tokens, GPU-seconds, unattributed calls and each
    group's share of the range's calls, tokens and GPU-seconds; most GPU-seconds first,
    paginated. `totals` and `unattributed` cover the whole range, every page alike."""
    by = params.choice("by", tuple(GROUPS), "caller")
    limit, offset = page(params)
    return answer(by, sums(con, params), limit, offset)


def sums(con: duckdb.DuckDBPyConnection, params: Params) -> list[dict[str, Any]]:
    """The range's total (first, `is_total`) and each group's sums (`grp`), most GPU-seconds
    first: what `answer` shares out and pages (a sharded warehouse's front adds up every
    shard's first: front.usage)."""
    by = params.choice("by", tuple(GROUPS), "caller")
    where: list[str] = []
    args: list[Any] = []
    time_range(params, "c.started_at", where, args)
    # One scan: the groups and the range's total (the empty grouping set) together.
    return rows(con, f"""
        WITH priced AS ({PRICED.format(group=GROUPS[by], where=where_sql(where))})
        SELECT grouping(grp) = 1 AS is_total, grp,
               count(*) AS calls,
               coalesce(sum(input_tokens), 0) AS input_tokens,
               coalesce(sum(output_tokens), 0) AS output_tokens,
               coalesce(sum(total_tokens), 0) AS total_tokens,
               coalesce(sum(seconds * gpu_count) FILTER (WHERE reason IS NULL), 0) AS gpu_seconds,
               count(*) FILTER (WHERE reason IS NOT NULL) AS unattributed_calls,
               coalesce(sum(seconds) FILTER (WHERE reason IS NOT NULL), 0) AS unattributed_seconds,
               {", ".join(f"count(*) FILTER (WHERE reason = '{r}') AS {r}" for r in UNATTRIBUTED_REASONS)}
        FROM priced
        GROUP BY GROUPING SETS ((grp), ())
        ORDER BY is_total DESC, gpu_seconds DESC, total_tokens DESC, calls DESC, grp NULLS LAST""", args)


# What `sums` adds up per group, and the order of its groups (after the total).
SUMMED = ("calls", "input_tokens", "output_tokens", "total_tokens", "gpu_seconds", "unattributed_calls",
          "unattributed_seconds", *UNATTRIBUTED_REASONS)


def ordered(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups most GPU-seconds first (as shown: to the microsecond, so that sums added in
    another order do not reorder equal figures), then total_tokens, calls, grp NULLS LAST."""
    out = sorted(groups, key=lambda r: (r["grp"] is None, r["grp"] if r["grp"] is not None else ""))
    out.sort(key=lambda r: (_figures(r)["gpu_seconds"] or 0.0, r["total_tokens"], r["calls"]), reverse=True)
    return out


def answer(by: str, found: list[dict[str, Any]], limit: int, offset: int) -> dict[str, Any]:
    total = _figures(found[0]) if found else _figures({})
    groups = [_group(GROUP_COLUMNS[by], row, total) for row in ordered(found[1:])]
    more = offset + limit < len(groups)
    return {
        "by": by,
        "rows": groups[offset:offset + limit],
        "next_offset": offset + limit if more else None,
        "groups": len(groups),
        "totals": {k: total[k] for k in TOTAL_FIGURES},
        "unattributed": {"calls": total["unattributed_calls"],
                         "call_seconds": total["unattributed_seconds"],
                         **{r: total[r] for r in UNATTRIBUTED_REASONS}},
    }


def _figures(row: dict[str, Any]) -> dict[str, Any]:
    """The sums of one grouping row, ready for JSON: counts as integers (a sum past a
    64-bit integer, only reachable from nonsense counts, as a float), seconds rounded to
    the microsecond."""
    out: dict[str, Any] = {}
    for name in ("calls", "input_tokens", "output_tokens", "total_tokens", "unattributed_calls",
                 *UNATTRIBUTED_REASONS):
        value = int(row.get(name) or 0)
        out[name] = value if -INT64 - 1 <= value <= INT64 else float(value)
    for name in ("gpu_seconds", "unattributed_seconds"):
        value = float(row.get(name) or 0.0)
        out[name] = round(value, 6) if math.isfinite(value) else None
    return out


def _group(column: str, row: dict[str, Any], total: dict[str, Any]) -> dict[str, Any]:
    figures = _figures(row)
    out = {column: row["grp"], **{k: figures[k] for k in GROUP_FIGURES}}
    for share, figure in SHARES.items():
        whole, part = total[figure], figures[figure]
        out[share] = (round(part / whole, 4) if isinstance(whole, (int, float)) and whole
                      and part is not None and math.isfinite(whole) else None)
    return out
