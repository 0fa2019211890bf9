"""Nothing lost, nothing doubled: the warehouse killed right after its DuckDB commit."""

import json

import duckdb
from kafka import KafkaProducer

from nimtrail import records
from tests.harness import wait_for


def _call(i: int) -> dict:
    return records.new("model_call", call_id=f"chatcmpl-{i:06d}", model="m", caller=f"user-{i % 7}",
                       started_at="2026-11-26T10:00:00.000000Z", signals=["span.client"],
                       version=1, observed_at="2026-11-26T10:00:01.000000Z")


def test_warehouse_killed_after_commit_resumes_exactly(env, kafka_bootstrap):
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    total = 0
    for batch in range(20):
        chunk = [_call(batch * 50 + i) for i in range(50)]
        # Each record twice in the stream (a processor replay): still one row each.
        producer.send(env.config.topics.calls, records.encode_batch("model_call", chunk))
        producer.send(env.config.topics.calls, records.encode_batch("model_call", chunk[:10]))
        total += len(chunk)
    producer.flush()
    producer.close()

    crashed = env.start("warehouse", faults="warehouse.after_commit:1")
    assert crashed.wait(timeout=120) == 137  # died abruptly right after its first commit
    env.start("warehouse")
    env.wait_ready("warehouse")

    def all_rows():
        doc = json.loads(env.cli("calls", "--json", "--limit", "1000").stdout)
        return len(doc["rows"]) == total and doc["next_offset"] is None and doc

    doc = wait_for(all_rows, timeout=60, what=f"{total} calls in the warehouse")
    assert len({r["call_id"] for r in doc["rows"]}) == total
    env.stop_all()

    con = duckdb.connect(str(env.config.warehouse_path), read_only=True)
    assert con.execute("SELECT count(*) FROM model_calls").fetchone()[0] == total
    stored = dict(((t, p), o) for t, p, o in con.execute(
        "SELECT topic, partition, next_offset FROM consumer_offsets WHERE topic = ?",
        [env.config.topics.calls]).fetchall())
    assert sum(stored.values()) == 40  # every message consumed exactly once, none skipped
