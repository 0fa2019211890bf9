"""Kafka clients configured the way every stage needs them.

Producers are idempotent with acks=all, so a retried send never duplicates and an
acknowledged message survives the broker's restart; they compress and batch because a
Python client pays per message, not per byte.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
import zlib
from pathlib import Path
from typing import Iterable

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import (AuthorizationError, KafkaError, SaslAuthenticationFailedError,
                          TopicAlreadyExistsError)
from kafka.partitioner import Partitioner

from nimtrail import raw_retention
from nimtrail.config import Config, KafkaConfig
from nimtrail.errors import ConfigError, NimtrailError
from nimtrail.records import now_iso

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # matches the bundled broker's message.max.bytes
# What one fetch may bring back, per partition and in all. The broker still returns a first
# message larger than these whole (KIP-74), so they bound what a consumer holds fetched
# ahead of its polls, not the messages it can read. At the message limit (16 MiB a
# partition, 64 MiB a fetch) a stage behind its input could hold that much fetched ahead;
# over a backlog of 1,800 OTLP messages the processor's peak was ~10 MB lower at these.
# How long a request waits for the broker's answer before it fails: kafka-python's 30 s
# default holds a stage's loop (and a stop asked for meanwhile) that long while the broker
# is away. Producers, the admin client and the processor's end-offsets client use this.
REQUEST_TIMEOUT_MS = 10_000
FETCH_PARTITION_BYTES = 1024 * 1024
FETCH_BYTES = 8 * 1024 * 1024


class KafkaAuthError(NimtrailError):
    """The broker refused nimtrail's credentials or TLS handshake: retrying cannot help."""


def _password(kafka: KafkaConfig) -> str:
    if kafka.sasl_password_file:
        try:
            return Path(kafka.sasl_password_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"kafka.sasl_password_file: cannot read {kafka.sasl_password_file} "
                              f"({e.strerror})") from e
    return kafka.sasl_password


def security_settings(kafka: KafkaConfig) -> dict:
    """kafka-python settings for TLS and SASL, from the kafka section of the config."""
    settings: dict = {"security_protocol": kafka.security_protocol}
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        settings.update(ssl_cafile=kafka.ssl_cafile or None, ssl_certfile=kafka.ssl_certfile or None,
                        ssl_keyfile=kafka.ssl_keyfile or None,
                        ssl_check_hostname=kafka.ssl_check_hostname)
    if kafka.security_protocol.startswith("SASL_"):
        settings.update(sasl_mechanism=kafka.sasl_mechanism,
                        sasl_plain_username=kafka.sasl_username,
                        sasl_plain_password=_password(kafka))
    return settings


def _common(config: Config) -> dict:
    # kafka-python backs off up to 30 s between reconnects (the Java client: 1 s): after a
    # broker restart every stage then sat idle for up to half a minute, all of it lost
    # freshness. 2 s keeps a down broker from being hammered and brings the pipeline back
    # within seconds of it.
    return {"bootstrap_servers": config.kafka.bootstrap.split(","),
            "client_id": config.kafka.client_id, "reconnect_backoff_max_ms": 2000,
            **security_settings(config.kafka)}


class _RefusalCatcher(logging.Handler):
    """kafka-python retries a refused login until its bootstrap deadline and then reports
    only a timeout; the refusal itself is passed to its log calls. Catching it there (by
    exception type) turns a silent 30-second hang into an immediate, clear error."""

    REFUSALS = (SaslAuthenticationFailedError, AuthorizationError)

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.refusal: Exception | None = None

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            # A failed TLS handshake arrives wrapped in KafkaConnectionError; the ssl error
            # is its context.
            if isinstance(arg, self.REFUSALS) or (
                    isinstance(arg, Exception) and isinstance(arg.__context__, ssl.SSLError)):
                self.refusal = arg


