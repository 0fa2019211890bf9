"""Retention: each data class kept for its configured time, legal holds respected, every
purge recorded in the ledger.

One run is one transaction and one `purge` ledger entry: the rows it deleted (ledger
lines without a hash), the rows whose content it nulled (their new hashes), and one
`retention_purges` row per step that found anything (what, how many, how many a hold
kept, under which policy). So after a run the chain still verifies, and the run itself is
evidence. Steps, in order (later steps see what earlier ones left):

  content   model_calls.prompt_text/response_text, tool_actions.arguments -> NULL
  metadata  tool_actions, model_calls, findings, trace_spans deleted; deployment versions deleted when
            superseded and no remaining call ran on them
  samples   older than `samples`: all but the last sample per series and hour deleted
            (cumulative counters and histograms stay exact at hourly resolution);
            older than `samples_rollup`: deleted
  access_log deleted
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import duckdb
import polars as pl

from nimtrail.config import RetentionConfig
from nimtrail.ops import StageMetrics
from warehouse import latency_rollup
from warehouse.access import Principal
from warehouse.events import RetentionApplied
from warehouse.holds import held_sql
from warehouse.ledger import now
from warehouse.store import Store
from warehouse.tables import EXPIRY_COLUMNS, Table, iso, ledger_items

log = logging.getLogger(__name__)

CONTENT_COLUMNS = {"model_calls": ("prompt_text", "response_text"), "tool_actions": ("arguments",)}
_LAST_PER_SERIES_HOUR = """t.sample_id NOT IN (
    SELECT arg_max(sample_id, ts) FROM metric_samples
    GROUP BY deployment_id, metric, CAST(labels AS VARCHAR), date_trunc('hour', ts))"""
_SUPERSEDED_UNUSED = """t.version < (SELECT max(x.version) FROM deployments x WHERE x.deployment_id = t.deployment_id)
    AND NOT EXISTS (SELECT 1 FROM model_calls c WHERE c.deployment_id = t.deployment_id
                    AND c.deployment_version = t.version)"""


@dataclass(frozen=True)
class Step:
    policy: str  # the data class, and the RetentionConfig field that says how long
    table: str
    action: str  # delete | null_content | rollup
    extra: str = "TRUE"  # more SQL conditions on `t` (constants only)
    keep_field: str = ""

    @property
    def keep(self) -> str:
        return self.keep_field or self.policy


STEPS = (
    Step("content", "model_calls", "null_content", "(t.prompt_text IS NOT NULL OR t.response_text IS NOT NULL)"),
    Step("content", "tool_actions", "null_content", "t.arguments IS NOT NULL"),
    Step("metadata", "tool_actions", "delete"),
    Step("metadata", "model_calls", "delete"),
    Step("metadata", "findings", "delete"),
    Step("metadata", "trace_spans", "delete"),
    Step("metadata", "deployments", "delete", _SUPERSEDED_UNUSED),
    Step("samples", "metric_samples", "rollup", _LAST_PER_SERIES_HOUR),
    Step("samples", "metric_samples", "delete", keep_field="samples_rollup"),
    Step("access_log", "access_log", "delete"),
)


def policies(config: RetentionConfig) -> dict[str, float]:
    """Days each class is kept (0: forever)."""
    return {name: round(float(getattr(config, name)) / 86400, 4)
            for name in ("metadata", "content", "samples", "samples_rollup", "access_log")}


def apply(store: Store, config: RetentionConfig, principal: Principal, *, dry_run: bool = False,
          metrics: StageMetrics | None = None, at: dt.datetime | None = None,
          sharded: bool = False) -> dict[str, Any]:
    """Run every step; with dry_run only count what would go (and what holds keep).
    `sharded`: this store is one shard of several (holds.held_sql)."""
    at = at or now()
    run_id = f"ret-{uuid.uuid4().hex[:12]}"
    results: list[dict[str, Any]] = []
    with store.transaction() as con:
        items: list[pl.DataFrame] = []
        purge_rows: list[dict[str, Any]] = []
        for step in STEPS:
            keep = float(getattr(config, step.keep))
            if keep <= 0:
                continue
            cutoff = at - dt.timedelta(seconds=keep)
            table = store.by_name[step.table]
            expired = f"{EXPIRY_COLUMNS[step.table]} < ? AND {step.extra}"
            held = held_sql(step.table, sharded)
            gone, kept = con.execute(
                f"SELECT count(*) FILTER (WHERE NOT {held}), count(*) FILTER (WHERE {held}) "
                f"FROM {step.table} t WHERE {expired}", [cutoff]).fetchall()[0]
            result = {"policy": step.policy, "keep_days": round(keep / 86400, 4),
                      "table": step.table, "action": step.action, "cutoff": iso(cutoff),
                      "rows": gone, "held_rows": kept}
            results.append(result)
            if dry_run or not (gone or kept):
                continue
            if gone:
                items.append(_purge(con, table, step, f"{expired} AND NOT {held}", cutoff))
                if step.table == "model_calls":  # their hours' latency histograms follow
                    latency_rollup.rebuild(con, before=cutoff)
            purge_rows.append({"purge_id": f"{run_id}-{len(purge_rows) + 1}", "run_id": run_id,
                               "purged_at": iso(at), "principal": principal.name,
                               "policy": step.keep, "keep_days": result["keep_days"],
                               "tbl": step.table, "action": step.action, "cutoff": iso(cutoff),
                               "rows": gone, "held_rows": kept, "version": 1})
        if purge_rows:
            items.append(store.record(con, "retention_purges", purge_rows))
            store.ledger.append(con, "purge", {"run_id": run_id, "policies": policies(config)},
                                pl.concat(items))
    if not dry_run and any(r["rows"] for r in results):
        store.forget_key_indexes()  # they hold keys of rows that are gone
    if metrics is not None and not dry_run:
        for r in results:
            if r["rows"] or r["held_rows"]:
                RetentionApplied(policy=r["policy"], table=r["table"], action=r["action"],
                                 rows=r["rows"], held=r["held_rows"]).emit(metrics, log, r["rows"])
    return {"run_id": run_id, "dry_run": dry_run, "at": iso(at), "policies": policies(config),
            "steps": results, "rows": sum(r["rows"] for r in results),
            "held_rows": sum(r["held_rows"] for r in results)}


def _purge(con: duckdb.DuckDBPyConnection, table: Table, step: Step, condition: str,
           cutoff: dt.datetime) -> pl.DataFrame:
    """Delete or null the rows `condition` selects; returns their ledger lines."""
    key_cols = ", ".join(f't."{k}"' for k in table.key)
    victims = con.sql(f"SELECT {key_cols}, t.version FROM {table.name} t WHERE {condition}",
                      params=[cutoff]).pl()
    join = " AND ".join(f't."{k}" = v."{k}"' for k in table.key)
    con.register("victims", victims.to_arrow())
    try:
        if step.action in ("delete", "rollup"):
            con.execute(f"DELETE FROM {table.name} t USING victims v WHERE {join}")
            return ledger_items(table, victims, [None] * victims.height)
        nulls = ", ".join(f"{c} = NULL" for c in CONTENT_COLUMNS[table.name])
        con.execute(f"UPDATE {table.name} t SET {nulls} FROM victims v WHERE {join}")
        changed = con.sql(f"SELECT t.* EXCLUDE (row_hash) FROM {table.name} t "
                          f"SEMI JOIN victims v ON {join}").pl()
    finally:
        con.unregister("victims")
    hashes = table.row_hashes(changed)
    con.register("rehashed", changed.select(table.key).with_columns(
        pl.Series("row_hash", hashes, dtype=pl.Utf8)).to_arrow())
    try:
        con.execute(f"UPDATE {table.name} t SET row_hash = v.row_hash FROM rehashed v WHERE {join}")
    finally:
        con.unregister("rehashed")
    return ledger_items(table, changed, hashes)
