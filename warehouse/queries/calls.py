"""Who called what model, and what followed: `calls` and `trace-back`."""

from __future__ import annotations

import datetime as dt
from typing import Any

import duckdb

from warehouse.params import BadParameter, Params
from warehouse.queries.common import Locate, by_key, equals, located, page, rows, time_range, where_sql
from warehouse.sql import one

CALL_FILTERS = {
    "caller": "c.caller = ?",
    "client_service": "c.client_service = ?",
    "model": "c.model = ?",
    "deployment_id": "c.deployment_id = ?",
    "call_id": "c.call_id = ?",
}
CALLS_PARAMS = {*CALL_FILTERS, "since", "until", "limit", "offset"}
TRACE_BACK_PARAMS = {"action_id", "tool_call_id", "call_id"}

CALLS_ORDER = "ORDER BY c.started_at DESC NULLS LAST, c.call_id"
# The newest page first looks at a window back from the newest call that holds, at the
# store's average rate, WINDOW_ROWS times the rows up to the end of the page (at least
# MIN_WINDOW); then at a window 16 times wider, until the page is full or the window
# covers every call. A window scans the started_at column (and, where calls were written
# in time order, only the row groups it covers), so the first try should usually be enough.
WINDOW_ROWS = 4
MIN_WINDOW = dt.timedelta(seconds=1)
WINDOW_GROWTH = 16


def calls(con: duckdb.DuckDBPyConnection, params: Params) -> dict[str, Any]:
    """Who called what model, and what action followed; newest first, paginated."""
    where: list[str] = []
    args: list[Any] = []
    equals(params, CALL_FILTERS, where, args)
    time_range(params, "c.started_at", where, args)
    limit, offset = page(params)
    # (one call_id names at most one call: no window to try)
    windowed = params.text("call_id") is None
    ids = _page_ids(con, where, args, limit, offset, params.time("since"), params.time("until"),
                    windowed)
    # Then the whole rows of that page only (sorting every column of every call to keep
    # 50 of them costs ten times more); call_id is the key, so the page is the same.
    found = rows(con, f"SELECT c.* EXCLUDE (row_hash) FROM model_calls c WHERE c.call_id IN "
                      f"({', '.join('?' for _ in ids[:limit])}) {CALLS_ORDER}",
                 ids[:limit]) if ids else []
    result = {"rows": found, "next_offset": offset + limit if len(ids) > limit else None}
    # The page's actions in a second query: a correlated subquery would be evaluated for
    # every action in the store before the LIMIT applies.
    ids = [r["call_id"] for r in result["rows"]]
    actions: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    if ids:
        for a in rows(con, "SELECT call_id, action_id, tool_name, outcome, target FROM tool_actions "
                           "WHERE list_contains(?::VARCHAR[], call_id) ORDER BY started_at, action_id",
                      [ids]):
            actions[a.pop("call_id")].append(a)
    for row in result["rows"]:
        row["actions"] = actions[row["call_id"]] or None
    return result


def _page_ids(con: duckdb.DuckDBPyConnection, where: list[str], args: list[Any], limit: int,
              offset: int, since: dt.datetime | None, until: dt.datetime | None,
              windowed: bool = True) -> list[str]:
    """The call ids of one page (and of the first row after it), in page order.

    `ORDER BY started_at DESC ... LIMIT` sorts every matching call. Calls with
    `started_at >= cutoff` come before all others in that order, so when a window
    [cutoff, ...) already holds the page and the row after it, its page is the page: try
    growing windows back from the newest call first, and the whole table last."""
    query = f"SELECT c.call_id FROM model_calls c {{}} {CALLS_ORDER} LIMIT ? OFFSET ?"
    count, oldest, newest = (one(con, "SELECT count(*), min(started_at), max(started_at) FROM model_calls")
                             if windowed else (0, None, None))
    # Windows are only a shortcut: a store whose times Python cannot subtract (DuckDB
    # answers a time beyond year 9999 as text; spans near year 1 or 9999 overflow a
    # timedelta) gets the whole-table query, which gives the same page.
    if not isinstance(newest, dt.datetime) or not isinstance(oldest, dt.datetime) or newest <= oldest:
        newest = None
    elif until is not None:
        newest = min(newest, until)
    try:
        window = MIN_WINDOW
        if newest is not None:
            window = max(MIN_WINDOW, (newest - oldest) * (WINDOW_ROWS * (limit + offset + 1) / count))
        while newest is not None and oldest is not None:
            cutoff = newest - window
            if cutoff <= oldest or (since is not None and cutoff <= since):
                break
            found = con.execute(query.format(where_sql([*where, "c.started_at >= ?"])),
                                [*args, cutoff, limit + 1, offset]).fetchall()
            if len(found) > limit:
                return [r[0] for r in found]
            window *= WINDOW_GROWTH
    except OverflowError:
        pass  # the window passed year 1: the whole table is the next window anyway
    return [r[0] for r in con.execute(query.format(where_sql(where)),
                                      [*args, limit + 1, offset]).fetchall()]


def trace_back(con: duckdb.DuckDBPyConnection, params: Params, locate: Locate | None = None) -> dict[str, Any]:
    """From one action, tool call or model call: the action(s), the model call that asked
    for them, its caller and its deployment version (`locate`: see common.located)."""
    action_id, tool_call_id, call_id = (params.text("action_id"), params.text("tool_call_id"),
                                        params.text("call_id"))
    given = [n for n, v in (("action_id", action_id), ("tool_call_id", tool_call_id),
                            ("call_id", call_id)) if v]
    if len(given) != 1:
        raise BadParameter("action_id", "give exactly one of action_id, tool_call_id, call_id")
    if action_id:
        actions = by_key(con, "tool_actions", "action_id", action_id, locate)
    elif tool_call_id:
        actions = located(con, "tool_actions", "t.tool_call_id = ?", tool_call_id, "tool_call_id",
                          [tool_call_id], locate, "ORDER BY started_at")
        if not actions:
            found = located(con, "model_calls", "list_contains(t.tool_call_ids, ?)", tool_call_id,
                            "tool_call_ids", [tool_call_id], locate)
            call_id = found[0]["call_id"] if found else None
    else:
        actions = located(con, "tool_actions", "t.call_id = ?", call_id, "call_id", [call_id], locate,
                          "ORDER BY started_at")
    if actions and not call_id:
        call_id = actions[0]["call_id"]
    call = None
    if call_id:
        found = by_key(con, "model_calls", "call_id", call_id, locate)
        call = found[0] if found else None
    deployment = None
    if call and call.get("deployment_id"):
        found = rows(con, "SELECT * FROM deployments WHERE deployment_id = ? AND version = ?",
                     [call["deployment_id"], call.get("deployment_version")])
        deployment = found[0] if found else None
    subject_ids = [a["action_id"] for a in actions] + ([call["call_id"]] if call else [])
    if deployment:  # findings about the deployment version that served the call (drift)
        subject_ids.append(f"{deployment['deployment_id']}@{deployment['version']}")
    findings = located(con, "findings", "list_has_any(t.subject_ids, ?::VARCHAR[])", subject_ids,
                       "subject_ids", subject_ids, locate, "ORDER BY detected_at") if subject_ids else []
    caller = None
    if call:
        caller = {k: call.get(k) for k in ("caller", "client_service", "client_address",
                                            "api_key_fingerprint")}
    return {"found": bool(actions or call), "actions": actions, "call": call, "caller": caller,
            "deployment": deployment, "findings": findings}