def admin_client(config: Config, timeout: float = 60.0) -> KafkaAdminClient:
    """An admin client, waiting up to `timeout` for the broker; a refused login or TLS
    handshake raises KafkaAuthError at once instead of waiting."""
    deadline = time.monotonic() + timeout
    catcher = _RefusalCatcher()
    kafka_log = logging.getLogger("kafka")
    kafka_log.addHandler(catcher)
    try:
        while True:
            try:
                return KafkaAdminClient(**_common(config), request_timeout_ms=REQUEST_TIMEOUT_MS,
                                        bootstrap_timeout_ms=5_000)
            except KafkaError as e:
                if catcher.refusal is not None:
                    user = config.kafka.sasl_username
                    raise KafkaAuthError(
                        f"Kafka at {config.kafka.bootstrap} refused the connection"
                        + (f" for user {user!r} ({config.kafka.sasl_mechanism})" if user else "")
                        + f": {catcher.refusal}. Check kafka.sasl_* and kafka.ssl_* settings."
                    ) from e
                if time.monotonic() > deadline:
                    raise
                log.info("Waiting for Kafka at %s: %s", config.kafka.bootstrap, e)
                time.sleep(1)
    finally:
        kafka_log.removeHandler(catcher)


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
    return KafkaProducer(**{**_common(config), **settings})


# What a poll waits for, up to its stage's batch_wait, before it returns what there is.
BATCH_BYTES = 1024 * 1024


def batching(wait: float) -> dict[str, int]:
    """Consumer settings that let the broker hold a fetch until BATCH_BYTES are there or
    `wait` seconds passed (Kafka's fetch.min.bytes / fetch.max.wait.ms); {} for no wait."""
    if wait <= 0:
        return {}
    return {"fetch_min_bytes": BATCH_BYTES, "fetch_max_wait_ms": max(1, round(wait * 1000))}


def consumer(config: Config, *, group_id: str | None, **overrides) -> KafkaConsumer:
    settings = dict(
        group_id=group_id,
        enable_auto_commit=False,  # offsets are committed only after outputs are durable
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
        fetch_max_bytes=FETCH_BYTES,
        isolation_level="read_committed",
    )
    settings.update(overrides)
    return KafkaConsumer(**{**_common(config), **settings})


def ensure_topics(config: Config, names: Iterable[str], *, compacted: Iterable[str] = (),
                  timeout: float = 60.0, partitions: dict[str, int] | None = None) -> None:
    """Create the topics a stage reads or writes, if missing; waits for the broker.

    The raw topics that carry content get the retention the content policy asks for
    (nimtrail.raw_retention), when created and, if it differs, on every later start."""
    compacted = set(compacted)
    wanted = sorted(set(names) | compacted)
    deadline = time.monotonic() + timeout
    settings = {name: s for name, s in raw_retention.topic_settings(config).items() if name in wanted}
    admin = admin_client(config, timeout)
    try:
        existing = set(admin.list_topics())
        # Messages up to MAX_MESSAGE_BYTES on every topic, whatever the cluster's default.
        size = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
        counts = {**co_partitioned(config), **(partitions or {})}
        new = [
            NewTopic(name, counts.get(name, config.kafka.partitions), config.kafka.replication_factor,
                     topic_configs={**size, **settings.get(name, {}),
                                    **({"cleanup.policy": "compact"} if name in compacted else {})})
            for name in wanted if name not in existing
        ]
        if new:
            try:
                admin.create_topics(new, timeout_ms=30_000)
            except TopicAlreadyExistsError:
                pass  # another stage created it first
        _wait_for_metadata(admin, wanted, deadline)
        _apply_settings(admin, {n: s for n, s in settings.items() if n in existing})
    finally:
        admin.close()


def _apply_settings(admin: KafkaAdminClient, settings: dict[str, dict[str, str]]) -> None:
    """Bring existing topics to `settings` (incrementally: other topic configs stay)."""
    if not settings:
        return
    current = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name, list(wanted)) for name, wanted in settings.items()],
        config_filter="all").get("topic", {})
    changes = [ConfigResource(ConfigResourceType.TOPIC, name, dict(wanted))
               for name, wanted in settings.items()
               if any((current.get(name, {}).get(k) or {}).get("value") != v for k, v in wanted.items())]
    if changes:
        result = admin.alter_configs(changes).get("topic", {})
        failed = {name: outcome for name, outcome in result.items() if outcome != "OK"}
        if failed:
            raise KafkaError(f"could not set the retention of the raw topics: {failed}")
        for change in changes:
            log.info("Set %s on topic %s", ", ".join(f"{k}={v}" for k, v in change.configs.items()),
                     change.name)


def _wait_for_metadata(admin: KafkaAdminClient, names: list[str], deadline: float) -> None:
    while True:
        described = admin.describe_topics(names)
        if all(t.get("error_code", 0) == 0 and t.get("partitions") for t in described):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not ready: {names}")
        time.sleep(0.2)


