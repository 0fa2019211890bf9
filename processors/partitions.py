"""The join split over the partitions of the evidence topic: N processors share the work.

Normalising is stateless: any member normalises the raw messages of the partitions it is
given and produces the evidence to the evidence topic, placed by `route_key`: span
evidence by its trace (so a trace's parentage, agents, MCP spans and the calls and actions
in it meet in one partition), log evidence by its record's key (a NIM or gateway log line
names its call by request id, not by trace). Each evidence partition then has a joiner of
its own (`PartitionJoiner`), with its share of the state; the joins that cross partitions
are foreign-key joins through each key's *home*, the partition its key hashes to:

- **A call's evidence meets at the call's home.** A partition that holds evidence of call
  C from its own traces sends it to C's home; the home holds every item of C (its log
  lines too) and sends each new one to every partition holding a trace of C — the whole
  set to a partition newly holding one. So every partition where C's spans are ends up
  with all of C's evidence, as a single joiner would hold it.
- **One of them owns the call**: the partition of the trace of its best span (the client
  span, else NIM's), else its home (a call known only from logs). Only the owner builds
  and emits it, so two partitions never emit two versions of one record; its trace is
  where the caller and agent weight come from, exactly as a single joiner has them.
- **An action meets its call at the tool-call id's home.** The owner of a call that lists
  tool-call ids publishes its link (processors/forgotten.py, `CallLink`: what an action
  takes from its call) to each id's home at every new version; a partition holding an
  action names its tool-call id there (a subscription). The home sends the best link to
  every subscriber, now and at each new version, and the action joins the call as it
  joins one that left the state — with the same record and the same version.

All three travel as evidence (kinds `LINKS` and `LINKED` beside the normalisers'), so they
are deduplicated by id, written to the changelog with the rest of the state, and sending
one twice changes nothing: the loop's delivery order (outputs acknowledged, then state,
then offsets) keeps the trail exact across crashes and rebalances.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from nimtrail import kafka_io
from nimtrail.config import ProcessorConfig
from processors import evidence as ev
from processors.build import Builder, Built
from processors.deployments import Registry
from processors.entry import Entry
from processors.evidence import Evidence
from processors.forgotten import CallLink
from processors.join import Joiner

LINKS = "links"  # at a tool-call id's home: the links of the calls listing it, and its subscribers
LINKED = "linked"  # where an action waits: the links its tool-call id's home sent
_SUBSCRIBER = "sub"
_LINK = "link"
# Which of a call's spans decides where it is owned: the caller's, else NIM's.
_OWNING_RANK = {ev.SPAN_CLIENT: 0, ev.SPAN_NIM: 1}


def route_key(item: Evidence) -> str:
    """The key that places an evidence item in the evidence topic: its trace, else the
    key of its record (a log line's call id)."""
    return item.fields.get("trace_id") or item.key


def best_link(entry: Entry | None) -> Evidence | None:
    """Of the links held for one tool-call id, the one an action joins: the call a single
    joiner would choose (the earliest, then the smallest id), at its highest version."""
    if entry is None:
        return None
    links = [e for e in entry.evidence.values() if e.source == _LINK]
    if not links:
        return None
    first = min(links, key=lambda e: (e.fields["started_at"] or "", e.fields["call_id"]))
    return max((e for e in links if e.fields["call_id"] == first.fields["call_id"]),
               key=lambda e: e.fields["version"])


def _link_item(kind: str, tool_call_id: str, link: CallLink) -> Evidence:
    """A call's link as evidence for a tool-call id; `tool_call_ids` names the id, so that
    the link is remembered for it when the entry leaves the state."""
    return Evidence(kind, tool_call_id, _LINK, f"{link.call_id}:{link.version}",
                    {**link._asdict(), "tool_call_ids": [tool_call_id]})


def _call_link(item: Evidence) -> CallLink:
    return CallLink(*(item.fields[f] for f in CallLink._fields))


class PartitionJoiner(Joiner):
    """The joiner of one partition of the evidence topic (of `partitions`)."""

    def __init__(self, config: ProcessorConfig, registry: Registry, partition: int, partitions: int):
        super().__init__(config, registry)
        self.partition = partition
        self.partitions = partitions
        self.outbox: dict[int, list[Evidence]] = defaultdict(list)  # for other partitions
        self._to_self: list[Evidence] = []
        self._now = 0.0
        self._restoring = False

    def home(self, key: str) -> int:
        return kafka_io.partition_of(key, self.partitions)

    def _origin(self, item: Evidence) -> int:
        """The partition whose input an item is: its trace's, else its record's home."""
        return self.home(route_key(item))

    def _send(self, partition: int, item: Evidence) -> None:
        (self._to_self if partition == self.partition else self.outbox[partition]).append(item)

    def take_outbox(self) -> dict[int, list[Evidence]]:
        out, self.outbox = self.outbox, defaultdict(list)
        return out

    # -- input --------------------------------------------------------------------------

    def add(self, items: Iterable[Evidence], now: float) -> int:
        self._now = now
        new = super().add(items, now)
        while self._to_self:
            mine, self._to_self = self._to_self, []
            new += super().add(mine, now)
        return new

    def _index(self, entry: Entry, item: Evidence) -> None:
        super()._index(entry, item)
        if self._restoring:
            return
        if item.kind == ev.MODEL_CALL:
            self._share_call(entry, item)
        elif item.kind in (ev.TOOL_ACTION, ev.MCP) and item.fields.get("tool_call_id"):
            tool_call_id = item.fields["tool_call_id"]
            self._send(self.home(tool_call_id), Evidence(LINKS, tool_call_id, _SUBSCRIBER, f"sub:{self.partition}",
                                                         {"partition": self.partition}))
        elif item.kind in (LINKS, LINKED):
            # Kept as a call's link is, so that what leaves the state is still known
            # (processors/forgotten.py): a late subscriber, or action, still joins.
            best = best_link(entry)
            entry.link = _call_link(best) if best is not None else None
            if item.kind == LINKS:
                self._pass_link(entry, item)
            else:
                self._dirty.update(self.actions_by_tool_call.get(entry.key, ()))

    def _share_call(self, entry: Entry, item: Evidence) -> None:
        """Send a call's evidence from where its traces are to its home, and from its home
        to every partition holding one of its traces."""
        home, origin = self.home(entry.key), self._origin(item)
        if home != self.partition:
            if origin == self.partition:
                self._send(home, item)
            return
        holders = {self._origin(e) for e in entry.evidence.values() if e is not item} - {self.partition}
        if origin != self.partition and origin not in holders:
            for other in entry.evidence.values():
                if self._origin(other) != origin:
                    self._send(origin, other)
        for holder in holders - {origin}:
            self._send(holder, item)

    def _pass_link(self, entry: Entry, item: Evidence) -> None:
        """At a tool-call id's home: a new subscriber gets the best link; a new best link
        goes to every subscriber."""
        best = best_link(entry)
        if best is None:
            gone = self.forgotten.call(entry.key)  # the calls' links left the state here
            if gone is None:
                return
            best = _link_item(LINKS, entry.key, gone)
        if item.source == _SUBSCRIBER:
            targets = [item.fields["partition"]]
        elif best is item:
            targets = [e.fields["partition"] for e in entry.evidence.values() if e.source == _SUBSCRIBER]
        else:
            return
        for partition in targets:
            self._send(partition, _link_item(LINKED, entry.key, _call_link(best)))

    def restore(self, state, now: float) -> int:
        self._restoring = True
        try:
            return super().restore(state, now)
        finally:
            self._restoring = False

    # -- what the builder asks ----------------------------------------------------------

    def owns(self, entry: Entry) -> bool:
        if entry.kind != ev.MODEL_CALL:
            return True  # placed by its trace: all of it is here
        spans = [e for e in entry.evidence.values() if e.source in _OWNING_RANK and e.fields.get("trace_id")]
        if not spans:
            return self.home(entry.key) == self.partition
        best = min(spans, key=lambda e: (_OWNING_RANK[e.source], e.evidence_id))
        return self.home(best.fields["trace_id"]) == self.partition

    def remote_link(self, tool_call_id: str) -> CallLink | None:
        entry = self.entries.get(f"{LINKED}|{tool_call_id}")
        return entry.link if entry is not None else None

    # -- output -------------------------------------------------------------------------

    def _build(self, builder: Builder, entry: Entry) -> Built | None:
        if entry.kind == ev.MODEL_CALL and not self.owns(entry):
            return None  # a copy: its owner emits it
        return Joiner._build(builder, entry)

    def _linked(self, record: dict[str, Any], link: CallLink) -> None:
        for tool_call_id in record["tool_call_ids"] or ():
            self._send(self.home(tool_call_id), _link_item(LINKS, tool_call_id, link))

    def flush(self) -> list[tuple[str, dict[str, Any]]]:
        out = super().flush()
        while self._to_self:  # links for ids whose home is here: joined in this flush
            self.add([], self._now)
            out += super().flush()
        return out


class Partitioned:
    """Every partition's joiner in one process, behind the one joiner's interface the
    pipeline drives (Pipeline(joiner=Partitioned(...))): evidence is placed as the
    evidence topic would place it and delivered, with what the joiners send each other,
    before each flush. The same records as one joiner, which is what the tests compare;
    the service moves the same evidence through Kafka instead (processors/loop.py)."""

    def __init__(self, config: ProcessorConfig, partitions: int):
        self.registry = Registry()
        self.joiners = {p: PartitionJoiner(config, self.registry, p, partitions) for p in range(partitions)}
        self.partitions = partitions
        self.pending: dict[int, list[Evidence]] = defaultdict(list)
        self._now = 0.0

    def add(self, items: Iterable[Evidence], now: float) -> int:
        self._now = now
        count = 0
        for item in items:
            self.pending[kafka_io.partition_of(route_key(item), self.partitions)].append(item)
            count += 1
        return count

    def add_deployment(self, record: dict[str, Any], mark: bool = True) -> bool:
        added = self.registry.add(record)
        if added is None:
            return False
        if mark:
            for joiner in self.joiners.values():
                joiner.mark_deployment(added)
        return True

    def sweep(self, now: float) -> int:
        self._now = now
        return sum(joiner.sweep(now) for joiner in self.joiners.values())

    def _deliver(self) -> None:
        while self.pending:
            pending, self.pending = self.pending, defaultdict(list)
            for partition, items in sorted(pending.items()):
                joiner = self.joiners[partition]
                joiner.add(items, self._now)
                for target, sent in joiner.take_outbox().items():
                    self.pending[target].extend(sent)

    def flush(self) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        self._deliver()
        while True:
            for joiner in self.joiners.values():
                out += joiner.flush()
                for target, sent in joiner.take_outbox().items():
                    self.pending[target].extend(sent)
            if not self.pending:
                return out
            self._deliver()

    @property
    def entries(self) -> dict[str, Entry]:
        return {k: v for joiner in self.joiners.values() for k, v in joiner.entries.items()}
