"""Versions of deployment records: when a registration makes a new one, and what changed.

A new version is made when, and only when, a governed field changes — every field of the
record except deployment_id, version, valid_from, source, field_sources and observed_at.
Versions are immutable: a change is always a new version with a later `valid_from`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any, Iterable

from nimtrail import records, timestamps
from nimtrail.deployments.fragment import Fragment
from nimtrail.deployments.merge import GOVERNED_FIELDS, MAPPING_FIELDS, build
from nimtrail.errors import NimtrailError


class VersionError(NimtrailError):
    """A requested version or time does not fit the deployment's history."""


def parse_time(value: Any) -> _dt.datetime:
    """An aware UTC datetime from an ISO-8601 string, a datetime, or Unix nanoseconds (int)."""
    if isinstance(value, _dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
    if isinstance(value, int) and not isinstance(value, bool):
        return _dt.datetime.fromtimestamp(value / 1e9, _dt.timezone.utc)
    if isinstance(value, str):
        text = value.strip().replace(" ", "T", 1)
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = _dt.datetime.fromisoformat(text)
        except ValueError as e:
            raise VersionError(f"{value!r} is not an ISO-8601 time "
                               f"(expected e.g. 2026-03-01T12:00:00Z)") from e
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=_dt.timezone.utc)
    raise VersionError(f"{value!r} is not a time")


def iso(value: Any) -> str:
    return timestamps.iso(parse_time(value))


def governed(record: dict[str, Any]) -> dict[str, Any]:
    return {f: record.get(f) for f in GOVERNED_FIELDS}


def same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return records.canonical_bytes(governed(a)) == records.canonical_bytes(governed(b))


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """The governed fields whose value differs: [{"field", "from", "to"}] in record order."""
    return [{"field": f, "from": old.get(f), "to": new.get(f)} for f in GOVERNED_FIELDS
            if records.canonical_bytes(old.get(f)) != records.canonical_bytes(new.get(f))]


def leaf_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """The same difference with mapping fields opened one level ("env.NIM_MODEL_PROFILE"),
    for people to read."""
    out = []
    for change in diff(old, new):
        field, a, b = change["field"], change["from"], change["to"]
        if (field in MAPPING_FIELDS or field == "identities") and isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if records.canonical_bytes(a.get(key)) != records.canonical_bytes(b.get(key)):
                    out.append((f"{field}.{key}", a.get(key), b.get(key)))
        else:
            out.append((field, a, b))
    return out


def history(all_records: Iterable[dict[str, Any]], deployment_id: str) -> list[dict[str, Any]]:
    """Every version of one deployment, oldest first."""
    return sorted((r for r in all_records if r.get("deployment_id") == deployment_id),
                  key=lambda r: r["version"])


def latest(all_records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The newest version of every deployment, by id."""
    out: dict[str, dict[str, Any]] = {}
    for record in all_records:
        current = out.get(record["deployment_id"])
        if current is None or record["version"] > current["version"]:
            out[record["deployment_id"]] = record
    return dict(sorted(out.items()))


@dataclasses.dataclass
class Outcome:
    """What registering one deployment does: a new version, or nothing."""

    deployment_id: str
    record: dict[str, Any]             # the new version, or the unchanged latest one
    previous: dict[str, Any] | None    # the latest version before this registration
    changed: bool

    @property
    def changes(self) -> list[dict[str, Any]]:
        if not self.changed:
            return []
        return diff(self.previous or {}, self.record) if self.previous else \
            [{"field": f, "from": None, "to": self.record.get(f)} for f in GOVERNED_FIELDS
             if self.record.get(f) not in (None, [], {})]


def plan(groups: dict[str, list[Fragment]], existing: Iterable[dict[str, Any]], *,
         now: str, valid_from: str | None = None) -> list[Outcome]:
    """Decide, for every deployment, its next version (pure: nothing is written).

    `existing` is every record on the deployments topic. The next version is the latest
    plus one, made only when a governed field differs; `valid_from` defaults to `now` and
    must be later than the latest version's.
    """
    existing = list(existing)
    outcomes = []
    now = iso(now)
    start = iso(valid_from or now)
    for deployment_id, fragments in sorted(groups.items()):
        versions = history(existing, deployment_id)
        previous = versions[-1] if versions else None
        candidate = build(deployment_id, fragments, previous, valid_from=start, observed_at=now)
        if previous is not None and same_content(previous, candidate):
            outcomes.append(Outcome(deployment_id, previous, previous, False))
            continue
        if previous is not None and parse_time(start) <= parse_time(previous["valid_from"]):
            raise VersionError(f"{deployment_id}: valid_from {start} is not after version "
                               f"{previous['version']}'s valid_from {previous['valid_from']}; "
                               f"expected a later time")
        candidate["version"] = previous["version"] + 1 if previous else 1
        outcomes.append(Outcome(deployment_id, candidate, previous, True))
    return outcomes
