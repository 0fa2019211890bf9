"""Per-hour and per-day latency histograms of the model calls, kept in step with
`model_calls`.

`latency_histograms` (hours) and `latency_histograms_daily` (days), migration 0006, hold
for every period, deployment version and model how many calls started in it (`metric` 0,
`bucket` 0) and how many TTFT, end-to-end and queue timings (`metric` 1, 2, 3) fell into
each log-scale bucket. Latency percentiles over long ranges are estimated from these rows
(warehouse.queries.latency_estimate) instead of sorting every call of the range: days
where whole days are asked for, hours for the rest.

Buckets: a timing of v ms > 0 is in bucket floor(8 * log2(v)), i.e. [2^(b/8), 2^((b+1)/8)),
eight buckets per doubling, each 9.05 % wide; 0 ms (or less) is bucket -32768. Absent
groups are stored as '' (deployment_id, model) and -1 (deployment_version) so that the key
can be a primary key; calls without `started_at` belong to no hour and are not counted.

Kept exact in the same transaction as the calls:
- `before_put` runs inside the store's write, with the rows about to be written (new keys
  and newer versions): it appends them, and the stored rows they replace with sign -1, to
  `latency_pending` (no index: an append costs little next to the write itself); when
  FOLD_AT rows are pending, `fold` counts them into both tables (one upsert for many
  writes) and empties it. Readers add the pending rows to the tables' (`pending_sql`);
- `rebuild` recomputes periods from the calls (retention after deleting calls, the
  benchmark generator after writing straight into the table).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import duckdb
import polars as pl

TABLE = "latency_histograms"
LEVELS = {"hour": TABLE, "day": "latency_histograms_daily"}  # date_trunc unit -> table
PENDING = "latency_pending"
FOLD_AT = 50_000
PER_DOUBLING = 8
RELATIVE_ERROR = round(2 ** (1 / PER_DOUBLING) - 1, 4)  # the width of one bucket
ZERO_BUCKET = -32768
METRICS = ("ttft_ms", "e2e_ms", "queue_ms")  # metric codes 1, 2, 3; 0 counts calls
COLUMNS = ("started_at", "deployment_id", "deployment_version", "model", *METRICS)


def bucket_sql(column: str) -> str:
    """The bucket of a timing in SQL (NULL for no timing). Migration 0006 spells out the
    same expression for its backfill."""
    return (f"CASE WHEN {column} > 0 THEN least(greatest(floor(log2({column}) * {PER_DOUBLING}), -32000), 32000)"
            f"::SMALLINT WHEN {column} IS NOT NULL THEN CAST({ZERO_BUCKET} AS SMALLINT) END")


def bucket_bounds(bucket: int) -> tuple[float, float]:
    """[lower, upper) of a bucket in ms."""
    if bucket == ZERO_BUCKET:
        return 0.0, 0.0
    return 2 ** (bucket / PER_DOUBLING), 2 ** ((bucket + 1) / PER_DOUBLING)


def histogram_sql(source: str, sign: str = "1", unit: str = "hour") -> str:
    """Rows (period, deployment_id, deployment_version, model, metric, bucket, n) of the
    calls in `source` (a relation with the columns of COLUMNS), per `unit` (hour, day),
    each call counted `sign` times."""
    units = ", ".join(["{'metric': 0, 'bucket': 0::SMALLINT}"]
                      + [f"{{'metric': {i}, 'bucket': {bucket_sql(m)}}}" for i, m in enumerate(METRICS, 1)])
    return f"""
        SELECT period, deployment_id, deployment_version, model, u.metric::TINYINT AS metric,
               u.bucket AS bucket, sum(sign)::BIGINT AS n
        FROM (SELECT date_trunc('{unit}', started_at) AS period, coalesce(deployment_id, '') AS deployment_id,
                     coalesce(deployment_version, -1) AS deployment_version, coalesce(model, '') AS model,
                     {sign} AS sign, unnest([{units}]) AS u
              FROM {source} WHERE started_at IS NOT NULL)
        WHERE u.bucket IS NOT NULL
        GROUP BY ALL"""


def _add(con: duckdb.DuckDBPyConnection, table: str, rows_sql: str, args: list[Any] | None = None,
         merge: bool = True) -> None:
    """Add the counts of `rows_sql` (merge=False: into periods that hold no rows yet)."""
    conflict = f"ON CONFLICT DO UPDATE SET n = {table}.n + excluded.n" if merge else ""
    con.execute(f"INSERT INTO {table} {rows_sql} HAVING sum(sign) <> 0 {conflict}", args or [])


def before_put(con: duckdb.DuckDBPyConnection, table: Any, fresh: pl.DataFrame,
               new: pl.Series | None, within: tuple[str, list[Any]] = ("TRUE", [])) -> None:
    """Inside the write transaction, before `fresh` (rows of `table` that are new keys or
    newer versions; `new` marks the new keys, None: all are) is written: count them in,
    and count out the stored rows they replace (`within`: a condition on the calls `t`,
    with its parameters, that holds for every row replaced: it spares reading the
    others). Other tables are ignored."""
    if table.name != "model_calls" or fresh.height == 0:
        return
    parts = [fresh.select(*COLUMNS).with_columns(pl.lit(1, pl.Int64).alias("sign"))]
    replaced = [] if new is None else fresh.filter(~new)["call_id"].to_list()
    if replaced:
        parts.append(_stored(con, replaced, within).with_columns(pl.lit(-1, pl.Int64).alias("sign")))
    delta = pl.concat(parts, how="vertical_relaxed")
    con.register("latency_delta", delta.to_arrow())
    try:
        con.execute(f"INSERT INTO {PENDING} SELECT {', '.join(COLUMNS)}, sign FROM latency_delta "
                    "WHERE started_at IS NOT NULL")
    finally:
        con.unregister("latency_delta")
    if con.execute(f"SELECT count(*) FROM {PENDING}").fetchall()[0][0] >= FOLD_AT:
        fold(con)


def fold(con: duckdb.DuckDBPyConnection) -> None:
    """Count the pending rows into the hourly and daily tables and empty `latency_pending`
    (inside the caller's transaction)."""
    for unit, name in LEVELS.items():
        _add(con, name, histogram_sql(PENDING, "sign", unit))
    con.execute(f"DELETE FROM {PENDING}")


def pending_sql(unit: str, where: str) -> str:
    """Histogram rows per `unit` of the pending rows `where` selects (on started_at)."""
    return histogram_sql(f"(SELECT * FROM {PENDING} {where})", "sign", unit)


def _stored(con: duckdb.DuckDBPyConnection, call_ids: list[str], within: tuple[str, list[Any]]) -> pl.DataFrame:
    condition, params = within
    con.register("latency_keys", pl.DataFrame({"call_id": call_ids}).to_arrow())
    try:
        return con.sql(f"SELECT {', '.join('t.' + c for c in COLUMNS)} FROM model_calls t "
                       f"SEMI JOIN latency_keys k ON t.call_id = k.call_id WHERE {condition}",
                       params=params).pl()
    finally:
        con.unregister("latency_keys")


def rebuild(con: duckdb.DuckDBPyConnection, before: dt.datetime | None = None) -> None:
    """Recompute the periods that start before `before` (all of them without it) from the
    calls, inside the caller's transaction."""
    fold(con)
    for unit, name in LEVELS.items():
        if before is None:
            con.execute(f"DELETE FROM {name}")
            _add(con, name, histogram_sql("model_calls", unit=unit), merge=False)
            continue
        end = con.execute(f"SELECT date_trunc('{unit}', ?::TIMESTAMP) + INTERVAL 1 {unit}",
                          [before]).fetchall()[0][0]
        con.execute(f"DELETE FROM {name} WHERE period < ?", [end])
        _add(con, name, histogram_sql("(SELECT * FROM model_calls WHERE started_at < ?)", unit=unit),
             [end], merge=False)