def dead_letter(value: bytes, *, reason: str, detail: str, stage: str) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The value and headers of a dead-letter message (see DeadLetters).

    The reason, stage and time travel as Kafka headers so the value stays byte-for-byte
    what arrived (it can be replayed after a parser fix).
    """
    headers = [
        ("nimtrail.reason", reason.encode()),
        ("nimtrail.detail", detail[:2000].encode()),
        ("nimtrail.stage", stage.encode()),
        ("nimtrail.time", now_iso().encode()),
    ]
    # Keep the DLQ message under the broker's limit; an oversized body is cut and
    # the header says so, because the reason matters more than the bytes.
    if len(value) > MAX_MESSAGE_BYTES - 64 * 1024:
        headers.append(("nimtrail.truncated_from", str(len(value)).encode()))
        value = value[: 1024 * 1024]
    return value, headers


def partition_of(key: str | bytes, partitions: int) -> int:
    """The partition a record's key places it in, among `partitions`: every version of a
    record lands in the same one, so a reader of some partitions sees all of a record or
    none of it. CRC-32, not Kafka's murmur2, which kafka-python computes in Python at
    ~14 µs a key (a tenth of the processor's whole cost per event)."""
    return zlib.crc32(key.encode() if isinstance(key, str) else key) % partitions


def co_partitioned(config: Config) -> dict[str, int]:
    """Raw topics partitioned as the evidence topic is, when the join is split: the spans
    topic has `processor.partitions` partitions and the collector places each trace's spans
    in partition_of(trace id), so the member holding evidence partition p (Kafka's range
    assignor hands out equal-sized topics alike) also reads the spans placed there, and
    joins them without a pass through the evidence topic (docs/scale.md)."""
    if config.processor.partitions <= 0:
        return {}
    return {config.topics.otlp_spans: config.processor.partitions}


class KeyPlacement(Partitioner):
    """The producer's partitioner placing a keyed message as `partition_of` places its key
    (CRC-32); unkeyed, anywhere."""

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        ids = sorted(cluster.partitions_for_topic(topic))
        if serialized_key is None:
            return random.choice(ids)
        return ids[partition_of(serialized_key, len(ids))]


def partitions_of(consumer: KafkaConsumer, topic: str, timeout: float = 30.0) -> list[TopicPartition]:
    """Every partition of `topic`, once the consumer's metadata knows them (TimeoutError if
    it does not in time)."""
    deadline = time.monotonic() + timeout
    while (ids := consumer.partitions_for_topic(topic)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no metadata for topic {topic}")
        time.sleep(0.2)
    return [TopicPartition(topic, p) for p in sorted(ids)]


def read_to_end(consumer: KafkaConsumer, topic: str, timeout: float = 120.0, partitions: set[int] | None = None):
    """Yield every message of `topic` (of its `partitions` only, if given) below its end
    offsets as of now (assign, no group).

    The consumer's position passes an end once the last data message, or the transaction
    marker after it, has been fetched. TimeoutError when the topic has no metadata or
    cannot be read to its end in time.
    """
    wanted, partitions = partitions, partitions_of(consumer, topic, timeout=min(timeout, 30))
    if wanted is not None:
        partitions = [tp for tp in partitions if tp.partition in wanted]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    end = consumer.end_offsets(partitions)
    deadline = time.monotonic() + timeout
    while any(consumer.position(tp) < end[tp] for tp in partitions):
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {topic} to its end took longer than {timeout:.0f}s")
        for tp, messages in consumer.poll(timeout_ms=500).items():
            yield from (m for m in messages if m.offset < end[tp])


class DeadLetters:
    """Writes bad input, untouched, to the dead-letter topic with why it was rejected."""

    def __init__(self, producer: KafkaProducer, topic: str, stage: str):
        self._producer = producer
        self._topic = topic
        self._stage = stage

    def send(self, value: bytes, *, reason: str, detail: str = "", source: str = "",
             wait: bool = True):
        """Send one dead letter; returns the send future (already resolved when `wait`)."""
        value, headers = dead_letter(value, reason=reason, detail=detail, stage=self._stage)
        future = self._producer.send(self._topic, key=(source or self._stage).encode(),
                                     value=value, headers=headers)
        if wait:
            future.get(timeout=60)
        return future
