"""Materialising records from the join state: merge evidence, link, and version.

The rule that makes the audit trail converge whatever the order of arrival: a record's
content is a function of the state it depends on, and its `version` counts that state
(its evidence, plus every candidate it was chosen among). State only grows, so the version
only grows, and it grows whenever the content could have changed. The final emission of a
record therefore carries both its final content and its highest version, and the
warehouse's rule (keep the highest version) keeps exactly that.

Dependencies, and what each version counts:
- model_call: its evidence (and that of a client span without response id whose NIM child
  it is); every registered version of every deployment its identities point at; the
  known ancestors and the invoke_agent spans of its client span's trace.
- tool_action: its evidence; the MCP spans of its trace and their known ancestors; the
  execute_tool spans of its trace; its ancestors and agents; the full version of every
  candidate call (calls in the same trace, calls listing its tool_call_id).

Each kind is built from two parts, split where a partitioned topology would split the work
(docs/scale.md, "Processors"): a call from what its traces say (`trace_views`) and what
needs only its evidence and the deployments (`merged_call`); an action from what its own
trace says (`action_part`) and its join to the calls it was chosen among (`linked_action`).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Mapping, NamedTuple, Protocol

from nimtrail import records
from processors import evidence as ev, policy, traces
from processors.deployments import Registry
from processors.entry import Entry
from processors.evidence import Evidence
from processors.forgotten import CallLink, Forgotten

# Lower rank wins. Client spans know the caller and the tool calls; NIM knows the timings.
_CALL_RANK = {ev.SPAN_CLIENT: 0, ev.SPAN_NIM: 1, ev.LOG_GATEWAY: 2, ev.LOG_NIM: 3, ev.LOG_ACCESS: 4}
_NIM_FIRST = {"ttft_ms", "queue_ms", "e2e_ms", "model", "input_tokens", "output_tokens"}
_ACTION_RANK = {ev.SPAN_TOOL: 0, ev.SPAN_MCP_CLIENT: 1, ev.SPAN_MCP_SERVER: 2}
_SERVER_FIRST = {"mcp_server"}


def _ordered(items: Iterable[Evidence], rank: dict[str, int]) -> list[Evidence]:
    return sorted(items, key=lambda e: (rank.get(e.source, 9), e.evidence_id))


_FIELDSETS = {kind: frozenset(fields) for kind, fields in records.FIELDS.items()}


def _merge(kind: str, ordered: list[Evidence], first: list[Evidence], first_fields: set[str]) -> dict:
    """Every canonical field from the highest-ranked evidence that has it (lowest rank
    written last, so it wins); `first_fields` taken in the order of `first` instead."""
    out = dict.fromkeys(records.FIELDS[kind])
    allowed = _FIELDSETS[kind]
    for item in reversed(ordered):
        for name, value in item.fields.items():
            if value is not None and name in allowed:
                out[name] = value
    for name in first_fields:
        for item in first:
            value = item.fields.get(name)
            if value is not None:
                out[name] = value
                break
    return out


def _value(ordered: list[Evidence], name: str, sources: tuple[str, ...] | None = None) -> Any:
    for item in ordered:
        if sources is None or item.source in sources:
            value = item.fields.get(name)
            if value is not None:
                return value
    return None


class AddressMap:
    """processor.address_map: the caller behind a client address, most specific match first."""

    def __init__(self, mapping: dict[str, str]):
        nets = [(ipaddress.ip_network(k, strict=False), v) for k, v in mapping.items()]
        self._nets = sorted(nets, key=lambda nv: -nv[0].prefixlen)

    def lookup(self, address: Any) -> str | None:
        if not address or not self._nets:
            return None
        try:
            ip = ipaddress.ip_address(str(address))
        except ValueError:
            return None
        return next((caller for net, caller in self._nets if ip in net), None)


class Built:
    """One materialised record, what it was judged against, and its findings."""

    __slots__ = ("kind", "record", "deployment", "call", "aliases")

    def __init__(self, kind: str, record: dict[str, Any], deployment: dict | None = None,
                 call: dict | None = None, aliases: list[str] | None = None):
        self.kind = kind
        self.record = record
        self.deployment = deployment
        self.call = call
        self.aliases = aliases or []

    def findings(self) -> list[dict[str, Any]]:
        if self.kind == "model_call":
            return policy.call_findings(self.record, self.deployment)
        return policy.action_findings(self.record, self.call, self.deployment, self.aliases)


class TraceView(NamedTuple):
    """What a client span's trace says of its call: the caller its invoke_agent ancestors
    name, and how many of the trace's spans that choice counted (its share of the version)."""
    caller: str | None
    weight: int


