"""Bounds on every field of every input, applied once, before any record is built.

An attribute may hold megabytes (3 MiB of U+0001 in `enduser.id` becomes 18 MB of JSON,
each character escaped as `\\u0001`): unbounded, one such value makes a record larger than
a Kafka message, and the stage that cannot produce it stops. Here each value is cut to the
bytes its field may take *in the record's JSON* (so escaping is counted, not guessed), and
what was cut is still provable: the kept prefix ends in

    …truncated, N bytes, sha256:<hex>

with N the original's size in bytes and the SHA-256 of the original (its UTF-8 bytes; the
canonical JSON of a structure). The same input is always cut the same way, so a cut join
key still joins. Limits come from `processor.limits` (nimtrail/config.py).

Structures (nested attribute values, arrays, label maps) keep their shape down to
`limits.depth` levels, each level's children bounded in turn; a deeper subtree becomes as
much of its JSON text as fits, and the marker; a structure still over its field's limit keeps its first items
and ends with the marker of the whole.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import orjson

from nimtrail import records
from nimtrail.config import LimitsConfig
from processors.evidence import Evidence

MARKER = "…truncated, {size} bytes, sha256:{digest}"
# The key under which a cut mapping says what it lost.
CUT_KEY = "…"
# Every character takes at most this many bytes in JSON (a control character as \u00XX).
_MOST_PER_CHAR = 6
_INT64 = (-(2 ** 63), 2 ** 63 - 1)

# Identifiers and names: join keys and the columns people filter on.
NAME_FIELDS = frozenset({
    "call_id", "action_id", "sample_id", "trace_id", "span_id", "parent_span_id", "tool_call_id",
    "tool_call_ids", "tool_names", "tool_name", "tool_type", "caller", "client_service",
    "client_address", "api_key_fingerprint", "model", "operation", "status", "finish_reason",
    "deployment_id", "deployment", "mcp_server", "mcp_method", "mcp_session", "mcp_aliases",
    "jsonrpc_id", "executed_by", "gate", "gate_decision", "approver", "policy_id", "outcome",
    "identities", "agent_name", "service", "metric", "source", "endpoint", "host", "file",
    "started_at", "ended_at", "ts", "observed_at", "received_at", "time", "kind",
    "prompt_sha256", "response_sha256", "arguments_sha256",
})
CONTENT_FIELDS = frozenset(records.CONTENT_FIELDS)
# Fields the audit tables hold as text (VARCHAR), whatever type an attribute gave them: an
# `enduser.id` sent as a number or a map is still the caller, written as its JSON text, and
# must not make the warehouse refuse the batch it travels in.
TEXT_VALUED = frozenset({
    "call_id", "action_id", "trace_id", "span_id", "tool_call_id", "deployment_id", "model",
    "operation", "caller", "client_service", "client_address", "api_key_fingerprint", "status",
    "finish_reason", "prompt_text", "response_text", "arguments", "tool_name", "tool_type",
    "mcp_server", "mcp_method", "executed_by", "gate", "gate_decision", "approver", "policy_id",
    "outcome", "error", "target", "service", "agent_name", "provider", "metric",
})
LIST_OF_TEXT = frozenset({"tool_call_ids", "tool_names", "identities", "mcp_aliases", "signals"})
# Fields whose values _as_text converts (a number becomes its text).
_CONVERTED = TEXT_VALUED | LIST_OF_TEXT
# Lists of records inside one output document, bounded item by item rather than as one field.
_RECORD_LISTS = frozenset({"events"})


def encoded_size(value: Any) -> int:
    """Bytes `value` takes in a record's JSON (records.encode_batch uses orjson too)."""
    return len(orjson.dumps(value))


def _digest_of(value: Any) -> tuple[int, str]:
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
    else:
        try:
            data = records.canonical_bytes(value)
        except (TypeError, orjson.JSONEncodeError):
            data = repr(value).encode("utf-8", "surrogatepass")  # deeper than JSON encoders go
    return len(data), hashlib.sha256(data).hexdigest()


def marker(original: Any) -> str:
    size, digest = _digest_of(original)
    return MARKER.format(size=size, digest=digest)


def _cut_text(text: str, limit: int) -> str:
    """The longest prefix of `text` that, followed by its marker, takes at most `limit` bytes
    of JSON (quotes included)."""
    tail = marker(text)
    budget = limit - encoded_size(tail)  # encoded_size counts the quotes once, as the result has them
    low, high = 0, min(len(text), max(budget, 0))
    while low < high:  # the largest k with encoded_size(text[:k]) - 2 <= budget
        mid = (low + high + 1) // 2
        if encoded_size(text[:mid]) - 2 <= budget:
            low = mid
        else:
            high = mid - 1
    return text[:low] + tail


