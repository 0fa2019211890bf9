"""What exists and what went wrong: `deployments` and `findings`."""

from __future__ import annotations

from typing import Any

import duckdb
import orjson

from warehouse.params import Params
from warehouse.queries.actions import SEVERITY_RANK
from warehouse.queries.common import PAGE_PARAMS, equals, page, paged, rows, time_range, where_sql
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


def keyed(where: list[str], top: bool = False) -> str:
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
    and the alerts (warehouse/alerts.py) both read it from here."""
    paths = ", ".join(f"'{p}'" for p in DETAIL_PATHS)
    about = {p.removeprefix("$."): f"t.about[{i}]" for i, p in enumerate(DETAIL_PATHS, 1)}
    top_sql = f"ORDER BY {ROW_ORDER.format(t='t')} LIMIT ?" if top else ""
    return f"""
        WITH detailed AS (
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
            SELECT s.finding_id, min(coalesce(c.deployment_id, m.deployment_id)) AS deployment,
                   min(a.tool_name) AS tool
            FROM (SELECT finding_id, unnest(subject_ids) AS subject FROM picked
                  WHERE named_deployment IS NULL) s
            LEFT JOIN tool_actions a ON a.action_id = s.subject
            LEFT JOIN model_calls c ON c.call_id = coalesce(a.call_id, s.subject)
            LEFT JOIN metric_samples m ON m.sample_id = s.subject
            GROUP BY s.finding_id),
        keyed AS (
            SELECT p.* EXCLUDE (named_deployment, named_tool, seen_as),
                   coalesce(p.named_deployment, s.deployment, p.seen_as) AS deployment,
                   coalesce(p.named_tool, s.tool) AS tool
            FROM picked p LEFT JOIN subjects s USING (finding_id))"""


def findings(con: duckdb.DuckDBPyConnection, params: Params) -> dict[str, Any]:
    """Policy, drift and integrity findings, grouped by kind, deployment, tool and policy
    (group=false: one row per finding, newest first).

    The table keeps every finding (the ledger covers each); grouping is only how they are
    read, so a routine repeat is one line with a count and the incident stays on top:
    groups with open findings first (a resolved group is history, not work), then by
    their highest severity, then by when they were last seen."""
    where: list[str] = []
    args: list[Any] = []
    equals(params, FINDING_FILTERS, where, args)
    time_range(params, "t.detected_at", where, args)
    outer: list[str] = []
    outer_args: list[Any] = []
    equals(params, GROUP_FILTERS, outer, outer_args)
    limit, offset = page(params)
    if not params.boolean("group", True):
        # Without a filter on what the findings are about, only the page's rows (and the
        # one after it) are looked up by subject, not every finding.
        top = not outer
        sql = f"""{keyed(where, top)}
                  SELECT k.* EXCLUDE (seen_at, rank, open) FROM keyed k {where_sql(outer)}
                  ORDER BY {ROW_ORDER.format(t='k')}"""
        return paged(con, sql, args + ([offset + limit + 1] if top else []) + outer_args, limit, offset)
    group = ", ".join(f"k.{c}" for c in GROUP_COLUMNS)
    # A group's latest finding: newest first, ties broken by id so a page is stable.
    sql = f"""{keyed(where)},
        grouped AS (
            SELECT {group}, max(k.rank) AS rank, arg_max(k.severity, (k.rank, k.seen_at)) AS severity,
                   count(*) AS count,
                   count(*) FILTER (WHERE k.open) AS open,
                   min(k.seen_at) AS first_seen, max(k.seen_at) AS last_seen,
                   arg_max(k.finding_id, (k.seen_at, k.finding_id)) AS latest_id
            FROM keyed k {where_sql(outer)} GROUP BY ALL)
        SELECT g.* EXCLUDE (rank, latest_id),
               {", ".join(f"l.{c} AS latest_{c}" for c in LATEST)}
        FROM grouped g JOIN picked l ON l.finding_id = g.latest_id
        ORDER BY g.open > 0 DESC, g.rank DESC, g.last_seen DESC NULLS LAST,
                 {", ".join(f"g.{c}" for c in GROUP_COLUMNS)}"""
    result = paged(con, sql, args + outer_args, limit, offset)
    result["rows"] = [_nest_latest(row) for row in result["rows"]]
    return result


def _nest_latest(row: dict[str, Any]) -> dict[str, Any]:
    """A group's latest finding as one object, `latest` (its subject ids lead to each call)."""
    latest = {c: row.pop(f"latest_{c}") for c in LATEST}
    if isinstance(latest["detail"], str):
        latest["detail"] = orjson.loads(latest["detail"])
    return {**row, "latest": latest}
