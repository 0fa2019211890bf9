"""As-of lookups: which deployment version did a piece of telemetry come from?

The one registry of deployment versions: the processor joins calls with it, checks what a
running NIM reports about itself against it, and the CLI and tests ask it the same
question. A `Registry` holds every version of every deployment (as read from the
deployments topic). `match(identity, at)` looks only at the version of each deployment
that was valid at `at` (the latest with valid_from <= at), so a call made before an
upgrade joins the old version and one made after joins the new. Before a deployment's
first version it matches nothing: telemetry from before the review is telemetry from an
unregistered deployment.

Telemetry names where it came from by identity keys, tried from the most to the least
specific; the first kind that singles out one deployment decides:
  dep:<id>          the collector was told the deployment (a log source's `deployment`,
                    the `nimtrail.deployment` resource attribute)
  k8s:<ns>/<name>   k8s.namespace.name + k8s.deployment.name / k8s.statefulset.name
  pod:<ns>/<pod>    k8s.pod.name starts with a registered prefix (the longest wins:
                    prod/llama- vs prod/llama-70b-)
  svc:<name>        the NIM's own service.name
  hp:<host>:<port>  the address the client called (server.address:server.port)
  model:<name>      the served model name, only when exactly one candidate serves it
A kind that matches several deployments narrows the candidates for the next kinds; if
they still cannot be told apart, there is no match (an ambiguous answer would put calls
on the wrong deployment, which is worse than none).

The NIM's own identities (dep, k8s, pod, svc) also count against a deployment: telemetry
from `shadow-it/llama` that matches no registered workload is not from a registered
deployment that declares a different workload, even if it serves the same model. Only
deployments that declare no identity of that kind stay candidates (every deployment
declares its id, so a named deployment that is not registered matches nothing).
Client-side addresses (hp) do not count against: clients reach a NIM through addresses
nobody listed (port-forwards, gateways, IPs).
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Any, Iterable

from nimtrail.deployments.versions import iso

ORDER = ("dep", "k8s", "pod", "svc", "hp", "model")
CONTRADICTING = frozenset({"dep", "k8s", "pod", "svc"})
# The record's `identities` lists, by the key kind they name.
IDENTITY_LISTS = {"k8s": "k8s", "service_names": "svc", "host_ports": "hp", "model_names": "model"}
_MEMO_LIMIT = 65536


def key(kind: str, value: str) -> str:
    """An identity key; host:port compared without case (DNS names have none)."""
    return f"{kind}:{value.lower() if kind == 'hp' else value}"


@dataclasses.dataclass(frozen=True)
class Identity:
    """What a piece of telemetry says about where it came from. All parts are optional."""

    namespace: str | None = None
    workload: str | None = None       # k8s.deployment.name or k8s.statefulset.name
    pod: str | None = None            # k8s.pod.name
    service_name: str | None = None   # resource service.name
    host_port: str | None = None      # "<server.address>:<server.port>"
    model: str | None = None          # served model name (request / response model)
    deployment: str | None = None     # the deployment id the sender was configured with

    @classmethod
    def from_attributes(cls, *maps: dict[str, Any] | None) -> "Identity":
        """From OpenTelemetry attributes (resource, then span; later maps win):
        k8s.namespace.name, k8s.deployment.name / k8s.statefulset.name, k8s.pod.name,
        service.name, server.address + server.port, gen_ai.response.model /
        gen_ai.request.model, nimtrail.deployment."""
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
            model=merged.get("gen_ai.response.model") or merged.get("gen_ai.request.model"),
            deployment=merged.get("nimtrail.deployment"))

    def keys(self) -> list[str]:
        """The identity keys this identity is matched by (the processor's evidence carries
        the same keys, so both ask the registry one question)."""
        out = []
        if self.deployment:
            out.append(key("dep", self.deployment))
        if self.namespace and self.workload:
            out.append(key("k8s", f"{self.namespace}/{self.workload}"))
        if self.namespace and self.pod:
            out.append(key("pod", f"{self.namespace}/{self.pod}"))
        if self.service_name:
            out.append(key("svc", self.service_name))
        if self.host_port:
            out.append(key("hp", self.host_port))
        if self.model:
            out.append(key("model", self.model))
        return out

    def is_empty(self) -> bool:
        return not any(dataclasses.astuple(self))

    def describe(self) -> str:
        """A stable, readable name for this identity (used as a finding subject)."""
        if self.deployment:
            return f"deployment:{self.deployment}"
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
    """(identity keys, pod-name prefixes) one deployment version can be matched by."""
    ids = record.get("identities") or {}
    keys = [key("dep", record["deployment_id"])]
    for field, kind in IDENTITY_LISTS.items():
        keys += [key(kind, str(value)) for value in ids.get(field) or () if value]
    prefixes = [str(p) for p in ids.get("pod_prefixes") or () if p]
    return keys, prefixes


def _instant(at: Any) -> str | None:
    """`at` as canonical ISO text (which sorts in time order); None stays None (latest).
    Records already write times this way, so the common case costs a few comparisons."""
    if at is None:
        return None
    if isinstance(at, str) and len(at) == 27 and at[10] == "T" and at[-1] == "Z":
        return at
    return iso(at)


class _Snapshot:
    """The versions valid during one interval between valid_from boundaries, indexed by
    identity key: matching is a handful of dict lookups, however many deployments exist."""

    def __init__(self, current: dict[str, dict[str, Any]]):
        self.current = current
        self.index: dict[str, set[str]] = {}
        self.declares: dict[str, set[str]] = {kind: set() for kind in CONTRADICTING}
        self.prefixes: list[tuple[str, str]] = []
        for deployment_id, record in current.items():
            keys, prefixes = identity_keys(record)
            for k in keys:
                self.index.setdefault(k, set()).add(deployment_id)
                kind = k.partition(":")[0]
                if kind in CONTRADICTING:
                    self.declares[kind].add(deployment_id)
            self.prefixes += [(p, deployment_id) for p in prefixes]
            if prefixes:
                self.declares["pod"].add(deployment_id)

    def find(self, kind: str, values: list[str], candidates: set[str]) -> set[str]:
        """Candidates that any of `values` (keys of one kind) matches."""
        if kind == "pod":
            hits = [(len(p), d) for v in values for p, d in self.prefixes
                    if d in candidates and v[4:].startswith(p)]
            longest = max((n for n, _ in hits), default=0)
            return {d for n, d in hits if n == longest}
        found: set[str] = set()
        for value in values:
            found |= self.index.get(value, set())
        return found & candidates

    def match(self, keys: Iterable[str]) -> tuple[str, int] | None:
        by_kind: dict[str, list[str]] = {}
        for k in keys:
            kind, _, value = k.partition(":")
            by_kind.setdefault(kind, []).append(key(kind, value))
        candidates = set(self.current)
        for kind in ORDER:
            values = by_kind.get(kind)
            if not values:
                continue
            found = self.find(kind, values, candidates)
            if kind == "model" and len(found) != 1:
                return None  # a model served by several says nothing
            if len(found) == 1:
                (deployment_id,) = found
                return deployment_id, int(self.current[deployment_id]["version"])
            if found:
                candidates = found
            elif kind in CONTRADICTING:
                candidates -= self.declares[kind]
        return None


class Registry:
    """Every version of every deployment, for as-of matching. Add records as they arrive
    from the topic; a version already known is ignored (versions are immutable)."""

    def __init__(self, records: Iterable[dict[str, Any]] = ()):
        self._versions: dict[str, dict[int, dict[str, Any]]] = {}
        self._timeline: dict[str, tuple[list[str], list[int]]] = {}
        self._bounds: list[str] = []
        self._snapshots: dict[int, _Snapshot] = {}
        # Every key and prefix any version ever declared: what a call's version counts.
        self._ever: dict[str, set[str]] = {}
        self._ever_prefixes: dict[str, set[str]] = {}
        self._matched: dict[tuple[frozenset[str], int], tuple[str, int] | None] = {}
        self._weights: dict[frozenset[str], int] = {}
        for record in records:
            self.add(record)

    def identities(self) -> tuple[list[str], list[str]]:
        """Every identity key and pod prefix any registered version declares: what a join
        state restored after versions were registered must look at again (Registry.add's
        answer for all of them)."""
        return sorted(self._ever), sorted(self._ever_prefixes)

    def add(self, record: dict[str, Any]) -> tuple[list[str], list[str]] | None:
        """Register one version (ValueError if it is not a usable record). Returns every
        identity key and pod prefix any version of its deployment declares — the telemetry
        whose match may have changed — or None when this version was known already."""
        record = check(record)
        deployment_id, version = record["deployment_id"], record["version"]
        known = self._versions.setdefault(deployment_id, {})
        if version in known:
            return None
        known[version] = record
        ordered = [known[v] for v in sorted(known)]
        self._timeline[deployment_id] = ([_instant(r.get("valid_from")) or "" for r in ordered],
                                         [int(r["version"]) for r in ordered])
        self._bounds = sorted({t for starts, _ in self._timeline.values() for t in starts})
        self._snapshots.clear()
        self._matched.clear()
        self._weights.clear()
        keys, prefixes = set(), set()
        for r in ordered:
            k, p = identity_keys(r)
            keys.update(k)
            prefixes.update(p)
        for k in keys:
            self._ever.setdefault(k, set()).add(deployment_id)
        for p in prefixes:
            self._ever_prefixes.setdefault(p, set()).add(deployment_id)
        return sorted(keys), sorted(prefixes)

    def __len__(self) -> int:
        return len(self._versions)

    def ids(self) -> list[str]:
        return sorted(self._versions)

    def versions(self, deployment_id: str) -> list[dict[str, Any]]:
        return [self._versions[deployment_id][v] for v in sorted(self._versions.get(deployment_id, {}))]

    def get(self, deployment_id: str | None, version: int | None) -> dict[str, Any] | None:
        if deployment_id is None or version is None:
            return None
        return self._versions.get(deployment_id, {}).get(int(version))

    def latest(self, deployment_id: str) -> dict[str, Any] | None:
        versions = self.versions(deployment_id)
        return versions[-1] if versions else None

    def as_of(self, deployment_id: str, at: Any) -> dict[str, Any] | None:
        """The version of `deployment_id` valid at `at` (ISO string, datetime or Unix ns;
        None: the latest), or None before its first version."""
        timeline = self._timeline.get(deployment_id)
        if not timeline:
            return None
        starts, versions = timeline
        instant = _instant(at)
        i = len(starts) if instant is None else bisect.bisect_right(starts, instant)
        return self._versions[deployment_id][versions[i - 1]] if i else None

    def _snapshot(self, instant: str | None) -> tuple[int, _Snapshot]:
        i = len(self._bounds) if instant is None else bisect.bisect_right(self._bounds, instant)
        snapshot = self._snapshots.get(i)
        if snapshot is None:
            current = {}
            if i > 0:
                start = self._bounds[i - 1]
                current = {d: r for d in self._versions if (r := self.as_of(d, start)) is not None}
            snapshot = self._snapshots[i] = _Snapshot(current)
        return i, snapshot

    def match(self, identity: Identity | Iterable[str], at: Any = None) -> tuple[str, int] | None:
        """(deployment_id, version) the identity (or its keys) belongs to at `at` (None: now,
        by the latest versions), or None. Memoised per key set and interval until the next
        version is registered: calls share a handful of identities."""
        keys = frozenset(identity.keys() if isinstance(identity, Identity) else identity)
        index, snapshot = self._snapshot(_instant(at))
        memo = (keys, index)
        if memo not in self._matched:
            if len(self._matched) > _MEMO_LIMIT:
                self._matched.clear()
            self._matched[memo] = snapshot.match(keys)
        return self._matched[memo]

    def weight(self, keys: Iterable[str]) -> int:
        """Every registered version of every deployment any of `keys` points at in any
        version. It only grows as versions arrive, and grows whenever `match` for these
        keys could change: what keeps the version of a joined call monotonic."""
        keys = frozenset(keys)
        found = self._weights.get(keys)
        if found is None:
            deployments: set[str] = set()
            for k in keys:
                k = key(*k.split(":", 1)) if ":" in k else k
                deployments |= self._ever.get(k, set())
                if k.startswith("pod:"):
                    for prefix, ids in self._ever_prefixes.items():
                        if k[4:].startswith(prefix):
                            deployments |= ids
            if len(self._weights) > _MEMO_LIMIT:
                self._weights.clear()
            found = self._weights[keys] = sum(len(self._versions[d]) for d in deployments)
        return found
