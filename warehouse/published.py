"""The digests kept where the warehouse host cannot take them back: the digests topic and
the write-once copy directory (`warehouse.digest_copy_dir`).

A rollback of the store (its newest ledger entries, their rows, digest files and
checkpoint rows removed together) is consistent with itself and passes every check that
looks only at the data directory; it shows only against digests published before it.
This module writes the copy and reads both back for `verify` (warehouse.rollback compares).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from kafka.errors import KafkaError

from nimtrail import kafka_io
from nimtrail.config import Config
from nimtrail.errors import NimtrailError
from warehouse import digests, shards

# Reading the topic is part of answering a verification: bounded, and a broker that does
# not answer in time leaves a note instead of a hung request.
TOPIC_READ_TIMEOUT = 20.0


class CopyConflict(NimtrailError):
    """The copy already holds another digest under this name: it is never overwritten."""


class TopicUnreadable(NimtrailError):
    """The digests topic could not be read (no broker, no topic, too slow)."""


@dataclass(frozen=True)
class Source:
    """Digest files as one place outside the data directory holds them."""
    name: str  # what a problem names: "digests topic <name>" or "digest copy <dir>"
    files: list[tuple[str, bytes]]  # (file name relative to the digests directory, bytes)


@dataclass(frozen=True)
class Published:
    sources: list[Source] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # a place that could not be read, and why


def copy_dir(config: Config) -> Path | None:
    return Path(config.warehouse.digest_copy_dir) if config.warehouse.digest_copy_dir else None


def write_once(directory: Path, rel: str, data: bytes) -> None:
    """Create `rel` under the copy directory with `data`; never replace a file. The same
    bytes already there are a retried copy (nothing to do); other bytes raise CopyConflict.
    Only create-and-write is used, which object-lock and WORM mounts allow."""
    path = directory / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    except FileExistsError:
        if path.read_bytes() != data:
            raise CopyConflict(f"{path} exists with other content; digest copies are never "
                               "rewritten (was the store rolled back and restarted?)") from None
        return
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_copy(config: Config) -> Source | None:
    directory = copy_dir(config)
    if directory is None:
        return None
    return Source(f"digest copy {directory}", digests.load_all(directory))


def read_topic(config: Config) -> Source:
    """Every digest on the digests topic (keyed by file name; a republished one twice).
    Raises TopicUnreadable when the broker or the topic cannot be read in time."""
    topic = config.topics.digests
    try:
        consumer = kafka_io.consumer(config, group_id=None)
    except (KafkaError, ValueError) as e:
        raise TopicUnreadable(f"cannot reach Kafka at {config.kafka.bootstrap or '(not set)'}: "
                              f"{type(e).__name__}: {e}") from e
    try:
        files = [((m.key or b"").decode(errors="replace"), m.value or b"")
                 for m in kafka_io.read_to_end(consumer, topic, timeout=TOPIC_READ_TIMEOUT)]
        files = of_this_store(config, files)
    except (KafkaError, TimeoutError) as e:
        raise TopicUnreadable(f"cannot read the digests topic {topic}: {type(e).__name__}: {e}") from e
    finally:
        consumer.close()
    return Source(f"digests topic {topic}", files)


_SHARD_KEY = re.compile(r"^\d+-of-\d+/")


def of_this_store(config: Config, files: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The digests topic's files of this store, named as in its digests directory: every
    shard publishes on the one topic under its own prefix (warehouse.shards)."""
    prefix = shards.digest_prefix(config)
    if prefix:
        return [(key[len(prefix):], data) for key, data in files if key.startswith(prefix)]
    return [(key, data) for key, data in files if not _SHARD_KEY.match(key)]


def gather_topic(config: Config) -> Published:
    """The digests topic, or a note saying why it was not read. Read it *before* the
    store's snapshot: everything published then was committed before the snapshot, so a
    digest the store lacks is one it lost, not one it wrote a moment later."""
    if not config.kafka.bootstrap:
        return Published(notes=["no Kafka to read the digests topic from: kafka.bootstrap is empty and "
                                "the bundled broker is not running (the store was compared with its "
                                "own files and the copy only)"])
    try:
        return Published(sources=[read_topic(config)])
    except NimtrailError as e:  # TopicUnreadable
        return Published(notes=[f"{e} (the store was compared with its own files and the copy only)"])


def with_copy(published: Published, config: Config) -> Published:
    """`published` plus the copy directory, read at the store's snapshot."""
    copy = read_copy(config)
    return published if copy is None else Published([*published.sources, copy], published.notes)
