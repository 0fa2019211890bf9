"""`latency-changes`: every deployment change (version n-1 -> n of one deployment) with its
calls' latency percentiles before and after, and the change in percent.

"Before" is the calls that ran on the old version, "after" those on the new one, both
within `since`/`until` (the `latency` query by deployment version, exact or estimated the
same way); a change is listed when the new version took effect inside that range. Newest
change first. The filters narrow the calls as in `latency`; `gpu_type`, `profile_name`
and `model` also keep only the changes where either version has that value.
"""

from __future__ import annotations

from typing import Any, Callable

import duckdb

from warehouse.params import Params
from warehouse.queries.common import rows, time_range, where_sql
from warehouse.queries.latency import FILTERS, LATENCY_PARAMS, METRICS, QUANTILES, latency

# What a deployment version ran on, shown on either side of a change.
FACTS = ("nim_image", "profile_name", "gpu_type", "gpu_count", "model_id")
# A filter on a version's record: the change is kept when either side matches.
VERSION_FILTERS = {"gpu_type": "gpu_type", "profile_name": "profile_name", "model": "model_id"}
PASSED_ON = ("since", "until", "source", "precision", *FILTERS)
LATENCY_CHANGES_PARAMS = set(PASSED_ON)


def latency_changes(con: duckdb.DuckDBPyConnection, params: Params,
                    measure: Callable[[Params], dict[str, Any]] | None = None) -> dict[str, Any]:
    """(`measure`: the latency query the versions are measured with; a sharded warehouse's
    front measures over every shard, and reads the deployments, which every shard holds,
    from its own store.)"""
    where = ["from_version IS NOT NULL"]
    args: list[Any] = []
    time_range(params, "changed_at", where, args)
    if params.text("deployment_id") is not None:
        where.append("deployment_id = ?")
        args.append(params.text("deployment_id"))
    for name, column in VERSION_FILTERS.items():
        if params.text(name) is not None:
            where.append(f"(before_{column} = ? OR {column} = ?)")
            args += [params.text(name)] * 2
    lagged = ", ".join(f"lag({f}) OVER w AS before_{f}" for f in FACTS)
    changes = rows(con, f"""
        SELECT * FROM (
            SELECT deployment_id, lag(version) OVER w AS from_version, version AS to_version,
                   valid_from AS changed_at, {", ".join(FACTS)}, {lagged}
            FROM deployments
            WINDOW w AS (PARTITION BY deployment_id ORDER BY version))
        {where_sql(where)}
        ORDER BY changed_at DESC, deployment_id""", args)
    given = {name: [value] for name in PASSED_ON if (value := params.text(name)) is not None}
    measured = (measure or (lambda p: latency(con, p)))(Params({**given, "by": ["deployment"]}, LATENCY_PARAMS))
    per_version = {(r["deployment_id"], r["deployment_version"]): r for r in measured["rows"]}
    found = [_change(c, per_version.get((c["deployment_id"], c["from_version"])),
                     per_version.get((c["deployment_id"], c["to_version"]))) for c in changes]
    return {"precision": measured["precision"], "relative_error": measured["relative_error"],
            "rows": found}


def _change(change: dict[str, Any], old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any]:
    before = {f: change[f"before_{f}"] for f in FACTS}
    after = {f: change[f] for f in FACTS}
    row: dict[str, Any] = {
        "deployment_id": change["deployment_id"], "from_version": change["from_version"],
        "to_version": change["to_version"], "changed_at": change["changed_at"],
        "changed": [f for f in FACTS if before[f] != after[f]], "before": before, "after": after,
        "calls_before": (old or {}).get("calls", 0), "calls_after": (new or {}).get("calls", 0)}
    for metric in METRICS:
        for q in QUANTILES:
            name = f"{metric}_p{round(q * 100)}"
            was, now = (old or {}).get(name), (new or {}).get(name)
            row[f"{name}_before"], row[f"{name}_after"] = was, now
            row[f"{name}_change_pct"] = change_pct(was, now)
    return row


def change_pct(before: float | None, after: float | None) -> float | None:
    """How much `after` differs from `before`, in percent of `before` (None without both)."""
    if before is None or after is None or before == 0:
        return None
    return round(100.0 * (after - before) / before, 1)
