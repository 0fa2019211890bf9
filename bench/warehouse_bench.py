"""Warehouse benchmark: ingest throughput, and query latency at 1M (or 10M) model calls.

    python -m bench.warehouse_bench                 # 1M calls for the query part
    python -m bench.warehouse_bench --10m           # 10M calls
    python -m bench.warehouse_bench --bootstrap 127.0.0.1:19092 --ingest-records 200000

Part 1, ingest (same records, same run):
  - consumer path: canonical model_call records produced to a fresh Kafka topic in
    messages of --batch records, then consumed by the warehouse's own `Ingest` (decode,
    validate, newest-version-per-key, row hashes, upsert, ledger entry, offsets, commit);
  - Store.write alone: the same batches without Kafka (frames, hashes, upsert, ledger);
  - raw DuckDB Arrow insert: the same rows as one polars frame `INSERT ... SELECT * FROM
    frame` into a bare table, and in chunks of --batch;
  - verify: the full verification of the ingested store.
Part 2, queries: `bench.generate` writes N calls (+ N/4 tool actions) straight into a
DuckDB file; the query API runs in-process and each query is timed over real HTTP
(including its access-log write and ledger entry), --requests times with random ids,
after one untimed round of the same requests.
Without --bootstrap (or NIMTRAIL_TEST_BOOTSTRAP) the bundled Kafka broker is started.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import random
import statistics
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
import orjson
import polars as pl

from bench import generate
from cli import broker
from nimtrail import columnar, config as config_mod, kafka_io, records
from nimtrail.kafka_io import DeadLetters
from nimtrail.ops import StageMetrics
from warehouse.api import QueryApi
from warehouse.ingest import Ingest
from warehouse.store import Store
from warehouse.tables import iso
from warehouse.verify import verify


def _records(n: int) -> list[dict]:
    frame = generate.calls(np.random.default_rng(11), 0, n, _start())
    frame = frame.with_columns(pl.col(c).dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
                               for c in ("started_at", "ended_at", "observed_at"))
    fields = records.MODEL_CALL_FIELDS
    return [{f: row.get(f) for f in fields} for row in frame.iter_rows(named=True)]


def _start() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0) - dt.timedelta(days=30)


def _config(bootstrap: str, data_dir: Path) -> config_mod.Config:
    base = config_mod.Config()
    suffix = uuid.uuid4().hex[:8]
    topics = dataclasses.replace(base.topics, **{f.name: f"{getattr(base.topics, f.name)}.bench.{suffix}"
                                                 for f in dataclasses.fields(base.topics)})
    return dataclasses.replace(base, data_dir=str(data_dir), topics=topics,
                               kafka=dataclasses.replace(base.kafka, bootstrap=bootstrap))


def bench_ingest(bootstrap: str, work: Path, n: int, batch: int, say: Callable[[str], None]) -> dict:
    recs = _records(n)
    config = _config(bootstrap, work / "ingest")
    t = config.topics
    kafka_io.ensure_topics(config, [*t.audit().values(), t.dlq])
    producer = kafka_io.producer(config)
    began = time.perf_counter()
    for i in range(0, n, batch):
        producer.send(t.calls, key=str(i).encode(), value=columnar.encode_audit("model_call", recs[i:i + batch]))
    producer.flush()
    produced = time.perf_counter() - began
    say(f"  produced {n:,} records in {produced:.1f}s")

    store = Store(config.warehouse_path)
    metrics = StageMetrics("warehouse")
    ingest = Ingest(config, store, metrics, DeadLetters(producer, t.dlq, "warehouse"))
    began = time.perf_counter()
    while store.count("model_call") < n:
        ingest.run_once(timeout_ms=200)
    consumed = time.perf_counter() - began
    ingest.close()
    producer.close()
    say(f"  consumer path: {n / consumed:,.0f} rows/s")

    began = time.perf_counter()
    result = verify(store.reader(), config.data_path)
    verified = time.perf_counter() - began
    assert result["ok"], result["problems"][:3]
    store.close()

    direct = Store(work / "direct.duckdb")
    began = time.perf_counter()
    for i in range(0, n, batch):
        direct.write(direct.frames({"model_call": recs[i:i + batch]}), [("bench", 0, i)])
    written = time.perf_counter() - began
    table = direct.tables["model_call"]
    frame = table.frame(recs)
    con = direct.con
    con.execute("CREATE TABLE raw_calls AS SELECT * EXCLUDE (row_hash) FROM model_calls LIMIT 0")
    began = time.perf_counter()
    con.register("frame", frame.to_arrow())
    con.execute("INSERT INTO raw_calls SELECT * FROM frame")
    con.unregister("frame")
    raw = time.perf_counter() - began
    con.execute("CREATE TABLE raw_chunks AS SELECT * FROM raw_calls LIMIT 0")
    began = time.perf_counter()
    for i in range(0, n, batch):
        con.register("frame", frame.slice(i, batch).to_arrow())
        con.execute("INSERT INTO raw_chunks SELECT * FROM frame")
        con.unregister("frame")
    raw_chunked = time.perf_counter() - began
    direct.close()
    return {"records": n, "batch": batch, "produce_s": produced,
            "consumer_rows_per_s": n / consumed, "store_write_rows_per_s": n / written,
            "raw_arrow_rows_per_s": n / raw, "raw_arrow_chunked_rows_per_s": n / raw_chunked,
            "verify_s": verified}


def _timed(url: str, times: int = 1) -> list[float]:
    out = []
    for _ in range(times):
        began = time.perf_counter()
        with urllib.request.urlopen(url, timeout=600) as r:
            r.read()
        out.append((time.perf_counter() - began) * 1000)
    return out


def _pct(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
    return statistics.median(values), p95


def bench_queries(work: Path, n: int, requests: int, say: Callable[[str], None]) -> dict:
    path = work / "queries.duckdb"
    reuse = path.exists()
    store = Store(path)
    if reuse and store.count("model_call") == n and store.count("finding"):
        generated = {"actions": store.count("tool_action")}
        say(f"  reusing {path} ({n:,} calls, {generated['actions']:,} actions)")
    else:
        if reuse:
            raise SystemExit(f"{path} holds other data than {n:,} generated calls; give another --work")
        generated = generate.generate(store.con, n, log=lambda m: say(m))
        say(f"  generated {n:,} calls, {generated['actions']:,} actions in {generated['seconds']:.1f}s")
    store.con.execute("CHECKPOINT")
    con = store.reader()
    ids = con.execute("SELECT action_id, tool_call_id, call_id FROM tool_actions "
                      f"USING SAMPLE {requests} ROWS").fetchall()
    plain = [r[0] for r in con.execute(f"SELECT call_id FROM model_calls USING SAMPLE {requests} ROWS").fetchall()]
    callers = [f"user-{i}" for i in range(500)]
    newest = con.execute("SELECT max(started_at) FROM model_calls").fetchall()[0][0]
    con.close()
    config = config_mod.load(None, env={"NIMTRAIL_DATA_DIR": str(work / "qdata")})
    api = QueryApi(config, store, StageMetrics("warehouse"), lambda: True, host="127.0.0.1", port=0).start()
    base = f"http://127.0.0.1:{api.port}/v1/query/"
    rnd = random.Random(3)

    def q(name: str, **params: object) -> str:
        return base + name + ("?" + urllib.parse.urlencode(params) if params else "")

    since = iso(newest.replace(hour=0, minute=0, second=0, microsecond=0))
    cases: dict[str, Callable[[], list[float]]] = {
        "trace-back by action_id": lambda: [t for a, _, _ in ids for t in _timed(q("trace-back", action_id=a))],
        "trace-back by tool_call_id": lambda: [t for _, tc, _ in ids for t in _timed(q("trace-back", tool_call_id=tc))],
        "trace-back by call_id (no action)": lambda: [t for c in plain for t in _timed(q("trace-back", call_id=c))],
        "calls newest page (50)": lambda: _timed(q("calls", limit=50), requests),
        "calls by caller (50)": lambda: [t for _ in range(requests)
                                         for t in _timed(q("calls", caller=rnd.choice(callers), limit=50))],
        "calls by caller, last day": lambda: [t for _ in range(requests) for t in _timed(
            q("calls", caller=rnd.choice(callers), since=since, limit=50))],
        "actions, riskiest first (50)": lambda: _timed(q("actions", order="risk", limit=50), max(5, requests // 20)),
        "actions, riskiest first, last day": lambda: _timed(q("actions", order="risk", since=since, limit=50),
                                                            max(5, requests // 20)),
        "actions by caller (50)": lambda: [t for _ in range(max(5, requests // 20))
                                           for t in _timed(q("actions", caller=rnd.choice(callers), limit=50))],
        "facets (the app's filters)": lambda: _timed(q("facets"), max(5, requests // 20)),
        "latency by profile": lambda: _timed(q("latency"), max(5, requests // 20)),
        "latency by model": lambda: _timed(q("latency", by="model"), max(5, requests // 20)),
        "latency by deployment, last day, 1h": lambda: _timed(
            q("latency", by="deployment", bucket="1h", since=since), max(5, requests // 20)),
    }
    results = {}
    for name, run in cases.items():
        _timed(q("calls", limit=1))  # keep connections and caches comparable
        # One untimed round first: a running warehouse has the pages a query kind reads in
        # memory; the first request after opening a 10M-call file reads them from disk.
        run()
        p50, p95 = _pct(run())
        results[name] = {"p50_ms": p50, "p95_ms": p95}
        say(f"  {name:<36} p50 {p50:8.1f} ms   p95 {p95:8.1f} ms")
    api.shutdown()
    store.close()
    return {"calls": n, "actions": generated["actions"], "requests": requests, "queries": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1_000_000, help="model calls for the query part")
    parser.add_argument("--10m", dest="ten_million", action="store_true", help="10M model calls")
    parser.add_argument("--ingest-records", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500, help="records per Kafka message / write")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per query kind")
    parser.add_argument("--bootstrap", default=os.environ.get("NIMTRAIL_TEST_BOOTSTRAP", ""))
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-queries", action="store_true")
    parser.add_argument("--work", help="directory for the files (default: a temporary one)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    n_calls = 10_000_000 if args.ten_million else args.calls
    work = Path(args.work or tempfile.mkdtemp(prefix="nimtrail-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    say = lambda m: print(m, flush=True)  # noqa: E731
    out: dict = {"cpus": os.cpu_count()}
    started_broker = None
    if not args.skip_ingest:
        bootstrap = args.bootstrap
        if not bootstrap:
            started_broker = work / "kafka"
            bootstrap = broker.start(started_broker, port=0, timeout=180).bootstrap
        say(f"ingest: {args.ingest_records:,} model calls, {args.batch} per message, Kafka at {bootstrap}")
        try:
            out["ingest"] = bench_ingest(bootstrap, work, args.ingest_records, args.batch, say)
        finally:
            if started_broker:
                broker.stop(started_broker)
        i = out["ingest"]
        say(f"  Store.write alone:   {i['store_write_rows_per_s']:,.0f} rows/s")
        say(f"  raw Arrow insert:    {i['raw_arrow_rows_per_s']:,.0f} rows/s (one frame), "
            f"{i['raw_arrow_chunked_rows_per_s']:,.0f} rows/s (chunks of {args.batch})")
        say(f"  verify of {i['records']:,} ledgered rows: {i['verify_s']:.1f}s")
    if not args.skip_queries:
        say(f"queries at {n_calls:,} model calls, {args.requests} requests each, over HTTP:")
        out["queries"] = bench_queries(work, n_calls, args.requests, say)
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
