"""The processor reads every input partition, also when the group hands a restarted static
member an assignment that was computed without some of them."""

from __future__ import annotations

import re
from pathlib import Path

from kafka.admin import NewPartitions

from nimtrail import kafka_io
from processors.membership import ActiveStandbyAssignor
from tests import corpus, scenarios as sc
from tests.harness import Env, wait_for
from tests.test_processors_kafka import audit_trail


def test_a_restarted_processor_reads_partitions_its_stored_assignment_lacks(tmp_path: Path, kafka_bootstrap: str):
    env = Env(tmp_path, kafka_bootstrap, processor={"join_window": "1s"})
    config, t = env.config, env.config.topics
    inputs = sorted([t.otlp_spans, t.nimlogs, t.scrapes, t.otlp_logs, t.otlp_metrics])
    kafka_io.ensure_topics(config, inputs)
    # A processor's incarnation joined and left the assignment behind (static members send
    # no LeaveGroup); then the spans topic grew a partition that assignment does not have.
    before = kafka_io.consumer(config, group_id=config.processor.group_id,
                               group_instance_id=re.sub(r"[^A-Za-z0-9._-]", "-", config.processor.group_id),
                               partition_assignment_strategy=[ActiveStandbyAssignor()])
    for topic in inputs:
        kafka_io.partitions_of(before, topic)
    before.subscribe(inputs)
    wait_for(lambda: before.poll(timeout_ms=200) is not None and before.assignment(), 60, what="a first assignment")
    spans_partitions = len(kafka_io.partitions_of(before, t.otlp_spans))
    before.close(autocommit=False)
    admin = kafka_io.admin_client(config)
    try:
        admin.create_partitions({t.otlp_spans: NewPartitions(total_count=spans_partitions + 1)})
    finally:
        admin.close()

    world = sc.World()
    ids = sc.agent_run(world, corpus.T0)
    producer = kafka_io.producer(config)
    producer.send(t.otlp_spans, key=b"trace", value=sc.World.otlp(world.take()), partition=spans_partitions)
    producer.flush()
    producer.close()
    try:
        env.start("processor")
        calls = wait_for(lambda: audit_trail(env).of("model_call"), 120, interval=1.0,
                         what="the call written to the new partition to be processed")
        assert ids["call_id"] in {c["call_id"] for c in calls.values()}
    finally:
        env.stop_all()
