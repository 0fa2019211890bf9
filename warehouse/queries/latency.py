"""`latency`: TTFT, end-to-end and queue percentiles by GPU profile, deployment version or
model, optionally per time bucket.

Exact percentiles come from the calls themselves (`quantile_cont` over model_calls joined to
the deployment version each call ran on). Where calls lack a timing (only the client's
view reached the warehouse, or NIM tracing is off), the percentile is estimated from the
NIM / vLLM latency histograms in metric_samples, the way Prometheus' histogram_quantile
does: the increase of each cumulative bucket over the window (per series, against the
sample before the window; a counter reset restarts from zero), summed over the group,
then linear interpolation inside the bucket that holds the rank. Each metric's
`<metric>_source` says which one a row used.

Ranges holding more than a million calls (`precision=auto`), or any range with
`precision=estimate`, take the calls' percentiles from their hourly log-scale histograms
instead (queries/latency_estimate.py; `_source` = calls_histogram): the answer says so in
`precision` and states the bound of the estimate's error in `relative_error`.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from typing import Any, Protocol

import duckdb
import orjson

from warehouse.params import BadParameter, Params
from warehouse.queries import latency_estimate
from warehouse.queries.common import _value, rows, time_range, where_sql

QUANTILES = (0.5, 0.9, 0.95, 0.99)
# The most a histogram bucket can count (a 64-bit counter); more is not a count.
MAX_COUNT = float(2**63 - 1)
METRICS = ("ttft_ms", "e2e_ms", "queue_ms")
# Histogram base names (after any `vllm:` / `sglang:` prefix and `_bucket` suffix), in seconds.
HISTOGRAMS = {"time_to_first_token_seconds": "ttft_ms", "e2e_request_latency_seconds": "e2e_ms",
              "request_queue_time_seconds": "queue_ms"}
BUCKETS = {"10s": "10 seconds", "30s": "30 seconds", "1m": "1 minute", "5m": "5 minutes", "15m": "15 minutes", "1h": "1 hour",
           "6h": "6 hours", "1d": "1 day"}
# group -> (its columns read from calls, the same columns read from metric samples)
GROUPS = {
    "profile": ({"gpu_type": "d.gpu_type", "profile_name": "d.profile_name"},
                {"gpu_type": "d.gpu_type", "profile_name": "d.profile_name"}),
    "deployment": ({"deployment_id": "c.deployment_id", "deployment_version": "c.deployment_version"},
                   {"deployment_id": "s.deployment_id", "deployment_version": "d.version"}),
    "model": ({"model": "c.model"}, {"model": "coalesce(d.model_id, s.labels->>'model_name')"}),
}
CONTEXT = {"deployment": {"nim_image": "any_value(d.nim_image)", "profile_name": "any_value(d.profile_name)",
                          "gpu_type": "any_value(d.gpu_type)"}}
FILTERS = {"deployment_id": ("c.deployment_id", "s.deployment_id"),
           "model": ("c.model", "coalesce(d.model_id, s.labels->>'model_name')"),
           "gpu_type": ("d.gpu_type", "d.gpu_type"),
           "profile_name": ("d.profile_name", "d.profile_name")}
# Each metric sample with the deployment version in force when it was taken (`d`).
SAMPLES_AS_OF = ("FROM metric_samples s ASOF LEFT JOIN deployments d "
                 "ON s.deployment_id = d.deployment_id AND s.ts >= d.valid_from")
LATENCY_PARAMS = {"by", "bucket", "since", "until", "source", "precision", *FILTERS}


class Source(Protocol):
    """Where `latency_from` reads its parts: one store (`Store`), or every shard of a
    sharded warehouse, merged (warehouse/front.py)."""

    def calls_in_range(self) -> int: ...

    def from_histograms(self, by: str, bucket: str, interval: str | None) -> list[dict[str, Any]]: ...

    def from_calls(self, by: str, interval: str | None) -> list[dict[str, Any]]: ...

    def samples(self, by: str, interval: str | None) -> list[dict[str, Any]]: ...


class Store:
    def __init__(self, con: duckdb.DuckDBPyConnection, params: Params):
        self.con, self.params = con, params

    def calls_in_range(self) -> int:
        return latency_estimate.calls_in_range(self.con, self.params)

    def from_histograms(self, by: str, bucket: str, interval: str | None) -> list[dict[str, Any]]:
        return latency_estimate.from_histograms(self.con, self.params, *histogram_groups(by), bucket, interval)

    def from_calls(self, by: str, interval: str | None) -> list[dict[str, Any]]:
        return per_call(self.con, self.params, by, interval)

    def samples(self, by: str, interval: str | None) -> list[dict[str, Any]]:
        return histogram_samples(self.con, self.params, GROUPS[by][1], interval)


def histogram_groups(by: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """The groups, context and filters the calls' histograms are read with."""
    return GROUPS[by][0], CONTEXT.get(by, {}), {n: c for n, (c, _) in FILTERS.items()}


