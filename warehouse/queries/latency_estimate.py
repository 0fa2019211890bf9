"""Latency percentiles of the calls estimated from their hourly histograms
(`latency_histograms`, warehouse/latency_rollup.py), for ranges too large to sort.

The range is exact: whole hours come from the histograms, the partial hours at either end
from the calls themselves (bucketed the same way). Only the values are estimated: within
the log-scale bucket that holds the percentile's rank, by the rank's position in it
(geometrically). The estimate and the exact value (`quantile_cont`) then lie in the same
bucket, i.e. within RELATIVE_ERROR (2^(1/8) - 1, 9.05 %) of each other, unless the two
calls the exact value interpolates between lie in different buckets (a sparse tail).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable

import duckdb

from warehouse.latency_rollup import (LEVELS, METRICS, PER_DOUBLING, RELATIVE_ERROR, ZERO_BUCKET, bucket_bounds,
                                      histogram_sql, pending_sql)
from warehouse.params import BadParameter, Params
from warehouse.queries.common import rows, where_sql
from warehouse.sql import scalar

# `precision=auto` estimates when the range holds more calls than this (sorting a million
# calls takes ~0.2 s on two cores; the histograms answer any range in about that).
EXACT_MAX_CALLS = 1_000_000
HOURLY_BUCKETS = {"none", "1h", "6h", "1d"}
SOURCE = "calls_histogram"
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
QUANTILES = (0.5, 0.9, 0.95, 0.99)

__all__ = ["RELATIVE_ERROR", "calls_in_range", "counts", "estimated", "from_histograms", "merged", "quantile"]


def _floor(t: dt.datetime, unit: dt.timedelta) -> dt.datetime:
    floor = t.replace(minute=0, second=0, microsecond=0)
    return floor.replace(hour=0) if unit == DAY else floor


def _ceil(t: dt.datetime, unit: dt.timedelta) -> dt.datetime:
    floor = _floor(t, unit)
    return floor if floor == t else floor + unit


def estimated(calls_in_range: Callable[[], int], params: Params, precision: str, bucket: str) -> bool:
    """Whether to answer from the histograms: always for `estimate` (hourly or coarser
    buckets only), never for `exact`; for `auto` when the range holds more than
    EXACT_MAX_CALLS calls (`calls_in_range`) and the bucket is hourly or coarser."""
    if precision == "exact":
        return False
    if precision == "estimate":
        if bucket not in HOURLY_BUCKETS:
            raise BadParameter("bucket", "estimates are per hour: use bucket none, 1h, 6h or 1d, "
                                         "or precision=exact")
        return True
    if bucket not in HOURLY_BUCKETS:
        return False
    return calls_in_range() > EXACT_MAX_CALLS


def calls_in_range(con: duckdb.DuckDBPyConnection, params: Params) -> int:
    """The calls the daily histograms count in the days the range touches."""
    since, until = params.time("since"), params.time("until")
    where, args = ["metric = 0"], []
    if since:
        where.append("period >= ?")
        args.append(_floor(since, DAY))
    if until:
        where.append("period < ?")
        args.append(until)
    return int(scalar(con, f"SELECT sum(n) FROM {LEVELS['day']} {where_sql(where)}", args) or 0)


def from_histograms(con: duckdb.DuckDBPyConnection, params: Params, groups: dict[str, str],
                    context: dict[str, str], filters: dict[str, str], bucket: str,
                    interval: str | None) -> list[dict[str, Any]]:
    """Rows shaped like the exact ones (group columns, bucket_start, context, calls, and per
    metric `_n`, `_p50`.., `_source`), from the histograms. `groups`, `context` and
    `filters` are SQL over `c` (calls: deployment_id, deployment_version, model) and `d`
    (the deployment version). The percentiles are computed in SQL: a long range in hourly
    buckets has too many histogram rows to bring into Python."""
    since, until = params.time("since"), params.time("until")
    if since and until and until <= since:
        raise BadParameter("until", "must be after since")
    parts, args = _parts(since, until, daily=interval is None or bucket == "1d")
    where, filter_args = _filters(params, filters)
    keys = list(groups) + (["bucket_start"] if interval else [])
    partition = ", ".join([*keys, "metric"])
    percentiles = ", ".join(_percentile_sql(q) for q in QUANTILES)
    found = rows(con, f"""
        {_counts_sql(parts, groups, context, interval, where)},
        r AS (SELECT *, (sum(n) OVER (PARTITION BY {partition} ORDER BY bucket
                                      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) - n)::BIGINT AS before,
                        (sum(n) OVER (PARTITION BY {partition}))::BIGINT AS total
              FROM g)
        SELECT {", ".join(keys)}, {"".join(f"any_value({n}) AS {n}, " for n in context)}
               metric AS _metric, any_value(total) AS _n, {percentiles}
        FROM r GROUP BY {partition}""", args + ([interval] if interval else []) + filter_args)
    return shaped(found, keys)


def counts(con: duckdb.DuckDBPyConnection, params: Params, groups: dict[str, str],
           context: dict[str, str], filters: dict[str, str], bucket: str,
           interval: str | None) -> list[dict[str, Any]]:
    """What `from_histograms` computes its percentiles from: per group (and time bucket),
    metric and log-scale bucket, the calls counted there. Counts add up: a sharded
    warehouse's front sums every shard's and computes the same percentiles (`merged`)."""
    since, until = params.time("since"), params.time("until")
    if since and until and until <= since:
        raise BadParameter("until", "must be after since")
    parts, args = _parts(since, until, daily=interval is None or bucket == "1d")
    where, filter_args = _filters(params, filters)
    return rows(con, f"{_counts_sql(parts, groups, context, interval, where)} SELECT * FROM g",
                args + ([interval] if interval else []) + filter_args)


def merged(found: list[dict[str, Any]], keys: list[str], context: list[str]) -> list[dict[str, Any]]:
    """`from_histograms`' rows from `counts` rows (several stores' alike, added up)."""
    per: dict[tuple, dict[str, Any]] = {}
    for row in found:
        head = tuple(row[k] for k in keys) + (row["metric"],)
        into = per.setdefault(head, {**{k: row[k] for k in (*keys, *context)}, "_metric": row["metric"],
                                     "_buckets": {}})
        into["_buckets"][row["bucket"]] = into["_buckets"].get(row["bucket"], 0) + row["n"]
    out = []
    for into in per.values():
        buckets = sorted(into.pop("_buckets").items())
        into["_n"] = sum(n for _, n in buckets)
        for q in QUANTILES:
            into[f"p{round(q * 100)}"] = quantile(q, buckets)
        out.append(into)
    return shaped(out, keys)


def _filters(params: Params, filters: dict[str, str]) -> tuple[list[str], list[Any]]:
    where, args = [], []
    for name, column in filters.items():
        value = params.text(name)
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    return where, args


def _counts_sql(parts: list[str], groups: dict[str, str], context: dict[str, str], interval: str | None,
                where: list[str]) -> str:
    """The CTEs up to `g`: per group, bucket_start, context, metric and log-scale bucket, n."""
    select = [f"{expr} AS {name}" for name, expr in groups.items()]
    select += ["c.bucket_start"] if interval else []
    select += [f"{expr} AS {name}" for name, expr in context.items()]
    return f"""
        WITH h AS ({" UNION ALL BY NAME ".join(parts)}),
        c AS (SELECT nullif(deployment_id, '') AS deployment_id,
                     nullif(deployment_version, -1) AS deployment_version,
                     nullif(model, '') AS model,
                     {"time_bucket(?::INTERVAL, period) AS bucket_start," if interval else ""}
                     metric, bucket, sum(n)::BIGINT AS n
              FROM h GROUP BY ALL),
        g AS (SELECT {", ".join(select)}, c.metric AS metric, c.bucket AS bucket, sum(c.n)::BIGINT AS n
              FROM c
              LEFT JOIN deployments d ON d.deployment_id = c.deployment_id
                                     AND d.version = c.deployment_version
              {where_sql(where)}
              GROUP BY ALL
              HAVING sum(c.n) > 0)"""


def shaped(found: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Rows per (group, metric) with `_metric`, `_n` and p50.. as rows per group, shaped
    like the exact ones."""
    by_key: dict[tuple, dict[str, Any]] = {}
    for row in found:
        metric, n = row.pop("_metric"), int(row.pop("_n"))
        values = {f"p{round(q * 100)}": row.pop(f"p{round(q * 100)}") for q in QUANTILES}
        key = tuple(row[k] for k in keys)
        out = by_key.get(key)
        if out is None:
            out = by_key[key] = {**row, "calls": 0}
            for name in METRICS:
                out.update({f"{name}_n": 0, **{f"{name}_p{round(q * 100)}": None for q in QUANTILES},
                            f"{name}_source": None})
        if metric == 0:
            out["calls"] = n
            continue
        name = METRICS[metric - 1]
        out[f"{name}_n"] = n
        for label, value in values.items():
            out[f"{name}_{label}"] = None if value is None else round(value, 3)
        out[f"{name}_source"] = SOURCE
    return [row for row in by_key.values() if row["calls"] > 0]


