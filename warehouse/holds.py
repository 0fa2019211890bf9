"""Legal holds: rows a hold covers survive retention until it is released.

A hold has criteria (deployment_id, caller, [time_from, time_to)); it covers a row when
every criterion it sets matches that row. A criterion a table cannot answer (a caller for
a metric sample) does not match, so a caller hold keeps that caller's calls, their tool
actions and findings, not every sample of the fleet. Releasing a hold writes a new
version of it; both versions are in the ledger.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import duckdb

from warehouse.access import Principal
from warehouse.params import BadParameter, Params
from warehouse.queries.common import rows
from warehouse.store import Store
from warehouse.tables import AGE_COLUMNS, iso

ACTIVE = "h.released_at IS NULL"


def _time(table: str) -> str:
    age = AGE_COLUMNS[table]
    return f"(h.time_from IS NULL OR {age} >= h.time_from) AND (h.time_to IS NULL OR {age} < h.time_to)"


def _via_subjects(column: str) -> str:
    """A finding matches through the calls (or the actions of calls) it is about."""
    return (f"EXISTS (SELECT 1 FROM model_calls c WHERE c.{column} = h.{column} AND "
            f"(list_contains(t.subject_ids, c.call_id) OR EXISTS (SELECT 1 FROM tool_actions a "
            f"WHERE a.call_id = c.call_id AND list_contains(t.subject_ids, a.action_id))))")


_CALL_OF_ACTION = "(SELECT c.{col} FROM model_calls c WHERE c.call_id = t.call_id)"

# table -> (deployment criterion, caller criterion), each true when the hold does not set it.
_CRITERIA = {
    "model_calls": ("h.deployment_id = t.deployment_id", "h.caller = t.caller"),
    "tool_actions": (f"h.deployment_id = {_CALL_OF_ACTION.format(col='deployment_id')}",
                     f"h.caller = {_CALL_OF_ACTION.format(col='caller')}"),
    "findings": ("list_contains(t.subject_ids, h.deployment_id) OR " + _via_subjects("deployment_id"),
                 _via_subjects("caller")),
    "deployments": ("h.deployment_id = t.deployment_id", "FALSE"),
    "metric_samples": ("h.deployment_id = t.deployment_id", "FALSE"),
    "access_log": ("FALSE", "FALSE"),
    # A span is held with the calls of its trace.
    "trace_spans": ("EXISTS (SELECT 1 FROM model_calls c WHERE c.trace_id = t.trace_id "
                    "AND c.deployment_id = h.deployment_id)",
                    "EXISTS (SELECT 1 FROM model_calls c WHERE c.trace_id = t.trace_id AND c.caller = h.caller)"),
}


# What a shard cannot decide alone: an action's, a finding's or a span's deployment and
# caller come from calls that may be in another shard. There a hold keeps every such row in
# its time range: more than it names, never less.
_SHARDED = {"tool_actions", "findings", "trace_spans"}


def held_sql(table: str, sharded: bool = False) -> str:
    """SQL true when row `t` of `table` is covered by an active legal hold (`sharded`: in one
    shard of several, see _SHARDED)."""
    if sharded and table in _SHARDED:
        return f"EXISTS (SELECT 1 FROM legal_holds h WHERE {ACTIVE} AND {_time(table)})"
    deployment, caller = _CRITERIA[table]
    return (f"EXISTS (SELECT 1 FROM legal_holds h WHERE {ACTIVE} AND {_time(table)} "
            f"AND (h.deployment_id IS NULL OR ({deployment})) AND (h.caller IS NULL OR ({caller})))")


def add(store: Store, principal: Principal, params: Params) -> dict[str, Any]:
    reason = params.text("reason")
    if not reason:
        raise BadParameter("reason", "required: say why the data must be kept")
    deployment_id, caller = params.text("deployment_id"), params.text("caller")
    time_from, time_to = params.time("from"), params.time("to")
    if time_from and time_to and time_to <= time_from:
        raise BadParameter("to", "must be after from")
    if not (deployment_id or caller or time_from or time_to):
        raise BadParameter("deployment_id", "give at least one of deployment_id, caller, from, to")
    hold = {"hold_id": f"hold-{uuid.uuid4().hex[:12]}", "version": 1,
            "created_at": iso(_now()), "created_by": principal.name, "reason": reason,
            "deployment_id": deployment_id, "caller": caller,
            "time_from": iso(time_from), "time_to": iso(time_to)}
    with store.transaction() as con:
        items = store.record(con, "legal_holds", [hold])
        store.ledger.append(con, "hold", {"hold_id": hold["hold_id"], "action": "add"}, items)
    return {"hold": get(store.reader(), hold["hold_id"])}


def remove(store: Store, principal: Principal, params: Params) -> dict[str, Any]:
    hold_id = params.text("hold_id")
    if not hold_id:
        raise BadParameter("hold_id", "required")
    with store.transaction() as con:
        current = get(con, hold_id)
        if current is None:
            raise BadParameter("hold_id", f"no hold {hold_id!r}")
        if current["released_at"]:
            raise BadParameter("hold_id", f"hold {hold_id} was already released")
        released = {**current, "version": current["version"] + 1, "released_at": iso(_now()),
                    "released_by": principal.name, "release_reason": params.text("reason")}
        items = store.record(con, "legal_holds", [released])
        store.ledger.append(con, "hold", {"hold_id": hold_id, "action": "release"}, items)
    return {"hold": get(store.reader(), hold_id)}


def sync(store: Store, holds: list[dict[str, Any]]) -> int:
    """Make this store hold `holds` (every version the query front's store has: a shard
    other than 0 takes them before each retention run); only new holds and releases are
    written, under one ledger entry. Returns how many."""
    if not holds:
        return 0
    with store.transaction() as con:
        items = store.record(con, "legal_holds", holds)
        if items.height:
            store.ledger.append(con, "hold", {"action": "sync", "holds": sorted({h["hold_id"] for h in holds})},
                                items)
    return items.height


def get(con: duckdb.DuckDBPyConnection, hold_id: str) -> dict[str, Any] | None:
    found = rows(con, "SELECT * FROM legal_holds WHERE hold_id = ?", [hold_id])
    return found[0] if found else None


def in_force(con: duckdb.DuckDBPyConnection, start: dt.datetime | None = None,
             end: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Holds in force at any time in [start, end) (all active holds without a range)."""
    return rows(con, """
        SELECT * FROM legal_holds
        WHERE (? IS NULL OR created_at < ?) AND (released_at IS NULL OR (? IS NOT NULL AND released_at >= ?))
        ORDER BY created_at""", [end, end, start, start])


def list_holds(con: duckdb.DuckDBPyConnection, params: Params) -> dict[str, Any]:
    which = params.choice("state", ("active", "all"), "active")
    sql = "SELECT * FROM legal_holds" + (" WHERE released_at IS NULL" if which == "active" else "")
    return {"rows": rows(con, sql + " ORDER BY created_at", [])}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
