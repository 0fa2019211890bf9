"""Finding an action to trace back: `actions` (tool actions with their caller, deployment,
findings and whether the tool is destructive) and `facets` (the values to filter by).

`actions` with `order=risk` puts first what an incident responder looks at first: actions
with (or whose model call has) the most severe findings, then those with the most kinds
of findings, then destructive tools (named in any deployment record's
`destructive_tools`), then the newest.
"""

from __future__ import annotations

from typing import Any

import duckdb

from warehouse.params import Params
from warehouse.queries.common import PAGE_PARAMS, equals, page, paged, rows, time_range, where_sql

ACTION_FILTERS = {
    "action_id": "a.action_id = ?",
    "tool_call_id": "a.tool_call_id = ?",
    "call_id": "a.call_id = ?",
    "tool_name": "a.tool_name = ?",
    "target": "starts_with(a.target, ?)",  # a target and everything under it
    "gate": "a.gate = ?",
    "outcome": "a.outcome = ?",
    "caller": "a.caller = ?",
    "client_service": "a.client_service = ?",
    "deployment_id": "a.deployment_id = ?",
    "model": "a.model = ?",
}
ACTIONS_PARAMS = {*ACTION_FILTERS, "finding_kind", "since", "until", "flagged", "order", *PAGE_PARAMS}
FACETS_PARAMS = {"since"}
FACET_LIMIT = 500
SEVERITY_RANK = "CASE lower(severity) WHEN 'critical' THEN 4 WHEN 'high' THEN 3 WHEN 'medium' THEN 2 " \
                "WHEN 'low' THEN 1 ELSE 0 END"
SEVERITY_NAMES = {4: "critical", 3: "high", 2: "medium", 1: "low"}
RESTRICT = "/* restrict */"
# the call's columns each action is listed with, and their types
CALL_COLUMNS = {"caller": "VARCHAR", "client_service": "VARCHAR", "model": "VARCHAR",
                "deployment_id": "VARCHAR", "deployment_version": "INTEGER"}
CALL_FILTERS = ("caller", "client_service", "deployment_id", "model")
FLAGGED_ONLY = ("WHERE a.action_id IN (SELECT subject FROM flags) "
                "OR a.call_id IN (SELECT subject FROM flags)")


def actions(con: duckdb.DuckDBPyConnection, params: Params) -> dict[str, Any]:
    """Tool actions with who asked for them and what was found about them; newest first, or
    riskiest first with order=risk; flagged=true keeps only actions with findings or a
    destructive tool."""
    where, args, order, order_by = _selection(params)
    limit, offset = page(params)
    # First the ids of the page (and of the row after it), from the columns the filters and
    # the order need: the calls joined only when a filter is on them. Then the page's whole
    # rows, its calls found by key (joining every action to its call reads the whole calls
    # table; listing every column of every action before sorting costs more than the rest).
    with_calls = any(params.text(name) is not None for name in CALL_FILTERS)
    ids = _page_ids(con, order, _listed(calls=with_calls), where, args, order_by, limit, offset)
    action_ids = [r["action_id"] for r in ids["rows"]]
    call_ids = sorted({r["call_id"] for r in ids["rows"] if r["call_id"] is not None})
    found = rows(con, _listed(actions=_in("a.action_id", action_ids), calls=_in("call_id", call_ids))
                 + f" SELECT * FROM listed a {order_by}", action_ids + call_ids) if action_ids else []
    return {"rows": shown(found), "next_offset": ids["next_offset"], "order": order}


