"""Every named operation the warehouse offers, who may run it, and how a run is logged.

The query API (HTTP) and the CLI working on a stopped warehouse's file both go through
`execute`, so roles, content masking, parameter checks and the access log are the same
either way. Nothing here accepts SQL: each operation is code with bound parameters.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import duckdb

from nimtrail.config import Config
from nimtrail.ops import StageMetrics
from warehouse import archive, digests, front, holds, published, report, retention
from warehouse.access import (ANY_ROLE, COMPLIANCE_ROLES, Principal, Refused, authorize,
                              log_access, mask_content)
from warehouse.params import BadParameter, Params
from warehouse.queries.actions import ACTIONS_PARAMS, FACETS_PARAMS, actions, facets
from warehouse.queries.calls import CALLS_PARAMS, TRACE_BACK_PARAMS, calls, trace_back
from warehouse.queries.common import PAGE_PARAMS, equals, page, paged, time_range, where_sql
from warehouse.queries.gpu_metrics import GPU_METRICS_PARAMS, gpu_metrics
from warehouse.queries.governance import DEPLOYMENTS_PARAMS, FINDINGS_PARAMS, deployments, findings
from warehouse.queries.latency import LATENCY_PARAMS, latency
from warehouse.queries.latency_changes import LATENCY_CHANGES_PARAMS, latency_changes
from warehouse.queries.usage import USAGE_PARAMS, usage
from warehouse.queries.traces import SESSION_PARAMS, TRACE_PARAMS, session, trace
from warehouse.rollback import Freshness
from warehouse.store import Store
from warehouse.tables import iso
from warehouse.verify import verify


@dataclass
class Context:
    """What an operation runs against: the store (None when the file is opened
    read-only), a reading connection, who asks, and the configuration."""
    store: Store | None
    con: duckdb.DuckDBPyConnection
    principal: Principal
    config: Config
    client: str = "local"
    metrics: StageMetrics | None = None
    public_key: Path | None = None
    shards: front.Shards | None = None  # a sharded warehouse's front: answer over every shard


@dataclass(frozen=True)
class Export:
    data: bytes
    content_type: str
    filename: str
    rows: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    kind: str  # query | action | export
    name: str
    params: frozenset[str]
    roles: frozenset[str]
    run: Callable[[Context, Params], Any]
    # How a sharded warehouse's front answers it (warehouse/front.py): None, not yet (501);
    # OWN_RUN, by its own run (what only the front writes, or a run that asks the shards).
    over_shards: Callable[[Context, Params], Any] | None = None

    @property
    def path(self) -> str:
        return f"{self.kind}/{self.name}"


class UnknownOperation(Exception):
    pass


def row_count(result: Any) -> int:
    if isinstance(result, Export):
        return result.rows
    if "rows" in result and isinstance(result["rows"], list):
        return len(result["rows"])
    if "actions" in result:  # trace-back
        return len(result["actions"]) + (1 if result.get("call") else 0)
    return 1


# ---- the operations ------------------------------------------------------------------


def _verify(ctx: Context, params: Params) -> dict[str, Any]:
    directory = digests.digests_dir(ctx.config.data_path)
    # The same checks online and offline; only the age of the newest digest counts
    # differently, as a stopped warehouse signs nothing (warehouse.rollback).
    freshness = Freshness(ctx.config.warehouse.checkpoint_interval, ctx.store is not None,
                          dt.datetime.now(dt.timezone.utc))
    topic = published.gather_topic(ctx.config)  # before the snapshot: see gather_topic
    public_key = ctx.public_key or (digests.keys_dir(ctx.config.data_path, ctx.config.warehouse.keys_dir)
                                    / digests.PUBLIC_KEY)
    if ctx.store is None:
        return verify(ctx.con, ctx.config.data_path, public_key,
                      published=published.with_copy(topic, ctx.config), freshness=freshness)
    with ctx.store.snapshot(lambda: (digests.load_all(directory),
                                     published.with_copy(topic, ctx.config))) as (con, (files, seen)):
        return verify(con, ctx.config.data_path, public_key, files, seen, freshness)


def _report_doc(ctx: Context, params: Params) -> dict[str, Any]:
    start, end = report.period(params)
    if ctx.shards is not None:
        return front.retention_report(ctx.shards, (iso(start), iso(end)))
    if ctx.store is None:
        return report.build(ctx.con, ctx.config.warehouse.retention, start, end)
    with ctx.store.snapshot() as (con, _):
        return report.build(con, ctx.config.warehouse.retention, start, end)


def _report_export(ctx: Context, params: Params) -> Export:
    fmt = params.choice("format", tuple(report.FORMATS), "json")
    doc = _report_doc(ctx, params)
    data, count = report.encode(doc, fmt)
    meta = report.record_export(_writable(ctx), ctx.principal, "retention-report", fmt,
                                {"from": doc["from"], "to": doc["to"]}, data, count)
    return Export(data, report.FORMATS[fmt], f"retention-{doc['from'][:10]}-{doc['to'][:10]}.{fmt}",
                  count, meta)


def _archive_export(ctx: Context, params: Params) -> Export:
    day, table = archive.day_of(params), archive.table_of(params)
    data, count = (front.archive_partition(ctx.shards, table, day.strftime("%Y-%m-%d")) if ctx.shards
                   else archive.partition(ctx.con, table, day))
    label = day.strftime("%Y-%m-%d")
    meta = report.record_export(_writable(ctx), ctx.principal, "archive", "parquet",
                                {"day": label, "table": table}, data, count)
    return Export(data, report.FORMATS["parquet"], f"{table}/day={label}/part-0.parquet", count, meta)


def _access_log(ctx: Context, params: Params) -> dict[str, Any]:
    where: list[str] = []
    args: list[Any] = []
    equals(params, {"principal": "t.principal = ?", "person": "t.person = ?",
                    "operation": "t.operation = ?", "role": "t.role = ?"}, where, args)
    status = params.integer("status", 0, 0, 599)
    if status:
        where.append("t.status = ?")
        args.append(status)
    time_range(params, "t.accessed_at", where, args)
    limit, offset = page(params)
    return paged(ctx.con, f"SELECT t.* EXCLUDE (row_hash) FROM access_log t {where_sql(where)} "
                          "ORDER BY t.accessed_at DESC, t.access_id", args, limit, offset)


def _retention_apply(ctx: Context, params: Params) -> dict[str, Any]:
    dry_run = params.boolean("dry_run", False)
    if ctx.shards is not None:
        return front.retention_apply(ctx.shards, dry_run, ctx.principal)
    return retention.apply(_writable(ctx), ctx.config.warehouse.retention, ctx.principal,
                           dry_run=dry_run, metrics=ctx.metrics)


def _writable(ctx: Context) -> Store:
    if ctx.store is None:
        raise RuntimeError("this operation needs the store opened for writing")
    return ctx.store


def _q(fn: Callable[[duckdb.DuckDBPyConnection, Params], dict[str, Any]]) -> Callable[[Context, Params], Any]:
    return lambda ctx, params: fn(ctx.con, params)


def OWN_RUN(ctx: Context, params: Params) -> Any:  # noqa: N802 - a marker, see Operation
    raise AssertionError("replaced by the operation's own run")


_ALL = (
    Operation("query", "calls", frozenset(CALLS_PARAMS), ANY_ROLE,
              lambda ctx, params: calls(ctx.con, params, ctx.store.written_where if ctx.store else None),
              lambda ctx, params: front.calls(ctx.shards, dict(params.raw), params)),
    Operation("query", "trace-back", frozenset(TRACE_BACK_PARAMS), ANY_ROLE,
              lambda ctx, params: trace_back(ctx.con, params, ctx.store.written_where if ctx.store else None),
              lambda ctx, params: front.trace_back(ctx.shards, params)),
    Operation("query", "actions", frozenset(ACTIONS_PARAMS), ANY_ROLE, _q(actions),
              lambda ctx, params: front.actions(ctx.shards, dict(params.raw), params)),
    Operation("query", "trace", frozenset(TRACE_PARAMS), ANY_ROLE, _q(trace),
              lambda ctx, params: front.trace(ctx.shards, params)),
    Operation("query", "session", frozenset(SESSION_PARAMS), ANY_ROLE, _q(session),
              lambda ctx, params: front.session(ctx.shards, params)),
    Operation("query", "facets", frozenset(FACETS_PARAMS), ANY_ROLE, _q(facets),
              lambda ctx, params: front.facets(ctx.shards, dict(params.raw))),
    Operation("query", "latency", frozenset(LATENCY_PARAMS), ANY_ROLE, _q(latency),
              lambda ctx, params: front.latency(ctx.shards, dict(params.raw), params)),
    Operation("query", "latency-changes", frozenset(LATENCY_CHANGES_PARAMS), ANY_ROLE, _q(latency_changes),
              lambda ctx, params: front.latency_changes(ctx.shards, ctx.con, params)),
    Operation("query", "gpu-metrics", frozenset(GPU_METRICS_PARAMS), ANY_ROLE, _q(gpu_metrics),
              lambda ctx, params: front.gpu_metrics(ctx.shards, dict(params.raw), params)),
    Operation("query", "usage", frozenset(USAGE_PARAMS), ANY_ROLE, _q(usage),
              lambda ctx, params: front.usage(ctx.shards, dict(params.raw), params)),
    Operation("query", "deployments", frozenset(DEPLOYMENTS_PARAMS), ANY_ROLE, _q(deployments),
              lambda ctx, params: front.deployments(ctx.shards, params)),
    Operation("query", "findings", frozenset(FINDINGS_PARAMS), ANY_ROLE, _q(findings),
              lambda ctx, params: front.findings(ctx.shards, dict(params.raw), params)),
    Operation("query", "holds", frozenset({"state"}), COMPLIANCE_ROLES, _q(holds.list_holds), OWN_RUN),
    Operation("query", "retention-report", frozenset({"from", "to"}), COMPLIANCE_ROLES, _report_doc, OWN_RUN),
    Operation("query", "verify", frozenset(), COMPLIANCE_ROLES, _verify,
              lambda ctx, params: front.verify(ctx.shards)),
    Operation("query", "export-lookup", frozenset({"id"}), COMPLIANCE_ROLES, _q(report.lookup), OWN_RUN),
    Operation("query", "access-log", frozenset({"principal", "person", "operation", "role", "status",
                                                "since", "until", *PAGE_PARAMS}), COMPLIANCE_ROLES,
              _access_log, OWN_RUN),
    Operation("action", "retention-apply", frozenset({"dry_run"}), COMPLIANCE_ROLES, _retention_apply, OWN_RUN),
    # Holds are the front's: every other shard takes them before it counts or purges by them.
    Operation("action", "hold-add", frozenset({"deployment_id", "caller", "from", "to", "reason"}),
              COMPLIANCE_ROLES, lambda ctx, p: holds.add(_writable(ctx), ctx.principal, p), OWN_RUN),
    Operation("action", "hold-remove", frozenset({"hold_id", "reason"}), COMPLIANCE_ROLES,
              lambda ctx, p: holds.remove(_writable(ctx), ctx.principal, p), OWN_RUN),
    Operation("export", "retention-report", frozenset({"from", "to", "format"}), COMPLIANCE_ROLES,
              _report_export, OWN_RUN),
    Operation("export", "archive", frozenset({"day", "table"}), COMPLIANCE_ROLES, _archive_export, OWN_RUN),
)
OPERATIONS: dict[str, Operation] = {op.path: op for op in _ALL}


def names(kind: str) -> list[str]:
    return sorted(op.name for op in _ALL if op.kind == kind)


def execute(ctx: Context, kind: str, name: str, raw: Mapping[str, list[str]]) -> Any:
    """Authorize, check parameters, run, mask content for roles without it, and log the
    access (refusals included) before returning. Raises Refused, BadParameter,
    UnknownOperation."""
    op = OPERATIONS.get(f"{kind}/{name}")
    if op is None:
        raise UnknownOperation(f"no {kind} {name!r}; known: {', '.join(names(kind))}")
    logged = {k: (v[0] if len(v) == 1 else v) for k, v in raw.items()}
    try:
        authorize(ctx.principal, op.path, op.roles)
        result = _runner(ctx, op)(ctx, Params(raw, set(op.params)))
    except (front.NotOverShards, front.ShardUnavailable) as e:
        _log(ctx, op.path, logged, 501 if isinstance(e, front.NotOverShards) else 503, None)
        raise
    except Refused as e:
        _log(ctx, op.path, logged, e.status, None)
        raise
    except BadParameter:
        _log(ctx, op.path, logged, 400, None)
        raise
    except Exception:
        with contextlib.suppress(Exception):  # the store itself may be what failed
            _log(ctx, op.path, logged, 500, None)
        raise
    if isinstance(result, dict) and not ctx.principal.sees_content:
        result = {**mask_content(result), "content_hidden": True}
    _log(ctx, op.path, logged, 200, row_count(result))
    return result


def _runner(ctx: Context, op: Operation) -> Callable[[Context, Params], Any]:
    if ctx.shards is None or op.over_shards is OWN_RUN:
        return op.run
    if op.over_shards is None:
        raise front.NotOverShards(
            f"{op.path} is not answered over {len(ctx.shards.names)} warehouse shards yet: only "
            f"{', '.join(names_over_shards())} are (docs/scale.md)")
    return op.over_shards


def names_over_shards() -> list[str]:
    return sorted(op.path for op in _ALL if op.over_shards is not None)


def _log(ctx: Context, operation: str, params: dict[str, Any], status: int, rows: int | None) -> None:
    if ctx.store is not None:
        log_access(ctx.store, ctx.principal, ctx.client, operation, params, status, rows)


def refused(store: Store, principal: Principal, client: str, operation: str,
            raw: Mapping[str, list[str]], status: int) -> None:
    """Log a request refused before any operation ran (see QueryApi.refuse)."""
    log_access(store, principal, client, operation,
               {k: (v[0] if len(v) == 1 else v) for k, v in raw.items()}, status, None)


__all__ = ["BadParameter", "Context", "Export", "OPERATIONS", "Refused", "UnknownOperation",
           "execute", "names", "refused"]
