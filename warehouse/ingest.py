"""Consuming the audit topics into the store, exactly once.

The warehouse assigns itself every partition of the audit topics and keeps its position
in DuckDB, in the same transaction as the rows (no consumer group, no Kafka commits): on
restart it seeks to what the store says it has, so a crash at any point neither skips nor
repeats a batch.
"""

from __future__ import annotations

import gc
import logging
from collections import defaultdict


from nimtrail import kafka_io, records
from nimtrail.config import Config
from nimtrail.kafka_io import DeadLetters
from nimtrail.ops import StageMetrics
from warehouse.events import MessageRejected, RowsWritten
from warehouse.store import Store

log = logging.getLogger(__name__)


class BatchWriter:
    """One poll's audit messages into the store: decode, convert, write with offsets.
    No Kafka here, so the benchmark drives exactly what the service does."""

    def __init__(self, store: Store, metrics: StageMetrics, dead_letters: DeadLetters):
        self.store = store
        self.metrics = metrics
        self.dead_letters = dead_letters

    def write(self, messages: list[tuple[str, int, int, bytes | None]]) -> int:
        """Decode one poll's messages (topic, partition, offset, value) and write them with
        the offsets they advance in one transaction; returns the batches written."""
        # A poll decodes into hundreds of thousands of short-lived objects without cycles:
        # the cyclic collector would walk them (and everything long-lived) again and again
        # for nothing. It runs once the poll is written.
        gc.disable()
        try:
            return self._write(messages)
        finally:
            gc.enable()

    def _write(self, messages: list[tuple[str, int, int, bytes | None]]) -> int:
        decoded: list[tuple[str, int, bytes, str, list[dict]]] = []
        offsets: dict[tuple[str, int], int] = {}
        for topic, partition, offset, value in messages:
            offsets[(topic, partition)] = offset + 1
            try:
                kind, recs = records.decode_batch(value or b"")
            except ValueError as e:
                self._reject(topic, value or b"", "malformed_audit_message", str(e))
                continue
            decoded.append((topic, offset, value, kind, recs))
        frames = self._frames(decoded)
        self.store.write(frames, [(t, p, o) for (t, p), o in offsets.items()])
        for kind, frame in frames.items():
            RowsWritten(kind=kind, count=frame.height).emit(self.metrics, log, frame.height)
        return len(decoded)

    def _frames(self, decoded):
        batches: dict[str, list[dict]] = defaultdict(list)
        for _topic, _offset, _value, kind, recs in decoded:
            batches[kind].extend(recs)
        try:
            return self.store.frames(batches)
        except Exception:  # noqa: BLE001 - find the bad message(s) below, one at a time
            pass
        batches = defaultdict(list)
        for topic, _offset, value, kind, recs in decoded:
            try:
                self.store.frames({kind: recs})
            except Exception as e:  # noqa: BLE001 - any conversion error is the input's fault
                self._reject(topic, value, "invalid_record", f"{type(e).__name__}: {e}")
                continue
            batches[kind].extend(recs)
        return self.store.frames(batches)

    def _reject(self, topic: str, value: bytes, reason: str, detail: str) -> None:
        MessageRejected(topic=topic, reason=reason, detail=detail[:300]).emit(self.metrics, log)
        # Durable in the dead-letter topic before the offset that skips it is committed.
        self.dead_letters.send(value, reason=reason, detail=detail, source=topic, wait=True)


class Ingest:
    def __init__(self, config: Config, store: Store, metrics: StageMetrics,
                 dead_letters: DeadLetters):
        self.store = store
        self.writer = BatchWriter(store, metrics, dead_letters)
        topics = sorted(set(config.topics.audit().values()))
        self.consumer = kafka_io.consumer(config, group_id=None,
                                          max_poll_records=config.warehouse.max_poll_records)
        partitions = [tp for topic in topics for tp in kafka_io.partitions_of(self.consumer, topic)]
        self.consumer.assign(partitions)
        stored = store.offsets()
        for tp in partitions:
            if (tp.topic, tp.partition) in stored:
                self.consumer.seek(tp, stored[(tp.topic, tp.partition)])
            else:
                self.consumer.seek_to_beginning(tp)

    def run_once(self, timeout_ms: int = 500) -> int:
        polled = self.consumer.poll(timeout_ms=timeout_ms)
        if not polled:
            return 0
        return self.writer.write([(tp.topic, tp.partition, m.offset, m.value)
                                  for tp, messages in polled.items() for m in messages])

    def close(self) -> None:
        self.consumer.close(autocommit=False)
