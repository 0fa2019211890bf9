"""The joiner: the processor's one stateful piece.

State is the set of evidence seen per record (plus, per record, whether its join window
has passed and what was last emitted for it). Everything else — indexes, links, versions —
is derived from that state, so it can be rebuilt from the changelog after a restart.

- `add()` folds evidence in; `add_deployment()` registers a deployment version and marks
  the calls it may match; `sweep()` settles records whose join window has passed.
- `flush()` materialises every record the changes may have touched and returns those whose
  content or version changed (records and findings), ready to produce.
- `state_changes()` returns the changelog entries (key, value or None for a tombstone)
  changed since the last call; the service writes them after the outputs are acknowledged.
  It first holds the state to its caps (`processor.state_max_entries` / `_max_bytes`):
  the oldest settled records leave first, with everything in their traces.

Records that left the state are remembered compactly (processors/forgotten.py): a late
duplicate of their evidence changes nothing, and a late tool action naming one of a
forgotten call's tool-call ids is still joined to it.

Merging is order-independent (see build.py): any interleaving and any duplication of the
same input yields the same final records.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter, OrderedDict
from typing import Any, Iterable, Mapping

import orjson

from nimtrail import records
from nimtrail.config import ProcessorConfig
from processors import evidence as ev, traces
from processors.build import AddressMap, Builder, Built
from processors.entry import Entry, share
from processors.deployments import Registry
from processors.evidence import Evidence
from processors.forgotten import CallLink, Forgotten, is_piece

_ROLE = {(ev.MODEL_CALL, ev.SPAN_CLIENT): traces.CLIENT, (ev.MODEL_CALL, ev.SPAN_NIM): traces.NIM,
         (ev.TOOL_ACTION, ev.SPAN_TOOL): traces.ACTION, (ev.AGENT, ev.SPAN_AGENT): traces.AGENT,
         (ev.MCP, ev.SPAN_MCP_CLIENT): traces.MCP_CLIENT, (ev.MCP, ev.SPAN_MCP_SERVER): traces.MCP_SERVER,
         (ev.CALL_SPAN, ev.SPAN_CLIENT): traces.CALL_SPAN}


def fingerprint(record: dict[str, Any]) -> str:
    return hashlib.blake2b(records.canonical_bytes(record), digest_size=12).hexdigest()


class Joiner:
    schedule_slack = 10_000  # heap items beyond twice the live entries before a rebuild
    def __init__(self, config: ProcessorConfig = ProcessorConfig(), registry: Registry | None = None):
        self.window = float(config.join_window)
        self.ttl = float(config.state_ttl)
        self.max_entries = config.state_max_entries
        self.max_bytes = config.state_max_bytes
        self.bytes = 0  # sum of the entries' sizes
        self._unsized = 0  # entries added since the last state write (no size yet)
        self.forgotten = Forgotten(config.state_forgotten_ids)
        self.evicted: Counter[str] = Counter()  # why -> entries evicted, since last taken
        self.settled_early = 0  # records settled before their window because the state was full
        self.late_duplicates = 0  # evidence of forgotten records, ignored
        # Settled entries, least recently touched first: the order the caps evict in.
        # Oldest settled first; an OrderedDict so that taking the first is O(1) however
        # many were removed before it (forgotten.py says why a dict is not).
        self._settled_order: OrderedDict[str, None] = OrderedDict()
        self.registry = registry if registry is not None else Registry()
        self.address_map = AddressMap(config.address_map)
        self.entries: dict[str, Entry] = {}
        self.traces = traces.TraceIndex()
        self.calls_by_tool_call: dict[str, set[str]] = {}
        self.actions_by_tool_call: dict[str, set[str]] = {}
        self.calls_by_identity: dict[str, set[str]] = {}
        self.calls_by_nim_parent: dict[str, set[str]] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._expiry: list[tuple[float, str]] = []
        self._dirty: set[str] = set()
        self._alone: set[str] = set()  # to build again by themselves (nothing they affect changed)
        self._dirty_traces: set[str] = set()
        self._changed: set[str] = set()

    # -- input --------------------------------------------------------------------------

    def add(self, items: Iterable[Evidence], now: float) -> int:
        """Fold evidence into the state; returns how many items were new."""
        new = 0
        for item in items:
            entry_id = f"{item.kind}|{item.key}"
            entry = self.entries.get(entry_id)
            if entry is None:
                if self.forgotten.seen(entry_id, item.evidence_id):
                    self.late_duplicates += 1  # its record left the state with this in it
                    continue
                entry = self.entries[entry_id] = Entry(item.kind, item.key, now, entry_id)
                self._unsized += 1
                entry.saw(item)
                if item.kind != ev.AGENT:
                    heapq.heappush(self._deadlines, (now + self.window, entry_id))
                heapq.heappush(self._expiry, (self._expires(entry), entry_id))
            elif item.evidence_id in entry.evidence:
                continue
            else:
                entry.saw(item)
            share(item.fields)
            entry.evidence[item.evidence_id] = item
            entry.touched = now
            if entry.settled:  # most recently touched: evicted last
                self._settled_order[entry_id] = None
                self._settled_order.move_to_end(entry_id)
            self._index(entry, item)
            self._dirty.add(entry_id)
            self._changed.add(entry_id)
            new += 1
        return new

    def _index(self, entry: Entry, item: Evidence) -> None:
        f = item.fields
        trace_id, span_id = f.get("trace_id"), f.get("span_id")
        role = _ROLE.get((item.kind, item.source))
        if trace_id and span_id and role:
            self.traces.add(trace_id, traces.Node(entry.id, role, f))
            self._dirty_traces.add(trace_id)
        if item.kind == ev.MODEL_CALL:
            for tool_call_id in f.get("tool_call_ids") or ():
                self.calls_by_tool_call.setdefault(tool_call_id, set()).add(entry.id)
            for identity in f.get("identities") or ():
                self.calls_by_identity.setdefault(identity, set()).add(entry.id)
            if item.source == ev.SPAN_NIM and f.get("parent_span_id"):
                self.calls_by_nim_parent.setdefault(f["parent_span_id"], set()).add(entry.id)
        elif item.kind in (ev.TOOL_ACTION, ev.MCP) and f.get("tool_call_id"):  # an MCP span may be the action
            self.actions_by_tool_call.setdefault(f["tool_call_id"], set()).add(entry.id)
        elif item.kind == ev.CALL_SPAN:
            for identity in f.get("identities") or ():
                self.calls_by_identity.setdefault(identity, set()).add(entry.id)

    def add_deployment(self, record: dict[str, Any], mark: bool = True) -> bool:
        """Register a deployment version (ValueError if it is not a usable record) and
        mark every call it may now match — unless `mark` is False: a version registered
        before the state was written, whose effects the state's records already show.
        False when the version was known already."""
        added = self.registry.add(record)
        if added is None:
            return False
        if mark:
            self.mark_deployment(added)
        return True

    def mark_deployment(self, added: tuple[Iterable[str], Iterable[str]]) -> None:
        """Mark every call the identity keys and pod prefixes of a newly registered
        deployment version (Registry.add's answer) may now match."""
        keys, prefixes = added
        for key in keys:
            self._dirty.update(self.calls_by_identity.get(key, ()))
        for identity, entry_ids in self.calls_by_identity.items():
            if identity.startswith("pod:") and any(identity[4:].startswith(p) for p in prefixes):
                self._dirty.update(entry_ids)

    # What the builder asks of a joiner that holds a share of the calls
    # (processors/partitions.py); one joiner holding every call owns them all.
    def owns(self, entry: Entry) -> bool:
        return True

    def remote_link(self, tool_call_id: str) -> CallLink | None:
        return None

    def sweep(self, now: float) -> int:
        """Settle records whose join window has passed (their findings are judged from now
        on) and drop state untouched for state_ttl. Returns how many settled."""
        settled = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            _, entry_id = heapq.heappop(self._deadlines)
            entry = self.entries.get(entry_id)
            if entry is None or entry.settled:
                continue
            self._settle(entry)
            settled += 1
        later = []
        while self._expiry and self._expiry[0][0] <= now:
            _, entry_id = heapq.heappop(self._expiry)
            if entry_id in self.entries:
                retry = self._expire(entry_id, now)
                if retry is not None:
                    later.append((retry, entry_id))
        for item in later:
            heapq.heappush(self._expiry, item)
        return settled

    def _settle(self, entry: Entry) -> None:
        entry.settled = True
        self._settled_order[entry.id] = None
        self._dirty.add(entry.id)
        self._changed.add(entry.id)

    def _expires(self, entry: Entry) -> float:
        """When an entry's TTL passes: state_ttl after the time its evidence states (or
        after it was last touched, if that is earlier), so that a replay of old input does
        not hold the state for the whole TTL; but never within a join window of its last
        touch, so what arrives together still joins."""
        since = entry.touched if entry.event is None else min(entry.touched, entry.event)
        return max(since + self.ttl, entry.touched + self.window)

    def _expire(self, entry_id: str, now: float) -> float | None:
        """Evict a record whose TTL passed. Returns when to look again, if not evicted now."""
        members = self._group(entry_id)
        due = max(self._expires(e) for e in members)
        if due > now or not self._evictable(members):
            return max(due, now + self.window)
        self._evict(members, "ttl")
        return None

    def _group(self, entry_id: str) -> list[Entry]:
        """An entry with everything in its traces: what is evicted together, or not at all —
        evicting part of a trace would shrink the versions of what stays."""
        group = {entry_id}
        for item in self.entries[entry_id].evidence.values():
            if item.fields.get("trace_id"):
                group |= self.traces.entries(item.fields["trace_id"])
        return [self.entries[g] for g in group if g in self.entries]

    def _evictable(self, members: list[Entry]) -> bool:
        """Settled (agents never settle: they leave with their traces), and nothing about
        them waiting to be materialised."""
        return (not any(e.id in self._dirty or e.id in self._alone for e in members)
                and all(e.settled or e.kind == ev.AGENT for e in members))

    def _evict(self, members: list[Entry], reason: str) -> None:
        # A call restored and not changed since has no link yet: build it while its whole
        # trace is still here (its version counts the trace). A copy of a call owned
        # elsewhere leaves no link: its owner's is the one that counts.
        builder = None
        for entry in members:
            if entry.kind == ev.MODEL_CALL and entry.link is None and self.owns(entry) and any(
                    e.fields.get("tool_call_ids") for e in entry.evidence.values()):
                builder = builder or Builder(self, self.address_map)
                entry.link = self._link(builder.call(entry).record)
        for entry in members:
            del self.entries[entry.id]
            self._settled_order.pop(entry.id, None)
            self.bytes -= entry.size
            for item in entry.evidence.values():
                self._unindex(entry, item)
            self._changed.add(entry.id)
            tool_call_ids = ({t for e in entry.evidence.values() for t in e.fields.get("tool_call_ids") or ()}
                             if entry.link is not None else ())
            self.forgotten.add(entry.id, entry.evidence, entry.link, tool_call_ids)
        self.evicted[reason] += len(members)

    def _prune_schedules(self) -> None:
        """Drop the deadlines and expiries of entries that left the state. An evicted entry's
        items stay in both heaps until their time comes (an hour for the TTL): at thousands
        of new entries a second that is millions of tuples, memory the caps do not see.
        Rebuilt when they hold twice the live entries, so the cost is amortised O(1)."""
        for name in ("_deadlines", "_expiry"):
            heap = getattr(self, name)
            if len(heap) > 2 * len(self.entries) + self.schedule_slack:
                kept = [item for item in heap if item[1] in self.entries]
                heapq.heapify(kept)
                setattr(self, name, kept)

    def _over_cap(self) -> str | None:
        if len(self.entries) > self.max_entries:
            return "max_entries"
        if self.bytes > self.max_bytes:
            return "max_bytes"
        return None

    def _hold_to_caps(self) -> None:
        """Evict the least recently touched settled records (with their traces) until the
        state is within its caps. If what is left over the cap is all unsettled, settle the
        oldest of it now, before its join window ends: it is judged in the next flush and
        can leave in the next call. The cap then shortens the join window, which is what
        a full state must give up (the other choice is running out of memory)."""
        # Bounded, so that a state whose oldest settled records all sit in traces still
        # joining costs a batch little (what is passed over goes to the back).
        tries = min(len(self._settled_order), 2 * max(0, len(self.entries) - self.max_entries) + 1000)
        while (reason := self._over_cap()) is not None and tries > 0 and self._settled_order:
            tries -= 1
            entry_id = next(iter(self._settled_order))
            members = self._group(entry_id)
            if self._evictable(members):
                self._evict(members, reason)
            else:  # its trace is still joining: look at it again after the others
                self._settled_order.move_to_end(entry_id)
        reason = self._over_cap()
        if reason is None:
            return
        if reason == "max_entries":
            excess = len(self.entries) - self.max_entries
        else:
            excess = -(-(self.bytes - self.max_bytes) * len(self.entries) // max(self.bytes, 1))
        self._settle_early(excess)

    def _settle_early(self, count: int) -> None:
        """Settle at least `count` of the oldest unsettled records now, each with the rest
        of its traces: a trace settled in parts is built and judged once per part."""
        while count > 0 and self._deadlines:
            _, entry_id = heapq.heappop(self._deadlines)
            entry = self.entries.get(entry_id)
            if entry is None or entry.settled:
                continue
            for member in self._group(entry_id):
                if not member.settled and member.kind != ev.AGENT:  # agents leave with their traces
                    self._settle(member)
                    self.settled_early += 1
                    count -= 1

    def _unindex(self, entry: Entry, item: Evidence) -> None:
        f = item.fields
        if f.get("trace_id") and f.get("span_id"):
            self.traces.remove(f["trace_id"], f["span_id"])
        for index, keys in ((self.calls_by_tool_call, f.get("tool_call_ids") or ()),
                            (self.calls_by_identity, f.get("identities") or ()),
                            (self.actions_by_tool_call, [f["tool_call_id"]] if f.get("tool_call_id") else ()),
                            (self.calls_by_nim_parent, [f["parent_span_id"]] if f.get("parent_span_id") else ())):
            for key in keys:
                ids = index.get(key)
                if ids is not None:
                    ids.discard(entry.id)
                    if not ids:
                        del index[key]

    # -- output -------------------------------------------------------------------------

    def _affected(self) -> list[Entry]:
        """Every entry whose record may have changed: the dirty ones, everything in their
        traces (parentage links within a trace), and the actions that name a tool call of
        an affected call (links across traces)."""
        affected = set(self._dirty)
        traces_touched = set(self._dirty_traces)
        for entry_id in self._dirty:
            entry = self.entries.get(entry_id)
            if entry is not None:
                traces_touched.update(e.fields["trace_id"] for e in entry.evidence.values()
                                      if e.fields.get("trace_id"))
        for trace_id in traces_touched:
            affected |= self.traces.entries(trace_id)
        for entry_id in list(affected):
            entry = self.entries.get(entry_id)
            if entry is not None and entry.kind == ev.MODEL_CALL:
                for item in entry.evidence.values():
                    for tool_call_id in item.fields.get("tool_call_ids") or ():
                        affected |= self.actions_by_tool_call.get(tool_call_id, set())
        affected |= self._alone
        self._dirty.clear()
        self._alone.clear()
        self._dirty_traces.clear()
        return [self.entries[e] for e in sorted(affected) if e in self.entries]

    def _make_room(self) -> None:
        """Before a batch is built: when the state would stay over its caps even once
        everything settled had left, settle its oldest unsettled records now. They are
        judged in this flush and can leave at this state write; settled only at the write
        (_hold_to_caps), they stayed a batch longer and the state ran a batch or two over
        its caps. (Agents never settle and leave with their traces: this settles a little
        less than a full state needs, and _hold_to_caps settles the rest.)"""
        room = self.max_entries
        sized = len(self.entries) - self._unsized
        if sized > 0 and self.bytes > 0:  # the byte cap, in entries of today's average size
            room = min(room, self.max_bytes * sized // self.bytes)
        self._settle_early(len(self.entries) - len(self._settled_order) - room)

    def flush(self) -> list[tuple[str, dict[str, Any]]]:
        """(kind, record) for every record and finding whose content or version changed.
        `observed_at` is stamped here: it is the only field that differs between replays."""
        self._make_room()
        builder = Builder(self, self.address_map)
        out: list[tuple[str, dict[str, Any]]] = []
        observed = records.now_iso()
        for entry in self._affected():
            built = self._build(builder, entry)
            if built is None:
                continue
            record = built.record
            mark = fingerprint(record)
            if entry.kind == ev.MODEL_CALL:
                link = self._link(record)
                if link is not None and link != entry.link:
                    self._linked(record, link)
                entry.link = link
            if mark != entry.emitted:
                entry.emitted = mark
                self._changed.add(entry.id)
                out.append((built.kind, {**record, "observed_at": observed}))
            if entry.settled:
                out.extend(self._judge(entry, built, observed))
        self.traces.drop_roles()
        return out

    @staticmethod
    def _link(record: dict[str, Any]) -> CallLink | None:
        """What a tool action needs of this call once it left the state."""
        if not record.get("tool_call_ids"):
            return None
        return CallLink(record["call_id"], record["version"], record["started_at"],
                        record["deployment_id"], record["deployment_version"])

    def _linked(self, record: dict[str, Any], link: CallLink) -> None:
        """A call's link changed (a joiner holding a share of the calls publishes it)."""

    @staticmethod
    def _build(builder: Builder, entry: Entry) -> Built | None:
        if entry.kind == ev.MODEL_CALL:
            return builder.call(entry)
        if entry.kind == ev.TOOL_ACTION:
            return builder.action(entry)
        if entry.kind == ev.MCP:  # the builder decides when it is an action of its own
            return builder.standalone_mcp(entry)
        if entry.kind == ev.CALL_SPAN and entry.settled:
            return builder.standalone_call(entry)
        return None

    def _judge(self, entry: Entry, built: Built, observed: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        version = built.record["version"]
        current = {f["finding_id"]: f for f in built.findings()}
        for finding_id, finding in current.items():
            finding["version"] = version
            mark = fingerprint(finding)
            if entry.raised.get(finding_id, {}).get("h") != mark:
                entry.raised[finding_id] = {"h": mark, "f": finding}
                self._changed.add(entry.id)
                out.append(("finding", {**finding, "observed_at": observed}))
        for finding_id, last in entry.raised.items():
            if finding_id in current or last["f"]["detail"].get("status") == "resolved":
                continue
            resolved = {**last["f"], "version": max(version, last["f"]["version"] + 1),
                        "detail": {**last["f"]["detail"], "status": "resolved"}}
            entry.raised[finding_id] = {"h": fingerprint(resolved), "f": resolved}
            self._changed.add(entry.id)
            out.append(("finding", {**resolved, "observed_at": observed}))
        return out

    # -- the changelog ------------------------------------------------------------------

    def state_changes(self, rewrite: Iterable[str] = ()) -> list[tuple[str, bytes | None]]:
        """Changelog entries changed since the last call: (entry id, value or None), after
        holding the state to its caps (an evicted entry's value is None: its tombstone);
        also the entries of `rewrite` still held, unchanged (chunks.Chunks.sparse_values)."""
        self._changed.update(entry_id for entry_id in rewrite if entry_id in self.entries)
        encoded = {}
        for entry_id in self._changed:
            entry = self.entries.get(entry_id)
            if entry is not None:
                value = encoded[entry_id] = entry.encode()
                self.bytes += len(value) - entry.size
                entry.size = len(value)
        self._unsized = 0
        self._hold_to_caps()
        self._prune_schedules()
        out = [(entry_id, encoded.get(entry_id) if entry_id in self.entries else None)
               for entry_id in sorted(self._changed)]
        self._changed.clear()
        # What left the state now, and the end of what left it long ago (forgotten.py).
        out += self.forgotten.seal()
        out += [(piece, None) for piece in self.forgotten.expired()]
        return out

    def restore(self, state: Mapping[str, bytes | dict[str, Any]] | Iterable[tuple[str, bytes | dict[str, Any]]],
                now: float) -> int:
        """Rebuild from the changelog's latest value per entry, taken one at a time (a
        mapping, or pairs in any order); returns how many entries came back. Unsettled
        records get a whole join window from now: the time the processor was down does not
        count, since their counterparts may be waiting unread in Kafka."""
        settled: list[tuple[float, str]] = []
        pieces: list[tuple[str, dict[str, Any]]] = []
        for entry_id, value in (state.items() if isinstance(state, Mapping) else state):
            if is_piece(entry_id):
                pieces.append((entry_id, value if isinstance(value, dict) else orjson.loads(value)))
                continue
            entry = Entry.decode(entry_id, value)
            self.entries[entry_id] = entry
            entry.size = len(value) if isinstance(value, bytes) else len(orjson.dumps(value))
            self.bytes += entry.size
            if entry.settled:
                settled.append((entry.touched, entry_id))
            for item in entry.evidence.values():
                self._index(entry, item)
            if not entry.settled and entry.kind != ev.AGENT:
                heapq.heappush(self._deadlines, (now + self.window, entry_id))
            heapq.heappush(self._expiry, (max(self._expires(entry), now + self.window), entry_id))
        settled.sort()
        self._settled_order.update(dict.fromkeys(entry_id for _, entry_id in settled))
        self.forgotten.restore(pieces)
        # Nothing is re-materialised: every output of this state was acknowledged before the
        # state was written. What may differ is what deployments registered while the
        # processor was down match; add_deployment marks those calls as the service passes
        # the new ones (rebuilding every record here took longer than reading the state).
        self._dirty_traces.clear()
        self._changed.clear()
        return len(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def sizes(self) -> tuple[int, int, int]:
        """(entries, their encoded bytes, evidence ids forgotten and still known)."""
        return len(self.entries), self.bytes, len(self.forgotten)
