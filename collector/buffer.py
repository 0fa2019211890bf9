"""The collector's on-disk buffer: where acknowledged data waits while Kafka is unreachable.

An entry is appended to a segment file and fsynced before `append()` returns, so an entry
in the buffer is as durable as one in Kafka and the client may be acknowledged. The
drainer reads from the head and moves the head past entries only after Kafka
acknowledged them.

What must stay true:
1. append: write, fsync, and only then count the entry as accepted (the caller acks after).
2. drain: Kafka acknowledges, and only then `commit()` moves the head (head.json, written
   atomically). A crash between the two re-sends those entries: never lost, rarely twice.
3. A torn record at the tail (a crash mid-append) was never acknowledged; it is cut at
   open.

Layout: `<dir>/<20-digit number>.seg` segments and `<dir>/head.json` = {"segment", "offset"}.
Record: u32 payload length, u32 crc32(payload), payload. Payload: u16 topic length, topic,
i32 key length (-1 for none), key, u32 value length, value, u16 header count, then per
header u16 name length, name, u32 value length, value.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import threading
import zlib
from pathlib import Path

import orjson

from collector.state_file import fsync_dir, write_atomic
from nimtrail.errors import TransientError

log = logging.getLogger(__name__)

_FRAME = struct.Struct(">II")
_HEAD = "head.json"


class BufferFull(TransientError):
    """The buffer has no room for this data: the client must retry later (429)."""


class BufferUnavailable(TransientError):
    """The buffer could not be written (disk error): the client must retry later (503)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One Kafka message waiting to be sent."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()

    def encode(self) -> bytes:
        topic = self.topic.encode()
        parts = [struct.pack(">H", len(topic)), topic]
        if self.key is None:
            parts.append(struct.pack(">i", -1))
        else:
            parts += [struct.pack(">i", len(self.key)), self.key]
        parts += [struct.pack(">I", len(self.value)), self.value, struct.pack(">H", len(self.headers))]
        for name, value in self.headers:
            raw = name.encode()
            parts += [struct.pack(">H", len(raw)), raw, struct.pack(">I", len(value)), value]
        payload = b"".join(parts)
        return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload

    @classmethod
    def decode(cls, payload: bytes) -> "Entry":
        view = memoryview(payload)
        (n,) = struct.unpack_from(">H", view, 0)
        pos = 2 + n
        topic = bytes(view[2:pos]).decode()
        (klen,) = struct.unpack_from(">i", view, pos)
        pos += 4
        key = None
        if klen >= 0:
            key, pos = bytes(view[pos:pos + klen]), pos + klen
        (vlen,) = struct.unpack_from(">I", view, pos)
        pos += 4
        value, pos = bytes(view[pos:pos + vlen]), pos + vlen
        (count,) = struct.unpack_from(">H", view, pos)
        pos += 2
        headers = []
        for _ in range(count):
            (nlen,) = struct.unpack_from(">H", view, pos)
            name, pos = bytes(view[pos + 2:pos + 2 + nlen]).decode(), pos + 2 + nlen
            (hlen,) = struct.unpack_from(">I", view, pos)
            headers.append((name, bytes(view[pos + 4:pos + 4 + hlen])))
            pos += 4 + hlen
        return cls(topic, key, value, tuple(headers))


@dataclasses.dataclass(frozen=True, order=True)
class Position:
    segment: int
    offset: int


