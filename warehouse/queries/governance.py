"""What exists and what went wrong: `deployments` and `findings`."""

from __future__ import annotations

from typing import Any, Callable

import duckdb
import orjson

from warehouse.params import Params
from warehouse.queries.actions import SEVERITY_RANK
from warehouse.queries.common import PAGE_PARAMS, equals, page, page_of, paged, rows, time_range, where_sql
from warehouse.tables import AGE_COLUMNS

DEPLOYMENT_COLUMNS = {"deployment_id": "deployment_id", "model": "model_id", "gpu_type": "gpu_type",
                      "profile_name": "profile_name", "purpose": "purpose", "source": "source"}
DEPLOYMENT_FILTERS = {name: f"t.{column} = ?" for name, column in DEPLOYMENT_COLUMNS.items()}
DEPLOYMENTS_PARAMS = {*DEPLOYMENT_FILTERS, "versions", *PAGE_PARAMS}
FINDING_FILTERS = {"kind": "t.kind = ?", "severity": "t.severity = ?",
                   "subject_id": "list_contains(t.subject_ids, ?)"}
# What a finding is about, beside its kind: filters on the columns `keyed` derives.
GROUP_FILTERS = {"deployment": "k.deployment = ?", "tool": "k.tool = ?", "policy": "k.policy = ?"}
GROUP_COLUMNS = ("kind", "deployment", "tool", "policy")
FINDINGS_PARAMS = {*FINDING_FILTERS, *GROUP_FILTERS, "group", "since", "until", *PAGE_PARAMS}
LATEST = ("finding_id", "subject_ids", "detected_at", "severity", "detail")


def deployments(con: duckdb.DuckDBPyConnection, params: Params) -> dict[str, Any]:
    """Governance records: the latest version of each deployment (versions=all: every
    version, newest first), with how many calls each version served."""
    where: list[str] = []
    args: list[Any] = []
    equals(params, DEPLOYMENT_FILTERS, where, args)
    if params.choice("versions", ("latest", "all"), "latest") == "latest":
        where.append("t.version = (SELECT max(version) FROM deployments x "
                     "WHERE x.deployment_id = t.deployment_id)")
    limit, offset = page(params)
    sql = f"""
        SELECT t.* EXCLUDE (row_hash),
               (SELECT count(*) FROM model_calls c WHERE c.deployment_id = t.deployment_id
                  AND c.deployment_version = t.version) AS calls
        FROM deployments t {where_sql(where)}
        ORDER BY t.deployment_id, t.version DESC"""
    return paged(con, sql, args, limit, offset)


