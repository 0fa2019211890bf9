"""An audit message the warehouse cannot decode or write goes to the dead-letter topic with
its reason, and the warehouse goes on writing what follows it."""

from __future__ import annotations

from nimtrail import kafka_io, records
from tests.harness import wait_for
from tests.hostile import stored
from tests.kafka_util import headers, read_all


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
    for value in (b"\x00 not an audit batch",
                  records.encode_batch("model_call", [_call({"a": 1})]),  # a key of the wrong type
                  records.encode_batch("model_call", [_call("bad-time", started_at="yesterday-ish")]),
                  records.encode_batch("model_call", [_call("good-1"), _call("good-2")])):
        producer.send(calls, value=value, partition=0).get(timeout=30)
    producer.close()

    wait_for(lambda: {"good-1", "good-2"} <= stored(env.api, "calls", "call_id"), timeout=60,
             what="the good calls behind the bad messages")
    dead = read_all(env.config.kafka.bootstrap, env.config.topics.dlq, expect=3)
    assert sorted(headers(m)["nimtrail.reason"] for m in dead) == [
        "invalid_record", "invalid_record", "malformed_audit_message"]
    assert {headers(m)["nimtrail.stage"] for m in dead} == {"warehouse"}
    assert "bad-time" not in stored(env.api, "calls", "call_id")
