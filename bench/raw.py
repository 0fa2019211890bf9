"""The raw limits the pipeline is compared against, for the same message sizes:

- kafka-python: a produce loop (acks=all, idempotent, as the collector sends) and a
  consume loop over the same messages;
- the broker's own perf tools from the Kafka jars (ProducerPerformance and
  ConsumerPerformance, Java clients, same record size);
- DuckDB: canonical model_call rows inserted from one Arrow frame into a bare table.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import polars as pl
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from bench import generate
from cli import broker


def _topic(admin_bootstrap: str) -> str:
    from kafka.admin import KafkaAdminClient, NewTopic
    name = f"bench.raw.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=admin_bootstrap)
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    admin.close()
    return name


def kafka_python(bootstrap: str, value: bytes, count: int) -> dict:
    """Produce `count` copies of `value` and consume them back, both timed."""
    topic = _topic(bootstrap)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                             max_request_size=16 * 1024 * 1024, batch_size=1024 * 1024)
    deadline = time.monotonic() + 30
    while not producer.partitions_for(topic) and time.monotonic() < deadline:
        time.sleep(0.1)
    began = time.perf_counter()
    for i in range(count):
        producer.send(topic, key=str(i).encode(), value=value)
    producer.flush()
    produced = time.perf_counter() - began
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             max_partition_fetch_bytes=16 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    got, began = 0, time.perf_counter()
    deadline = time.monotonic() + 300
    while got < count and time.monotonic() < deadline:
        for messages in consumer.poll(timeout_ms=500, max_records=5000).values():
            got += len(messages)
    consumed = time.perf_counter() - began
    consumer.close()
    size = len(value)
    return {"messages": count, "message_bytes": size, "produce_msgs_per_s": count / produced,
            "consume_msgs_per_s": got / consumed, "produce_mb_per_s": count * size / produced / 1e6,
            "consume_mb_per_s": got * size / consumed / 1e6,
            # one message produced and consumed again: what any Kafka stage pays at least
            "produce_consume_msgs_per_s": count / (produced + consumed)}


def java_tools(bootstrap: str, size: int, count: int, timeout: float = 240) -> dict:
    """ProducerPerformance / ConsumerPerformance from the broker's jars."""
    jars = broker.resolve_jars()
    java = "java"
    topic = _topic(bootstrap)
    cp = f"{jars}/*"
    produce = subprocess.run(
        [java, "-Xmx512m", "-cp", cp, "org.apache.kafka.tools.ProducerPerformance", "--topic", topic,
         "--num-records", str(count), "--record-size", str(size), "--throughput", "-1",
         "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all", "linger.ms=5",
         "max.request.size=16777216", "batch.size=1048576"],
        capture_output=True, text=True, timeout=timeout)
    line = [l for l in produce.stdout.splitlines() if "records sent" in l]
    out: dict = {"messages": count, "message_bytes": size}
    if line:
        m = re.search(r"records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\)", line[-1])
        if m:
            out["produce_msgs_per_s"], out["produce_mb_per_s"] = float(m.group(1)), float(m.group(2))
    else:
        out["produce_error"] = (produce.stderr or produce.stdout)[-500:]
    consume = subprocess.run(
        [java, "-Xmx512m", "-cp", cp, "org.apache.kafka.tools.ConsumerPerformance", "--bootstrap-server",
         bootstrap, "--topic", topic, "--messages", str(count), "--timeout", "60000",
         "--consumer.config", "/dev/null"],
        capture_output=True, text=True, timeout=timeout)
    rows = [l for l in consume.stdout.splitlines() if l and l[0].isdigit()]
    if rows:
        # start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, ...
        cols = [c.strip() for c in rows[-1].split(",")]
        out["consume_mb_per_s"], out["consume_msgs_per_s"] = float(cols[3]), float(cols[5])
    else:
        out["consume_error"] = (consume.stderr or consume.stdout)[-500:]
    return out


def duckdb_arrow(work: Path, n: int) -> dict:
    """Canonical model_call rows from one Arrow frame into a bare DuckDB table."""
    import duckdb
    from warehouse.store import Store
    frame = generate.calls(np.random.default_rng(11), 0, n, _start())
    store = Store(work / "raw-arrow.duckdb")
    con = store.con
    con.execute("CREATE TABLE raw_calls AS SELECT * EXCLUDE (row_hash) FROM model_calls LIMIT 0")
    arrow = frame.to_arrow()
    began = time.perf_counter()
    con.register("frame", arrow)
    con.execute("INSERT INTO raw_calls BY NAME SELECT * FROM frame")
    con.unregister("frame")
    seconds = time.perf_counter() - began
    store.close()
    del duckdb
    return {"rows": n, "rows_per_s": n / seconds}


def _start():
    import datetime as dt
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0) - dt.timedelta(days=30)


def frame_of(n: int) -> pl.DataFrame:
    return generate.calls(np.random.default_rng(11), 0, n, _start())
