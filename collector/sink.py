"""What every receiver hands its data to: forwarding that counts what became durable
where, and the dead-letter path for input that can never be processed."""

from __future__ import annotations

import dataclasses
import logging

from collector.buffer import BufferFull
from collector.events import (DeadLetterFailed, ForwardFailed, ItemsBuffered, ItemsForwarded,
                              RequestRejected)
from collector.forward import BUFFER, Entry, Forwarder
from nimtrail.errors import PermanentError, TransientError
from nimtrail.kafka_io import dead_letter
from nimtrail.ops import StageMetrics

log = logging.getLogger(__name__)

STAGE = "collector"


def retry_reason(error: TransientError) -> str:
    return "buffer_full" if isinstance(error, BufferFull) else "kafka_unavailable"


@dataclasses.dataclass(frozen=True)
class Sink:
    forwarder: Forwarder
    dlq_topic: str
    metrics: StageMetrics

    def forward(self, receiver: str, topic: str, key: bytes | None, value: bytes, items: int,
                headers: tuple[tuple[str, bytes], ...] = ()) -> str:
        """Make one message durable and count its items; raises like Forwarder.send."""
        return self.forward_many(receiver, [Entry(topic, key or None, value, headers)], {topic: items})

    def forward_many(self, receiver: str, entries: list[Entry], items: dict[str, int]) -> str:
        """Make several messages durable; `items` counts what they carry, per topic."""
        try:
            outcome = self.forwarder.send_many(entries)
        except TransientError as e:
            ForwardFailed(receiver=receiver, reason=retry_reason(e), detail=str(e)).emit(self.metrics, log)
            raise
        event = ItemsBuffered if outcome == BUFFER else ItemsForwarded
        for topic, count in items.items():
            event(receiver=receiver, topic=topic, items=count).emit(self.metrics, log, count)
        return outcome

    def dead_letter(self, receiver: str, value: bytes, *, reason: str, detail: str, source: str) -> None:
        """Count the rejection and make the input durable in the dead-letter topic; raises
        TransientError when it cannot (the caller must not move past the input then)."""
        RequestRejected(receiver=receiver, reason=reason, detail=detail).emit(self.metrics, log)
        value, headers = dead_letter(value, reason=reason, detail=detail, stage=STAGE)
        key = (source or receiver).encode()
        self.forwarder.send_many([Entry(self.dlq_topic, key, value, tuple(headers))])

    def reject(self, receiver: str, error: PermanentError, value: bytes, source: str) -> None:
        """Dead-letter a request whose client is told it failed: a failure to write the
        dead letter is counted and logged, not raised (the client already has its 4xx)."""
        try:
            self.dead_letter(receiver, value, reason=error.reason, detail=error.detail, source=source)
        except (TransientError, PermanentError) as e:
            DeadLetterFailed(receiver=receiver, detail=str(e)).emit(self.metrics, log)
