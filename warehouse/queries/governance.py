"""What exists and what went wrong: `deployments` and `findings`."""

from __future__ import annotations

from typing import Any

import duckdb

from warehouse.params import Params
from warehouse.queries.common import PAGE_PARAMS, equals, page, paged, time_range, where_sql

DEPLOYMENT_FILTERS = {"deployment_id": "t.deployment_id = ?", "model": "t.model_id = ?",
                      "gpu_type": "t.gpu_type = ?", "profile_name": "t.profile_name = ?",
                      "purpose": "t.purpose = ?", "source": "t.source = ?"}
DEPLOYMENTS_PARAMS = {*DEPLOYMENT_FILTERS, "versions", *PAGE_PARAMS}
FINDING_FILTERS = {"kind": "t.kind = ?", "severity": "t.severity = ?",
                   "subject_id": "list_contains(t.subject_ids, ?)"}
FINDINGS_PARAMS = {*FINDING_FILTERS, "since", "until", *PAGE_PARAMS}


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


def findings(con: duckdb.DuckDBPyConnection, params: Params) -> dict[str, Any]:
    """Policy, drift and integrity findings, newest first."""
    where: list[str] = []
    args: list[Any] = []
    equals(params, FINDING_FILTERS, where, args)
    time_range(params, "t.detected_at", where, args)
    limit, offset = page(params)
    sql = f"""SELECT t.* EXCLUDE (row_hash) FROM findings t {where_sql(where)}
              ORDER BY t.detected_at DESC NULLS LAST, t.finding_id"""
    return paged(con, sql, args, limit, offset)
