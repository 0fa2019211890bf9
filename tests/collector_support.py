"""Helpers for the collector's tests: an in-process collector, reading what it wrote to
Kafka, and reading its /metrics."""

from __future__ import annotations

import contextlib
import urllib.request
from typing import Any, Callable, Iterator

import orjson
from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from collector.service import Collector
from nimtrail import config as config_mod, kafka_io
from tests.harness import Env, wait_for


@contextlib.contextmanager
def running(env: Env) -> Iterator[Collector]:
    """The collector of `env`'s config, in this process (for tests that poke its parts)."""
    collector = Collector(env.config).start()
    try:
        yield collector
    finally:
        collector.stop()


class TopicReader:
    """Everything in a topic from its beginning; `wait()` polls until a condition holds."""

    def __init__(self, bootstrap: str, topic: str):
        self.topic = topic
        kafka_io.ensure_topics(config_mod.load(env={"NIMTRAIL_KAFKA__BOOTSTRAP": bootstrap}), [topic])
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                      auto_offset_reset="earliest", max_partition_fetch_bytes=32 * 1024 * 1024,
                                      fetch_max_bytes=64 * 1024 * 1024)
        partitions = wait_for(lambda: self.consumer.partitions_for_topic(topic), 30,
                              what=f"topic {topic} to exist")
        self.consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        self.consumer.seek_to_beginning()
        self.messages: list[Any] = []

    def poll(self) -> list[Any]:
        for records in self.consumer.poll(timeout_ms=200, max_records=10_000).values():
            self.messages.extend(records)
        return self.messages

    def wait(self, condition: Callable[[list[Any]], Any], timeout: float = 30, what: str = "messages") -> Any:
        return wait_for(lambda: condition(self.poll()), timeout, interval=0.05, what=what)

    def docs(self) -> list[dict[str, Any]]:
        return [orjson.loads(m.value) for m in self.poll()]

    def close(self) -> None:
        self.consumer.close()


def headers(message: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in (message.headers or [])}


def reasons(dlq: TopicReader) -> list[str]:
    return [headers(m).get("nimtrail.reason", "") for m in dlq.poll()]


def metric(url: str, name: str, **labels: str) -> float:
    """The value of one sample on a /metrics page (0 when absent)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def counter(collector: Collector, name: str, **labels: str) -> float:
    """A sample of an in-process collector's metrics (for when /metrics needs a token or
    a client certificate); 0 when absent."""
    total = 0.0
    for family in text_string_to_metric_families(collector.metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
