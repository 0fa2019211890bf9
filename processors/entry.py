"""One entry of the join state: the evidence of one record (or of one agent, MCP or orphan
span) and what the joiner last did with it. The joiner holds the entries; the builder
reads them (processors/build.py); the changelog stores each one's `encode()`.

Entries are many (tens of thousands at the state's cap), so each is light: `__slots__`,
its id held once, and the text values that repeat across records (models, services,
identities, tool names) shared as one interned copy each.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

from nimtrail import timestamps
from processors import bounds
from processors.evidence import Evidence
from processors.forgotten import CallLink

# Fields whose values repeat across records (models, services, identities, tool names):
# held once each however many entries name them. Ids and times are unique: not worth it.
_UNIQUE = {"call_id", "action_id", "sample_id", "trace_id", "span_id", "parent_span_id", "tool_call_id",
           "tool_call_ids", "jsonrpc_id", "mcp_session", "started_at", "ended_at", "ts", "observed_at",
           "received_at", "time", "prompt_sha256", "response_sha256", "arguments_sha256"}
_SHARED = bounds.NAME_FIELDS - _UNIQUE


def share(fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` with the repeating text values replaced by one shared copy each (in place)."""
    for name, value in fields.items():
        if name in _SHARED:
            if isinstance(value, str):
                fields[name] = sys.intern(value)
            elif isinstance(value, list) and name in bounds.LIST_OF_TEXT:
                fields[name] = [sys.intern(v) if isinstance(v, str) else v for v in value]
    return fields



class Entry:
    """The evidence of one record (or of one agent / MCP / orphan span), and its history."""

    __slots__ = ("id", "kind", "key", "evidence", "first_seen", "touched", "event", "settled", "emitted",
                 "raised", "size", "link", "homed")

    def __init__(self, kind: str, key: str, now: float, entry_id: str | None = None):
        self.id = entry_id or f"{kind}|{key}"  # the joiner's own key string: one copy, not two
        self.kind = kind
        self.key = key
        self.evidence: dict[str, Evidence] = {}
        self.first_seen = now
        self.touched = now
        self.event: float | None = None  # the latest time its evidence states (Unix seconds)
        self.settled = False
        self.emitted: str | None = None  # fingerprint of the last record produced
        self.raised: dict[str, dict[str, Any]] = {}  # finding id -> what was last produced
        self.size = 0  # bytes of its last encoding (what the state's byte cap counts)
        self.link: CallLink | None = None  # a call with tool-call ids: what a later action needs
        # A call's evidence held where its home is elsewhere: the home has sent all it
        # holds of the call (processors/partitions.py); the call may be emitted from here.
        self.homed = False

    def encode(self) -> bytes:
        doc = {"ev": [e.as_list() for e in self.evidence.values()], "fs": self.first_seen,
               "t": self.touched, "s": self.settled, "h": self.emitted, "r": self.raised}
        if self.homed:
            doc["hm"] = True
        return orjson.dumps(doc)

    @classmethod
    def decode(cls, entry_id: str, value: bytes | dict[str, Any]) -> "Entry":
        doc = value if isinstance(value, dict) else orjson.loads(value)
        kind, _, key = entry_id.partition("|")
        entry = cls(kind, key, doc["fs"], entry_id)
        entry.touched, entry.settled, entry.emitted, entry.raised = doc["t"], doc["s"], doc["h"], doc["r"]
        entry.homed = doc.get("hm", False)
        for item in doc["ev"]:
            e = Evidence.from_list(item)
            share(e.fields)
            entry.evidence[e.evidence_id] = e
            entry.saw(e)
        return entry

    def saw(self, item: Evidence) -> None:
        """Note the time `item` states, if later than what the entry knew."""
        when = event_time(item.fields)
        if when is not None and (self.event is None or when > self.event):
            self.event = when


def event_time(fields: dict[str, Any]) -> float | None:
    """The latest time evidence states (its end, else its start), as Unix seconds. The
    normalisers clamp both to what the pipeline accepts around the receive time
    (processors/clock.py) and write them in nimtrail's one time format."""
    return timestamps.seconds(fields.get("ended_at") or fields.get("started_at"))
