"""The joiner's state on Kafka: a compacted changelog topic (nimtrail.processor.state).

The joiner's changed entries (processors.join.Entry.encode; None when an entry left the
state) are packed many to a message, a *chunk* keyed `chunk|<sequence>`, all on partition
0 so that the log orders them; processors/chunks.py keeps which chunk holds the latest
record of each entry and tombstones a chunk once none does. Compaction therefore still
leaves the state itself on the topic, not its history, at a few messages per batch instead
of one per changed entry. Keys starting `meta|` hold the service's own progress (how far
the deployments topic has been passed through), one key each.

Any other key is the older layout, one entry per key spread over the partitions by CRC-32
of the key: it is still read (as one-entry chunks older than every real chunk), and each
such key is tombstoned once the entry it holds was written in a chunk or left the state.

The service writes the state after the outputs derived from it are acknowledged and before
it commits its input offsets, then calls `acknowledged()`; on start, `restore()` sets the
topic's compaction settings (`COMPACTION`) and reads it to its end.
"""

from __future__ import annotations

import zlib
from typing import Any, Iterable, Iterator

import orjson
from kafka.admin import ConfigResource, ConfigResourceType

from nimtrail import kafka_io
from nimtrail.config import Config
from nimtrail.ops import StageMetrics
from processors.chunks import META, Chunks, is_chunk
from processors.forgotten import PIECE

DEPLOYMENTS_PASSED = META + "deployments"

# The broker compacts only closed segments, and by default closes one at 1 GiB or after 7
# days: for this topic that is never, so every chunk ever written stayed, and a restart read
# all of them. Closing a segment a minute and cleaning once a tenth of the log is dirty (or
# at the latest 5 minutes after a write) keeps it near the live state. A tombstone is kept
# an hour: far longer than a restore takes to read past it (docs/processors.md, "State").
COMPACTION = {
    "segment.ms": str(60_000),
    "segment.bytes": str(64 * 1024 * 1024),
    "min.cleanable.dirty.ratio": "0.1",
    "max.compaction.lag.ms": str(300_000),
    "delete.retention.ms": str(3_600_000),
}


def read_partitions(config: Config, topic: str, partitions: Iterable[int] | None) -> dict[int | None, list[Any]]:
    """The messages of `topic` to its end, by partition (`partitions` only, if given; all
    under None when not), with one consumer: a start restoring several evidence
    partitions reads them together."""
    consumer = kafka_io.consumer(config, group_id=None)
    wanted = None if partitions is None else set(partitions)
    out: dict[int | None, list[Any]] = {}
    try:
        for message in kafka_io.read_to_end(consumer, topic, partitions=wanted):
            out.setdefault(None if wanted is None else message.partition, []).append(message)
    finally:
        consumer.close(autocommit=False)
    return out


class StateStore:
    def __init__(self, config: Config, partition: int | None = None):
        """The one joiner's changelog; or, given `partition`, the changelog partition of
        that evidence partition's joiner (processor.partitions): everything it writes and
        reads is in that one partition of the evidence state topic."""
        self.topic = config.topics.processor_state if partition is None else config.topics.processor_evidence_state
        self.partition = partition
        self._config = config
        self.chunks = Chunks()

    def tune_compaction(self) -> None:
        """Set COMPACTION on the topic, whether this processor created it or an older one
        did (an incremental change: the topic's other settings stay)."""
        admin = kafka_io.admin_client(self._config)
        try:
            admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, self.topic, COMPACTION)])
        finally:
            admin.close()

    def restore(self, messages: Iterable[Any] | None = None) -> tuple[Iterator[tuple[str, bytes | dict]], dict[str, Any]]:
        """(every entry id with its latest value, decoded a chunk at a time as the joiner
        takes them; meta values) from the changelog, or from its `messages` read already
        (`read_partitions`: several evidence partitions' changelogs at once)."""
        if messages is None:
            self.tune_compaction()
            only = None if self.partition is None else [self.partition]
            messages = read_partitions(self._config, self.topic, only).get(self.partition, [])
        latest: dict[str, bytes | None] = {}
        chunks: list[tuple[int, int, str, bytes | None]] = []
        for message in messages:
            key = message.key.decode()
            if is_chunk(key):
                chunks.append((message.partition, message.offset, key, message.value))
            else:
                latest[key] = message.value
        chunks.sort(key=lambda c: c[:2])
        legacy = {k: v for k, v in latest.items() if v is not None and not k.startswith(META)}
        meta = {k[len(META):]: orjson.loads(v) for k, v in latest.items() if v is not None and k.startswith(META)}
        entries = self.chunks.stream(legacy, [(key, value) for _, _, key, value in chunks])
        return entries, meta

    def messages(self, changes: list[tuple[str, bytes | None]], meta: dict[str, Any],
                 partitions: int) -> list[tuple[str, bytes, bytes | None, int]]:
        """(topic, key, value, partition) to produce for these changes; `acknowledged()`
        once Kafka has acknowledged all of them."""
        out = []
        for key, value in self.chunks.write(changes, apart=(PIECE,)):
            raw = key.encode()
            out.append((self.topic, raw, value, self._partition(raw, partitions, chunk=is_chunk(key))))
        for k, v in sorted(meta.items()):
            raw = (META + k).encode()
            out.append((self.topic, raw, orjson.dumps(v), self._partition(raw, partitions)))
        return out

    def _partition(self, key: bytes, partitions: int, chunk: bool = False) -> int:
        if self.partition is not None:
            return self.partition
        return 0 if chunk else zlib.crc32(key) % partitions

    def acknowledged(self) -> None:
        self.chunks.acknowledged()

    def report(self, metrics: StageMetrics) -> None:
        """The changelog's size as this process keeps track of it."""
        chunks = self.chunks
        metrics.gauge("state_changelog", "chunks", "Changelog chunks not yet tombstoned").set(len(chunks.holds))
        metrics.gauge("state_changelog", "markers", "Deletion markers the changelog still needs (each shadows a "
                      "value in an older chunk)").set(len(chunks.markers))

    def sparse_values(self) -> list[str]:
        """Entries to write again so that the chunks holding them can go."""
        return self.chunks.sparse_values()

    @property
    def waiting(self) -> bool:
        """Tombstones are due (chunks no longer live): write even without changes."""
        return self.chunks.waiting
