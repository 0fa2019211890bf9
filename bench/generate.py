"""Synthetic audit data written straight into a warehouse DuckDB file (no Kafka, no
ledger), for query benchmarks at 1M-10M model calls.

    python -m bench.generate --calls 1000000 --out /path/audit.duckdb

What it writes (deterministic for a given --seed):
- 24 deployments, each with two versions (an upgrade half-way through the period that
  changes the image and the profile), over 4 GPU types and 6 profiles;
- N model calls over the last 30 days: caller from 500 users, client service from 20,
  log-normal TTFT / end-to-end / queue times, tokens; one call in four asked for a tool
  (tool_call_ids) and has one tool action; one in ten keeps its prompt and response text;
- the tool actions (tool_call_id, call_id, gate, outcome, target) and an `ungated_action`
  finding for every 1000th call (one per 250 actions).
Rows are generated with numpy and polars in chunks of 1M and inserted through Arrow. They
bypass the ledger (no row hashes), so `verify` is not meaningful on this file; it exists
to time queries. The calls' latency histograms (warehouse/latency_rollup.py), which the
store's write keeps, are rebuilt from the calls at the end.

A file that already holds the calls asked for is reused by the benchmarks
(`python -m bench --work DIR` keeps DIR/queries.duckdb between runs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

GPUS = ["H100", "A100", "L40S", "H200"]
PROFILES = ["vllm-bf16-tp1-pp1", "vllm-fp16-tp2", "tensorrt_llm-h100-fp8-tp1-throughput",
            "tensorrt_llm-a100-bf16-tp2-latency", "sglang-fp8-tp4-pp1", "vllm-bf16-tp1-pp1-lora"]
MODELS = ["meta/llama-3.1-8b-instruct", "meta/llama-3.1-70b-instruct", "mistralai/mistral-7b-instruct",
          "nvidia/nemotron-mini-4b"]
DEPLOYMENTS = 24
CHUNK = 1_000_000
PERIOD_DAYS = 30


def deployments(start: dt.datetime) -> pl.DataFrame:
    rows = []
    for d in range(DEPLOYMENTS):
        for version in (1, 2):
            rows.append({
                "deployment_id": f"prod/nim-{d:02d}", "version": version,
                "valid_from": start if version == 1 else start + dt.timedelta(days=PERIOD_DAYS / 2),
                "source": "helm", "nim_image": f"nvcr.io/nim/model-{d % len(MODELS)}:1.{version}.0",
                "model_id": MODELS[d % len(MODELS)], "engine_backend": "vllm",
                "profile_name": PROFILES[(d + version) % len(PROFILES)], "gpu_type": GPUS[d % len(GPUS)],
                "gpu_count": 1 + d % 4, "purpose": "chat" if d % 3 else "summarisation",
                "tool_calling_allowed": d % 3 != 0, "observed_at": start})
    return pl.DataFrame(rows)


def calls(rng: np.random.Generator, first: int, n: int, start: dt.datetime) -> pl.DataFrame:
    idx = np.arange(first, first + n)
    offset_us = rng.integers(0, PERIOD_DAYS * 86400 * 1_000_000, n)
    dep = rng.integers(0, DEPLOYMENTS, n)
    upgraded = offset_us >= PERIOD_DAYS * 86400 * 1_000_000 // 2
    ttft = rng.lognormal(np.log(80), 0.6, n)
    e2e = ttft + rng.lognormal(np.log(900), 0.7, n)
    queue = rng.lognormal(np.log(3), 1.0, n)
    with_tool = idx % 4 == 0
    with_content = idx % 10 == 0
    frame = pl.DataFrame({
        "i": idx, "offset_us": offset_us, "dep": dep, "upgraded": upgraded, "ttft_ms": ttft,
        "e2e_ms": e2e, "queue_ms": queue, "with_tool": with_tool, "with_content": with_content,
        "user": rng.integers(0, 500, n), "service": rng.integers(0, 20, n),
        "input_tokens": rng.integers(20, 4000, n), "output_tokens": rng.integers(1, 1500, n)})
    hexid = pl.col("i").cast(pl.Utf8).str.zfill(12)
    started = pl.lit(start) + pl.duration(microseconds=pl.col("offset_us"))
    return frame.select(
        ("chatcmpl-" + hexid).alias("call_id"),
        ("trace-" + hexid).alias("trace_id"),
        started.alias("started_at"),
        (started + pl.duration(microseconds=(pl.col("e2e_ms") * 1000).cast(pl.Int64))).alias("ended_at"),
        pl.format("prod/nim-{}", pl.col("dep").cast(pl.Utf8).str.zfill(2)).alias("deployment_id"),
        pl.when(pl.col("upgraded")).then(2).otherwise(1).cast(pl.Int32).alias("deployment_version"),
        (pl.col("dep") % len(MODELS)).replace_strict(dict(enumerate(MODELS)), return_dtype=pl.Utf8)
        .alias("model"),
        pl.lit("chat").alias("operation"),
        pl.format("user-{}", pl.col("user")).alias("caller"),
        pl.format("svc-{}", pl.col("service")).alias("client_service"),
        pl.lit("ok").alias("status"), pl.lit(200, pl.Int32).alias("http_status"),
        pl.when(pl.col("with_tool")).then(pl.lit("tool_calls")).otherwise(pl.lit("stop")).alias("finish_reason"),
        "input_tokens", "output_tokens", "ttft_ms", "e2e_ms", "queue_ms",
        pl.when(pl.col("with_tool")).then(pl.concat_list(pl.lit("call_") + hexid))
        .otherwise(pl.lit([], pl.List(pl.Utf8))).alias("tool_call_ids"),
        pl.when(pl.col("with_tool")).then(pl.lit(["delete_record"], pl.List(pl.Utf8)))
        .otherwise(pl.lit([], pl.List(pl.Utf8))).alias("tool_names"),
        pl.when(pl.col("with_content")).then(pl.lit("summarise the incident report")).alias("prompt_text"),
        pl.when(pl.col("with_content")).then(pl.lit("here is the summary")).alias("response_text"),
        pl.lit(["span.client", "span.nim"], pl.List(pl.Utf8)).alias("signals"),
        pl.lit(1, pl.Int32).alias("version"),
        started.alias("observed_at"),
    )


def actions(frame: pl.DataFrame) -> pl.DataFrame:
    tooled = frame.filter(pl.col("tool_call_ids").list.len() > 0)
    return tooled.select(
        pl.col("call_id").str.replace("chatcmpl-", "act-").alias("action_id"),
        pl.col("tool_call_ids").list.first().alias("tool_call_id"),
        "trace_id", (pl.col("ended_at") + pl.duration(milliseconds=50)).alias("started_at"),
        pl.lit("delete_record").alias("tool_name"), pl.lit("function").alias("tool_type"),
        pl.lit("policy").alias("gate"), pl.lit("approved").alias("gate_decision"),
        pl.lit("ok").alias("outcome"), pl.format("db/orders/{}", pl.col("call_id")).alias("target"),
        pl.col("caller").alias("executed_by"), "call_id", pl.lit(1, pl.Int32).alias("version"),
        pl.col("ended_at").alias("observed_at"))


def insert(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame) -> None:
    con.register("chunk", frame.to_arrow())
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM chunk")
    finally:
        con.unregister("chunk")


def generate(con: duckdb.DuckDBPyConnection, n_calls: int, seed: int = 7,
             log=print) -> dict[str, float]:
    """Fill an empty, migrated store; returns counts and seconds."""
    rng = np.random.default_rng(seed)
    start = (dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
             - dt.timedelta(days=PERIOD_DAYS))
    began = time.perf_counter()
    insert(con, "deployments", deployments(start))
    n_actions = 0
    for first in range(0, n_calls, CHUNK):
        chunk = calls(rng, first, min(CHUNK, n_calls - first), start)
        acts = actions(chunk)
        insert(con, "model_calls", chunk)
        insert(con, "tool_actions", acts)
        n_actions += acts.height
        log(f"  generated {first + chunk.height:,} calls")
    con.execute("""INSERT INTO findings BY NAME
        SELECT 'finding-' || action_id AS finding_id, 'ungated_action' AS kind, 'high' AS severity,
               [action_id, call_id] AS subject_ids, started_at AS detected_at, '{}' AS detail,
               1 AS version, started_at AS observed_at
        FROM tool_actions WHERE right(action_id, 3) = '000'""")
    from warehouse import latency_rollup
    latency_rollup.rebuild(con)
    return {"calls": n_calls, "actions": n_actions, "seconds": time.perf_counter() - began}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--out", required=True, help="the DuckDB file to create")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    from warehouse.store import Store

    path = Path(args.out)
    if path.exists():
        raise SystemExit(f"{path} exists; give a new file")
    store = Store(path)
    done = generate(store.con, args.calls, args.seed)
    store.close()
    print(f"{done['calls']:,} calls and {done['actions']:,} actions in {done['seconds']:.1f}s -> {path}")


if __name__ == "__main__":
    main()
