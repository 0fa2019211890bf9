"""The joiner's state on Kafka: a compacted changelog topic (nimtrail.processor.state).

Key = the joiner entry id (`model_call|chatcmpl-…`, `tool_action|<span id>`, ...), value =
that entry's evidence set and history (processors.join.Entry.encode), or a tombstone when
the entry left the state. Compaction keeps the latest value per key, so the topic holds
the state itself, not its history. Keys starting `meta|` hold the service's own progress
(how far the deployments topic has been passed through).

Entries are spread over the topic's partitions by CRC-32 of the key (any stable function
does: restore reads every partition), which spares the producer its pure-Python murmur2.
The service writes changed entries after the outputs derived from them are acknowledged
and before it commits its input offsets; on start, `restore()` reads the topic to its end.
"""

from __future__ import annotations

from typing import Any

import orjson

from nimtrail import kafka_io
from nimtrail.config import Config

META = "meta|"
DEPLOYMENTS_PASSED = META + "deployments"


class StateStore:
    def __init__(self, config: Config):
        self.topic = config.topics.processor_state
        self._config = config

    def restore(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        """(latest value per entry id, meta values) from the changelog."""
        consumer = kafka_io.consumer(self._config, group_id=None)
        latest: dict[str, bytes | None] = {}
        try:
            for message in kafka_io.read_to_end(consumer, self.topic):
                latest[message.key.decode()] = message.value
        finally:
            consumer.close(autocommit=False)
        entries = {k: v for k, v in latest.items() if v is not None and not k.startswith(META)}
        meta = {k[len(META):]: orjson.loads(v) for k, v in latest.items() if v is not None and k.startswith(META)}
        return entries, meta

    def messages(self, changes: list[tuple[str, bytes | None]],
                 meta: dict[str, Any]) -> list[tuple[str, bytes, bytes | None]]:
        """(topic, key, value) to produce for these changes."""
        out = [(self.topic, key.encode(), value) for key, value in changes]
        out += [(self.topic, (META + k).encode(), orjson.dumps(v)) for k, v in sorted(meta.items())]
        return out
