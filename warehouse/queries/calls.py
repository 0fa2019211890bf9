"""Who called what model, and what followed: `calls` and `trace-back`."""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable

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
    limit, offset = page(params)
    found, more = calls_page(con, params, limit, offset)
    with_actions(found, actions_of(con, [r["call_id"] for r in found], locate))
    return {"rows": found, "next_offset": offset + limit if more else None}


def calls_page(con: duckdb.DuckDBPyConnection, params: Params, limit: int,
               offset: int) -> tuple[list[dict[str, Any]], bool]:
    """One page of calls (without their actions) and whether more follow it."""
    where: list[str] = []
    args: list[Any] = []
    equals(params, CALL_FILTERS, where, args)
    time_range(params, "c.started_at", where, args)
    # (one call_id names at most one call: no window to try)
    windowed = params.text("call_id") is None
    page_ids = _page_ids(con, where, args, limit, offset, params.time("since"), params.time("until"),
                         windowed)
    return _whole_rows(con, page_ids[:limit]), len(page_ids) > limit


def with_actions(found: list[dict[str, Any]], actions: list[dict[str, Any]]) -> None:
    """List under each call of `found` its actions, in the order they started."""
    by_call: dict[str, list[dict[str, Any]]] = {r["call_id"]: [] for r in found}
    for a in sorted(actions, key=lambda a: a["action_id"]):
        by_call[a["call_id"]].append(a)
    for listed in by_call.values():  # started_at, NULLS LAST, then action_id (stable sorts)
        listed.sort(key=lambda a: a["started_at"] or "")
        listed.sort(key=lambda a: a["started_at"] is None)
    for row in found:
        row["actions"] = [{k: v for k, v in a.items() if k not in ("call_id", "started_at")}
                          for a in by_call[row["call_id"]]] or None


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


def actions_of(con: duckdb.DuckDBPyConnection, ids: list[str], locate: Locate | None) -> list[dict[str, Any]]:
    """The actions that followed `ids`' calls (`with_actions` lists them under each). One
    query for the page (a correlated subquery would be evaluated for every action in the
    store before the LIMIT applies), reading only where the warehouse's index says those
    calls' actions were written."""
    if not ids:
        return []
    return located(con, "tool_actions", "list_contains(?::VARCHAR[], t.call_id)", ids, "call_id", ids,
                   locate, columns="call_id, started_at, action_id, tool_name, outcome, target")


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
    return trace_back_by(params, lambda what, value: lookup(con, what, value, locate))


# The row lookups trace-back is made of: a name -> the rows it finds for one value. A
# sharded warehouse's front asks each shard the same lookups and merges their rows
# (warehouse/front.py), so the steps between them are this one code either way.
LOOKUPS: dict[str, Callable[[duckdb.DuckDBPyConnection, Any, Locate | None], list[dict[str, Any]]]] = {
    "action": lambda con, action_id, locate: by_key(con, "tool_actions", "action_id", action_id, locate),
    "actions-of-tool-call": lambda con, tool_call_id, locate: located(
        con, "tool_actions", "t.tool_call_id = ?", tool_call_id, "tool_call_id", [tool_call_id], locate,
        "ORDER BY started_at"),
    "calls-listing-tool-call": lambda con, tool_call_id, locate: located(
        con, "model_calls", "list_contains(t.tool_call_ids, ?)", tool_call_id, "tool_call_ids",
        [tool_call_id], locate),
    "actions-of-call": lambda con, call_id, locate: located(
        con, "tool_actions", "t.call_id = ?", call_id, "call_id", [call_id], locate, "ORDER BY started_at"),
    "call": lambda con, call_id, locate: by_key(con, "model_calls", "call_id", call_id, locate),
    "deployment": lambda con, key, locate: rows(
        con, "SELECT * FROM deployments WHERE deployment_id = ? AND version = ?", list(key)),
    "findings-about": lambda con, subject_ids, locate: located(
        con, "findings", "list_has_any(t.subject_ids, ?::VARCHAR[])", subject_ids, "subject_ids",
        subject_ids, locate, "ORDER BY detected_at"),
}
# What the rows of a lookup are ordered by (ascending, nulls last), to merge shards' rows.
LOOKUP_ORDER = {"actions-of-tool-call": ("started_at", "action_id"),
                "actions-of-call": ("started_at", "action_id"),
                "findings-about": ("detected_at", "finding_id")}

Lookup = Callable[[str, Any], list[dict[str, Any]]]


def lookup(con: duckdb.DuckDBPyConnection, what: str, value: Any, locate: Locate | None = None) -> list[dict[str, Any]]:
    return LOOKUPS[what](con, value, locate)


def trace_back_by(params: Params, find: Lookup) -> dict[str, Any]:
    """trace-back over `find` (one store's lookups, or every shard's merged)."""
    action_id, tool_call_id, call_id = (params.text("action_id"), params.text("tool_call_id"),
                                        params.text("call_id"))
    given = [n for n, v in (("action_id", action_id), ("tool_call_id", tool_call_id),
                            ("call_id", call_id)) if v]
    if len(given) != 1:
        raise BadParameter("action_id", "give exactly one of action_id, tool_call_id, call_id")
    if action_id:
        actions = find("action", action_id)
    elif tool_call_id:
        actions = find("actions-of-tool-call", tool_call_id)
        if not actions:
            found = find("calls-listing-tool-call", tool_call_id)
            call_id = found[0]["call_id"] if found else None
    else:
        actions = find("actions-of-call", call_id)
    if actions and not call_id:
        call_id = actions[0]["call_id"]
    call = None
    if call_id:
        found = find("call", call_id)
        call = found[0] if found else None
    deployment = None
    if call and call.get("deployment_id"):
        found = find("deployment", [call["deployment_id"], call.get("deployment_version")])
        deployment = found[0] if found else None
    subject_ids = [a["action_id"] for a in actions] + ([call["call_id"]] if call else [])
    if deployment:  # findings about the deployment version that served the call (drift)
        subject_ids.append(f"{deployment['deployment_id']}@{deployment['version']}")
    findings = find("findings-about", subject_ids) if subject_ids else []
    caller = None
    if call:
        caller = {k: call.get(k) for k in ("caller", "client_service", "client_address",
                                            "api_key_fingerprint")}
    return {"found": bool(actions or call), "actions": actions, "call": call, "caller": caller,
            "deployment": deployment, "findings": findings}