class ActionPart(NamedTuple):
    """An action as its own trace shows it, before it is joined to a call: the merged
    record (no call_id or version yet), its trace, how many evidence items are its own,
    what of its trace it was chosen among (the version's share of it), its MCP aliases."""
    record: dict[str, Any]
    trace_id: str
    own: int
    weight: int
    aliases: list[str]


class JoinState(Protocol):
    """What building a record reads of the join state, and nothing more: the joiner
    (processors/join.py) provides it; the builder never changes it."""
    entries: Mapping[str, Entry]
    registry: Registry
    traces: traces.TraceIndex
    calls_by_tool_call: Mapping[str, set[str]]  # tool-call id -> the call entries listing it
    calls_by_nim_parent: Mapping[str, set[str]]  # client span id -> the NIM call entries under it
    forgotten: Forgotten

    def owns(self, entry: Entry) -> bool: ...  # whether this state builds the entry's record
    def remote_link(self, tool_call_id: str) -> CallLink | None: ...  # a call owned elsewhere


class Builder:
    def __init__(self, state: JoinState, address_map: AddressMap):
        self.state = state
        self.address_map = address_map
        self.cache: dict[str, Built] = {}

    # -- model calls ------------------------------------------------------------------

    def call_evidence(self, entry: Entry) -> list[Evidence]:
        items = list(entry.evidence.values())
        for item in entry.evidence.values():
            if item.source == ev.SPAN_NIM and item.fields.get("parent_span_id"):
                orphan = self.state.entries.get(f"{ev.CALL_SPAN}|{item.fields['parent_span_id']}")
                if orphan is not None:
                    items.extend(orphan.evidence.values())
        return items

    def call(self, entry: Entry, call_id: str | None = None) -> Built:
        if entry.id in self.cache:
            return self.cache[entry.id]
        items = self.call_evidence(entry) if entry.kind == ev.MODEL_CALL else list(entry.evidence.values())
        ordered = _ordered(items, _CALL_RANK)
        built = self.merged_call(call_id or entry.key, ordered, self.trace_views(ordered))
        self.cache[entry.id] = built
        return built

    def trace_views(self, ordered: list[Evidence]) -> list[TraceView]:
        """What the trace of each client span among a call's evidence says of the call, in
        the evidence's order: the part of a call that needs its traces, and only that."""
        views = []
        for item in ordered:
            if item.source != ev.SPAN_CLIENT or not item.fields.get("trace_id"):
                continue
            node = self.state.traces.nodes(item.fields["trace_id"]).get(item.fields["span_id"])
            if node is None:
                continue
            agents, weight = self.state.traces.agents_for(item.fields["trace_id"], node)
            views.append(TraceView(next((a.fields.get("caller") for a in agents if a.fields.get("caller")), None),
                                   weight))
        return views

    def merged_call(self, call_id: str, ordered: list[Evidence], views: list[TraceView]) -> Built:
        """A call from its evidence items (`_ordered(items, _CALL_RANK)`: spans, NIM and
        gateway log lines, wherever they came from) and its traces' views: the part that
        needs the call's id, the deployments and nothing of its traces beyond the views."""
        nim_first = sorted(ordered, key=lambda e: e.source != ev.SPAN_NIM)
        record = _merge("model_call", ordered, nim_first, _NIM_FIRST)
        record["call_id"] = call_id
        record["signals"] = sorted({e.source for e in ordered})
        identities: set[str] = set()
        for item in ordered:
            identities.update(item.fields.get("identities") or ())
        # As of the call's start, by the one registry's rule; the version counts every
        # deployment version these identities point at, so it grows when the match may change.
        deployment_id, version = self.state.registry.match(identities, record["started_at"]) or (None, None)
        weight = self.state.registry.weight(identities) + sum(v.weight for v in views)
        record["deployment_id"], record["deployment_version"] = deployment_id, version
        agent_caller = next((v.caller for v in views if v.caller), None)
        # Caller: the calling span, else its invoke_agent ancestor, else a gateway's log,
        # else the configured address map. Never a raw credential.
        record["caller"] = (_value(ordered, "caller", (ev.SPAN_CLIENT,)) or agent_caller
                            or _value(ordered, "caller", (ev.LOG_GATEWAY,))
                            or self.address_map.lookup(record["client_address"]))
        record["version"] = len(ordered) + weight
        return Built("model_call", record, self.state.registry.get(deployment_id, version))

    # -- tool actions -----------------------------------------------------------------

    def mcp_owner(self, trace_id: str, node: traces.Node) -> str | None:
        """The entry an MCP span belongs to: its execute_tool ancestor; for a server span,
        whatever its client span belongs to (or that client span itself). A client span
        whose known ancestors reach the root without one belongs to nothing, for good.
        Where the known path breaks: for a server span, the client span of the same
        session and JSON-RPC id; else the execute_tool of the trace with the same tool
        call id; else the innermost execute_tool of the same tool containing it in time."""
        t = self.state.traces
        path = t.path(trace_id, node)
        for ancestor in path:
            if ancestor.role == traces.ACTION:
                return ancestor.entry
            if ancestor.role == traces.MCP_CLIENT and node.role == traces.MCP_SERVER:
                return self.mcp_owner(trace_id, ancestor) or ancestor.entry
        if node.role == traces.MCP_CLIENT and t.rooted(node, path):
            return None
        rpc_id = node.fields.get("jsonrpc_id")
        if node.role == traces.MCP_SERVER and rpc_id is not None:
            for client in t.with_role(trace_id, traces.MCP_CLIENT):
                if client.fields.get("jsonrpc_id") == rpc_id and client.fields.get("mcp_session") in (
                        None, node.fields.get("mcp_session")):
                    return self.mcp_owner(trace_id, client) or client.entry
        actions = t.with_role(trace_id, traces.ACTION)
        tool_call_id = node.fields.get("tool_call_id")
        if tool_call_id:
            named = next((a for a in actions if a.fields.get("tool_call_id") == tool_call_id), None)
            if named is not None:
                return named.entry
        tool = node.fields.get("tool_name")
        containing = t.innermost([a for a in actions if a.fields.get("tool_name") == tool], node)
        return containing.entry if containing else None

    def action(self, entry: Entry) -> Built:
        if entry.id in self.cache:
            return self.cache[entry.id]
        part = self.action_part(entry)
        j = self.state
        tool_call_id = part.record["tool_call_id"] or ""
        # A call held here as a copy (its record is built where it is owned) joins as the
        # link its owner published, like a call that left the state.
        by_id = {k: self.call(j.entries[k]) for k in j.calls_by_tool_call.get(tool_call_id, ())
                 if j.owns(j.entries[k])}
        in_trace = {k: self.call(j.entries[k]) for k in j.traces.entries(part.trace_id)
                    if k.startswith(ev.MODEL_CALL + "|")}
        gone = (j.remote_link(tool_call_id) or j.forgotten.call(tool_call_id)) if not by_id else None
        built = self.linked_action(part, by_id, in_trace, gone)
        self.cache[entry.id] = built
        return built

    def action_part(self, entry: Entry) -> ActionPart:
        """What an action's own trace says of it: its fields merged with the MCP spans it
        owns, who ran it, and how much of its trace it was chosen among. Everything of an
        action but the call it followed."""
        own = list(entry.evidence.values())
        first = min(own, key=lambda e: e.evidence_id)
        trace_id, t = first.fields.get("trace_id") or "", self.state.traces
        weight = 0
        items = list(own)
        for m in t.with_role(trace_id, traces.MCP_CLIENT) + t.with_role(trace_id, traces.MCP_SERVER):
            weight += 1 + len(t.path(trace_id, m))
            if m.entry != entry.id and self.mcp_owner(trace_id, m) == entry.id:
                items.extend(self.state.entries[m.entry].evidence.values())
        weight += t.role_count(trace_id, traces.ACTION)
        ordered = _ordered(items, _ACTION_RANK)
        server_first = sorted(ordered, key=lambda e: e.source != ev.SPAN_MCP_SERVER)
        record = _merge("tool_action", ordered, server_first, _SERVER_FIRST)
        record["action_id"] = entry.key
        record["gate"] = record["gate"] or "none"
        node = t.nodes(trace_id).get(first.fields.get("span_id") or "")
        agents, w = t.agents_for(trace_id, node) if node else ([], 0)
        record["executed_by"] = (agents[0].fields.get("agent_name") if agents else None) \
            or _value(ordered, "service")
        aliases = sorted({a for e in items for a in e.fields.get("mcp_aliases") or ()})
        return ActionPart(record, trace_id, len(own), weight + w, aliases)

    def linked_action(self, part: ActionPart, by_id: Mapping[str, Built], in_trace: Mapping[str, Built],
                      gone: CallLink | None) -> Built:
        """The action joined to the call it followed, given its candidates: the calls that
        list its tool_call_id (`by_id`), the calls of its own trace (`in_trace`), each by
        entry id, and what is kept of a call that left the state (`gone`, looked for only
        when no call lists the id). By tool_call_id, else the latest call of the same trace
        that ended before the action started and asked for this tool. Its version counts
        the full version of every candidate."""
        record = dict(part.record)
        candidates = {**in_trace, **by_id}
        call_weight = sum(candidates[k].record["version"] for k in sorted(candidates))
        call = None
        if by_id:
            call = min(by_id.values(), key=lambda b: (b.record["started_at"] or "", b.record["call_id"]))
        elif gone is not None:
            # The call left the join state (settled, then evicted): what it last was is
            # kept for exactly this, so the action joins, and versions, as if it were held.
            call = Built("model_call", gone._asdict(), self.state.registry.get(gone.deployment_id,
                                                                                gone.deployment_version))
            call_weight += gone.version
        else:
            started = record["started_at"] or ""
            for key in sorted(in_trace):
                candidate = in_trace[key].record
                if (record["tool_name"] in (candidate["tool_names"] or ()) and candidate["ended_at"]
                        and candidate["ended_at"] <= started):
                    if call is None or (candidate["ended_at"], candidate["call_id"]) > (
                            call.record["ended_at"], call.record["call_id"]):
                        call = in_trace[key]
        record["call_id"] = call.record["call_id"] if call else None
        record["version"] = part.own + part.weight + call_weight
        return Built("tool_action", record, call.deployment if call else None,
                     call.record if call else None, part.aliases)

    # -- spans that become records only when nothing claims them -----------------------

    def standalone_mcp(self, entry: Entry) -> Built | None:
        """An MCP tools/call span that no execute_tool claims is the tool action itself:
        the conventions make the MCP client span an execute_tool span, and an agent that
        calls MCP servers directly emits no other. Its action is emitted only once no
        execute_tool can claim it any more, so that one tool run never becomes two
        actions: a client span at once when its known ancestors reach the root (an outer
        execute_tool would be one of them); otherwise, and for a server span whose client
        span never came, once its join window has passed."""
        item = next(iter(entry.evidence.values()))
        trace_id = item.fields.get("trace_id") or ""
        t = self.state.traces
        node = t.nodes(trace_id).get(item.fields.get("span_id") or "")
        if node is None:
            return None
        if not entry.settled and not (node.role == traces.MCP_CLIENT and t.rooted(node, t.path(trace_id, node))):
            return None
        if self.mcp_owner(trace_id, node) is not None:
            return None
        return self.action(entry)

    def standalone_call(self, entry: Entry) -> Built | None:
        """A client inference span without a response id, once settled and claimed by no
        NIM span, is a model call of its own, keyed by its span."""
        span_id = entry.key
        if self.state.calls_by_nim_parent.get(span_id):
            return None
        return self.call(entry, call_id=f"span-{span_id}")
