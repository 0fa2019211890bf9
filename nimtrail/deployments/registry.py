"""As-of lookups: which deployment version did a piece of telemetry come from?

A `Registry` holds every version of every deployment (as read from the deployments
topic). `match(identity, at)` looks only at the version of each deployment that was valid
at `at` (the latest with valid_from <= at), so a call made before an upgrade joins the old
version and one made after joins the new. Before a deployment's first version it matches
nothing: telemetry from before the review is telemetry from an unregistered deployment.

Identities are tried from the most to the least specific; the first kind that singles out
one deployment decides:
  1. k8s        `<k8s.namespace.name>/<k8s.deployment.name | k8s.statefulset.name>`
  2. pod prefix `<k8s.namespace.name>/<k8s.pod.name>` starts with a registered prefix
                (the longest prefix wins: prod/llama- vs prod/llama-70b-)
  3. service.name
  4. host:port  the address the client called (server.address:server.port)
  5. model name, only when exactly one deployment serves that model at that time
A kind that matches several deployments narrows the candidates for the next kinds; if
they still cannot be told apart, there is no match (an ambiguous answer would put calls
on the wrong deployment, which is worse than none).

The NIM's own resource identities (k8s workload, pod, service.name) also count against a
deployment: telemetry from `shadow-it/llama` that matches no registered workload is not
from a registered deployment that declares a different workload, even if it serves the
same model. Only deployments that declare no identity of that kind stay candidates.
Client-side addresses (host:port) do not count against: clients reach a NIM through
addresses nobody listed (port-forwards, gateways, IPs).
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Any, Iterable

from nimtrail.deployments.versions import parse_time


@dataclasses.dataclass(frozen=True)
class Identity:
    """What a piece of telemetry says about where it came from. All parts are optional."""

    namespace: str | None = None
    workload: str | None = None       # k8s.deployment.name or k8s.statefulset.name
    pod: str | None = None            # k8s.pod.name
    service_name: str | None = None   # resource service.name
    host_port: str | None = None      # "<server.address>:<server.port>"
    model: str | None = None          # served model name (request / response model)

    @classmethod
    def from_attributes(cls, *maps: dict[str, Any] | None) -> "Identity":
        """From OpenTelemetry attributes (resource, then span; later maps win):
        k8s.namespace.name, k8s.deployment.name / k8s.statefulset.name, k8s.pod.name,
        service.name, server.address + server.port, gen_ai.response.model /
        gen_ai.request.model."""
        merged: dict[str, Any] = {}
        for m in maps:
            merged.update({k: v for k, v in (m or {}).items() if v not in (None, "")})
        address, port = merged.get("server.address"), merged.get("server.port")
        return cls(
            namespace=merged.get("k8s.namespace.name"),
            workload=merged.get("k8s.deployment.name") or merged.get("k8s.statefulset.name"),
            pod=merged.get("k8s.pod.name"),
            service_name=merged.get("service.name"),
            host_port=f"{address}:{port}" if address and port else None,
            model=merged.get("gen_ai.response.model") or merged.get("gen_ai.request.model"))

    def is_empty(self) -> bool:
        return not any(dataclasses.astuple(self))

    def describe(self) -> str:
        """A stable, readable name for this identity (used as a finding subject)."""
        if self.namespace and self.workload:
            return f"k8s:{self.namespace}/{self.workload}"
        if self.namespace and self.pod:
            return f"pod:{self.namespace}/{self.pod}"
        if self.service_name:
            return f"service:{self.service_name}"
        if self.host_port:
            return f"host:{self.host_port.lower()}"
        if self.model:
            return f"model:{self.model}"
        return "unknown"


class _Snapshot:
    """The versions valid during one interval between valid_from boundaries, indexed by
    identity: matching is a handful of dict lookups, however many deployments exist."""

    def __init__(self, current: dict[str, dict[str, Any]]):
        self.current = current
        self.index: dict[str, dict[str, set[str]]] = {k: {} for k in _EXACT}
        self.declares: dict[str, set[str]] = {k: set() for k in _CONTRADICTING}
        self.prefixes: list[tuple[str, str]] = []
        for deployment_id, record in current.items():
            identities = record.get("identities") or {}
            for kind in _EXACT:
                for entry in identities.get(kind) or []:
                    key = entry.lower() if kind == "host_ports" else entry
                    self.index[kind].setdefault(key, set()).add(deployment_id)
            for prefix in identities.get("pod_prefixes") or []:
                self.prefixes.append((prefix, deployment_id))
            for kind in _CONTRADICTING:
                if identities.get(kind):
                    self.declares[kind].add(deployment_id)

    def find(self, kind: str, identity: Identity, candidates: set[str]) -> set[str]:
        """Candidates that `identity` matches by `kind` (the longest pod prefix wins)."""
        if kind == "pod_prefixes":
            if not (identity.namespace and identity.pod):
                return set()
            pod = f"{identity.namespace}/{identity.pod}"
            hits = [(len(p), d) for p, d in self.prefixes if d in candidates and pod.startswith(p)]
            longest = max((n for n, _ in hits), default=0)
            return {d for n, d in hits if n == longest}
        key = _key(kind, identity)
        return self.index[kind].get(key, set()) & candidates if key else set()


def _key(kind: str, identity: Identity) -> str | None:
    if kind == "k8s":
        return f"{identity.namespace}/{identity.workload}" if identity.namespace and identity.workload else None
    if kind == "service_names":
        return identity.service_name
    if kind == "host_ports":
        return identity.host_port.lower() if identity.host_port else None
    return identity.model


class Registry:
    """Every version of every deployment, for as-of matching. Add records as they arrive
    from the topic; re-adding a version is harmless (the later copy replaces it)."""

    def __init__(self, records: Iterable[dict[str, Any]] = ()):
        self._versions: dict[str, dict[int, dict[str, Any]]] = {}
        self._timeline: dict[str, tuple[list[float], list[int]]] = {}
        self._bounds: list[float] = []
        self._snapshots: dict[int, _Snapshot] = {}
        for record in records:
            self.add(record)

    def add(self, record: dict[str, Any]) -> None:
        deployment_id, version = record["deployment_id"], int(record["version"])
        self._versions.setdefault(deployment_id, {})[version] = record
        ordered = sorted(self._versions[deployment_id].values(), key=lambda r: r["version"])
        self._timeline[deployment_id] = ([_epoch(r["valid_from"]) for r in ordered],
                                         [int(r["version"]) for r in ordered])
        self._bounds = sorted({t for starts, _ in self._timeline.values() for t in starts})
        self._snapshots.clear()

    def __len__(self) -> int:
        return len(self._versions)

    def ids(self) -> list[str]:
        return sorted(self._versions)

    def versions(self, deployment_id: str) -> list[dict[str, Any]]:
        return [self._versions[deployment_id][v] for v in sorted(self._versions.get(deployment_id, {}))]

    def get(self, deployment_id: str, version: int) -> dict[str, Any] | None:
        return self._versions.get(deployment_id, {}).get(int(version))

    def latest(self, deployment_id: str) -> dict[str, Any] | None:
        versions = self.versions(deployment_id)
        return versions[-1] if versions else None

    def as_of(self, deployment_id: str, at: Any) -> dict[str, Any] | None:
        """The version of `deployment_id` valid at `at` (ISO string, datetime or Unix ns)."""
        return self._as_of(deployment_id, _epoch(at))

    def _as_of(self, deployment_id: str, t: float) -> dict[str, Any] | None:
        timeline = self._timeline.get(deployment_id)
        if not timeline:
            return None
        starts, versions = timeline
        i = bisect.bisect_right(starts, t) - 1
        return self._versions[deployment_id][versions[i]] if i >= 0 else None

    def _snapshot(self, t: float) -> _Snapshot:
        i = bisect.bisect_right(self._bounds, t)
        snapshot = self._snapshots.get(i)
        if snapshot is None:
            current = {}
            if i > 0:
                start = self._bounds[i - 1]
                current = {d: r for d in self._versions if (r := self._as_of(d, start)) is not None}
            snapshot = self._snapshots[i] = _Snapshot(current)
        return snapshot

    def match(self, identity: Identity, at: Any) -> tuple[str, int] | None:
        """(deployment_id, version) the identity belongs to at `at`, or None."""
        snapshot = self._snapshot(_epoch(at))
        candidates = set(snapshot.current)
        for kind in _ORDER:
            found = snapshot.find(kind, identity, candidates)
            if kind == "model_names" and len(found) != 1:
                return None  # a model served by several says nothing
            if len(found) == 1:
                (deployment_id,) = found
                return deployment_id, int(snapshot.current[deployment_id]["version"])
            if found:
                candidates = found
            elif kind in _CONTRADICTING and _provides(identity, kind):
                candidates -= snapshot.declares[kind]
        return None


def _epoch(value: Any) -> float:
    return parse_time(value).timestamp()


def _provides(identity: Identity, kind: str) -> bool:
    if kind == "k8s":
        return bool(identity.namespace and identity.workload)
    if kind == "pod_prefixes":
        return bool(identity.namespace and identity.pod)
    return bool(identity.service_name)


_ORDER = ("k8s", "pod_prefixes", "service_names", "host_ports", "model_names")
_EXACT = ("k8s", "service_names", "host_ports", "model_names")
_CONTRADICTING = {"k8s", "pod_prefixes", "service_names"}
