"""The processor's consume loop: Kafka in, the pure pipeline, Kafka out — exactly once.

Delivery (the order matters; every step is numbered where it happens):
  1. produce the outputs of a polled batch: audit records, observations, log events and
     dead letters;
  2. wait until Kafka has acknowledged every one of them (acks=all), producing the whole
     batch again on failure — duplicates of a (key, version) are no-ops downstream;
  3. produce the changed join-state entries to the changelog (packed into chunks, with
     the tombstones of chunks an earlier, acknowledged write left without a needed
     record) and wait for those too;
  4. only then commit the input offsets.
A crash before 3 restores the previous state and re-processes the batch, emitting the same
records with the same versions. A crash between 3 and 4 re-reads input whose evidence the
state already holds: nothing new comes out, and everything it caused was already
acknowledged in 2. Nothing is lost, and the warehouse's rule (keep the highest version;
same version = no-op) makes the repeats harmless.

The deployments topic is read whole at start (every processor needs every deployment,
like a global table) and followed afterwards; how far it has been passed through to
nimtrail.audit.deployments is kept in the changelog, so a restart re-passes nothing.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from typing import Any, NamedTuple

from kafka.errors import CommitFailedError, KafkaError

from nimtrail import faults, kafka_io, raw, records
from nimtrail.config import Config
from nimtrail.errors import PermanentError
from nimtrail.kafka_io import DeadLetters, read_to_end
from nimtrail.ops import StageMetrics
from processors import normalize
from processors.events import (AssignmentIncomplete, ContentDropped, InputRejected, MessagesConsumed, ProduceRetried,
                               ProducerReplaced, StateRestored)
from processors.pipeline import Outputs, Pipeline
from processors.horizon import Horizon
from processors.state import DEPLOYMENTS_PASSED, StateStore

log = logging.getLogger(__name__)

RECORDS_PER_MESSAGE = 1000
# How often the processor checks that it reads every input partition.
ASSIGNMENT_GRACE = 10.0
# Room under Kafka's message limit for the record batch header and headers.
MAX_BATCH_BYTES = kafka_io.MAX_MESSAGE_BYTES - 64 * 1024


def encode_batches(kind: str, batch: list[dict[str, Any]],
                   limit: int = MAX_BATCH_BYTES) -> tuple[list[bytes], int]:
    """`batch` as audit messages each small enough for Kafka (halved until it fits), and how
    many records lost their text: one record that cannot fit alone (kept prompt or response
    text of many megabytes) goes without it; its hashes still prove what the text was."""
    value = records.encode_batch(kind, batch)
    if len(value) <= limit:
        return [value], 0
    if len(batch) > 1:
        half = len(batch) // 2
        (first, a), (second, b) = encode_batches(kind, batch[:half], limit), encode_batches(kind, batch[half:], limit)
        return first + second, a + b
    bare = {**batch[0], **dict.fromkeys(records.CONTENT_FIELDS & batch[0].keys())}
    return [records.encode_batch(kind, [bare])], 1


class Message(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes | None
    rejected: PermanentError | None = None  # set for a dead letter (topic = where it came from)
    partition: int | None = None  # None: the producer's partitioner decides


class Processor:
    def __init__(self, config: Config, stop: threading.Event | None = None):
        self.config = config
        self.stop = stop or threading.Event()
        t = config.topics
        self.audit_topics = t.audit()
        self.kinds = {t.otlp_spans: normalize.SPANS, t.nimlogs: normalize.NIMLOGS,
                      t.scrapes: normalize.SCRAPES, t.otlp_logs: normalize.OTLP_LOGS,
                      t.otlp_metrics: normalize.OTLP_METRICS}  # input topic -> what it carries
        kafka_io.ensure_topics(config, [*self.kinds, t.observations, t.log_events, t.dlq,
                                        *self.audit_topics.values()],
                               compacted=[t.deployments, t.processor_state])
        self.metrics = StageMetrics("processor")
        self.producer = kafka_io.producer(config)
        self.dead_letters = DeadLetters(self.producer, t.dlq, "processor")
        self.pipeline = Pipeline(config.processor, self.metrics, config.warehouse.retention)
        self.state = StateStore(config)
        self._restore()
        self.consumer = kafka_io.consumer(
            config, group_id=config.processor.group_id, max_poll_records=config.processor.max_poll_records,
            group_instance_id=re.sub(r"[^A-Za-z0-9._-]", "-",
                                     config.processor.instance_id or config.processor.group_id))
        # Metadata for every input topic first: a leader that computes the assignment without
        # it assigns none of that topic's partitions, and a static member restarting later is
        # handed that stored assignment back (see _check_assignment).
        for topic in self.kinds:
            kafka_io.partitions_of(self.consumer, topic)
        self.consumer.subscribe(sorted(self.kinds))
        self._assignment_check = (time.monotonic() + ASSIGNMENT_GRACE, False)
        self.horizon = Horizon(interval=min(1.0, self.pipeline.joiner.window / 4))
        self._closed = False

    # -- start ----------------------------------------------------------------------------

    def _restore(self) -> None:
        started = time.monotonic()
        entries, meta = self.state.restore()
        self.pipeline.joiner.restore(entries, time.time())
        StateRestored(count=len(entries), topic=self.state.topic,
                      seconds=time.monotonic() - started).emit(self.metrics, log, len(entries))
        self._passed = {int(p): o for p, o in (meta.get("deployments") or {}).items()}
        self._passed_dirty = False
        self.deployments = kafka_io.consumer(self.config, group_id=None)
        for message in read_to_end(self.deployments, self.config.topics.deployments):
            self._deployment(message)
        # Whatever differs from what was produced before the restart (deployments that
        # arrived meanwhile) goes out now, before any new input.
        self._deliver(self.pipeline.take())

    def _deployment(self, message: Any) -> None:
        if message.value is None:
            return  # a tombstone: versions are immutable, nothing to undo
        passed = message.offset < self._passed.get(message.partition, 0)
        self.pipeline.deployment(message.value, passthrough=not passed, source=message.topic)
        self._passed[message.partition] = max(self._passed.get(message.partition, 0), message.offset + 1)
        self._passed_dirty = True

    # -- the loop -------------------------------------------------------------------------

    def run_once(self, timeout_ms: int = 500) -> int:
        """Process one polled batch end to end; returns the number of input messages."""
        polled = self.consumer.poll(timeout_ms=timeout_ms)
        now = time.time()
        for _tp, messages in self.deployments.poll(timeout_ms=0).items():
            for message in messages:
                self._deployment(message)
        count = 0
        for tp, messages in polled.items():
            kind = self.kinds[tp.topic]
            for message in messages:
                # The Kafka timestamp (ms) is the receive time input times are judged by:
                # stored with the message, so a replay judges them the same way.
                received = message.timestamp / 1000.0 if message.timestamp and message.timestamp > 0 else None
                self.pipeline.handle(kind, message.value or b"", now, tp.topic, received)
            count += len(messages)
            MessagesConsumed(topic=tp.topic, count=len(messages)).emit(self.metrics, log, len(messages))
        self._check_assignment()
        # Judge records whose join window passed only up to the time by which every input
        # is known to be read: a backlog may hold the counterpart of any of them.
        reached = self._horizon(now)
        if reached is not None:
            self.pipeline.sweep(reached)
        self._deliver(self.pipeline.take())
        if polled:
            # 4. Only now is the input consumed for good.
            try:
                self.consumer.commit()
            except CommitFailedError as e:
                # A rebalance took the partitions: their next owner re-reads this batch,
                # whose evidence the changelog already holds.
                log.warning("Could not commit input offsets: %s", e)
            faults.point("processor.after_commit")
        return count

    def _check_assignment(self) -> None:
        """One processor reads every input partition (the join needs all of a call's
        evidence in one process). A static member that rejoins after a crash gets the
        assignment stored for its instance id back without a rebalance, even when that
        assignment was computed before a topic's partitions were known or before partitions
        were added: it would never read them. Missing partitions seen on two checks in a row
        make it rejoin as the known leader, which the coordinator answers with a rebalance."""
        due, missed_before = self._assignment_check
        if time.monotonic() < due:
            return
        expected = {tp for topic in self.kinds for tp in kafka_io.partitions_of(self.consumer, topic)}
        missing = expected - self.consumer.assignment()
        if missing and missed_before:
            AssignmentIncomplete(missing=len(missing), expected=len(expected)).emit(self.metrics, log)
            # kafka-python has no public call for this; the coordinator's own rejoin request
            # is what a metadata change would have triggered in the leader that assigned.
            self.consumer._coordinator.request_rejoin()  # noqa: SLF001
        self._assignment_check = (time.monotonic() + ASSIGNMENT_GRACE, bool(missing) and not missed_before)

    def _horizon(self, now: float) -> float | None:
        inputs = self.consumer.assignment()
        if not inputs:
            return None  # not a member yet: nothing is known to be read
        deployments = self.deployments.assignment()
        consumer_of = {tp: self.consumer for tp in inputs} | {tp: self.deployments for tp in deployments}

        def end_offsets():
            return {**self.consumer.end_offsets(list(inputs)), **self.deployments.end_offsets(list(deployments))}

        try:
            return self.horizon.advance(now, frozenset(consumer_of), end_offsets,
                                        lambda tp: consumer_of[tp].position(tp))
        except KafkaError as e:  # the broker is away: settle nothing until it is back
            log.warning("Could not read the input's end offsets: %s", e)
            return None

    def _deliver(self, outputs: Outputs) -> None:
        # 1. and 2. Outputs produced and acknowledged (retried as a whole until they are).
        messages = self._output_messages(outputs)
        if messages:
            self._send_all(messages, "audit records")
            faults.point("processor.after_produce")
        # 3. Then the state that produced them, so a restart never skips an output.
        changes = self.pipeline.joiner.state_changes()
        meta = {}
        if self._passed_dirty:
            meta[DEPLOYMENTS_PASSED[len("meta|"):]] = {str(p): o for p, o in self._passed.items()}
            self._passed_dirty = False
        if changes or meta or self.state.waiting:
            partitions = len(self.producer.partitions_for(self.state.topic))
            self._send_all([Message(topic, key, value, None, partition)
                            for topic, key, value, partition in self.state.messages(changes, meta, partitions)],
                           "join state")
            self.state.acknowledged()  # chunks left without a needed record: tombstoned next time
            faults.point("processor.after_state")

    def _output_messages(self, outputs: Outputs) -> list[Message]:
        out: list[Message] = []
        for kind, batch in outputs.records.items():
            for start in range(0, len(batch), RECORDS_PER_MESSAGE):
                values, dropped = encode_batches(kind, batch[start:start + RECORDS_PER_MESSAGE])
                out += [Message(self.audit_topics[kind], None, value) for value in values]
                if dropped:
                    ContentDropped(kind=kind).emit(self.metrics, log, dropped)
        t = self.config.topics
        for doc in outputs.observations:
            key = (doc["deployment"] or doc["endpoint"] or "").encode()
            out.append(Message(t.observations, key, raw.encode(doc)))
        for doc in outputs.log_events:
            out.append(Message(t.log_events, doc["source"].encode(), raw.encode(doc)))
        for source, value, error in outputs.rejected:
            InputRejected(topic=source, reason=error.reason, detail=error.detail[:300]).emit(self.metrics, log)
            out.append(Message(source, None, value, error))
        return out

    def _send_all(self, messages: list[Message], what: str) -> None:
        delay = 0.5
        while True:
            futures = []
            try:
                for m in messages:
                    if m.rejected is not None:
                        futures.append(self.dead_letters.send(m.value or b"", reason=m.rejected.reason,
                                                              detail=m.rejected.detail, source=m.topic,
                                                              wait=False))
                    else:
                        futures.append(self.producer.send(m.topic, key=m.key, value=m.value,
                                                          partition=m.partition))
                self.producer.flush()
                for future in futures:
                    future.get(timeout=60)
                return
            except KafkaError as e:
                if not e.retriable:
                    self._replace_producer(e)
                ProduceRetried(what=what, error=repr(e), delay=delay).emit(self.metrics, log)
                if self.stop.wait(delay):
                    raise  # stopping: the input stays uncommitted, the restart redoes it
                delay = min(delay * 2, 30.0) * random.uniform(0.8, 1.2)

    def _replace_producer(self, error: KafkaError) -> None:
        """kafka-python's idempotent producer refuses every send after a non-retriable error:
        retire it. The batch is then produced again in whole by the new one."""
        ProducerReplaced(error=repr(error)).emit(self.metrics, log)
        self.producer.close(timeout=0)
        self.producer = kafka_io.producer(self.config)
        self.dead_letters = DeadLetters(self.producer, self.config.topics.dlq, "processor")

    def close(self) -> None:
        """Idempotent. Uncommitted input is simply read again by the next start."""
        if self._closed:
            return
        self._closed = True
        self.consumer.close(autocommit=False)
        self.deployments.close(autocommit=False)
        self.producer.close(timeout=30)

