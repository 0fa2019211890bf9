"""What the joiner still knows of records that left its state: a bounded, compact index.

A record leaves the join state once it settled and either its TTL passed or the state
reached its cap. Two things may still arrive for it, and both must come out as if it were
still held:

- a late duplicate of evidence it already had (a re-delivered span or log batch): it must
  produce no new record, so the ids of its evidence are kept;
- a tool action that names one of its tool-call ids (the agent ran the tool long after the
  model asked for it): the action must still be joined to it, so the few fields an action
  and its findings take from the call are kept (`CallLink`).

Evidence is kept as the Python hash of (entry id, evidence id): 64 bits, about 80 bytes of
memory per item instead of the kilobytes of the record's evidence. The index lives only in
memory and is not restored after a restart (the changelog holds live entries only); it
holds at most `processor.state_forgotten_ids` evidence ids and as many tool-call ids, the
oldest forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
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
        # Oldest first. OrderedDict, not dict: removing a plain dict's first key again and
        # again leaves deleted slots that every next `iter()` walks over (quadratic once
        # the index is full); OrderedDict's popitem(last=False) is O(1).
        self._evidence: OrderedDict[int, None] = OrderedDict()  # hash((entry id, evidence id))
        self._calls: OrderedDict[str, CallLink] = OrderedDict()  # tool-call id -> the call that asked for it

    def add(self, entry_id: str, evidence_ids: Iterable[str], link: CallLink | None = None,
            tool_call_ids: Iterable[str] = ()) -> None:
        # Re-inserted last, so that the newest is forgotten last.
        for evidence_id in evidence_ids:
            key = hash((entry_id, evidence_id))
            self._evidence[key] = None
            self._evidence.move_to_end(key)
        if link is not None:
            for tool_call_id in tool_call_ids:
                self._calls[tool_call_id] = link
                self._calls.move_to_end(tool_call_id)
        for index in (self._evidence, self._calls):
            while len(index) > self.limit:
                index.popitem(last=False)

    def seen(self, entry_id: str, evidence_id: str) -> bool:
        """Whether this evidence was part of a record that left the state."""
        return hash((entry_id, evidence_id)) in self._evidence

    def call(self, tool_call_id: str | None) -> CallLink | None:
        return self._calls.get(tool_call_id) if tool_call_id else None

    def __len__(self) -> int:
        return len(self._evidence)
