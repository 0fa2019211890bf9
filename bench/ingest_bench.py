"""Warehouse ingest without Kafka, against a raw DuckDB Arrow insert of the same rows.

    python -m bench.ingest_bench                      # 100,000 records, 8 messages per poll
    python -m bench.ingest_bench --records 40000 --poll 1
    python -m bench.ingest_bench --cprofile           # also print where the time goes

The records are what the processor emits for its benchmark mix (`bench.processor_bench`:
agent traces, NIM log lines, scrapes → model calls, tool actions, findings, metric
samples, deployments), copied under new keys until there are --records of them, then
encoded as the processor sends them (`columnar.encode_audit`, at most 1000 records per
message, one kind per message). One record in twenty comes again later with the same
version (a re-delivery: a no-op) and one in twenty with a higher version (an upsert).

Measured in one run:
  1. ingest: the messages through `warehouse.ingest.BatchWriter.write`, --poll messages
     per call — exactly what `Ingest.run_once` does with one poll (decode, convert, newest
     version per key, fresh rows, row hashes, insert/upsert, ledger entry, offsets,
     commit);
  2. raw: the rows the store ended up with, one Arrow frame per table, inserted into bare
     copies of the tables (no key, no hash) with `INSERT ... SELECT * FROM frame`; once
     as one frame per table and once in chunks of the rows one poll brought;
  3. verify of the ingested store.
Rows per second count the rows stored; the ratio is ingest over raw, same rows, same run,
in elapsed time and in CPU time (process time, DuckDB's threads included: steadier than
elapsed time on a shared machine).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from nimtrail import columnar, config as config_mod, records
from nimtrail.ops import StageMetrics
from warehouse.ingest import BatchWriter
from warehouse.store import Store
from warehouse.tables import RECORD_TABLES
from warehouse.verify import verify

RECORDS_PER_MESSAGE = 1000  # as processors.loop sends them
TOPICS = {kind: f"audit.{kind}" for kind in records.FIELDS}
PREFILL = "prefill-"  # call ids of the --prefill rows, left out of the raw insert


class _NoDeadLetters:
    def send(self, value: bytes, **_kw: Any) -> None:
        raise AssertionError("the benchmark's records are all valid")


def processor_records(traces: int) -> list[tuple[str, list[dict[str, Any]]]]:
    """What the processor emits for `traces` agent traces of its benchmark mix, as the
    batches one take() returns (kind, records), in order."""
    from bench.processor_bench import workload
    from processors import normalize
    from processors.pipeline import Pipeline

    messages, _events = workload(traces)
    pipeline = Pipeline(config_mod.ProcessorConfig())
    out: list[tuple[str, list[dict[str, Any]]]] = []

    def take() -> None:
        for kind, recs in pipeline.take().records.items():
            if recs:
                out.append((kind, recs))

    for i, (kind, value) in enumerate(messages):
        if kind == normalize.DEPLOYMENTS:
            pipeline.deployment(value)
        else:
            pipeline.handle(kind, value, 0.0)
        if i % 20 == 19:
            take()
    pipeline.sweep(float("inf"))
    take()
    return out


def _renamed(kind: str, rec: dict[str, Any], copy: int) -> dict[str, Any]:
    if copy == 0 or kind == "deployment":
        return rec
    rec = dict(rec)
    for k in records.KEYS[kind]:
        rec[k] = f"{rec[k]}~{copy}"
    return rec


def messages(n: int, traces: int = 300, seed: int = 5) -> tuple[list[tuple[str, bytes]], int]:
    """(kind, encoded batch) in the order the processor would send them, and the number
    of records they carry."""
    base = processor_records(traces)
    per_copy = sum(len(r) for k, r in base if k != "deployment")
    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []
    later: dict[str, list[dict[str, Any]]] = defaultdict(list)
    total, copy = 0, 0
    while total < n:
        for kind, recs in base:
            if copy and kind == "deployment":
                continue
            batch = [_renamed(kind, r, copy) for r in recs]
            for r in batch:
                roll = rng.random()
                if roll < 0.05:
                    later[kind].append(r)  # re-delivered unchanged: a no-op
                elif roll < 0.10:
                    later[kind].append({**r, "version": r["version"] + 1})  # newer version
            for start in range(0, len(batch), RECORDS_PER_MESSAGE):
                out.append((kind, columnar.encode_audit(kind, batch[start:start + RECORDS_PER_MESSAGE])))
            total += len(batch)
            for k in list(later):
                if len(later[k]) >= 200:
                    out.append((k, columnar.encode_audit(k, later.pop(k))))
        copy += 1
        if per_copy == 0:
            break
    for k, recs in later.items():
        out.append((k, columnar.encode_audit(k, recs)))
        total += len(recs)
    return out, total


def prefill(store: Store, n: int, say=print) -> None:
    """`n` generated model calls (`bench.generate`), written through the store in large
    transactions (ledgered, hashed), so ingest meets a table that has been running a while."""
    import datetime as dt

    import numpy as np
    import polars as pl

    from bench import generate
    table = store.tables["model_call"]
    start = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0) - dt.timedelta(days=30)
    began = time.perf_counter()
    for first in range(0, n, 100_000):
        calls = generate.calls(np.random.default_rng(first), first, min(100_000, n - first), start)
        calls = calls.with_columns((PREFILL + pl.col("call_id")).alias("call_id"))
        columns = []
        for c in table.columns:
            if c not in calls.columns:
                columns.append(pl.lit(None, pl.Datetime("us") if c in table.time_columns
                                      else table.schema[c]).alias(c))
            else:
                columns.append(pl.col(c) if c in table.time_columns else pl.col(c).cast(table.schema[c]))
        frame = calls.select(columns)
        store.write({"model_call": frame}, [])
    store.con.execute("CHECKPOINT")
    say(f"prefilled {n:,} model calls in {time.perf_counter() - began:.1f}s")


def ingest(work: Path, msgs: list[tuple[str, bytes]], poll: int,
           profile: cProfile.Profile | None = None, prefilled: int = 0) -> tuple[Store, float, list[int]]:
    store = Store(work / "ingest.duckdb")
    if prefilled:
        prefill(store, prefilled)
    writer = BatchWriter(store, StageMetrics("warehouse"), _NoDeadLetters())  # type: ignore[arg-type]
    polls = [[(TOPICS[kind], 0, offset, value) for offset, (kind, value) in
              enumerate(msgs[i:i + poll], start=i)] for i in range(0, len(msgs), poll)]
    rows_per_poll = [sum(len(columnar.decode_any(v)[1]) for _t, _p, _o, v in batch) for batch in polls]
    pa.array([{"a": 1}])  # the one-time import pyarrow does on its first conversion
    began, cpu = time.perf_counter(), time.process_time()
    if profile:
        profile.enable()
    for batch in polls:
        writer.write(batch)
    store.con.execute("CHECKPOINT")  # what the commits left for the next automatic one
    if profile:
        profile.disable()
    return store, (time.perf_counter() - began, time.process_time() - cpu), rows_per_poll


def raw_insert(store: Store, chunk: int | None) -> tuple[int, tuple[float, float]]:
    """The stored rows again, as Arrow frames into bare tables: rows, (seconds, CPU seconds)."""
    con = store.con
    frames = {}
    for table in RECORD_TABLES.values():
        where = f"WHERE NOT starts_with(call_id, '{PREFILL}')" if table == "model_calls" else ""
        frames[table] = con.sql(f"SELECT * EXCLUDE (row_hash) FROM {table} {where}").to_arrow_table()
        con.execute(f"CREATE OR REPLACE TABLE raw_{table} AS SELECT * EXCLUDE (row_hash) FROM {table} LIMIT 0")
    rows = sum(f.num_rows for f in frames.values())
    began, cpu = time.perf_counter(), time.process_time()
    for table, frame in frames.items():
        size = chunk or max(1, frame.num_rows)
        for start in range(0, frame.num_rows, size):
            con.register("frame", frame.slice(start, size))
            con.execute(f"INSERT INTO raw_{table} SELECT * FROM frame")
            con.unregister("frame")
    con.execute("CHECKPOINT")  # as the store's commits make theirs durable
    seconds = (time.perf_counter() - began, time.process_time() - cpu)
    for table in frames:
        con.execute(f"DROP TABLE raw_{table}")
    return rows, seconds


def run(n: int, poll: int, work: Path, profile: bool, say=print, prefilled: int = 0) -> dict:
    began = time.perf_counter()
    msgs, total = messages(n)
    if prefilled:
        say(f"store prefilled with {prefilled:,} model calls")
    say(f"workload: {total:,} records in {len(msgs):,} messages "
        f"({sum(len(v) for _, v in msgs) / 1e6:.1f} MB), built in {time.perf_counter() - began:.1f}s")
    prof = cProfile.Profile() if profile else None
    store, (seconds, cpu), per_poll = ingest(work, msgs, poll, prof, prefilled)
    stored = sum(store.count(kind) for kind in RECORD_TABLES) - prefilled
    mean_poll = sum(per_poll) / len(per_poll)
    raw_rows, (raw_s, raw_cpu) = raw_insert(store, None)
    _, (chunked_s, chunked_cpu) = raw_insert(store, max(1, int(mean_poll)))
    began = time.perf_counter()
    result = verify(store.reader(), work)
    verified = time.perf_counter() - began
    assert result["ok"], result["problems"][:3]
    assert raw_rows == stored, (raw_rows, stored)
    store.close()
    out = {"records": total, "rows_stored": stored, "messages": len(msgs), "poll_messages": poll,
           "records_per_poll": mean_poll, "ingest_s": seconds, "ingest_cpu_s": cpu,
           "ingest_records_per_s": total / seconds, "ingest_rows_per_s": stored / seconds,
           "ingest_rows_per_cpu_s": stored / cpu,
           "raw_rows_per_s": stored / raw_s, "raw_chunked_rows_per_s": stored / chunked_s,
           "raw_rows_per_cpu_s": stored / raw_cpu, "raw_chunked_rows_per_cpu_s": stored / chunked_cpu,
           "ratio_to_raw": raw_s / seconds, "ratio_to_raw_chunked": chunked_s / seconds,
           "cpu_ratio_to_raw": raw_cpu / cpu, "cpu_ratio_to_raw_chunked": chunked_cpu / cpu,
           "verify_s": verified}
    say(f"ingest, {poll} messages (~{mean_poll:,.0f} records) per transaction: "
        f"{out['ingest_records_per_s']:,.0f} records/s, {out['ingest_rows_per_s']:,.0f} rows stored/s, "
        f"{out['ingest_rows_per_cpu_s']:,.0f} rows per CPU second")
    say(f"raw Arrow insert of the {stored:,} stored rows: {out['raw_rows_per_s']:,.0f} rows/s "
        f"({out['raw_rows_per_cpu_s']:,.0f} per CPU s) as one frame per table, "
        f"{out['raw_chunked_rows_per_s']:,.0f} rows/s ({out['raw_chunked_rows_per_cpu_s']:,.0f} per CPU s) "
        f"in chunks of {int(mean_poll):,}")
    say(f"ratio ingest / raw: {out['ratio_to_raw']:.3f} (one frame), {out['ratio_to_raw_chunked']:.3f} "
        f"(chunks); in CPU time {out['cpu_ratio_to_raw']:.3f}, {out['cpu_ratio_to_raw_chunked']:.3f}")
    say(f"verify: {verified:.2f}s")
    if prof:
        for order in ("cumulative", "tottime"):
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats(order).print_stats(25)
            say(text.getvalue())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--poll", type=int, default=8, help="messages per transaction (one poll)")
    parser.add_argument("--cprofile", action="store_true", help="print a profile of the ingest")
    parser.add_argument("--prefill", type=int, default=0,
                        help="model calls in the store before ingest starts (its lookups read the key column)")
    parser.add_argument("--work", help="directory for the files (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.work:
        run(args.records, args.poll, Path(args.work), args.cprofile, prefilled=args.prefill)
    else:
        with tempfile.TemporaryDirectory(prefix="nimtrail-ingest-") as tmp:
            run(args.records, args.poll, Path(tmp), args.cprofile, prefilled=args.prefill)
    return 0


if __name__ == "__main__":
    sys.exit(main())
