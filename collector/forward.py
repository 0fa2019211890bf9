"""Forwarding to Kafka, with the on-disk buffer as the fallback.

`send()` returns only once the data is durable: acknowledged by Kafka (acks=all), or, when
Kafka cannot take it within `ack_timeout`, appended to the on-disk buffer and fsynced. A
receiver acknowledges its client only after `send()` returned, so nothing acknowledged is
lost. Otherwise it raises:
- PermanentError("too_large_for_kafka"): the message can never fit in a Kafka message;
- BufferFull (transient): Kafka is unavailable and the buffer has no room (429 /
  RESOURCE_EXHAUSTED, with a retry hint);
- KafkaUnavailable / BufferUnavailable (transient): Kafka is unavailable and there is no
  buffer, or it cannot be written (503 / UNAVAILABLE).

Routing: a request goes to Kafka directly unless Kafka is known to be away (the newest
send with an outcome was not acknowledged, see kafka_health.py); then it goes straight to
the buffer instead of waiting out `ack_timeout`. The drainer is the probe: the first
acknowledgement it sees in an attempt begun after the last failure (of its own send, or a
late one of a buffered entry's direct send) sends new requests to Kafka directly again,
while the drainer empties the buffer beside them. Order across messages is
not kept while the buffer drains (a buffered request may reach Kafka after a newer one);
each message is whole, and reaches Kafka once while the process lives: a direct send and a
buffered entry are different messages (for a late direct send, see below).

kafka-python's idempotent producer stops for good after a non-retriable error on any
record (a message over the broker's limit, a denied topic): every later send fails. The
forwarder then drops that producer and makes a new one from the factory it was given, so
one bad message cannot stop the collector.

A direct send that timed out may still reach Kafka later (the producer keeps retrying
until its delivery timeout). Its future is kept beside the buffered copy, and the drainer
sends the copy only if that future failed: no duplicate while the process lives. A crash
between Kafka's acknowledgement and the buffer's head moving re-sends that entry once
(at-least-once; downstream keys make replays harmless).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, Iterable

from kafka import KafkaProducer
from kafka.errors import (CorruptRecordError, InvalidRecordError, KafkaError, KafkaTimeoutError,
                          MessageSizeTooLargeError, RecordListTooLargeError)

from collector.buffer import BufferFull, BufferUnavailable, DiskBuffer, Entry, Position
from collector.events import BufferDrained, RequestRejected
from collector.kafka_health import KafkaHealth
from nimtrail.errors import PermanentError, TransientError
from nimtrail.kafka_io import MAX_MESSAGE_BYTES, dead_letter
from nimtrail.ops import StageMetrics

log = logging.getLogger(__name__)

KAFKA = "kafka"
BUFFER = "buffer"
# Room for the record batch header, key and headers within the broker's message limit.
MAX_VALUE_BYTES = MAX_MESSAGE_BYTES - 64 * 1024
# Errors about the record itself: retrying cannot help, so a buffered record that gets one
# goes to the dead-letter topic instead of blocking everything queued behind it.
POISON = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError, CorruptRecordError)

__all__ = ["Forwarder", "KafkaUnavailable", "BufferFull", "BufferUnavailable", "Entry", "KAFKA", "BUFFER"]


class KafkaUnavailable(TransientError):
    """Kafka did not acknowledge in time and there is no buffer to fall back on (503)."""


class Forwarder:
    def __init__(self, producer_factory: Callable[[], KafkaProducer], buffer: DiskBuffer | None,
                 metrics: StageMetrics, *, ack_timeout: float = 5.0, delivery_timeout: float = 30.0,
                 dlq_topic: str = ""):
        self._factory = producer_factory
        self._producer: KafkaProducer | None = producer_factory()  # fail fast at start
        self._producer_lock = threading.Lock()
        self._dlq_topic = dlq_topic
        self._suspect: Position | None = None  # a buffered entry the broker refused once
        self._closed = False
        self._buffer = buffer
        self._metrics = metrics
        self._ack_timeout = ack_timeout
        self._delivery_timeout = delivery_timeout
        self._lock = threading.Lock()
        self._pending: dict[Position, object] = {}  # buffered entries whose direct send is in flight
        self._health = KafkaHealth()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._drainer: threading.Thread | None = None
        self._gauge = metrics.gauge("buffer", "bytes", "Bytes waiting in the on-disk buffer for Kafka")
        self._gauge.set(buffer.used_bytes if buffer else 0)

    # ---- sending ----

    def send(self, topic: str, key: bytes | None, value: bytes,
             headers: Iterable[tuple[str, bytes]] | None = None) -> str:
        """Make one message durable; returns KAFKA or BUFFER (see the module docstring)."""
        return self.send_many([Entry(topic, key or None, value, tuple(headers or ()))])

    def send_many(self, entries: list[Entry]) -> str:
        """Make several messages durable; BUFFER if any of them went to the buffer."""
        for entry in entries:
            if len(entry.value) > MAX_VALUE_BYTES:
                raise PermanentError("too_large_for_kafka", f"{len(entry.value)} bytes exceed the "
                                                            f"{MAX_VALUE_BYTES}-byte Kafka message limit")
        if self._buffer is not None and not self._health.up:
            return self._to_buffer([(e, None) for e in entries])  # Kafka is away: no waiting for it
        attempt = self._health.attempt()
        try:
            producer = self._current()
        except KafkaUnavailable:
            self._kafka_failed(attempt)
            return self._to_buffer([(e, None) for e in entries])
        futures = []
        for entry in entries:
            try:
                futures.append(producer.send(entry.topic, key=entry.key, value=entry.value,
                                             headers=list(entry.headers)))
            except MessageSizeTooLargeError as e:  # the client's own size check: nothing was sent
                raise PermanentError("too_large_for_kafka", str(e)) from e
            except KafkaError as e:  # metadata unavailable within max_block_ms
                log.debug("Kafka did not take a send: %s", e)
                self._check(producer, e)
                break
        deadline = time.monotonic() + self._ack_timeout
        unacked: list[tuple[Entry, object]] = []
        for entry, future in zip(entries, futures):
            try:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
            except KafkaError as e:
                # Also a record the broker refuses for good goes to the buffer: the failure
                # may be another record's (a stopped producer fails all it holds), and the
                # drainer tells the two apart by sending it alone (then to the DLQ).
                self._check(producer, e)
                unacked.append((entry, None if future.is_done else future))
        unacked += [(e, None) for e in entries[len(futures):]]
        if not unacked:
            self._kafka_acknowledged(attempt)
            return KAFKA
        self._kafka_failed(attempt)
        return self._to_buffer(unacked)

    def _to_buffer(self, items: list[tuple[Entry, object]]) -> str:
        if self._buffer is None:
            raise KafkaUnavailable("Kafka did not acknowledge in time and the collector has no buffer")
        with self._lock:
            if self._closed:
                raise KafkaUnavailable("the collector is stopping")
            ends = self._buffer.append([e for e, _ in items])
            # Registered under the lock the drainer takes to look futures up, so the drainer
            # never sees this entry without its future (and sends it a second time).
            for (_, future), end in zip(items, ends):
                if future is not None:
                    self._pending[end] = future
        self._gauge.set(self._buffer.used_bytes)
        self._wake.set()
        return BUFFER

    def _kafka_failed(self, attempt: int) -> None:
        if self._health.failed(attempt) and self._buffer is not None:
            log.warning("Kafka is not acknowledging writes: buffering on disk in %s", self._buffer.dir)

    def _kafka_acknowledged(self, attempt: int) -> None:
        if self._health.acknowledged(attempt) and self._buffer is not None:
            log.info("Kafka acknowledges writes again: new data goes to Kafka directly while the "
                     "buffer drains (%s bytes waiting)", self._buffer.used_bytes)

    @property
    def buffering(self) -> bool:
        """Whether acknowledged data is waiting on disk for Kafka."""
        return self._buffer is not None and not self._buffer.empty

    @property
    def kafka_up(self) -> bool:
        """Whether new data goes to Kafka directly (else straight to the buffer)."""
        return self._health.up

    # ---- the producer ----

    def _current(self) -> KafkaProducer:
        """The producer to send with; a new one if the last failed for good."""
        with self._producer_lock:
            if self._closed:
                raise KafkaUnavailable("the collector is stopping")
            if self._producer is None:
                try:
                    self._producer = self._factory()
                except KafkaError as e:
                    raise KafkaUnavailable(f"cannot connect a new Kafka producer: {e}") from e
                log.info("A new Kafka producer replaces the one that failed")
            return self._producer

    def _check(self, producer: KafkaProducer, error: KafkaError) -> None:
        """After a non-retriable error kafka-python's idempotent producer refuses every later
        send: retire it (its in-flight sends fail, and are buffered or retried by clients)."""
        if error.retriable:
            return
        with self._producer_lock:
            if self._producer is not producer:
                return
            self._producer = None
        log.warning("Kafka producer stopped after %r; replacing it", error)
        threading.Thread(target=producer.close, kwargs={"timeout": 0}, name="collector-producer-close",
                         daemon=True).start()

    # ---- draining ----

    def start(self) -> "Forwarder":
        if self._buffer is not None and self._drainer is None:
            self._drainer = threading.Thread(target=self._drain_loop, name="collector-drainer", daemon=True)
            self._drainer.start()
        return self

    def _drain_loop(self) -> None:
        backoff = 0.2
        draining = not self._buffer.empty
        while not self._stop.is_set():
            if self._buffer.empty:
                if draining:
                    draining = False
                    log.info("The collector buffer is drained")
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            draining = True
            try:
                drained_all = self._drain_once()
            except Exception:  # noqa: BLE001 - the drainer must outlive any one failure
                log.exception("Unexpected error while draining the collector buffer")
                drained_all = False
            if drained_all:
                backoff = 0.2
            else:
                # Kafka is still away: exponential backoff with jitter, interrupted by stop.
                self._stop.wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, 5.0)

    def _drain_once(self) -> bool:
        """Send the oldest buffered entries in order; move the head past what Kafka took.

        An entry the broker refused for good is sent again alone (another record's refusal
        stops the producer and fails everything it held); refused again, it goes to the DLQ."""
        items = self._buffer.read(max_entries=500)
        if not items:
            return True
        if items[0][1] == self._suspect:
            items = items[:1]
        wait = self._delivery_timeout + 5
        with self._lock:  # see _to_buffer: an entry read is registered by now
            pendings = {end: self._pending.get(end) for _entry, end in items}
        attempt = self._health.attempt()
        try:
            producer = self._current()
        except KafkaUnavailable as e:
            log.info("Kafka is not taking buffered data yet: %s", e)
            self._kafka_failed(attempt)
            return False
        futures: list[object] = []
        acknowledged = False  # Kafka acknowledged something since this attempt began
        for entry, end in items:
            if self._stop.is_set():
                break  # what is not sent stays buffered for the next start
            pending = pendings[end]
            if pending is not None:
                try:
                    self._await(pending, wait)
                    futures.append(None)  # the direct send got through after all
                    acknowledged = True  # an acknowledgement that came while this attempt waited
                    continue
                except KafkaError:
                    pass  # it did not: send the buffered copy
            if not entry.topic:  # a corrupt record the buffer skipped (logged there)
                futures.append(None)
                continue
            try:
                futures.append(producer.send(entry.topic, key=entry.key, value=entry.value,
                                             headers=list(entry.headers)))
            except POISON as e:
                futures.append(e)
            except KafkaError as e:
                log.info("Kafka is not taking buffered data yet: %s", e)
                self._check(producer, e)
                self._kafka_failed(attempt)
                break
        done: Position | None = None
        per_topic: dict[str, int] = {}
        for (entry, end), future in zip(items, futures):
            try:
                if isinstance(future, Exception):
                    raise future
                if future is not None:
                    self._await(future, wait)
                    acknowledged = True
            except POISON as e:
                self._check(producer, e)
                if end != self._suspect or len(items) != 1:
                    self._suspect = end  # retry it alone before judging it
                    break
                if not self._dead_letter(entry, e):
                    break
                acknowledged = True
            except KafkaError as e:
                log.info("Kafka is not taking buffered data yet: %s", e)
                self._check(producer, e)
                self._kafka_failed(attempt)
                break
            done = end
            per_topic[entry.topic] = per_topic.get(entry.topic, 0) + 1
        if acknowledged:
            self._kafka_acknowledged(attempt)  # before the head moves: new requests go direct
        if done is not None:
            # Commit order: Kafka acknowledged everything up to `done` (above), then the head moves.
            self._buffer.commit(done)
            with self._lock:
                for pos in [p for p in self._pending if p <= done]:
                    del self._pending[pos]
            self._gauge.set(self._buffer.used_bytes)
            for topic, count in per_topic.items():
                BufferDrained(topic=topic or "(corrupt)", messages=count).emit(self._metrics, log, count)
        return len(futures) == len(items) and done == items[-1][1]

    def _dead_letter(self, entry: Entry, error: KafkaError) -> bool:
        """Move a record Kafka refuses for good to the dead-letter topic; True once durable."""
        if not self._dlq_topic:
            return False
        detail = f"Kafka refused a buffered message for {entry.topic}: {error!r}"
        RequestRejected(receiver="buffer", reason="kafka_refused", detail=detail).emit(self._metrics, log)
        value, headers = dead_letter(entry.value, reason="kafka_refused", detail=detail, stage="collector")
        try:
            producer = self._current()
            producer.send(self._dlq_topic, key=entry.key, value=value, headers=headers).get(timeout=30)
            return True
        except KafkaUnavailable as e:
            log.error("Could not dead-letter a refused buffered message, it stays buffered: %s", e)
            return False
        except KafkaError as e:
            self._check(producer, e)
            log.error("Could not dead-letter a refused buffered message, it stays buffered: %s", e)
            return False

    def _await(self, future, timeout: float) -> None:
        """future.get(), given up early (KafkaTimeoutError) when the forwarder stops."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                future.get(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
                return
            except KafkaTimeoutError:
                if future.is_done or self._stop.is_set() or time.monotonic() >= deadline:
                    raise

    def close(self, timeout: float = 30.0) -> None:
        """Stop draining and close the producer. Whatever is still buffered stays on disk and
        is sent after the next start; nothing acknowledged is only in memory."""
        self._stop.set()
        self._wake.set()
        if self._drainer is not None:
            self._drainer.join(timeout=timeout)
            self._drainer = None
        # Every send waited for Kafka or the buffer before its client was answered, so what
        # the producer still holds is also on disk: no need to wait long for it.
        with self._producer_lock, self._lock:
            self._closed = True  # a late request is told to retry, not half-served
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=timeout if self._health.up else 2.0)
        if self._buffer is not None:
            self._buffer.close()