class DiskBuffer:
    """A bounded, append-only queue of Kafka messages on disk (see the module docstring)."""

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int = 16 * 1024 * 1024):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}
        for path in sorted(self.dir.glob("*.seg")):
            if path.stem.isdigit():
                self._sizes[int(path.stem)] = path.stat().st_size
        self._head = self._read_head()
        for seg in [s for s in self._sizes if s < self._head.segment]:
            self._remove_segment(seg)  # fully drained before a crash
        if not self._sizes:
            self._sizes[self._head.segment] = 0
            (self.dir / self._name(self._head.segment)).touch()
        if self._head.segment not in self._sizes:  # head names a missing segment: start at the first
            self._head = Position(min(self._sizes), 0)
        self._tail = max(self._sizes)
        self._cut_torn_tail()
        self._file = open(self.dir / self._name(self._tail), "ab")
        self._used = sum(self._sizes.values()) - self._head.offset

    # ---- state ----

    @staticmethod
    def _name(segment: int) -> str:
        return f"{segment:020d}.seg"

    def _read_head(self) -> Position:
        path = self.dir / _HEAD
        if not path.exists():
            return Position(min(self._sizes, default=0), 0)
        doc = orjson.loads(path.read_bytes())
        return Position(int(doc["segment"]), int(doc["offset"]))

    def _cut_torn_tail(self) -> None:
        """Scan the tail segment and cut it after the last whole, checksummed record."""
        path = self.dir / self._name(self._tail)
        start = self._head.offset if self._head.segment == self._tail else 0
        good = start
        with open(path, "rb") as f:
            f.seek(start)
            while True:
                frame = f.read(_FRAME.size)
                if len(frame) < _FRAME.size:
                    break
                length, crc = _FRAME.unpack(frame)
                payload = f.read(length)
                if len(payload) < length or zlib.crc32(payload) != crc:
                    break
                good += _FRAME.size + length
        if good < self._sizes[self._tail]:
            log.warning("Cutting %s bytes of an unfinished write at the end of the collector buffer "
                        "(never acknowledged)", self._sizes[self._tail] - good)
            os.truncate(path, good)
            self._sizes[self._tail] = good

    def _remove_segment(self, segment: int) -> None:
        try:
            (self.dir / self._name(segment)).unlink()
        except FileNotFoundError:
            pass
        self._sizes.pop(segment, None)

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def empty(self) -> bool:
        return self._used == 0

    @property
    def head(self) -> Position:
        return self._head

    # ---- writing ----

    def append(self, entries: list[Entry]) -> list[Position]:
        """Append and fsync; returns the position after each entry. BufferFull when there is
        no room, BufferUnavailable on disk errors (nothing of this call is kept then)."""
        encoded = [e.encode() for e in entries]
        blob = b"".join(encoded)
        with self._lock:
            if self._used + len(blob) > self.max_bytes:
                raise BufferFull(f"the collector's buffer is full ({self._used} of {self.max_bytes} bytes)")
            if self._sizes[self._tail] and self._sizes[self._tail] + len(blob) > self.segment_bytes:
                self._roll()
            before = self._sizes[self._tail]
            try:
                self._file.write(blob)
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as e:
                self._undo(before)
                raise BufferUnavailable(f"could not write the collector's buffer: {e}") from e
            self._sizes[self._tail] = before + len(blob)
            self._used += len(blob)
            ends, pos = [], before
            for record in encoded:
                pos += len(record)
                ends.append(Position(self._tail, pos))
            return ends

    def _undo(self, size: int) -> None:
        try:
            self._file.flush()
        except OSError:
            pass
        try:
            os.truncate(self.dir / self._name(self._tail), size)
        except OSError as e:
            log.error("Could not cut a failed write from the collector buffer: %s", e)

    def _roll(self) -> None:
        self._file.close()
        self._tail += 1
        self._sizes[self._tail] = 0
        self._file = open(self.dir / self._name(self._tail), "ab")
        fsync_dir(self.dir)

    # ---- draining ----

    def read(self, start: Position | None = None, max_entries: int = 500,
             max_bytes: int = 8 * 1024 * 1024) -> list[tuple[Entry, Position]]:
        """Entries from `start` (default: the head), each with the position just after it."""
        with self._lock:
            sizes = dict(self._sizes)
            pos = start or self._head
        out: list[tuple[Entry, Position]] = []
        total = 0
        segment, offset = pos.segment, pos.offset
        while len(out) < max_entries and total < max_bytes and segment in sizes:
            if offset >= sizes[segment]:
                if segment == max(sizes):
                    break
                segment, offset = segment + 1, 0
                continue
            with open(self.dir / self._name(segment), "rb") as f:
                f.seek(offset)
                while offset < sizes[segment] and len(out) < max_entries and total < max_bytes:
                    length, crc = _FRAME.unpack(f.read(_FRAME.size))
                    payload = f.read(length)
                    offset += _FRAME.size + length
                    if zlib.crc32(payload) != crc:
                        # Only a disk fault gets here: an append is checksummed before it counts.
                        log.error("A corrupt record in collector buffer segment %s at byte %s was "
                                  "skipped with the rest of that segment", segment, offset)
                        offset = sizes[segment]
                        out.append((Entry("", None, b""), Position(segment, offset)))
                        break
                    out.append((Entry.decode(payload), Position(segment, offset)))
                    total += length
        return out

    def commit(self, upto: Position) -> None:
        """Everything before `upto` is in Kafka: move the head there and free drained segments."""
        with self._lock:
            if upto <= self._head:
                return
            freed = 0
            for seg in sorted(self._sizes):
                if seg < upto.segment:
                    freed += self._sizes[seg] - (self._head.offset if seg == self._head.segment else 0)
            freed += upto.offset - (self._head.offset if upto.segment == self._head.segment else 0)
            head = upto
            if upto.segment != self._tail and upto.offset >= self._sizes.get(upto.segment, 0):
                head = Position(upto.segment + 1, 0)
            elif upto.segment == self._tail and upto.offset == self._sizes[self._tail]:
                # Drained to the very end: start a fresh segment so the old one can go.
                self._roll()
                head = Position(self._tail, 0)
            write_atomic(self.dir / _HEAD, orjson.dumps({"segment": head.segment, "offset": head.offset}))
            for seg in [s for s in self._sizes if s < head.segment]:
                self._remove_segment(seg)
            self._head = head
            self._used -= freed

    def close(self) -> None:
        with self._lock:
            self._file.close()
