"""The processor through a broker outage: it waits (produce, the changelog's end offsets,
the group) instead of exiting, and the trail after Kafka is back is exact."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli import broker
from nimtrail import kafka_io
from tests import corpus, scenarios as sc
from tests.harness import Env, scrape, wait_for
from tests.test_processors_kafka import audit_trail, register_deployments
from tests.trail import Trail

pytestmark = pytest.mark.integration


def _send_traces(env: Env, world: sc.World, count: int, start: int) -> list[str]:
    producer = kafka_io.producer(env.config)
    ids = []
    for i in range(count):
        ids.append(sc.agent_run(world, corpus.T0, caller=f"user{start + i}")["call_id"])
        producer.send(env.config.topics.otlp_spans, key=b"t", value=sc.World.otlp(world.take()))
    producer.flush()
    producer.close()
    return ids


@pytest.mark.timeout(600)
def test_a_processor_waits_out_a_broker_outage_and_the_trail_is_exact(tmp_path: Path):
    kafka_dir = tmp_path / "own-kafka"
    handle = broker.start(kafka_dir, port=0, timeout=180)
    env = Env(tmp_path, handle.bootstrap, processor={"join_window": "1s"})
    try:
        register_deployments(env)
        world = sc.World()
        processor = env.start("processor")
        env.wait_ready("processor")
        ops = f"http://127.0.0.1:{env.ports['ops']}/metrics"
        wait_for(lambda: scrape(ops).get("nimtrail_processor_active_members") == 1, timeout=60,
                 what="the processor to read the input")
        before = _send_traces(env, world, 3, 0)
        wait_for(lambda: set(before) <= {c["call_id"] for c in audit_trail(env).of("model_call").values()},
                 timeout=60, what="the calls sent before the outage")

        broker.stop(kafka_dir)
        wait_for(lambda: "Could not" in env.log("processor") or "Retrying" in env.log("processor")
                 or processor.poll() is not None, timeout=60, interval=0.5,
                 what="the processor to notice the broker is away")
        assert processor.poll() is None, env.log("processor")[-3000:]
        broker.start(kafka_dir, port=handle.port, controller_port=handle.controller_port, timeout=180)

        after = _send_traces(env, world, 3, 3)

        def whole() -> Trail | None:
            """The trail once every call sent and every call's action are in it (a call can be
            on its topic a moment before its action is on theirs)."""
            t = audit_trail(env)
            called = {c["call_id"] for c in t.of("model_call").values()}
            acted = {a["call_id"] for a in t.of("tool_action").values()}
            return t if set(before + after) <= called and set(before + after) <= acted else None

        trail = wait_for(whole, timeout=180, interval=1.0, what="the calls and actions sent after the outage")
        assert processor.poll() is None, env.log("processor")[-3000:]
        assert sorted(c["call_id"] for c in trail.of("model_call").values()) == sorted(before + after)
        assert len(trail.of("tool_action")) == 6
    finally:
        env.stop_all()
        broker.stop(kafka_dir)
