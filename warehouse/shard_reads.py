"""What a warehouse shard answers the query front: parts of named operations, over its own
store, for the front to merge (warehouse/front.py).

These run on behalf of a request the front has already authorized and logs in its own
access log, so a shard checks only that the front asks (the shards' token) and logs
nothing. Each part is the same code the unsharded warehouse runs for that piece of the
operation. All are reads but one: a retention run, which purges by the front's holds.
"""

from __future__ import annotations

import base64
from typing import Any, Callable

import duckdb

from nimtrail.config import Config
from warehouse import archive, holds, report, retention
from warehouse.access import Principal
from warehouse.queries.common import rows
from warehouse.params import Params
from warehouse.queries import actions as actions_q
from warehouse.queries import governance
from warehouse.queries import latency as latency_q
from warehouse.queries.governance import FINDINGS_PARAMS
from warehouse.queries import latency_estimate, traces
from warehouse.queries.latency import LATENCY_PARAMS
from warehouse.queries.actions import FACETS_PARAMS, facets
from warehouse.queries.calls import CALLS_PARAMS, LOOKUPS, actions_of, calls_page, lookup
from warehouse.queries.gpu_metrics import GPU_METRICS_PARAMS
from warehouse.queries.gpu_metrics import sums as gpu_metric_sums
from warehouse.queries.governance import calls_per_version, every_deployment
from warehouse.queries.usage import USAGE_PARAMS
from warehouse.queries.usage import sums as usage_sums
from warehouse.store import Store

FRONT = Principal("warehouse:query-front", "admin")


class ShardReadError(ValueError):
    """The front asked for something no shard answers (a front and shard of different builds)."""


def answer(store: Store, con: duckdb.DuckDBPyConnection, config: Config, name: str,
           args: dict[str, Any]) -> Any:
    read = READS.get(name)
    if read is None:
        raise ShardReadError(f"no shard read {name!r}; known: {', '.join(sorted(READS))}")
    return read(store, con, config, args)


def _verify(store: Store, con: duckdb.DuckDBPyConnection, config: Config, args: dict[str, Any]) -> Any:
    from warehouse import operations  # (operations asks the shards through the front)

    ctx = operations.Context(store, con, FRONT, config)
    return operations.OPERATIONS["query/verify"].run(ctx, Params({}, set()))


def _calls_page(store: Store, con: duckdb.DuckDBPyConnection, config: Config, args: dict[str, Any]) -> Any:
    found, more = calls_page(con, Params(args["params"], CALLS_PARAMS), int(args["limit"]),
                             int(args["offset"]))
    return {"rows": found, "more": more}


def _lookup(store: Store, con: duckdb.DuckDBPyConnection, config: Config, args: dict[str, Any]) -> Any:
    what, value = args["what"], args["value"]
    if what in LOOKUPS:
        return lookup(con, what, value, store.written_where)
    if what in traces.LOOKUPS:
        return traces.LOOKUPS[what](con, value)
    raise ShardReadError(f"no lookup {what!r}")


def _latency_part(store: Store, con: duckdb.DuckDBPyConnection, config: Config, args: dict[str, Any]) -> Any:
    """A part of `latency` (queries/latency.py, Source) from this shard's store."""
    params = Params(args["params"], LATENCY_PARAMS)
    by = params.choice("by", tuple(latency_q.GROUPS), "profile")
    bucket = params.choice("bucket", ("none", *latency_q.BUCKETS), "none")
    interval = latency_q.BUCKETS.get(bucket)
    part = args["part"]
    if part == "calls-in-range":
        return latency_estimate.calls_in_range(con, params)
    if part == "histogram-counts":
        return latency_estimate.counts(con, params, *latency_q.histogram_groups(by), bucket, interval)
    if part == "calls-values":
        return latency_q.per_call(con, params, by, interval, values=True)
    if part == "samples":
        return latency_q.Store(con, params).samples(by, interval)
    raise ShardReadError(f"no latency part {part!r}")


