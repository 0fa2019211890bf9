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

Membership: one member of the group is active and reads every input partition; others
stand by with no state (processors/membership.py). A member handed the input restores the
state from the changelog unless the one it holds is still the changelog's latest: the
changelog's end offsets are what they were after this member's own last write. The same
comparison fences a member that lost the input without knowing it yet (paused past its
session): before each state write, an end offset that moved means another member wrote,
so this one writes nothing more, commits nothing, and drops its state.
"""

from __future__ import annotations

import logging
import math
import random
import re
import threading
import time
from typing import Any, Callable, NamedTuple

from kafka.errors import (CommitFailedError, CorruptRecordError, InvalidRecordError, InvalidTimestampError,
                          KafkaConnectionError, KafkaError, MessageSizeTooLargeError, RebalanceInProgressError,
                          RecordListTooLargeError)
from kafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from kafka.structs import TopicPartition

from nimtrail import columnar, faults, heap, kafka_io, raw, records
from nimtrail.config import Config
from nimtrail.errors import NimtrailError, PermanentError
from nimtrail.kafka_io import DeadLetters, read_to_end
from nimtrail.ops import StageMetrics
from processors import normalize
from processors.membership import ActiveStandbyAssignor, Handover, group_errors
from processors.events import (AssignmentIncomplete, BatchDelivered, BecameActive, BecameStandby, ContentDropped, InputRejected, MessagesConsumed, OutputLost,
                               OutputRefused, ProduceRetried, ProducerReplaced, StateFenced, StateRestored, StateRewritten)
from processors.pipeline import Outputs, Pipeline
from processors.horizon import Horizon
from processors.state import DEPLOYMENTS_PASSED, StateStore

log = logging.getLogger(__name__)

RECORDS_PER_MESSAGE = 1000
# How often the processor checks that it reads every input partition.
ASSIGNMENT_GRACE = 10.0
# Room under Kafka's message limit for the record batch header and headers.
MAX_BATCH_BYTES = kafka_io.MAX_MESSAGE_BYTES - 64 * 1024


# Refusals of a message for what it is (its size, its bytes): sending it again cannot help,
# so it goes to the dead-letter topic with the refusal as its reason.
REFUSED = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError, CorruptRecordError,
           InvalidTimestampError)
# A message that meets another non-retriable error this many times goes there too: no
# produce error is retried forever.
MAX_FATAL_ATTEMPTS = 3


class Interrupted(NimtrailError):
    """Stopping while Kafka does not acknowledge: the input stays uncommitted for the next start."""


# The input a batch gathers from polls before it is processed (about: its last poll takes
# as many messages as fit at the size of the ones before): what max_poll_records (50)
# messages of ~100 spans weigh, the batch that setting was sized for.
BATCH_INPUT_BYTES = 2 * 1024 * 1024


# How long a batch's sends wait for Kafka's acknowledgements before they are judged
# (retried, or dead-lettered), and how often a wait that long is said.
FLUSH_TIMEOUT, FLUSH_NOTICE = 60.0, 10.0


def _input_bytes(polled: dict) -> int:
    return sum(len(m.value or b"") for messages in polled.values() for m in messages)


class Fenced(NimtrailError):
    """Another member wrote the join state: this one no longer holds the input."""


def fitting_documents(doc: dict[str, Any], items: str, limit: int = MAX_BATCH_BYTES) -> list[bytes]:
    """`doc` encoded as one or more messages under `limit`, its list `items` split in halves
    until each part fits (every item is bounded at ingest, so one always does)."""
    value = raw.encode(doc)
    if len(value) <= limit or len(doc.get(items) or ()) <= 1:
        return [value]
    half = len(doc[items]) // 2
    return (fitting_documents({**doc, items: doc[items][:half]}, items, limit)
            + fitting_documents({**doc, items: doc[items][half:]}, items, limit))


def encode_batches(kind: str, batch: list[dict[str, Any]],
                   limit: int = MAX_BATCH_BYTES) -> tuple[list[bytes], int]:
    """`batch` as audit messages each small enough for Kafka (halved until it fits), and how
    many records lost their text: one record that cannot fit alone (kept prompt or response
    text of many megabytes) goes without it; its hashes still prove what the text was."""
    value = columnar.encode_audit(kind, batch)
    if len(value) <= limit:
        return [value], 0
    if len(batch) > 1:
        half = len(batch) // 2
        (first, a), (second, b) = encode_batches(kind, batch[:half], limit), encode_batches(kind, batch[half:], limit)
        return first + second, a + b
    bare = {**batch[0], **dict.fromkeys(records.CONTENT_FIELDS & batch[0].keys())}
    return [columnar.encode_audit(kind, [bare])], 1


class StateWrite(NamedTuple):
    """One changelog's share of a batch's state write: the changed entries and the meta."""
    store: StateStore
    changes: list
    meta: dict


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
                      t.otlp_metrics: normalize.OTLP_METRICS,
                      t.observations: normalize.OBSERVATIONS}  # input topic -> what it carries
        self._ensure_topics()
        self.metrics = StageMetrics("processor")
        self.producer = kafka_io.producer(config)
        self.dead_letters = DeadLetters(self.producer, t.dlq, "processor")
        self._producer_error: KafkaError | None = None  # why the last new producer could not be made
        self.deployments = None
        # End offsets come from a client of their own that never fetches. Kafka answers one
        # connection's requests in order, so asking a consumer that has a fetch waiting at
        # the broker (the deployments topic is idle; fetch.max.wait.ms is 500 ms) queues
        # the question behind that wait: ~450 ms, once a second, on the processor's loop.
        # While the broker is away the question fails after kafka_io.REQUEST_TIMEOUT_MS.
        self.offsets = kafka_io.consumer(config, group_id=None, request_timeout_ms=kafka_io.REQUEST_TIMEOUT_MS)
        # And the changelog's, from one assigned to it (never polled either): assigning is
        # what keeps a topic in a client's metadata, without which kafka-python waits out its
        # timeout for the leaders of a changelog created a moment before.
        self._changelog = kafka_io.consumer(config, group_id=None)
        self._changelog.assign(kafka_io.partitions_of(self._changelog, self.state_topic))
        self._drop_state()  # the state is restored once the group hands this member the input
        self.assignor = self._assignor()
        self.active = False  # holds the input partitions (and a current state)
        self.handover = Handover()
        self._standing_by = False  # said so since it last held the input
        self.consumer = kafka_io.consumer(
            config, group_id=config.processor.group_id, max_poll_records=config.processor.max_poll_records,
            **kafka_io.batching(config.processor.batch_wait),
            group_instance_id=re.sub(r"[^A-Za-z0-9._-]", "-",
                                     config.processor.instance_id or config.processor.group_id),
            partition_assignment_strategy=[self.assignor],
            session_timeout_ms=round(config.processor.session_timeout * 1000),
            # (Kafka's advice: heartbeats at most a third of the session apart)
            heartbeat_interval_ms=min(3000, round(config.processor.session_timeout * 1000 / 3)))
        # Metadata for every input topic first: a leader that computes the assignment without
        # it assigns none of that topic's partitions, and a static member restarting later is
        # handed that stored assignment back (see _check_assignment).
        for topic in self.subscribed:
            kafka_io.partitions_of(self.consumer, topic)
        self.consumer.subscribe(self.subscribed, listener=self.handover)
        self._assignment_check = (time.monotonic() + ASSIGNMENT_GRACE, False)
        self._trimmer = heap.Trimmer()
        self._closed = False

    # What a subclass that splits the join changes (processors/partitioned_loop.py).
    state_topic = property(lambda self: self.config.topics.processor_state)
    subscribed = property(lambda self: sorted(self.kinds))

    def _ensure_topics(self) -> None:
        t = self.config.topics
        kafka_io.ensure_topics(self.config, [*self.kinds, t.observations, t.log_events, t.dlq,
                                             *self.audit_topics.values()],
                               compacted=[t.deployments, t.processor_state])

    def _assignor(self) -> AbstractPartitionAssignor:
        return ActiveStandbyAssignor()

    # -- start ----------------------------------------------------------------------------

    def _restore(self) -> None:
        """A new pipeline with the state the changelog holds and every deployment."""
        started = time.monotonic()
        self._drop_state()
        # Before reading: a write after this is then read or, if not, makes the state
        # look behind (never ahead) at the next comparison.
        self._state_ends = self._changelog_ends()
        entries, meta = self.state.restore()
        count = self.pipeline.joiner.restore(entries, time.time())  # taken one chunk at a time
        del entries
        # What reading the changelog back freed (its messages, the chunks decoded one at
        # a time) is ~50 MB at the default caps that a steady state never asks for again.
        heap.trim()
        StateRestored(count=count, topic=self.state.topic,
                      seconds=time.monotonic() - started).emit(self.metrics, log, count)
        self.pipeline.report_state()
        self.metrics.gauge("restore", "seconds", "How long the last start took to read the join state back"
                           ).set(time.monotonic() - started)
        self._passed = {int(p): o for p, o in (meta.get("deployments") or {}).items()}
        self._passed_dirty = False
        self.deployments = kafka_io.consumer(self.config, group_id=None)
        for message in read_to_end(self.deployments, self.config.topics.deployments):
            self._deployment(message)
        # Whatever differs from what was produced before the restart (deployments that
        # arrived meanwhile) goes out now, before any new input.
        self._deliver(self.pipeline.take())

    def _drop_state(self) -> None:
        """An empty pipeline and changelog bookkeeping, no deployments consumer."""
        self.pipeline = Pipeline(self.config.processor, self.metrics, self.config.warehouse.retention)
        self.state = StateStore(self.config)
        self.horizon = Horizon(interval=min(1.0, self.pipeline.joiner.window / 4))
        self._state_ends: dict | None = None  # the changelog's end offsets the state is current at
        if self.deployments is not None:
            self.deployments.close(autocommit=False)
            self.deployments = None

    def _changelog_ends(self) -> dict:
        return self._while_kafka_is_away("read the join state changelog's end offsets",
                                         lambda: self._changelog.end_offsets(list(self._changelog.assignment())))

    def _while_kafka_is_away(self, what: str, call: Callable[[], Any]) -> Any:
        """`call()`, again with backoff while it fails for a reason that passes (the broker
        away or electing leaders), as produce is retried; stopping raises Interrupted."""
        delay = 0.5
        while True:
            try:
                return call()
            except KafkaError as e:
                if not e.retriable:
                    raise
                log.warning("Could not %s (%r); again in %.1fs", what, e, delay)
            delay = self._pause(delay, f"stopped while the broker was away (could not {what})")

    def _pause(self, delay: float, why: str) -> float:
        """Wait `delay` seconds before trying again (Interrupted, saying `why`, if told to
        stop meanwhile); the next delay: doubled, up to 30 s, give or take a fifth."""
        if self.stop.wait(delay):
            raise Interrupted(why)
        return min(delay * 2, 30.0) * random.uniform(0.8, 1.2)

    # -- membership -----------------------------------------------------------------------

    def _assigned(self, assigned: set) -> None:
        """The group's decision, taken after the poll that brought it and before any message
        of that poll (membership.Handover): the input (restore the state unless the one held
        is current) or nothing (stand by, holding no state)."""
        if not assigned:
            if self._state_ends is not None:
                self._drop_state()
                heap.trim()
            if not self._standing_by:
                BecameStandby(group=self.config.processor.group_id).emit(self.metrics, log)
            self._standing_by = True
            self._set_active(False)
            return
        self._standing_by = False
        started = time.monotonic()
        current = self._state_ends is not None and self._changelog_ends() == self._state_ends
        try:
            if not current:
                self._restore()
        except Fenced as e:  # the member that held the input is still writing: not ours yet
            self._fenced(e)
            return
        self._set_active(True)
        BecameActive(partitions=len(assigned), restored="no" if current else "yes",
                     seconds=round(time.monotonic() - started, 3)).emit(self.metrics, log)

    def _set_active(self, active: bool) -> None:
        self.active = self.assignor.active = active  # the assignor tells the next rebalance
        self.metrics.gauge("active", "members", "1 while this processor reads the input, 0 while it stands by"
                           ).set(1 if active else 0)

    def _fenced(self, error: Fenced) -> None:
        """Another member writes the state: hold nothing, and ask the group again."""
        StateFenced(reason=str(error)).emit(self.metrics, log)
        self._drop_state()
        self._set_active(False)
        self._rejoin()

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
        with group_errors(self.config.processor, self.consumer.config['group_instance_id']):
            polled = self._poll_batch(timeout_ms)
        handed = self.handover.take()
        if handed is not None:  # the group decided again during that poll
            self._assigned(handed)
        if not self.active:
            self._check_assignment()
            return 0
        now = time.time()
        if any(tp.topic == self.config.topics.observations for tp in polled):
            self._catch_up_deployments()
        for _tp, messages in self.deployments.poll(timeout_ms=0).items():
            for message in messages:
                self._deployment(message)
        count = self._consume(polled, now)
        self._check_assignment()
        # Judge records whose join window passed only up to the time by which every input
        # is known to be read: a backlog may hold the counterpart of any of them.
        reached = self._horizon(now)
        if reached is not None:
            self.pipeline.sweep(reached)
        try:
            self._deliver(self.pipeline.take())
        except Fenced as e:
            self._fenced(e)
            return count  # uncommitted: the member that holds the input reads it again
        if polled:
            # 4. Only now is the input consumed for good.
            try:
                with group_errors(self.config.processor, self.consumer.config['group_instance_id']):
                    self._while_kafka_is_away("commit the input offsets", self.consumer.commit)
            except (CommitFailedError, RebalanceInProgressError) as e:
                # A rebalance took the partitions, or is under way (one of the batch's polls
                # began this member's rejoin): whoever holds them next, this member or
                # another, re-reads this batch, whose evidence the changelog already holds.
                log.warning("Could not commit input offsets: %s", e)
            faults.point("processor.after_commit")
            BatchDelivered(count=count).emit(self.metrics, log)
        self._trimmer.maybe()  # what evicted entries freed, back to the system
        return count

    def _poll_batch(self, timeout_ms: int) -> dict:
        """One poll, then what the consumer has fetched already, until the batch holds
        BATCH_INPUT_BYTES of input or the group decides again (the new assignment is taken
        after). max_poll_records bounds a poll by messages, and messages can be small: a
        split join's spans come one request per trace partition, a small exporter's
        requests hold a few spans. A batch's fixed costs (state write, produce, commit, and
        the warehouse's transaction for what it emits) are then paid for few events."""
        polled = self.consumer.poll(timeout_ms=timeout_ms)
        size, count = _input_bytes(polled), sum(map(len, polled.values()))
        while polled and size < BATCH_INPUT_BYTES and not self.handover.decided:
            # As many messages as would fill the batch at the size of those taken so far.
            wanted = math.ceil((BATCH_INPUT_BYTES - size) * count / max(size, 1))
            more = self.consumer.poll(timeout_ms=0, max_records=min(wanted, self.config.processor.max_poll_records))
            if not more:
                break
            for tp, messages in more.items():
                polled.setdefault(tp, []).extend(messages)
            size, count = size + _input_bytes(more), count + sum(map(len, more.values()))
        return polled

    def _consume(self, polled: dict, now: float) -> int:
        return sum(self._normalise(tp, messages, now) for tp, messages in polled.items())

    def _normalise(self, tp: TopicPartition, messages: list, now: float) -> int:
        kind = self.kinds[tp.topic]
        for message in messages:
            # The Kafka timestamp (ms) is the receive time input times are judged by:
            # stored with the message, so a replay judges them the same way.
            received = message.timestamp / 1000.0 if message.timestamp and message.timestamp > 0 else None
            self.pipeline.handle(kind, message.value or b"", now, tp.topic, received)
        MessagesConsumed(topic=tp.topic, count=len(messages)).emit(self.metrics, log, len(messages))
        return len(messages)

    def _catch_up_deployments(self, timeout: float = 5.0) -> None:
        """Observations are judged against every version registered before they were read:
        a registration committed a moment ago may not have been fetched yet."""
        try:
            ends = self._end_offsets(list(self.deployments.assignment()))
        except KafkaError as e:  # judged against what was read; the broker is away, or its metadata behind
            log.warning("Could not read the deployments topic's end offsets: %s", e)
            return
        deadline = time.monotonic() + timeout
        while any(self.deployments.position(tp) < end for tp, end in ends.items()) and time.monotonic() < deadline:
            for _tp, messages in self.deployments.poll(timeout_ms=200).items():
                for message in messages:
                    self._deployment(message)

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
        assignment = self.consumer.assignment()
        expected = {tp for topic in self.kinds for tp in kafka_io.partitions_of(self.consumer, topic)}
        missing = expected - assignment if assignment else set()  # a standby holds nothing
        if missing and missed_before:
            AssignmentIncomplete(missing=len(missing), expected=len(expected)).emit(self.metrics, log)
            self._rejoin()
        self._assignment_check = (time.monotonic() + ASSIGNMENT_GRACE, bool(missing) and not missed_before)

    def _rejoin(self) -> None:
        # kafka-python has no public call for this; the coordinator's own rejoin request is
        # what a metadata change would have triggered in the leader that assigned.
        self.consumer._coordinator.request_rejoin()  # noqa: SLF001

    def _horizon(self, now: float) -> float | None:
        watched = self._watched(now)
        if watched is None:
            return None  # not a member yet: nothing is known to be read
        partitions, position = watched
        try:
            return self.horizon.advance(now, frozenset(partitions), lambda: self._end_offsets(partitions), position)
        except KafkaError as e:  # the broker is away, or its metadata behind: settle nothing now
            log.warning("Could not read the input's end or committed offsets: %s", e)
            return None

    def _watched(self, now: float) -> tuple[list, Callable[[TopicPartition], int]] | None:
        """The partitions the horizon waits on, and how far each is read; None while this
        member holds no input. One joiner: its own input and the deployments."""
        inputs = self.consumer.assignment()
        if not inputs:
            return None
        deployments = self.deployments.assignment()
        consumer_of = {tp: self.consumer for tp in inputs} | {tp: self.deployments for tp in deployments}
        return list(consumer_of), lambda tp: consumer_of[tp].position(tp)

    def _end_offsets(self, partitions: list) -> dict:
        """End offsets of `partitions`; raises KafkaError when Kafka cannot say now."""
        try:
            return self.offsets.end_offsets(partitions)
        except KeyError:
            # kafka-python leaves out a partition whose leader this client's metadata lacks
            # (a topic it was never asked about, a partition added since) and then fails on
            # it: fetch every topic's metadata, and ask once more.
            self.offsets.topics()
        try:
            return self.offsets.end_offsets(partitions)
        except KeyError as e:
            raise KafkaError(f"no leader known for {e}") from e

    def _deliver(self, outputs: Outputs) -> None:
        # 1. and 2. Outputs produced and acknowledged (retried as a whole until they are).
        messages = self._output_messages(outputs) + self._handed_on()
        if messages:
            self._send_all(messages, "audit records")
            faults.point("processor.after_produce")
        # 3. Then the state that produced them, so a restart never skips an output.
        writes = self._state_writes()
        if not writes:
            return
        self._check_fence(writes)
        self._ensure_producer()
        partitions = len(self.producer.partitions_for(self.state_topic))
        acked: list = []
        self._send_all([Message(topic, key, value, None, partition) for w in writes
                        for topic, key, value, partition in w.store.messages(w.changes, w.meta, partitions)],
                       "join state", acked)
        if any(w.meta for w in writes):
            self._passed_dirty = False
        for w in writes:
            w.store.acknowledged()  # chunks left without a needed record: tombstoned next time
        self._state_written(writes, acked)
        faults.point("processor.after_state")

    def _handed_on(self) -> list[Message]:
        """Messages produced with the outputs besides them (none: one joiner keeps its evidence)."""
        return []

    def _state_change(self, store: StateStore, joiner: Any, meta: bool) -> StateWrite | None:
        """What `store` must write of `joiner`'s changed state (the entries it asks written
        again with them), with the deployments passed through if `meta`; None if nothing."""
        rewrite = store.sparse_values()
        changes = self.pipeline.joiner_changes(joiner, rewrite)
        if rewrite:
            StateRewritten(count=len(rewrite)).emit(self.metrics, log, len(rewrite))
        passed = ({DEPLOYMENTS_PASSED[len("meta|"):]: {str(p): o for p, o in self._passed.items()}}
                  if meta and self._passed_dirty else {})
        if changes or passed or store.waiting:
            return StateWrite(store, changes, passed)
        return None

    def _state_writes(self) -> list[StateWrite]:
        write = self._state_change(self.state, self.pipeline.joiner, meta=True)
        self.pipeline.report_state()
        return [write] if write is not None else []

    def _check_fence(self, writes: list[StateWrite]) -> None:
        if self._changelog_ends() != self._state_ends:
            raise Fenced("the join state's changelog was written by another member")

    def _state_written(self, writes: list[StateWrite], acked: list) -> None:
        # The ends after this write, as Kafka's acknowledgments place it (another member's
        # write after it then shows at the next comparison; no request needed).
        for metadata in acked:
            tp = TopicPartition(metadata.topic, metadata.partition)
            self._state_ends[tp] = max(self._state_ends.get(tp, 0), metadata.offset + 1)
        self.state.report(self.metrics)

    def _ensure_producer(self) -> None:
        while self.producer is None and not self._new_producer():
            if self.stop.wait(1.0):
                raise Interrupted("stopped while the broker was away")

    def _output_messages(self, outputs: Outputs) -> list[Message]:
        out: list[Message] = []
        for kind, batch in outputs.records.items():
            topic = self.audit_topics[kind]
            for partition, records_there in self._by_partition(kind, topic, batch):
                for start in range(0, len(records_there), RECORDS_PER_MESSAGE):
                    values, dropped = encode_batches(kind, records_there[start:start + RECORDS_PER_MESSAGE])
                    out += [Message(topic, None, value, None, partition) for value in values]
                    if dropped:
                        ContentDropped(kind=kind).emit(self.metrics, log, dropped)
        t = self.config.topics
        for doc in outputs.observations:
            key = (doc["deployment"] or doc["endpoint"] or "").encode()
            out.append(Message(t.observations, key, raw.encode(doc)))
        for doc in outputs.log_events:
            out += [Message(t.log_events, doc["source"].encode(), value) for value in fitting_documents(doc, "events")]
        for source, value, error in outputs.rejected:
            InputRejected(topic=source, reason=error.reason, detail=error.detail[:300]).emit(self.metrics, log)
            out.append(Message(source, None, value, error))
        return out

    def _by_partition(self, kind: str, topic: str, batch: list[dict[str, Any]]) -> list[tuple[int, list]]:
        """`batch` split by the audit partition each record's key places it in: every version
        of a record is then in one partition, so a reader of some of them (a warehouse
        shard) sees all of a record's versions or none."""
        count = len(self.offsets.partitions_for_topic(topic) or ()) or len(kafka_io.partitions_of(self.offsets, topic))
        if count == 1:
            return [(0, batch)]
        parts: dict[int, list] = {}
        for record in batch:
            parts.setdefault(kafka_io.partition_of(records.key_of(kind, record), count), []).append(record)
        return sorted(parts.items())

    def _send_all(self, messages: list[Message], what: str, acked: list | None = None) -> None:
        """Produce `messages` and wait until Kafka acknowledged each; only failed ones are sent
        again, with exponential backoff under a deadline that stopping interrupts.

        A message Kafka refuses for what it is (REFUSED), or that meets another non-retriable
        error MAX_FATAL_ATTEMPTS times, goes to the dead-letter topic with the refusal as its
        reason instead, and the batch goes on: nothing non-retriable loops forever."""
        delay = 0.5
        pending = list(messages)
        strikes: dict[int, int] = {}  # id(message) -> non-retriable errors it met
        while True:
            failed = self._attempt(pending, acked)
            if not failed:
                return
            if any(not e.retriable for _m, e in failed):
                # kafka-python fails every message behind a non-retriable error with that same
                # error: only each failed message alone says which one Kafka refuses.
                failed = [(m, e) for m, _e in failed for e in self._attempt_alone(m, acked)]
            pending, converted = [], 0
            for m, error in failed:
                if not error.retriable:
                    strikes[id(m)] = strikes.get(id(m), 0) + 1
                    if isinstance(error, REFUSED) or strikes[id(m)] >= MAX_FATAL_ATTEMPTS:
                        instead = self._refused(m, error)
                        pending += instead
                        converted += len(instead)
                        continue
                pending.append(m)
            if len(pending) == converted:
                delay = 0.5
                continue  # only dead letters in place of refused messages: nothing to wait for
            ProduceRetried(what=what, error=repr(failed[0][1]), delay=delay).emit(self.metrics, log)
            delay = self._pause(delay, f"stopped while Kafka did not acknowledge {what}")

    def _attempt_alone(self, m: Message, acked: list | None = None) -> list[KafkaError]:
        """Send one message by itself: [] when acknowledged, else [why not], after which a
        producer a non-retriable error stopped is retired for the next message's sake."""
        errors = [e for _m, e in self._attempt([m], acked)]
        if errors and not errors[0].retriable:
            self._replace_producer(errors[0])
        return errors[:1]

    def _attempt(self, messages: list[Message], acked: list | None = None) -> list[tuple[Message, KafkaError]]:
        """Send `messages` once; the ones Kafka did not acknowledge, with why. What Kafka
        said of each one it did (RecordMetadata) goes to `acked`, if given."""
        failed: list[tuple[Message, KafkaError]] = []
        if self.producer is None and not self._new_producer():
            return [(m, self._producer_error) for m in messages]
        futures = []
        for m in messages:
            try:
                if m.rejected is not None:
                    futures.append((m, self.dead_letters.send(m.value or b"", reason=m.rejected.reason,
                                                              detail=m.rejected.detail, source=m.topic,
                                                              wait=False)))
                else:
                    futures.append((m, self.producer.send(m.topic, key=m.key, value=m.value,
                                                          partition=m.partition)))
            except KafkaError as e:  # refused before sending (its size), or the producer stopped
                failed.append((m, e))
        self._flush(len(futures))
        for m, future in futures:
            try:
                metadata = future.get(timeout=60)
            except KafkaError as e:
                failed.append((m, e))
            else:
                if acked is not None:
                    acked.append(metadata)
        return failed

    def _flush(self, count: int) -> None:
        """Wait for Kafka to acknowledge what was sent, up to FLUSH_TIMEOUT, saying so every
        FLUSH_NOTICE seconds it has not: a broker that went away mid-batch otherwise left the
        stage silent for a minute. What became of each message its future says after."""
        deadline = time.monotonic() + FLUSH_TIMEOUT
        while True:
            try:
                self.producer.flush(timeout=FLUSH_NOTICE)
                return
            except KafkaError:
                if time.monotonic() >= deadline:
                    return
                log.warning("Could not get Kafka's acknowledgement of %d messages in %d s; waiting on",
                            count, FLUSH_NOTICE)

    def _refused(self, m: Message, error: KafkaError) -> list[Message]:
        """What to send instead of `m`, which Kafka will not take: an audit batch too large
        for the topic (a topic made with a smaller max.message.bytes) in two halves; else a
        dead letter with the refusal as its reason; for a dead letter refused in turn, the
        same without its value (its headers still say what, why and how large)."""
        if m.rejected is None:
            if isinstance(error, (MessageSizeTooLargeError, RecordListTooLargeError)) \
                    and m.topic in self.audit_topics.values():
                kind, batch = columnar.records_of(m.value or b"")
                if len(batch) > 1:
                    half = len(batch) // 2
                    return [Message(m.topic, m.key, columnar.encode_audit(kind, part), None, m.partition)
                            for part in (batch[:half], batch[half:])]
            OutputRefused(topic=m.topic, error=repr(error), size=len(m.value or b"")).emit(self.metrics, log)
            return [Message(m.topic, m.key, m.value, PermanentError("output_refused", f"{m.topic}: {error!r}"))]
        if m.value:
            detail = f"{m.rejected.detail} (the dead-letter topic refused its {len(m.value)} bytes: {error!r})"
            return [Message(m.topic, m.key, b"", PermanentError(m.rejected.reason, detail))]
        OutputLost(topic=m.topic, reason=m.rejected.reason, error=repr(error)).emit(self.metrics, log)
        return []

    def _replace_producer(self, error: KafkaError) -> None:
        """kafka-python's idempotent producer refuses every send after a non-retriable error:
        retire it. The next attempt makes a new one (or waits for the broker to make one)."""
        ProducerReplaced(error=repr(error)).emit(self.metrics, log)
        if self.producer is not None:
            try:
                self.producer.close(timeout=0)
            except KafkaError as e:  # it failed already; the new one is what matters
                log.debug("Closing the retired producer failed: %s", e)
        self.producer = None

    def _new_producer(self) -> bool:
        try:
            self.producer = kafka_io.producer(self.config)
        except KafkaError as e:  # the broker is away: retriable, whatever kafka-python calls it
            self._producer_error = KafkaConnectionError(f"no producer: {e!r}")
            return False
        self.dead_letters = DeadLetters(self.producer, self.config.topics.dlq, "processor")
        return True

    def close(self) -> None:
        """Idempotent. Uncommitted input is simply read again by the next start."""
        if self._closed:
            return
        self._closed = True
        if self.active:
            # A static member that stops does not leave the group: a restart within the
            # session gets its input back without a rebalance, and a crash is found by the
            # session timeout. A member stopping cleanly while it reads the input would keep
            # a standby waiting that long for nothing, so it leaves; kafka-python sends the
            # LeaveGroup only for a member without an instance id.
            self.consumer._coordinator.config["group_instance_id"] = None  # noqa: SLF001
        self.consumer.close(autocommit=False)
        if self.deployments is not None:
            self.deployments.close(autocommit=False)
        self.offsets.close(autocommit=False)
        self._changelog.close(autocommit=False)
        if self.producer is not None:
            self.producer.close(timeout=30)


