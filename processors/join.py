"""The joiner: merges evidence into model calls and tool actions, and links each action to
the model call whose response asked for it.

Merging is order-independent, which is what makes replays and out-of-order arrival
harmless:
- a record is materialised from the *set* of evidence seen for it; when two views disagree
  on a field, a fixed precedence decides (the client's view for who/what, NIM's view for
  timings), never arrival order;
- a record's `version` counts its evidence and links, so a better-informed emission always
  has a higher version, and the same evidence seen twice yields the same version (the
  warehouse treats that as a no-op).
"""

from __future__ import annotations

from typing import Any, Iterable

from nimtrail import records
from nimtrail.records import now_iso
from processors.spans import Evidence

# Lower rank wins. Client spans know the caller and the tool calls; NIM knows the timings.
_RANK = {"span.client": 0, "span.nim": 1, "log.nim": 2}
_NIM_FIRST = {"ttft_ms", "queue_ms", "e2e_ms", "model", "input_tokens", "output_tokens"}


def _merge(kind: str, evidence: dict[str, Evidence]) -> dict[str, Any]:
    fields = records.FIELDS[kind]
    ordered = sorted(evidence.values(), key=lambda e: (_RANK.get(e.source, 9), e.evidence_id))
    nim_ordered = sorted(ordered, key=lambda e: (e.source != "span.nim", _RANK.get(e.source, 9),
                                                 e.evidence_id))
    out = records.new(kind)
    for name in fields:
        for item in (nim_ordered if name in _NIM_FIRST else ordered):
            value = item.fields.get(name)
            if value is not None:
                out[name] = value
                break
    return out


class Joiner:
    """In-memory join state. `add()` takes evidence and returns the records whose content
    changed, ready to emit."""

    def __init__(self) -> None:
        self._calls: dict[str, dict[str, Evidence]] = {}
        self._actions: dict[str, dict[str, Evidence]] = {}
        self._call_by_tool_call: dict[str, str] = {}
        self._actions_by_tool_call: dict[str, set[str]] = {}
        self._emitted: dict[tuple[str, str], bytes] = {}

    # -- materialisation --------------------------------------------------------------

    def _call(self, call_id: str) -> dict[str, Any]:
        evidence = self._calls[call_id]
        record = _merge("model_call", evidence)
        record["signals"] = sorted({e.source for e in evidence.values()})
        record["version"] = len(evidence)
        return record

    def _action(self, action_id: str) -> dict[str, Any]:
        evidence = self._actions[action_id]
        record = _merge("tool_action", evidence)
        call_id = self._call_by_tool_call.get(record["tool_call_id"] or "")
        record["call_id"] = call_id
        record["version"] = len(evidence) + (1 if call_id else 0)
        return record

    # -- input ------------------------------------------------------------------------

    def add(self, items: Iterable[Evidence]) -> list[tuple[str, dict[str, Any]]]:
        """Fold evidence into the state; return (kind, record) for every changed record."""
        touched: set[tuple[str, str]] = set()
        for item in items:
            if item.kind == "model_call":
                seen = self._calls.setdefault(item.key, {})
                if item.evidence_id in seen:
                    continue
                seen[item.evidence_id] = item
                touched.add(("model_call", item.key))
                for tool_call_id in item.fields.get("tool_call_ids") or ():
                    if self._call_by_tool_call.setdefault(tool_call_id, item.key) == item.key:
                        for action_id in self._actions_by_tool_call.get(tool_call_id, ()):
                            touched.add(("tool_action", action_id))
            elif item.kind == "tool_action":
                seen = self._actions.setdefault(item.key, {})
                if item.evidence_id in seen:
                    continue
                seen[item.evidence_id] = item
                touched.add(("tool_action", item.key))
                tool_call_id = item.fields.get("tool_call_id")
                if tool_call_id:
                    self._actions_by_tool_call.setdefault(tool_call_id, set()).add(item.key)
        return self._changed(sorted(touched))

    def _changed(self, touched: list[tuple[str, str]]) -> list[tuple[str, dict[str, Any]]]:
        out = []
        observed = now_iso()
        for kind, key in touched:
            record = self._call(key) if kind == "model_call" else self._action(key)
            fingerprint = records.canonical_bytes(record)
            if self._emitted.get((kind, key)) == fingerprint:
                continue
            self._emitted[(kind, key)] = fingerprint
            record["observed_at"] = observed
            out.append((kind, record))
        return out
