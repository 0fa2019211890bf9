"""What the joiner still knows of records that left its state: a bounded, compact index.

A record leaves the join state once it settled and either its TTL passed or the state
reached its cap. Two things may still arrive for it, and both must come out as if it were
still held:

- a late duplicate of evidence it already had (a re-delivered span or log batch): it must
  produce no new record, so the ids of its evidence are kept;
- a tool action that names one of its tool-call ids (the agent ran the tool long after the
  model asked for it): the action must still be joined to it, so the few fields an action
  and its findings take from the call are kept (`CallLink`).

Ids are kept as Python string hashes: 8 bytes of entropy each, a few dozen bytes per record
instead of the kilobytes of its evidence. The index lives only in memory and is not
restored after a restart (the changelog holds live entries only); it is bounded by count,
the oldest forgotten first.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple


class CallLink(NamedTuple):
    """The fields of a model call that a tool action joined to it depends on."""
    call_id: str
    version: int
    started_at: str | None
    deployment_id: str | None
    deployment_version: int | None


class Forgotten:
    def __init__(self, limit: int):
        self.limit = limit
        self._evidence: dict[int, tuple[int, ...]] = {}  # hash(entry id) -> hashes of evidence ids
        self._calls: dict[str, CallLink] = {}  # tool-call id -> the call that asked for it
        self._tool_calls: dict[int, tuple[tuple[str, ...], CallLink | None]] = {}  # hash(entry id) -> its links

    def add(self, entry_id: str, evidence_ids: Iterable[str], link: CallLink | None = None,
            tool_call_ids: Iterable[str] = ()) -> None:
        key = hash(entry_id)
        # Re-inserted last, so the newest is forgotten last; a record that came back (late
        # evidence started it afresh) and left again keeps what both times held.
        held = set(self._evidence.pop(key, ()))
        self._evidence[key] = tuple(held | {hash(e) for e in evidence_ids})
        ids = tuple(tool_call_ids) if link is not None else ()
        for tool_call_id in ids:
            self._calls[tool_call_id] = link
        if ids:
            self._tool_calls[key] = (ids, link)
        while len(self._evidence) > self.limit:
            oldest = next(iter(self._evidence))
            del self._evidence[oldest]
            ids, link = self._tool_calls.pop(oldest, ((), None))
            for tool_call_id in ids:
                if self._calls.get(tool_call_id) is link:  # not since claimed by a newer call
                    del self._calls[tool_call_id]

    def seen(self, entry_id: str, evidence_id: str) -> bool:
        """Whether this evidence was part of a record that left the state."""
        held = self._evidence.get(hash(entry_id))
        return held is not None and hash(evidence_id) in held

    def call(self, tool_call_id: str | None) -> CallLink | None:
        return self._calls.get(tool_call_id) if tool_call_id else None

    def __len__(self) -> int:
        return len(self._evidence)
