"""Forwarding to Kafka: a send returns only once the broker has acknowledged it (acks=all),
so a receiver never acknowledges its client for data that is not durable."""

from __future__ import annotations

from kafka import KafkaProducer
from kafka.errors import KafkaError

from nimtrail.errors import TransientError


class Forwarder:
    def __init__(self, producer: KafkaProducer, ack_timeout: float = 30.0):
        self._producer = producer
        self._ack_timeout = ack_timeout

    def send(self, topic: str, key: bytes | None, value: bytes,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        """Block until `value` is durable in `topic`; TransientError when it is not."""
        try:
            future = self._producer.send(topic, key=key or None, value=value, headers=headers or [])
            future.get(timeout=self._ack_timeout)
        except KafkaError as e:
            raise TransientError(f"Kafka did not acknowledge the write to {topic}: {e}") from e

    def close(self, timeout: float = 30.0) -> None:
        self._producer.flush(timeout=timeout)
        self._producer.close(timeout=timeout)