def shown(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of `listed` as the answer shows them: kinds sorted, the severity named."""
    for row in found:
        row["finding_kinds"] = sorted(row["finding_kinds"] or [])
        row["finding_severity"] = SEVERITY_NAMES.get(row["finding_severity"])
    return found


def _selection(params: Params) -> tuple[list[str], list[Any], str, str]:
    """The conditions over `listed` (and their parameters), the order's name and its SQL."""
    where: list[str] = []
    args: list[Any] = []
    equals(params, ACTION_FILTERS, where, args)
    time_range(params, "a.started_at", where, args)
    finding_kind = params.text("finding_kind")
    if finding_kind is not None:
        where.append("list_contains(a.finding_kinds, ?)")
        args.append(finding_kind)
    if params.boolean("flagged", False):
        where.append("(finding_severity > 0 OR destructive)")
    order = params.choice("order", ("time", "risk"), "time")
    ranking = ("finding_severity DESC, len(finding_kinds) DESC, destructive DESC, "
               if order == "risk" else "")
    return where, args, order, f"ORDER BY {ranking}a.started_at DESC NULLS LAST, a.action_id"


def with_call_filter(params: Params) -> bool:
    return any(params.text(name) is not None for name in CALL_FILTERS)


# The relations a sharded warehouse's front hands each shard (actions_part), their lists
# bound in this order: every finding's flags per subject, and (with a filter on the
# calls) the calls it selects, from every shard.
GIVEN_FLAGS = ("SELECT unnest(?::VARCHAR[]) AS subject, unnest(?::VARCHAR[][]) AS kinds, "
               "unnest(?::INTEGER[]) AS rank, unnest(?::BIGINT[]) AS n")
GIVEN_CALLS = ("(SELECT unnest(?::VARCHAR[]) AS call_id, "
               + ", ".join(f"unnest(?::{t}[]) AS {c}" for c, t in CALL_COLUMNS.items()) + ")")


def flags(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Per subject of any finding: the kinds, highest rank and number of its findings."""
    return rows(con, f"{_flags_sql()} SELECT * FROM flags ORDER BY subject", [])


def matching_calls(con: duckdb.DuckDBPyConnection, params: Params) -> list[dict[str, Any]]:
    """The calls the page's filters on calls select, with the columns actions list."""
    where: list[str] = []
    args: list[Any] = []
    equals(params, {name: f"c.{name} = ?" for name in CALL_FILTERS}, where, args)
    return rows(con, f"SELECT call_id, {', '.join(CALL_COLUMNS)} FROM model_calls c {where_sql(where)} "
                     "ORDER BY call_id", args)


def call_columns(con: duckdb.DuckDBPyConnection, ids: list[str]) -> list[dict[str, Any]]:
    """The columns actions list of the calls `ids` (those this store holds)."""
    return rows(con, f"SELECT call_id, {', '.join(CALL_COLUMNS)} FROM model_calls "
                     "WHERE list_contains(?::VARCHAR[], call_id)", [ids])


def actions_part(con: duckdb.DuckDBPyConnection, params: Params, given_flags: list[list[Any]],
                 given_calls: list[list[Any]] | None, top: int) -> list[dict[str, Any]]:
    """The first `top` rows of `listed` in the page's order, with every store's flags (and
    calls, when filtered by them) given: the call columns are null when no filter on calls
    needed them (the front fills in the page's)."""
    where, args, _, order_by = _selection(params)
    listed = _listed(calls=given_calls is not None, given=True).replace(RESTRICT, "")
    return rows(con, f"{listed} SELECT * FROM listed a {where_sql(where)} {order_by} LIMIT ?",
                [*given_flags, *(given_calls or []), *args, top])


def _in(column: str, values: list[Any]) -> str:
    return f"WHERE {column} IN ({', '.join('?' for _ in values)})" if values else "WHERE false"


def _flags_sql() -> str:
    return f"""
        WITH flags AS (
            SELECT subject, list(DISTINCT kind ORDER BY kind) AS kinds, max(rank) AS rank,
                   count(*) AS n
            FROM (SELECT unnest(subject_ids) AS subject, kind, {SEVERITY_RANK} AS rank FROM findings)
            GROUP BY subject)"""


def _listed(actions: str = RESTRICT, calls: str | bool = True, given: bool = False) -> str:
    """The CTEs up to `listed`: tool actions (those `actions` selects) with their call's
    caller, service, model and deployment (calls=False: none; a string: only the calls it
    selects), their findings and whether the tool is destructive. Findings are few next to
    actions: their subjects are flattened once, then joined by key. `given`: the flags,
    and the calls when `calls` is True, are the relations the front hands over
    (GIVEN_FLAGS, GIVEN_CALLS)."""
    if calls is False:
        call_columns = ", ".join(f"NULL::{t} AS {c}" for c, t in CALL_COLUMNS.items())
        call_join = ""
    else:
        call_columns = ", ".join(f"c.{c}" for c in CALL_COLUMNS)
        source = ((GIVEN_CALLS if given else "model_calls") if calls is True
                  else f"(SELECT * FROM model_calls {calls})")
        call_join = f"LEFT JOIN {source} c ON c.call_id = a.call_id"
    return f"""
        {f"WITH flags AS ({GIVEN_FLAGS})" if given else _flags_sql()},
        destructive_tools AS (SELECT DISTINCT unnest(destructive_tools) AS tool FROM deployments),
        listed AS (
            SELECT a.* EXCLUDE (row_hash), {call_columns},
                   list_distinct(list_concat(coalesce(fa.kinds, []), coalesce(fc.kinds, [])))
                       AS finding_kinds,
                   coalesce(fa.n, 0) + coalesce(fc.n, 0) AS findings,
                   greatest(coalesce(fa.rank, 0), coalesce(fc.rank, 0)) AS finding_severity,
                   a.tool_name IN (SELECT tool FROM destructive_tools) AS destructive
            FROM (SELECT * FROM tool_actions a {actions}) a
            {call_join}
            LEFT JOIN flags fa ON fa.subject = a.action_id
            LEFT JOIN flags fc ON fc.subject = a.call_id)"""


def _page_ids(con: duckdb.DuckDBPyConnection, order: str, listed: str, where: list[str],
              args: list[Any], order_by: str, limit: int, offset: int) -> dict[str, Any]:
    """action_id and call_id of one page of `listed` under `where`. Riskiest first, every
    action with a finding (about it or its call) ranks before every action without one;
    those are few: when they fill the page and the row after it, the page is theirs, and
    only they need sorting."""
    sql = f" SELECT a.action_id, a.call_id FROM listed a {where_sql(where)} {order_by}"
    if order == "risk":
        found = paged(con, listed.replace(RESTRICT, FLAGGED_ONLY) + sql, args, limit, offset)
        if found["next_offset"] is not None:
            return found
    return paged(con, listed.replace(RESTRICT, "") + sql, args, limit, offset)

def facets(con: duckdb.DuckDBPyConnection, params: Params) -> dict[str, Any]:
    """The distinct values to offer as filters (callers, client services, models,
    deployments, tools, GPU types and profiles), each sorted, at most FACET_LIMIT; and the
    finding kinds with their worst severity and count, worst first."""
    since = params.time("since")
    cond, args = ("WHERE started_at >= ?", [since]) if since else ("", [])
    kinds = rows(con, f"""SELECT kind, max({SEVERITY_RANK}) AS rank, count(*) AS count FROM findings
                          {"WHERE detected_at >= ?" if since else ""}
                          GROUP BY kind ORDER BY rank DESC, kind LIMIT ?""", [*args, FACET_LIMIT])

    def distinct(table: str, column: str, condition: str = "", values: list[Any] | None = None) -> list[Any]:
        found = rows(con, f"SELECT DISTINCT {column} AS v FROM {table} {condition} "
                          "ORDER BY v NULLS LAST LIMIT ?", [*(values or []), FACET_LIMIT])
        return [r["v"] for r in found if r["v"] is not None]

    return {
        "callers": distinct("model_calls", "caller", cond, args),
        "client_services": distinct("model_calls", "client_service", cond, args),
        "models": distinct("model_calls", "model", cond, args),
        "deployments": sorted(set(distinct("model_calls", "deployment_id", cond, args))
                              | set(distinct("deployments", "deployment_id"))),
        "tools": distinct("tool_actions", "tool_name", cond, args),
        "gpu_types": distinct("deployments", "gpu_type"),
        "profiles": distinct("deployments", "profile_name"),
        "findings": [{"kind": k["kind"], "severity": SEVERITY_NAMES.get(k["rank"]), "count": k["count"]}
                     for k in kinds],
    }
