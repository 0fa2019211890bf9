"""Many join-state entries per changelog message, on a compacted topic.

Compaction keeps the latest message per key. With one entry per key that is the state
itself; with many entries per message (a *chunk*, key `chunk|<sequence>`) it is not: a
chunk holds values some of which later chunks superseded. So a chunk stays as long as it
holds the latest record of any entry, and is then removed with a tombstone of its own key.
docs/processors.md ("State") gives the argument; in short:

- A chunk maps entry id -> the entry's value, or None (a *deletion marker*: the entry
  left the state). Chunks are written once and never rewritten; all of them go to one
  partition, so the log orders them.
- `home[x]`: the chunk holding x's latest record. A chunk is *live* while it is the home
  of an entry whose record is still needed: a value always; a deletion marker only while
  some earlier chunk still holding a value of x has not been tombstoned (else that stale
  value would come back once the marker's chunk is gone).
- A chunk that is no longer live is tombstoned in the next write after the writes that
  made it so were acknowledged — never in the same one, so the log always has a chunk's
  successors before its tombstone. A chunk that only a marker shadowing one of those
  kept is tombstoned in that same write, after it (`_tombstones()`).
- A *sparse* chunk (needed records at most a tenth of what it holds) has its values
  written again, unchanged (`sparse_values()`), so that one long-lived entry does not
  keep its chunk, and the markers of everything written beside it, for its whole life.
- Restore applies chunks in log order (x = its value, or gone for a marker, and x is
  attributed to that chunk); a chunk's tombstone drops the entries still attributed to it.

Keys that are neither `chunk|` nor `meta|` are the older layout (one entry per key): they
are read first, treated as one-entry chunks older than every real chunk, and retired the
same way (their tombstone is that entry key's own tombstone).

Pure bookkeeping: `write()` turns the joiner's changes into messages, `acknowledged()` is
called once Kafka has acknowledged them, `stream()` rebuilds the bookkeeping from what the
topic holds and hands the state back one entry at a time (a chunk decoded at a time, so
restoring never holds the whole state decoded next to the joiner it is read into).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import orjson

CHUNK = "chunk|"
META = "meta|"
TARGET_BYTES = 512 * 1024  # a chunk is closed once it holds this much (an entry never splits)
# A chunk whose needed records are at most this share of the records it holds is *sparse*:
# its values are written again (`sparse_values()`) so that it can be tombstoned.
SPARSE_SHARE = 0.1
# At most this many values written again per write (the rest in the writes after).
REWRITE_BATCH = 5_000


def chunk_key(sequence: int) -> str:
    return f"{CHUNK}{sequence:012d}"


def is_chunk(key: str) -> bool:
    return key.startswith(CHUNK)


def encode_chunk(entries: dict[str, bytes | None]) -> bytes:
    """One chunk value: the entries' encoded values embedded as they are (None = marker)."""
    return orjson.dumps({"e": {k: (None if v is None else orjson.Fragment(v)) for k, v in entries.items()}})


def decode_chunk(value: bytes) -> dict[str, dict | None]:
    return orjson.loads(value)["e"]


