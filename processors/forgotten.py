"""What the joiner still knows of records that left its state: a bounded, compact index.

A record leaves the join state once it settled and either its TTL passed or the state
reached its cap. Two things may still arrive for it, and both must come out as if it were
still held:

- a late duplicate of evidence it already had (a re-delivered span or log batch): it must
  produce no new record, so the ids of its evidence are kept;
- a tool action that names one of its tool-call ids (the agent ran the tool long after the
  model asked for it): the action must still be joined to it, so the few fields an action
  and its findings take from the call are kept (`CallLink`).

Both are kept as 64-bit keys (BLAKE2b of the ids: the same in every process, so the index
can be written and read back), at most `processor.state_forgotten_ids` of each, the oldest
forgotten first. As Python objects (an OrderedDict of ints, one of CallLink tuples) they
cost 160 MB at that bound; here the newest keys sit in a small dict and the rest in sorted
numpy arrays (8 bytes per key, its age and its value beside it), about 30 bytes each, and
a call's link ~40 bytes compressed.

What was forgotten since the last state write is sealed into a *piece* (`seal()`): an
entry of the changelog (`forgotten|<sequence>`) written in a chunk of its own, holding its
keys and the links of its calls. A piece is deleted once everything in it passed the bound
(`expired()`), and `restore()` reads the live ones back after a restart, so a late
duplicate or a late action is recognised across restarts too. The call links stay in
memory as their pieces' encoded bytes, compressed, and decoded only when a late action
asks for one.

A state write comes every batch, so most pieces are small (a few dozen keys), and each
live piece costs ~1.5 KB however few keys it holds (its links, the changelog chunk it
sits in and that chunk's bookkeeping). Unmerged, the live pieces were one per write over
the whole time the bound takes to fill: with the join split over six partitions at 1,200
spans/s, 33,000 pieces after 24 minutes (~2.5 MB a minute), and up to one per forgotten
call at low rates. So the newest MERGE_FANIN pieces of an index are merged into one
whenever they were merged as many times each (their *level*; a sealed piece's is 0) and
fit in a piece together, as a counter carries: live pieces stay about MERGE_FANIN per
level, and each key is written again once per level it climbs. Levels, not sizes: the
pieces of successive writes straddle any size boundary, and one left unmerged stays
until it expires.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import zlib
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np
import orjson

PIECE = "forgotten|"
# A piece is closed at this many evidence keys or call links (~270 KB and ~250 KB of JSON),
# so that one holds in a changelog message however much a state write forgets.
PIECE_KEYS = 20_000
PIECE_LINKS = 2_000
MERGE_FANIN = 8


class CallLink(NamedTuple):
    """The fields of a model call that a tool action joined to it depends on."""
    call_id: str
    version: int
    started_at: str | None
    deployment_id: str | None
    deployment_version: int | None


def key_of(*ids: str) -> int:
    """A stable 64-bit key for these ids (Python's hash() differs per process)."""
    text = "\x1f".join(ids).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def _written(out: list[tuple[str, bytes | None]]) -> list[tuple[str, bytes | None]]:
    """`out` less the pieces both sealed and merged away in it: neither their value nor
    their tombstone. (The changelog skips the tombstone of what it never held, which
    would leave the value there for good.)"""
    sealed = {piece for piece, value in out if value is not None}
    gone = {piece for piece, value in out if value is None and piece in sealed}
    return [(piece, value) for piece, value in out if piece not in gone]


def piece_id(sequence: int) -> str:
    return f"{PIECE}{sequence:012d}"


def is_piece(entry_id: str) -> bool:
    return entry_id.startswith(PIECE)


def _pack(values: np.ndarray) -> str:
    return base64.b64encode(values.tobytes()).decode()


def _unpack(text: str, dtype: type) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


class Keys:
    """At most `limit` 64-bit keys, each with an int value, the oldest dropped first.

    The newest (up to `batch`) are in a dict; the rest in arrays sorted by key with each
    key's sequence number (its age), merged a batch at a time. A key whose sequence is
    more than `limit` behind the newest is forgotten, and dropped at the next merge."""

    def __init__(self, limit: int):
        self.limit = limit
        self.batch = max(1024, limit // 16)
        self.recent: dict[int, int] = {}  # key -> value, oldest first
        self.keys = np.empty(0, np.uint64)
        self.seqs = np.empty(0, np.int64)
        self.values = np.empty(0, np.int64)
        self.merged = 0  # the sequence number of the first key in `recent`

    @property
    def end(self) -> int:
        """The sequence number the next new key gets."""
        return self.merged + len(self.recent)

    @property
    def cutoff(self) -> int:
        """Keys numbered below this are forgotten."""
        return self.end - self.limit

    def add(self, key: int, value: int = 0) -> None:
        self.recent.pop(key, None)  # re-added: it is among the newest again
        self.recent[key] = value
        if len(self.recent) >= self.batch:
            self._merge_newer(np.fromiter(self.recent, np.uint64, len(self.recent)),
                              np.fromiter(self.recent.values(), np.int64, len(self.recent)),
                              np.arange(self.merged, self.end, dtype=np.int64))
            self.merged = self.end
            self.recent = {}

    def _merge_newer(self, keys: np.ndarray, values: np.ndarray, seqs: np.ndarray) -> None:
        """Merge distinct keys, all newer than the arrays', into them. The arrays are sorted
        and distinct already: a stable sort (timsort) of them followed by the new keys finds
        the one sorted run and merges the new keys in, in about linear time where a full
        sort of both cost 1–2 % of the processor's CPU. Of two equal keys the later, the
        newer, is kept."""
        keep = self.seqs >= self.cutoff
        keys = np.concatenate([self.keys[keep], keys])
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        last = np.ones(len(keys), bool)
        last[:-1] = keys[1:] != keys[:-1]
        self.keys = keys[last]
        self.seqs = np.concatenate([self.seqs[keep], seqs])[order][last]
        self.values = np.concatenate([self.values[keep], values])[order][last]

    def _merge(self, keys: np.ndarray, values: np.ndarray, seqs: np.ndarray) -> None:
        """Merge keys in any order, repeats included, into the arrays: of equal keys the
        one with the highest sequence is kept."""
        keep = self.seqs >= self.cutoff
        keys = np.concatenate([self.keys[keep], keys])
        seqs = np.concatenate([self.seqs[keep], seqs])
        values = np.concatenate([self.values[keep], values])
        order = np.lexsort((-seqs, keys))  # by key, the newest of equal keys first
        keys, seqs, values = keys[order], seqs[order], values[order]
        first = np.ones(len(keys), bool)
        first[1:] = keys[1:] != keys[:-1]
        self.keys, self.seqs, self.values = keys[first], seqs[first], values[first]

    def get(self, key: int) -> int | None:
        value = self.recent.get(key)
        if value is not None or not len(self.keys):
            return value
        wanted = np.uint64(key)
        i = int(self.keys.searchsorted(wanted))  # the method: np.searchsorted() costs 4x as much
        if i < len(self.keys) and self.keys[i] == wanted and self.seqs[i] >= self.cutoff:
            return int(self.values[i])
        return None

    def moved(self, pieces: dict[int, int], to: int) -> None:
        """Values `piece << 32 | index` of the given pieces now name piece `to`, at index
        + pieces[piece] (their links were merged into it, in order)."""
        for key, value in self.recent.items():
            offset = pieces.get(value >> 32)
            if offset is not None:
                self.recent[key] = to << 32 | (value & 0xFFFFFFFF) + offset
        piece = self.values >> 32
        for old, offset in pieces.items():
            at = piece == old
            self.values[at] = to << 32 | (self.values[at] & 0xFFFFFFFF) + offset

    def restore(self, parts: Iterable[tuple[int, np.ndarray, np.ndarray]]) -> None:
        """Rebuild from (end sequence, keys oldest first, values) of what was sealed."""
        parts = list(parts)
        if not parts:
            return
        self.merged = max(end for end, _k, _v in parts)
        self._merge(np.concatenate([k for _e, k, _v in parts]).astype(np.uint64),
                    np.concatenate([v for _e, _k, v in parts]).astype(np.int64),
                    np.concatenate([np.arange(end - len(k), end, dtype=np.int64) for end, k, _v in parts]))

    def __len__(self) -> int:
        return min(self.end, self.limit)


class Forgotten:
    def __init__(self, limit: int):
        self.limit = limit
        self._evidence = Keys(limit)  # key_of(entry id, evidence id)
        self._calls = Keys(limit)  # key_of(tool-call id) -> piece sequence << 32 | link index
        # Sequence of a piece of calls -> its links, encoded and compressed (ids and times
        # share long prefixes: a third of the size).
        self._links: dict[int, bytes] = {}
        # Sealed pieces of each index, oldest first: (sequence, the end sequence of its keys
        # then). Ends only grow and cutoffs only advance, so expiry pops from the front and
        # a state write never walks the pieces still live.
        self._evidence_pieces: collections.deque[tuple[int, int]] = collections.deque()
        self._call_pieces: collections.deque[tuple[int, int]] = collections.deque()
        # What a merge needs of each live piece: its evidence keys, or its tool-call keys
        # and link indexes (the links are in _links).
        self._held: dict[int, tuple[np.ndarray, ...]] = {}
        self._levels: dict[int, int] = {}  # how many merges made each live piece
        self._next_piece = 0
        # Forgotten since the last seal: what the next pieces hold.
        self._new_evidence: list[int] = []
        self._new_calls: list[tuple[int, int]] = []  # (key, link index)
        self._new_links: list[CallLink] = []
        self._unwritten: list[tuple[str, bytes]] = []  # pieces closed since the last seal()

    def add(self, entry_id: str, evidence_ids: Iterable[str], link: CallLink | None = None,
            tool_call_ids: Iterable[str] = ()) -> None:
        for evidence_id in evidence_ids:
            key = key_of(entry_id, evidence_id)
            self._evidence.add(key)
            self._new_evidence.append(key)
        if link is not None:
            index = len(self._new_links)
            for tool_call_id in tool_call_ids:
                key = key_of(tool_call_id)
                # The piece these links are sealed into: see seal().
                self._calls.add(key, (self._next_piece + 1) << 32 | index)
                self._new_calls.append((key, index))
            self._new_links.append(link)
        if len(self._new_evidence) >= PIECE_KEYS or len(self._new_links) >= PIECE_LINKS:
            self._unwritten += self._close()

    def seen(self, entry_id: str, evidence_id: str) -> bool:
        """Whether this evidence was part of a record that left the state."""
        return self._evidence.get(key_of(entry_id, evidence_id)) is not None

    def call(self, tool_call_id: str | None) -> CallLink | None:
        found = self._calls.get(key_of(tool_call_id)) if tool_call_id else None
        if found is None:
            return None
        piece, index = found >> 32, found & 0xFFFFFFFF
        if piece == self._next_piece + 1:  # not sealed yet
            return self._new_links[index]
        links = self._links.get(piece)
        return CallLink(*orjson.loads(zlib.decompress(links))[index]) if links is not None else None

    # -- the changelog --------------------------------------------------------------------

    def seal(self) -> list[tuple[str, bytes]]:
        """(piece id, value) of what was forgotten since the last seal: pieces of evidence
        keys and, if calls were forgotten, of their tool-call keys and links."""
        out, self._unwritten = self._unwritten + self._close(), []
        return _written(out)

    def _close(self) -> list[tuple[str, bytes]]:
        out = []
        first = self._next_piece
        self._next_piece += 2  # the second for calls, which name it before it is sealed
        if self._new_evidence:
            keys = np.array(self._new_evidence, np.uint64)
            self._held[first] = (keys,)
            out.append(self._sealed(first, self._evidence, self._evidence_pieces, {"e": _pack(keys)}))
        if self._new_calls:
            links = orjson.dumps([list(link) for link in self._new_links])
            self._links[first + 1] = zlib.compress(links)
            keys = np.array([k for k, _ in self._new_calls], np.uint64)
            index = np.array([i for _, i in self._new_calls], np.uint32)
            self._held[first + 1] = (keys, index)
            out.append(self._sealed(first + 1, self._calls, self._call_pieces,
                                    {"c": _pack(keys), "i": _pack(index), "l": orjson.Fragment(links)}))
        self._new_evidence, self._new_calls, self._new_links = [], [], []
        if not out:
            self._next_piece = first
            return out
        # Nothing is open now (a call's value names the piece it is sealed into next).
        # A piece leaves when all of it passed the bound, so a merged one is kept to an
        # eighth of the bound: what is held past the bound stays within that.
        most = max(1, self.limit // MERGE_FANIN)
        out += self._merge_newest(self._evidence_pieces, min(PIECE_KEYS, most), self._merged_evidence)
        out += self._merge_newest(self._call_pieces, min(PIECE_LINKS, most), self._merged_calls)
        return out

    def _size(self, sequence: int) -> int:
        """What a piece holds against its cap: evidence keys, or links."""
        held = self._held[sequence]
        return len(held[0]) if len(held) == 1 else int(held[1].max()) + 1

    def _merge_newest(self, pieces: collections.deque[tuple[int, int]], cap: int,
                      merged: Callable[[list[int], int], dict[str, Any]]) -> list[tuple[str, bytes | None]]:
        """Merge the newest MERGE_FANIN pieces into one while they are of one level and
        fit in a piece: (piece id, value) of the merged piece, then the tombstones of
        those it replaces (after it: a write cut short leaves both, never neither)."""
        out: list[tuple[str, bytes | None]] = []
        while len(pieces) >= MERGE_FANIN:
            newest = [pieces[-1 - i][0] for i in range(MERGE_FANIN)][::-1]
            levels = {self._levels[s] for s in newest}
            if len(levels) > 1 or sum(self._size(s) for s in newest) > cap:
                break
            for s in newest:
                del self._levels[s]
            end = pieces[-1][1]
            for _ in newest:
                pieces.pop()
            sequence = self._next_piece + newest[0] % 2  # evidence even, calls odd, as sealed
            self._next_piece += 2
            pieces.append((sequence, end))
            level = self._levels[sequence] = levels.pop() + 1
            out.append((piece_id(sequence), orjson.dumps({**merged(newest, sequence), "end": end, "m": level})))
            out += [(piece_id(s), None) for s in newest]
        return out

    def _merged_evidence(self, pieces: list[int], sequence: int) -> dict[str, Any]:
        keys = np.concatenate([self._held.pop(s)[0] for s in pieces])
        self._held[sequence] = (keys,)
        return {"e": _pack(keys)}

    def _merged_calls(self, pieces: list[int], sequence: int) -> dict[str, Any]:
        """One piece of the pieces' keys and links, in order; the index's values that
        named them name it now."""
        keys, index, links, offsets = [], [], [], {}
        for s in pieces:
            piece_keys, piece_index = self._held.pop(s)
            offsets[s] = len(links)
            keys.append(piece_keys)
            index.append(piece_index + np.uint32(len(links)))
            links += orjson.loads(zlib.decompress(self._links.pop(s)))
        self._calls.moved(offsets, sequence)
        encoded = orjson.dumps(links)
        self._links[sequence] = zlib.compress(encoded)
        self._held[sequence] = (np.concatenate(keys), np.concatenate(index))
        return {"c": _pack(self._held[sequence][0]), "i": _pack(self._held[sequence][1]),
                "l": orjson.Fragment(encoded)}

    def _sealed(self, sequence: int, keys: Keys, pieces: collections.deque[tuple[int, int]],
                doc: dict[str, Any]) -> tuple[str, bytes]:
        pieces.append((sequence, keys.end))
        self._levels[sequence] = 0
        return piece_id(sequence), orjson.dumps({**doc, "end": keys.end})

    def expired(self) -> list[str]:
        """Sealed pieces all of whose keys passed the bound: to delete from the changelog."""
        out = []
        for keys, pieces in ((self._evidence, self._evidence_pieces), (self._calls, self._call_pieces)):
            cutoff = keys.cutoff
            while pieces and pieces[0][1] <= cutoff:
                sequence, _end = pieces.popleft()
                self._links.pop(sequence, None)
                self._held.pop(sequence, None)
                self._levels.pop(sequence, None)
                out.append(piece_id(sequence))
        return out

    def restore(self, pieces: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Rebuild from the live pieces (piece id, decoded value), in any order."""
        evidence, calls = [], []
        for entry_id, doc in sorted(pieces):
            sequence = int(entry_id[len(PIECE):])
            self._levels[sequence] = doc.get("m", 0)
            self._next_piece = max(self._next_piece, sequence + 2 - sequence % 2)
            if "e" in doc:
                keys = _unpack(doc["e"], np.uint64)
                self._held[sequence] = (keys,)
                evidence.append((doc["end"], keys, np.zeros(len(keys), np.int64)))
                self._evidence_pieces.append((sequence, doc["end"]))
            else:
                keys, index = _unpack(doc["c"], np.uint64), _unpack(doc["i"], np.uint32)
                self._held[sequence] = (keys, index)
                calls.append((doc["end"], keys, sequence << 32 | index.astype(np.int64)))
                self._links[sequence] = zlib.compress(orjson.dumps(doc["l"]))
                self._call_pieces.append((sequence, doc["end"]))
        self._evidence.restore(evidence)
        self._calls.restore(calls)

    def __len__(self) -> int:
        return len(self._evidence)
