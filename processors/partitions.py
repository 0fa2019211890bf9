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
- **An action meets its call at the tool-call id's home.** Most actions never need to:
  their call is in their own trace. A partition holding an action whose call is not
  owned there names its tool-call id at the id's home (a subscription); the home asks
  every partition for the id (`WANTED`, kept where it lands). From then on the owner of
  a call listing that id publishes its link (processors/forgotten.py, `CallLink`: what an
  action takes from its call) to the home at every new version, as does a partition
  that remembers such a call leaving its state. The home sends the best link to every
  subscriber, now and at each new version, and the action joins the call as it joins one
  that left the state — with the same record and the same version. Links are asked for,
  not published for every tool-call id: a call whose actions are in its own trace costs
  no entry at any id's home.

All travel as evidence (kinds `LINKS`, `WANTED` and `LINKED` beside the normalisers'), so
they are deduplicated by id, written to the changelog with the rest of the state, and
sending one twice changes nothing: the loop's delivery order (outputs acknowledged, then
state, then offsets) keeps the trail exact across crashes and rebalances.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from typing import Any, Iterable

import orjson

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
WANTED = "wanted"  # at every partition: an action elsewhere waits for a call listing this tool-call id
HOMED = "homed"  # from a call's home to a partition holding its spans: everything the home held is sent
_SUBSCRIBER = "sub"
# Tool-call ids remembered as subscribed, over all partitions: each partition keeps its share,
# as it holds its share of the state caps.
SUBSCRIPTIONS_KEPT = 100_000
_LINK = "link"
# How many times, at most, a call's evidence passes through the evidence topic before an
# action in another trace has joined it: its raw spans are normalised to their trace's
# partition (1), sent to the call's home (2), which answers "homed" (3); the owner then
# emits the call and publishes its link at the tool-call id's home (4), which sends it to
# the action's partition (5), where it is read (6). The action's side takes as many: its
# evidence is normalised (1), it subscribes at the id's home (2), which asks every
# partition (3); the owner publishes (4), the home answers (5), it is read (6). Settling
# waits for all six (processors/horizon.py): an action settled sooner would be found
# unattributed where one joiner, which makes all six steps at once, attributes it.
EVIDENCE_HOPS = 6
# Which of a call's spans decides where it is owned: the caller's, else NIM's.
_OWNING_RANK = {ev.SPAN_CLIENT: 0, ev.SPAN_NIM: 1}


def bare(item: Evidence) -> Evidence:
    """The item without the fields that have no value (a quarter of a span's), as it is
    placed for a partition, whether its joiner is in this process or another: every
    reader of evidence takes fields with .get(), so absent and None are one."""
    return Evidence(item.kind, item.key, item.source, item.evidence_id,
                    {k: v for k, v in item.fields.items() if v is not None})


def wire_form(items: Iterable[Evidence]) -> list[list[Any]]:
    """Placed (bare) evidence as the evidence topic carries it."""
    return [[e.kind, e.key, e.source, e.evidence_id, e.fields] for e in items]


def from_wire(items: Iterable[list[Any]]) -> list[Evidence]:
    return [Evidence.from_list(item) for item in items]


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
    first = min(links, key=lambda e: (e.fields.get("started_at") or "", e.fields["call_id"]))
    return max((e for e in links if e.fields["call_id"] == first.fields["call_id"]),
               key=lambda e: e.fields["version"])


def _link_item(kind: str, tool_call_id: str, link: CallLink) -> Evidence:
    """A call's link as evidence for a tool-call id, bare (as placed evidence is);
    `tool_call_ids` names the id, so that the link is remembered for it when the entry
    leaves the state."""
    fields = {k: v for k, v in link._asdict().items() if v is not None}
    return Evidence(kind, tool_call_id, _LINK, f"{link.call_id}:{link.version}",
                    {**fields, "tool_call_ids": [tool_call_id]})


