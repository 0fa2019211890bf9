"""The deployment registry the joiner matches calls against: every version of every
deployment record from the compacted nimtrail.deployments topic, indexed by identity.

A call is matched by the identities its evidence carries, strongest first:
  dep:<id>           the collector was told which deployment a log source belongs to
  k8s:<ns>/<name>    k8s.namespace.name + k8s.deployment.name / k8s.statefulset.name
  pod:<ns>/<pod>     k8s.pod.name, against a deployment's pod-name prefixes
  svc:<name>         the NIM's own service.name
  hp:<host>:<port>   server.address:server.port seen by the client
  model:<name>       the served model name, only where exactly one deployment serves it
The first tier that names exactly one deployment wins; a tier naming several is skipped as
ambiguous. Then the version is chosen **as of** the call's start: the one with the latest
`valid_from` not after it.
"""

from __future__ import annotations

import bisect
from typing import Any, Iterable

from processors.nimlog_lines import iso, parse_iso

TIERS = ("dep", "k8s", "pod", "svc", "hp", "model")
_EPOCH = "0000-01-01T00:00:00.000000Z"
_IDENTITY_LISTS = {"k8s": "k8s", "service_names": "svc", "host_ports": "hp", "model_names": "model"}


def check(record: Any) -> dict[str, Any]:
    """The record if it is a usable deployment record; ValueError naming what is wrong."""
    if not isinstance(record, dict):
        raise ValueError("a deployment record must be an object")
    if not isinstance(record.get("deployment_id"), str) or not record["deployment_id"]:
        raise ValueError("deployment_id must be a non-empty string")
    version = record.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError("version must be a positive integer")
    if record.get("identities") is not None and not isinstance(record["identities"], dict):
        raise ValueError("identities must be an object")
    return record


def identity_keys(record: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(identity keys, pod-name prefixes) a deployment record can be matched by."""
    ids = record.get("identities") or {}
    keys = [f"dep:{record['deployment_id']}"]
    for field, tier in _IDENTITY_LISTS.items():
        for value in ids.get(field) or ():
            keys.append(f"{tier}:{value}")
    prefixes = [str(p) for p in ids.get("pod_prefixes") or () if p]
    return keys, prefixes


class Registry:
    def __init__(self) -> None:
        self.records: dict[tuple[str, int], dict[str, Any]] = {}
        self._timeline: dict[str, list[tuple[str, int]]] = {}
        self._by_identity: dict[str, set[str]] = {}
        self._pod_prefixes: dict[str, set[str]] = {}
        self._matched: dict[frozenset[str], tuple[str | None, int]] = {}  # cleared by add()

    def add(self, record: dict[str, Any]) -> tuple[list[str], list[str]] | None:
        """Register one version; returns the identities it can be matched by (so the joiner
        can re-join calls that carry them), or None when this version was known already."""
        record = check(record)
        key = (record["deployment_id"], record["version"])
        if key in self.records:
            return None
        self.records[key] = record
        self._matched.clear()
        stamp = parse_iso(record.get("valid_from"))
        bisect.insort(self._timeline.setdefault(key[0], []),
                      (iso(stamp) if stamp else _EPOCH, key[1]))
        keys, prefixes = identity_keys(record)
        for k in keys:
            self._by_identity.setdefault(k, set()).add(key[0])
        for p in prefixes:
            self._pod_prefixes.setdefault(p, set()).add(key[0])
        return keys, prefixes

    def get(self, deployment_id: str | None, version: int | None) -> dict[str, Any] | None:
        if deployment_id is None or version is None:
            return None
        return self.records.get((deployment_id, version))

    def _candidates(self, identity: str) -> set[str]:
        tier, _, value = identity.partition(":")
        if tier == "pod":
            found: set[str] = set()
            for prefix, ids in self._pod_prefixes.items():
                if value.startswith(prefix):
                    found |= ids
            return found
        return self._by_identity.get(identity, set())

    def match(self, identities: Iterable[str]) -> tuple[str | None, int]:
        """(deployment id or None, weight). The weight counts every registered version of
        every deployment any identity points at: it only grows as identities and records
        arrive, which is what keeps the joiner's versions monotonic. Memoised per set of
        identities until the next version is registered: calls share a handful of them."""
        key = frozenset(identities)
        found = self._matched.get(key)
        if found is None:
            if len(self._matched) > 65536:
                self._matched.clear()
            found = self._matched[key] = self._match(key)
        return found

    def _match(self, identities: Iterable[str]) -> tuple[str | None, int]:
        by_tier: dict[str, set[str]] = {}
        for identity in identities:
            tier = identity.partition(":")[0]
            by_tier.setdefault(tier, set()).update(self._candidates(identity))
        weight = sum(len(self._timeline.get(d, ())) for ids in by_tier.values() for d in ids)
        for tier in TIERS:
            found = by_tier.get(tier)
            if found and len(found) == 1:
                return next(iter(found)), weight
        return None, weight

    def as_of(self, deployment_id: str, started_at: str | None) -> int | None:
        """The version in force at `started_at` (ISO, as records write it); None when the
        call precedes every registered version. Without a start time: the latest."""
        timeline = self._timeline.get(deployment_id) or []
        if not timeline:
            return None
        if not started_at:
            return timeline[-1][1]
        i = bisect.bisect_right(timeline, (started_at, float("inf")))
        return timeline[i - 1][1] if i else None
