"""An audit message the warehouse cannot decode or write goes to the dead-letter topic with
its reason, and the warehouse goes on writing what follows it, in either wire form (JSON
batches and the columnar form, nimtrail.columnar)."""

from __future__ import annotations

import json

import pyarrow as pa

from nimtrail import columnar, kafka_io, records
from tests.harness import scrape, wait_for
from tests.hostile import stored
from tests.kafka_util import headers, read_all


def _stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _call(call_id: str, **fields) -> dict:
    values = {"trace_id": "t", "span_id": "s", "started_at": "2026-01-01T00:00:00.000000Z",
              "version": 1, "observed_at": "2026-01-01T00:00:00.000000Z", **fields}
    return records.new("model_call", call_id=call_id, **values)


def test_unprocessable_audit_messages_are_dead_lettered_and_the_rest_is_written(env):
    kafka_io.ensure_topics(env.config, [*env.config.topics.audit().values(), env.config.topics.dlq])
    env.start("warehouse")
    env.wait_ready("warehouse")
    calls = env.config.topics.calls
    producer = kafka_io.producer(env.config)
    columns = [_call(f"col-{i}") for i in range(columnar.COLUMNAR_FROM)]  # the columnar form
    unfit = pa.table({"call_id": ["x"], "version": ["one"]}).replace_schema_metadata(
        columnar.SCHEMAS["model_call"].metadata)
    for value in (b"\x00 not an audit batch",
                  records.encode_batch("model_call", [_call({"a": 1})]),  # a key of the wrong type
                  records.encode_batch("model_call", [_call("bad-time", started_at="yesterday-ish")]),
                  columnar.encode("model_call", columns)[:-64],  # a truncated stream
                  _stream(unfit),  # a column that does not cast to the table's type
                  columnar.encode("model_call", columns),
                  records.encode_batch("model_call", [_call("good-1"), _call("good-2")])):
        producer.send(calls, value=value, partition=0).get(timeout=30)
    producer.close()

    good = {"good-1", "good-2", *(c["call_id"] for c in columns)}
    wait_for(lambda: good <= stored(env.api, "calls", "call_id"), timeout=60,
             what="the good calls behind the bad messages")
    dead = read_all(env.config.kafka.bootstrap, env.config.topics.dlq, expect=5)
    assert sorted(headers(m)["nimtrail.reason"] for m in dead) == [
        "invalid_record", "invalid_record", "invalid_record", "malformed_audit_message", "malformed_audit_message"]
    assert {headers(m)["nimtrail.stage"] for m in dead} == {"warehouse"}
    assert "bad-time" not in stored(env.api, "calls", "call_id")


def test_a_message_the_store_refuses_is_dead_lettered_and_its_poll_is_written_once(env):
    """A record that decodes and converts but that DuckDB refuses (a null key or version:
    the tables' NOT NULL constraints) sits in one poll with good messages around it: the
    poll is halved until that message is alone, it goes to the dead-letter topic with
    DuckDB's reason, and every good record is written exactly once."""
    kafka_io.ensure_topics(env.config, [*env.config.topics.audit().values(), env.config.topics.dlq])
    calls = env.config.topics.calls
    good = [f"good-{i}" for i in range(12)]
    batches = [[_call(good[0]), _call(good[1])], [_call(good[2])], [_call(None)],
               [_call(good[3]), _call(good[4])], [_call(good[5])], [_call("no-version", version=None)],
               [_call(good[6]), _call(good[7]), _call(good[8])], [_call(good[9])],
               [_call(good[10]), _call(good[11])]]
    producer = kafka_io.producer(env.config)
    for batch in batches:  # all in the topic before the warehouse starts: one poll
        producer.send(calls, value=records.encode_batch("model_call", batch), partition=0).get(timeout=30)
    producer.close()
    env.start("warehouse")
    env.wait_ready("warehouse")

    wait_for(lambda: set(good) <= stored(env.api, "calls", "call_id"), timeout=60,
             what="the good calls of the poll")
    dead = read_all(env.config.kafka.bootstrap, env.config.topics.dlq, expect=2)
    reasons = [headers(m) for m in dead]
    assert [h["nimtrail.reason"] for h in reasons] == ["unwritable_record", "unwritable_record"]
    assert "NOT NULL constraint failed: model_calls.call_id" in reasons[0]["nimtrail.detail"]
    assert "NOT NULL constraint failed" in reasons[1]["nimtrail.detail"]
    assert stored(env.api, "calls", "call_id") == set(good)
    # exactly once: each good record written one time, and the ledger covers them all
    written = scrape(f"{env.api}/metrics")
    assert written['nimtrail_warehouse_written_records_total{kind="model_call"}'] == len(good)
    report = json.loads(env.cli("verify", "--json").stdout)
    assert report["ok"], report["problems"]
    assert report["rows_checked"]["model_calls"] == len(good)