class Bounds:
    """`processor.limits` applied to what a normaliser found; counts what it cut, by field."""

    def __init__(self, limits: LimitsConfig):
        self.limits = limits
        self.cut: Counter[str] = Counter()
        # Text this short fits every field's limit however it is escaped.
        self._short = (min(limits.name, limits.text, limits.content) - 2) // _MOST_PER_CHAR

    def limit_for(self, field: str) -> int:
        if field in CONTENT_FIELDS:
            return self.limits.content
        return self.limits.name if field in NAME_FIELDS else self.limits.text

    # -- values ---------------------------------------------------------------------------

    def value(self, value: Any, limit: int, field: str, depth: int = 0) -> Any:
        """`value` within `limit` bytes of JSON; a cut is counted under `field`."""
        if value is None or isinstance(value, (bool, float)):
            return value
        if isinstance(value, int):
            if _INT64[0] <= value <= _INT64[1]:
                return value
            return self.value(str(value), limit, field, depth)  # JSON encoders stop at 64 bits
        if isinstance(value, str):
            if len(value) * _MOST_PER_CHAR + 2 <= limit or encoded_size(value) <= limit:
                return value
            self.cut[field] += 1
            return _cut_text(value, limit)
        if isinstance(value, (list, tuple, dict)):
            return self._structure(value, limit, field, depth)
        return self.value(str(value), limit, field, depth)  # bytes and the like: as text

    def _structure(self, value: list | tuple | dict, limit: int, field: str, depth: int) -> Any:
        if depth >= self.limits.depth:
            try:
                text = records.canonical_bytes(value).decode()
            except (TypeError, orjson.JSONEncodeError):
                text = repr(value)
            self.cut[field] += 1  # the marker says this is not the original's shape
            return _cut_text(text, limit)
        if isinstance(value, dict):
            items = [(self.value(str(k), self.limits.name, field, depth + 1),
                      self.value(v, limit, field, depth + 1)) for k, v in value.items()]
        else:
            items = [(None, self.value(v, limit, field, depth + 1)) for v in value]
        out = _assemble(value, items)
        if encoded_size(out) <= limit:
            return out
        # Too big as a whole: the first items that fit beside the marker of the original.
        self.cut[field] += 1
        tail = marker(value)
        budget = limit - encoded_size(tail) - len(CUT_KEY.encode()) - 8  # quotes, colon, comma
        kept, used = [], 2
        for key, item in items:
            cost = encoded_size(item) + 1 + (encoded_size(key) + 1 if key is not None else 0)
            if used + cost > budget:
                break
            kept.append((key, item))
            used += cost
        kept.append((CUT_KEY, tail) if isinstance(value, dict) else (None, tail))
        out = _assemble(value, kept)
        return out if encoded_size(out) <= limit else _cut_text(records.canonical_bytes(out).decode(), limit)

    # -- what normalisers produce ---------------------------------------------------------

    def record(self, fields: dict[str, Any]) -> dict[str, Any]:
        """A flat record (evidence fields, a sample, an observation, a log-events document),
        bounded in place (others may hold it: see Normalised.unplaced): each field within its
        own limit; lists of records inside are bounded record by record."""
        short = self._short
        for name, value in fields.items():
            # Most values are short text, numbers or absent: nothing to convert or cut (the
            # same answer as the general path below, at a fraction of its cost per field).
            kind = value.__class__
            if value is None or (kind is str and len(value) <= short) or (
                    (kind is float or (kind is int and _INT64[0] <= value <= _INT64[1]))
                    and name not in _CONVERTED):
                continue
            if name in _RECORD_LISTS and isinstance(value, list):
                fields[name] = [self.record(item) if isinstance(item, dict) else
                                self.value(item, self.limits.text, name) for item in value]
            else:
                fields[name] = self.value(_as_text(name, value), self.limit_for(name), name)
        return fields

    def normalised(self, found: Any) -> None:
        """Everything one input message gave (a normalize.Normalised), bounded in place."""
        found.evidence = [self.evidence(item) for item in found.evidence]
        for item in (*found.samples, *found.observations, *found.log_events):
            self.record(item)

    def evidence(self, item: Evidence) -> Evidence:
        name = self.limits.name
        return Evidence(item.kind, self.value(item.key, name, "key"), item.source,
                        self.value(item.evidence_id, name, "evidence_id"), self.record(item.fields))

    def take_counts(self) -> dict[str, int]:
        counts, self.cut = dict(self.cut), Counter()
        return counts


def _assemble(original: list | tuple | dict, items: list[tuple[Any, Any]]) -> Any:
    if isinstance(original, dict):
        return {key: item for key, item in items}
    return [item for _key, item in items]


def _as_text(name: str, value: Any) -> Any:
    """`value` as the text its field holds (see TEXT_VALUED), structures as canonical JSON."""
    if value is None or isinstance(value, str):
        return value
    if name in LIST_OF_TEXT:
        items = value if isinstance(value, (list, tuple)) else [value]
        return [item if isinstance(item, str) else _as_text("", item) for item in items if item is not None]
    if name not in TEXT_VALUED and name:
        return value
    if isinstance(value, (list, tuple, dict)):
        try:
            return records.canonical_bytes(value).decode()
        except (TypeError, orjson.JSONEncodeError):
            return repr(value)  # deeper than JSON encoders go: bounded as text all the same
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
