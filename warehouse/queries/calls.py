"""Who called what model, and what followed: `calls` and `trace-back`."""

from __future__ import annotations

import datetime as dt
from typing import Any

import duckdb

from warehouse.params import BadParameter, Params
from warehouse.queries.common import Locate, by_key, equals, located, page, rows, time_range, where_sql
from warehouse.sql import one
from warehouse.tables import observed_within_any, windows_of

CALL_FILTERS = {
    "caller": "c.caller = ?",
    "client_service": "c.client_service = ?",
    "model": "c.model = ?",
    "deployment_id": "c.deployment_id = ?",
    "call_id": "c.call_id = ?",
}
CALLS_PARAMS = {*CALL_FILTERS, "since", "until", "limit", "offset"}
TRACE_BACK_PARAMS = {"action_id", "tool_call_id", "call_id"}

CALLS_ORDER = "ORDER BY started_at DESC NULLS LAST, call_id"
# The newest page first looks at a window back from the newest call that holds, at the
# store's average rate, WINDOW_ROWS times the rows up to the end of the page (at least
# MIN_WINDOW); then at a window 16 times wider, until the page is full or the window
# covers every call. A window scans the started_at column (and, where calls were written
# in time order, only the row groups it covers), so the first try should usually be enough.
WINDOW_ROWS = 4
MIN_WINDOW = dt.timedelta(seconds=1)
WINDOW_GROWTH = 16


def calls(con: duckdb.DuckDBPyConnection, params: Params, locate: Locate | None = None) -> dict[str, Any]:
    """Who called what model, and what action followed; newest first, paginated
    (`locate`: see common.located)."""
    where: list[str] = []
    args: list[Any] = []
    equals(params, CALL_FILTERS, where, args)
    time_range(params, "c.started_at", where, args)
    limit, offset = page(params)
    # (one call_id names at most one call: no window to try)
    windowed = params.text("call_id") is None
    page_ids = _page_ids(con, where, args, limit, offset, params.time("since"), params.time("until"),
                         windowed)
    found = _whole_rows(con, page_ids[:limit])
    result = {"rows": found, "next_offset": offset + limit if len(page_ids) > limit else None}
    actions = _actions_of(con, [r["call_id"] for r in found], locate)
    for row in found:
        row["actions"] = actions[row["call_id"]] or None
    return result


def _whole_rows(con: duckdb.DuckDBPyConnection, page_ids: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """The whole rows of a page's calls, in page order (sorting every column of every call
    to keep 50 of them costs ten times more than sorting ids). model_calls has no DuckDB
    index: reading only the row groups written in the seconds the page's rows were
    observed keeps this from scanning the whole table; a call replaced since (a later
    version, observed later) is read again without that bound."""
    if not page_ids:
        return []
    ids = [call_id for call_id, _ in page_ids]
    select = f"SELECT t.* EXCLUDE (row_hash) FROM model_calls t WHERE t.call_id IN ({', '.join('?' for _ in ids)})"
    seconds = [second for _, second in page_ids]
    if None not in seconds:
        within, bounds = observed_within_any(windows_of((s, s) for s in seconds))
        found = rows(con, f"{select} AND {within} {CALLS_ORDER}", [*ids, *bounds])
        if len(found) == len(ids):
            return found
    return rows(con, f"{select} {CALLS_ORDER}", ids)


def _actions_of(con: duckdb.DuckDBPyConnection, ids: list[str],
                locate: Locate | None) -> dict[str, list[dict[str, Any]]]:
    """The actions that followed each of `ids`' calls. One query for the page (a correlated
    subquery would be evaluated for every action in the store before the LIMIT applies),
    reading only where the warehouse's index says those calls' actions were written."""
    actions: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    if not ids:
        return actions
    for a in located(con, "tool_actions", "list_contains(?::VARCHAR[], t.call_id)", ids, "call_id", ids,
                     locate, "ORDER BY started_at, action_id",
                     columns="call_id, action_id, tool_name, outcome, target"):
        actions[a.pop("call_id")].append(a)
    return actions


def _page_ids(con: duckdb.DuckDBPyConnection, where: list[str], args: list[Any], limit: int,
              offset: int, since: dt.datetime | None, until: dt.datetime | None,
              windowed: bool = True) -> list[tuple[str, int]]:
    """The call ids of one page (and of the first row after it), in page order, each with
    the second its row was observed (written) in.

    `ORDER BY started_at DESC ... LIMIT` sorts every matching call. Calls with
    `started_at >= cutoff` come before all others in that order, so when a window
    [cutoff, ...) already holds the page and the row after it, its page is the page: try
    growing windows back from the newest call first, and the whole table last."""
    query = (f"SELECT c.call_id, epoch_us(c.observed_at) // 1000000 FROM model_calls c {{}} {CALLS_ORDER} "
             f"LIMIT ? OFFSET ?")
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
                return found
            window *= WINDOW_GROWTH
    except OverflowError:
        pass  # the window passed year 1: the whole table is the next window anyway
    return con.execute(query.format(where_sql(where)), [*args, limit + 1, offset]).fetchall()


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
