"""A member whose group starts a rebalance while it delivers a batch: the member's next
poll sends its JoinGroup, as one of a batch's polls can, and the commit of that batch's
offsets is then refused (the member is rejoining). The member goes on, rejoins and holds
its share again; the batch's outputs and state are durable already, and whoever holds its
input next reads that input again."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest

from nimtrail import kafka_io
from processors.partitioned_loop import PartitionedProcessor
from tests import corpus, scenarios as sc
from tests.harness import Env, wait_for
from tests.test_processors_kafka import audit_trail

pytestmark = pytest.mark.integration


def _group_state(env: Env) -> str:
    admin = kafka_io.admin_client(env.config)
    try:
        group = env.config.processor.group_id
        return admin.describe_groups([group])[group]["group_state"]
    finally:
        admin.close()


def test_a_rebalance_begun_while_a_batch_is_delivered_leaves_the_member_running(tmp_path: Path,
                                                                                kafka_bootstrap: str):
    env = Env(tmp_path, kafka_bootstrap, processor={"partitions": 2, "join_window": "1s", "session_timeout": "6s"})
    first = PartitionedProcessor(env.config)
    second: PartitionedProcessor | None = None
    stop = threading.Event()
    joining = None
    try:
        _run_until(first, lambda: first.active, "the first member's share")
        consume, deliver, read = first._consume, first._deliver, []

        def consume_counting(polled, now):
            read.append(consume(polled, now))
            return read[-1]

        def deliver_then_a_member_joins(outputs):
            """Deliver a batch that read input; then a second member joins the group, which
            waits at the rebalance until this one polls again: the commit that follows is
            refused."""
            nonlocal second, joining
            deliver(outputs)
            if second is not None or not (read and read[-1]):
                return
            config = dataclasses.replace(env.config, processor=dataclasses.replace(
                env.config.processor, instance_id="second"))
            second = PartitionedProcessor(config)
            joining = threading.Thread(target=lambda: [second.run_once(timeout_ms=200)
                                                       for _ in iter(stop.is_set, True)], daemon=True)
            joining.start()
            wait_for(lambda: _group_state(env) == "PreparingRebalance", 60, what="the group to rebalance")
            # The first member learns it at its next heartbeat; a poll then sends its own
            # JoinGroup, as one of a batch's polls does, and returns nothing until the
            # group is stable again. (kafka-python has no public view of the coordinator.)
            coordinator = first.consumer._coordinator  # noqa: SLF001
            wait_for(lambda: first.consumer.poll(timeout_ms=0) == {} and coordinator.rebalance_in_progress(), 60,
                     what="the first member to be rejoining")

        first._consume, first._deliver = consume_counting, deliver_then_a_member_joins
        world = sc.World()
        ids = sc.agent_run(world, corpus.T0)
        producer = kafka_io.producer(env.config)
        producer.send(env.config.topics.otlp_spans, key=b"t", value=sc.World.otlp(world.take())).get(30)
        producer.close()

        # A refused commit raised out of run_once, and so stopped the member, before.
        _run_until(first, lambda: second is not None and first.active and second.active,
                   "both members to hold a share")
        _run_until(first, lambda: ids["call_id"] in {c["call_id"] for c in audit_trail(env).of("model_call").values()},
                   "the call in the trail")
    finally:
        stop.set()
        if joining is not None:
            joining.join(timeout=30)
        first.close()
        if second is not None:
            second.close()


def _run_until(member: PartitionedProcessor, done, what: str, timeout: float = 90) -> None:
    """Run the member's loop here (what it raises fails the test) until `done()`."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        member.run_once(timeout_ms=200)
