"""The compacted deployments topic: reading every version, and publishing new ones.

Key "<deployment_id>@<version>", value `records.encode_batch("deployment", [record])`
(see nimtrail/raw.py). Versions are immutable, so compaction keeps every one of them.

Registration is read-decide-write, and two registrations running at once must not both
write "version 2". The writer is a transactional producer whose transactional id belongs
to the topic: `open()` (init_transactions) fences any other registration in progress
before the topic is read, and a fenced registration fails at commit instead of writing.
Its records are committed in one transaction, so several deployments from one manifest
appear together or not at all; readers use read_committed.
"""

from __future__ import annotations

import logging
from typing import Any

from kafka.errors import InvalidProducerEpochError, KafkaError, ProducerFencedError

from nimtrail import kafka_io, records
from nimtrail.config import Config
from nimtrail.errors import NimtrailError, TransientError

log = logging.getLogger(__name__)


class TopicError(TransientError):
    """The deployments topic could not be read or written right now."""


def key_of(record: dict[str, Any]) -> bytes:
    return f"{record['deployment_id']}@{record['version']}".encode()


def encode(record: dict[str, Any]) -> bytes:
    return records.encode_batch("deployment", [record])


def decode(key: bytes | None, value: bytes | None) -> dict[str, Any] | None:
    """The record a message carries; None for a tombstone. ValueError when malformed."""
    if value is None:
        return None
    kind, batch = records.decode_batch(value)
    if kind != "deployment" or len(batch) != 1:
        raise ValueError(f"expected one deployment record, got {len(batch)} {kind} record(s)")
    record = batch[0]
    if not isinstance(record.get("deployment_id"), str) or not isinstance(record.get("version"), int):
        raise ValueError("the record lacks deployment_id or an integer version")
    if key is not None and key != key_of(record):
        raise ValueError(f"key {key!r} does not match the record ({key_of(record)!r})")
    return record


def ensure(config: Config, timeout: float = 30.0) -> None:
    """Create the topic (compacted) if missing. Every command calls this first: the broker
    auto-creates topics on first use, and an auto-created topic would not be compacted."""
    try:
        kafka_io.ensure_topics(config, [], compacted=[config.topics.deployments], timeout=timeout)
    except (KafkaError, TimeoutError) as e:
        raise TopicError(f"cannot reach Kafka at {config.kafka.bootstrap} to use topic "
                         f"{config.topics.deployments}: {e}") from e


def read_all(config: Config, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Every version on the topic, read from the beginning to the end offsets as of now.

    A later message with the same key replaces an earlier one (compaction's view); a
    tombstone removes the key. Malformed messages are skipped with a warning.
    """
    topic = config.topics.deployments
    try:
        consumer = kafka_io.consumer(config, group_id=None, enable_auto_commit=False)
    except KafkaError as e:
        raise TopicError(f"cannot read topic {topic}: {e}") from e
    try:
        by_key: dict[bytes, dict[str, Any]] = {}
        for message in kafka_io.read_to_end(consumer, topic, timeout):
            try:
                record = decode(message.key, message.value)
            except ValueError as e:
                log.warning("Skipped a malformed message at %s[%s]@%s: %s",
                            topic, message.partition, message.offset, e)
                continue
            key = message.key or (key_of(record) if record else b"")
            if record is None:
                by_key.pop(key, None)
            else:
                by_key[key] = record
        return sorted(by_key.values(), key=lambda r: (r["deployment_id"], r["version"]))
    except (KafkaError, TimeoutError) as e:
        raise TopicError(f"cannot read topic {topic}: {e}") from e
    finally:
        consumer.close()


class ConcurrentRegistration(NimtrailError):
    """Another registration took over the topic while this one was deciding; retry."""


_FENCED = (ProducerFencedError, InvalidProducerEpochError)


def _fenced(producer: Any, error: Exception) -> bool:
    """Was this producer fenced by a newer one with the same transactional id?

    kafka-python raises the fencing error itself from commit, but a generic KafkaError
    ("... in an error state") from begin/send once the transaction manager has failed; the
    manager keeps the typed cause.
    """
    if isinstance(error, _FENCED):
        return True
    manager = getattr(producer, "_transaction_manager", None)
    return isinstance(getattr(manager, "last_error", None), _FENCED)


class Writer:
    """Publishes new versions atomically; open it before reading what to publish."""

    def __init__(self, config: Config):
        self.config = config
        self.topic = config.topics.deployments
        self._producer = None

    def open(self) -> "Writer":
        try:
            self._producer = kafka_io.producer(
                self.config, transactional_id=f"nimtrail-deployments-register:{self.topic}",
                linger_ms=0)
            self._producer.init_transactions()  # fences any registration still in flight
        except KafkaError as e:
            self.close()
            raise TopicError(f"cannot open a transaction on {self.topic}: {e}") from e
        return self

    def publish(self, new_records: list[dict[str, Any]]) -> None:
        """Write every record in one transaction: all become visible, or none."""
        if not new_records:
            return
        producer = self._producer
        assert producer is not None, "open() first"
        try:
            producer.begin_transaction()
            for record in new_records:
                producer.send(self.topic, key=key_of(record), value=encode(record))
            producer.flush()
            producer.commit_transaction()
        except KafkaError as e:
            if _fenced(producer, e):
                raise ConcurrentRegistration(
                    "another registration of deployments started while this one was running; "
                    "nothing was written, run the command again") from e
            raise TopicError(f"cannot write to {self.topic}: {e}") from e

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)
            self._producer = None

    def __enter__(self) -> "Writer":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