def _call_link(item: Evidence) -> CallLink:
    return CallLink(*(item.fields.get(f) for f in CallLink._fields))  # (the wire form drops None)


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
        self._subscribed: set[str] = set()  # tool-call ids this partition subscribed to
        self._subscriptions_kept = -(-SUBSCRIPTIONS_KEPT // partitions)

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
        new = super().add(self._homed(items), now)
        while self._to_self:
            mine, self._to_self = self._to_self, []
            new += super().add(self._homed(mine), now)
        return new

    def _homed(self, items: Iterable[Evidence]) -> list[Evidence]:
        """The items but the home's word that it sent all it held of a call, which marks the
        call instead (kept on its entry): from now on it may be emitted from here."""
        rest = []
        for item in items:
            if item.kind != HOMED:
                rest.append(item)
                continue
            entry = self.entries.get(f"{ev.MODEL_CALL}|{item.key}")
            if entry is not None and not entry.homed:
                entry.homed = True
                self._alone.add(entry.id)  # its record, not its traces': nothing else changed
                self._changed.add(entry.id)
        return rest

    def _index(self, entry: Entry, item: Evidence) -> None:
        super()._index(entry, item)
        if item.kind in (LINKS, LINKED):
            # Kept as a call's link is, so that what leaves the state is still known
            # (processors/forgotten.py): a late subscriber, or action, still joins.
            best = best_link(entry)
            entry.link = _call_link(best) if best is not None else None
        if self._restoring:
            return
        if item.kind == ev.MODEL_CALL:
            self._share_call(entry, item)
        elif item.kind == LINKS:
            self._pass_link(entry, item)
        elif item.kind == WANTED:
            self._answer_wanted(entry.key)
        elif item.kind == LINKED and not any(self.owns(self.entries[k])
                                             for k in self.calls_by_tool_call.get(entry.key, ())):
            # Its actions join it (no call owned here lists the id); nothing else changes.
            self._alone.update(self.actions_by_tool_call.get(entry.key, ()))

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
            self._send(origin, Evidence(HOMED, entry.key, HOMED, HOMED, {}))
        for holder in holders - {origin}:
            self._send(holder, item)

    def _pass_link(self, entry: Entry, item: Evidence) -> None:
        """At a tool-call id's home: a new subscriber gets the best link, and every
        partition is asked for the calls listing the id; a new best link goes to every
        subscriber."""
        if item.source == _SUBSCRIBER:
            for partition in range(self.partitions):
                self._send(partition, Evidence(WANTED, entry.key, WANTED, WANTED, {}))
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

    def _answer_wanted(self, tool_call_id: str) -> None:
        """An action elsewhere waits for a call listing `tool_call_id`: publish the link of
        each one owned here (built again first, if it has none yet: restored and not
        changed since), and of the one that left the state here, if any."""
        for entry_id in self.calls_by_tool_call.get(tool_call_id, ()):
            call = self.entries[entry_id]
            if not self.owns(call):
                continue
            if call.link is None:
                self._alone.add(entry_id)  # its link is published once it is built
            else:
                self._send(self.home(tool_call_id), _link_item(LINKS, tool_call_id, call.link))
        gone = self.forgotten.call(tool_call_id)
        if gone is not None:
            self._send(self.home(tool_call_id), _link_item(LINKS, tool_call_id, gone))

    def _wanted(self, tool_call_id: str) -> bool:
        entry_id = f"{WANTED}|{tool_call_id}"
        return entry_id in self.entries or self.forgotten.seen(entry_id, WANTED)

    def restore(self, state, now: float) -> int:
        self._restoring = True
        try:
            return super().restore(state, now)
        finally:
            self._restoring = False

    # -- what the builder asks ----------------------------------------------------------

    def owns(self, entry: Entry) -> bool:
        """Whether the entry's record is built here: for a call, the partition of its
        caller's trace (else NIM's), or its home when only its log lines are known."""
        if entry.kind != ev.MODEL_CALL:
            return True  # placed by its trace: all of it is here
        spans = [e for e in entry.evidence.values() if e.source in _OWNING_RANK and e.fields.get("trace_id")]
        if not spans:
            return self.home(entry.key) == self.partition
        best = min(spans, key=lambda e: (_OWNING_RANK[e.source], e.evidence_id))
        return self.home(best.fields["trace_id"]) == self.partition

    def _awaiting_home(self, entry: Entry) -> bool:
        """A call owned here whose home (elsewhere) has not sent what it holds yet: not
        emitted before that, since a record emitted then could carry the version of the
        home's own (log lines only) with other content; its actions join it meanwhile."""
        return (entry.kind == ev.MODEL_CALL and not entry.homed and self.home(entry.key) != self.partition
                and self.owns(entry) and any(e.source in _OWNING_RANK for e in entry.evidence.values()))

    def _evictable(self, members: list[Entry]) -> bool:
        """Never a call waiting for its home's answer here: it has not been emitted yet,
        and leaving now would lose it (its owner could never emit it)."""
        return super()._evictable(members) and not any(self._awaiting_home(e) for e in members)


    def remote_link(self, tool_call_id: str) -> CallLink | None:
        """The link the tool-call id's home sent, if any. Asked only for an action no call
        owned here lists: the first time, this partition subscribes at that home (most
        actions never need to: their call is in their own trace)."""
        entry = self.entries.get(f"{LINKED}|{tool_call_id}")
        if entry is None and tool_call_id and tool_call_id not in self._subscribed and not self._restoring:
            if len(self._subscribed) >= self._subscriptions_kept:
                self._subscribed.clear()  # subscribing twice is harmless: the home keeps one
            self._subscribed.add(tool_call_id)
            self._send(self.home(tool_call_id), Evidence(LINKS, tool_call_id, _SUBSCRIBER, f"sub:{self.partition}",
                                                         {"partition": self.partition}))
        return entry.link if entry is not None else None

    # -- output -------------------------------------------------------------------------

    def _build(self, builder: Builder, entry: Entry) -> Built | None:
        if entry.kind == ev.MODEL_CALL and (not self.owns(entry) or self._awaiting_home(entry)):
            return None  # a copy (its owner emits it), or not yet
        return Joiner._build(builder, entry)

    def _linked(self, record: dict[str, Any], link: CallLink) -> None:
        for tool_call_id in record["tool_call_ids"] or ():
            if self._wanted(tool_call_id):
                self._send(self.home(tool_call_id), _link_item(LINKS, tool_call_id, link))

    def flush(self) -> list[tuple[str, dict[str, Any]]]:
        out = super().flush()
        while self._to_self:  # links for ids whose home is here: joined in this flush
            self.add([], self._now)
            out += super().flush()
        return out


class Partitioned:
    """The joiners of the evidence partitions this process holds, behind the one joiner's
    interface the pipeline drives (Pipeline(joiner=Partitioned(...))). Evidence added is
    placed as the evidence topic places it, with what the joiners send each other: `flush`
    hands what is placed for a partition held here straight to its joiner, and leaves the
    rest in `pending`, which the service produces to the evidence topic; it `deliver`s what
    it consumes there (processors/partitioned_loop.py). Handing over in process is as safe
    as the topic: a joiner's state, with what it was handed, is written before the offsets
    of the input it came from are committed, so a crash repeats that input and its evidence.

    Without `held`, every partition is held here and each hand-over goes through the
    topic's wire form (JSON), as if each partition had a process of its own: one joiner's
    records, which the tests compare.

    Each joiner holds its share of the state caps, so the partitions together hold what
    one joiner would, however many of them one process holds."""

    def __init__(self, config: ProcessorConfig, partitions: int, held: Iterable[int] | None = None):
        self.registry = Registry()
        self.partitions = partitions
        self.window = float(config.join_window)
        self.in_process = held is None
        self._config = dataclasses.replace(
            config, state_max_entries=-(-config.state_max_entries // partitions),
            state_max_bytes=-(-config.state_max_bytes // partitions),
            state_forgotten_ids=-(-config.state_forgotten_ids // partitions))
        self.joiners: dict[int, PartitionJoiner] = {}
        for partition in range(partitions) if held is None else held:
            self.hold(partition)
        self.pending: dict[int, list[Evidence]] = defaultdict(list)
        # (by whom: "normaliser" or "joiner", source) -> evidence items placed for
        # partitions held elsewhere: what goes through the evidence topic.
        self.sent_away: Counter[tuple[str, str]] = Counter()
        self._now = 0.0

    def hold(self, partition: int) -> PartitionJoiner:
        """A new, empty joiner for `partition`, for the caller to restore."""
        joiner = self.joiners[partition] = PartitionJoiner(self._config, self.registry, partition, self.partitions)
        return joiner

    def release(self, partition: int) -> None:
        self.joiners.pop(partition, None)

    def add(self, items: Iterable[Evidence], now: float) -> int:
        self._now = now
        count = 0
        for item in items:
            partition = kafka_io.partition_of(route_key(item), self.partitions)
            self.pending[partition].append(bare(item))
            if partition not in self.joiners:
                self.sent_away["normaliser", item.source] += 1
            count += 1
        return count

    def deliver(self, partition: int, items: list[Evidence], now: float) -> None:
        """Evidence from the evidence topic's `partition` into its joiner."""
        self._now = now
        joiner = self.joiners[partition]
        joiner.add(items, now)
        self._collect(joiner)

    def _collect(self, joiner: PartitionJoiner) -> None:
        for target, sent in joiner.take_outbox().items():
            # Already bare: a joiner sends what it holds, or builds bare (`_link_item`).
            self.pending[target].extend(sent)
            if target not in self.joiners:
                self.sent_away.update(("joiner", item.source) for item in sent)

    def take_pending(self) -> dict[int, list[Evidence]]:
        out, self.pending = self.pending, defaultdict(list)
        return out

    def add_deployment(self, record: dict[str, Any], mark: bool = True) -> bool:
        """Register a version once for every joiner here, and mark each one's calls: a
        joiner restored later is marked for all versions then (`hold`), so `mark` is moot."""
        added = self.registry.add(record)
        if added is None:
            return False
        for joiner in self.joiners.values():
            joiner.mark_deployment(added)
        return True

    def sweep(self, now: float) -> int:
        self._now = now
        return sum(joiner.sweep(now) for joiner in self.joiners.values())

    def sizes(self) -> tuple[int, int, int]:
        each = [joiner.sizes() for joiner in self.joiners.values()]
        return tuple(sum(s[i] for s in each) for i in range(3))  # type: ignore[return-value]

    def _deliver_pending(self) -> bool:
        """Hand what is placed for partitions held here to their joiners, until what that
        makes is all for partitions elsewhere; whether any was handed over."""
        handed = False
        while local := sorted(p for p in self.pending if p in self.joiners):
            for partition in local:
                items = self.pending.pop(partition)
                if self.in_process:
                    items = from_wire(orjson.loads(orjson.dumps(wire_form(items))))
                self.deliver(partition, items, self._now)
            handed = True
        return handed

    def flush(self) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        self._deliver_pending()
        while True:
            for joiner in self.joiners.values():
                out += joiner.flush()
                self._collect(joiner)
            if not self._deliver_pending():
                return out