def _percentile_sql(q: float) -> str:
    """The q-quantile over rows (bucket, n, before = calls in lower buckets, total), as
    `quantile` computes it."""
    rank = f"{q} * (total - 1)"
    return (f"max(CASE WHEN before <= {rank} AND {rank} < before + n THEN "
            f"CASE WHEN bucket = {ZERO_BUCKET} THEN 0.0 "
            f"ELSE pow(2, (bucket + ({rank} - before + 0.5) / n) / {PER_DOUBLING}) END END) AS p{round(q * 100)}")


def _parts(since: dt.datetime | None, until: dt.datetime | None,
           daily: bool) -> tuple[list[str], list[Any]]:
    """Relations of histogram rows that together cover exactly [since, until): the calls of
    the partial hours at either end, whole days from the daily table (when `daily`), the
    remaining whole hours from the hourly one."""
    parts: list[str] = []
    args: list[Any] = []

    def calls(start: dt.datetime, end: dt.datetime) -> None:
        parts.append(histogram_sql("(SELECT * FROM model_calls WHERE started_at >= ? AND started_at < ?)"))
        args.extend([start, end])

    def stored(unit: str, start: dt.datetime | None, end: dt.datetime | None) -> None:
        """The table's rows, and the pending rows not yet counted into it."""
        bounds = [t for t in (start, end) if t]
        for column, source in (("period", LEVELS[unit]), ("started_at", None)):
            where = where_sql([*([f"{column} >= ?"] if start else []), *([f"{column} < ?"] if end else [])])
            parts.append(pending_sql(unit, where) if source is None else
                         f"SELECT period, deployment_id, deployment_version, model, metric, bucket, n "
                         f"FROM {source} {where}")
            args.extend(bounds)

    hour_lo = _ceil(since, HOUR) if since else None
    hour_hi = _floor(until, HOUR) if until else None
    if hour_lo and hour_hi and hour_lo >= hour_hi:
        calls(since, until)
        return parts, args
    if since and since < hour_lo:
        calls(since, hour_lo)
    if until and hour_hi < until:
        calls(hour_hi, until)
    if daily:
        day_lo = _ceil(hour_lo, DAY) if hour_lo else None
        day_hi = _floor(hour_hi, DAY) if hour_hi else None
        if not (day_lo and day_hi and day_lo >= day_hi):
            stored("day", day_lo, day_hi)
            if hour_lo and hour_lo < day_lo:
                stored("hour", hour_lo, day_lo)
            if hour_hi and day_hi < hour_hi:
                stored("hour", day_hi, hour_hi)
            return parts, args
    stored("hour", hour_lo, hour_hi)
    return parts, args


def quantile(q: float, buckets: list[tuple[int, int]]) -> float | None:
    """The estimate the SQL above computes, for one histogram (counts per bucket, sorted):
    the rank quantile_cont uses, q * (n - 1), placed geometrically within the bucket that
    holds it."""
    total = sum(n for _, n in buckets)
    if total <= 0:
        return None
    rank = q * (total - 1)
    seen = 0
    for bucket, n in buckets:
        if rank < seen + n:
            if bucket == ZERO_BUCKET:
                return 0.0
            low, high = bucket_bounds(bucket)
            return low * (high / low) ** ((rank - seen + 0.5) / n)
        seen += n
    return bucket_bounds(buckets[-1][0])[1]
