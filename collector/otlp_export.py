"""What OTLP/HTTP and OTLP/gRPC share: decode, set aside what the data model forbids,
forward, and build the Export*ServiceResponse (with partial success when items were set
aside). The protocol receivers only map errors to their status codes:

| error                                  | HTTP               | gRPC                |
|----------------------------------------|--------------------|---------------------|
| PermanentError (bad input, to the DLQ) | 400 (415, 413)     | INVALID_ARGUMENT    |
| BufferFull                             | 429 + Retry-After  | RESOURCE_EXHAUSTED + RetryInfo |
| other TransientError (Kafka away)      | 503 + Retry-After  | UNAVAILABLE + RetryInfo        |
"""

from __future__ import annotations

import dataclasses
import logging

from google.protobuf.message import Message

from collector import otlp_codec
from collector.auth import sender_headers
from collector.buffer import Entry
from collector.events import ItemsReceived
from collector.sink import Sink
from nimtrail.config import TopicsConfig

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
INVALID_IDS = "invalid_ids"


@dataclasses.dataclass(frozen=True)
class OtlpExport:
    sink: Sink
    topics: TopicsConfig
    # processor.partitions: more than one, and each trace's spans go to the partition of
    # the spans topic its trace id is placed in (kafka_io.co_partitioned).
    trace_partitions: int = 0

    def accept(self, signal: otlp_codec.Signal, body: bytes, *, as_json: bool, receiver: str,
               source: str, sender: str | None = None) -> Message:
        """Forward one export request; returns the response to send once it is durable.
        `sender` (who authenticated) goes with it as the Kafka header nimtrail.sender.

        Raises PermanentError for a request that can never be accepted (the caller
        dead-letters it) and TransientError when it cannot be made durable now."""
        if as_json:
            message = otlp_codec.decode_json(signal, body)
        else:
            message = otlp_codec.decode_protobuf(signal, body)
        items = otlp_codec.count_items(signal, message)
        ItemsReceived(receiver=receiver, items=items).emit(self.sink.metrics, log, items)
        rejected, rejected_request = otlp_codec.split_invalid(signal, message)
        why = ""
        if rejected:
            why = f"{rejected} {signal.name} item(s) without a valid trace or span id were rejected"
            self.sink.dead_letter(receiver, rejected_request.SerializeToString(), reason=INVALID_IDS,
                                  detail=why, source=source)
        if rejected < items:
            # Untouched protobuf is forwarded byte for byte; JSON, or a request something was
            # taken out of, is re-encoded as protobuf (the topic's one format).
            topic, headers = getattr(self.topics, signal.topic_key), sender_headers(sender)
            split = (otlp_codec.split_by_trace(message, self.trace_partitions)
                     if signal.name == "traces" and self.trace_partitions > 1 else [])
            if split:
                self.sink.forward_many(receiver, [Entry(topic, key, part, headers)
                                                  for key, part in split], {topic: items - rejected})
            else:
                payload = body if not (as_json or rejected) else message.SerializeToString()
                self.sink.forward(receiver, topic, otlp_codec.routing_key(signal, message), payload,
                                  items - rejected, headers)
        return otlp_codec.partial_success(signal, rejected, why)
