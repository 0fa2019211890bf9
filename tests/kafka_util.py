"""Reading topics in tests: everything currently in a topic, from the beginning."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition


def read_all(bootstrap: str, topic: str, expect: int = 1, timeout: float = 30.0) -> list:
    """All messages of `topic`, waiting until at least `expect` are there."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             group_id=None, auto_offset_reset="earliest")
    try:
        deadline = time.monotonic() + timeout
        while (ids := consumer.partitions_for_topic(topic)) is None:
            if time.monotonic() > deadline:
                return []
            time.sleep(0.2)
        partitions = [TopicPartition(topic, p) for p in ids]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        messages = []
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                messages.extend(batch)
            end = consumer.end_offsets(partitions)
            if len(messages) >= expect and all(consumer.position(tp) >= end[tp] for tp in partitions):
                break
        return messages
    finally:
        consumer.close()


def headers(message) -> dict[str, str]:
    return {k: v.decode() for k, v in message.headers or []}