def latency(con: duckdb.DuckDBPyConnection, params: Params) -> dict[str, Any]:
    return latency_from(params, Store(con, params))


def latency_from(params: Params, source_of: Source) -> dict[str, Any]:
    by = params.choice("by", tuple(GROUPS), "profile")
    bucket = params.choice("bucket", ("none", *BUCKETS), "none")
    source = params.choice("source", ("auto", "calls", "metrics"), "auto")
    precision = params.choice("precision", ("auto", "exact", "estimate"), "auto")
    interval = BUCKETS.get(bucket)
    call_cols, sample_cols = GROUPS[by]
    keys = list(call_cols) + (["bucket_start"] if interval else [])

    by_key: dict[tuple, dict[str, Any]] = {}
    used = None
    if source != "metrics":
        if latency_estimate.estimated(source_of.calls_in_range, params, precision, bucket):
            used = "estimate"
            found = source_of.from_histograms(by, bucket, interval)
        else:
            used = "exact"
            found = source_of.from_calls(by, interval)
        for row in found:
            by_key[tuple(row[k] for k in keys)] = row
    if source != "calls":
        for key, estimates in increases(source_of.samples(by, interval), params, keys).items():
            row = by_key.get(key)
            if row is None:
                row = by_key[key] = {**dict(zip(keys, key)), "calls": 0, **_empty()}
            for metric, values in estimates.items():
                if not row.get(f"{metric}_n"):
                    row.update(values)
    found = sorted(by_key.values(), key=lambda r: [(r[k] is None, r[k]) for k in keys])
    return {"by": by, "bucket": bucket, "source": source, "precision": used,
            "relative_error": latency_estimate.RELATIVE_ERROR if used == "estimate" else None,
            "rows": found}


def _empty() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric in METRICS:
        out[f"{metric}_n"] = 0
        out.update({f"{metric}_p{round(q * 100)}": None for q in QUANTILES})
        out[f"{metric}_source"] = None
    return out


def per_call(con, params: Params, by: str, interval: str | None,
                values: bool = False) -> list[dict[str, Any]]:
    """Per group: calls and each metric's percentiles (`values`: instead, each metric's
    values, which a sharded warehouse's front gathers from every shard: `with_quantiles`)."""
    where: list[str] = []
    args: list[Any] = []
    time_range(params, "c.started_at", where, args)
    for name, (column, _) in FILTERS.items():
        value = params.text(name)
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    select = [f"{expr} AS {name}" for name, expr in GROUPS[by][0].items()]
    head: list[Any] = []
    if interval:
        select.append("time_bucket(?::INTERVAL, c.started_at) AS bucket_start")
        head.append(interval)
    select += [f"{expr} AS {name}" for name, expr in CONTEXT.get(by, {}).items()]
    select.append("count(*) AS calls")
    for metric in METRICS:
        select.append(f"count(c.{metric}) AS {metric}_n")
        select.append(f"list(c.{metric}) FILTER (WHERE c.{metric} IS NOT NULL) AS {metric}_values" if values else
                      f"quantile_cont(c.{metric}, {list(QUANTILES)}) AS {metric}_q")
    found = rows(con, f"""
        SELECT {", ".join(select)}
        FROM model_calls c
        LEFT JOIN deployments d ON d.deployment_id = c.deployment_id AND d.version = c.deployment_version
        {where_sql(where)}
        GROUP BY ALL""", head + args)
    return found if values else _percentiles(found)


