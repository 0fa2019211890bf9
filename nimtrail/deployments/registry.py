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
import datetime as _dt
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


class Registry:
    """Every version of every deployment, for as-of matching. Add records as they arrive
    from the topic; re-adding a version is harmless (the later copy replaces it)."""

    def __init__(self, records: Iterable[dict[str, Any]] = ()):
        self._versions: dict[str, dict[int, dict[str, Any]]] = {}
        self._timeline: dict[str, tuple[list[_dt.datetime], list[int]]] = {}
        for record in records:
            self.add(record)

    def add(self, record: dict[str, Any]) -> None:
        deployment_id, version = record["deployment_id"], int(record["version"])
        self._versions.setdefault(deployment_id, {})[version] = record
        ordered = sorted(self._versions[deployment_id].values(), key=lambda r: r["version"])
        self._timeline[deployment_id] = ([parse_time(r["valid_from"]) for r in ordered],
                                         [int(r["version"]) for r in ordered])

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
        timeline = self._timeline.get(deployment_id)
        if not timeline:
            return None
        starts, versions = timeline
        i = bisect.bisect_right(starts, parse_time(at)) - 1
        return self._versions[deployment_id][versions[i]] if i >= 0 else None

    def match(self, identity: Identity, at: Any) -> tuple[str, int] | None:
        """(deployment_id, version) the identity belongs to at `at`, or None."""
        when = parse_time(at)
        current = {d: r for d in self._versions if (r := self.as_of(d, when)) is not None}
        candidates = set(current)
        for kind, matches in _MATCHERS:
            found = matches(identity, {d: current[d] for d in candidates})
            if len(found) == 1:
                (deployment_id,) = found
                return deployment_id, int(current[deployment_id]["version"])
            if found:
                candidates = found
            elif kind in _CONTRADICTING and _provides(identity, kind):
                candidates = {d for d in candidates if not _ids(current[d], kind)}
        return None


def _provides(identity: Identity, kind: str) -> bool:
    if kind == "k8s":
        return bool(identity.namespace and identity.workload)
    if kind == "pod_prefixes":
        return bool(identity.namespace and identity.pod)
    return bool(identity.service_name)


def _ids(record: dict[str, Any], kind: str) -> list[str]:
    return (record.get("identities") or {}).get(kind) or []


def _k8s(identity: Identity, current: dict[str, dict[str, Any]]) -> set[str]:
    if not (identity.namespace and identity.workload):
        return set()
    key = f"{identity.namespace}/{identity.workload}"
    return {d for d, r in current.items() if key in _ids(r, "k8s")}


def _pod(identity: Identity, current: dict[str, dict[str, Any]]) -> set[str]:
    if not (identity.namespace and identity.pod):
        return set()
    pod = f"{identity.namespace}/{identity.pod}"
    best: dict[str, int] = {}
    for d, r in current.items():
        lengths = [len(p) for p in _ids(r, "pod_prefixes") if pod.startswith(p)]
        if lengths:
            best[d] = max(lengths)
    if not best:
        return set()
    longest = max(best.values())
    return {d for d, n in best.items() if n == longest}


def _service(identity: Identity, current: dict[str, dict[str, Any]]) -> set[str]:
    if not identity.service_name:
        return set()
    return {d for d, r in current.items() if identity.service_name in _ids(r, "service_names")}


def _host(identity: Identity, current: dict[str, dict[str, Any]]) -> set[str]:
    if not identity.host_port:
        return set()
    address = identity.host_port.lower()
    return {d for d, r in current.items() if address in (h.lower() for h in _ids(r, "host_ports"))}


def _model(identity: Identity, current: dict[str, dict[str, Any]]) -> set[str]:
    if not identity.model:
        return set()
    found = {d for d, r in current.items() if identity.model in _ids(r, "model_names")}
    return found if len(found) == 1 else set()  # a model served by several says nothing


_MATCHERS = (("k8s", _k8s), ("pod_prefixes", _pod), ("service_names", _service),
             ("host_ports", _host), ("model_names", _model))
_CONTRADICTING = {"k8s", "pod_prefixes", "service_names"}