def take_front_holds(store: Store, config: Config) -> None:
    """A shard other than 0 takes the front's legal holds before anything that counts or
    purges by them (raises front.ShardUnavailable when the front does not answer: then
    nothing is purged)."""
    if config.warehouse.shard:
        from warehouse import front

        holds.sync(store, front.ask_front(config, "holds", {}))


def _retention_apply(store: Store, con: duckdb.DuckDBPyConnection, config: Config, args: dict[str, Any]) -> Any:
    take_front_holds(store, config)
    name, role = args["principal"]
    return retention.apply(store, config.warehouse.retention, Principal(name, role),
                           dry_run=bool(args["dry_run"]), sharded=True)


def _retention_report(store: Store, con: duckdb.DuckDBPyConnection, config: Config, args: dict[str, Any]) -> Any:
    take_front_holds(store, config)
    start, end = report.period(Params({"from": [args["from"]], "to": [args["to"]]}, {"from", "to"}))
    return report.build(con, config.warehouse.retention, start, end, sharded=True)


def _archive_partition(store: Store, con: duckdb.DuckDBPyConnection, config: Config, args: dict[str, Any]) -> Any:
    params = Params({"table": [args["table"]], "day": [args["day"]]}, {"table", "day"})
    data, _ = archive.partition(con, archive.table_of(params), archive.day_of(params))
    return base64.b64encode(data).decode()


def _alert_findings(store: Store, con: duckdb.DuckDBPyConnection, config: Config, args: dict[str, Any]) -> Any:
    from warehouse import alerts  # (the alerts ask the shards through the front)

    after = args.get("after")  # absent: where a new cursor starts
    return alerts.findings_since(store, con, None if after is None else int(after), int(args["min_rank"]))


READS: dict[str, Callable[[Store, duckdb.DuckDBPyConnection, Config, dict[str, Any]], Any]] = {
    "verify": _verify,
    "alert-findings": _alert_findings,
    "calls-page": _calls_page,
    "actions-of": lambda store, con, config, args: actions_of(con, list(args["call_ids"]),
                                                               store.written_where),
    "lookup": _lookup,
    "facets": lambda store, con, config, args: facets(con, Params(args["params"], FACETS_PARAMS)),
    "deployments": lambda store, con, config, args: every_deployment(con),
    "calls-per-version": lambda store, con, config, args: calls_per_version(con),
    "latency-part": _latency_part,
    "holds": lambda store, con, config, args: rows(con, "SELECT * FROM legal_holds ORDER BY hold_id", []),
    "retention-apply": _retention_apply,
    "retention-report": _retention_report,
    "archive-partition": _archive_partition,
    "finding-flags": lambda store, con, config, args: actions_q.flags(con),
    "matching-calls": lambda store, con, config, args: actions_q.matching_calls(
        con, Params(args["params"], actions_q.ACTIONS_PARAMS)),
    "call-columns": lambda store, con, config, args: actions_q.call_columns(con, list(args["ids"])),
    "actions-part": lambda store, con, config, args: actions_q.actions_part(
        con, Params(args["params"], actions_q.ACTIONS_PARAMS), args["flags"], args.get("calls"), int(args["top"])),
    "finding-subjects": lambda store, con, config, args: governance.unresolved_subjects(
        con, Params(args["params"], FINDINGS_PARAMS)),
    "subject-records": lambda store, con, config, args: governance.subject_records(con, list(args["ids"])),
    "findings-part": lambda store, con, config, args: governance.findings_part(
        con, Params(args["params"], FINDINGS_PARAMS), args["facts"], int(args["top"])),
    "gpu-metric-sums": lambda store, con, config, args: gpu_metric_sums(
        con, Params(args["params"], GPU_METRICS_PARAMS)),
    "usage-sums": lambda store, con, config, args: [_json_safe(r) for r in usage_sums(
        con, Params(args["params"], USAGE_PARAMS))],
}


def _json_safe(row: dict[str, Any]) -> dict[str, Any]:
    """A sum past a 64-bit integer (only nonsense counts reach one) as a float: JSON's
    encoder here takes no larger integer."""
    return {k: float(v) if isinstance(v, int) and not -2**63 <= v < 2**63 else v for k, v in row.items()}
