"""The processor stage: consume raw topics, normalise, join, produce audit records.

Delivery: input offsets are committed only after every output (and every dead letter) is
acknowledged by Kafka. A crash in between re-processes the batch; the re-emitted records
carry the same versions, which the warehouse treats as no-ops — nothing lost, nothing
doubled.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import Any

from google.protobuf.message import DecodeError

from nimtrail import faults, kafka_io, records
from nimtrail.config import Config
from nimtrail.kafka_io import DeadLetters
from nimtrail.ops import StageMetrics, serve_ops
from processors.events import InputRejected, MessagesConsumed, RecordsEmitted
from processors.join import Joiner
from processors.spans import evidence_from_request

log = logging.getLogger(__name__)

RECORDS_PER_MESSAGE = 1000


class Processor:
    def __init__(self, config: Config):
        self.config = config
        t = config.topics
        self.audit_topics = t.audit()
        kafka_io.ensure_topics(config, [t.otlp_spans, t.dlq, *self.audit_topics.values()])
        self.metrics = StageMetrics("processor")
        self.producer = kafka_io.producer(config)
        self.dead_letters = DeadLetters(self.producer, t.dlq, "processor")
        self.consumer = kafka_io.consumer(config, group_id=config.processor.group_id,
                                          max_poll_records=config.processor.max_poll_records)
        self.consumer.subscribe([t.otlp_spans])
        self.joiner = Joiner()

    def run_once(self, timeout_ms: int = 500) -> int:
        """Process one polled batch end to end; returns the number of input messages."""
        polled = self.consumer.poll(timeout_ms=timeout_ms)
        if not polled:
            return 0
        evidence = []
        futures = []
        count = 0
        for partition, messages in polled.items():
            for message in messages:
                count += 1
                try:
                    evidence.extend(evidence_from_request(message.value or b""))
                except (DecodeError, ValueError) as e:
                    InputRejected(topic=partition.topic, reason="malformed_protobuf",
                                  detail=str(e)).emit(self.metrics, log)
                    self.dead_letters.send(message.value or b"", reason="malformed_protobuf",
                                           detail=str(e), source=partition.topic, wait=False)
            MessagesConsumed(topic=partition.topic, count=len(messages)).emit(
                self.metrics, log, len(messages))
        by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for kind, record in self.joiner.add(evidence):
            by_kind[kind].append(record)
        for kind, batch in by_kind.items():
            for start in range(0, len(batch), RECORDS_PER_MESSAGE):
                chunk = batch[start:start + RECORDS_PER_MESSAGE]
                futures.append(self.producer.send(self.audit_topics[kind],
                                                  value=records.encode_batch(kind, chunk)))
            RecordsEmitted(kind=kind, count=len(batch)).emit(self.metrics, log, len(batch))
        # 1. Every output and dead letter is acknowledged (acks=all) before going on;
        #    .get() raises if a send failed, and the batch is then re-processed after restart.
        self.producer.flush()
        for future in futures:
            future.get(timeout=60)
        faults.point("processor.after_produce")
        # 2. Only now is the input consumed for good.
        self.consumer.commit()
        faults.point("processor.after_commit")
        return count

    def close(self) -> None:
        self.consumer.close(autocommit=False)
        self.producer.close(timeout=30)


def run(config: Config, stop: threading.Event) -> None:
    processor = Processor(config)
    ops = serve_ops((config.processor.ops.host, config.processor.ops.port), processor.metrics,
                    lambda: not stop.is_set())
    log.info("Processor consuming %s", config.topics.otlp_spans)
    try:
        while not stop.is_set():
            processor.run_once()
    finally:
        ops.shutdown()
        processor.close()