class Chunks:
    def __init__(self) -> None:
        self.next_sequence = 0
        self.home: dict[str, str] = {}  # entry id -> chunk holding its latest record
        self.markers: set[str] = set()  # entries whose latest record is a deletion marker
        self.holds: dict[str, set[str]] = {}  # un-tombstoned chunk -> entries it has a record of
        # entry id -> un-tombstoned chunks with a record of it: one key, or a tuple of them
        # (one or two nearly always; a set each cost 200 bytes for hundreds of thousands)
        self.holders: dict[str, str | tuple[str, ...]] = {}
        self.live: dict[str, set[str]] = {}  # chunk -> entries whose needed record it holds
        self._sparse: set[str] = set()  # chunks that turned sparse: their values to write again
        self._ready: set[str] = set()  # no longer live, successors acknowledged: tombstone next
        self._pending: tuple[list[tuple[str, dict[str, bytes | None]]], list[str]] | None = None

    @property
    def waiting(self) -> bool:
        """Tombstones are due: the next write has something to say even without changes."""
        return bool(self._ready)

    # -- writing ------------------------------------------------------------------------

    def write(self, changes: Iterable[tuple[str, bytes | None]], target: int = TARGET_BYTES,
              apart: tuple[str, ...] = ()) -> list[tuple[str, bytes | None]]:
        """(key, value) messages for these changes (entry id, encoded entry or None), plus
        the tombstones of chunks that stopped being live in earlier, acknowledged writes
        (and of those that only their records kept: `_tombstones()`).
        Entries whose id starts with one of `apart` go in chunks of their own: they live
        far longer than the others, and a chunk stays while any of its entries does.
        Call `acknowledged()` once Kafka has acknowledged all of them."""
        if self._pending is not None:
            raise RuntimeError("the previous write was not acknowledged")
        groups: tuple[list, list] = ([], [])
        for entry_id, value in changes:
            if value is None and (entry_id not in self.home or entry_id in self.markers):
                continue  # never written, or already gone: nothing to shadow
            groups[entry_id.startswith(apart) if apart else 0].append((entry_id, value))
        chunks = [chunk for group in groups for chunk in self._pack(group, target)]
        tombstones = self._tombstones()
        self._pending = (chunks, tombstones)
        return [(key, encode_chunk(entries)) for key, entries in chunks] + [(key, None) for key in tombstones]

    def _pack(self, changes: list[tuple[str, bytes | None]], target: int
              ) -> list[tuple[str, dict[str, bytes | None]]]:
        chunks: list[tuple[str, dict[str, bytes | None]]] = []
        current: dict[str, bytes | None] = {}
        size = 0
        for entry_id, value in changes:
            if current and size + len(value or b"") > target:
                chunks.append((self._new_key(), current))
                current, size = {}, 0
            current[entry_id] = value
            size += len(value or b"") + len(entry_id) + 8
        if current:
            chunks.append((self._new_key(), current))
        return chunks

    def _new_key(self) -> str:
        key = chunk_key(self.next_sequence)
        self.next_sequence += 1
        return key

    def acknowledged(self) -> None:
        """Everything the last `write()` returned is durable: move the homes, and note the
        chunks that stopped being live (their tombstones go out with the next write)."""
        if self._pending is None:
            return
        chunks, _tombstones = self._pending  # (retired when written: `_tombstones()`)
        self._pending = None
        for key, entries in chunks:
            self.holds[key] = set(entries)
            self.live[key] = set()
            for entry_id, value in entries.items():
                self._place(entry_id, key, value is None)
            self._check(key)

    def _tombstones(self) -> list[str]:
        """The chunks to tombstone now, in the order to write them: those ready, and those
        that only a deletion marker shadowing a record of them kept, all at once.

        A chunk whose markers shadow records of older chunks is no longer needed once those
        are tombstoned; its own tombstone may follow theirs in the same write, since Kafka
        keeps the order of one partition (a partial write leaves a prefix: the older ones).
        One level a write was not enough: evicted entries' markers form a chain of chunks,
        each shadowing the one before, which then grew by a chunk a write as fast as it
        shrank. Retired here, before they are acknowledged: a write is sent again as it is
        until acknowledged, or the processor restarts and restores the bookkeeping."""
        out: list[str] = []
        while self._ready:
            batch = sorted(self._ready)
            self._ready.clear()
            for key in batch:
                self._retire(key)
            out += batch
        return out

    def _place(self, entry_id: str, key: str, marker: bool) -> None:
        old = self.home.get(entry_id)
        if old is not None:
            self._release(old, entry_id)
        self.home[entry_id] = key
        self._add_holder(entry_id, key)
        if marker:
            self.markers.add(entry_id)
        else:
            self.markers.discard(entry_id)
        self.live[key].add(entry_id)
        self._settle_marker(entry_id)

    def _release(self, key: str, entry_id: str) -> None:
        live = self.live.get(key)
        if live is not None:
            live.discard(entry_id)
            self._check(key)
            self._note_sparse(key)

    def _note_sparse(self, key: str) -> None:
        live = self.live.get(key)
        if live and len(live) <= SPARSE_SHARE * len(self.holds.get(key, ())):
            self._sparse.add(key)

    def _add_holder(self, entry_id: str, key: str) -> None:
        held = self.holders.get(entry_id)
        if held is None:
            self.holders[entry_id] = key
        elif isinstance(held, str):
            if held != key:
                self.holders[entry_id] = (held, key)
        elif key not in held:
            self.holders[entry_id] = (*held, key)

    def _drop_holder(self, entry_id: str, key: str) -> bool:
        """`key` no longer has a record of the entry; whether any chunk still does."""
        held = self.holders.get(entry_id)
        if held is None:
            return False
        rest = () if held == key else (held,) if isinstance(held, str) else tuple(k for k in held if k != key)
        if not rest:
            del self.holders[entry_id]
            return False
        self.holders[entry_id] = rest[0] if len(rest) == 1 else rest
        return True

    def sparse_values(self, limit: int = REWRITE_BATCH) -> list[str]:
        """Entries to write again: those whose value is the needed record of a sparse chunk.

        A chunk stays while it holds one needed record, and while it stays, every later
        deletion marker of an entry it has a value of stays too (with the bookkeeping of
        each). One long-lived entry among thousands that left kept their chunk, and their
        markers, for as long as it lived: at 5,000 spans/s, a quarter of a million markers
        and ~100 MB of bookkeeping. Written again, its value lives in a newer chunk and the
        sparse one goes (at most SPARSE_SHARE more changelog bytes)."""
        out: list[str] = []
        while self._sparse and len(out) < limit:
            key = self._sparse.pop()
            out += [entry_id for entry_id in self.live.get(key, ()) if entry_id not in self.markers]
        return out

    def _check(self, key: str) -> None:
        if not self.live.get(key) and key in self.holds:
            self._ready.add(key)

    def _settle_marker(self, entry_id: str) -> None:
        """A deletion marker is no longer needed once it is the only record of its entry
        left in un-tombstoned chunks: forget the entry."""
        if entry_id in self.markers and self.holders.get(entry_id) == self.home[entry_id]:
            key = self.home.pop(entry_id)
            self.markers.discard(entry_id)
            del self.holders[entry_id]
            self._release(key, entry_id)

    def _retire(self, key: str) -> None:
        """`key`'s tombstone is acknowledged: it holds no record any more."""
        self.live.pop(key, None)
        self._sparse.discard(key)
        for entry_id in self.holds.pop(key, ()):
            if self._drop_holder(entry_id, key) and entry_id in self.home:
                self._settle_marker(entry_id)

    # -- restoring ----------------------------------------------------------------------

    def restore(self, legacy: dict[str, bytes], chunks: Sequence[tuple[str, bytes | None]]
                ) -> dict[str, bytes | dict]:
        """`stream()`, gathered into one mapping."""
        return dict(self.stream(legacy, chunks))

    def stream(self, legacy: dict[str, bytes], chunks: Sequence[tuple[str, bytes | None]]
               ) -> Iterator[tuple[str, bytes | dict]]:
        """The state the topic holds, as (entry id, value) pairs, each entry once, and the
        bookkeeping to go on writing it (complete once every pair was taken). `legacy`:
        latest value per key of the one-entry-per-key layout (tombstoned keys left out);
        `chunks`: every `chunk|` message in log order, tombstones (None) included.

        Read newest first, so each chunk is decoded once and only values still current
        are kept: the first record of an entry met is its latest; a chunk whose tombstone
        was met before it (later in the log) holds nothing, so an entry whose latest
        record it has is gone — what applying the log in order gives."""
        tombstoned: set[str] = set()
        holds: dict[str, dict[str, bool]] = {}  # un-tombstoned chunk -> entry id -> is a marker
        homes: dict[str, str | None] = {}  # entry id -> chunk with its latest record (None: gone)
        for key, value in reversed(chunks):
            self.next_sequence = max(self.next_sequence, int(key[len(CHUNK):]) + 1)
            if value is None:
                tombstoned.add(key)
                continue
            if key in tombstoned or key in holds:
                # Tombstoned, or the key was used again after that (a restart that found
                # even its tombstone compacted away numbers chunks from the highest left):
                # only a key's latest message counts, as compaction would leave it.
                for entry_id in decode_chunk(value):
                    homes.setdefault(entry_id, None)
                continue
            entries = decode_chunk(value)
            holds[key] = {entry_id: doc is None for entry_id, doc in entries.items()}
            for entry_id, doc in entries.items():
                if entry_id not in homes:
                    homes[entry_id] = key
                    if doc is not None:
                        yield entry_id, doc
        for entry_id, value in legacy.items():  # one-entry chunks older than every real one
            holds[entry_id] = {entry_id: False}
            if entry_id not in homes:
                homes[entry_id] = entry_id
                yield entry_id, value
        self._rebuild(holds, homes)

    def _rebuild(self, holds: dict[str, dict[str, bool]], homes: dict[str, str | None]) -> None:
        self.holds = {key: set(entries) for key, entries in holds.items()}
        self.live = {key: set() for key in holds}
        for key, entries in holds.items():
            for entry_id in entries:
                self._add_holder(entry_id, key)
        for entry_id, key in homes.items():
            if key is None:
                continue
            self.home[entry_id] = key
            if holds[key][entry_id]:
                self.markers.add(entry_id)
            self.live[key].add(entry_id)
        for entry_id in list(self.markers):
            self._settle_marker(entry_id)
        for key in holds:
            self._check(key)
            self._note_sparse(key)
