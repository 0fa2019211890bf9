"""`gpu-metrics`: what the GPUs were doing, over time, grouped the way `latency` groups
calls (GPU type + profile, deployment version, model), so that a latency line can be read
against the load behind it on the same time axis.

From the scraped samples in metric_samples, each with the deployment version in force when
it was taken:
  gpu_util_pct         DCGM_FI_DEV_GPU_UTIL, mean over the group's GPUs and scrapes (0-100)
  gpu_memory_used_mib  DCGM_FI_DEV_FB_USED, mean per GPU (MiB)
  kv_cache_usage_pct   the NIM's KV-cache usage (0-1 as exposed, given as 0-100): NIM 1.x
                       `gpu_cache_usage_perc`, vLLM `vllm:kv_cache_usage_perc` (older
                       `vllm:gpu_cache_usage_perc`), SGLang `sglang:token_usage`
A group or bucket without samples of one metric has null for it.
"""

from __future__ import annotations

from typing import Any

import duckdb

from warehouse.params import Params
from warehouse.queries.common import equals, rows, time_range, where_sql
from warehouse.queries.latency import BUCKETS, FILTERS, GROUPS, SAMPLES_AS_OF

GPU_UTIL = ("DCGM_FI_DEV_GPU_UTIL",)
GPU_MEMORY = ("DCGM_FI_DEV_FB_USED",)
KV_CACHE = ("gpu_cache_usage_perc", "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",
            "sglang:token_usage")
# column -> (the metric names it is read from, the factor to its unit)
SERIES = {"gpu_util_pct": (GPU_UTIL, 1.0), "gpu_memory_used_mib": (GPU_MEMORY, 1.0),
          "kv_cache_usage_pct": (KV_CACHE, 100.0)}
GPU_METRICS_PARAMS = {"by", "bucket", "since", "until", *FILTERS}


def gpu_metrics(con: duckdb.DuckDBPyConnection, params: Params) -> dict[str, Any]:
    by = params.choice("by", tuple(GROUPS), "profile")
    bucket = params.choice("bucket", ("none", *BUCKETS), "1m")
    return {"by": by, "bucket": bucket, "rows": means(sums(con, params))}


def group_columns(params: Params) -> list[str]:
    """The columns a row is grouped by (and ordered by, in this order)."""
    by = params.choice("by", tuple(GROUPS), "profile")
    bucket = params.choice("bucket", ("none", *BUCKETS), "1m")
    return [*GROUPS[by][1], *(["bucket_start"] if BUCKETS.get(bucket) else [])]


def means(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each group's means from its sums and counts (`sums`; or every shard's added up)."""
    for row in found:
        for column, (_, factor) in SERIES.items():
            total, n = row.pop(f"{column}_sum"), row.pop(f"{column}_n")
            row[column] = round(factor * total / n, 3) if n else None
    return found


def sums(con: duckdb.DuckDBPyConnection, params: Params) -> list[dict[str, Any]]:
    """Per group (and time bucket), ordered: each series' sum and count of its values."""
    by = params.choice("by", tuple(GROUPS), "profile")
    bucket = params.choice("bucket", ("none", *BUCKETS), "1m")
    interval = BUCKETS.get(bucket)
    select = [f"{expr} AS {name}" for name, expr in GROUPS[by][1].items()]
    head: list[Any] = []
    if interval:
        select.append("time_bucket(?::INTERVAL, s.ts) AS bucket_start")
        head.append(interval)
    for column, (metrics, _) in SERIES.items():
        within = f"FILTER (WHERE s.metric IN ({', '.join('?' for _ in metrics)}))"
        select.append(f"sum(s.value) {within} AS {column}_sum")
        select.append(f"count(s.value) {within} AS {column}_n")
        head += metrics + metrics
    names = [m for metrics, _ in SERIES.values() for m in metrics]
    where = [f"s.metric IN ({', '.join('?' for _ in names)})", "isfinite(s.value)"]
    args: list[Any] = list(names)
    time_range(params, "s.ts", where, args)
    equals(params, {name: f"{column} = ?" for name, (_, column) in FILTERS.items()}, where, args)
    return rows(con, f"""
        SELECT {", ".join(select)}
        {SAMPLES_AS_OF}
        {where_sql(where)}
        GROUP BY ALL
        ORDER BY {", ".join(str(i) for i in range(1, len(select) - 2 * len(SERIES) + 1))}""", head + args)