def with_quantiles(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`per_call(values=True)` rows as `per_call` rows: each metric's values'
    quantiles, interpolated as DuckDB's quantile_cont does."""
    for row in found:
        for metric in METRICS:
            values = sorted(v for v in row.pop(f"{metric}_values") or [] if v is not None)
            row[f"{metric}_q"] = [_quantile_cont(values, q) for q in QUANTILES] if values else None
    return _percentiles(found)


def _quantile_cont(ordered: list[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def _percentiles(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in found:
        for metric in METRICS:
            values = row.pop(f"{metric}_q") or [None] * len(QUANTILES)
            for q, v in zip(QUANTILES, values):
                row[f"{metric}_p{round(q * 100)}"] = None if v is None else round(v, 3)
            row[f"{metric}_source"] = "calls" if row[f"{metric}_n"] else None
    return found


def histogram_samples(con, params: Params, sample_cols: dict[str, str], interval: str | None) -> list[dict[str, Any]]:
    """The histogram samples `increases` reads, per series in time order (the sample before
    `since` too: it is the baseline of the first increase)."""
    where = ["s.buckets IS NOT NULL",
             "regexp_replace(regexp_replace(s.metric, '^[A-Za-z_]+:', ''), '_bucket$', '') IN "
             "(" + ", ".join("?" for _ in HISTOGRAMS) + ")"]
    args: list[Any] = list(HISTOGRAMS)
    since, until = params.time("since"), params.time("until")
    if since and until and until <= since:
        raise BadParameter("until", "must be after since")
    if until:  # samples before `since` are read too: they are the baseline of the increase
        where.append("s.ts < ?")
        args.append(until)
    for name, (_, column) in FILTERS.items():
        value = params.text(name)
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    select = [f"{expr} AS {name}" for name, expr in sample_cols.items()]
    head: list[Any] = []
    if interval:
        select.append("time_bucket(?::INTERVAL, s.ts) AS bucket_start")
        head.append(interval)
    cursor = con.execute(f"""
        SELECT {", ".join(select)}, s.deployment_id AS _dep, s.metric AS _metric,
               CAST(s.labels AS VARCHAR) AS _labels, s.ts AS _ts, CAST(s.buckets AS VARCHAR) AS _buckets,
               regexp_replace(regexp_replace(s.metric, '^[A-Za-z_]+:', ''), '_bucket$', '') AS _base
        {SAMPLES_AS_OF}
        {where_sql(where)}
        ORDER BY {", ".join(SERIES_ORDER)}""", head + args)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, raw)) for raw in cursor.fetchall()]


SERIES_ORDER = ("_dep", "_metric", "_labels", "_ts")


def increases(samples: list[dict[str, Any]], params: Params,
              keys: list[str]) -> dict[tuple, dict[str, dict[str, Any]]]:
    """Per group: each histogram's increase over the range, summed over the group's series
    (`samples` per series in time order), and its percentiles."""
    since = params.time("since")
    sums: dict[tuple, dict[str, dict[float, float]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(float)))
    series, previous = None, None
    for row in samples:
        this = (row["_dep"], row["_metric"], row["_labels"])
        if this != series:
            series, previous = this, None
        current = _parse_buckets(row["_buckets"])
        if current is None:
            continue
        increase = current
        if previous is not None and all(current.get(le, 0) >= n for le, n in previous.items()):
            increase = {le: n - previous.get(le, 0) for le, n in current.items()}
        previous = current
        # (DuckDB answers a time beyond year 9999 as text: after any `since`; no time: in no range)
        if since and (row["_ts"] is None or (isinstance(row["_ts"], dt.datetime) and row["_ts"] < since)):
            continue
        key = tuple(_value(k, row[k]) for k in keys)
        target = sums[key][HISTOGRAMS[row["_base"]]]
        for le, n in increase.items():
            target[le] += n
    out: dict[tuple, dict[str, dict[str, Any]]] = {}
    for key, per_metric in sums.items():
        out[key] = {}
        for metric, hist in per_metric.items():
            total = max(hist.values(), default=0)
            if total <= 0:
                continue
            values = {f"{metric}_p{round(q * 100)}": _ms(histogram_quantile(q, hist)) for q in QUANTILES}
            out[key][metric] = {f"{metric}_n": int(round(min(total, MAX_COUNT))), **values,
                                f"{metric}_source": "metrics"}
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _parse_buckets(text: str | None) -> dict[float, float] | None:
    """`[[le, cumulative], ...]` or `{"le": cumulative}`; le may be "+Inf". None when it is
    not a histogram: a NaN bound, or a count that is no count (negative, NaN, infinite,
    beyond a 64-bit counter)."""
    if text is None:
        return None
    try:
        doc = orjson.loads(text)
        pairs = doc.items() if isinstance(doc, dict) else doc
        found = {float(le): float(n) for le, n in pairs}
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return None
    if any(math.isnan(le) or not 0 <= n <= MAX_COUNT for le, n in found.items()):
        return None
    return found


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' estimate: linear interpolation within the bucket holding rank q*total;
    the +Inf bucket answers with the highest finite bound."""
    ordered = sorted(buckets.items())
    if not ordered:
        return None
    total = ordered[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound
