"""Consuming the audit topics into the store, exactly once.

The warehouse assigns itself every partition of the audit topics (a shard: those it owns,
warehouse/shards.py) and keeps its position
in DuckDB, in the same transaction as the rows (no consumer group, no Kafka commits): on
restart it seeks to what the store says it has, so a crash at any point neither skips nor
repeats a batch.
"""

from __future__ import annotations

import gc
import logging
from collections import defaultdict
from dataclasses import dataclass

import duckdb
import polars as pl
import pyarrow as pa

from nimtrail import columnar, kafka_io
from nimtrail.config import Config
from nimtrail.errors import PermanentError
from nimtrail.kafka_io import DeadLetters
from nimtrail.ops import StageMetrics
from warehouse import shards
from warehouse.events import MessageRejected, RowsWritten
from warehouse.store import Store

log = logging.getLogger(__name__)


# What a message's own content makes the store refuse, so that writing it again cannot
# succeed: DuckDB's constraints (a null key or version), conversions and ranges, text it
# will not take, and the Python values the columns become on the way (a year past 9999
# parses but has no Python datetime). Anything else (I/O, memory, a commit that failed)
# is the store's or the machine's and stops the stage: Kafka still has the messages.
REFUSED_FOR_CONTENT = (duckdb.IntegrityError, duckdb.DataError, duckdb.InvalidInputException,
                       ValueError, TypeError, OverflowError, pl.exceptions.PolarsError)


@dataclass(frozen=True)
class Polled:
    """One polled audit message and what it decoded to (no records: it was dead-lettered)."""
    topic: str
    partition: int
    offset: int
    value: bytes
    kind: str | None
    batch: list[dict] | pa.Table  # records (a JSON batch) or columns (nimtrail.columnar)


class BatchWriter:
    """One poll's audit messages into the store: decode, convert, write with offsets.
    No Kafka here, so the benchmark drives exactly what the service does."""

    def __init__(self, store: Store, metrics: StageMetrics, dead_letters: DeadLetters):
        self.store = store
        self.metrics = metrics
        self.dead_letters = dead_letters

    def write(self, messages: list[tuple[str, int, int, bytes | None]]) -> int:
        """Decode one poll's messages (topic, partition, offset, value) and write them with
        the offsets they advance; returns the batches written."""
        # A poll decodes into hundreds of thousands of short-lived objects without cycles:
        # the cyclic collector would walk them (and everything long-lived) again and again
        # for nothing. It runs once the poll is written.
        gc.disable()
        try:
            return self._write_run(self._decode(messages))
        finally:
            gc.enable()

    def _decode(self, messages: list[tuple[str, int, int, bytes | None]]) -> list[Polled]:
        polled = []
        for topic, partition, offset, value in messages:
            value = value or b""
            try:
                kind, batch = columnar.decode_any(value)
            except ValueError as e:
                self._reject(topic, value, "malformed_audit_message", str(e))
                kind, batch = None, []  # its offset still advances with the others
            polled.append(Polled(topic, partition, offset, value, kind, batch))
        return polled

    def _write_run(self, run: list[Polled]) -> int:
        """Write a run of consecutive polled messages and the offsets they advance in one
        transaction; returns the batches written.

        A run the conversion or the store refuses for its content is halved and each half
        written on its own, first to last, down to the one message that cannot be
        written: that one goes to the dead-letter topic and its offset is stored. Each
        half commits its rows with its own offsets, and a run is a prefix of every
        partition's messages in it, so a crash between halves repeats and skips nothing.
        One bad message among n costs about 2·log2(n) attempts."""
        try:
            frames = self.store.frames_of(_batches(run))
        except Exception as e:  # noqa: BLE001 - any conversion error is the input's fault
            return self._split(run, "invalid_record", e)
        try:
            self.store.write(frames, _offsets(run))
        except REFUSED_FOR_CONTENT as e:
            return self._split(run, "unwritable_record", e)
        for kind, frame in frames.items():
            RowsWritten(kind=kind, count=frame.height).emit(self.metrics, log, frame.height)
        return sum(1 for m in run if m.kind is not None)

    def _split(self, run: list[Polled], reason: str, error: Exception) -> int:
        if len(run) > 1:
            half = len(run) // 2
            return self._write_run(run[:half]) + self._write_run(run[half:])
        message = run[0]
        self._reject(message.topic, message.value, reason, f"{type(error).__name__}: {error}")
        self.store.write({}, _offsets(run))
        return 0

    def _reject(self, topic: str, value: bytes, reason: str, detail: str) -> None:
        MessageRejected(topic=topic, reason=reason, detail=detail[:300]).emit(self.metrics, log)
        # Durable in the dead-letter topic before the offset that skips it is committed.
        self.dead_letters.send(value, reason=reason, detail=detail, source=topic, wait=True)


def _batches(run: list[Polled]) -> dict[str, list[list[dict] | pa.Table]]:
    """Each kind's batches in the run, in order."""
    batches: dict[str, list[list[dict] | pa.Table]] = defaultdict(list)
    for message in run:
        if message.kind is not None and len(message.batch):
            batches[message.kind].append(message.batch)
    return batches


def _offsets(run: list[Polled]) -> list[tuple[str, int, int]]:
    """The next offset of each partition after the run (messages come in offset order)."""
    offsets = {(m.topic, m.partition): m.offset + 1 for m in run}
    return [(topic, partition, offset) for (topic, partition), offset in offsets.items()]


class Ingest:
    def __init__(self, config: Config, store: Store, metrics: StageMetrics,
                 dead_letters: DeadLetters):
        self.store = store
        self.writer = BatchWriter(store, metrics, dead_letters)
        topics = sorted(set(config.topics.audit().values()))
        self.consumer = kafka_io.consumer(config, group_id=None,
                                          max_poll_records=config.warehouse.max_poll_records,
                                          **kafka_io.batching(config.warehouse.batch_wait))
        partitions = [tp for topic in topics for tp in kafka_io.partitions_of(self.consumer, topic)
                      if shards.owns(config, tp.topic, tp.partition)]
        if not partitions:
            log.warning("Warehouse %s owns none of the audit topics' partitions (fewer partitions than "
                        "shards): it writes nothing", shards.name(config))
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
        try:
            return self.writer.write([(tp.topic, tp.partition, m.offset, m.value)
                                      for tp, messages in polled.items() for m in messages])
        except duckdb.OutOfMemoryException as e:
            # Not the messages' fault (Kafka keeps them; a restart resumes at the stored
            # offsets): the store outgrew warehouse.memory_limit. Say so, not a traceback.
            raise PermanentError(
                f"DuckDB ran out of warehouse.memory_limit while writing ({e}). The store's "
                "primary-key indexes take about 100 bytes per stored row: raise "
                "warehouse.memory_limit, or keep fewer rows (retention)") from e

    def close(self) -> None:
        self.consumer.close(autocommit=False)
