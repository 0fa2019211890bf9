"""Kafka clients configured the way every stage needs them.

Producers are idempotent with acks=all, so a retried send never duplicates and an
acknowledged message survives the broker's restart; they compress and batch because a
Python client pays per message, not per byte.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from nimtrail.config import Config
from nimtrail.records import now_iso

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # matches the bundled broker's message.max.bytes


def _common(config: Config) -> dict:
    return {"bootstrap_servers": config.kafka.bootstrap.split(","),
            "client_id": config.kafka.client_id}


def producer(config: Config, **overrides) -> KafkaProducer:
    compression = None if config.kafka.compression == "none" else config.kafka.compression
    settings = dict(
        acks="all",
        enable_idempotence=True,
        compression_type=compression,
        linger_ms=5,
        batch_size=1024 * 1024,
        max_request_size=MAX_MESSAGE_BYTES,
        delivery_timeout_ms=120_000,
    )
    settings.update(overrides)
    return KafkaProducer(**_common(config), **settings)


def consumer(config: Config, *, group_id: str | None, **overrides) -> KafkaConsumer:
    settings = dict(
        group_id=group_id,
        enable_auto_commit=False,  # offsets are committed only after outputs are durable
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        fetch_max_bytes=4 * MAX_MESSAGE_BYTES,
        isolation_level="read_committed",
    )
    settings.update(overrides)
    return KafkaConsumer(**_common(config), **settings)


def ensure_topics(config: Config, names: Iterable[str], *, compacted: Iterable[str] = (),
                  timeout: float = 60.0) -> None:
    """Create the topics a stage reads or writes, if missing; waits for the broker."""
    compacted = set(compacted)
    wanted = sorted(set(names) | compacted)
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(**_common(config), request_timeout_ms=10_000)
            break
        except KafkaError as e:
            if time.monotonic() > deadline:
                raise
            log.info("Waiting for Kafka at %s: %s", config.kafka.bootstrap, e)
            time.sleep(1)
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(name, config.kafka.partitions, 1,
                     topic_configs={"cleanup.policy": "compact"} if name in compacted else {})
            for name in wanted if name not in existing
        ]
        if new:
            try:
                admin.create_topics(new, timeout_ms=30_000)
            except TopicAlreadyExistsError:
                pass  # another stage created it first
        _wait_for_metadata(admin, wanted, deadline)
    finally:
        admin.close()


def _wait_for_metadata(admin: KafkaAdminClient, names: list[str], deadline: float) -> None:
    while True:
        described = admin.describe_topics(names)
        if all(t.get("error_code", 0) == 0 and t.get("partitions") for t in described):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not ready: {names}")
        time.sleep(0.2)


class DeadLetters:
    """Writes bad input, untouched, to the dead-letter topic with why it was rejected.

    The reason, stage and time travel as Kafka headers so the value stays byte-for-byte
    what arrived (it can be replayed after a parser fix).
    """

    def __init__(self, producer: KafkaProducer, topic: str, stage: str):
        self._producer = producer
        self._topic = topic
        self._stage = stage

    def send(self, value: bytes, *, reason: str, detail: str = "", source: str = "",
             wait: bool = True):
        """Send one dead letter; returns the send future (already resolved when `wait`)."""
        headers = [
            ("nimtrail.reason", reason.encode()),
            ("nimtrail.detail", detail[:2000].encode()),
            ("nimtrail.stage", self._stage.encode()),
            ("nimtrail.time", now_iso().encode()),
        ]
        # Keep the DLQ message under the broker's limit; an oversized body is cut and
        # the header says so, because the reason matters more than the bytes.
        if len(value) > MAX_MESSAGE_BYTES - 64 * 1024:
            headers.append(("nimtrail.truncated_from", str(len(value)).encode()))
            value = value[: 1024 * 1024]
        future = self._producer.send(self._topic, key=(source or self._stage).encode(),
                                     value=value, headers=headers)
        if wait:
            future.get(timeout=60)
        return future