def every_deployment(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Every version of every deployment (governance records: few), for a sharded
    warehouse's front, which filters them as `deployments` does (front.deployments)."""
    return rows(con, "SELECT t.* EXCLUDE (row_hash) FROM deployments t", [])


def calls_per_version(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    return rows(con, "SELECT deployment_id, deployment_version, count(*) AS calls FROM model_calls "
                     "WHERE deployment_id IS NOT NULL GROUP BY ALL", [])


# The fields of a finding's detail that say what it is about; read in one pass over the
# JSON (one extraction per path parses the detail once per path).
DETAIL_PATHS = ("$.deployment_id", "$.tool_name", "$.tool_names", "$.policy_id", "$.identity",
                "$.endpoint", "$.model", "$.status")
ROW_ORDER = "{t}.detected_at DESC NULLS LAST, {t}.finding_id"


# What a finding's subject says about its deployment and tool, given rather than joined
# (`keyed(facts=True)`): the three lists bound first, before the query's own parameters.
FACTS_CTE = """facts AS (SELECT unnest(?::VARCHAR[]) AS subject, unnest(?::VARCHAR[]) AS deployment,
                             unnest(?::VARCHAR[]) AS tool),"""
SUBJECTS_JOINED = """
            LEFT JOIN tool_actions a ON a.action_id = s.subject
            LEFT JOIN model_calls c ON c.call_id = coalesce(a.call_id, s.subject)
            LEFT JOIN metric_samples m ON m.sample_id = s.subject"""


def keyed(where: list[str], top: bool = False, facts: bool = False) -> str:
    """The CTEs up to `keyed`: the findings `where` selects (top: only the first rows in
    ROW_ORDER, as many as a bound parameter after `where`'s says), each with the deployment,
    tool and policy it is about (`deployment`, `tool`, `policy`), when it was seen
    (`seen_at`) and its severity's rank.

    A policy finding's detail names its deployment and tool. A clock_skew finding names
    only the records it is about (a span, log line or sample, and the call or action it
    became): their deployment and tool are looked up by those subject ids, so a sender's
    bad clock collapses into one group per deployment. An unknown deployment has no id: it
    is told apart by what identified it (the identity, endpoint or served model).

    The one definition of a finding's group (GROUP_COLUMNS of `keyed`): the findings query
    and the alerts (warehouse/alerts.py) both read it from here. `facts`: a subject's
    deployment and tool come from the `facts` relation (FACTS_CTE, its lists bound first)
    instead of this store's tables: a sharded warehouse's front resolves subjects in every
    shard (`subject_facts`) and hands them over."""
    paths = ", ".join(f"'{p}'" for p in DETAIL_PATHS)
    about = {p.removeprefix("$."): f"t.about[{i}]" for i, p in enumerate(DETAIL_PATHS, 1)}
    top_sql = f"ORDER BY {ROW_ORDER.format(t='t')} LIMIT ?" if top else ""
    if facts:
        resolved = ("min(f.deployment) AS deployment, min(f.tool) AS tool", "LEFT JOIN facts f ON f.subject = s.subject")
    else:
        resolved = ("min(coalesce(c.deployment_id, m.deployment_id)) AS deployment, min(a.tool_name) AS tool",
                    SUBJECTS_JOINED)
    return f"""
        WITH {FACTS_CTE if facts else ""} detailed AS (
            SELECT t.*, json_extract_string(t.detail, [{paths}]) AS about
            FROM (SELECT t.* EXCLUDE (row_hash) FROM findings t {where_sql(where)} {top_sql}) t),
        picked AS MATERIALIZED (
            SELECT t.* EXCLUDE (about), {AGE_COLUMNS['findings']} AS seen_at,
                   {SEVERITY_RANK} AS rank, {about['status']} IS DISTINCT FROM 'resolved' AS open,
                   {about['deployment_id']} AS named_deployment,
                   coalesce({about['tool_name']}, nullif(array_to_string(list_sort(
                       from_json({about['tool_names']}, '["VARCHAR"]')), ', '), '')) AS named_tool,
                   {about['policy_id']} AS policy,
                   CASE WHEN {about['identity']} IS NOT NULL THEN t.subject_ids[1]
                        ELSE coalesce({about['endpoint']}, 'model ' || {about['model']}) END AS seen_as
            FROM detailed t),
        subjects AS (
            -- a subject is a call, an action (its call gives the deployment) or a sample
            SELECT s.finding_id, {resolved[0]}
            FROM (SELECT finding_id, unnest(subject_ids) AS subject FROM picked
                  WHERE named_deployment IS NULL) s
            {resolved[1]}
            GROUP BY s.finding_id),
        keyed AS (
            SELECT p.* EXCLUDE (named_deployment, named_tool, seen_as),
                   coalesce(p.named_deployment, s.deployment, p.seen_as) AS deployment,
                   coalesce(p.named_tool, s.tool) AS tool
            FROM picked p LEFT JOIN subjects s USING (finding_id))"""


def _findings_where(params: Params) -> tuple[list[str], list[Any], list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    equals(params, FINDING_FILTERS, where, args)
    time_range(params, "t.detected_at", where, args)
    outer: list[str] = []
    outer_args: list[Any] = []
    equals(params, GROUP_FILTERS, outer, outer_args)
    return where, args, outer, outer_args


def unresolved_subjects(con: duckdb.DuckDBPyConnection, params: Params) -> list[str]:
    """The subjects of the findings `params` selects whose detail names no deployment: what
    `keyed` resolves through the calls, actions and samples they name."""
    where, args, _, _ = _findings_where(params)
    return [r["subject"] for r in rows(con, f"""{keyed(where)}
        SELECT DISTINCT unnest(subject_ids) AS subject FROM picked WHERE named_deployment IS NULL
        ORDER BY subject""", args)]


def subject_records(con: duckdb.DuckDBPyConnection, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """What this store holds of `ids` that a subject's deployment and tool are read from."""
    return {"actions": rows(con, "SELECT action_id, tool_name, call_id FROM tool_actions "
                                 "WHERE list_contains(?::VARCHAR[], action_id)", [ids]),
            "calls": rows(con, "SELECT call_id, deployment_id FROM model_calls "
                               "WHERE list_contains(?::VARCHAR[], call_id)", [ids]),
            "samples": rows(con, "SELECT sample_id, deployment_id FROM metric_samples "
                                 "WHERE list_contains(?::VARCHAR[], sample_id)", [ids])}


def subject_facts(ids: list[str], records: Callable[[list[str]], dict[str, list[dict[str, Any]]]]) -> list[list[Any]]:
    """The facts relation (FACTS_CTE's three lists) for `ids`, from `records` (every
    shard's `subject_records`): as `keyed`'s joins read them, a subject's deployment is its
    call's (an action's: the call it followed) or its sample's, its tool an action's."""
    found = records(ids)
    actions = {a["action_id"]: a for a in found["actions"]}
    deployments = {s["sample_id"]: s["deployment_id"] for s in found["samples"]}
    asked = {a["call_id"] for a in actions.values() if a["call_id"]} - set(ids)
    calls = {c["call_id"]: c["deployment_id"] for c in found["calls"]}
    if asked:
        calls.update({c["call_id"]: c["deployment_id"] for c in records(sorted(asked))["calls"]})
    facts: list[list[Any]] = [[], [], []]
    for subject in ids:
        action = actions.get(subject)
        call_id = action["call_id"] if action and action["call_id"] is not None else subject
        deployment = calls.get(call_id)
        deployment = deployments.get(subject) if deployment is None else deployment
        for column, value in zip(facts, (subject, deployment, (action or {}).get("tool_name"))):
            column.append(value)
    return facts


def findings(con: duckdb.DuckDBPyConnection, params: Params) -> dict[str, Any]:
    """Policy, drift and integrity findings, grouped by kind, deployment, tool and policy
    (group=false: one row per finding, newest first).

    The table keeps every finding (the ledger covers each); grouping is only how they are
    read, so a routine repeat is one line with a count and the incident stays on top:
    groups with open findings first (a resolved group is history, not work), then by
    their highest severity, then by when they were last seen."""
    limit, offset = page(params)
    if not params.boolean("group", True):
        return paged(con, *_rows_sql(params, offset + limit + 1), limit, offset)
    sql, args = _groups_sql(params)
    result = paged(con, f"{sql} ORDER BY {GROUPS_ORDER}", args, limit, offset)
    result["rows"] = [_shown(row) for row in result["rows"]]
    return result


def _shown(group: dict[str, Any]) -> dict[str, Any]:
    """A group as the answer shows it: its latest finding nested, without what ordered it."""
    return _nest_latest({k: v for k, v in group.items() if k not in ("rank", "severity_seen")})


def _rows_sql(params: Params, top: int, facts: list[list[Any]] | None = None) -> tuple[str, list[Any]]:
    """One row per finding, newest first. Without a filter on what the findings are about,
    only the first `top` rows are looked up by subject, not every finding."""
    where, args, outer, outer_args = _findings_where(params)
    first = not outer
    sql = f"""{keyed(where, first, facts is not None)}
              SELECT k.* EXCLUDE (seen_at, rank, open) FROM keyed k {where_sql(outer)}
              ORDER BY {ROW_ORDER.format(t='k')}"""
    return sql, [*(facts or []), *args, *([top] if first else []), *outer_args]


# Groups in the order they are read: open ones first, then by their highest severity, when
# they were last seen, and what they are about.
GROUPS_ORDER = (f"open > 0 DESC, rank DESC, last_seen DESC NULLS LAST, {', '.join(GROUP_COLUMNS)}")


def _groups_sql(params: Params, facts: list[list[Any]] | None = None) -> tuple[str, list[Any]]:
    """One row per group with its latest finding, and what orders groups and adds up those
    of several stores: the highest rank, and the time its severity was chosen by."""
    where, args, outer, outer_args = _findings_where(params)
    group = ", ".join(f"k.{c}" for c in GROUP_COLUMNS)
    # A group's latest finding: newest first, ties broken by id so a page is stable.
    sql = f"""{keyed(where, facts=facts is not None)},
        grouped AS (
            SELECT {group}, max(k.rank) AS rank, arg_max(k.severity, (k.rank, k.seen_at)) AS severity,
                   arg_max(k.seen_at, (k.rank, k.seen_at)) AS severity_seen,
                   count(*) AS count,
                   count(*) FILTER (WHERE k.open) AS open,
                   min(k.seen_at) AS first_seen, max(k.seen_at) AS last_seen,
                   arg_max(k.finding_id, (k.seen_at, k.finding_id)) AS latest_id
            FROM keyed k {where_sql(outer)} GROUP BY ALL)
        SELECT g.* EXCLUDE (latest_id),
               {", ".join(f"l.{c} AS latest_{c}" for c in LATEST)}
        FROM grouped g JOIN picked l ON l.finding_id = g.latest_id"""
    return f"SELECT * FROM ({sql}) g", [*(facts or []), *args, *outer_args]


def findings_part(con: duckdb.DuckDBPyConnection, params: Params, facts: list[list[Any]],
                  top: int) -> list[dict[str, Any]]:
    """What a sharded warehouse's front merges (front.findings): every group with what
    adding them up needs, or (group=false) the first `top` rows; subjects resolved by
    `facts` (see keyed)."""
    if not params.boolean("group", True):
        sql, args = _rows_sql(params, top, facts)
        return rows(con, f"{sql} LIMIT ?", [*args, top])
    sql, args = _groups_sql(params, facts)
    return rows(con, sql, args)


def merged_groups(parts: list[list[dict[str, Any]]], limit: int, offset: int) -> dict[str, Any]:
    """Several stores' `findings_part` groups as one store's page of groups."""
    groups: dict[tuple, dict[str, Any]] = {}
    for part in parts:
        for row in part:
            key = tuple(row[c] for c in GROUP_COLUMNS)
            seen = groups.get(key)
            if seen is None:
                groups[key] = dict(row)
                continue
            if (row["rank"], row["severity_seen"] or "") > (seen["rank"], seen["severity_seen"] or ""):
                seen["severity"], seen["severity_seen"] = row["severity"], row["severity_seen"]
            seen["rank"] = max(seen["rank"], row["rank"])
            seen["count"] += row["count"]
            seen["open"] += row["open"]
            seen["first_seen"] = min(t for t in (seen["first_seen"], row["first_seen"]) if t) if (
                seen["first_seen"] or row["first_seen"]) else None
            if (row["last_seen"] or "", row["latest_finding_id"]) > (seen["last_seen"] or "", seen["latest_finding_id"]):
                seen.update({k: v for k, v in row.items() if k.startswith("latest_")})
            seen["last_seen"] = max(seen["last_seen"] or "", row["last_seen"] or "") or None
    ordered = sorted(groups.values(), key=lambda g: tuple((g[c] is None, g[c] or "") for c in GROUP_COLUMNS))
    ordered.sort(key=lambda g: g["last_seen"] or "", reverse=True)
    ordered.sort(key=lambda g: g["last_seen"] is None)
    ordered.sort(key=lambda g: (g["open"] > 0, g["rank"]), reverse=True)
    result = page_of(ordered, limit, offset)
    return {**result, "rows": [_shown(g) for g in result["rows"]]}


def _nest_latest(row: dict[str, Any]) -> dict[str, Any]:
    """A group's latest finding as one object, `latest` (its subject ids lead to each call)."""
    latest = {c: row.pop(f"latest_{c}") for c in LATEST}
    if isinstance(latest["detail"], str):
        latest["detail"] = orjson.loads(latest["detail"])
    return {**row, "latest": latest}
